//! The Redis store: a node's handle on Redis, and the engine's storage seam
//! (`SessionStore`) implemented over it. Its tasks are in `background.rs`, its writer in
//! `writer.rs`, thread followers in `threads.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haip_protocol::replay::ReplayConfig;
use redis::{RedisResult, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::engine::store::{
    BoxFuture, ClaimedSession, Forwarded, SessionStore, StoreError, StoredRun, WritingSession,
};

use super::conn::{Connection, Target};
use super::replies::{array, stream_entry, text, unavailable};
use super::scripts::{self, Scripts};

/// How long a node run counts as alive after its last heartbeat.
pub const NODE_LEASE: Duration = Duration::from_secs(5);
/// How often a node renews its lease (and checks that Redis answers).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// The most items kept for a session no live node drives.
pub const MAX_KEPT_FORWARDS: usize = 10_000;
/// The node runs that have agent workers attached, each with the time (ms) until which
/// that holds unless renewed by its heartbeat.
pub const WORKER_NODES: &str = "haip:worker-nodes";

/// What the cluster needs from the configuration.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: String,
    pub session_ttl_ms: u64,
    pub replay: ReplayConfig,
}

/// A message on a node's channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case")]
pub(super) enum NodeMessage {
    /// Something was queued for session `s`, which the node drives: take it.
    Wake { s: String },
    /// For session `s`, from node run `from`, to this node run itself.
    Direct {
        s: String,
        from: String,
        item: Forwarded,
    },
}

/// An item in a session's queue: who produced it, and what.
#[derive(Debug, Serialize, Deserialize)]
struct Queued {
    from: String,
    item: Forwarded,
}

pub struct RedisStore {
    /// This node run: NODE_ID and a random suffix, so that a restarted node with the same
    /// NODE_ID is a different owner (its predecessor's runs are lost with it).
    pub(super) owner: String,
    pub(super) settings: ClusterSettings,
    pub(super) target: Target,
    pub(super) connection: Mutex<Option<Connection>>,
    pub(super) available: AtomicBool,
    pub(super) scripts: Scripts,
    pub(super) sessions_to_write: mpsc::UnboundedSender<Arc<dyn WritingSession>>,
    pub(super) thread_output: mpsc::UnboundedSender<ThreadOutput>,
}

/// What a session sent in threads, for the followers on other nodes (see `threads.rs`).
pub(super) struct ThreadOutput {
    pub subject: String,
    pub origin: String,
    pub thread: String,
    pub json: String,
}

impl RedisStore {
    pub(super) fn connection(&self) -> Result<Connection, StoreError> {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable("not connected to Redis yet".into()))
    }

    pub(super) fn set_available(&self, available: bool, why: &str) {
        let was = self.available.swap(available, Ordering::AcqRel);
        if was != available {
            if available {
                tracing::info!("Redis answers: serving new connections");
            } else {
                tracing::warn!(error = %why, "Redis is out of reach: new connections get 503 until it is back");
            }
        }
    }

    async fn claim_session(
        &self,
        session: &str,
        subject: &str,
    ) -> Result<ClaimedSession, StoreError> {
        let mut conn = self.connection()?;
        let value: Value = self
            .scripts
            .claim
            .key(scripts::meta_key(session))
            .key(scripts::out_key(session))
            .key(scripts::forwarded_key(session))
            .arg(subject)
            .arg(&self.owner)
            .arg(self.settings.session_ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let parts = array(value);
        match text(parts.first()).as_str() {
            "ok" => {}
            "not_yours" => return Err(StoreError::NotYours(session.to_string())),
            "ended" => return Err(StoreError::Ended(session.to_string())),
            _ => return Err(StoreError::Unknown(session.to_string())),
        }
        let previous = text(parts.get(1));
        let runs: Vec<StoredRun> = serde_json::from_str(&text(parts.get(5))).unwrap_or_default();
        let hai = text(parts.get(6));
        let messages = parts
            .get(8)
            .cloned()
            .map(array)
            .unwrap_or_default()
            .into_iter()
            .filter_map(stream_entry)
            .collect();
        let forwarded = parts
            .get(9)
            .cloned()
            .map(array)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| serde_json::from_str::<Queued>(&text(Some(&v))).ok())
            .map(|q| (q.from, q.item))
            .collect();
        let applied = serde_json::from_str(&text(parts.get(10))).unwrap_or_default();
        let texts = text(parts.get(11));
        Ok(ClaimedSession {
            subject: text(parts.get(7)),
            epoch: text(parts.get(2)).parse().unwrap_or(1),
            previous_owner: (!previous.is_empty()).then_some(previous),
            last_seq: text(parts.get(3)).parse().unwrap_or(0),
            last_client_seq: text(parts.get(4)).parse().ok(),
            runs,
            client_hai: (!hai.is_empty()).then_some(hai),
            messages,
            applied,
            texts: (!texts.is_empty()).then_some(texts),
            forwarded,
        })
    }

    pub(crate) async fn forward_item(
        &self,
        session: &str,
        subject: Option<&str>,
        producer: &str,
        item: Forwarded,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection()?;
        let queued = serde_json::to_string(&Queued {
            from: producer.to_string(),
            item,
        })
        .unwrap_or_default();
        let wake = serde_json::to_string(&NodeMessage::Wake {
            s: session.to_string(),
        })
        .unwrap_or_default();
        let answer: String = self
            .scripts
            .forward
            .key(scripts::meta_key(session))
            .key(scripts::forwarded_key(session))
            .arg(subject.unwrap_or(""))
            .arg(queued)
            .arg(self.settings.session_ttl_ms)
            .arg(MAX_KEPT_FORWARDS)
            .arg(wake)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match answer.as_str() {
            "ok" => Ok(()),
            "not_yours" => Err(StoreError::NotYours(session.to_string())),
            _ => Err(StoreError::Unknown(session.to_string())),
        }
    }

    async fn drain_queue(&self, session: &str) -> Result<Vec<(String, Forwarded)>, StoreError> {
        let mut conn = self.connection()?;
        let items: Vec<Value> = self
            .scripts
            .drain
            .key(scripts::meta_key(session))
            .key(scripts::forwarded_key(session))
            .arg(&self.owner)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(items
            .into_iter()
            .filter_map(|v| serde_json::from_str::<Queued>(&text(Some(&v))).ok())
            .map(|q| (q.from, q.item))
            .collect())
    }
}

impl SessionStore for RedisStore {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    fn schedule(&self, session: Arc<dyn WritingSession>) {
        let _ = self.sessions_to_write.send(session);
    }

    fn claim<'a>(
        &'a self,
        session: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, Result<ClaimedSession, StoreError>> {
        Box::pin(self.claim_session(session, subject))
    }

    fn forward<'a>(
        &'a self,
        session: &'a str,
        subject: Option<&'a str>,
        producer: &'a str,
        item: Forwarded,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.forward_item(session, subject, producer, item))
    }

    fn drain<'a>(
        &'a self,
        session: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Forwarded)>, StoreError>> {
        Box::pin(self.drain_queue(session))
    }

    fn tell_node<'a>(
        &'a self,
        node: &'a str,
        session: &'a str,
        item: Forwarded,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Ok(mut conn) = self.connection() else {
                return;
            };
            let message = serde_json::to_string(&NodeMessage::Direct {
                s: session.to_string(),
                from: self.owner.clone(),
                item,
            })
            .unwrap_or_default();
            let sent: RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(scripts::node_key(node))
                .arg(message)
                .query_async(&mut conn)
                .await;
            if let Err(e) = sent {
                tracing::debug!(node, session, error = %e, "could not tell a node");
            }
        })
    }

    fn live_nodes(&self, nodes: Vec<String>) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            let Ok(conn) = self.connection() else {
                // Unknown is not dead: nothing is ended while Redis cannot tell.
                return nodes;
            };
            let checks = nodes.into_iter().map(|node| {
                let mut conn = conn.clone();
                async move {
                    let alive: RedisResult<bool> = redis::cmd("EXISTS")
                        .arg(scripts::node_key(&node))
                        .query_async(&mut conn)
                        .await;
                    match alive {
                        Ok(false) => None,
                        _ => Some(node),
                    }
                }
            });
            futures_util::future::join_all(checks)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }

    fn follow<'a>(
        &'a self,
        subject: &'a str,
        thread: &'a str,
        session: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.follow_thread(subject, thread, session))
    }

    fn worker_node(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            let mut conn = self.connection().ok()?;
            let nodes: HashMap<String, u64> = redis::cmd("HGETALL")
                .arg(WORKER_NODES)
                .query_async(&mut conn)
                .await
                .ok()?;
            let now = crate::engine::now_ms();
            let mut live: Vec<String> = nodes
                .into_iter()
                .filter(|(node, until)| *until > now && *node != self.owner)
                .map(|(node, _)| node)
                .collect();
            live.sort();
            // Spread over the nodes that have workers.
            let pick = (now as usize) % live.len().max(1);
            live.into_iter().nth(pick)
        })
    }

    fn copy_to_followers(&self, subject: &str, origin: &str, sent: Vec<(String, String)>) {
        for (thread, json) in sent {
            let _ = self.thread_output.send(ThreadOutput {
                subject: subject.to_string(),
                origin: origin.to_string(),
                thread,
                json,
            });
        }
    }

    fn refresh(&self, sessions: Vec<String>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Ok(conn) = self.connection() else {
                return;
            };
            let ttl = self.settings.session_ttl_ms;
            let renewals = sessions.into_iter().map(|session| {
                let mut conn = conn.clone();
                async move {
                    for key in [scripts::meta_key(&session), scripts::out_key(&session)] {
                        let _: RedisResult<i64> = redis::cmd("PEXPIRE")
                            .arg(key)
                            .arg(ttl)
                            .query_async(&mut conn)
                            .await;
                    }
                }
            });
            futures_util::future::join_all(renewals).await;
        })
    }
}
