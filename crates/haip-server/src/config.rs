//! Server settings, with the defaults of contract section 11.

use std::time::Duration;

/// Everything `haip serve` can set. Durations are milliseconds and sizes bytes on the
/// command line and in files; here they are typed.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub jwt_secret: Option<String>,
    pub jwt_public_key_pem: Option<Vec<u8>>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub max_connections: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub session_ttl: Duration,
    pub enable_websocket: bool,
    pub enable_sse: bool,
    pub enable_http_stream: bool,
    pub websocket_path: String,
    pub sse_path: String,
    pub http_stream_path: String,
    /// Where the AI SDK `useChat` endpoints live (contract section 14).
    pub aisdk_path: String,
    /// Where agent workers attach (contract section 12.2).
    pub agent_path: String,
    /// This node's name in /health, /stats and /metrics (contract section 13); by default
    /// the machine's host name and the port listened on.
    pub node_id: Option<String>,
    /// Cluster mode (contract section 13): where the sessions of every node live. One
    /// `redis://`/`rediss://` URL, or several comma-separated seed nodes of a Redis
    /// Cluster. None: each node keeps its sessions in its own memory.
    pub redis_url: Option<String>,
    /// Treat a single `redis_url` as a seed of a Redis Cluster.
    pub redis_cluster: bool,
    pub websocket_max_payload: usize,
    pub websocket_per_message_deflate: bool,
    /// WebSocket messages smaller than this many bytes are sent uncompressed. Without
    /// context takeover each compressed message pays a full deflate reset, and a typical
    /// streamed envelope (about 300 bytes, mostly UUIDs) only shrinks by a quarter:
    /// compressing them cost a third of the server's CPU in `haip bench echo`. 1024 is
    /// also the threshold of Node's `ws`.
    pub websocket_compression_threshold: usize,
    pub http_stream_max_payload: usize,
    pub http_stream_timeout: Duration,
    pub sse_retry_timeout: Duration,
    pub sse_max_connections: usize,
    pub flow_control_enabled: bool,
    pub flow_control_initial_credit_messages: u64,
    pub flow_control_initial_credit_bytes: u64,
    /// Output held for a client that does not take it, beyond which its session is ended.
    pub flow_control_max_held_messages: usize,
    pub flow_control_max_held_bytes: u64,
    pub max_concurrent_runs: u64,
    pub replay_window_size: usize,
    pub replay_window_time: Duration,
    pub enable_cors: bool,
    pub cors_origins: Vec<String>,
    pub enable_compression: bool,
    pub enable_logging: bool,
    pub log_format: LogFormat,
    /// Pause between the echo agent's words.
    pub echo_word_delay: Duration,
    /// Serve `/autobahn`, an unauthenticated WebSocket echo for the Autobahn conformance
    /// suite (`scripts/autobahn`). Off by default; never for production.
    pub autobahn_echo: bool,
    /// What everything clients can make the server hold may add up to, in bytes (see
    /// `engine::budget`). Per-session bounds are capped by it too.
    pub memory_limit: u64,
    /// PEM certificate chain and private key: with both, every transport is served over
    /// TLS (https, wss), and SIGHUP reloads them.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

/// The default memory limit: half of the memory the process may use (the cgroup's limit
/// when one is set, else the machine's), at least 256 MiB.
pub fn default_memory_limit() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let available = match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c),
        (Some(m), None) => m,
        (None, Some(c)) => c,
        (None, None) => 2 * 1024 * 1024 * 1024,
    };
    (available / 2).max(256 * 1024 * 1024)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 8080,
            jwt_secret: None,
            jwt_public_key_pem: None,
            jwt_issuer: None,
            jwt_audience: None,
            max_connections: 1000,
            heartbeat_interval: Duration::from_millis(30_000),
            heartbeat_timeout: Duration::from_millis(5_000),
            session_ttl: Duration::from_millis(300_000),
            enable_websocket: true,
            enable_sse: true,
            enable_http_stream: true,
            websocket_path: "/haip/websocket".into(),
            sse_path: "/haip/sse".into(),
            http_stream_path: "/haip/stream".into(),
            aisdk_path: "/api/chat".into(),
            agent_path: "/haip/agent".into(),
            node_id: None,
            redis_url: None,
            redis_cluster: false,
            websocket_max_payload: 1024 * 1024,
            websocket_per_message_deflate: true,
            websocket_compression_threshold: 1024,
            http_stream_max_payload: 10 * 1024 * 1024,
            http_stream_timeout: Duration::from_millis(30_000),
            sse_retry_timeout: Duration::from_millis(3_000),
            sse_max_connections: 100,
            flow_control_enabled: true,
            flow_control_initial_credit_messages: 1000,
            flow_control_initial_credit_bytes: 1024 * 1024,
            flow_control_max_held_messages: 10_000,
            flow_control_max_held_bytes: 16 * 1024 * 1024,
            max_concurrent_runs: 10,
            replay_window_size: 1000,
            replay_window_time: Duration::from_millis(300_000),
            enable_cors: true,
            cors_origins: vec!["*".into()],
            enable_compression: true,
            enable_logging: true,
            log_format: LogFormat::Text,
            echo_word_delay: Duration::from_millis(20),
            autobahn_echo: false,
            memory_limit: default_memory_limit(),
            tls_cert: None,
            tls_key: None,
        }
    }
}
