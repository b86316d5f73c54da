//! The engine: every session of this node, by id and by user; opening, resuming and
//! moving them between connections, the bound on sessions per user, the memory budget's
//! enforcement and the reaping of expired sessions. Starting the work a message asks for is
//! in `dispatch.rs`; what only cluster mode does, in `nodes.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use haip_protocol::replay::ReplayError;
use haip_protocol::{channel, Payload};

use super::budget::{plan, Enforcement, MemoryBudget, Usage, CONNECTION_BYTES};
use super::clock::now_ms;
use super::core::{SessionCore, SessionLimits, SessionUsage, SharedMessage};
use super::metrics::Metrics;
use super::outbound::{ConnQueue, OutItem, SwitchTo};
use super::session::Session;
use super::store::{SessionStore, StoreError, WritingSession};
use super::tap;
use super::threads::Threads;
use crate::agent::{Agent, Turn};
use crate::tools::{ToolCatalog, ToolRegistry};

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

/// The most sessions one user (token subject) keeps; see `Engine::make_room_for`.
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
    pub(super) limits: Arc<SessionLimits>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Per user: how many sessions, and which lost their connection first.
    subjects: Mutex<HashMap<String, SubjectSessions>>,
    pub threads: Arc<Threads>,
    pub(super) agent: Arc<dyn Agent>,
    pub(super) tools: Arc<ToolRegistry>,
    pub metrics: Metrics,
    /// The server-wide memory budget (see [`budget`](super::budget)).
    pub budget: MemoryBudget,
    /// A copy of every message, for admins watching (see [`tap`]).
    pub tap: Arc<tap::Tap>,
    pub(super) session_ttl_ms: u64,
    /// The HAI and TOOL_LIST that open every session, the same for all but their heads
    /// (the HAI depends only on the configuration and whether the transport takes binary
    /// frames, the index here). Shared so that each session keeps only its heads for replay.
    greetings: [OnceLock<[Arc<SharedMessage>; 2]>; 2],
    /// The conversation before a session's next user message, given by a client that
    /// keeps it itself (the AI SDK endpoints), by session id; taken by that message.
    pub(super) histories: Mutex<HashMap<String, Vec<Turn>>>,
    /// Where sessions are kept beyond this process: set in cluster mode (see [`store`](super::store)).
    store: OnceLock<Arc<dyn SessionStore>>,
    /// When the sessions with a connection were last kept from expiring in the store.
    pub(super) last_refresh_ms: std::sync::atomic::AtomicU64,
    /// Sessions this node is claiming from the store right now.
    pub(super) claiming: Mutex<std::collections::HashSet<String>>,
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

    pub(super) fn registry(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
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
    pub(super) fn new_session(
        &self,
        id: String,
        subject: &str,
        mut core: SessionCore,
    ) -> Arc<Session> {
        Arc::new_cyclic(|this: &std::sync::Weak<Session>| {
            let back: std::sync::Weak<dyn WritingSession> = this.clone();
            core.point_back(back);
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
                        queue.push(OutItem::Switch(SwitchTo::new(from.clone())));
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
        queue.push(OutItem::Switch(SwitchTo::new(resumed.clone())));
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
            self.threads.forget(s.as_ref());
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
    pub(super) fn make_room_for(&self, subject: &str) {
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

    /// Adds up what every session holds and enforces the memory budget (see [`budget`](super::budget)):
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
}
