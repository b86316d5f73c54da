//! The state of one session ([`SessionCore`]): what it sent and keeps for replay, what
//! it received, its credit, runs and tool calls, the connection attached to it. Its
//! behaviour is in the files beside this one, by concern.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use haip_protocol::flow::{Credit, ReceiveMeter, SendGate};
use haip_protocol::handshake::{self, Offer, PeerTerms};
use haip_protocol::payload::Hai;
use haip_protocol::replay::{ReplayError, ReplayWindow};
use haip_protocol::runs::{RunTable, ToolCalls};
use haip_protocol::sequencer::Sequencer;
use haip_protocol::{Envelope, Payload};
use tokio_util::sync::CancellationToken;

use super::durable::Durable;
use super::limits::*;
use super::messages::*;
use crate::agent::RunEnding;
use crate::engine::outbound::{Close, ConnQueue, OutItem, Outgoing};
use crate::engine::replay_pack::{MessageIds, OutgoingPacker};
use crate::engine::tap;

pub struct SessionCore {
    pub id: String,
    /// The id again, shared by every message sent.
    pub(super) shared_id: Arc<str>,
    pub subject: String,
    pub(super) limits: Arc<SessionLimits>,
    pub(super) binary_frames: bool,
    pub(super) last_sent_seq: u64,
    /// The ids of the session's own messages, made from their seqs so that the replay log
    /// need not keep them.
    pub(super) ids: MessageIds,
    /// What was sent, kept for replay and resume; full segments are packed (replay_pack.rs).
    pub(super) replay: ReplayWindow<Arc<Outgoing>, OutgoingPacker>,
    pub(super) gate: SendGate<Pending>,
    pub(super) meter: ReceiveMeter,
    pub(super) inbound: Sequencer<(Envelope, u64)>,
    pub(super) runs: RunTable,
    pub(super) tool_calls: ToolCalls,
    pub(super) terms: PeerTerms,
    pub(super) negotiated: bool,
    pub(super) attached: Option<Arc<ConnQueue>>,
    /// USER messages being assembled: message_id -> text so far.
    pub(super) texts: HashMap<String, (String, Option<String>)>,
    /// The bytes of `texts`, bounded by `max_pending_input_bytes`.
    pub(super) texts_bytes: u64,
    /// Changes with every change of `texts` (cluster mode stores them when it moved).
    pub(super) texts_generation: u32,
    /// User messages dropped for their size: their later parts and end are ignored (the
    /// most recent [`MAX_OPEN_MESSAGES`]).
    /// Boxed and made only when needed: most sessions never drop a message, and an idle
    /// session then carries one pointer instead of an empty queue's four words.
    #[allow(clippy::box_collection)]
    pub(super) dropped_texts: Option<Box<std::collections::VecDeque<String>>>,
    /// Cancellation of the agent work of each open run and each running tool call.
    pub(super) cancels: HashMap<String, CancellationToken>,
    /// Runs cancelled while tool calls of theirs were still running: their RUN_FINISHED
    /// waits for the last TOOL_DONE, so that nothing of a run follows its RUN_FINISHED.
    pub(super) finish_after_tools: HashMap<String, RunEnding>,
    /// The nonce and send time of the last heartbeat PING, to time its PONG.
    pub(super) ping_in_flight: Option<(String, u64)>,
    pub(super) last_client_activity_ms: u64,
    pub(super) detached_since_ms: Option<u64>,
    /// Violations of the attached connection, whichever way its messages came in (its own
    /// socket or `POST /haip/messages`); they start from zero on each attach.
    pub(super) protocol_violations: u32,
    pub(super) flow_violations: u32,
    /// Set when the session was ended for holding too much output: it sends nothing more
    /// and cannot be resumed.
    pub(super) ended: bool,
    /// Messages sent in threads, waiting to be copied to the threads' followers once the
    /// session's lock is released.
    pub(super) thread_output: Vec<(String, Envelope)>,
    /// Set once any session follows a thread (see [`SessionCore::share_threads`]); until
    /// then messages in threads are not copied at all.
    pub(super) threads_followed: Option<Arc<AtomicBool>>,
    /// Where admins watching get a copy of what is sent (see `engine::tap`).
    pub(super) tap: Option<Arc<tap::Tap>>,
    /// Set in cluster mode: what waits for the store (see `engine::store`). Boxed: a
    /// memory-mode session carries one pointer.
    pub(super) durable: Option<Box<Durable>>,
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
        if let Some(d) = &self.durable {
            // Output waiting for a hand-over (cluster mode) waits on a store's answer.
            messages += d.after_handover.len();
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
}
