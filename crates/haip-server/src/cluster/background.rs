//! The node's tasks in cluster mode, and how they start: the connector, the heartbeat,
//! the listener, thread followers' relay and the writer.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisResult;
use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

use super::conn::Target;

use super::scripts;
use super::scripts::Scripts;
use super::store::{ClusterSettings, NodeMessage, RedisStore, HEARTBEAT, NODE_LEASE, WORKER_NODES};
use super::{threads, writer};

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
