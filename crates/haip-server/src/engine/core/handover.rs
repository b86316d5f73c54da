//! Handing a session over to another node and taking one over (cluster mode), and the
//! output forwarded between the nodes meanwhile.

use std::sync::Arc;

use haip_protocol::{Envelope, ErrorCode, EventType, Payload};

use super::durable::{forwardable, AGENT_NODE_LOST};
use super::messages::Pending;
use super::session_core::SessionCore;
use crate::agent::RunEnding;
use crate::engine::outbound::{Close, OutItem, Outgoing};
use crate::engine::store::{ClaimedSession, Forwarded};

impl SessionCore {
    /// Another node drives the session now (it said so): the connection here is closed,
    /// and whatever was not stored, and whatever is produced here from now on, goes to
    /// that node. A write under way decides first what of it was stored.
    pub fn now_driven_elsewhere(&mut self) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        if d.elsewhere {
            return;
        }
        d.elsewhere = true;
        if d.writing == 0 {
            self.hand_over_unstored();
        }
        self.close_for_takeover();
    }

    pub(super) fn close_for_takeover(&mut self) {
        if let Some(q) = self.attached.take() {
            q.push(OutItem::Close(Close {
                code: 1000,
                reason: "session resumed on another node".into(),
            }));
            self.detached_since_ms = Some(crate::engine::clock::now_ms());
        }
    }

    /// What this node sent but the store does not have, and what flow control holds,
    /// goes to the node that drives the session, in order: its own output under its own
    /// numbers, output of other nodes under theirs.
    pub(super) fn hand_over_unstored(&mut self) {
        let held: Vec<Envelope> = self
            .gate
            .reset_credit(haip_protocol::flow::Credit::UNLIMITED)
            .into_iter()
            .map(|p| match p {
                Pending::Own(env) => env,
                Pending::Shared(shared) => shared.env.clone(),
            })
            .collect();
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        // Work asked for by client messages the store does not have is given up: the
        // client sends them again to the node that drives the session, which does it.
        let durable = d.stored_client_seq.unwrap_or(0);
        for (seq, token) in d.work.drain(..) {
            if seq > durable {
                token.cancel();
            }
        }
        let unstored: Vec<(Envelope, Option<(String, u64)>)> = d
            .unstored
            .drain(..)
            .filter_map(|u| Some((Envelope::parse_bytes(&u.out.json()).ok()?, u.origin)))
            .collect();
        // Runs that started in what the store does not have are given up with it.
        for (env, origin) in &unstored {
            if let (Payload::RunStarted(_), Some(run), None) = (&env.payload, &env.run_id, origin) {
                d.abandoned_runs.insert(run.clone());
            }
        }
        let waiting = d.forwarding.take_waiting();
        for (env, origin) in unstored {
            match origin {
                Some((from, n)) => d.forwarding.hand_on(from, n, forwardable(env)),
                // Only output of runs the next node knows: the rest (answers to client
                // messages, given up runs) comes again from there.
                None if env
                    .run_id
                    .as_ref()
                    .is_some_and(|run| !d.abandoned_runs.contains(run)) =>
                {
                    d.forwarding.produce(forwardable(env))
                }
                None => {}
            }
        }
        for env in held {
            if env
                .run_id
                .as_ref()
                .is_some_and(|run| !d.abandoned_runs.contains(run))
            {
                d.forwarding.produce(forwardable(env));
            }
        }
        for (from, n, json) in waiting {
            d.forwarding.hand_on(from, n, json);
        }
        for env in std::mem::take(&mut d.after_handover) {
            d.produce_unless_abandoned(env);
        }
        let abandoned: Vec<String> = d.abandoned_runs.iter().cloned().collect();
        for run in abandoned {
            if let Some(token) = self.cancels.remove(&run) {
                token.cancel();
            }
            let _ = self.runs.close(&run);
        }
    }

    /// Makes this core the session as another node left it: its next seq, the client seq
    /// it acknowledged, its open runs and its replay window; runs of nodes in `dead` are
    /// ended with RUN_ERROR AGENT_ERROR. What this node produced and was not applied yet
    /// goes first, in order.
    pub fn take_over(&mut self, mut claimed: ClaimedSession, dead: &[String], now_ms: u64) {
        let Some(mut d) = self.durable.as_mut() else {
            return;
        };
        if claimed.epoch < d.epoch {
            // An older claim of this node, overtaken by a newer one: only what it took
            // off the session's queue is still to be applied (or handed on).
            for (from, item) in claimed.forwarded {
                if let Forwarded::Output { json, n } = item {
                    if d.elsewhere {
                        d.forwarding.hand_on(from, n, json);
                    } else {
                        let ready = d.forwarding.arrive(from, n, json, now_ms);
                        self.emit_ready(ready, now_ms);
                        let Some(next) = self.durable.as_mut() else {
                            return;
                        };
                        d = next;
                    }
                }
            }
            return;
        }
        // What this copy sent and the store does not have (a claim of this same node
        // overtook the one it drove in) goes through the hand-over like any other: its
        // own output comes back below as this producer's, other producers' is applied
        // again, work for client messages the store does not have is given up.
        self.hand_over_unstored();
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        d.epoch = claimed.epoch;
        d.elsewhere = false;
        d.unstored.clear();
        d.writing = 0;
        d.scheduled = false;
        d.remote_runs.clear();
        d.written_client_seq = claimed.last_client_seq;
        d.stored_client_seq = claimed.last_client_seq;
        let me = d.me.clone();
        let producer = d.forwarding.producer().to_string();
        let (mine, others) = d.forwarding.take_over(claimed.applied.clone(), now_ms);
        self.replay = haip_protocol::replay::ReplayWindow::with_packer(
            self.limits.replay,
            crate::engine::replay_pack::OutgoingPacker::new(self.shared_id.clone(), self.ids),
        );
        let first = claimed
            .messages
            .first()
            .map_or(claimed.last_seq, |m| m.seq - 1);
        self.replay.start_after(first);
        for m in std::mem::take(&mut claimed.messages) {
            let event_type = Envelope::parse_bytes(&m.json)
                .map(|e| e.event_type())
                .unwrap_or(EventType::Error);
            let bytes = m.json.len() as u64;
            let out = Outgoing::whole(self.shared_id.clone(), m.seq, event_type, m.json);
            let _ = self.replay.push(m.seq, m.ts, bytes, Arc::new(out));
        }
        self.last_sent_seq = claimed.last_seq.max(self.replay.last_seq());
        self.inbound = haip_protocol::sequencer::Sequencer::with_byte_bound(
            self.limits.max_held_inbound,
            self.limits.max_pending_input_bytes,
        );
        if let Some(last) = claimed.last_client_seq {
            self.inbound.start_after(last);
        }
        self.texts = claimed
            .texts
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        self.texts_bytes = self.texts.values().map(|(t, _)| t.len() as u64).sum();
        if let Some(d) = self.durable.as_mut() {
            d.written_texts = Some(self.texts_generation);
        }
        let hai = claimed
            .client_hai
            .as_deref()
            .and_then(|h| Envelope::parse(h).ok())
            .and_then(|env| match env.payload {
                Payload::Hai(hai) => Some(hai),
                _ => None,
            });
        if let Some(hai) = hai {
            self.negotiated = false;
            self.negotiate(&hai, None, now_ms);
        }
        let mut lost = Vec::new();
        for run in std::mem::take(&mut claimed.runs) {
            if self.runs.get(&run.run_id).is_none()
                && self
                    .runs
                    .open(&run.run_id, run.thread_id.clone(), now_ms)
                    .is_err()
            {
                continue;
            }
            if run.node != *me {
                if dead.contains(&run.node) {
                    lost.push(run.run_id.clone());
                }
                if let Some(d) = self.durable.as_mut() {
                    d.remote_runs.insert(run.run_id, run.node);
                }
            }
        }
        if let Some(d) = self.durable.as_mut() {
            d.runs_changed = true;
        }
        for (n, json) in mine {
            if let Ok(env) = Envelope::parse(&json) {
                self.emit_from(env, Some((producer.clone(), n)), now_ms);
            }
        }
        self.emit_ready(others, now_ms);
        for (from, item) in claimed.forwarded {
            if let Forwarded::Output { json, n } = item {
                self.accept_forwarded(&from, n, json, now_ms);
            }
        }
        for run_id in lost {
            self.end_lost_run(&run_id, now_ms);
        }
    }

    /// Ends a run whose agent's node died.
    pub fn end_lost_run(&mut self, run_id: &str, now_ms: u64) {
        if let Some(d) = self.durable.as_mut() {
            d.remote_runs.remove(run_id);
        }
        self.close_run(
            run_id,
            RunEnding::Failed {
                code: ErrorCode::AgentError,
                message: AGENT_NODE_LOST.to_string(),
            },
            now_ms,
        );
    }

    /// Whether output waits to be forwarded to the node that drives the session.
    pub fn has_forwards(&self) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| d.forwarding.has_outbox() || d.writing > 0)
    }

    /// RUN_CANCEL of the client, received by the node that drives the session, for a run
    /// whose agent answers here: the agent and its tool calls are stopped, and the run's
    /// RUN_FINISHED goes there as all its output does.
    pub fn cancel_here(&mut self, run_id: &str) {
        if self.runs.cancel(run_id).is_err() {
            return;
        }
        if let Some(token) = self.cancels.get(run_id) {
            token.cancel();
        }
        for call_id in self.tool_calls.of_run(run_id) {
            if let Some(token) = self.cancels.get(&call_id) {
                token.cancel();
            }
        }
    }

    /// The open runs whose agents are on other nodes, with those nodes.
    pub fn remote_runs(&self) -> Vec<(String, String)> {
        self.durable.as_ref().map_or_else(Vec::new, |d| {
            d.remote_runs
                .iter()
                .map(|(run, node)| (run.clone(), node.clone()))
                .collect()
        })
    }

    /// The node running a run's agent, when not this one.
    pub(super) fn remote_run_node(&self, run_id: &str) -> Option<String> {
        self.durable.as_ref()?.remote_runs.get(run_id).cloned()
    }

    /// Notes the client's HAI, for a node that takes the session over.
    pub(super) fn keep_client_hai(&mut self, hai: &haip_protocol::payload::Hai) {
        if self.durable.is_none() {
            return;
        }
        // Kept as a whole envelope: the protocol core reads payloads only inside one.
        let env = Envelope::new(
            "hai".to_string(),
            self.id.clone(),
            1,
            0,
            haip_protocol::channel::SYSTEM,
            Payload::Hai(hai.clone()),
        );
        if let Some(d) = self.durable.as_mut() {
            d.client_hai = Some(env.to_json());
        }
    }

    /// Output another node produced for this session (an agent still answering there),
    /// its `n`th: sent in each producer's order (see `Forwarding`).
    pub fn accept_forwarded(&mut self, from: &str, n: u64, json: String, now_ms: u64) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let ready = d.forwarding.arrive(from.to_string(), n, json, now_ms);
        self.emit_ready(ready, now_ms);
    }

    /// Forwarded items the store could not take: sent again with the next write.
    pub fn forward_again(&mut self, items: Vec<(String, Forwarded)>) {
        if let Some(d) = self.durable.as_mut() {
            d.forwarding.send_again(items);
        }
    }

    /// The node that drives the session applied `producer`'s output up to `upto`: if
    /// that is this copy of the session, it need not keep it.
    pub fn forwards_applied(&mut self, producer: &str, upto: u64) {
        if let Some(d) = self.durable.as_mut() {
            if d.forwarding.producer() == producer {
                d.forwarding.acknowledged(upto);
            }
        }
    }

    /// Sends forwarded output that waited past its time for missing items.
    pub fn release_overdue_forwards(&mut self, now_ms: u64) {
        let Some(d) = self.durable.as_mut().filter(|d| d.forwarding.has_waiting()) else {
            return;
        };
        let ready = d.forwarding.overdue(now_ms);
        self.emit_ready(ready, now_ms);
    }

    fn emit_ready(&mut self, ready: Vec<super::forwarding::Ready>, now_ms: u64) {
        for (from, n, json) in ready {
            if let Ok(env) = Envelope::parse(&json) {
                self.emit_from(env, Some((from, n)), now_ms);
            }
        }
    }

    /// Sends a message another node produced: its run opens and closes here too.
    fn emit_from(&mut self, mut env: Envelope, origin: Option<(String, u64)>, now_ms: u64) {
        env.id.clear();
        env.session = self.id.clone();
        let from_node = origin
            .as_ref()
            .map(|(producer, _)| super::forwarding::node_of(producer).to_string());
        if let Some(run_id) = env.run_id.clone() {
            match &env.payload {
                Payload::RunStarted(_)
                    if self
                        .runs
                        .open(&run_id, env.thread_id.clone(), now_ms)
                        .is_ok() =>
                {
                    if let (Some(d), Some(node)) = (self.durable.as_mut(), from_node) {
                        if node != *d.me {
                            d.remote_runs.insert(run_id, node);
                        }
                    }
                }
                Payload::RunFinished(_) | Payload::RunError(_)
                    if self.runs.close(&run_id).is_ok() =>
                {
                    self.cancels.remove(&run_id);
                    if let Some(d) = self.durable.as_mut() {
                        d.remote_runs.remove(&run_id);
                    }
                }
                _ => {}
            }
        }
        if let Some(d) = self.durable.as_mut() {
            d.origin = origin;
        }
        self.emit(env, now_ms);
        if let Some(d) = self.durable.as_mut() {
            d.origin = None;
        }
    }
}
