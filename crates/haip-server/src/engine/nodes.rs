//! What the engine does with the other nodes of a cluster (contract section 13): claiming a
//! session another node drove, applying what other nodes forward to the sessions this node
//! drives, thread followers and agent workers on other nodes, and the upkeep (runs of dead
//! nodes, sessions kept from expiring). Nothing here runs in memory mode: every entry
//! point does nothing without a store.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use haip_protocol::Envelope;
use tokio_util::sync::CancellationToken;

use super::clock::now_ms;
use super::core::{SessionCore, SharedMessage};
use super::registry::{Engine, ResumeError};
use super::session::Session;
use super::store::{ClaimedSession, Forwarded, SessionStore, StoreError};
use crate::agent::{Reply, Turn};

/// A claim of a session under way on this node, noted while it lasts.
struct Claiming<'a> {
    engine: &'a Engine,
    id: String,
}

impl<'a> Claiming<'a> {
    fn start(engine: &'a Engine, id: &str) -> Claiming<'a> {
        engine.claiming().insert(id.to_string());
        Claiming {
            engine,
            id: id.to_string(),
        }
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        self.engine.claiming().remove(&self.id);
    }
}

impl Engine {
    /// Makes `session` follow `thread` (`?thread=`), on every node in cluster mode.
    pub fn follow(&self, thread: &str, session: &Arc<Session>) {
        self.threads.follow(thread, session);
        if let Some(store) = self.store().cloned() {
            let (subject, thread, id) = (
                session.subject.clone(),
                thread.to_string(),
                session.id.clone(),
            );
            tokio::spawn(async move { store.follow(&subject, &thread, &id).await });
        }
    }

    /// Whether this node's own relay serves `session` as a follower of `thread`.
    pub fn follows_here(&self, subject: &str, thread: &str, session: &str) -> bool {
        self.drives_here(session) && self.threads.is_follower(subject, thread, session)
    }

    /// In cluster mode, makes sure a session another node drove (or drives) is here, to be
    /// resumed: claims it from the store. Nothing to do in memory mode or when this node
    /// drives it already. Errors say why it cannot be resumed.
    pub async fn claim_for_resume(
        self: &Arc<Self>,
        subject: &str,
        id: &str,
    ) -> Result<(), ResumeError> {
        let Some(store) = self.store() else {
            return Ok(());
        };
        if let Some(local) = self.get(id) {
            if local.subject != subject {
                return Err(StoreError::NotYours(id.to_string()).into());
            }
            if !local.lock().is_driven_elsewhere() {
                return Ok(());
            }
        }
        let _claiming = Claiming::start(self, id);
        let claimed = store.claim(id, subject).await?;
        self.install_claimed(store, id, subject, claimed).await;
        Ok(())
    }

    fn claiming(&self) -> MutexGuard<'_, std::collections::HashSet<String>> {
        self.claiming.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a claimed session this node's: in place when it is here already (agents
    /// still answering hold it), else as a new one.
    async fn install_claimed(
        self: &Arc<Self>,
        store: &Arc<dyn SessionStore>,
        id: &str,
        subject: &str,
        claimed: ClaimedSession,
    ) -> Arc<Session> {
        let remote: Vec<String> = claimed
            .runs
            .iter()
            .map(|r| r.node.clone())
            .filter(|n| n != store.owner())
            .collect();
        let alive = if remote.is_empty() {
            Vec::new()
        } else {
            store.live_nodes(remote.clone()).await
        };
        let dead: Vec<String> = remote.into_iter().filter(|n| !alive.contains(n)).collect();
        let previous = claimed.previous_owner.clone();
        let inbound: Vec<Forwarded> = claimed
            .forwarded
            .iter()
            .filter(|(_, item)| matches!(item, Forwarded::Inbound { .. }))
            .map(|(_, item)| item.clone())
            .collect();
        let session = match self.get(id) {
            Some(local) => local,
            None => self.add_copy(id, subject, store, claimed.epoch),
        };
        session.lock().take_over(claimed, &dead, now_ms());
        self.metrics
            .sessions_taken_over
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            session = %id,
            previous_node = previous.as_deref().unwrap_or(""),
            lost_agent_nodes = dead.len(),
            "session taken over from the store"
        );
        if let Some(previous) = previous.filter(|p| p != store.owner()) {
            store.tell_node(&previous, id, Forwarded::TakenOver).await;
        }
        for item in inbound {
            self.apply_forwarded(&session, "", item);
        }
        // What was queued between the claim and now (woken while this node did not yet
        // know it drives the session).
        Box::pin(self.take_forwarded(id)).await;
        session
    }

    /// Takes what other nodes queued for session `id` (cluster mode): this node was
    /// woken because it drives it.
    pub async fn take_forwarded(self: &Arc<Self>, id: &str) {
        let Some(store) = self.store() else {
            return;
        };
        match self.get(id) {
            Some(session) if !session.lock().is_driven_elsewhere() => match store.drain(id).await {
                Ok(items) => {
                    for (from, item) in items {
                        self.apply_forwarded(&session, &from, item);
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "could not take forwarded messages")
                }
            },
            Some(_) => {} // woken for a session it lost since
            None if self.claiming().contains(id) => {} // taken with the claim under way
            None => {
                let _claiming = Claiming::start(self, id);
                // Recorded as this node's but not here (dropped past its TTL here): taken
                // again, with its queue.
                match store.claim(id, "").await {
                    Ok(claimed) => {
                        let subject = claimed.subject.clone();
                        self.install_claimed(store, id, &subject, claimed).await;
                    }
                    Err(e) => {
                        tracing::debug!(session = %id, error = %e, "woken for an unknown session")
                    }
                }
            }
        }
    }

    /// Takes the queues of every session this node drives (after it listens again).
    pub async fn take_all_forwarded(self: &Arc<Self>) {
        let driven: Vec<String> = self
            .registry()
            .values()
            .filter(|s| !s.lock().is_driven_elsewhere())
            .map(|s| s.id.clone())
            .collect();
        for id in driven {
            self.take_forwarded(&id).await;
        }
    }

    /// Something another node sent to this one about session `id` (cluster mode).
    pub async fn on_direct(self: &Arc<Self>, id: &str, from: &str, item: Forwarded) {
        if let Forwarded::Job {
            subject,
            text,
            thread_id,
            history,
        } = item
        {
            // A user message for the workers here: answered into a copy of the session
            // that forwards to the node driving it.
            let Some(session) = self.producer_copy(id, &subject) else {
                return;
            };
            let reply = Reply::new(
                self.agent_link(&session, CancellationToken::new()),
                thread_id,
            )
            .with_history(history);
            tokio::spawn(self.agent.on_text(reply, text));
            return;
        }
        if let Some(session) = self.get(id) {
            self.apply_forwarded(&session, from, item);
        }
    }

    fn apply_forwarded(self: &Arc<Self>, session: &Arc<Session>, from: &str, item: Forwarded) {
        match item {
            Forwarded::Output { json, n } => {
                session.lock().accept_forwarded(from, n, json, now_ms());
            }
            Forwarded::Inbound { json, cost } => match Envelope::parse(&json) {
                Ok(env) => self.handle(session, env, cost),
                Err(e) => session.lock().refuse(&e, now_ms()),
            },
            Forwarded::CancelRun { run_id } => session.lock().cancel_here(&run_id),
            Forwarded::TakenOver => session.lock().now_driven_elsewhere(),
            Forwarded::Applied { producer, n } => session.lock().forwards_applied(&producer, n),
            Forwarded::Job { .. } => {} // only ever sent to a node directly
            Forwarded::ThreadCopies { jsons } => {
                let now = now_ms();
                let mut core = session.lock();
                for json in jsons {
                    if let Ok(env) = Envelope::parse(&json) {
                        core.emit_shared(&Arc::new(SharedMessage::copies_of(env)), now);
                    }
                }
            }
        }
    }

    /// A client message for session `id`, which another node drives (cluster mode): to
    /// that node, which processes it (the store checks that the session is `subject`'s).
    pub async fn forward_inbound(
        &self,
        subject: &str,
        id: &str,
        json: String,
        cost: u64,
    ) -> Result<(), StoreError> {
        let store = self
            .store()
            .ok_or_else(|| StoreError::Unknown(id.to_string()))?;
        let item = Forwarded::Inbound { json, cost };
        store.forward(id, Some(subject), store.owner(), item).await
    }

    /// Cluster upkeep, every few seconds: ends runs whose agent's node died, and drops
    /// local copies of sessions other nodes drive once nothing here works for them.
    pub async fn cluster_upkeep(&self) {
        let Some(store) = self.store() else {
            return;
        };
        let sessions: Vec<Arc<Session>> = self.registry().values().cloned().collect();
        let mut remote: Vec<(Arc<Session>, String, String)> = Vec::new();
        for s in &sessions {
            let core = s.lock();
            if core.is_driven_elsewhere() {
                continue;
            }
            for (run, node) in core.remote_runs() {
                remote.push((s.clone(), run, node));
            }
        }
        if !remote.is_empty() {
            let mut nodes: Vec<String> = remote.iter().map(|(_, _, n)| n.clone()).collect();
            nodes.sort();
            nodes.dedup();
            let alive = store.live_nodes(nodes).await;
            for (session, run, node) in remote {
                if !alive.contains(&node) {
                    tracing::warn!(session = %session.id, run = %run, node = %node, "ending a run: its agent's node is gone");
                    session.lock().end_lost_run(&run, now_ms());
                }
            }
        }
        let now = now_ms();
        let mut attached = Vec::new();
        for s in &sessions {
            let mut core = s.lock();
            core.release_overdue_forwards(now);
            if core.is_attached() && !core.is_driven_elsewhere() {
                attached.push(s.id.clone());
            }
        }
        // Sessions with a connection must not expire in the store while idle.
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.session_ttl_ms / 3 {
            self.last_refresh_ms.store(now, Ordering::Relaxed);
            store.refresh(attached).await;
        }
        let idle_elsewhere: Vec<String> = sessions
            .iter()
            .filter(|s| {
                s.in_flight.load(Ordering::Acquire) == 0 && {
                    let core = s.lock();
                    core.is_driven_elsewhere() && core.open_run_count() == 0 && !core.has_forwards()
                }
            })
            .map(|s| s.id.clone())
            .collect();
        // This node's copy only: the store keeps the session for the node that drives it.
        for id in idle_elsewhere {
            self.remove(&id);
        }
    }

    /// Cluster mode with agent workers: whether none is attached to this node.
    pub(super) fn has_no_workers_here(&self) -> bool {
        self.store().is_some() && self.worker_count() == Some(0)
    }

    /// The agent workers attached to this node, when the agent hands work to workers.
    pub fn worker_count(&self) -> Option<usize> {
        self.agent.worker_pool().map(|pool| pool.loads().len())
    }

    /// A user message when no agent worker is attached here: a node that has workers
    /// answers it (the session gets its output as from any other node); with none
    /// anywhere, the agent here says so.
    pub(super) fn answer_on_a_worker_node(
        self: &Arc<Self>,
        session: &Arc<Session>,
        text: String,
        thread_id: Option<String>,
        history: Option<Vec<Turn>>,
        abandon: CancellationToken,
    ) {
        let Some(store) = self.store().cloned() else {
            return;
        };
        let engine = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            if let Some(node) = store.worker_node().await {
                let job = Forwarded::Job {
                    subject: session.subject.clone(),
                    text,
                    thread_id,
                    history,
                };
                store.tell_node(&node, &session.id, job).await;
                return;
            }
            let reply =
                Reply::new(engine.agent_link(&session, abandon), thread_id).with_history(history);
            engine.agent.on_text(reply, text).await;
        });
    }

    /// A copy of session `id` on this node that produces into it while another node
    /// drives it (its output is forwarded there): the one here, or a new one.
    fn producer_copy(&self, id: &str, subject: &str) -> Option<Arc<Session>> {
        if let Some(local) = self.get(id) {
            return (local.subject == subject).then_some(local);
        }
        let store = self.store()?.clone();
        let session = self.add_copy(id, subject, &store, 0);
        session.lock().now_driven_elsewhere();
        Some(session)
    }

    /// A new copy of session `id` on this node, kept in `store` in `epoch`; registered,
    /// unless another task registered one first (then that one).
    fn add_copy(
        &self,
        id: &str,
        subject: &str,
        store: &Arc<dyn SessionStore>,
        epoch: u64,
    ) -> Arc<Session> {
        self.make_room_for(subject);
        let mut core = SessionCore::new(
            id.to_string(),
            subject.to_string(),
            self.limits.clone(),
            false,
            now_ms(),
        );
        core.share_threads(self.threads.in_use());
        core.set_tap(self.tap.clone());
        core.keep_in_store(store.clone(), epoch);
        let session = self.new_session(id.to_string(), subject, core);
        self.registry()
            .entry(id.to_string())
            .or_insert(session)
            .clone()
    }
}
