//! What a connection writes: frames the session released, in seq order, and a final close.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use haip_protocol::payload::ErrorPayload;
use haip_protocol::{channel, Envelope, ErrorCode, EventType, Payload};
use serde_json::Map;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One message the server sent, serialized once and shared by the replay window and every
/// connection that writes it (a replay after resume writes the same bytes again).
#[derive(Debug)]
pub struct Outgoing {
    /// The session it belongs to (SSE writes it in each event's `id`).
    pub session: Arc<str>,
    pub seq: u64,
    pub event_type: EventType,
    json: Json,
    /// The length of the JSON text (asked for each time the message is queued or
    /// counted; a shared message's head is not kept written).
    json_len: usize,
    /// The two-frame form for a WebSocket client that accepts binary frames: the envelope
    /// with `bin_len`/`bin_mime` and no `data`, then the raw bytes (contract section 7).
    pub two_frame: Option<Box<(Bytes, Bytes)>>,
}

/// The envelope as JSON text (binary data in base64).
#[derive(Debug)]
enum Json {
    Whole(Bytes),
    /// A message sent alike to many sessions (a thread's message to each follower, the
    /// greeting of every session): the part from `channel` on is serialized once and
    /// shared, and the head (id, session, seq, ack, ts) is written as the message is. Each
    /// session keeps a few numbers per message for replay instead of its own text.
    Shared {
        id: Arc<str>,
        ack: Option<u64>,
        ts: u64,
        tail: Bytes,
    },
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
    Frame(Arc<Outgoing>),
    Close(Close),
    /// The connection now serves this session (a resume requested through another way
    /// than the connection itself, e.g. a HAI posted to `POST /haip/messages`).
    Switch(SwitchTo),
}

/// The session an [`OutItem::Switch`] moves the connection to. Held without its type: the
/// queue belongs to the session core, below the session in the engine's layers, and only
/// the connection, above both, opens it (see [`SwitchTo::session`]).
pub struct SwitchTo(Arc<dyn std::any::Any + Send + Sync>);

impl SwitchTo {
    pub fn new<S: std::any::Any + Send + Sync>(session: Arc<S>) -> SwitchTo {
        SwitchTo(session)
    }

    /// The session, if it is an `S` (the engine only ever queues its own sessions).
    pub fn session<S: std::any::Any + Send + Sync>(self) -> Option<Arc<S>> {
        self.0.downcast().ok()
    }
}

impl std::fmt::Debug for SwitchTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwitchTo")
    }
}

impl OutItem {
    fn bytes(&self) -> u64 {
        match self {
            OutItem::Frame(f) => f.json_len() as u64,
            OutItem::Close(_) | OutItem::Switch(_) => 0,
        }
    }
}

/// Most frames one write takes: enough to fill a syscall, small enough that a write stuck
/// on a client that does not read holds little.
pub const MAX_BATCH_FRAMES: usize = 256;
pub const MAX_BATCH_BYTES: u64 = 256 * 1024;

#[derive(Debug, Default)]
struct Queued {
    /// Each item with whether it counts towards the backlog bound (a replay does not: the
    /// replay window bounded it already).
    items: VecDeque<(OutItem, bool)>,
    /// Counted messages and bytes still queued.
    messages: usize,
    bytes: u64,
    /// Replayed messages and bytes still queued (bounded on their own: see
    /// [`ConnQueue::replay_backlog`]).
    replay_messages: usize,
    replay_bytes: u64,
}

impl Queued {
    fn push(&mut self, item: OutItem, counted: bool) {
        if counted {
            self.messages += 1;
            self.bytes += item.bytes();
        } else {
            self.replay_messages += 1;
            self.replay_bytes += item.bytes();
        }
        self.items.push_back((item, counted));
    }

    /// Moves up to one batch into `into`.
    fn take_batch(&mut self, into: &mut Vec<OutItem>) {
        let mut bytes = 0;
        while let Some((item, counted)) = self.items.pop_front() {
            let size = item.bytes();
            if counted {
                self.messages -= 1;
                self.bytes -= size;
            } else {
                self.replay_messages -= 1;
                self.replay_bytes -= size;
            }
            bytes += size;
            into.push(item);
            if into.len() >= MAX_BATCH_FRAMES || bytes >= MAX_BATCH_BYTES {
                break;
            }
        }
    }
}

/// The queue between a session and the task writing one connection. The session pushes
/// under its own lock, so frames are queued in seq order; the writer takes them in batches
/// and writes each batch with one flush.
#[derive(Debug, Default)]
pub struct ConnQueue {
    queued: Mutex<Queued>,
    ready: Notify,
    /// Signalled when the session's timers (gap deadline, delayed grants) moved because of
    /// a message that did not arrive through this connection (e.g. `POST /haip/messages`).
    timers: Notify,
    /// Cancelled to drop the connection at once, even while a write to a client that does
    /// not read is stuck.
    abort: CancellationToken,
    /// True while the writer is inside a write.
    writing: AtomicBool,
    /// Signalled each time the writer takes a batch: agents waiting for their client to
    /// take output look again.
    written: Notify,
}

impl ConnQueue {
    /// Queues a new message (or the close); it counts towards the backlog bound.
    pub fn push(&self, item: OutItem) {
        if let Ok(mut q) = self.queued.lock() {
            q.push(item, true);
        }
        self.ready.notify_one();
    }

    /// Queues messages re-sent from the replay window; they do not count towards the
    /// backlog bound.
    pub fn push_replay(&self, items: impl IntoIterator<Item = OutItem>) {
        if let Ok(mut q) = self.queued.lock() {
            for item in items {
                q.push(item, false);
            }
        }
        self.ready.notify_one();
    }

    pub fn len(&self) -> usize {
        self.queued.lock().map_or(0, |q| q.items.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// New messages and bytes queued but not yet taken by the writer.
    pub fn backlog(&self) -> (usize, u64) {
        self.queued.lock().map_or((0, 0), |q| (q.messages, q.bytes))
    }

    /// Replayed messages and bytes queued but not yet taken by the writer: a client that
    /// asks for replays faster than it reads them is told to wait rather than make the
    /// queue grow (see the REPLAY_REQUEST handling of the session).
    pub fn replay_backlog(&self) -> (usize, u64) {
        self.queued
            .lock()
            .map_or((0, 0), |q| (q.replay_messages, q.replay_bytes))
    }

    /// Tells the writer to recompute its timers.
    pub fn wake_timers(&self) {
        self.timers.notify_one();
    }

    /// Resolves after [`ConnQueue::wake_timers`] (a wake-up sent earlier is not lost).
    pub async fn timers_changed(&self) {
        self.timers.notified().await
    }

    pub fn set_writing(&self, writing: bool) {
        self.writing.store(writing, Ordering::Release);
    }

    pub fn is_writing(&self) -> bool {
        self.writing.load(Ordering::Acquire)
    }

    /// Drops the connection without waiting for its writes.
    pub fn abort(&self) {
        self.abort.cancel();
    }

    pub async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Resolves the next time the writer takes a batch (see [`ConnQueue::drain`]).
    pub fn written(&self) -> tokio::sync::futures::Notified<'_> {
        self.written.notified()
    }

    /// Takes everything queued now, without waiting.
    pub fn take_now(&self) -> Vec<OutItem> {
        self.queued.lock().map_or_else(
            |_| Vec::new(),
            |mut q| {
                q.messages = 0;
                q.bytes = 0;
                q.items.drain(..).map(|(item, _)| item).collect()
            },
        )
    }

    /// Takes one batch (up to [`MAX_BATCH_FRAMES`] frames or [`MAX_BATCH_BYTES`]), waiting
    /// until there is something.
    pub async fn drain(&self, into: &mut Vec<OutItem>) {
        loop {
            if let Ok(mut q) = self.queued.lock() {
                if !q.items.is_empty() {
                    q.take_batch(into);
                    if !q.items.is_empty() {
                        self.ready.notify_one(); // more is waiting: the next drain goes on
                    }
                    drop(q);
                    self.written.notify_waiters();
                    return;
                }
            }
            self.ready.notified().await;
        }
    }
}

impl Outgoing {
    pub fn new(session: Arc<str>, seq: u64, event_type: EventType, json: String) -> Outgoing {
        Outgoing::whole(session, seq, event_type, Bytes::from(json))
    }

    /// A message whose whole JSON is `json` (a replay unpacked from the compact log).
    pub fn whole(session: Arc<str>, seq: u64, event_type: EventType, json: Bytes) -> Outgoing {
        Outgoing {
            session,
            seq,
            event_type,
            json_len: json.len(),
            json: Json::Whole(json),
            two_frame: None,
        }
    }

    /// What this message holds in memory, about (its JSON, its two-frame form, itself).
    pub fn held_bytes(&self) -> usize {
        let two_frame = self.two_frame.as_ref().map_or(0, |f| f.0.len() + f.1.len());
        std::mem::size_of::<Outgoing>() + self.json_len + two_frame
    }

    /// A message whose JSON from `channel` on is `tail`, shared with other sessions'
    /// messages (see [`haip_protocol::Envelope::shared_json`]).
    pub fn shared(
        session: Arc<str>,
        seq: u64,
        event_type: EventType,
        id: Arc<str>,
        ack: Option<u64>,
        ts: u64,
        tail: Bytes,
    ) -> Outgoing {
        let json_len = Envelope::json_head_len(&id, &session, seq, ack, ts) + tail.len();
        Outgoing {
            session,
            seq,
            event_type,
            json: Json::Shared { id, ack, ts, tail },
            json_len,
            two_frame: None,
        }
    }

    /// An ERROR sent outside any session's numbering (seq 0): the connect-time
    /// RESUME_FAILED, which precedes the fresh session's HAI, and the word that the session
    /// store is out of reach (cluster mode), which cannot wait for that store.
    pub fn unsequenced_error(
        code: ErrorCode,
        message: &str,
        session: &str,
        now_ms: u64,
    ) -> Outgoing {
        let env = Envelope::new(
            uuid::Uuid::new_v4().to_string(),
            if (1..=128).contains(&session.chars().count()) {
                session
            } else {
                "-"
            },
            0,
            now_ms,
            channel::SYSTEM,
            Payload::Error(ErrorPayload {
                code: code.as_str().to_string(),
                message: message.to_string(),
                related_id: None,
                detail: None,
                run_id: None,
                extra: Map::new(),
            }),
        );
        Outgoing::new(
            Arc::from(env.session.as_str()),
            0,
            EventType::Error,
            env.to_json(),
        )
    }

    pub fn json_len(&self) -> usize {
        self.json_len
    }

    /// The JSON as one buffer.
    pub fn json(&self) -> Bytes {
        match &self.json {
            Json::Whole(json) => json.clone(),
            Json::Shared { .. } => {
                let mut buf = BytesMut::with_capacity(self.json_len());
                self.put_json(&mut buf);
                buf.freeze()
            }
        }
    }

    /// Appends the JSON to `buf`.
    pub fn put_json(&self, buf: &mut BytesMut) {
        match &self.json {
            Json::Whole(json) => buf.extend_from_slice(json),
            Json::Shared { id, ack, ts, tail } => {
                // Writing to a BytesMut does not fail.
                let _ = Envelope::write_json_head(buf, id, &self.session, self.seq, *ack, *ts);
                buf.extend_from_slice(tail);
            }
        }
    }
}
