//! Shared threads: one stream of agent output delivered to many sessions.
//!
//! A session follows a thread when its connection URL names it (`?thread=ID`). Every
//! message the server sends in that thread (an envelope with that `thread_id`, or any
//! message of a run opened in it) then also goes to each session of the same subject that
//! follows it: a second device or browser tab watching a conversation, a dashboard
//! mirroring an agent, many viewers of one stream.
//!
//! Each follower gets the message as its own: its own seq, ack and credit, kept in its own
//! replay window, so followers resume, replay and apply flow control exactly like the
//! session that started the run. Threads are scoped to the token's subject, so nobody
//! follows someone else's conversation by guessing an id.
//!
//! Copies go out through a relay task per thread rather than from the sending session's
//! own task. The sender only queues them; the relay takes everything queued at once and
//! hands each follower the whole batch under one lock, so a follower's connection writes
//! many messages with one syscall instead of one each. With a thousand followers, copying a
//! message takes milliseconds, and the agent goes on producing meanwhile: batches form by
//! themselves. When the relay falls too far behind, the sender delivers the queue itself
//! (in order, after the batch in progress), which bounds what waits.
//!
//! Order: a follower gets each thread's messages in the order they were sent. Messages of
//! two different threads it follows each have their own relay, so they may interleave
//! differently than they were sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use haip_protocol::Envelope;

use super::clock::now_ms;
use super::core::SharedMessage;

/// The longest thread id accepted in `?thread=`, as for `thread_id` in the envelope.
pub const MAX_THREAD_ID: usize = 128;

/// Messages a thread may have waiting for its relay before the sender delivers them itself.
const MAX_WAITING_MESSAGES: usize = 4096;

/// Checks a `?thread=` value: what the contract allows for `thread_id`.
pub fn valid_thread_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_THREAD_ID
}

/// A session as threads see it. Implemented by `engine::Session`; a trait so that the
/// session, which holds the threads, and the threads, which hold their followers, do not
/// depend on each other.
pub trait Follower: Send + Sync {
    fn id(&self) -> &str;
    fn subject(&self) -> &str;
    /// Sends `batch` as this session's own messages, under one lock, except what it sent
    /// itself (`origin` is the id of the session that sent each message).
    fn take_copies(&self, batch: &[(Arc<str>, Arc<SharedMessage>)], now_ms: u64);
}

type ThreadKey = (String, String);

/// Every followed thread, by (subject, thread id).
#[derive(Default)]
pub struct Threads {
    threads: Mutex<HashMap<ThreadKey, Arc<Thread>>>,
    /// Set by the first follow; sessions copy what they send in threads only from then on.
    in_use: Arc<AtomicBool>,
}

/// One followed thread: its followers and the copies waiting for them.
#[derive(Default)]
struct Thread {
    state: Mutex<ThreadState>,
    /// Held while a batch is handed to the followers, so that batches arrive in the order
    /// they were sent whoever delivers them (the relay, or a sender that found it behind).
    delivery: Mutex<()>,
}

#[derive(Default)]
struct ThreadState {
    followers: Vec<Weak<dyn Follower>>,
    /// Messages sent in the thread, with the id of the session that sent each (it has its
    /// own copy already), in the order they were sent.
    waiting: Vec<(Arc<str>, Envelope)>,
    /// True while a relay task is delivering `waiting`.
    relaying: bool,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Threads {
    /// The flag every session watches (see `SessionCore::share_threads`).
    pub fn in_use(&self) -> Arc<AtomicBool> {
        self.in_use.clone()
    }

    fn get(&self, subject: &str, thread: &str) -> Option<Arc<Thread>> {
        locked(&self.threads)
            .get(&(subject.to_string(), thread.to_string()))
            .cloned()
    }

    /// Makes `session` a follower of `thread` (once, however often it is asked).
    pub fn follow<S: Follower + 'static>(&self, thread: &str, session: &Arc<S>) {
        self.in_use.store(true, Ordering::Release);
        let entry = locked(&self.threads)
            .entry((session.subject().to_string(), thread.to_string()))
            .or_default()
            .clone();
        let mut state = locked(&entry.state);
        state.followers.retain(|w| w.strong_count() > 0);
        if !state
            .followers
            .iter()
            .any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(session)))
        {
            state
                .followers
                .push(Arc::downgrade(session) as Weak<dyn Follower>);
        }
    }

    /// Whether session `id` follows `thread` of `subject` here.
    pub fn is_follower(&self, subject: &str, thread: &str, id: &str) -> bool {
        self.get(subject, thread).is_some_and(|t| {
            locked(&t.state)
                .followers
                .iter()
                .filter_map(Weak::upgrade)
                .any(|s| s.id() == id)
        })
    }

    /// How many live sessions follow `thread` of `subject`.
    pub fn follower_count(&self, subject: &str, thread: &str) -> usize {
        self.get(subject, thread).map_or(0, |t| {
            locked(&t.state)
                .followers
                .iter()
                .filter(|w| w.strong_count() > 0)
                .count()
        })
    }

    /// Stops `session` following anything (it was removed from the engine).
    pub fn forget<S: Follower>(&self, session: &S) {
        locked(&self.threads).retain(|_, thread| {
            let mut state = locked(&thread.state);
            state
                .followers
                .retain(|w| w.strong_count() > 0 && !std::ptr::addr_eq(w.as_ptr(), session));
            !state.followers.is_empty() || state.relaying
        });
    }

    /// Queues what `origin` sent in threads for their followers. Called while the
    /// session's lock is still held, so that copies queue in the order of the session's
    /// seqs even when two of its tasks send at once; what [`Dispatch::run`] then does
    /// (start a relay, or deliver) waits until the lock is released.
    pub fn queue_copies<S: Follower>(&self, origin: &S, sent: Vec<(String, Envelope)>) -> Dispatch {
        let origin_id: Arc<str> = Arc::from(origin.id());
        let mut dispatch = Dispatch(Vec::new());
        let mut sent = sent.into_iter().peekable();
        while let Some((thread_id, env)) = sent.next() {
            let mut envs = vec![env];
            while let Some((_, env)) = sent.next_if(|(t, _)| *t == thread_id) {
                envs.push(env);
            }
            let Some(thread) = self.get(origin.subject(), &thread_id) else {
                continue; // nobody follows it
            };
            let mut state = locked(&thread.state);
            // A session following its own thread (a second tab of the same session) is
            // not a reason to copy anything.
            let others = state
                .followers
                .iter()
                .any(|w| w.strong_count() > 0 && !std::ptr::addr_eq(w.as_ptr(), origin));
            if !others {
                continue;
            }
            state
                .waiting
                .extend(envs.into_iter().map(|env| (origin_id.clone(), env)));
            let start_relay = !state.relaying;
            state.relaying = true;
            let behind = state.waiting.len() > MAX_WAITING_MESSAGES;
            drop(state);
            dispatch.0.push(QueuedIn {
                thread,
                start_relay,
                behind,
            });
        }
        dispatch
    }
}

/// What is left to do for copies just queued, once the sender's lock is released.
#[must_use = "queued copies only go out when the dispatch runs"]
pub struct Dispatch(Vec<QueuedIn>);

/// A thread that copies were just queued in.
struct QueuedIn {
    thread: Arc<Thread>,
    start_relay: bool,
    behind: bool,
}

impl Dispatch {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Starts the relays that are not running, and delivers the copies of a thread whose
    /// relay is too far behind. Called with no session lock held: delivering locks the
    /// followers.
    pub fn run(self) {
        for QueuedIn {
            thread,
            start_relay,
            behind,
        } in self.0
        {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) if start_relay => {
                    runtime.spawn(relay(thread));
                }
                Ok(_) if behind => thread.deliver_waiting(),
                Ok(_) => {}
                Err(_) => {
                    // No runtime to run a relay on (the engine driven directly, as in
                    // unit tests): deliver now.
                    thread.deliver_waiting();
                    if start_relay {
                        locked(&thread.state).relaying = false;
                    }
                }
            }
        }
    }
}

/// Delivers a thread's copies until none are waiting.
async fn relay(thread: Arc<Thread>) {
    // Should the relay end early (a panic, or the runtime shutting down), the next copies
    // start a new one instead of waiting for the sender to find the queue too long.
    struct Running(Option<Arc<Thread>>);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(thread) = self.0.take() {
                locked(&thread.state).relaying = false;
            }
        }
    }
    let mut running = Running(Some(thread.clone()));
    loop {
        {
            let mut state = locked(&thread.state);
            if state.waiting.is_empty() {
                state.relaying = false;
                running.0 = None; // done, under the lock that checked
                return;
            }
        }
        thread.deliver_waiting();
        // Let the sender and the followers' writers run: the next batch forms meanwhile.
        tokio::task::yield_now().await;
    }
}

impl Thread {
    /// Hands everything waiting to every follower, one lock per follower for the whole
    /// batch. Each follower skips what it sent itself.
    fn deliver_waiting(&self) {
        let _in_order = locked(&self.delivery);
        let (batch, followers) = {
            let mut state = locked(&self.state);
            state.followers.retain(|w| w.strong_count() > 0);
            let followers: Vec<Arc<dyn Follower>> =
                state.followers.iter().filter_map(Weak::upgrade).collect();
            (std::mem::take(&mut state.waiting), followers)
        };
        if batch.is_empty() {
            return;
        }
        // Each message is serialized once for all followers.
        let batch: Vec<(Arc<str>, Arc<SharedMessage>)> = batch
            .into_iter()
            .map(|(origin, env)| (origin, Arc::new(SharedMessage::copies_of(env))))
            .collect();
        let now = now_ms();
        for follower in followers {
            // Its guard is dropped here with `delivery` held: that is only safe because a
            // shared message is never itself queued for a thread (`emit_shared` records no
            // thread output), so no delivery starts from inside this one.
            follower.take_copies(&batch, now);
        }
    }
}
