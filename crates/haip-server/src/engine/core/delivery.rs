//! Everything the server sends passes through here: [`SessionCore::emit`] applies the
//! client's event filter, flow control, run cancellation, sequencing and the replay window
//! in one place, then queues the message to the attached connection. Errors to the client,
//! the bounds on held output and the ends of a session are here too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use haip_protocol::flow::{Credit, SendGate};
use haip_protocol::payload::ErrorPayload;
use haip_protocol::replay::ReplayWindow;
use haip_protocol::sequencer::Sequencer;
use haip_protocol::{channel, Envelope, ErrorCode, Payload};
use serde_json::{Map, Value};

use super::limits::*;
use super::messages::*;
use super::session_core::SessionCore;
use crate::engine::outbound::{Close, OutItem, Outgoing};
use crate::engine::replay_pack::OutgoingPacker;
use crate::engine::tap;

impl SessionCore {
    /// An envelope of this session on `channel` with id, seq and ts still to be set: they
    /// are given as it is sent (the id from the seq, see [`MessageIds`](crate::engine::replay_pack::MessageIds)).
    pub fn envelope(&self, channel: &str, payload: Payload) -> Envelope {
        Envelope::new(String::new(), self.id.clone(), 0, 0, channel, payload)
    }

    pub(super) fn system(&self, payload: Payload) -> Envelope {
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
    pub fn set_tap(&mut self, tap: Arc<tap::Tap>) {
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

    pub(super) fn deliver(&mut self, pending: Pending, now_ms: u64) {
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
    pub(super) fn end_for_held_output(
        &mut self,
        why: &str,
        messages: usize,
        bytes: u64,
        now_ms: u64,
    ) {
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
    pub(super) fn end(
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

    pub(super) fn send_now(&mut self, pending: Pending, now_ms: u64) {
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
            tap.send(tap::Tapped {
                direction: tap::Direction::Out,
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
    pub(super) fn replays_must_wait(
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
    pub(super) fn two_frame(&self, env: &Envelope) -> Option<Box<(bytes::Bytes, bytes::Bytes)>> {
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
}
