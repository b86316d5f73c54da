//! The tap: a copy of every message any session receives or sends, for admins watching
//! live (`GET /haip/admin/monitor`, `haip monitor --all`). It costs one atomic load per
//! message while nobody watches; a watcher that reads too slowly misses messages (and is
//! told how many) rather than holding memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

/// Messages kept for watchers that are behind; past this they skip ahead.
const CAPACITY: usize = 4096;

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client to the server.
    In,
    /// From the server to a client.
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// One message seen by the tap.
#[derive(Debug)]
pub struct Tapped {
    pub direction: Direction,
    pub session: Arc<str>,
    pub subject: Arc<str>,
    /// The envelope as JSON.
    pub json: String,
}

pub struct Tap {
    tx: broadcast::Sender<Arc<Tapped>>,
    /// How many watch: read for every message sent, so an atomic rather than the
    /// channel's own count (which takes a lock).
    watchers: Arc<AtomicUsize>,
}

impl Default for Tap {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Tap {
            tx,
            watchers: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Tap {
    /// Whether anyone watches: only then is a message copied.
    pub fn active(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    pub fn send(&self, tapped: Tapped) {
        let _ = self.tx.send(Arc::new(tapped));
    }

    /// Starts watching; the copies stop when every [`Watch`] is dropped.
    pub fn watch(&self) -> Watch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx: self.tx.subscribe(),
            watchers: self.watchers.clone(),
        }
    }
}

/// One watcher of the tap.
pub struct Watch {
    pub rx: broadcast::Receiver<Arc<Tapped>>,
    watchers: Arc<AtomicUsize>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}
