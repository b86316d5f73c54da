//! The session engine: owns every session and applies the protocol for all transports.
//!
//! Transports hand the engine a [`connection::Connection`] per client connection; the
//! engine keeps sessions in a registry so that they outlive their connections and can be
//! resumed on any transport.

mod agent_link;
pub mod budget;
pub mod connection;
pub mod core;
pub mod metrics;
mod nodes;
pub mod outbound;
pub mod replay_pack;
pub mod store;
pub mod tap;
pub mod threads;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use haip_protocol::payload::{RunStatus, ToolDone, ToolProgress, ToolUpdate};
use haip_protocol::replay::ReplayError;
use haip_protocol::{channel, Envelope, Payload};
use serde_json::Map;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, Reply, Turn};
use crate::tools::{ToolCatalog, ToolContext, ToolOutcome, ToolRegistry};
use agent_link::AgentLink;
use budget::{plan, Enforcement, MemoryBudget, Usage, CONNECTION_BYTES};
use core::{Action, SessionCore, SessionLimits, SessionUsage, SharedMessage, ToolRun};
use metrics::Metrics;
use outbound::ConnQueue;
use store::{Forwarded, SessionStore, StoreError, WriteOutcome};
use threads::Threads;

/// Milliseconds since the epoch: the `ts` of every message the server sends.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One session: its state behind a lock that is never held across an await.
pub struct Session {
    pub id: String,
    pub subject: String,
    core: Mutex<SessionCore>,
    /// Where copies of what it sends in followed threads go.
    threads: Arc<Threads>,
    /// Work its messages started that has not ended yet: agents answering, tools running
    /// (see [`InFlight`]).
    in_flight: AtomicU32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    /// Whether everything the client asked for has been answered: no agent or tool is
    /// still working on its messages and no run is open.
    pub fn is_answered(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.lock().open_run_count() == 0
    }

    /// What the store keeps next of this session (cluster mode).
    pub fn take_write(&self) -> Option<core::PendingWrite> {
        self.lock().take_write()
    }

    /// The store's answer to the session's last write; returns the producing nodes to
    /// tell how far their forwarded output is applied.
    pub fn written(&self, outcome: WriteOutcome) -> Vec<(String, u64)> {
        self.lock().written(outcome, now_ms())
    }

    /// The client seq to acknowledge outside a stored message (the answer to a POST): the
    /// highest processed, once it survives this node. In cluster mode that is once the
    /// store has it: a client that resumes elsewhere must not be told less than it was
    /// told here. Waits at most [`ACK_STORED_WAIT`], then says what the store has.
    pub async fn durable_ack(&self) -> Option<u64> {
        let processed = self.lock().last_client_seq();
        let deadline = tokio::time::Instant::now() + ACK_STORED_WAIT;
        loop {
            let stored = self.lock().durable_client_seq();
            if stored >= processed || tokio::time::Instant::now() >= deadline {
                return stored;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    pub fn lock(&self) -> SessionGuard<'_> {
        // A panic while holding the lock would be a bug; the state is still usable.
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        SessionGuard {
            core: Some(core),
            session: self,
        }
    }
}

/// The locked state of a session. When it is released, what the session sent in threads
/// goes on to the threads' followers: queued under the lock (in seq order), delivered
/// outside it (see [`threads`]).
pub struct SessionGuard<'a> {
    /// Always `Some` until dropped.
    core: Option<MutexGuard<'a, SessionCore>>,
    session: &'a Session,
}

impl std::ops::Deref for SessionGuard<'_> {
    type Target = SessionCore;
    fn deref(&self) -> &SessionCore {
        self.core.as_deref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for SessionGuard<'_> {
    fn deref_mut(&mut self) -> &mut SessionCore {
        self.core.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let Some(mut core) = self.core.take() else {
            return;
        };
        // Cluster mode: the store pulls what changed (nothing to do in memory mode).
        if let Some((store, session)) = core.write_wanted() {
            if let Some(session) = session.upgrade() {
                store.schedule(session);
            }
        }
        let sent = core.take_thread_output();
        if sent.is_empty() {
            return;
        }
        if let Some(store) = core.store() {
            // Followers on other nodes get theirs through the store.
            let copies = sent
                .iter()
                .map(|(thread, env)| (thread.clone(), env.to_json()))
                .collect();
            store.copy_to_followers(&self.session.subject, &self.session.id, copies);
        }
        let dispatch = self.session.threads.queue_copies(self.session, sent);
        drop(core);
        dispatch.run();
    }
}

/// What became of a resume asked for by a client HAI on a connection.
pub enum Move {
    /// The connection serves the resumed session now.
    Done(Arc<Session>),
    /// RESUME_FAILED was sent; the connection stays on its session.
    Failed,
    /// Cluster mode: the session is being claimed from the store; an OutItem::Switch
    /// follows either way.
    Claiming,
}

/// How long [`Session::durable_ack`] waits for the store (cluster mode).
pub const ACK_STORED_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The most sessions one user (token subject) keeps; see [`Engine::make_room_for`].
pub const MAX_SESSIONS_PER_SUBJECT: usize = 100;

/// Why a resume was refused: the session cannot be had (the reasons are the store's, also
/// in memory mode), or what the client asked for is not in the replay window.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Refused(#[from] StoreError),
    #[error("{0}")]
    Replay(#[from] ReplayError),
}

/// A user's sessions, for the bound on how many are kept.
#[derive(Default)]
struct SubjectSessions {
    count: usize,
    /// Sessions in the order they lost their connection (some resumed since).
    detached: std::collections::VecDeque<String>,
}

pub struct Engine {
    limits: Arc<SessionLimits>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Per user: how many sessions, and which lost their connection first.
    subjects: Mutex<HashMap<String, SubjectSessions>>,
    pub threads: Arc<Threads>,
    agent: Arc<dyn Agent>,
    tools: Arc<ToolRegistry>,
    pub metrics: Metrics,
    /// The server-wide memory budget (see [`budget`]).
    pub budget: MemoryBudget,
    /// A copy of every message, for admins watching (see [`tap`]).
    pub tap: Arc<tap::Tap>,
    session_ttl_ms: u64,
    /// The HAI and TOOL_LIST that open every session, the same for all but their heads
    /// (the HAI depends only on the configuration and whether the transport takes binary
    /// frames, the index here). Shared so that each session keeps only its heads for replay.
    greetings: [OnceLock<[Arc<SharedMessage>; 2]>; 2],
    /// The conversation before a session's next user message, given by a client that
    /// keeps it itself (the AI SDK endpoints), by session id; taken by that message.
    histories: Mutex<HashMap<String, Vec<Turn>>>,
    /// Where sessions are kept beyond this process: set in cluster mode (see [`store`]).
    store: OnceLock<Arc<dyn SessionStore>>,
    /// When the sessions with a connection were last kept from expiring in the store.
    last_refresh_ms: std::sync::atomic::AtomicU64,
    /// Sessions this node is claiming from the store right now.
    claiming: Mutex<std::collections::HashSet<String>>,
}

impl Engine {
    pub fn new(
        limits: SessionLimits,
        agent: Arc<dyn Agent>,
        tools: ToolRegistry,
        session_ttl_ms: u64,
        memory_limit: u64,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            budget: MemoryBudget::new(memory_limit),
            tap: Arc::new(tap::Tap::default()),
            limits: Arc::new(limits),
            sessions: Mutex::new(HashMap::new()),
            subjects: Mutex::new(HashMap::new()),
            threads: Arc::new(Threads::default()),
            agent,
            tools: Arc::new(tools),
            metrics: Metrics::default(),
            session_ttl_ms,
            greetings: Default::default(),
            histories: Mutex::default(),
            store: OnceLock::new(),
            last_refresh_ms: std::sync::atomic::AtomicU64::new(now_ms()),
            claiming: Mutex::default(),
        })
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn session_count(&self) -> usize {
        self.registry().len()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.registry().get(id).cloned()
    }

    /// Creates a session attached to `queue` and announces it: HAI (seq 1), then TOOL_LIST.
    pub fn open_session(
        &self,
        subject: &str,
        queue: Arc<ConnQueue>,
        binary_frames: bool,
    ) -> Arc<Session> {
        let now = now_ms();
        self.make_room_for(subject);
        let id = uuid::Uuid::new_v4().to_string();
        let mut core = SessionCore::new(
            id.clone(),
            subject.to_string(),
            self.limits.clone(),
            binary_frames,
            now,
        );
        core.share_threads(self.threads.in_use());
        core.set_tap(self.tap.clone());
        let _ = core.attach(queue, None, binary_frames, now);
        let [hai, tool_list] = self.greetings[usize::from(binary_frames)].get_or_init(|| {
            let hai = core.envelope(channel::SYSTEM, Payload::Hai(core.server_hai(None)));
            let tools = core.envelope(channel::SYSTEM, Payload::ToolList(self.tools.list()));
            [hai, tools].map(|env| Arc::new(SharedMessage::for_each_session(env)))
        });
        if let Some(store) = self.store() {
            core.keep_in_store(store.clone(), 1);
        }
        core.emit_shared(hai, now);
        core.emit_shared(tool_list, now);
        let session = self.new_session(id.clone(), subject, core);
        // The greeting waits for the store (cluster mode): the first write creates the
        // session there.
        drop(session.lock());
        self.registry().insert(id, session.clone());
        session
    }

    /// Wraps `core` as a session (cluster mode: `core` keeps the way back to it, for the
    /// store to pull from).
    fn new_session(&self, id: String, subject: &str, mut core: SessionCore) -> Arc<Session> {
        Arc::new_cyclic(|this| {
            core.point_back(this.clone());
            Session {
                id,
                subject: subject.to_string(),
                core: Mutex::new(core),
                threads: self.threads.clone(),
                in_flight: AtomicU32::new(0),
            }
        })
    }

    /// The replay window's rules, which the store trims by too.
    pub fn replay_config(&self) -> haip_protocol::replay::ReplayConfig {
        self.limits.replay
    }

    /// Keeps sessions in `store` from now on (cluster mode); set once, before serving.
    /// Sessions copy what they send in threads from the start: followers may be on any
    /// node.
    pub fn set_store(&self, store: Arc<dyn SessionStore>) {
        self.threads.in_use().store(true, Ordering::Release);
        let _ = self.store.set(store);
    }

    pub fn store(&self) -> Option<&Arc<dyn SessionStore>> {
        self.store.get()
    }

    /// Attaches `queue` to a kept session of `subject`, replaying after `last_rx_seq`.
    pub fn resume(
        &self,
        subject: &str,
        session_id: &str,
        last_rx_seq: u64,
        queue: Arc<ConnQueue>,
        binary_frames: bool,
    ) -> Result<Arc<Session>, ResumeError> {
        let session = self
            .get(session_id)
            .ok_or_else(|| StoreError::Unknown(session_id.to_string()))?;
        if session.subject != subject {
            return Err(StoreError::NotYours(session_id.to_string()).into());
        }
        let mut core = session.lock();
        if core.is_ended() {
            return Err(StoreError::Ended(session_id.to_string()).into());
        }
        if core.is_driven_elsewhere() {
            // Claimed first (Engine::claim_for_resume); it moved on again since.
            return Err(StoreError::Unavailable(
                "the session moved to another node meanwhile: try again".into(),
            )
            .into());
        }
        core.attach(queue, Some(last_rx_seq), binary_frames, now_ms())?;
        drop(core);
        Ok(session)
    }

    /// A client HAI named another session of the same subject (contract section 3): the
    /// connection attached to `from` moves onto that session, which replays after
    /// `last_rx_seq`. The session left behind is dropped if the client never used it. On
    /// failure the client gets RESUME_FAILED on `from`.
    pub fn move_connection(
        self: &Arc<Self>,
        from: &Arc<Session>,
        target: &str,
        last_rx_seq: u64,
        hai_id: String,
    ) -> Move {
        if self.store().is_some() && !self.drives_here(target) {
            // Cluster mode: the session is claimed first. The connection then gets an
            // OutItem::Switch: to the resumed session, or back to `from` after
            // RESUME_FAILED; it holds what the client sends until then.
            let engine = self.clone();
            let from = from.clone();
            let target = target.to_string();
            tokio::spawn(async move {
                let claimed = engine.claim_for_resume(&from.subject, &target).await;
                let failed = match claimed {
                    Ok(()) => engine
                        .move_now(&from, &target, last_rx_seq, hai_id.clone())
                        .err(),
                    Err(e) => Some(e),
                };
                if let Some(e) = failed {
                    engine.resume_failed(&from, &target, last_rx_seq, hai_id, &e);
                    if let Some(queue) = from.lock().attached_queue() {
                        queue.push(outbound::OutItem::Switch(from.clone()));
                    }
                }
            });
            return Move::Claiming;
        }
        match self.move_now(from, target, last_rx_seq, hai_id.clone()) {
            Ok(resumed) => Move::Done(resumed),
            Err(e) => {
                self.resume_failed(from, target, last_rx_seq, hai_id, &e);
                Move::Failed
            }
        }
    }

    /// [`Engine::move_connection`] for a session this node has.
    fn move_now(
        &self,
        from: &Arc<Session>,
        target: &str,
        last_rx_seq: u64,
        _hai_id: String,
    ) -> Result<Arc<Session>, ResumeError> {
        let (queue, binary) = {
            let core = from.lock();
            let queue = core.attached_queue().ok_or_else(|| {
                StoreError::Unavailable("the connection closed before the resume".into())
            })?;
            (queue, core.binary_frames())
        };
        let resumed = self.resume(&from.subject, target, last_rx_seq, queue.clone(), binary)?;
        let mut old = from.lock();
        old.detach(&queue, now_ms());
        let unused = old.last_client_seq().is_none();
        drop(old);
        if unused {
            self.remove(&from.id);
        }
        queue.push(outbound::OutItem::Switch(resumed.clone()));
        Ok(resumed)
    }

    /// Tells the client of `from` that its resume of `target` failed.
    fn resume_failed(
        &self,
        from: &Arc<Session>,
        target: &str,
        last_rx_seq: u64,
        hai_id: String,
        e: &ResumeError,
    ) {
        let detail = serde_json::json!({"session": target, "last_rx_seq": last_rx_seq.to_string()});
        from.lock().emit_error(
            haip_protocol::ErrorCode::ResumeFailed,
            e.to_string(),
            Some(hai_id),
            Some(detail),
            now_ms(),
        );
    }

    /// Whether this node drives session `id` (always, for a session it has, in memory
    /// mode).
    pub fn drives_here(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|s| !s.lock().is_driven_elsewhere())
    }

    /// Drops a session (a fresh one replaced by a resume, or one past its TTL).
    pub fn remove(&self, id: &str) {
        let removed = self.registry().remove(id);
        if let Some(s) = removed {
            s.lock().cancel_all();
            self.threads.forget(&s);
            let mut subjects = self.subjects();
            if let Some(mine) = subjects.get_mut(&s.subject) {
                mine.count = mine.count.saturating_sub(1);
                if mine.count == 0 {
                    subjects.remove(&s.subject);
                }
            }
        }
    }

    /// The session a `POST /haip/messages` targets (contract section 4.3).
    pub fn session_for_post(
        &self,
        subject: &str,
        header: Option<&str>,
        envelope_session: Option<&str>,
    ) -> Option<Arc<Session>> {
        let reg = self.registry();
        let mine = |id: &str| reg.get(id).filter(|s| s.subject == subject).cloned();
        if let Some(id) = header {
            return mine(id);
        }
        if let Some(s) = envelope_session
            .and_then(mine)
            .filter(|s| s.lock().is_attached())
        {
            return Some(s);
        }
        let mut live = reg
            .values()
            .filter(|s| s.subject == subject && s.lock().is_attached());
        match (live.next(), live.next()) {
            (Some(s), None) => Some(s.clone()),
            _ => None,
        }
    }

    /// Drops sessions that have been without a connection for longer than the TTL.
    /// Keeps a user's kept sessions bounded: at [`MAX_SESSIONS_PER_SUBJECT`], the one
    /// detached the longest is dropped for the new one (a client that reconnects without
    /// resuming would otherwise pile up sessions for `session_ttl`). Sessions with a
    /// connection are bounded by the connection limit.
    fn make_room_for(&self, subject: &str) {
        let evict = {
            let mut subjects = self.subjects();
            let mine = subjects.entry(subject.to_string()).or_default();
            mine.count += 1;
            if mine.count <= MAX_SESSIONS_PER_SUBJECT {
                None
            } else {
                // The oldest detachment still true (a session may have been resumed, or
                // dropped, since it was noted).
                let registry = self.registry();
                let mut found = None;
                while let Some(id) = mine.detached.pop_front() {
                    let detached = registry
                        .get(&id)
                        .is_some_and(|s| s.lock().detached_since_ms().is_some());
                    if detached {
                        found = Some(id);
                        break;
                    }
                }
                found
            }
        };
        if let Some(id) = evict {
            tracing::info!(session = %id, subject, "dropping the user's oldest detached session: {MAX_SESSIONS_PER_SUBJECT} sessions kept");
            self.remove(&id);
        }
    }

    /// A session lost its connection: the first to go when its user has too many.
    pub fn note_detached(&self, session: &Session) {
        let mut subjects = self.subjects();
        let mine = subjects.entry(session.subject.clone()).or_default();
        mine.detached.push_back(session.id.clone());
        // Notes of sessions resumed since are dropped as they come up; the queue stays
        // within a few times the cap.
        while mine.detached.len() > 4 * MAX_SESSIONS_PER_SUBJECT {
            mine.detached.pop_front();
        }
    }

    fn subjects(&self) -> MutexGuard<'_, HashMap<String, SubjectSessions>> {
        self.subjects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds up what every session holds and enforces the memory budget (see [`budget`]):
    /// trims the largest replay windows past the soft mark, ends the largest sessions past
    /// the limit. `connections` is the number of open connections.
    pub fn enforce_budget(&self, connections: usize) -> Enforcement {
        let now = now_ms();
        let sessions: Vec<Arc<Session>> = self.registry().values().cloned().collect();
        let measure = |sessions: &[Arc<Session>]| -> Vec<SessionUsage> {
            sessions.iter().map(|s| s.lock().memory_usage()).collect()
        };
        let fixed = self.budget.request_bodies()
            + self.budget.answers()
            + connections as u64 * CONNECTION_BYTES;
        let total =
            |usages: &[SessionUsage]| fixed + usages.iter().map(SessionUsage::total).sum::<u64>();
        let mut usages = measure(&sessions);
        let mut done = Enforcement::default();
        let soft = self.budget.soft_mark();
        if total(&usages) > soft {
            let excess = total(&usages) - soft;
            let by_replay = usages
                .iter()
                .enumerate()
                .map(|(i, u)| (i, u.replay))
                .collect();
            for i in plan(by_replay, excess, |replay| replay - replay / 2) {
                let mut core = sessions[i].lock();
                let keep = usages[i].replay / 2;
                done.trimmed_bytes += core.shrink_replay(keep);
            }
            usages = measure(&sessions);
        }
        if total(&usages) > self.budget.limit() {
            let excess = total(&usages) - soft;
            let by_total = usages
                .iter()
                .enumerate()
                .map(|(i, u)| (i, u.total()))
                .collect();
            for i in plan(by_total, excess, |t| t) {
                sessions[i]
                    .lock()
                    .end_for_memory_budget(usages[i].total(), now);
                done.ended_sessions += 1;
            }
            usages = measure(&sessions);
        }
        let mut sum = SessionUsage::default();
        for u in &usages {
            sum.replay += u.replay;
            sum.held_output += u.held_output;
            sum.queued_replays += u.queued_replays;
            sum.inbound_held += u.inbound_held;
            sum.unfinished_messages += u.unfinished_messages;
            sum.tool_calls += u.tool_calls;
        }
        let usage = Usage {
            sessions: sum,
            request_bodies: self.budget.request_bodies(),
            answers: self.budget.answers(),
            connections: connections as u64 * CONNECTION_BYTES,
        };
        if done.trimmed_bytes > 0 || done.ended_sessions > 0 {
            tracing::warn!(
                used = usage.total(),
                limit = self.budget.limit(),
                trimmed_replay_bytes = done.trimmed_bytes,
                ended_sessions = done.ended_sessions,
                "over the memory budget's soft mark: gave up replay depth and sessions"
            );
        }
        self.budget
            .record(usage, usage.total() > self.budget.limit(), done);
        done
    }

    pub fn reap(&self) -> usize {
        let now = now_ms();
        let expired: Vec<String> = self
            .registry()
            .values()
            .filter(|s| {
                let core = s.lock();
                core.is_ended()
                    || core
                        .detached_since_ms()
                        .is_some_and(|t| now.saturating_sub(t) > self.session_ttl_ms)
            })
            .map(|s| s.id.clone())
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired.len()
    }

    /// Processes one valid client envelope and starts the work it asks for. Errors, and a
    /// close when one is due, go to the session's attached connection.
    pub fn handle(self: &Arc<Self>, session: &Arc<Session>, env: Envelope, cost: u64) {
        self.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        if self.tap.active() {
            self.tap.send(tap::Tapped {
                direction: tap::Direction::In,
                session: Arc::from(session.id.as_str()),
                subject: Arc::from(session.subject.as_str()),
                json: env.to_json(),
            });
        }
        let actions = session
            .lock()
            .receive(env, cost, self.tools.as_ref(), now_ms());
        for action in actions {
            match action {
                Action::RoundTrip(ms) => self.metrics.round_trip(ms),
                Action::CancelRunOn { node, run_id } => {
                    if let Some(store) = self.store().cloned() {
                        let id = session.id.clone();
                        tokio::spawn(async move {
                            store
                                .tell_node(&node, &id, Forwarded::CancelRun { run_id })
                                .await;
                        });
                    }
                }
                Action::Text {
                    text,
                    thread_id,
                    abandon,
                } => {
                    let history = self.take_history(&session.id);
                    if self.has_no_workers_here() {
                        self.answer_on_a_worker_node(session, text, thread_id, history, abandon);
                        continue;
                    }
                    let reply = Reply::new(self.agent_link(session, abandon), thread_id)
                        .with_history(history);
                    tokio::spawn(self.agent.on_text(reply, text));
                }
                Action::Audio { chunk, abandon } => {
                    let reply = Reply::new(self.agent_link(session, abandon), None);
                    tokio::spawn(self.agent.on_audio(reply, chunk));
                }
                Action::CallTool(call) => {
                    let in_flight = InFlight::new(session.clone());
                    let task = run_tool(self.tools.clone(), session.clone(), call);
                    tokio::spawn(async move {
                        let _in_flight = in_flight;
                        task.await
                    });
                }
            }
        }
    }

    /// Gives the agent the conversation before the session's next user message.
    pub fn set_history(&self, session_id: &str, history: Vec<Turn>) {
        self.histories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session_id.to_string(), history);
    }

    /// Takes what [`Engine::set_history`] left for the session (a giver calls it after its
    /// message, so that nothing stays behind when the message was refused).
    pub fn take_history(&self, session_id: &str) -> Option<Vec<Turn>> {
        let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
        if histories.is_empty() {
            return None;
        }
        histories.remove(session_id)
    }

    fn agent_link(&self, session: &Arc<Session>, abandon: CancellationToken) -> Arc<AgentLink> {
        Arc::new(AgentLink::new(session.clone(), self.tools.clone(), abandon))
    }
}

/// One piece of work a session's messages started (an agent answering, a tool running),
/// counted in the session while it lasts. When the last one ends the connection is woken,
/// so that a stream asked to end once everything is answered can end.
struct InFlight(Arc<Session>);

impl InFlight {
    fn new(session: Arc<Session>) -> InFlight {
        session.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(session)
    }

    fn session(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(queue) = self.0.lock().attached_queue() {
                queue.wake_timers();
            }
        }
    }
}

/// Runs one tool call, a client's or an agent's: TOOL_UPDATE RUNNING, then TOOL_DONE with
/// the result, an error, or CANCELLED when TOOL_CANCEL (or the run's cancellation) arrives
/// first. Returns how it ended.
async fn run_tool(tools: Arc<ToolRegistry>, session: Arc<Session>, call: ToolRun) -> ToolOutcome {
    let ToolRun {
        call_id,
        tool,
        params,
        run_id,
        cancel,
        abandon,
    } = call;
    let send = |payload: Payload| {
        if abandon.is_cancelled() {
            return;
        }
        let mut core = session.lock();
        let mut env = core.envelope(channel::AGENT, payload);
        env.run_id = run_id.clone();
        core.emit(env, now_ms());
    };
    send(Payload::ToolUpdate(ToolUpdate {
        call_id: call_id.clone(),
        status: ToolProgress::Running,
        progress: None,
        partial: None,
        extra: Map::new(),
    }));
    let progress = {
        let session = session.clone();
        let call_id = call_id.clone();
        let run_id = run_id.clone();
        let abandon = abandon.clone();
        move |pct: f64| {
            if abandon.is_cancelled() {
                return;
            }
            let mut core = session.lock();
            let mut env = core.envelope(
                channel::AGENT,
                Payload::ToolUpdate(ToolUpdate {
                    call_id: call_id.clone(),
                    status: ToolProgress::Running,
                    progress: Some(pct.clamp(0.0, 100.0)),
                    partial: None,
                    extra: Map::new(),
                }),
            );
            env.run_id = run_id.clone();
            core.emit(env, now_ms());
        }
    };
    let ctx = ToolContext::new(cancel.clone(), Box::new(progress));
    let outcome = tokio::select! {
        outcome = tools.call(&tool, params, ctx) => outcome,
        _ = abandon.cancelled() => Err(crate::tools::ToolError("given up".into())),
    };
    let (status, result) = match outcome {
        _ if cancel.is_cancelled() || abandon.is_cancelled() => (RunStatus::Cancelled, None),
        Ok(v) => (RunStatus::Ok, Some(v)),
        Err(e) => (
            RunStatus::Error,
            Some(serde_json::json!({"code": "TOOL_EXECUTION_ERROR", "message": e.to_string()})),
        ),
    };
    if abandon.is_cancelled() {
        return ToolOutcome { status, result };
    }
    let mut core = session.lock();
    let mut env = core.envelope(
        channel::AGENT,
        Payload::ToolDone(ToolDone {
            call_id: call_id.clone(),
            status,
            result: result.clone(),
            extra: Map::new(),
        }),
    );
    env.run_id = run_id;
    core.tool_done(env, &call_id, now_ms());
    ToolOutcome { status, result }
}
