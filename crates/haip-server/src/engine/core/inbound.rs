//! What a client sends: [`SessionCore::receive`] puts envelopes in seq order, checks
//! credit, assembles user messages, and applies each event's rule (HAI, runs, tool calls,
//! flow control, pings, resume of paused channels), answering with the work to start.

use haip_protocol::handshake::{self, VersionIncompatible};
use haip_protocol::payload::{ChannelRef, FlowUpdate, Hai, Nonce, RunStatus};
use haip_protocol::replay::Replayed;
use haip_protocol::sequencer::Arrival;
use haip_protocol::{channel, Envelope, ErrorCode, Payload};
use serde_json::Map;
use tokio_util::sync::CancellationToken;

use super::limits::*;
use super::messages::*;
use super::session_core::SessionCore;
use crate::engine::outbound::{Close, OutItem};
use crate::tools::ToolCatalog;

impl SessionCore {
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
    pub(super) fn timers(&self) -> (Option<u64>, Option<u64>) {
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

    pub(super) fn process(
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

    pub(super) fn negotiate(&mut self, hai: &Hai, related: Option<String>, now_ms: u64) {
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
}
