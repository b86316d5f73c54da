//! Shared threads across nodes: who follows a thread is kept in Redis (a set of session ids
//! per subject and thread), and what a session sends in a thread is queued, in order, for
//! each follower that this node does not serve itself (followers here get it from the
//! engine's own relay, `engine::threads`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::RedisResult;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::store::{RedisStore, ThreadOutput};
use crate::engine::store::{Forwarded, StoreError};
use crate::engine::Engine;

/// How long a thread's followers read from Redis are used before being read again.
const MEMBERS_FRESH: Duration = Duration::from_secs(1);

/// The set of sessions following `thread` of `subject`.
pub fn followers_key(subject: &str, thread: &str) -> String {
    // The subject and thread may hold anything: hex keeps the key unambiguous.
    format!("haip:thread:{}:{}", hex(subject), hex(thread))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

impl RedisStore {
    /// FOLLOW: records that `session` follows `thread` of `subject`.
    pub(super) async fn follow_thread(&self, subject: &str, thread: &str, session: &str) {
        let Ok(mut conn) = self.connection() else {
            return;
        };
        let key = followers_key(subject, thread);
        let added: RedisResult<()> = redis::pipe()
            .cmd("SADD")
            .arg(&key)
            .arg(session)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(self.settings.session_ttl_ms)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(e) = added {
            tracing::warn!(thread, error = %e, "could not record a thread follower in Redis");
        }
    }
}

/// Sends what sessions send in threads to the followers other nodes serve, in order.
pub(super) async fn run(
    store: Weak<RedisStore>,
    engine: Weak<Engine>,
    mut sent: mpsc::UnboundedReceiver<ThreadOutput>,
    shutdown: CancellationToken,
) {
    let mut members: HashMap<String, (Instant, Vec<String>)> = HashMap::new();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = sent.recv() => m,
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while let Ok(more) = sent.try_recv() {
            batch.push(more);
            if batch.len() >= 4096 {
                break;
            }
        }
        let (Some(store), Some(engine)) = (store.upgrade(), engine.upgrade()) else {
            return;
        };
        // Per follower, everything for it in this batch, in the order it was sent.
        let mut per_follower: Vec<(String, Vec<String>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for out in batch {
            let key = followers_key(&out.subject, &out.thread);
            let fresh = members
                .get(&key)
                .is_some_and(|(at, _)| at.elapsed() < MEMBERS_FRESH);
            if !fresh {
                let read = read_members(&store, &key).await;
                members.insert(key.clone(), (Instant::now(), read));
            }
            let Some((_, followers)) = members.get(&key) else {
                continue;
            };
            for follower in followers {
                if *follower == out.origin
                    || engine.follows_here(&out.subject, &out.thread, follower)
                {
                    continue;
                }
                let i = *index.entry(follower.clone()).or_insert_with(|| {
                    per_follower.push((follower.clone(), Vec::new()));
                    per_follower.len() - 1
                });
                per_follower[i].1.push(out.json.clone());
            }
        }
        let sends = per_follower.into_iter().map(|(follower, jsons)| {
            let store = store.clone();
            async move {
                let item = Forwarded::ThreadCopies { jsons };
                match store.forward_item(&follower, None, &store.owner, item).await {
                    Ok(()) => None,
                    Err(StoreError::Unknown(_)) => Some(follower), // gone: forget it
                    Err(e) => {
                        tracing::warn!(session = %follower, error = %e, "thread copies for a follower lost");
                        None
                    }
                }
            }
        });
        let gone: Vec<String> = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !gone.is_empty() {
            forget(&store, &mut members, &gone).await;
        }
    }
}

async fn read_members(store: &Arc<RedisStore>, key: &str) -> Vec<String> {
    let Ok(mut conn) = store.connection() else {
        return Vec::new();
    };
    redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap_or_default()
}

/// Takes sessions that no longer exist out of every thread they followed.
async fn forget(
    store: &Arc<RedisStore>,
    members: &mut HashMap<String, (Instant, Vec<String>)>,
    gone: &[String],
) {
    let Ok(mut conn) = store.connection() else {
        return;
    };
    for (key, (_, followers)) in members.iter_mut() {
        if followers.iter().any(|f| gone.contains(f)) {
            followers.retain(|f| !gone.contains(f));
            let _: RedisResult<i64> = redis::cmd("SREM")
                .arg(key)
                .arg(gone)
                .query_async(&mut conn)
                .await;
        }
    }
}
