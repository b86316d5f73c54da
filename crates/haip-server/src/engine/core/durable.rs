//! A session kept in a store (cluster mode, see `engine::store`): what the core holds until
//! the store has it, and how the core hands the session over to another node and takes one
//! over.
//!
//! A sent message gets its seq and its place in the replay window as in memory mode, but
//! it waits in `unstored` until the store confirms it; only then does it go to the
//! connection. A node that no longer drives the session forwards what it still produces,
//! without seq, to the node that does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};

use haip_protocol::{Envelope, ErrorCode, EventType, Payload};

use super::forwarding::Forwarding;
use tokio_util::sync::CancellationToken;

use super::{Action, Pending, SessionCore, ToolRun};
use crate::agent::RunEnding;
use crate::engine::outbound::{Close, OutItem, Outgoing};
use crate::engine::store::{
    ClaimedSession, Forwarded, PendingWrite, SessionStore, SessionWrite, StoredMessage, StoredRun,
    WriteOutcome, WritingSession,
};

/// The message a node that lost a run's agent gives for it (contract section 13).
pub const AGENT_NODE_LOST: &str = "agent node lost";

/// A sent message the store has not confirmed.
#[derive(Debug)]
struct Unstored {
    ts: u64,
    out: Arc<Outgoing>,
    /// Who produced it, when another node did (its producer and number, see
    /// [`Forwarding`]).
    origin: Option<(String, u64)>,
}

pub(super) struct Durable {
    /// Where the session is kept, and the session itself (for the store to pull from).
    store: Arc<dyn SessionStore>,
    session: Option<Weak<dyn WritingSession>>,
    /// This node as owners are recorded.
    me: Arc<str>,
    /// The epoch this node drives the session in.
    epoch: u64,
    /// Sent messages the store has not confirmed, oldest first; the first `writing` of
    /// them are in a write under way.
    unstored: VecDeque<Unstored>,
    writing: usize,
    /// Set once another node drives the session: what is produced here goes there.
    elsewhere: bool,
    /// What goes to (and comes from) the other nodes, in order.
    forwarding: Forwarding,
    /// The producer of the message being sent, while a forwarded one is.
    origin: Option<(String, u64)>,
    /// The node of each open run whose agent is not on this node.
    remote_runs: HashMap<String, String>,
    /// Work started by client messages the store does not have yet, by client seq: given
    /// up if the session moves first (the node that takes it over processes them again).
    work: Vec<(u64, CancellationToken)>,
    /// Runs given up that way: their output is dropped.
    abandoned_runs: HashSet<String>,
    runs_changed: bool,
    client_hai: Option<String>,
    written_client_seq: Option<u64>,
    /// The generation of the user messages being assembled last written.
    written_texts: Option<u32>,
    /// The client seq processed that the store has (what may be acknowledged outside a
    /// stored message, e.g. in the answer to a POST).
    stored_client_seq: Option<u64>,
    ended_written: bool,
    /// Asked the store to pull a write and not pulled yet.
    scheduled: bool,
    /// The client was told that the store is out of reach (once per outage).
    told_unavailable: bool,
}

impl Durable {
    /// The last message waiting for the store.
    pub(super) fn last_unstored(&self) -> Option<Arc<Outgoing>> {
        self.unstored.back().map(|u| u.out.clone())
    }
}

impl SessionCore {
    /// Keeps this session in `store`, driven by this node in `epoch`.
    pub fn keep_in_store(&mut self, store: Arc<dyn SessionStore>, epoch: u64) {
        let me: Arc<str> = Arc::from(store.owner());
        self.durable = Some(Box::new(Durable {
            store,
            session: None,
            forwarding: Forwarding::new(&me),
            me,
            epoch,
            unstored: VecDeque::new(),
            writing: 0,
            elsewhere: false,
            origin: None,
            remote_runs: HashMap::new(),
            work: Vec::new(),
            abandoned_runs: HashSet::new(),
            runs_changed: false,
            client_hai: None,
            written_client_seq: None,
            written_texts: Some(0),
            stored_client_seq: None,
            ended_written: false,
            scheduled: false,
            told_unavailable: false,
        }));
    }

    /// The highest client seq processed that survives this node: all of them in memory
    /// mode, those the store has in cluster mode.
    pub fn durable_client_seq(&self) -> Option<u64> {
        match &self.durable {
            Some(d) => d.stored_client_seq,
            None => self.last_client_seq(),
        }
    }

    /// Cluster mode: the session this core is the state of (set once it is wrapped).
    pub fn point_back(&mut self, session: Weak<dyn WritingSession>) {
        if let Some(d) = self.durable.as_mut() {
            d.session = Some(session);
        }
    }

    /// The store, in cluster mode.
    pub fn store(&self) -> Option<&Arc<dyn SessionStore>> {
        self.durable.as_ref().map(|d| &d.store)
    }

    /// The store and the session, when the store should pull a write now (see
    /// [`SessionCore::wants_write`]).
    pub fn write_wanted(&mut self) -> Option<(Arc<dyn SessionStore>, Weak<dyn WritingSession>)> {
        if !self.wants_write() {
            return None;
        }
        let d = self.durable.as_ref()?;
        Some((d.store.clone(), d.session.clone()?))
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
        d.unstored.push_back(Unstored {
            ts: now_ms,
            out: out.clone(),
            origin: d.origin.take(),
        });
        let unstored = d.unstored.len();
        if !self.ended && unstored > self.limits.max_held_messages {
            self.end_for_held_output("not stored", unstored, 0, now_ms);
        }
        true
    }

    /// Sends `env` to the node that drives the session, when that is another node (not at
    /// all when its run was given up); true when it is not sent here.
    pub(super) fn forward_if_elsewhere(&mut self, env: &Envelope) -> bool {
        let Some(d) = self.durable.as_mut().filter(|d| d.elsewhere) else {
            return false;
        };
        let abandoned = env
            .run_id
            .as_ref()
            .is_some_and(|run| d.abandoned_runs.contains(run));
        if !abandoned {
            d.forwarding.produce(forwardable(env.clone()));
        }
        true
    }

    /// Gives each piece of work the client message `client_seq` asked for its token of
    /// abandonment, kept until the store has the message (cluster mode).
    pub(super) fn tag_work(&mut self, actions: &mut [Action], client_seq: u64) {
        let Some(d) = self.durable.as_mut() else {
            return; // memory mode: nothing is ever given up
        };
        let token = CancellationToken::new();
        for action in actions.iter_mut() {
            match action {
                Action::Text { abandon, .. }
                | Action::Audio { abandon, .. }
                | Action::CallTool(ToolRun { abandon, .. }) => *abandon = token.clone(),
                Action::RoundTrip(_) | Action::CancelRunOn { .. } => {}
            }
        }
        d.work.push((client_seq, token));
    }

    /// A client message for a session another node drives goes to that node, which
    /// processes it; true when that is so.
    pub fn pass_inbound_if_elsewhere(&mut self, env: &Envelope, cost: u64) -> bool {
        let Some(d) = self.durable.as_mut().filter(|d| d.elsewhere) else {
            return false;
        };
        d.forwarding.pass_inbound(env.to_json(), cost);
        true
    }

    /// Whether the store should pull a write now (and notes that it was asked to).
    pub fn wants_write(&mut self) -> bool {
        let last_client_seq = self.inbound.last_delivered();
        let texts_generation = self.texts_generation;
        let ended = self.ended;
        let Some(d) = self.durable.as_mut() else {
            return false;
        };
        if d.scheduled {
            return false;
        }
        let wanted = if d.elsewhere {
            d.writing == 0 && d.forwarding.has_outbox()
        } else {
            d.unstored.len() > d.writing
                || (d.writing == 0
                    && (d.runs_changed
                        || d.client_hai.is_some()
                        || d.forwarding.applied_changed()
                        || d.written_texts != Some(texts_generation)
                        || last_client_seq != d.written_client_seq
                        || (ended && !d.ended_written)))
        };
        d.scheduled = wanted;
        wanted
    }

    /// What the store keeps next of this session, if anything.
    pub fn take_write(&mut self) -> Option<PendingWrite> {
        let last_client_seq = self.inbound.last_delivered();
        let texts_generation = self.texts_generation;
        let texts = self
            .durable
            .as_ref()
            .filter(|d| !d.elsewhere && d.written_texts != Some(texts_generation))
            .map(|_| texts_json(&self.texts));
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
            return d
                .forwarding
                .has_outbox()
                .then(|| PendingWrite::Forward(d.forwarding.take_outbox()));
        }
        if d.writing > 0 {
            return None; // one write at a time: the next follows its outcome
        }
        let messages: Vec<StoredMessage> = d
            .unstored
            .iter()
            .map(|u| StoredMessage {
                seq: u.out.seq,
                ts: u.ts,
                json: u.out.json(),
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
        let applied = d.forwarding.applied_to_store();
        let nothing = messages.is_empty()
            && runs.is_none()
            && applied.is_none()
            && texts.is_none()
            && d.client_hai.is_none()
            && last_client_seq == d.written_client_seq
            && (!ended || d.ended_written);
        if nothing {
            return None;
        }
        d.writing = messages.len();
        d.runs_changed = false;
        d.written_client_seq = last_client_seq;
        d.written_texts = Some(texts_generation);
        d.ended_written = ended;
        Some(PendingWrite::Keep(SessionWrite {
            session,
            subject,
            epoch: d.epoch,
            messages,
            last_client_seq,
            runs,
            client_hai: d.client_hai.take(),
            applied,
            texts,
            ended,
        }))
    }

    /// The store's answer to the last write. Returns the producers to tell how far their
    /// forwarded output is applied (see [`Forwarding::notices`]).
    pub fn written(&mut self, outcome: WriteOutcome, now_ms: u64) -> Vec<(String, u64)> {
        let Some(d) = self.durable.as_mut() else {
            return Vec::new();
        };
        d.writing = 0;
        match outcome {
            WriteOutcome::Stored { upto } => {
                d.told_unavailable = false;
                d.stored_client_seq = d.written_client_seq;
                let durable = d.stored_client_seq.unwrap_or(0);
                d.work.retain(|(seq, _)| *seq > durable);
                let mut released = Vec::new();
                while d.unstored.front().is_some_and(|u| u.out.seq <= upto) {
                    if let Some(u) = d.unstored.pop_front() {
                        released.push(u.out);
                    }
                }
                let notices = d.forwarding.stored();
                if d.elsewhere {
                    // Lost the session while this write was under way: what it did not
                    // store goes to the node that drives it now.
                    self.hand_over_unstored();
                    return notices;
                }
                if let Some(q) = &self.attached {
                    for out in released {
                        q.push(OutItem::Frame(out));
                    }
                    let (messages, bytes) = q.backlog();
                    if !self.ended
                        && (messages > self.limits.max_held_messages
                            || bytes > self.limits.max_held_bytes)
                    {
                        self.end_for_held_output(
                            "not written to the client",
                            messages,
                            bytes,
                            now_ms,
                        );
                    }
                }
                notices
            }
            WriteOutcome::Moved => {
                d.elsewhere = true;
                self.hand_over_unstored();
                self.close_for_takeover();
                Vec::new()
            }
            WriteOutcome::Failed(why) => {
                if d.elsewhere {
                    // Lost the session meanwhile: the node that drives it gets the rest.
                    self.hand_over_unstored();
                    return Vec::new();
                }
                // The runs, terms and forwarding numbers go again with the next write.
                d.runs_changed = true;
                d.written_client_seq = None;
                d.written_texts = None;
                d.forwarding.store_again();
                if !d.told_unavailable {
                    d.told_unavailable = true;
                    if let Some(q) = &self.attached {
                        q.push(OutItem::Frame(Arc::new(Outgoing::unsequenced_error(
                            ErrorCode::InternalError,
                            "the session store is out of reach: messages are held until it \
                                 is back",
                            &self.id,
                            now_ms,
                        ))));
                    }
                    tracing::warn!(session = %self.id, error = %why, "session store out of reach: output held");
                }
                Vec::new()
            }
        }
    }

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

    fn close_for_takeover(&mut self) {
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
    fn hand_over_unstored(&mut self) {
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
            super::OutgoingPacker::new(self.shared_id.clone(), self.ids),
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
    /// its `n`th: sent in each producer's order (see [`Forwarding`]).
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

/// An envelope as forwarded: its own id, seq, ack and ts are given by the node that sends
/// it. The fields stay valid so that the receiver can read it with the usual checks.
fn forwardable(mut env: Envelope) -> String {
    env.id = "forwarded".to_string();
    env.seq = 1;
    env.ack = None;
    env.ts = 0;
    env.to_json()
}

/// The user messages being assembled, as stored: message id to text and thread.
fn texts_json(texts: &HashMap<String, (String, Option<String>)>) -> String {
    serde_json::to_string(texts).unwrap_or_default()
}
