//! The server fixture: an in-process server on a real loopback socket.

use std::net::SocketAddr;
use std::sync::Arc;

use haip_server::agent::{Agent, EchoAgent};
use haip_server::app::{AppState, SharedState};
use haip_server::auth::Authenticator;
use haip_server::config::ServerConfig;
use haip_server::tools::ToolRegistry;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::http::http;
use super::jwt::{SECRET, USER};
use super::time::{bounded, ms};

/// The test defaults: loopback, an ephemeral port, 5 ms between echo words, no logging.
fn test_config() -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        echo_word_delay: ms(5),
        enable_logging: false,
        ..ServerConfig::default()
    }
}

/// An in-process server on 127.0.0.1 with an ephemeral port; shut down on drop.
pub struct Server {
    pub state: SharedState,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// Starts a server with the test defaults and the echo agent, then `tweak` applied to
    /// the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Server {
        let mut config = test_config();
        tweak(&mut config);
        let agent = Arc::new(EchoAgent {
            word_delay: config.echo_word_delay,
        });
        Server::start_serving(config, agent, ToolRegistry::with_builtins()).await
    }

    /// Starts a server with the test defaults that answers through `agent` with `tools`.
    pub async fn start_with_agent(agent: Arc<dyn Agent>, tools: ToolRegistry) -> Server {
        Server::start_serving(test_config(), agent, tools).await
    }

    /// Both: `tweak` applied to the test defaults, and `agent` answering.
    pub async fn start_with_config_and_agent(
        tweak: impl FnOnce(&mut ServerConfig),
        agent: Arc<dyn Agent>,
    ) -> Server {
        let mut config = test_config();
        tweak(&mut config);
        Server::start_serving(config, agent, ToolRegistry::with_builtins()).await
    }

    async fn start_serving(
        config: ServerConfig,
        agent: Arc<dyn Agent>,
        tools: ToolRegistry,
    ) -> Server {
        let auth = Authenticator::with_secret(
            SECRET,
            config.jwt_issuer.clone(),
            config.jwt_audience.clone(),
        );
        let state = AppState::new(config, auth, agent, tools);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let _ = haip_server::server::serve(listener, state).await;
            }
        });
        Server { state, addr, task }
    }

    /// A valid token of [`USER`].
    pub fn token(&self) -> String {
        self.token_for(USER)
    }

    pub fn token_for(&self, subject: &str) -> String {
        self.state.auth.mint(subject, 3600).expect("mint token")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// GET `path` as JSON.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = bounded(http().get(self.url(path)).send())
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        let body = bounded(resp.text()).await.expect("body");
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        self.task.abort();
    }
}
