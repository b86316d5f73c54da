//! The state of one session and every protocol rule applied to it, whatever the transport.
//!
//! `SessionCore` is plain data behind the session's lock: no sockets, no timers. The
//! connection driver feeds it validated envelopes and the time; it answers with envelopes
//! queued to the attached connection and with [`Action`]s (agent and tool work) that the
//! async side starts. Every message the server sends passes through [`SessionCore::emit`],
//! which applies the client's event filter, flow control, run cancellation, sequencing and
//! the replay window in one place.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use haip_protocol::flow::{Credit, ReceiveMeter, SendGate};
use haip_protocol::handshake::{self, Offer, PeerTerms, VersionIncompatible};
use haip_protocol::payload::{
    AudioChunk, ChannelRef, ErrorPayload, FlowUpdate, Hai, Nonce, RunFinished, RunStatus, ToolCall,
    ToolDone,
};
use haip_protocol::replay::{ReplayConfig, ReplayError, ReplayWindow, Replayed};
use haip_protocol::runs::{RunError, RunTable, ToolCalls};
use haip_protocol::sequencer::{Arrival, Sequencer};
use haip_protocol::{channel, Envelope, ErrorCode, Payload};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::outbound::{Close, ConnQueue, OutItem, Outgoing};
use super::replay_pack::{MessageIds, OutgoingPacker};
use crate::agent::RunEnding;
use crate::tools::{ToolCatalog, ToolOutcome};

mod durable;
mod forwarding;
pub use durable::AGENT_NODE_LOST;
pub use forwarding::node_of;

/// A message many sessions send alike: another session's message in a thread, to each
/// follower; the TOOL_LIST and first HAI, to every new session. Serialized once from
/// `channel` on (see [`Envelope::shared_json`]) and that part is shared: each session adds
/// and keeps only its own head (id, session, seq, ack, ts).
#[derive(Debug)]
pub struct SharedMessage {
    pub env: Envelope,
    /// `env.id`, shared by the copies that keep it.
    id: Arc<str>,
    shared_json: bytes::Bytes,
    /// Each session gives the message an id of its own (else they all keep `env.id`, as
    /// the copies of one thread message do).
    fresh_ids: bool,
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

/// Stands for an id given as the message is sent ([`MessageIds`]): a UUID, as long as this.
const ID_TO_BE_GIVEN: &str = "00000000-0000-4000-8000-000000000000";

/// A message on its way out, held by flow control until credit lets it go.
// Not boxed: a session's own messages were moved as whole envelopes before this type
// existed, and a box would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Pending {
    Own(Envelope),
    Shared(Arc<SharedMessage>),
}

impl Pending {
    fn env(&self) -> &Envelope {
        match self {
            Pending::Own(env) => env,
            Pending::Shared(shared) => &shared.env,
        }
    }
}

/// The limits a session is created with (from the server configuration).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub replay: ReplayConfig,
    pub max_concurrent_runs: u64,
    /// Credit the client may use towards the server (`UNLIMITED` when flow control is off).
    pub inbound_credit: Credit,
    /// Out-of-order client messages held while waiting for a gap to fill.
    pub max_held_inbound: usize,
    /// Client input the session keeps before it can act on it, in bytes: out-of-order
    /// messages held for a gap, and user messages not ended yet (each bound on its own).
    pub max_pending_input_bytes: u64,
    /// Client tool calls running at once.
    pub max_running_tool_calls: usize,
    /// Output the client has not taken (held by flow control, or queued behind a write
    /// that does not progress) beyond which the session is ended.
    pub max_held_messages: usize,
    pub max_held_bytes: u64,
}

/// What one running tool call is counted as in the memory budget (its task, params and
/// bookkeeping), in bytes.
pub const TOOL_CALL_BYTES: u64 = 2048;

/// The bytes a session holds that a client can make grow, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionUsage {
    /// Sent messages kept for resume.
    pub replay: u64,
    /// Output the client has not taken: held by flow control or queued for its writer.
    pub held_output: u64,
    /// Replayed messages queued for the writer (shared with the window, counted anyway).
    pub queued_replays: u64,
    /// Out-of-order client messages held for a gap.
    pub inbound_held: u64,
    /// User messages started and not ended.
    pub unfinished_messages: u64,
    pub tool_calls: u64,
}

impl SessionUsage {
    pub fn total(&self) -> u64 {
        self.replay
            + self.held_output
            + self.queued_replays
            + self.inbound_held
            + self.unfinished_messages
            + self.tool_calls
    }
}

/// The most user messages a session assembles at once (started, not ended).
pub const MAX_OPEN_MESSAGES: usize = 64;

/// The most unsent output an agent may be ahead of its client (see
/// [`SessionLimits::agent_high_water`]).
const AGENT_HIGH_WATER_MESSAGES: usize = 1000;
const AGENT_HIGH_WATER_BYTES: u64 = 1024 * 1024;

impl SessionLimits {
    /// Unsent output above which an agent's sends wait: at most half the held-output
    /// bound, so that an agent alone never reaches the bound and only what a client causes
    /// does; and no more than keeps a fast client busy between two writes, so that a client
    /// that reads slowly costs little memory.
    pub fn agent_high_water(&self) -> (usize, u64) {
        (
            (self.max_held_messages / 2).min(AGENT_HIGH_WATER_MESSAGES),
            (self.max_held_bytes / 2).min(AGENT_HIGH_WATER_BYTES),
        )
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            replay: ReplayConfig::default(),
            max_concurrent_runs: 10,
            inbound_credit: Credit::new(Some(1000), Some(1024 * 1024)),
            max_held_inbound: 1000,
            max_pending_input_bytes: 4 * 1024 * 1024,
            max_running_tool_calls: 100,
            max_held_messages: 10_000,
            max_held_bytes: 16 * 1024 * 1024,
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

/// A rule broken by the client, counted by the connection towards its close thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Protocol,
    FlowControl,
}

/// Protocol violations a connection may commit before it is closed (contract section 2).
pub const MAX_PROTOCOL_VIOLATIONS: u32 = 10;
/// Flow-control violations a connection may commit before it is closed.
pub const MAX_FLOW_VIOLATIONS: u32 = 20;

pub struct SessionCore {
    pub id: String,
    /// The id again, shared by every message sent.
    shared_id: Arc<str>,
    pub subject: String,
    limits: Arc<SessionLimits>,
    binary_frames: bool,
    last_sent_seq: u64,
    /// The ids of the session's own messages, made from their seqs so that the replay log
    /// need not keep them.
    ids: MessageIds,
    /// What was sent, kept for replay and resume; full segments are packed (replay_pack.rs).
    replay: ReplayWindow<Arc<Outgoing>, OutgoingPacker>,
    gate: SendGate<Pending>,
    meter: ReceiveMeter,
    inbound: Sequencer<(Envelope, u64)>,
    runs: RunTable,
    tool_calls: ToolCalls,
    terms: PeerTerms,
    negotiated: bool,
    attached: Option<Arc<ConnQueue>>,
    /// USER messages being assembled: message_id -> text so far.
    texts: HashMap<String, (String, Option<String>)>,
    /// The bytes of `texts`, bounded by `max_pending_input_bytes`.
    texts_bytes: u64,
    /// Changes with every change of `texts` (cluster mode stores them when it moved).
    texts_generation: u32,
    /// User messages dropped for their size: their later parts and end are ignored (the
    /// most recent [`MAX_OPEN_MESSAGES`]).
    /// Boxed and made only when needed: most sessions never drop a message, and an idle
    /// session then carries one pointer instead of an empty queue's four words.
    #[allow(clippy::box_collection)]
    dropped_texts: Option<Box<std::collections::VecDeque<String>>>,
    /// Cancellation of the agent work of each open run and each running tool call.
    cancels: HashMap<String, CancellationToken>,
    /// Runs cancelled while tool calls of theirs were still running: their RUN_FINISHED
    /// waits for the last TOOL_DONE, so that nothing of a run follows its RUN_FINISHED.
    finish_after_tools: HashMap<String, RunEnding>,
    /// The nonce and send time of the last heartbeat PING, to time its PONG.
    ping_in_flight: Option<(String, u64)>,
    last_client_activity_ms: u64,
    detached_since_ms: Option<u64>,
    /// Violations of the attached connection, whichever way its messages came in (its own
    /// socket or `POST /haip/messages`); they start from zero on each attach.
    protocol_violations: u32,
    flow_violations: u32,
    /// Set when the session was ended for holding too much output: it sends nothing more
    /// and cannot be resumed.
    ended: bool,
    /// Messages sent in threads, waiting to be copied to the threads' followers once the
    /// session's lock is released.
    thread_output: Vec<(String, Envelope)>,
    /// Set once any session follows a thread (see [`SessionCore::share_threads`]); until
    /// then messages in threads are not copied at all.
    threads_followed: Option<Arc<AtomicBool>>,
    /// Where admins watching get a copy of what is sent (see `engine::tap`).
    tap: Option<Arc<super::tap::Tap>>,
    /// Set in cluster mode: what waits for the store (see `engine::store`). Boxed: a
    /// memory-mode session carries one pointer.
    durable: Option<Box<durable::Durable>>,
}

impl SessionCore {
    pub fn new(
        id: String,
        subject: String,
        limits: Arc<SessionLimits>,
        binary_frames: bool,
        now_ms: u64,
    ) -> SessionCore {
        let shared_id: Arc<str> = Arc::from(id.as_str());
        let ids = MessageIds::random();
        SessionCore {
            replay: ReplayWindow::with_packer(
                limits.replay,
                OutgoingPacker::new(shared_id.clone(), ids),
            ),
            ids,
            shared_id,
            id,
            subject,
            gate: SendGate::new(Credit::UNLIMITED),
            meter: ReceiveMeter::new(limits.inbound_credit),
            inbound: Sequencer::with_byte_bound(
                limits.max_held_inbound,
                limits.max_pending_input_bytes,
            ),
            runs: RunTable::new(limits.max_concurrent_runs),
            tool_calls: ToolCalls::default(),
            terms: PeerTerms::defaults(),
            negotiated: false,
            attached: None,
            texts: HashMap::new(),
            texts_bytes: 0,
            texts_generation: 0,
            dropped_texts: None,
            cancels: HashMap::new(),
            finish_after_tools: HashMap::new(),
            ping_in_flight: None,
            protocol_violations: 0,
            flow_violations: 0,
            ended: false,
            thread_output: Vec::new(),
            threads_followed: None,
            tap: None,
            durable: None,
            last_client_activity_ms: now_ms,
            detached_since_ms: Some(now_ms),
            limits,
            binary_frames,
            last_sent_seq: 0,
        }
    }

    /// The server's HAI for this session (also confirms a resume, with `last_rx_seq`).
    pub fn server_hai(&self, last_rx_seq: Option<u64>) -> Hai {
        handshake::hai(&Offer {
            binary_frames: self.binary_frames,
            credit: self.meter.advertised(),
            max_concurrent_runs: self.limits.max_concurrent_runs,
            last_rx_seq,
        })
    }

    pub fn last_client_seq(&self) -> Option<u64> {
        self.inbound.last_delivered()
    }

    pub fn last_sent_seq(&self) -> u64 {
        self.last_sent_seq
    }

    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    pub fn attached_queue(&self) -> Option<Arc<ConnQueue>> {
        self.attached.clone()
    }

    pub fn binary_frames(&self) -> bool {
        self.binary_frames
    }

    pub fn detached_since_ms(&self) -> Option<u64> {
        self.detached_since_ms
    }

    pub fn last_client_activity_ms(&self) -> u64 {
        self.last_client_activity_ms
    }

    pub fn touch(&mut self, now_ms: u64) {
        self.last_client_activity_ms = now_ms;
    }

    pub fn open_run_count(&self) -> usize {
        self.runs.open_count()
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    pub fn held_outbound(&self) -> (usize, u64) {
        (self.gate.held_messages(), self.gate.held_bytes())
    }

    /// True while the output the client has not taken (held by flow control, or queued
    /// for the connection's writer) is above the agents' high-water mark.
    pub fn over_agent_high_water(&self) -> bool {
        if self.ended {
            return false; // nothing more goes out: nothing to wait for
        }
        let (mut messages, mut bytes) = self.held_outbound();
        if let Some(q) = &self.attached {
            let (m, b) = q.backlog();
            messages += m;
            bytes += b;
        }
        let (max_messages, max_bytes) = self.limits.agent_high_water();
        messages > max_messages || bytes > max_bytes
    }

    /// Attaches a connection and queues what it must see first: nothing for a fresh
    /// session (the caller announces it), or the replay after `last_rx_seq` followed by
    /// the confirming HAI for a resume. All or nothing: on error nothing is queued.
    pub fn attach(
        &mut self,
        queue: Arc<ConnQueue>,
        resume_after: Option<u64>,
        binary_frames: bool,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        if let Some(n) = resume_after {
            // Only what the store has may be written (cluster mode); the rest follows as
            // the store confirms it.
            let stored = self.stored_seq();
            if n > stored {
                return Err(ReplayError::NeverSent {
                    claimed: n,
                    last_sent: stored,
                });
            }
            let replay: Vec<OutItem> = self
                .replay
                .range(n.saturating_add(1), Some(stored))?
                .map(|o| OutItem::Frame(o.into_owned()))
                .collect();
            queue.push_replay(replay);
        }
        if let Some(old) = self.attached.replace(queue) {
            old.push(OutItem::Close(Close {
                code: 1000,
                reason: "session resumed on another connection".into(),
            }));
        }
        self.binary_frames = binary_frames;
        self.detached_since_ms = None;
        self.protocol_violations = 0;
        self.flow_violations = 0;
        self.last_client_activity_ms = now_ms;
        if resume_after.is_some() {
            let hai = self.server_hai(self.last_client_seq());
            self.emit(self.system(Payload::Hai(hai)), now_ms);
        }
        Ok(())
    }

    /// Detaches `queue` if it is the attached connection; the session stays resumable.
    pub fn detach(&mut self, queue: &Arc<ConnQueue>, now_ms: u64) {
        if self
            .attached
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, queue))
        {
            self.attached = None;
            self.detached_since_ms = Some(now_ms);
        }
    }

    /// An envelope of this session on `channel` with id, seq and ts still to be set: they
    /// are given as it is sent (the id from the seq, see [`MessageIds`]).
    pub fn envelope(&self, channel: &str, payload: Payload) -> Envelope {
        Envelope::new(String::new(), self.id.clone(), 0, 0, channel, payload)
    }

    fn system(&self, payload: Payload) -> Envelope {
        self.envelope(channel::SYSTEM, payload)
    }

    /// Sends ERROR on SYSTEM.
    pub fn emit_error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        related_id: Option<String>,
        detail: Option<Value>,
        now_ms: u64,
    ) {
        let detail = match detail {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        };
        let payload = Payload::Error(ErrorPayload {
            code: code.as_str().to_string(),
            message: message.into(),
            related_id,
            detail,
            run_id: None,
            extra: Map::new(),
        });
        let env = self.system(payload);
        self.emit(env, now_ms);
    }

    /// Counts a rule the client broke against the attached connection and closes it (1008)
    /// once a threshold of contract section 2 is passed. True when it was closed.
    pub fn count_violation(&mut self, violation: Violation) -> bool {
        let over = match violation {
            Violation::Protocol => {
                self.protocol_violations += 1;
                self.protocol_violations > MAX_PROTOCOL_VIOLATIONS
            }
            Violation::FlowControl => {
                self.flow_violations += 1;
                self.flow_violations > MAX_FLOW_VIOLATIONS
            }
        };
        if over {
            self.close_connection(Close {
                code: 1008,
                reason: "too many violations".into(),
            });
        }
        over
    }

    /// Answers a message that failed validation (its code, the field, related_id) and
    /// counts it as a protocol violation of the attached connection.
    pub fn refuse(&mut self, e: &haip_protocol::ValidationError, now_ms: u64) {
        self.emit_error(
            e.code,
            e.reason.clone(),
            e.related_id.clone(),
            Some(e.detail()),
            now_ms,
        );
        self.count_violation(Violation::Protocol);
    }

    /// Sends one message: drops output of a cancelled run, keeps a copy for the followers
    /// of its thread, applies the event filter, then lets flow control release it (or
    /// hold it, never dropping).
    pub fn emit(&mut self, env: Envelope, now_ms: u64) {
        if self.ended {
            return;
        }
        if let Some(run_id) = &env.run_id {
            // TOOL_DONE still goes out: it tells the client how each call of the run ended.
            let closing = matches!(
                env.payload,
                Payload::RunFinished(_) | Payload::RunError(_) | Payload::ToolDone(_)
            );
            if self.runs.is_cancelled(run_id) && !closing {
                return;
            }
        }
        if self.forward_if_elsewhere(&env) {
            return;
        }
        let followed = self
            .threads_followed
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire));
        if followed {
            if let Some(thread) = self.thread_of(&env) {
                // The copies of a thread message carry the id it has here, fixed now.
                let mut env = env;
                if env.id.is_empty() {
                    env.id = uuid::Uuid::new_v4().to_string();
                }
                self.thread_output.push((thread, env.clone()));
                self.deliver(Pending::Own(env), now_ms);
                return;
            }
        }
        self.deliver(Pending::Own(env), now_ms);
    }

    /// Keeps copies of what is sent in threads for their followers once `followed` is set
    /// (by the first session that follows a thread): a server whose clients never follow
    /// threads does not copy anything.
    pub fn share_threads(&mut self, followed: Arc<AtomicBool>) {
        self.threads_followed = Some(followed);
    }

    /// Sends a message many sessions send alike (see [`SharedMessage`]): a copy of what
    /// another session of the same subject sent in a thread this one follows, or the
    /// greeting. It becomes this session's own message: its seq, its credit, its replay
    /// window.
    /// Copies what the session sends to `tap` while someone watches it.
    pub fn set_tap(&mut self, tap: Arc<super::tap::Tap>) {
        self.tap = Some(tap);
    }

    pub fn emit_shared(&mut self, message: &Arc<SharedMessage>, now_ms: u64) {
        if self.ended || self.forward_if_elsewhere(&message.env) {
            return;
        }
        self.deliver(Pending::Shared(message.clone()), now_ms);
    }

    /// The thread a message is sent in: its own `thread_id`, else that of its run.
    fn thread_of(&self, env: &Envelope) -> Option<String> {
        if env.channel == channel::SYSTEM {
            return None; // housekeeping of this connection, not conversation
        }
        env.thread_id.clone().or_else(|| {
            let run = env.run_id.as_deref()?;
            self.runs.get(run)?.thread_id.clone()
        })
    }

    /// What was sent in threads since the last call, for their followers.
    pub fn take_thread_output(&mut self) -> Vec<(String, Envelope)> {
        std::mem::take(&mut self.thread_output)
    }

    fn deliver(&mut self, pending: Pending, now_ms: u64) {
        let env = pending.env();
        if !self.terms.accepts.contains(env.event_type()) {
            return; // suppressed messages take no seq
        }
        // The cost is only needed when the gate may hold the message: it counts towards
        // byte credit and towards the held-output bound.
        let restricted =
            !self.gate.credit(&env.channel).is_unlimited() || self.gate.is_paused(&env.channel);
        let cost = if restricted {
            self.unsent_cost(&pending, now_ms)
        } else {
            0
        };
        let channel = env.channel.clone();
        match self.gate.offer(&channel, cost, pending) {
            Some(pending) => self.send_now(pending, now_ms),
            None => {
                let (messages, bytes) = (self.gate.held_messages(), self.gate.held_bytes());
                if messages > self.limits.max_held_messages || bytes > self.limits.max_held_bytes {
                    self.end_for_held_output("held by flow control", messages, bytes, now_ms);
                }
            }
        }
    }

    /// What a message about to be offered to flow control costs, counted as the client
    /// counts it (contract section 6): its JSON as sent plus decoded data. Seq, ack and ts
    /// are those it gets if it goes now; one held behind others gets a later seq and ts,
    /// which changes its length only when a number gains a digit.
    fn unsent_cost(&self, pending: &Pending, now_ms: u64) -> u64 {
        let seq = self.last_sent_seq + 1 + self.gate.held_messages() as u64;
        let ack = self.inbound.last_delivered();
        let json_len = match pending {
            Pending::Own(env) => {
                let as_is =
                    Envelope::json_head_len(&env.id, &env.session, env.seq, env.ack, env.ts);
                let id = if env.id.is_empty() {
                    ID_TO_BE_GIVEN
                } else {
                    &env.id
                };
                let as_sent = Envelope::json_head_len(id, &env.session, seq, ack, now_ms);
                env.to_json().len() - as_is + as_sent
            }
            Pending::Shared(shared) => {
                let id = if shared.fresh_ids {
                    ID_TO_BE_GIVEN
                } else {
                    &shared.id
                };
                Envelope::json_head_len(id, &self.id, seq, ack, now_ms) + shared.shared_json.len()
            }
        };
        pending.env().flow_cost(json_len)
    }

    /// Ends the session: its output outgrew the bound while the client did not take it
    /// (no credit, a paused channel, or a connection that does not read). The client is
    /// told with ERROR FLOW_CONTROL_VIOLATION when it still reads; memory is freed at once.
    fn end_for_held_output(&mut self, why: &str, messages: usize, bytes: u64, now_ms: u64) {
        tracing::warn!(
            session = %self.id,
            subject = %self.subject,
            held_messages = messages,
            held_bytes = bytes,
            limit_messages = self.limits.max_held_messages,
            limit_bytes = self.limits.max_held_bytes,
            "ending session: output {why} over the limit"
        );
        let detail = serde_json::json!({
            "reason": "HELD_OUTPUT_LIMIT",
            "held_messages": messages,
            "held_bytes": bytes,
            "limit_messages": self.limits.max_held_messages,
            "limit_bytes": self.limits.max_held_bytes,
        });
        self.end(
            ErrorCode::FlowControlViolation,
            format!("session ended: output {why} exceeded the limit"),
            detail,
            "held output over limit",
            now_ms,
        );
    }

    /// Ends the session because the server is past its memory budget and this session is
    /// among those holding the most (see `engine::budget`).
    pub fn end_for_memory_budget(&mut self, used: u64, now_ms: u64) {
        tracing::warn!(
            session = %self.id,
            subject = %self.subject,
            session_bytes = used,
            "ending session: the server is over its memory budget and this session holds the most"
        );
        let detail = serde_json::json!({"reason": "MEMORY_LIMIT", "session_bytes": used});
        self.end(
            ErrorCode::RateLimited,
            "session ended: the server is short of memory and this session held the most; \
             reconnect for a new session"
                .to_string(),
            detail,
            "server over its memory budget",
            now_ms,
        );
    }

    /// Tells the client why (ERROR on SYSTEM, never held), closes its connection with 1008
    /// and frees what the session holds; it cannot be resumed.
    fn end(
        &mut self,
        code: ErrorCode,
        message: String,
        detail: Value,
        close_reason: &str,
        now_ms: u64,
    ) {
        self.ended = true;
        let error = self.system(Payload::Error(ErrorPayload {
            code: code.as_str().to_string(),
            message,
            related_id: None,
            detail: detail.as_object().cloned(),
            run_id: None,
            extra: Map::new(),
        }));
        self.send_now(Pending::Own(error), now_ms); // SYSTEM: never held by flow control
        if let (Some(d), Some(q)) = (&self.durable, &self.attached) {
            // Written without waiting for the store: the session is over either way.
            if let Some(error) = d.last_unstored() {
                q.push(OutItem::Frame(error));
            }
        }
        self.close_connection(Close {
            code: 1008,
            reason: close_reason.into(),
        });
        if let Some(q) = self.attached.take() {
            if q.is_writing() {
                q.abort(); // the client is not reading: do not wait for it
            }
        }
        self.detached_since_ms = Some(now_ms);
        self.cancel_all();
        self.gate = SendGate::new(Credit::UNLIMITED);
        self.replay = ReplayWindow::with_packer(
            self.limits.replay,
            OutgoingPacker::new(self.shared_id.clone(), self.ids),
        );
        self.inbound = Sequencer::with_byte_bound(0, 0);
        self.texts.clear();
        self.texts_bytes = 0;
        self.texts_generation = self.texts_generation.wrapping_add(1);
    }

    /// What the session holds that a client can make grow, in bytes.
    pub fn memory_usage(&self) -> SessionUsage {
        let (queued, queued_replay) = match &self.attached {
            Some(q) => (q.backlog().1, q.replay_backlog().1),
            None => (0, 0),
        };
        SessionUsage {
            replay: self.replay.bytes(),
            held_output: self.gate.held_bytes() + queued,
            queued_replays: queued_replay,
            inbound_held: self.inbound.held_bytes(),
            unfinished_messages: self.texts_bytes,
            tool_calls: self.tool_calls.len() as u64 * TOOL_CALL_BYTES,
        }
    }

    /// Gives up the oldest replay entries until the window holds at most `max_bytes`;
    /// returns the bytes freed.
    pub fn shrink_replay(&mut self, max_bytes: u64) -> u64 {
        self.replay.shrink_to(max_bytes)
    }

    fn send_now(&mut self, pending: Pending, now_ms: u64) {
        self.last_sent_seq += 1;
        let seq = self.last_sent_seq;
        let ack = self.inbound.last_delivered();
        let out = match pending {
            Pending::Own(mut env) => {
                if env.id.is_empty() {
                    env.id = self.ids.id(seq).to_string();
                }
                env.seq = seq;
                env.ts = now_ms;
                env.ack = ack;
                let json = env.to_json();
                let mut out = Outgoing::new(self.shared_id.clone(), seq, env.event_type(), json);
                out.two_frame = self.two_frame(&env);
                out
            }
            Pending::Shared(shared) => {
                let env = &shared.env;
                let id: Arc<str> = if shared.fresh_ids {
                    Arc::from(self.ids.id(seq).to_string())
                } else {
                    shared.id.clone()
                };
                let mut out = Outgoing::shared(
                    self.shared_id.clone(),
                    seq,
                    env.event_type(),
                    id.clone(),
                    ack,
                    now_ms,
                    shared.shared_json.clone(),
                );
                if self.terms.binary_frames && matches!(env.payload, Payload::AudioChunk(_)) {
                    let mut own = env.clone();
                    own.id = id.to_string();
                    own.session = self.id.clone();
                    own.seq = seq;
                    own.ts = now_ms;
                    own.ack = ack;
                    out.two_frame = self.two_frame(&own);
                }
                out
            }
        };
        let bytes = out.json_len() as u64;
        let out = Arc::new(out);
        if let Some(tap) = self.tap.as_ref().filter(|t| t.active()) {
            let mut json = bytes::BytesMut::new();
            out.put_json(&mut json);
            tap.send(super::tap::Tapped {
                direction: super::tap::Direction::Out,
                session: self.shared_id.clone(),
                subject: Arc::from(self.subject.as_str()),
                json: String::from_utf8_lossy(&json).into_owned(),
            });
        }
        // Seqs are consecutive by construction, so the push cannot be refused.
        let _ = self.replay.push(seq, now_ms, bytes, out.clone());
        if self.hold_until_stored(&out, now_ms) {
            return; // written once the store has it (cluster mode)
        }
        let Some(q) = &self.attached else {
            return;
        };
        q.push(OutItem::Frame(out));
        let (messages, bytes) = q.backlog();
        if !self.ended
            && (messages > self.limits.max_held_messages || bytes > self.limits.max_held_bytes)
        {
            self.end_for_held_output("not written to the client", messages, bytes, now_ms);
        }
    }

    /// Refuses a REPLAY_REQUEST while earlier replays are still queued past the bound.
    fn replays_must_wait(
        &mut self,
        queued: usize,
        queued_bytes: u64,
        related: Option<String>,
        now_ms: u64,
    ) {
        self.emit_error(
            ErrorCode::RateLimited,
            "earlier replays are still being sent: ask again once they arrived",
            related,
            Some(serde_json::json!({
                "queued_messages": queued,
                "queued_bytes": queued_bytes,
            })),
            now_ms,
        );
    }

    /// The header-plus-bytes form of an AUDIO_CHUNK, when the client said in its HAI that
    /// it takes binary frames. Kept beside the base64 form: the same message may be
    /// replayed later to a transport without binary frames.
    fn two_frame(&self, env: &Envelope) -> Option<Box<(bytes::Bytes, bytes::Bytes)>> {
        if !self.terms.binary_frames {
            return None;
        }
        let Payload::AudioChunk(chunk) = &env.payload else {
            return None;
        };
        let data = chunk.data.as_ref()?;
        let mut header = env.clone();
        if let Payload::AudioChunk(c) = &mut header.payload {
            c.data = None;
        }
        header.bin_len = Some(data.len() as u64);
        header.bin_mime = Some(chunk.mime.clone());
        Some(Box::new((
            header.to_json().into(),
            bytes::Bytes::copy_from_slice(data),
        )))
    }

    /// Handles one valid envelope from the client (`cost` counts towards flow control)
    /// and returns the work to start. Rules the client broke are answered and counted here;
    /// a connection that must close gets its close queued.
    pub fn receive(
        &mut self,
        env: Envelope,
        cost: u64,
        tools: &dyn ToolCatalog,
        now_ms: u64,
    ) -> Vec<Action> {
        if self.pass_inbound_if_elsewhere(&env, cost) {
            return Vec::new(); // processed by the node that drives the session
        }
        self.last_client_activity_ms = now_ms;
        let timers_before = self.timers();
        let actions = self.receive_inner(env, cost, tools, now_ms);
        if self.timers() != timers_before {
            if let Some(q) = &self.attached {
                q.wake_timers();
            }
        }
        actions
    }

    /// The deadlines the attached connection sleeps towards.
    fn timers(&self) -> (Option<u64>, Option<u64>) {
        (self.inbound.next_deadline(), self.meter.next_flush_ms())
    }

    fn receive_inner(
        &mut self,
        env: Envelope,
        cost: u64,
        tools: &dyn ToolCatalog,
        now_ms: u64,
    ) -> Vec<Action> {
        if let Err(refusal) = self.meter.admit(&env.channel, cost) {
            let detail = serde_json::json!({"reason": refusal.as_str(), "channel": env.channel});
            self.emit_error(
                ErrorCode::FlowControlViolation,
                format!("message refused by flow control on channel {}", env.channel),
                Some(env.id),
                Some(detail),
                now_ms,
            );
            self.count_violation(Violation::FlowControl);
            return Vec::new();
        }
        let seq = env.seq;
        let channel = env.channel.clone();
        let ready = match self.inbound.accept_sized(seq, (env, cost), cost, now_ms) {
            Arrival::Deliver(ready) => ready,
            Arrival::Held => return Vec::new(),
            Arrival::Duplicate => {
                // Dropped silently, but its credit was spent: hand it back, or a client
                // that retransmits after a resume would run out of credit for good.
                if let Some(grant) = self.meter.consumed(&channel, cost, now_ms) {
                    self.send_grant(grant, now_ms);
                }
                return Vec::new();
            }
            Arrival::Overflow((env, _)) => {
                if let Some(grant) = self.meter.consumed(&channel, cost, now_ms) {
                    self.send_grant(grant, now_ms);
                }
                self.emit_error(
                    ErrorCode::SeqViolation,
                    format!(
                        "seq {seq} is too far ahead: too many messages (or bytes) already \
                         held waiting for the missing ones"
                    ),
                    Some(env.id),
                    None,
                    now_ms,
                );
                self.count_violation(Violation::Protocol);
                return Vec::new();
            }
        };
        let mut actions = Vec::new();
        for (env, cost) in ready {
            let ch = env.channel.clone();
            let (client_seq, before) = (env.seq, actions.len());
            if let Some(v) = self.process(env, tools, now_ms, &mut actions) {
                self.count_violation(v);
            }
            if actions.len() > before {
                self.tag_work(&mut actions[before..], client_seq);
            }
            if let Some(grant) = self.meter.consumed(&ch, cost, now_ms) {
                self.send_grant(grant, now_ms);
            }
        }
        actions
    }

    /// Asks for a missing range when a gap has been open too long.
    pub fn poll_gap(&mut self, now_ms: u64) {
        if let Some(missing) = self.inbound.poll_gap(now_ms) {
            let payload = Payload::ReplayRequest(haip_protocol::payload::ReplayRequest {
                from_seq: missing.from_seq,
                to_seq: Some(missing.to_seq),
                extra: Map::new(),
            });
            let env = self.system(payload);
            self.emit(env, now_ms);
        }
    }

    /// Appends to a user message being assembled. A message that would take the texts
    /// being assembled past `max_pending_input_bytes` (or one more open message than
    /// [`MAX_OPEN_MESSAGES`]) is dropped with PROTOCOL_VIOLATION: what it had so far is
    /// freed, and its later parts and its end are ignored.
    fn add_text(
        &mut self,
        message_id: String,
        text: &str,
        thread_id: Option<String>,
        related: Option<String>,
        now_ms: u64,
    ) -> Option<Violation> {
        let open = self.texts.contains_key(&message_id);
        let too_many = !open && self.texts.len() >= MAX_OPEN_MESSAGES;
        let too_long = self.texts_bytes + text.len() as u64 > self.limits.max_pending_input_bytes;
        if too_many || too_long {
            if let Some((old, _)) = self.texts.remove(&message_id) {
                self.texts_bytes -= old.len() as u64;
                self.texts_generation = self.texts_generation.wrapping_add(1);
            }
            let dropped = self.dropped_texts.get_or_insert_with(Default::default);
            if dropped.len() >= MAX_OPEN_MESSAGES {
                dropped.pop_front();
            }
            dropped.push_back(message_id.clone());
            let why = if too_many {
                format!("more than {MAX_OPEN_MESSAGES} user messages are open at once")
            } else {
                format!(
                    "user messages not ended yet would exceed {} bytes",
                    self.limits.max_pending_input_bytes
                )
            };
            self.emit_error(
                ErrorCode::ProtocolViolation,
                format!("message {message_id:?} dropped: {why}"),
                related,
                Some(serde_json::json!({"message_id": message_id})),
                now_ms,
            );
            return Some(Violation::Protocol);
        }
        self.texts_bytes += text.len() as u64;
        self.texts_generation = self.texts_generation.wrapping_add(1);
        self.texts
            .entry(message_id)
            .or_insert_with(|| (String::new(), thread_id))
            .0
            .push_str(text);
        None
    }

    /// Hands back credit the client is owed but that stayed below the half threshold.
    pub fn flush_grants(&mut self, now_ms: u64) {
        for grant in self.meter.flush(now_ms) {
            self.send_grant(grant, now_ms);
        }
    }

    pub fn next_grant_ms(&self) -> Option<u64> {
        self.meter.next_flush_ms()
    }

    fn send_grant(&mut self, grant: haip_protocol::flow::Grant, now_ms: u64) {
        let payload = Payload::FlowUpdate(FlowUpdate {
            channel: grant.channel,
            add_messages: Some(grant.add_messages),
            add_bytes: Some(grant.add_bytes),
            extra: Map::new(),
        });
        let env = self.system(payload);
        self.emit(env, now_ms);
    }

    pub fn next_gap_deadline(&self) -> Option<u64> {
        self.inbound.next_deadline()
    }

    fn process(
        &mut self,
        env: Envelope,
        tools: &dyn ToolCatalog,
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) -> Option<Violation> {
        let related = Some(env.id.clone());
        match env.payload {
            Payload::Hai(hai) => self.negotiate(&hai, related, now_ms),
            Payload::Ping(Nonce { nonce, .. }) => {
                let env = self.system(Payload::Pong(Nonce {
                    nonce,
                    extra: Map::new(),
                }));
                self.emit(env, now_ms);
            }
            Payload::Pong(Nonce {
                nonce: Some(nonce), ..
            }) if self
                .ping_in_flight
                .as_ref()
                .is_some_and(|(sent, _)| *sent == nonce) =>
            {
                if let Some((_, sent_ms)) = self.ping_in_flight.take() {
                    actions.push(Action::RoundTrip(now_ms.saturating_sub(sent_ms)));
                }
            }
            Payload::Pong(_) | Payload::Error(_) | Payload::RunError(_) => {}
            Payload::ReplayRequest(r) => {
                // Replays come from the window, so each is bounded by it; but a client may
                // ask again and again without reading. Past one held-output bound of
                // replays still queued, it must wait. Counted before anything is unpacked:
                // reading packed segments back is work.
                let backlog = self.attached.as_ref().map(|q| q.replay_backlog());
                let from = r.from_seq.max(1);
                let to = r.to_seq.unwrap_or(u64::MAX).min(self.stored_seq());
                let count = if from <= to {
                    (to - from + 1) as usize
                } else {
                    0
                };
                if let Some((queued, queued_bytes)) = backlog {
                    if queued + count > self.limits.max_held_messages {
                        self.replays_must_wait(queued, queued_bytes, related, now_ms);
                        return None;
                    }
                }
                let frames: Result<Vec<_>, _> = self
                    .replay
                    .range(r.from_seq, Some(to))
                    .map(|it| it.map(Replayed::into_owned).collect());
                match frames {
                    Ok(frames) => {
                        if let Some((queued, queued_bytes)) = backlog {
                            let asked: u64 = frames.iter().map(|f| f.json_len() as u64).sum();
                            if queued_bytes + asked > self.limits.max_held_bytes {
                                self.replays_must_wait(queued, queued_bytes, related, now_ms);
                                return None;
                            }
                        }
                        if let Some(q) = &self.attached {
                            q.push_replay(frames.into_iter().map(OutItem::Frame));
                        }
                    }
                    Err(e) => self.emit_error(
                        ErrorCode::ReplayTooOld,
                        e.to_string(),
                        related,
                        Some(serde_json::json!({
                            "from_seq": r.from_seq.to_string(),
                            "oldest_seq": self.replay.oldest_seq().map(|s| s.to_string()),
                        })),
                        now_ms,
                    ),
                }
            }
            Payload::FlowUpdate(f) => {
                let released = self.gate.grant(
                    &f.channel,
                    f.add_messages.unwrap_or(0),
                    f.add_bytes.unwrap_or(0),
                );
                for pending in released {
                    self.send_now(pending, now_ms);
                }
            }
            Payload::PauseChannel(ChannelRef { channel, .. }) => {
                self.gate.pause(&channel);
            }
            Payload::ResumeChannel(ChannelRef { channel, .. }) => {
                for pending in self.gate.resume(&channel) {
                    self.send_now(pending, now_ms);
                }
            }
            Payload::MessageStart(m) if env.channel == channel::USER => {
                let text = m.text.unwrap_or_default();
                if let Some(dropped) = &mut self.dropped_texts {
                    dropped.retain(|d| *d != m.message_id);
                }
                if let Some((old, _)) = self.texts.remove(&m.message_id) {
                    self.texts_bytes -= old.len() as u64;
                    self.texts_generation = self.texts_generation.wrapping_add(1);
                }
                return self.add_text(m.message_id, &text, env.thread_id, related, now_ms);
            }
            Payload::MessagePart(m) if env.channel == channel::USER => {
                if self
                    .dropped_texts
                    .as_ref()
                    .is_some_and(|d| d.contains(&m.message_id))
                {
                    return None;
                }
                return self.add_text(m.message_id, &m.text, env.thread_id, related, now_ms);
            }
            Payload::MessageEnd(m) if env.channel == channel::USER => {
                if let Some(dropped) = &mut self.dropped_texts {
                    if let Some(i) = dropped.iter().position(|d| *d == m.message_id) {
                        dropped.remove(i);
                        return None;
                    }
                }
                let (text, thread_id) = match self.texts.remove(&m.message_id) {
                    Some(entry) => {
                        self.texts_bytes -= entry.0.len() as u64;
                        self.texts_generation = self.texts_generation.wrapping_add(1);
                        entry
                    }
                    None => (String::new(), env.thread_id),
                };
                actions.push(Action::Text {
                    text,
                    thread_id,
                    abandon: CancellationToken::new(),
                });
            }
            Payload::MessageStart(_) | Payload::MessagePart(_) | Payload::MessageEnd(_) => {}
            Payload::AudioChunk(mut chunk) => {
                if env.channel == channel::USER || env.channel == channel::AUDIO_IN {
                    if chunk.data.is_none() {
                        chunk.data = Some(Vec::new());
                    }
                    actions.push(Action::Audio {
                        chunk,
                        abandon: CancellationToken::new(),
                    });
                }
            }
            Payload::ToolCall(call) => {
                if !tools.has(&call.tool) {
                    self.emit_error(
                        ErrorCode::ToolNotFound,
                        format!("no tool named {:?}", call.tool),
                        related,
                        Some(serde_json::json!({"tool": call.tool, "call_id": call.call_id})),
                        now_ms,
                    );
                    return None;
                }
                if self.tool_calls.len() >= self.limits.max_running_tool_calls {
                    self.emit_error(
                        ErrorCode::RateLimited,
                        format!(
                            "{} tool calls are already running in this session: wait for one \
                             to finish",
                            self.tool_calls.len()
                        ),
                        related,
                        Some(serde_json::json!({"call_id": call.call_id})),
                        now_ms,
                    );
                    return None;
                }
                let run_id = env.run_id.clone();
                if self
                    .tool_calls
                    .start(&call.call_id, &call.tool, run_id.clone(), now_ms)
                    .is_err()
                {
                    self.emit_error(
                        ErrorCode::ProtocolViolation,
                        format!("tool call {:?} is already running", call.call_id),
                        related,
                        Some(serde_json::json!({"field": "payload.call_id"})),
                        now_ms,
                    );
                    return Some(Violation::Protocol);
                }
                let cancel = CancellationToken::new();
                self.cancels.insert(call.call_id.clone(), cancel.clone());
                actions.push(Action::CallTool(ToolRun {
                    call_id: call.call_id,
                    tool: call.tool,
                    params: call.params.unwrap_or_default(),
                    run_id,
                    cancel,
                    abandon: CancellationToken::new(),
                }));
            }
            Payload::ToolCancel(c) => {
                if self.tool_calls.cancel(&c.call_id).is_ok() {
                    if let Some(token) = self.cancels.get(&c.call_id) {
                        token.cancel();
                    }
                }
            }
            Payload::ToolList(list) => {
                if list.tools.is_empty() {
                    let env = self.envelope(channel::SYSTEM, Payload::ToolList(tools.list()));
                    self.emit(env, now_ms);
                }
            }
            Payload::ToolSchema(s) => match tools.schema(&s.tool) {
                Some(schema) => {
                    let env = self.envelope(channel::SYSTEM, Payload::ToolSchema(schema));
                    self.emit(env, now_ms);
                }
                None => self.emit_error(
                    ErrorCode::ToolNotFound,
                    format!("no tool named {:?}", s.tool),
                    related,
                    None,
                    now_ms,
                ),
            },
            Payload::ToolUpdate(_) | Payload::ToolDone(_) => {}
            Payload::RunStarted(r) => {
                let run_id = r.run_id.or(env.run_id);
                if let Some(run_id) = run_id {
                    if let Err(e) = self.runs.open(&run_id, r.thread_id, now_ms) {
                        self.run_error(e, related, now_ms);
                    }
                }
            }
            Payload::RunFinished(r) => {
                if let Some(run_id) = r.run_id.or(env.run_id) {
                    if self.runs.close(&run_id).is_ok() {
                        self.cancels.remove(&run_id);
                    }
                }
            }
            Payload::RunCancel(c) => match self.runs.cancel(&c.run_id) {
                Ok(()) => {
                    if let Some(token) = self.cancels.get(&c.run_id) {
                        token.cancel();
                    }
                    for call_id in self.tool_calls.of_run(&c.run_id) {
                        if let Some(token) = self.cancels.get(&call_id) {
                            token.cancel();
                        }
                    }
                    if let Some(node) = self.remote_run_node(&c.run_id) {
                        // Its agent answers on another node: stopped there, and its
                        // RUN_FINISHED comes from there.
                        actions.push(Action::CancelRunOn {
                            node,
                            run_id: c.run_id,
                        });
                    } else if !self.cancels.contains_key(&c.run_id) {
                        // A run the client opened itself: nothing to stop, just close it.
                        self.finish_run(&c.run_id, RunStatus::Cancelled, now_ms);
                    }
                }
                Err(e) => self.run_error(e, related, now_ms),
            },
        }
        None
    }

    fn negotiate(&mut self, hai: &Hai, related: Option<String>, now_ms: u64) {
        if self.negotiated {
            return; // a second HAI is ignored
        }
        match handshake::accept_peer_hai(hai) {
            Ok(terms) => {
                self.runs
                    .set_limit(terms.run_limit(self.limits.max_concurrent_runs));
                for pending in self.gate.reset_credit(terms.credit) {
                    self.send_now(pending, now_ms);
                }
                self.terms = terms;
                self.negotiated = true;
                self.keep_client_hai(hai);
            }
            Err(e) => {
                self.emit_error(
                    ErrorCode::VersionIncompatible,
                    e.to_string(),
                    related,
                    Some(VersionIncompatible::detail()),
                    now_ms,
                );
                self.close_connection(Close {
                    code: 1002,
                    reason: "version incompatible".into(),
                });
            }
        }
    }

    fn run_error(&mut self, e: RunError, related: Option<String>, now_ms: u64) {
        let code = match e {
            RunError::LimitExceeded { .. } => ErrorCode::RunLimitExceeded,
            RunError::NotFound(_) => ErrorCode::RunNotFound,
            RunError::AlreadyOpen(_) => ErrorCode::ProtocolViolation,
        };
        self.emit_error(code, e.to_string(), related, None, now_ms);
    }

    /// Opens a run for agent output; its RUN_STARTED is sent. Fails with
    /// RUN_LIMIT_EXCEEDED (also sent to the client) when too many runs are open.
    pub fn open_run(
        &mut self,
        thread_id: Option<String>,
        now_ms: u64,
    ) -> Option<(String, CancellationToken)> {
        let run_id = uuid::Uuid::new_v4().to_string();
        if let Err(e) = self.runs.open(&run_id, thread_id.clone(), now_ms) {
            self.run_error(e, None, now_ms);
            return None;
        }
        let token = CancellationToken::new();
        self.cancels.insert(run_id.clone(), token.clone());
        let mut env = self.envelope(
            channel::AGENT,
            Payload::RunStarted(haip_protocol::payload::RunStarted {
                run_id: Some(run_id.clone()),
                thread_id: thread_id.clone(),
                metadata: None,
                extra: Map::new(),
            }),
        );
        env.run_id = Some(run_id.clone());
        env.thread_id = thread_id;
        self.emit(env, now_ms);
        Some((run_id, token))
    }

    /// Closes a run with RUN_FINISHED.
    pub fn finish_run(&mut self, run_id: &str, status: RunStatus, now_ms: u64) {
        self.close_run(run_id, RunEnding::Finished(status), now_ms);
    }

    /// Closes a run with RUN_FINISHED or RUN_ERROR, once the last of its tool calls is
    /// done (nothing of a run may follow its closing message).
    pub fn close_run(&mut self, run_id: &str, ending: RunEnding, now_ms: u64) {
        if self.runs.get(run_id).is_none() {
            return;
        }
        if !self.tool_calls.of_run(run_id).is_empty() {
            self.finish_after_tools.insert(run_id.to_string(), ending);
            return;
        }
        let thread_id = self.runs.get(run_id).and_then(|r| r.thread_id.clone());
        if self.runs.close(run_id).is_err() {
            return;
        }
        self.finish_after_tools.remove(run_id);
        self.cancels.remove(run_id);
        let payload = match ending {
            RunEnding::Finished(status) => Payload::RunFinished(RunFinished {
                run_id: Some(run_id.to_string()),
                status: Some(status),
                summary: None,
                extra: Map::new(),
            }),
            RunEnding::Failed { code, message } => Payload::RunError(ErrorPayload {
                code: code.as_str().to_string(),
                message,
                related_id: None,
                detail: None,
                run_id: Some(run_id.to_string()),
                extra: Map::new(),
            }),
        };
        let mut env = self.envelope(channel::AGENT, payload);
        env.run_id = Some(run_id.to_string());
        env.thread_id = thread_id;
        self.emit(env, now_ms);
    }

    /// Starts a tool call an agent makes in its run `run_id`: TOOL_CALL goes to the
    /// client and the call is tracked like a client's, so RUN_CANCEL cancels it and the
    /// run closes only after its TOOL_DONE. Returns the call's cancellation and params to
    /// run it with, or how it ended at once (the run was cancelled, the tool is unknown,
    /// the params are bad, the call id is already in use).
    pub fn start_agent_tool_call(
        &mut self,
        run_id: &str,
        call_id: &str,
        tool: &str,
        params: Result<Map<String, Value>, String>,
        known: bool,
        now_ms: u64,
    ) -> Result<(CancellationToken, Map<String, Value>), ToolOutcome> {
        if self.runs.get(run_id).is_none_or(|r| r.cancelled) {
            return Err(ToolOutcome::cancelled());
        }
        if self
            .tool_calls
            .start(call_id, tool, Some(run_id.to_string()), now_ms)
            .is_err()
        {
            return Err(ToolOutcome::error(
                ErrorCode::ToolExecutionError.as_str(),
                format!("tool call {call_id:?} is already running"),
            ));
        }
        let thread_id = self.runs.get(run_id).and_then(|r| r.thread_id.clone());
        let mut call = self.envelope(
            channel::AGENT,
            Payload::ToolCall(ToolCall {
                call_id: call_id.to_string(),
                tool: tool.to_string(),
                params: Some(params.as_ref().cloned().unwrap_or_default()),
                extra: Map::new(),
            }),
        );
        call.run_id = Some(run_id.to_string());
        call.thread_id = thread_id;
        self.emit(call, now_ms);
        let refusal = match params {
            _ if !known => Err(ToolOutcome::error(
                ErrorCode::ToolNotFound.as_str(),
                format!("no tool named {tool:?}"),
            )),
            Err(why) => Err(ToolOutcome::error(
                ErrorCode::ToolExecutionError.as_str(),
                why,
            )),
            Ok(params) => Ok(params),
        };
        let params = match refusal {
            Ok(params) => params,
            Err(outcome) => {
                let mut done = self.envelope(
                    channel::AGENT,
                    Payload::ToolDone(ToolDone {
                        call_id: call_id.to_string(),
                        status: outcome.status,
                        result: outcome.result.clone(),
                        extra: Map::new(),
                    }),
                );
                done.run_id = Some(run_id.to_string());
                self.tool_done(done, call_id, now_ms);
                return Err(outcome);
            }
        };
        let cancel = CancellationToken::new();
        self.cancels.insert(call_id.to_string(), cancel.clone());
        Ok((cancel, params))
    }

    /// Sends a call's TOOL_DONE and forgets the call; a run that was waiting for it to
    /// finish gets its RUN_FINISHED now. One step under the lock, so nothing slips between.
    pub fn tool_done(&mut self, env: Envelope, call_id: &str, now_ms: u64) {
        self.emit(env, now_ms);
        self.cancels.remove(call_id);
        let Ok(call) = self.tool_calls.finish(call_id) else {
            return;
        };
        if let Some(run_id) = call.run_id {
            if let Some(ending) = self.finish_after_tools.get(&run_id).cloned() {
                self.close_run(&run_id, ending, now_ms);
            }
        }
    }

    /// Cancels all agent and tool work (the session is being dropped).
    pub fn cancel_all(&mut self) {
        for token in self.cancels.values() {
            token.cancel();
        }
    }

    /// Pauses a client channel: PAUSE_CHANNEL, then its messages are refused until resumed.
    pub fn pause_inbound(&mut self, channel: &str, now_ms: u64) {
        if self.meter.pause(channel) {
            let env = self.system(Payload::PauseChannel(ChannelRef {
                channel: channel.to_string(),
                extra: Map::new(),
            }));
            self.emit(env, now_ms);
        }
    }

    pub fn resume_inbound(&mut self, channel: &str, now_ms: u64) {
        self.meter.resume(channel);
        let env = self.system(Payload::ResumeChannel(ChannelRef {
            channel: channel.to_string(),
            extra: Map::new(),
        }));
        self.emit(env, now_ms);
    }

    /// Sends a heartbeat PING whose PONG will be timed.
    pub fn ping(&mut self, now_ms: u64) {
        let nonce = uuid::Uuid::new_v4().to_string();
        self.ping_in_flight = Some((nonce.clone(), now_ms));
        let env = self.system(Payload::Ping(Nonce {
            nonce: Some(nonce),
            extra: Map::new(),
        }));
        self.emit(env, now_ms);
    }

    /// Closes the attached connection, if any, after what is queued.
    pub fn close_connection(&mut self, close: Close) {
        if let Some(q) = &self.attached {
            q.push(OutItem::Close(close));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ToolRegistry;
    use serde_json::json;

    struct Fixture {
        core: SessionCore,
        queue: Arc<ConnQueue>,
        tools: ToolRegistry,
        seq: u64,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture::with_limits(SessionLimits::default())
        }

        fn with_limits(limits: SessionLimits) -> Fixture {
            let mut core = SessionCore::new("s1".into(), "alice".into(), Arc::new(limits), true, 0);
            let queue = Arc::new(ConnQueue::default());
            core.attach(queue.clone(), None, true, 0).unwrap();
            Fixture {
                core,
                queue,
                tools: ToolRegistry::with_builtins(),
                seq: 0,
            }
        }

        fn send(
            &mut self,
            ty: &str,
            channel: &str,
            run_id: Option<&str>,
            payload: Value,
        ) -> Vec<Action> {
            self.seq += 1;
            let mut v = json!({"id": format!("c{}", self.seq), "session": "s1",
                "seq": self.seq.to_string(), "ts": "0", "channel": channel,
                "type": ty, "payload": payload});
            if let Some(r) = run_id {
                v["run_id"] = json!(r);
            }
            let env = Envelope::parse(&v.to_string()).unwrap();
            self.core.receive(env, 100, &self.tools, 10)
        }

        /// Everything queued since the last call: (type, run_id, payload).
        fn sent(&self) -> Vec<(String, Option<String>, Value)> {
            self.queue
                .take_now()
                .into_iter()
                .map(|i| match i {
                    OutItem::Frame(f) => {
                        let v: Value = serde_json::from_slice(&f.json()).unwrap();
                        (
                            v["type"].as_str().unwrap().to_string(),
                            v["run_id"].as_str().map(str::to_string),
                            v["payload"].clone(),
                        )
                    }
                    OutItem::Close(c) => (format!("CLOSE {}", c.code), None, Value::Null),
                    OutItem::Switch(_) => ("SWITCH".to_string(), None, Value::Null),
                })
                .collect()
        }
    }

    #[test]
    fn the_eleventh_protocol_violation_closes_with_1008() {
        let mut f = Fixture::new();
        for _ in 0..MAX_PROTOCOL_VIOLATIONS {
            assert!(!f.core.count_violation(Violation::Protocol));
        }
        assert!(f.sent().iter().all(|(t, _, _)| !t.starts_with("CLOSE")));
        assert!(f.core.count_violation(Violation::Protocol));
        assert_eq!(f.sent().last().unwrap().0, "CLOSE 1008");
    }

    #[test]
    fn flow_violations_have_their_own_threshold_and_reset_on_attach() {
        let mut f = Fixture::new();
        for _ in 0..MAX_FLOW_VIOLATIONS {
            assert!(!f.core.count_violation(Violation::FlowControl));
        }
        let fresh = Arc::new(ConnQueue::default());
        f.core.attach(fresh, Some(0), true, 1).unwrap();
        assert!(!f.core.count_violation(Violation::FlowControl));
    }

    #[test]
    fn a_wrong_version_hai_answers_error_and_closes_with_1002() {
        let mut f = Fixture::new();
        f.sent();
        f.send(
            "HAI",
            "SYSTEM",
            None,
            json!({"haip_version": "2.0.0", "accept_major": [2], "accept_events": ["HAI"]}),
        );
        let sent = f.sent();
        assert_eq!(sent[0].0, "ERROR");
        assert_eq!(sent[0].2["code"], "VERSION_INCOMPATIBLE");
        assert_eq!(sent[1].0, "CLOSE 1002");
    }

    #[test]
    fn a_cancelled_run_finishes_only_after_its_tool_calls() {
        let mut f = Fixture::new();
        f.send("RUN_STARTED", "USER", Some("r1"), json!({"run_id": "r1"}));
        let actions = f.send(
            "TOOL_CALL",
            "USER",
            Some("r1"),
            json!({"call_id": "c1", "tool": "sleep", "params": {"ms": 1000}}),
        );
        let cancel = match &actions[..] {
            [Action::CallTool(call)] => call.cancel.clone(),
            other => panic!("{other:?}"),
        };
        f.sent();
        f.send("RUN_CANCEL", "USER", None, json!({"run_id": "r1"}));
        assert!(cancel.is_cancelled());
        assert!(f.sent().is_empty(), "RUN_FINISHED must wait for TOOL_DONE");
        let mut done = f.core.envelope(
            channel::AGENT,
            Payload::ToolDone(haip_protocol::payload::ToolDone {
                call_id: "c1".into(),
                status: RunStatus::Cancelled,
                result: None,
                extra: Map::new(),
            }),
        );
        done.run_id = Some("r1".into());
        f.core.tool_done(done, "c1", 20);
        let sent = f.sent();
        let types: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(types, ["TOOL_DONE", "RUN_FINISHED"]);
        assert_eq!(sent[1].2["status"], "CANCELLED");
    }

    #[test]
    fn an_agents_tool_call_is_announced_refused_or_run_and_closes_its_run_last() {
        let mut f = Fixture::new();
        let (run_id, _) = f.core.open_run(None, 0).expect("a run");
        f.sent();
        let mut params = Map::new();
        params.insert("ms".into(), json!(5));
        // Unknown tool: TOOL_CALL, then TOOL_DONE ERROR TOOL_NOT_FOUND at once.
        let refused =
            f.core
                .start_agent_tool_call(&run_id, "c1", "nope", Ok(params.clone()), false, 1);
        assert!(matches!(&refused, Err(o) if o.status == RunStatus::Error));
        // Params the agent could not read: the reason goes back as the error.
        let bad =
            f.core
                .start_agent_tool_call(&run_id, "c2", "sleep", Err("not JSON".into()), true, 2);
        assert!(matches!(&bad, Err(o) if o.status == RunStatus::Error));
        let sent = f.sent();
        let types: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(types, ["TOOL_CALL", "TOOL_DONE", "TOOL_CALL", "TOOL_DONE"]);
        assert_eq!(sent[1].2["result"]["code"], "TOOL_NOT_FOUND");
        assert_eq!(sent[3].2["result"]["message"], "not JSON");
        // A good call runs with its params; the run's end waits for its TOOL_DONE.
        let (cancel, got) = f
            .core
            .start_agent_tool_call(&run_id, "c3", "sleep", Ok(params.clone()), true, 3)
            .expect("started");
        assert_eq!(got, params);
        f.sent();
        f.core
            .close_run(&run_id, RunEnding::Finished(RunStatus::Ok), 4);
        assert!(f.sent().is_empty(), "RUN_FINISHED must wait for TOOL_DONE");
        assert!(!cancel.is_cancelled());
        let mut done = f.core.envelope(
            channel::AGENT,
            Payload::ToolDone(haip_protocol::payload::ToolDone {
                call_id: "c3".into(),
                status: RunStatus::Ok,
                result: Some(json!({"slept_ms": 5})),
                extra: Map::new(),
            }),
        );
        done.run_id = Some(run_id.clone());
        f.core.tool_done(done, "c3", 5);
        let types: Vec<String> = f.sent().into_iter().map(|s| s.0).collect();
        assert_eq!(types, ["TOOL_DONE", "RUN_FINISHED"]);
        // A cancelled run starts no more calls and sends nothing.
        let (run_id, run_cancel) = f.core.open_run(None, 6).expect("a run");
        run_cancel.cancel();
        f.send("RUN_CANCEL", "USER", None, json!({"run_id": run_id}));
        f.sent();
        let late = f
            .core
            .start_agent_tool_call(&run_id, "c4", "sleep", Ok(params), true, 7);
        assert!(matches!(&late, Err(o) if o.status == RunStatus::Cancelled));
        assert!(!f.sent().iter().any(|s| s.0 == "TOOL_CALL"));
    }

    #[test]
    fn a_pong_with_the_ping_nonce_is_timed() {
        let mut f = Fixture::new();
        f.core.ping(0);
        let nonce = f.sent().last().unwrap().2["nonce"].clone();
        let actions = f.send("PONG", "SYSTEM", None, json!({"nonce": "other"}));
        assert!(actions.is_empty());
        let actions = f.send("PONG", "SYSTEM", None, json!({"nonce": nonce}));
        assert!(matches!(actions[..], [Action::RoundTrip(10)]));
    }

    #[test]
    fn a_gap_wakes_the_attached_connection_timers() {
        let mut f = Fixture::new();
        f.send("PING", "SYSTEM", None, json!({}));
        f.seq += 1; // skip one: a gap opens and its deadline must be watched
        f.send("PING", "SYSTEM", None, json!({}));
        assert!(f.core.next_gap_deadline().is_some());
        let woken = futures_util::FutureExt::now_or_never(f.queue.timers_changed());
        assert!(woken.is_some());
    }

    fn hai_with_credit(messages: u64) -> Value {
        let all: Vec<&str> = haip_protocol::EventType::ALL
            .iter()
            .map(|t| t.as_str())
            .collect();
        json!({"haip_version": "1.1.2", "accept_major": [1], "accept_events": all,
            "capabilities": {"flow_control": {"initial_credit_messages": messages,
                "initial_credit_bytes": 1_000_000}}})
    }

    fn agent_text(core: &SessionCore, text: &str) -> Envelope {
        core.envelope(
            channel::AGENT,
            Payload::MessagePart(haip_protocol::payload::MessagePart {
                message_id: "m1".into(),
                text: text.into(),
                extra: Map::new(),
            }),
        )
    }

    /// Byte credit is spent exactly as the client counts what it receives (the length of
    /// the text as sent), for a session's own messages and for shared ones alike.
    #[test]
    fn byte_credit_is_spent_as_the_client_counts_it() {
        let mut f = Fixture::new();
        f.send("HAI", "SYSTEM", None, hai_with_credit(1000));
        f.sent();
        let copy = Arc::new(SharedMessage::copies_of(agent_text(
            &f.core,
            "shared \"words\"",
        )));
        for now in [5, 1_700_000_000_000] {
            let before = f.core.gate.credit(channel::AGENT);
            let env = agent_text(&f.core, "own");
            f.core.emit(env, now);
            f.core.emit_shared(&copy, now);
            let spent = before.bytes.unwrap() - f.core.gate.credit(channel::AGENT).bytes.unwrap();
            let sent: u64 = f
                .queue
                .take_now()
                .into_iter()
                .map(|i| match i {
                    OutItem::Frame(o) => {
                        assert!(o.json().ends_with(b"}"));
                        o.json().len() as u64
                    }
                    other => panic!("unexpected {other:?}"),
                })
                .sum();
            assert_eq!(spent, sent, "at ts {now}");
        }
    }

    #[test]
    fn output_held_beyond_the_bound_ends_the_session() {
        let mut f = Fixture::with_limits(SessionLimits {
            max_held_messages: 3,
            ..SessionLimits::default()
        });
        f.send("HAI", "SYSTEM", None, hai_with_credit(1));
        f.sent();
        for i in 0..4 {
            let env = agent_text(&f.core, &format!("w{i}"));
            f.core.emit(env, 5);
        }
        // One fits the credit, three are held: at the bound, not over it.
        assert_eq!(f.core.held_outbound().0, 3);
        assert!(!f.core.is_ended());
        let env = agent_text(&f.core, "one too many");
        f.core.emit(env, 6);
        assert!(f.core.is_ended());
        let sent = f.sent();
        let types: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(types, ["MESSAGE_PART", "ERROR", "CLOSE 1008"]);
        assert_eq!(sent[1].2["code"], "FLOW_CONTROL_VIOLATION");
        assert_eq!(sent[1].2["detail"]["reason"], "HELD_OUTPUT_LIMIT");
        assert_eq!(f.core.held_outbound(), (0, 0), "held output is freed");
        // An ended session sends nothing more and cannot be attached again.
        let env = agent_text(&f.core, "late");
        f.core.emit(env, 7);
        assert!(f.sent().is_empty());
        assert!(!f.core.is_attached());
    }

    #[test]
    fn an_unwritten_backlog_beyond_the_bound_ends_the_session_but_a_replay_does_not() {
        let mut f = Fixture::with_limits(SessionLimits {
            max_held_messages: 4,
            ..SessionLimits::default()
        });
        f.send("HAI", "SYSTEM", None, hai_with_credit(1000));
        for i in 0..4 {
            let env = agent_text(&f.core, &format!("w{i}"));
            f.core.emit(env, 5);
        }
        f.sent(); // the writer took them
                  // A resume replays more than the bound: that backlog was bounded by the window.
        let fresh = Arc::new(ConnQueue::default());
        f.core.attach(fresh.clone(), Some(0), true, 6).unwrap();
        assert!(!f.core.is_ended());
        assert!(fresh.len() > 4);
        // New output the writer does not take counts.
        fresh.set_writing(true);
        // The confirming HAI and three more are within the bound.
        for i in 0..3 {
            let env = agent_text(&f.core, &format!("x{i}"));
            f.core.emit(env, 7);
        }
        assert!(!f.core.is_ended(), "4 new messages are within the bound");
        let env = agent_text(&f.core, "x3");
        f.core.emit(env, 8);
        assert!(f.core.is_ended());
        assert!(
            futures_util::FutureExt::now_or_never(fresh.aborted()).is_some(),
            "a stuck writer is aborted"
        );
    }

    #[test]
    fn a_paused_client_channel_refuses_with_channel_paused_until_resumed() {
        let mut f = Fixture::new();
        f.send("HAI", "SYSTEM", None, hai_with_credit(1000));
        f.core.pause_inbound("USER", 1);
        let sent = f.sent();
        assert_eq!(sent.last().unwrap().0, "PAUSE_CHANNEL");
        let refused = f.send(
            "TOOL_CALL",
            "USER",
            None,
            json!({"call_id": "c1", "tool": "echo",
            "params": {"message": "x"}}),
        );
        assert!(refused.is_empty(), "not processed");
        let sent = f.sent();
        assert_eq!(sent[0].0, "ERROR");
        assert_eq!(sent[0].2["code"], "FLOW_CONTROL_VIOLATION");
        assert_eq!(sent[0].2["detail"]["reason"], "CHANNEL_PAUSED");
        // SYSTEM cannot be paused.
        f.core.pause_inbound("SYSTEM", 2);
        assert!(f.sent().is_empty());
        f.core.resume_inbound("USER", 3);
        assert_eq!(f.sent()[0].0, "RESUME_CHANNEL");
        f.seq -= 1; // the refused message's seq was not used: the client sends it again
        let accepted = f.send(
            "TOOL_CALL",
            "USER",
            None,
            json!({"call_id": "c2", "tool": "echo",
            "params": {"message": "x"}}),
        );
        assert_eq!(accepted.len(), 1);
    }
}
