//! The tap: a copy of every message any session receives or sends, for admins watching
//! live (`GET /haip/admin/monitor`, `haip monitor --all`). It costs one atomic load per
//! message while nobody watches; a watcher that reads too slowly misses messages (and is
//! told how many) rather than holding memory.

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
}

impl Default for Tap {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Tap { tx }
    }
}

impl Tap {
    /// Whether anyone watches: only then is a message copied.
    pub fn active(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn send(&self, tapped: Tapped) {
        let _ = self.tx.send(Arc::new(tapped));
    }

    pub fn watch(&self) -> broadcast::Receiver<Arc<Tapped>> {
        self.tx.subscribe()
    }
}
