//! The write path of a session kept in a store (cluster mode): what is pulled for the
//! store, the store's answer, and messages waiting for it before they go to the client.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};

use haip_protocol::{Envelope, ErrorCode, EventType};

use super::forwarding::Forwarding;
use tokio_util::sync::CancellationToken;

use super::durable::{texts_json, Durable, Unstored};
use super::messages::{Action, ToolRun};
use super::session_core::SessionCore;
use crate::engine::outbound::{OutItem, Outgoing};
use crate::engine::store::{
    PendingWrite, SessionStore, SessionWrite, StoredMessage, StoredRun, WriteOutcome,
    WritingSession,
};

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
            after_handover: Vec::new(),
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
        if d.writing > 0 {
            // The hand-over waits for the write under way, which decides what of the
            // unsent output the store has; what is made meanwhile goes after that output.
            d.after_handover.push(env.clone());
            return true;
        }
        d.produce_unless_abandoned(env.clone());
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
    /// forwarded output is applied (see `Forwarding::stored`).
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
}
