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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use haip_protocol::Envelope;

use super::{now_ms, Session};

/// The longest thread id accepted in `?thread=`, as for `thread_id` in the envelope.
pub const MAX_THREAD_ID: usize = 128;

/// Checks a `?thread=` value: what the contract allows for `thread_id`.
pub fn valid_thread_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_THREAD_ID
}

type ThreadKey = (String, String);

/// The followers of every thread, by (subject, thread id).
#[derive(Default)]
pub struct Threads {
    followers: Mutex<HashMap<ThreadKey, Vec<Weak<Session>>>>,
    /// Set by the first follow; sessions copy what they send in threads only from then on.
    in_use: Arc<AtomicBool>,
}

impl Threads {
    /// The flag every session watches (see `SessionCore::share_threads`).
    pub fn in_use(&self) -> Arc<AtomicBool> {
        self.in_use.clone()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<ThreadKey, Vec<Weak<Session>>>> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `session` a follower of `thread` (once, however often it is asked).
    pub fn follow(&self, thread: &str, session: &Arc<Session>) {
        self.in_use.store(true, Ordering::Release);
        let mut map = self.map();
        let list = map
            .entry((session.subject.clone(), thread.to_string()))
            .or_default();
        list.retain(|w| w.strong_count() > 0);
        if !list.iter().any(|w| w.as_ptr() == Arc::as_ptr(session)) {
            list.push(Arc::downgrade(session));
        }
    }

    /// How many live sessions follow `thread` of `subject`.
    pub fn follower_count(&self, subject: &str, thread: &str) -> usize {
        self.map()
            .get(&(subject.to_string(), thread.to_string()))
            .map_or(0, |l| l.iter().filter(|w| w.strong_count() > 0).count())
    }

    /// Stops `session` following anything (it was removed from the engine).
    pub fn forget(&self, session: &Session) {
        let mut map = self.map();
        map.retain(|_, list| {
            list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), session));
            !list.is_empty()
        });
    }

    /// The live followers of `thread` of `subject`, other than `origin`. Dead entries are
    /// pruned on the way.
    fn followers_of(&self, subject: &str, thread: &str, origin: &Session) -> Vec<Arc<Session>> {
        let mut map = self.map();
        let key = (subject.to_string(), thread.to_string());
        let Some(list) = map.get_mut(&key) else {
            return Vec::new();
        };
        list.retain(|w| w.strong_count() > 0);
        let out = list
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| !std::ptr::eq(Arc::as_ptr(s), origin))
            .collect();
        if list.is_empty() {
            map.remove(&key);
        }
        out
    }

    /// Delivers what `origin` sent in threads to their followers. Called with no session
    /// lock held; each follower is locked in turn, so two sessions publishing into each
    /// other's threads cannot deadlock.
    pub fn forward(&self, origin: &Session, sent: Vec<(String, Envelope)>) {
        let mut current: Option<(String, Vec<Arc<Session>>)> = None;
        for (thread, env) in sent {
            let followers = match &current {
                Some((t, f)) if *t == thread => f,
                _ => {
                    let f = self.followers_of(&origin.subject, &thread, origin);
                    &current.insert((thread, f)).1
                }
            };
            let now = now_ms();
            for follower in followers {
                follower.lock().emit_followed(env.clone(), now);
            }
        }
    }
}
