//! What a connection writes: frames the session released, in seq order, and a final close.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use haip_protocol::EventType;
use tokio::sync::Notify;

/// One message the server sent, serialized once and shared by the replay window and every
/// connection that writes it (a replay after resume writes the same bytes again).
#[derive(Debug)]
pub struct Outgoing {
    pub seq: u64,
    pub event_type: EventType,
    pub json: Bytes,
}

/// How a connection is to be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// A WebSocket close code (1000, 1001, 1002, 1008, 1009, 1011); streams simply end.
    pub code: u16,
    pub reason: String,
}

#[derive(Debug)]
pub enum OutItem {
    Frame(std::sync::Arc<Outgoing>),
    Close(Close),
}

/// The queue between a session and the task writing one connection. The session pushes
/// under its own lock, so frames are queued in seq order; the writer drains everything
/// queued at once and writes it as one batch.
#[derive(Debug, Default)]
pub struct ConnQueue {
    items: Mutex<VecDeque<OutItem>>,
    ready: Notify,
    /// Signalled when the session's timers (gap deadline, delayed grants) moved because of
    /// a message that did not arrive through this connection (e.g. `POST /haip/messages`).
    timers: Notify,
}

impl ConnQueue {
    pub fn push(&self, item: OutItem) {
        if let Ok(mut q) = self.items.lock() {
            q.push_back(item);
        }
        self.ready.notify_one();
    }

    pub fn push_all(&self, items: impl IntoIterator<Item = OutItem>) {
        if let Ok(mut q) = self.items.lock() {
            q.extend(items);
        }
        self.ready.notify_one();
    }

    pub fn len(&self) -> usize {
        self.items.lock().map_or(0, |q| q.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells the writer to recompute its timers.
    pub fn wake_timers(&self) {
        self.timers.notify_one();
    }

    /// Resolves after [`ConnQueue::wake_timers`] (a wake-up sent earlier is not lost).
    pub async fn timers_changed(&self) {
        self.timers.notified().await
    }

    /// Takes everything queued now, without waiting.
    pub fn take_now(&self) -> Vec<OutItem> {
        self.items
            .lock()
            .map_or_else(|_| Vec::new(), |mut q| q.drain(..).collect())
    }

    /// Takes everything queued, waiting until there is something.
    pub async fn drain(&self, into: &mut Vec<OutItem>) {
        loop {
            if let Ok(mut q) = self.items.lock() {
                if !q.is_empty() {
                    into.extend(q.drain(..));
                    return;
                }
            }
            self.ready.notified().await;
        }
    }
}

impl Outgoing {
    pub fn new(seq: u64, event_type: EventType, json: String) -> Outgoing {
        Outgoing {
            seq,
            event_type,
            json: Bytes::from(json),
        }
    }
}
