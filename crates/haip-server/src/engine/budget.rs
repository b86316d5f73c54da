//! The server-wide memory budget (`MEMORY_LIMIT`): everything a client can make the
//! server hold is counted against one number.
//!
//! Each session bounds what it holds on its own (see `SessionLimits`); the budget bounds
//! the sum. Every [`SAMPLE_INTERVAL`] the engine adds up what each session holds (replay
//! window, output not taken, queued replays, out-of-order input, unfinished messages,
//! tool calls), plus request bodies being read and a fixed cost per connection, and:
//!
//! - past the soft mark (three quarters of the limit) it trims the replay windows of the
//!   sessions holding the most, largest first, to half, until under the mark: replay depth
//!   is what a server gives up first (a resume that needed those messages then fails with
//!   RESUME_FAILED, never a partial replay);
//! - past the limit itself it refuses new connections (503) and ends the sessions holding
//!   the most, largest first, with ERROR RATE_LIMITED, until under the soft mark.
//!
//! Counted bytes are JSON bytes; allocator overhead and the process's own baseline come on
//! top, which is why the limit should sit below the memory the server may really use.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::core::SessionUsage;

/// How often usage is added up and the budget enforced.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// What one open connection is counted as: its task, buffers and session when idle
/// (measured at about 8 KiB; the rest covers a WebSocket's read buffer grown by traffic).
pub const CONNECTION_BYTES: u64 = 32 * 1024;

/// What the budget saw at the last sample, by kind, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub sessions: SessionUsage,
    pub request_bodies: u64,
    /// AI SDK answers kept for their readers (see `crate::aisdk::answer`).
    pub answers: u64,
    pub connections: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.sessions.total() + self.request_bodies + self.answers + self.connections
    }
}

/// What enforcing the budget did once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforcement {
    pub trimmed_bytes: u64,
    pub ended_sessions: u64,
}

pub struct MemoryBudget {
    limit: u64,
    soft: u64,
    over_limit: AtomicBool,
    request_bodies: Arc<AtomicU64>,
    answers: Arc<AtomicU64>,
    last: Mutex<Usage>,
    trimmed_bytes: AtomicU64,
    ended_sessions: AtomicU64,
    refused_connections: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget {
            limit,
            soft: limit / 4 * 3,
            over_limit: AtomicBool::new(false),
            request_bodies: Arc::new(AtomicU64::new(0)),
            answers: Arc::new(AtomicU64::new(0)),
            last: Mutex::new(Usage::default()),
            trimmed_bytes: AtomicU64::new(0),
            ended_sessions: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The mark above which replay windows are trimmed.
    pub fn soft_mark(&self) -> u64 {
        self.soft
    }

    /// False while the last sample was over the limit: new connections are refused.
    pub fn admits_connections(&self) -> bool {
        let admits = !self.over_limit.load(Ordering::Acquire);
        if !admits {
            self.refused_connections.fetch_add(1, Ordering::Relaxed);
        }
        admits
    }

    /// Counts `bytes` of a request body being read until the guard is dropped.
    pub fn reading_body(&self) -> BodyGuard {
        BodyGuard {
            counter: self.request_bodies.clone(),
            bytes: 0,
        }
    }

    pub fn request_bodies(&self) -> u64 {
        self.request_bodies.load(Ordering::Relaxed)
    }

    /// Counts the bytes an AI SDK answer keeps until the guard is dropped.
    pub fn keeping_answer(&self) -> BodyGuard {
        BodyGuard {
            counter: self.answers.clone(),
            bytes: 0,
        }
    }

    pub fn answers(&self) -> u64 {
        self.answers.load(Ordering::Relaxed)
    }

    /// Records a sample and what was done about it.
    pub fn record(&self, usage: Usage, over_limit: bool, done: Enforcement) {
        self.over_limit.store(over_limit, Ordering::Release);
        if let Ok(mut last) = self.last.lock() {
            *last = usage;
        }
        self.trimmed_bytes
            .fetch_add(done.trimmed_bytes, Ordering::Relaxed);
        self.ended_sessions
            .fetch_add(done.ended_sessions, Ordering::Relaxed);
    }

    /// The budget for /stats: limit, marks, what uses it, what was done.
    pub fn snapshot(&self) -> serde_json::Value {
        let u = self.last.lock().map(|u| *u).unwrap_or_default();
        serde_json::json!({
            "limit": self.limit,
            "softMark": self.soft,
            "used": u.total(),
            "overLimit": self.over_limit.load(Ordering::Acquire),
            "usedBy": {
                "replay": u.sessions.replay,
                "heldOutput": u.sessions.held_output,
                "queuedReplays": u.sessions.queued_replays,
                "inboundHeld": u.sessions.inbound_held,
                "unfinishedMessages": u.sessions.unfinished_messages,
                "toolCalls": u.sessions.tool_calls,
                "requestBodies": u.request_bodies,
                "answers": u.answers,
                "connections": u.connections,
            },
            "trimmedReplayBytes": self.trimmed_bytes.load(Ordering::Relaxed),
            "sessionsEnded": self.ended_sessions.load(Ordering::Relaxed),
            "connectionsRefused": self.refused_connections.load(Ordering::Relaxed),
        })
    }
}

/// Bytes counted in the budget until dropped: a request body being read, an answer kept.
pub struct BodyGuard {
    counter: Arc<AtomicU64>,
    bytes: u64,
}

impl BodyGuard {
    /// `n` more bytes were read.
    pub fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The body now holds `n` bytes.
    pub fn set(&mut self, n: usize) {
        let n = n as u64;
        if n >= self.bytes {
            self.counter.fetch_add(n - self.bytes, Ordering::Relaxed);
        } else {
            self.counter.fetch_sub(self.bytes - n, Ordering::Relaxed);
        }
        self.bytes = n;
    }
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Which sessions to act on, given each one's usage (largest first) and how far over the
/// target the total is: the fewest largest ones whose `freed(usage)` covers the excess.
pub fn plan<K: Clone>(
    mut sessions: Vec<(K, u64)>,
    excess: u64,
    freed: impl Fn(u64) -> u64,
) -> Vec<K> {
    sessions.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut chosen = Vec::new();
    let mut covered = 0u64;
    for (key, usage) in sessions {
        if covered >= excess {
            break;
        }
        let f = freed(usage);
        if f == 0 {
            continue;
        }
        covered += f;
        chosen.push(key);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_consumers_are_chosen_first_and_only_as_many_as_needed() {
        let sessions = vec![("a", 10), ("b", 400), ("c", 50), ("d", 300)];
        assert_eq!(plan(sessions.clone(), 350, |u| u), vec!["b"]);
        assert_eq!(plan(sessions.clone(), 500, |u| u), vec!["b", "d"]);
        // Trimming to half frees half.
        assert_eq!(plan(sessions.clone(), 300, |u| u / 2), vec!["b", "d"]);
        assert!(plan(sessions.clone(), 0, |u| u).is_empty());
        assert_eq!(plan(sessions, 10_000, |u| u).len(), 4);
    }

    #[test]
    fn request_bodies_are_counted_while_read() {
        let budget = MemoryBudget::new(1 << 20);
        {
            let mut guard = budget.reading_body();
            guard.add(1000);
            guard.add(24);
            assert_eq!(budget.request_bodies(), 1024);
        }
        assert_eq!(budget.request_bodies(), 0);
    }

    #[test]
    fn over_the_limit_connections_are_refused_and_counted() {
        let budget = MemoryBudget::new(1000);
        assert_eq!(budget.soft_mark(), 750);
        assert!(budget.admits_connections());
        budget.record(Usage::default(), true, Enforcement::default());
        assert!(!budget.admits_connections());
        assert_eq!(budget.snapshot()["connectionsRefused"], 1);
    }
}
