//! One session: its protocol state ([`SessionCore`]) behind a lock that is never held
//! across an await, and what happens when that lock is released (the store pulls what
//! changed; copies of thread messages go to the followers).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::clock::now_ms;
use super::core::{SessionCore, SharedMessage};
use super::store::{Forwarded, PendingWrite, WriteOutcome, WritingSession};
use super::threads::{Follower, Threads};

/// One session: its state behind a lock that is never held across an await.
pub struct Session {
    pub id: String,
    pub subject: String,
    pub(super) core: Mutex<SessionCore>,
    /// Where copies of what it sends in followed threads go.
    pub(super) threads: Arc<Threads>,
    /// Work its messages started that has not ended yet: agents answering, tools running
    /// (see `work::InFlight`).
    pub(super) in_flight: AtomicU32,
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

impl WritingSession for Session {
    fn session_id(&self) -> &str {
        &self.id
    }

    fn take_write(&self) -> Option<PendingWrite> {
        self.lock().take_write()
    }

    fn written(&self, outcome: WriteOutcome) -> Vec<(String, u64)> {
        self.lock().written(outcome, now_ms())
    }

    fn forward_again(&self, items: Vec<(String, Forwarded)>) {
        self.lock().forward_again(items);
    }
}

impl Follower for Session {
    fn id(&self) -> &str {
        &self.id
    }

    fn subject(&self) -> &str {
        &self.subject
    }

    fn take_copies(&self, batch: &[(Arc<str>, Arc<SharedMessage>)], now_ms: u64) {
        let mut core = self.lock();
        for (origin, copy) in batch {
            if **origin != *self.id {
                core.emit_shared(copy, now_ms);
            }
        }
    }
}

/// The locked state of a session. When it is released, what the session sent in threads
/// goes on to the threads' followers: queued under the lock (in seq order), delivered
/// outside it (see [`threads`](super::threads)).
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

/// How long [`Session::durable_ack`] waits for the store (cluster mode).
pub const ACK_STORED_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
