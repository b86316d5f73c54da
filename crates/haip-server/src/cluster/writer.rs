//! The writer: pulls what sessions have to keep and writes it to Redis. All sessions
//! that asked while a round was under way go in the next round, their requests issued
//! together (the connection sends them in one write): one round trip carries many
//! messages. A session has at most one write under way, so its writes stay in order.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::replies::{array, text};
use super::scripts;
use super::store::RedisStore;
use crate::engine::now_ms;
use crate::engine::store::{Forwarded, SessionStore, SessionWrite, StoreError, WriteOutcome};
use crate::engine::store::{PendingWrite, WritingSession};

/// The most sessions written in one round.
const MAX_ROUND: usize = 1024;

pub(super) async fn run(
    store: Weak<RedisStore>,
    mut scheduled: mpsc::UnboundedReceiver<Arc<dyn WritingSession>>,
    shutdown: CancellationToken,
) {
    let mut retry_delay = Duration::from_millis(50);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = scheduled.recv() => s,
        };
        let Some(first) = first else {
            return;
        };
        let mut round = vec![first];
        while round.len() < MAX_ROUND {
            match scheduled.try_recv() {
                Ok(s) => round.push(s),
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else {
            return;
        };
        let failed = write_round(&store, round).await;
        if failed.is_empty() {
            retry_delay = Duration::from_millis(50);
            continue;
        }
        // Redis did not answer: the sessions go again after a pause, with what they
        // gathered meanwhile.
        let sender = store.sessions_to_write.clone();
        drop(store);
        tokio::spawn(async move {
            tokio::time::sleep(retry_delay).await;
            for session in failed {
                let _ = sender.send(session);
            }
        });
        retry_delay = (retry_delay * 2).min(Duration::from_secs(2));
    }
}

/// Writes one round; returns the sessions whose write failed.
async fn write_round(
    store: &RedisStore,
    round: Vec<Arc<dyn WritingSession>>,
) -> Vec<Arc<dyn WritingSession>> {
    let writes = round.into_iter().filter_map(|session| {
        let pending = session.take_write()?;
        Some(async move {
            match pending {
                PendingWrite::Keep(write) => {
                    let outcome = append(store, &write).await;
                    let failed = matches!(outcome, WriteOutcome::Failed(_));
                    for (producer, n) in session.written(outcome) {
                        let node = crate::engine::core::node_of(&producer).to_string();
                        let item = Forwarded::Applied { producer, n };
                        store.tell_node(&node, session.session_id(), item).await;
                    }
                    failed.then_some(session)
                }
                PendingWrite::Forward(items) => {
                    // Output for the node that drives the session, in order; what could
                    // not go waits for the next round.
                    let mut items = items.into_iter();
                    while let Some((producer, item)) = items.next() {
                        let sent = store
                            .forward_item(session.session_id(), None, &producer, item.clone())
                            .await;
                        match sent {
                            Ok(()) => {}
                            Err(StoreError::Unavailable(_)) => {
                                let rest = std::iter::once((producer, item)).chain(items).collect();
                                session.forward_again(rest);
                                return Some(session);
                            }
                            Err(e) => {
                                tracing::debug!(session = %session.session_id(), error = %e, "output for a session that is gone dropped");
                            }
                        }
                    }
                    None
                }
            }
        })
    });
    futures_util::future::join_all(writes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Runs the append script for one session's write.
async fn append(store: &RedisStore, write: &SessionWrite) -> WriteOutcome {
    let mut conn = match store.connection() {
        Ok(conn) => conn,
        Err(e) => return WriteOutcome::Failed(e.to_string()),
    };
    let replay = &store.settings.replay;
    let runs = write
        .runs
        .as_ref()
        .map(|runs| serde_json::to_string(runs).unwrap_or_default())
        .unwrap_or_default();
    let mut invocation = store.scripts.append.prepare_invoke();
    invocation
        .key(scripts::meta_key(&write.session))
        .key(scripts::out_key(&write.session))
        .arg(write.epoch)
        .arg(&write.subject)
        .arg(&store.owner)
        .arg(store.settings.session_ttl_ms)
        .arg(replay.keep_newest)
        .arg(replay.keep_for_ms)
        .arg(replay.max_messages)
        .arg(now_ms())
        .arg(
            write
                .last_client_seq
                .map(|s| s.to_string())
                .unwrap_or_default(),
        )
        .arg(runs)
        .arg(write.client_hai.as_deref().unwrap_or(""))
        .arg(if write.ended { "1" } else { "" })
        .arg(
            write
                .applied
                .as_ref()
                .map(|a| serde_json::to_string(a).unwrap_or_default())
                .unwrap_or_default(),
        )
        .arg(write.texts.as_deref().unwrap_or(""))
        .arg(write.messages.first().map_or(0, |m| m.seq));
    for m in &write.messages {
        invocation.arg(m.ts).arg(m.json.as_ref());
    }
    match invocation.invoke_async::<Value>(&mut conn).await {
        Ok(value) => {
            let parts = array(value);
            match text(parts.first()).as_str() {
                "ok" => WriteOutcome::Stored {
                    upto: text(parts.get(1)).parse().unwrap_or(0),
                },
                _ => WriteOutcome::Moved,
            }
        }
        Err(e) => WriteOutcome::Failed(e.to_string()),
    }
}
