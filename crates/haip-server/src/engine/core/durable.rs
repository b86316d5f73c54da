//! A session kept in a store (cluster mode, see `engine::store`): what the core holds until
//! the store has it, and how the core hands the session over to another node and takes one
//! over.
//!
//! A sent message gets its seq and its place in the replay window as in memory mode, but
//! it waits in `unstored` until the store confirms it; only then does it go to the
//! connection. A node that no longer drives the session forwards what it still produces,
//! without seq, to the node that does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use haip_protocol::{Envelope, ErrorCode, EventType, Payload};

use super::{Pending, SessionCore};
use crate::agent::RunEnding;
use crate::engine::outbound::{Close, OutItem, Outgoing};
use crate::engine::store::{
    ClaimedSession, Forwarded, SessionWrite, StoredMessage, StoredRun, WriteOutcome,
};

/// The message a node that lost a run's agent gives for it (contract section 13).
pub const AGENT_NODE_LOST: &str = "agent node lost";

#[derive(Debug)]
pub(super) struct Durable {
    /// This node as owners are recorded.
    me: Arc<str>,
    /// The epoch this node drives the session in.
    epoch: u64,
    /// Sent messages the store has not confirmed, oldest first, with their ts; the first
    /// `writing` of them are in a write under way.
    unstored: VecDeque<(u64, Arc<Outgoing>)>,
    writing: usize,
    /// Set once another node drives the session: what is produced here goes there.
    elsewhere: bool,
    forward: Vec<Forwarded>,
    /// The node of each open run whose agent is not on this node.
    remote_runs: HashMap<String, String>,
    runs_changed: bool,
    client_hai: Option<String>,
    written_client_seq: Option<u64>,
    ended_written: bool,
    /// Asked the store to pull a write and not pulled yet.
    scheduled: bool,
    /// The client was told that the store is out of reach (once per outage).
    told_unavailable: bool,
}

/// What the store pulls from a session.
#[derive(Debug)]
pub enum PendingWrite {
    Keep(SessionWrite),
    /// Output for the node that drives the session now.
    Forward(Vec<Forwarded>),
}

impl Durable {
    /// The last message waiting for the store.
    pub(super) fn last_unstored(&self) -> Option<Arc<Outgoing>> {
        self.unstored.back().map(|(_, out)| out.clone())
    }
}

impl SessionCore {
    /// Keeps this session in a store, driven by `me` in `epoch`.
    pub fn keep_in_store(&mut self, me: Arc<str>, epoch: u64) {
        self.durable = Some(Box::new(Durable {
            me,
            epoch,
            unstored: VecDeque::new(),
            writing: 0,
            elsewhere: false,
            forward: Vec::new(),
            remote_runs: HashMap::new(),
            runs_changed: false,
            client_hai: None,
            written_client_seq: None,
            ended_written: false,
            scheduled: false,
            told_unavailable: false,
        }));
    }

    /// Whether another node drives this session now (it must be claimed to be served here).
    pub fn is_driven_elsewhere(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| d.elsewhere)
    }

    /// The highest seq a client may have been given: everything in memory mode, what the
    /// store confirmed in cluster mode.
    pub(super) fn stored_seq(&self) -> u64 {
        match &self.durable {
            Some(d) => self.last_sent_seq - d.unstored.len() as u64,
            None => self.last_sent_seq,
        }
    }

    /// Keeps a sent message until the store has it; false in memory mode (send it now).
    pub(super) fn hold_until_stored(&mut self, out: &Arc<Outgoing>, now_ms: u64) -> bool {
        let Some(d) = self.durable.as_mut() else {
            return false;
        };
        if matches!(
            out.event_type,
            EventType::RunStarted | EventType::RunFinished | EventType::RunError
        ) {
            d.runs_changed = true;
        }
        d.unstored.push_back((now_ms, out.clone()));
        let unstored = d.unstored.len();
        if !self.ended && unstored > self.limits.max_held_messages {
            self.end_for_held_output("not stored", unstored, 0, now_ms);
        }
        true
    }

    /// Sends `env` to the node that drives the session, when that is another node.
    pub(super) fn forward_if_elsewhere(&mut self, env: &Envelope) -> bool {
        let Some(d) = self.durable.as_mut().filter(|d| d.elsewhere) else {
            return false;
        };
        d.forward.push(Forwarded::Output {
            json: forwardable(env.clone()),
        });
        true
    }

    /// Whether the store should pull a write now (and notes that it was asked to).
    pub fn wants_write(&mut self) -> bool {
        let last_client_seq = self.inbound.last_delivered();
        let ended = self.ended;
        let Some(d) = self.durable.as_mut() else {
            return false;
        };
        if d.scheduled {
            return false;
        }
        let wanted = if d.elsewhere {
            !d.forward.is_empty()
        } else {
            d.unstored.len() > d.writing
                || (d.writing == 0
                    && (d.runs_changed
                        || d.client_hai.is_some()
                        || last_client_seq != d.written_client_seq
                        || (ended && !d.ended_written)))
        };
        d.scheduled = wanted;
        wanted
    }

    /// What the store keeps next of this session, if anything.
    pub fn take_write(&mut self) -> Option<PendingWrite> {
        let last_client_seq = self.inbound.last_delivered();
        let runs: Vec<StoredRun> = self
            .runs
            .iter()
            .map(|(run_id, run)| StoredRun {
                run_id: run_id.to_string(),
                node: self
                    .durable
                    .as_ref()
                    .and_then(|d| d.remote_runs.get(run_id).cloned())
                    .unwrap_or_default(),
                thread_id: run.thread_id.clone(),
            })
            .collect();
        let session = self.id.clone();
        let subject = self.subject.clone();
        let ended = self.ended;
        let d = self.durable.as_mut()?;
        d.scheduled = false;
        if d.elsewhere {
            return (!d.forward.is_empty())
                .then(|| PendingWrite::Forward(std::mem::take(&mut d.forward)));
        }
        if d.writing > 0 {
            return None; // one write at a time: the next follows its outcome
        }
        let messages: Vec<StoredMessage> = d
            .unstored
            .iter()
            .map(|(ts, out)| StoredMessage {
                seq: out.seq,
                ts: *ts,
                json: out.json(),
            })
            .collect();
        let runs = d.runs_changed.then(|| {
            runs.into_iter()
                .map(|mut run| {
                    if run.node.is_empty() {
                        run.node = d.me.to_string();
                    }
                    run
                })
                .collect()
        });
        let nothing = messages.is_empty()
            && runs.is_none()
            && d.client_hai.is_none()
            && last_client_seq == d.written_client_seq
            && (!ended || d.ended_written);
        if nothing {
            return None;
        }
        d.writing = messages.len();
        d.runs_changed = false;
        d.written_client_seq = last_client_seq;
        d.ended_written = ended;
        Some(PendingWrite::Keep(SessionWrite {
            session,
            subject,
            epoch: d.epoch,
            messages,
            last_client_seq,
            runs,
            client_hai: d.client_hai.take(),
            ended,
        }))
    }

    /// The store's answer to the last write.
    pub fn written(&mut self, outcome: WriteOutcome, now_ms: u64) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        match outcome {
            WriteOutcome::Stored { upto } => {
                d.writing = 0;
                d.told_unavailable = false;
                let mut released = Vec::new();
                while d.unstored.front().is_some_and(|(_, out)| out.seq <= upto) {
                    if let Some((_, out)) = d.unstored.pop_front() {
                        released.push(out);
                    }
                }
                let Some(q) = &self.attached else {
                    return;
                };
                for out in released {
                    q.push(OutItem::Frame(out));
                }
                let (messages, bytes) = q.backlog();
                if !self.ended
                    && (messages > self.limits.max_held_messages
                        || bytes > self.limits.max_held_bytes)
                {
                    self.end_for_held_output("not written to the client", messages, bytes, now_ms);
                }
            }
            WriteOutcome::Moved => self.now_driven_elsewhere(),
            WriteOutcome::Failed(why) => {
                d.writing = 0;
                // The runs and terms go again with the next write.
                d.runs_changed = true;
                d.written_client_seq = None;
                if !d.told_unavailable {
                    d.told_unavailable = true;
                    if let Some(q) = &self.attached {
                        q.push(OutItem::Frame(Arc::new(super::super::connection::unsequenced_error(
                            ErrorCode::InternalError,
                            "the session store is out of reach: messages are held until it is back",
                            &self.id,
                        ))));
                    }
                    tracing::warn!(session = %self.id, error = %why, "session store out of reach: output held");
                }
            }
        }
    }

    /// Another node drives the session now: the connection here is closed, and whatever
    /// was not stored, and whatever is produced here from now on, goes to that node.
    pub fn now_driven_elsewhere(&mut self) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        if d.elsewhere {
            return;
        }
        d.elsewhere = true;
        d.writing = 0;
        let unsent: Vec<Forwarded> = d
            .unstored
            .drain(..)
            .filter_map(|(_, out)| Envelope::parse_bytes(&out.json()).ok())
            .chain(
                self.gate
                    .reset_credit(haip_protocol::flow::Credit::UNLIMITED)
                    .into_iter()
                    .map(|p| match p {
                        Pending::Own(env) => env,
                        Pending::Shared(shared) => shared.env.clone(),
                    }),
            )
            .map(|env| Forwarded::Output {
                json: forwardable(env),
            })
            .collect();
        d.forward.splice(0..0, unsent);
        if let Some(q) = self.attached.take() {
            q.push(OutItem::Close(Close {
                code: 1000,
                reason: "session resumed on another node".into(),
            }));
            self.detached_since_ms = Some(super::super::now_ms());
        }
    }

    /// Makes this core the session as another node left it: its next seq, the client seq
    /// it acknowledged, its open runs and its replay window; runs of nodes in `dead` are
    /// ended with RUN_ERROR AGENT_ERROR.
    pub fn take_over(&mut self, claimed: ClaimedSession, dead: &[String], now_ms: u64) {
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
        let me = d.me.clone();
        self.replay = haip_protocol::replay::ReplayWindow::with_packer(
            self.limits.replay,
            super::OutgoingPacker::new(self.shared_id.clone(), self.ids),
        );
        let first = claimed
            .messages
            .first()
            .map_or(claimed.last_seq, |m| m.seq - 1);
        self.replay.start_after(first);
        for m in claimed.messages {
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
        for run in claimed.runs {
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
        self.durable.as_ref().is_some_and(|d| !d.forward.is_empty())
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

    /// A message another node produced for this session (an agent still answering there):
    /// its run opens and closes here too, then it is sent like any other.
    pub fn emit_forwarded(&mut self, mut env: Envelope, from_node: Option<&str>, now_ms: u64) {
        env.id.clear();
        env.session = self.id.clone();
        if let Some(run_id) = env.run_id.clone() {
            match &env.payload {
                Payload::RunStarted(_)
                    if self
                        .runs
                        .open(&run_id, env.thread_id.clone(), now_ms)
                        .is_ok() =>
                {
                    if let (Some(d), Some(node)) = (self.durable.as_mut(), from_node) {
                        d.remote_runs.insert(run_id, node.to_string());
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
        self.emit(env, now_ms);
    }
}

/// An envelope as forwarded: its own id, seq, ack and ts are given by the node that sends
/// it. The fields stay valid so that the receiver can read it with the usual checks.
fn forwardable(mut env: Envelope) -> String {
    env.id = "forwarded".to_string();
    env.seq = 1;
    env.ack = None;
    env.ts = 0;
    env.to_json()
}
