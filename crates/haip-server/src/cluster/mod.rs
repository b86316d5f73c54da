//! Cluster mode (contract section 13): sessions kept in Redis so that every node that
//! shares it serves any session. [`RedisStore`] implements the engine's storage seam
//! (`engine::store::SessionStore`); the engine never sees Redis.
//!
//! Four tasks per node:
//! - the writer (`writer.rs`) pulls what sessions have to keep and writes it, many
//!   sessions per round trip, one write per session at a time (so each session's writes
//!   stay in order);
//! - the heartbeat renews this node run's liveness key every second; whether it succeeds
//!   is whether the node takes new connections;
//! - the listener hears what other nodes forward to sessions this node drives;
//! - the connector opens the connection, again and again with backoff until it works.

mod conn;
pub mod scripts;
mod threads;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use haip_protocol::replay::ReplayConfig;
use redis::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::store::{
    BoxFuture, ClaimedSession, Forwarded, SessionStore, StoreError, StoredMessage, StoredRun,
    WritingSession,
};
use crate::engine::Engine;
use conn::Connection;
pub use conn::Target;
use scripts::Scripts;

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
enum NodeMessage {
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
    owner: String,
    settings: ClusterSettings,
    target: Target,
    connection: Mutex<Option<Connection>>,
    available: AtomicBool,
    scripts: Scripts,
    sessions_to_write: mpsc::UnboundedSender<Arc<dyn WritingSession>>,
    thread_output: mpsc::UnboundedSender<threads::ThreadOutput>,
}

impl RedisStore {
    /// Starts the cluster tasks for `engine` and gives the engine its store. Returns at
    /// once: until Redis answers, the node refuses new connections with 503.
    pub fn start(
        target: Target,
        settings: ClusterSettings,
        engine: &Arc<Engine>,
        shutdown: CancellationToken,
    ) -> Arc<RedisStore> {
        let owner = format!(
            "{}/{}",
            settings.node_id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let (thread_tx, thread_rx) = mpsc::unbounded_channel();
        let store = Arc::new(RedisStore {
            owner,
            settings,
            target,
            connection: Mutex::new(None),
            available: AtomicBool::new(false),
            scripts: Scripts::default(),
            sessions_to_write: tx,
            thread_output: thread_tx,
        });
        engine.set_store(store.clone());
        tokio::spawn(connect(store.clone(), shutdown.clone()));
        tokio::spawn(heartbeat(
            Arc::downgrade(&store),
            Arc::downgrade(engine),
            shutdown.clone(),
        ));
        tokio::spawn(listen(
            Arc::downgrade(&store),
            Arc::downgrade(engine),
            shutdown.clone(),
        ));
        tokio::spawn(threads::run(
            Arc::downgrade(&store),
            Arc::downgrade(engine),
            thread_rx,
            shutdown.clone(),
        ));
        tokio::spawn(writer::run(Arc::downgrade(&store), rx, shutdown));
        tracing::info!(owner = %store.owner, "cluster mode: sessions are kept in Redis");
        store
    }

    fn connection(&self) -> Result<Connection, StoreError> {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable("not connected to Redis yet".into()))
    }

    fn set_available(&self, available: bool, why: &str) {
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
        Box::pin(threads::follow(self, subject, thread, session))
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
            let _ = self.thread_output.send(threads::ThreadOutput {
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

type RedisResult<T> = redis::RedisResult<T>;

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The elements of an array reply (nothing for anything else).
fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// A bulk or simple string reply as text ("" for nil and anything else).
fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(n)) => n.to_string(),
        Some(Value::Okay) => "OK".into(),
        _ => String::new(),
    }
}

/// One stream entry, `[id, [t, ts, j, json]]`, as a stored message.
fn stream_entry(entry: Value) -> Option<StoredMessage> {
    let mut parts = array(entry).into_iter();
    let id = text(parts.next().as_ref());
    let seq = id.split('-').next()?.parse().ok()?;
    let fields = array(parts.next()?);
    let mut ts = 0;
    let mut json = None;
    for pair in fields.chunks(2) {
        match (text(pair.first()).as_str(), pair.get(1)) {
            ("t", v) => ts = text(v).parse().unwrap_or(0),
            ("j", Some(Value::BulkString(bytes))) => json = Some(Bytes::from(bytes.clone())),
            _ => {}
        }
    }
    Some(StoredMessage {
        seq,
        ts,
        json: json?,
    })
}

/// Opens the connection, retrying with backoff until it works (a cluster connection needs
/// a seed that answers; a single one connects lazily).
async fn connect(store: Arc<RedisStore>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.target.connect().await {
            Ok(conn) => {
                *store.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                return;
            }
            Err(e) => {
                store.set_available(false, &e.to_string());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Renews this node run's lease every [`HEARTBEAT`]; its success or failure is the node's
/// availability.
async fn heartbeat(store: Weak<RedisStore>, engine: Weak<Engine>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(store) = store.upgrade() else {
            return;
        };
        let Ok(mut conn) = store.connection() else {
            continue;
        };
        let renewed: RedisResult<Value> = redis::cmd("SET")
            .arg(scripts::node_key(&store.owner))
            .arg("1")
            .arg("PX")
            .arg(NODE_LEASE.as_millis() as u64)
            .query_async(&mut conn)
            .await;
        match renewed {
            Ok(_) => store.set_available(true, ""),
            Err(e) => store.set_available(false, &e.to_string()),
        }
        // Whether this node takes user messages of other nodes for its agent workers.
        let workers = engine.upgrade().and_then(|e| e.worker_count());
        let registered: RedisResult<i64> = match workers {
            Some(n) if n > 0 => {
                let until = crate::engine::now_ms() + NODE_LEASE.as_millis() as u64;
                redis::cmd("HSET")
                    .arg(WORKER_NODES)
                    .arg(&store.owner)
                    .arg(until)
                    .query_async(&mut conn)
                    .await
            }
            Some(_) => {
                redis::cmd("HDEL")
                    .arg(WORKER_NODES)
                    .arg(&store.owner)
                    .query_async(&mut conn)
                    .await
            }
            None => Ok(0),
        };
        if let Err(e) = registered {
            tracing::debug!(error = %e, "could not record this node's agent workers");
        }
    }
    // A node that stops gives its lease up at once: its runs are ended by whoever takes
    // its sessions over.
    if let Some(store) = store.upgrade() {
        if let Ok(mut conn) = store.connection() {
            let _: RedisResult<i64> = redis::cmd("DEL")
                .arg(scripts::node_key(&store.owner))
                .query_async(&mut conn)
                .await;
        }
    }
}

/// Listens on this node run's channel and hands what arrives to the engine; reconnects
/// with backoff when the subscription drops.
async fn listen(store: Weak<RedisStore>, engine: Weak<Engine>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(100);
    loop {
        let Some((client, channel)) = store
            .upgrade()
            .map(|s| (s.target.pubsub_client(), scripts::node_key(&s.owner)))
        else {
            return;
        };
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = subscribed => r,
        };
        match pubsub {
            Ok(pubsub) => {
                delay = Duration::from_millis(100);
                // Whatever was queued while this node did not listen is taken now.
                if let Some(engine) = engine.upgrade() {
                    engine.take_all_forwarded().await;
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        msg = messages.next() => msg,
                    };
                    let Some(msg) = msg else {
                        break; // the connection dropped: subscribe again
                    };
                    let Ok(message) =
                        serde_json::from_slice::<NodeMessage>(msg.get_payload_bytes())
                    else {
                        continue;
                    };
                    let Some(engine) = engine.upgrade() else {
                        return;
                    };
                    // Handled before the next one, so that what one node sends to a
                    // session arrives in the order it was sent.
                    match message {
                        NodeMessage::Wake { s } => engine.take_forwarded(&s).await,
                        NodeMessage::Direct { s, from, item } => {
                            engine.on_direct(&s, &from, item).await
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not listen on this node's channel"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
