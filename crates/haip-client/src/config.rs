//! How to reach one server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::ReconnectPolicy;
use crate::error::ClientError;
use crate::session::SessionConfig;
use crate::Transport;

/// Called before each (re)connect for a fresh token.
pub type TokenProvider = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, ClientError>> + Send>> + Send + Sync,
>;

/// How to reach one server.
#[derive(Clone)]
pub struct ConnectionConfig {
    /// The server URL; the scheme is converted per transport (http <-> ws).
    pub url: String,
    pub token: Option<String>,
    /// Asked for a token before each connect; wins over `token`.
    pub token_provider: Option<TokenProvider>,
    /// Tried in order when one cannot connect.
    pub transports: Vec<Transport>,
    /// Connect plus handshake.
    pub timeout: Duration,
    pub reconnect: ReconnectPolicy,
    pub query_params: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub session: SessionConfig,
    /// How often to PING the server to measure latency (None: never).
    pub ping_interval: Option<Duration>,
    /// A PEM file of CA certificates trusted besides the platform's (or `SSL_CERT_FILE`'s),
    /// for a server whose certificate comes from a private CA.
    pub ca_cert: Option<std::path::PathBuf>,
}

impl ConnectionConfig {
    pub fn new(url: impl Into<String>) -> ConnectionConfig {
        ConnectionConfig {
            url: url.into(),
            token: None,
            token_provider: None,
            transports: vec![Transport::WebSocket],
            timeout: Duration::from_secs(10),
            reconnect: ReconnectPolicy::default(),
            query_params: Vec::new(),
            headers: Vec::new(),
            session: SessionConfig::default(),
            ping_interval: Some(Duration::from_secs(15)),
            ca_cert: None,
        }
    }
}
