//! The state every handler shares: the configuration, the session engine, the
//! authenticator, connection slots, and how a request is authenticated. Transports and the
//! routes of `app` use it; it uses neither.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use haip_protocol::flow::Credit;
use haip_protocol::replay::ReplayConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent::workers::WorkerPool;
use crate::agent::Agent;
use crate::aisdk::answer::Chats;
use crate::auth::{Authenticator, Identity};
use crate::config::ServerConfig;
use crate::engine::connection::{ConnectionOptions, Transport};
use crate::engine::core::SessionLimits;
use crate::engine::Engine;
use crate::tools::ToolRegistry;

/// How often SSE and NDJSON streams get a keepalive (contract section 4: every 15 s).
pub const HTTP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

pub struct AppState {
    pub config: ServerConfig,
    pub engine: Arc<Engine>,
    pub auth: Authenticator,
    pub shutdown: CancellationToken,
    pub started: Instant,
    /// The AI SDK answers in progress (contract section 14).
    pub chats: Chats,
    /// The agent workers, when the agent hands the work to them (`--agent workers`).
    pub workers: Option<Arc<WorkerPool>>,
    /// This node's name, fixed once it listens (see [`AppState::node_id`]).
    node_id: std::sync::OnceLock<String>,
    live_connections: AtomicUsize,
    live_sse: AtomicUsize,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(
        config: ServerConfig,
        auth: Authenticator,
        agent: Arc<dyn Agent>,
        tools: ToolRegistry,
    ) -> SharedState {
        // No one session may take more than a sixteenth of the memory budget in output.
        let held_bytes = config
            .flow_control_max_held_bytes
            .min(config.memory_limit / 16);
        let limits = SessionLimits {
            replay: ReplayConfig {
                keep_newest: config.replay_window_size,
                keep_for_ms: config.replay_window_time.as_millis() as u64,
                // The replay window shares its frames with the connection's backlog, so this
                // one number bounds the output memory of a session.
                max_bytes: held_bytes,
                ..ReplayConfig::default()
            },
            max_concurrent_runs: config.max_concurrent_runs,
            inbound_credit: if config.flow_control_enabled {
                Credit::new(
                    Some(config.flow_control_initial_credit_messages),
                    Some(config.flow_control_initial_credit_bytes),
                )
            } else {
                Credit::UNLIMITED
            },
            max_held_inbound: config.replay_window_size.max(1),
            // Four messages' worth of credit, never less than the largest message a
            // transport takes (so that one held message always fits).
            max_pending_input_bytes: config
                .flow_control_initial_credit_bytes
                .saturating_mul(4)
                .min(config.memory_limit / 64)
                .max(config.websocket_max_payload as u64),
            max_running_tool_calls: 100,
            max_held_messages: config.flow_control_max_held_messages,
            max_held_bytes: held_bytes,
        };
        let workers = agent.worker_pool();
        let engine = Engine::new(
            limits,
            agent,
            tools,
            config.session_ttl.as_millis() as u64,
            config.memory_limit,
        );
        Arc::new(AppState {
            config,
            engine,
            auth,
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            chats: Chats::default(),
            workers,
            node_id: std::sync::OnceLock::new(),
            live_connections: AtomicUsize::new(0),
            live_sse: AtomicUsize::new(0),
        })
    }

    /// The options of a client's connection: those of the transport, ended when the
    /// client's token expires.
    pub fn options(&self, transport: Transport, identity: &Identity) -> ConnectionOptions {
        ConnectionOptions {
            token_expires_ms: Some(identity.expires_ms),
            ..self.internal_options(transport)
        }
    }

    /// The options of a transport's connections, without a token's expiry: what the
    /// server's own connections use (an AI SDK answer outlives the request that asked).
    pub fn internal_options(&self, transport: Transport) -> ConnectionOptions {
        ConnectionOptions {
            transport,
            // The AI SDK's internal connection never answers PINGs.
            bidirectional: matches!(transport, Transport::WebSocket | Transport::HttpStream),
            heartbeat_interval: self.config.heartbeat_interval,
            heartbeat_timeout: self.config.heartbeat_timeout,
            token_expires_ms: None,
            idle_timeout: (transport == Transport::HttpStream)
                .then_some(self.config.http_stream_timeout),
            keepalive_interval: match transport {
                // The contract's SSE keepalive; NDJSON gets the same, so that a dead
                // client of either frees its slot as soon.
                Transport::Sse | Transport::HttpStream | Transport::AiSdk => {
                    HTTP_KEEPALIVE_INTERVAL
                }
                Transport::WebSocket => self.config.heartbeat_interval,
            },
            end_when_answered: false,
        }
    }

    /// Names this node: `NODE_ID` when given, else the host name and the port it listens
    /// on. The first call wins.
    pub fn name_node(&self, port: u16) {
        self.node_id.get_or_init(|| {
            self.config
                .node_id
                .clone()
                .unwrap_or_else(|| format!("{}:{port}", host_name()))
        });
    }

    /// This node's name (contract section 13).
    pub fn node_id(&self) -> &str {
        self.node_id.get().map_or("", String::as_str)
    }

    /// Where sessions live: `memory` (this process) or `redis` (cluster mode).
    pub fn mode(&self) -> &'static str {
        if self.config.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// Starts cluster mode when `REDIS_URL` is set (once the node is named). Fails only on
    /// a URL that cannot be read; an unreachable Redis is waited for.
    pub fn start_cluster(&self) -> Result<(), String> {
        let Some(url) = &self.config.redis_url else {
            return Ok(());
        };
        let target = crate::cluster::Target::parse(url, self.config.redis_cluster)
            .map_err(|e| format!("REDIS_URL cannot be used: {e}"))?;
        crate::cluster::RedisStore::start(
            target,
            crate::cluster::ClusterSettings {
                node_id: self.node_id().to_string(),
                session_ttl_ms: self.config.session_ttl.as_millis() as u64,
                replay: self.engine.replay_config(),
            },
            &self.engine,
            self.shutdown.clone(),
        );
        Ok(())
    }

    /// Whether the store of cluster mode answers (always in memory mode).
    pub fn store_available(&self) -> bool {
        self.engine.store().is_none_or(|s| s.is_available())
    }

    /// Reserves a connection slot, or answers 503 (contract section 4.5).
    #[allow(clippy::result_large_err)] // the error is the HTTP answer itself, built once
    pub fn admit(self: &Arc<Self>, transport: Transport) -> Result<ConnectionSlot, Response> {
        let sse = transport == Transport::Sse;
        let live = self.live_connections.fetch_add(1, Ordering::AcqRel);
        let live_sse = if sse {
            self.live_sse.fetch_add(1, Ordering::AcqRel)
        } else {
            0
        };
        // The slot is built first so that its drop gives the counts back on refusal too.
        let slot = ConnectionSlot {
            state: self.clone(),
            sse,
        };
        if live >= self.config.max_connections {
            return Err(unavailable("too many connections"));
        }
        if !self.store_available() {
            return Err(unavailable(
                "the session store (Redis) is out of reach; try again shortly",
            ));
        }
        if !self.engine.budget.admits_connections() {
            return Err(unavailable(
                "the server is over its memory budget; try again shortly",
            ));
        }
        if sse && live_sse >= self.config.sse_max_connections {
            return Err(unavailable("too many SSE connections"));
        }
        Ok(slot)
    }

    pub fn live_connections(&self) -> usize {
        self.live_connections.load(Ordering::Acquire)
    }
}

/// A held connection slot; dropping it frees the slot.
pub struct ConnectionSlot {
    state: SharedState,
    sse: bool,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.live_connections.fetch_sub(1, Ordering::AcqRel);
        if self.sse {
            self.state.live_sse.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn unavailable(message: &str) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": "RATE_LIMITED", "message": message}})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The 401 answer of the HTTP transports (contract section 4.5).
pub fn unauthorized(message: &str) -> Response {
    let mut r = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"code": "AUTHENTICATION_FAILED", "message": message}})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Checks a token, answering 401 when it is missing or bad.
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself, built once
pub fn authenticate(state: &AppState, token: Option<&str>) -> Result<Identity, Response> {
    let token = token.ok_or_else(|| unauthorized("missing token"))?;
    state
        .auth
        .verify_user(token)
        .map_err(|e| unauthorized(&e.to_string()))
}

/// The machine's host name (Linux: the kernel's; else `HOSTNAME`), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
