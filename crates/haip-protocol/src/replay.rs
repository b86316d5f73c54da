//! The window of sent messages kept for REPLAY_REQUEST and resume (contract sections 3, 5).
//!
//! A sent message stays until it is both beyond the newest `keep_newest` messages and older
//! than `keep_for_ms` (the contract's rule). On top of that rule, hard caps on message count
//! and bytes bound the memory of a session that sends fast for a long time. Queries are all or
//! nothing: either every message of the asked range is still here, or the answer is
//! [`ReplayError::TooOld`] and nothing is replayed.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// `replay_window_size` (default 1000).
    pub keep_newest: usize,
    /// `replay_window_time` in ms (default 300 000).
    pub keep_for_ms: u64,
    /// Never keep more than this many messages, whatever their age.
    pub max_messages: usize,
    /// Never keep more than this many bytes, whatever their age.
    pub max_bytes: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            keep_newest: 1000,
            keep_for_ms: 300_000,
            max_messages: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a range cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Part of the range has left the window (REPLAY_TOO_OLD, or RESUME_FAILED on resume).
    #[error("seq {from_seq} has left the replay window (oldest kept: {oldest_kept:?})")]
    TooOld {
        from_seq: u64,
        oldest_kept: Option<u64>,
    },
    /// The peer claims to have received messages that were never sent.
    #[error("seq {claimed} was never sent (last sent: {last_sent})")]
    NeverSent { claimed: u64, last_sent: u64 },
}

struct Entry<T> {
    seq: u64,
    sent_ms: u64,
    bytes: u64,
    item: T,
}

/// Sent messages, oldest first, with consecutive seqs.
pub struct ReplayWindow<T> {
    config: ReplayConfig,
    entries: VecDeque<Entry<T>>,
    bytes: u64,
    last_seq: u64,
}

impl<T> ReplayWindow<T> {
    pub fn new(config: ReplayConfig) -> ReplayWindow<T> {
        ReplayWindow {
            config,
            entries: VecDeque::new(),
            bytes: 0,
            last_seq: 0,
        }
    }

    /// Records a sent message. Seqs must be pushed in order without gaps, starting at 1;
    /// a seq that breaks this is a bug in the caller and is refused.
    pub fn push(&mut self, seq: u64, now_ms: u64, bytes: u64, item: T) -> Result<(), u64> {
        if seq != self.last_seq + 1 {
            return Err(self.last_seq + 1);
        }
        self.entries.push_back(Entry {
            seq,
            sent_ms: now_ms,
            bytes,
            item,
        });
        self.bytes += bytes;
        self.last_seq = seq;
        self.evict(now_ms);
        Ok(())
    }

    /// Drops what the window no longer has to keep at `now_ms`.
    pub fn evict(&mut self, now_ms: u64) {
        while let Some(front) = self.entries.front() {
            let beyond_count = self.entries.len() > self.config.keep_newest;
            let too_old = now_ms.saturating_sub(front.sent_ms) > self.config.keep_for_ms;
            let over_cap =
                self.entries.len() > self.config.max_messages || self.bytes > self.config.max_bytes;
            let evictable = (beyond_count && too_old) || over_cap;
            if !evictable {
                break;
            }
            self.bytes -= front.bytes;
            self.entries.pop_front();
        }
    }

    /// Drops the oldest entries until the window holds at most `max_bytes` (a server short
    /// of memory gives up replay depth first); returns how many bytes it dropped. A resume
    /// that needed them then fails as for any message past the window.
    pub fn shrink_to(&mut self, max_bytes: u64) -> u64 {
        let before = self.bytes;
        while self.bytes > max_bytes {
            let Some(front) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= front.bytes;
        }
        before - self.bytes
    }

    /// The seq of the last message sent (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn oldest_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Every message from `from_seq` through `to_seq` (or the last sent), in order, or an
    /// error if any of them has left the window. Seqs past the last sent are not an error:
    /// they simply are not there yet.
    pub fn range(
        &self,
        from_seq: u64,
        to_seq: Option<u64>,
    ) -> Result<impl Iterator<Item = &T> + '_, ReplayError> {
        let from = from_seq.max(1);
        let to = to_seq.unwrap_or(u64::MAX).min(self.last_seq);
        if from <= to && self.oldest_seq().is_none_or(|oldest| from < oldest) {
            return Err(ReplayError::TooOld {
                from_seq: from,
                oldest_kept: self.oldest_seq(),
            });
        }
        let skip = self
            .oldest_seq()
            .map_or(0, |oldest| from.saturating_sub(oldest) as usize);
        let take = if from <= to {
            (to - from + 1) as usize
        } else {
            0
        };
        Ok(self.entries.iter().skip(skip).take(take).map(|e| &e.item))
    }

    /// What a peer that last received `last_rx_seq` is missing, for resume.
    pub fn after(&self, last_rx_seq: u64) -> Result<impl Iterator<Item = &T> + '_, ReplayError> {
        if last_rx_seq > self.last_seq {
            return Err(ReplayError::NeverSent {
                claimed: last_rx_seq,
                last_sent: self.last_seq,
            });
        }
        self.range(last_rx_seq.saturating_add(1), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_drops_the_oldest_first_and_resumes_then_fail_cleanly() {
        let mut w = ReplayWindow::new(ReplayConfig::default());
        for seq in 1..=10 {
            w.push(seq, 0, 100, seq).expect("push");
        }
        assert_eq!(w.shrink_to(450), 600);
        assert_eq!(w.bytes(), 400);
        assert_eq!(w.oldest_seq(), Some(7));
        assert!(w.after(5).is_err(), "a resume needing seq 6 fails whole");
        assert_eq!(
            w.after(6).expect("kept").copied().collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
    }

    fn window(keep_newest: usize, keep_for_ms: u64) -> ReplayWindow<u64> {
        ReplayWindow::new(ReplayConfig {
            keep_newest,
            keep_for_ms,
            ..ReplayConfig::default()
        })
    }

    fn collect<'a>(r: Result<impl Iterator<Item = &'a u64>, ReplayError>) -> Vec<u64> {
        r.expect("range available").copied().collect()
    }

    #[test]
    fn range_returns_exactly_the_asked_messages() {
        let mut w = window(100, 1000);
        for seq in 1..=10 {
            w.push(seq, 0, 10, seq * 100).unwrap();
        }
        assert_eq!(collect(w.range(3, Some(5))), vec![300, 400, 500]);
        assert_eq!(collect(w.range(9, None)), vec![900, 1000]);
        assert_eq!(collect(w.range(0, Some(2))), vec![100, 200]);
        assert_eq!(collect(w.range(11, None)), Vec::<u64>::new());
        assert_eq!(collect(w.range(8, Some(50))), vec![800, 900, 1000]);
    }

    #[test]
    fn pushing_out_of_order_is_refused() {
        let mut w = window(10, 10);
        assert_eq!(w.push(2, 0, 1, 2), Err(1));
        w.push(1, 0, 1, 1).unwrap();
        assert_eq!(w.push(1, 0, 1, 1), Err(2));
    }

    #[test]
    fn messages_leave_only_when_beyond_count_and_older_than_time() {
        let mut w = window(3, 1000);
        for seq in 1..=5 {
            w.push(seq, 0, 1, seq).unwrap();
        }
        // Beyond the newest 3, but still young: all kept.
        assert_eq!(w.len(), 5);
        w.evict(1000);
        assert_eq!(w.len(), 5);
        w.evict(1001);
        assert_eq!(w.len(), 3);
        assert_eq!(w.oldest_seq(), Some(3));
        // Old but among the newest 3: kept however old.
        w.evict(1_000_000);
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn a_range_reaching_before_the_window_is_refused_whole() {
        let mut w = window(2, 0);
        for seq in 1..=5 {
            w.push(seq, 0, 1, seq).unwrap();
        }
        w.evict(1);
        assert_eq!(w.oldest_seq(), Some(4));
        assert_eq!(
            w.range(3, Some(5)).err(),
            Some(ReplayError::TooOld {
                from_seq: 3,
                oldest_kept: Some(4)
            })
        );
        assert_eq!(collect(w.range(4, None)), vec![4, 5]);
    }

    #[test]
    fn hard_caps_bound_a_young_window() {
        let mut w = ReplayWindow::new(ReplayConfig {
            keep_newest: 1000,
            keep_for_ms: 1_000_000,
            max_messages: 5,
            max_bytes: 1_000,
        });
        for seq in 1..=8 {
            w.push(seq, 0, 10, seq).unwrap();
        }
        assert_eq!(w.len(), 5);
        assert_eq!(w.oldest_seq(), Some(4));
        w.push(9, 0, 990, 9).unwrap();
        assert!(w.bytes() <= 1_000);
        assert_eq!(w.oldest_seq(), Some(8));
        assert!(w.range(7, None).is_err());
    }

    #[test]
    fn after_serves_resume() {
        let mut w = window(2, 0);
        assert_eq!(collect(w.after(0)), Vec::<u64>::new());
        for seq in 1..=4 {
            w.push(seq, 0, 1, seq).unwrap();
        }
        assert_eq!(collect(w.after(2)), vec![3, 4]);
        assert_eq!(collect(w.after(4)), Vec::<u64>::new());
        assert_eq!(
            w.after(9).err(),
            Some(ReplayError::NeverSent {
                claimed: 9,
                last_sent: 4
            })
        );
        w.evict(10);
        assert!(matches!(w.after(1), Err(ReplayError::TooOld { .. })));
        assert_eq!(collect(w.after(2)), vec![3, 4]);
    }

    #[test]
    fn an_empty_window_after_eviction_refuses_old_ranges() {
        let mut w = ReplayWindow::new(ReplayConfig {
            keep_newest: 0,
            keep_for_ms: 0,
            max_messages: 10,
            max_bytes: 10,
        });
        w.push(1, 0, 1, 1).unwrap();
        w.evict(5);
        assert!(w.is_empty());
        assert!(w.range(1, None).is_err());
        assert_eq!(collect(w.after(1)), Vec::<u64>::new());
    }
}
