//! The storage seam: what of a session is kept outside this process, so that any node of
//! a cluster can serve it (contract section 13).
//!
//! The protocol rules stay in [`super::core::SessionCore`], which keeps the working copy
//! of a session: its replay window, inbound sequencing, flow control and run table. In
//! memory mode (no `REDIS_URL`) that copy is the only one and nothing goes through here:
//! the engine has no store and a sent message goes straight to its connection.
//!
//! With a store, a session's core holds what it sends until the store has it: the store
//! pulls a [`SessionWrite`] from each session that has something to keep (the messages
//! with their seqs, the highest client seq processed, the open runs, the client's HAI),
//! writes many sessions' writes in one round trip, and gives the outcome back; only then
//! are the messages written to the client. One node drives a session at a time: its
//! writes are fenced by an epoch, and a node that took the session over
//! ([`SessionStore::claim`]) makes every older writer fail with [`WriteOutcome::Moved`].
//! Whatever a node produces for a session it no longer drives (an agent still answering,
//! a client message posted to it) is [`Forwarded`] to the node that drives it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One sent message as stored: its seq, its ts and its JSON text as the client gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub ts: u64,
    pub json: Bytes,
}

/// An open run and the node whose agent produces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRun {
    pub run_id: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
}

/// What one write keeps of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionWrite {
    pub session: String,
    pub subject: String,
    /// The epoch this node drives the session in; a write of an older epoch is refused.
    pub epoch: u64,
    /// Messages to append, consecutive seqs, the first one just after the stored ones.
    pub messages: Vec<StoredMessage>,
    /// The highest client seq processed in order (the `ack` a new owner goes on with).
    pub last_client_seq: Option<u64>,
    /// The open runs, when they changed since the last write.
    pub runs: Option<Vec<StoredRun>>,
    /// The client's HAI (its terms: accepted events, credit), once negotiated.
    pub client_hai: Option<String>,
    /// Per producing node, the last output it forwarded that is applied here, when it
    /// moved.
    pub applied: Option<HashMap<String, u64>>,
    /// The user messages being assembled (JSON), when they changed: a message whose
    /// start this node processed ends on whatever node the rest arrives at.
    pub texts: Option<String>,
    /// The session was ended (it cannot be resumed anywhere).
    pub ended: bool,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Everything up to this seq is kept.
    Stored { upto: u64 },
    /// Another node drives the session now: nothing of this write was kept.
    Moved,
    /// The store could not be reached; the write is tried again.
    Failed(String),
}

/// A session as a node that takes it over finds it.
#[derive(Debug, Clone, Default)]
pub struct ClaimedSession {
    pub subject: String,
    pub epoch: u64,
    /// The node that drove it before, if another.
    pub previous_owner: Option<String>,
    pub last_seq: u64,
    pub last_client_seq: Option<u64>,
    pub runs: Vec<StoredRun>,
    pub client_hai: Option<String>,
    /// The stored messages, oldest first (the replay window).
    pub messages: Vec<StoredMessage>,
    /// Per producing node, the last forwarded output applied.
    pub applied: HashMap<String, u64>,
    /// The user messages being assembled (JSON).
    pub texts: Option<String>,
    /// What was forwarded to the session and not taken yet: (producer, item).
    pub forwarded: Vec<(String, Forwarded)>,
}

/// Why a session could not be had: resumed, claimed or reached (in memory mode too, for
/// the first three).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("unknown session {0:?}")]
    Unknown(String),
    /// Worded as `Unknown`: whether another user's session exists is nobody else's
    /// business.
    #[error("unknown session {0:?}")]
    NotYours(String),
    #[error("session {0:?} was ended")]
    Ended(String),
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
}

/// Something for a session, to the node that drives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Forwarded {
    /// A message to send (an envelope whose id, seq and ts are given by the node that
    /// sends it), the `n`th its producer forwarded: produced on a node that does not drive
    /// the session, e.g. by an agent still answering there.
    Output { json: String, n: u64 },
    /// A client message that reached another node (`POST /haip/messages`), with its flow
    /// cost.
    Inbound { json: String, cost: u64 },
    /// The client cancelled a run whose agent runs on the receiving node.
    CancelRun { run_id: String },
    /// Another node took the session over: the receiving node closes its connection to
    /// it and forwards what it still produces.
    TakenOver,
    /// Output of `producer` (a copy of the session on the receiving node) up to its `n`th
    /// is applied: it need not keep it.
    Applied { producer: String, n: u64 },
    /// What another session of the same subject sent in a thread this one follows (the
    /// envelopes as that session sent them), to send as this session's own.
    ThreadCopies { jsons: Vec<String> },
    /// A user message for the agent workers attached to the receiving node (none are
    /// attached to the node that drives the session): they answer into the session from
    /// there, as an agent still answering on another node does.
    Job {
        subject: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<Vec<crate::agent::Turn>>,
    },
}

/// What the store pulls from a session.
#[derive(Debug)]
pub enum PendingWrite {
    Keep(SessionWrite),
    /// Output for the node that drives the session now: (producer, item).
    Forward(Vec<(String, Forwarded)>),
}

/// A session as the store sees it: something that has writes to pull and takes the
/// outcome. Implemented by `engine::Session`; a trait so that the store and the session
/// core (which keeps the way back to its session) do not depend on the session type.
pub trait WritingSession: Send + Sync {
    fn session_id(&self) -> &str;
    /// What the store keeps next of this session.
    fn take_write(&self) -> Option<PendingWrite>;
    /// The store's answer to the session's last write; returns the producing nodes to
    /// tell how far their forwarded output is applied.
    fn written(&self, outcome: WriteOutcome) -> Vec<(String, u64)>;
    /// Forwarded output of a [`PendingWrite::Forward`] the store could not take now
    /// (`(producer, item)`, in order): pulled again with the next write.
    fn forward_again(&self, items: Vec<(String, Forwarded)>);
}

/// What a node keeps outside itself. Implemented by `cluster::RedisStore`.
pub trait SessionStore: Send + Sync {
    /// This node's name as owners are recorded (unique per process run).
    fn owner(&self) -> &str;
    /// Whether the store answers now (new connections are refused while it does not).
    fn is_available(&self) -> bool;
    /// The session has something to keep: the store pulls it with
    /// [`WritingSession::take_write`] and answers with [`WritingSession::written`].
    fn schedule(&self, session: Arc<dyn WritingSession>);
    /// Makes this node the one that drives `session` (of `subject`; "" for a session
    /// this node is sent messages for) and returns what is kept of it.
    fn claim<'a>(
        &'a self,
        session: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<ClaimedSession, StoreError>>;
    /// Queues `item`, made by `producer`, for the node that drives `session` and wakes
    /// that node; checks that the session belongs to `subject` when given. A session no
    /// live node drives keeps it for the next one that claims it.
    fn forward<'a>(
        &'a self,
        session: &'a str,
        subject: Option<&'a str>,
        producer: &'a str,
        item: Forwarded,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Takes what was queued for `session`, if this node drives it: (producer, item).
    fn drain<'a>(
        &'a self,
        session: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Forwarded)>, StoreError>>;
    /// Sends `item` about `session` to `node` itself (a run's node, a previous owner).
    fn tell_node<'a>(
        &'a self,
        node: &'a str,
        session: &'a str,
        item: Forwarded,
    ) -> BoxFuture<'a, ()>;
    /// The nodes among `nodes` that are alive.
    fn live_nodes(&self, nodes: Vec<String>) -> BoxFuture<'_, Vec<String>>;
    /// Keeps `sessions` (driven here, with a live connection) from expiring.
    fn refresh(&self, sessions: Vec<String>) -> BoxFuture<'_, ()>;
    /// Records that `session` follows `thread` of `subject`, for the nodes that send in it.
    fn follow<'a>(
        &'a self,
        subject: &'a str,
        thread: &'a str,
        session: &'a str,
    ) -> BoxFuture<'a, ()>;
    /// A node run other than this one with agent workers attached, if any.
    fn worker_node(&self) -> BoxFuture<'_, Option<String>>;
    /// What session `origin` sent in threads, `(thread, envelope JSON)` in order, for the
    /// followers on other nodes (queued; sent in order by a task of the store).
    fn copy_to_followers(&self, subject: &str, origin: &str, sent: Vec<(String, String)>);
}
