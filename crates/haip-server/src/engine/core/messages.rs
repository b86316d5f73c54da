//! What the session core takes in and hands out besides envelopes: messages shared by
//! many sessions, messages held by flow control, and the work ([`Action`]) it asks its
//! async side to start.

use std::sync::Arc;

use haip_protocol::payload::AudioChunk;
use haip_protocol::Envelope;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// A message many sessions send alike: another session's message in a thread, to each
/// follower; the TOOL_LIST and first HAI, to every new session. Serialized once from
/// `channel` on (see [`Envelope::shared_json`]) and that part is shared: each session adds
/// and keeps only its own head (id, session, seq, ack, ts).
#[derive(Debug)]
pub struct SharedMessage {
    pub env: Envelope,
    /// `env.id`, shared by the copies that keep it.
    pub(super) id: Arc<str>,
    pub(super) shared_json: bytes::Bytes,
    /// Each session gives the message an id of its own (else they all keep `env.id`, as
    /// the copies of one thread message do).
    pub(super) fresh_ids: bool,
}

impl SharedMessage {
    /// Copies of `env` that keep its id (one is drawn if it has none yet).
    pub fn copies_of(mut env: Envelope) -> SharedMessage {
        if env.id.is_empty() {
            env.id = uuid::Uuid::new_v4().to_string();
        }
        SharedMessage {
            id: Arc::from(env.id.as_str()),
            shared_json: env.shared_json().into(),
            env,
            fresh_ids: false,
        }
    }

    /// The same message for many sessions, each with its own id.
    pub fn for_each_session(env: Envelope) -> SharedMessage {
        SharedMessage {
            fresh_ids: true,
            ..SharedMessage::copies_of(env)
        }
    }
}

/// Stands for an id given as the message is sent ([`MessageIds`](crate::engine::replay_pack::MessageIds)): a UUID, as long as this.
pub(super) const ID_TO_BE_GIVEN: &str = "00000000-0000-4000-8000-000000000000";

/// A message on its way out, held by flow control until credit lets it go.
// Not boxed: a session's own messages were moved as whole envelopes before this type
// existed, and a box would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(super) enum Pending {
    Own(Envelope),
    Shared(Arc<SharedMessage>),
}

impl Pending {
    pub(super) fn env(&self) -> &Envelope {
        match self {
            Pending::Own(env) => env,
            Pending::Shared(shared) => &shared.env,
        }
    }
}

/// Work the session asks its async side to start.
#[derive(Debug)]
pub enum Action {
    /// A USER text message completed: the agent answers it.
    Text {
        text: String,
        thread_id: Option<String>,
        /// Cancelled when the work must be given up without a trace (cluster mode: the
        /// session moved before the store had the message that asked for it; the node
        /// that drives it now does the work).
        abandon: CancellationToken,
    },
    /// An AUDIO_CHUNK arrived on USER.
    Audio {
        chunk: AudioChunk,
        abandon: CancellationToken,
    },
    /// A TOOL_CALL for a known tool was accepted.
    CallTool(ToolRun),
    /// The client answered the server's PING after this many ms (for /stats).
    RoundTrip(u64),
    /// RUN_CANCEL for a run whose agent answers on another node (cluster mode).
    CancelRunOn { node: String, run_id: String },
}

/// One tool call to run, a client's or an agent's.
#[derive(Debug)]
pub struct ToolRun {
    pub call_id: String,
    pub tool: String,
    pub params: Map<String, Value>,
    pub run_id: Option<String>,
    /// Cancelled by TOOL_CANCEL or the run's cancellation: the call ends CANCELLED.
    pub cancel: CancellationToken,
    /// Cancelled when the work is given up (see [`Action::Text`]): nothing more is sent.
    pub abandon: CancellationToken,
}
