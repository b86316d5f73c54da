//! A server with your own agent and tool instead of the built-in echo agent.
//!
//! Run it with `cargo run -p haip-server --example custom_agent`, then connect any HAIP
//! client with the token it prints. Set PORT to choose the port (default 8080).

use std::sync::Arc;
use std::time::Duration;

use haip_protocol::payload::RunStatus;
use haip_server::agent::{Agent, BoxFuture, Reply};
use haip_server::app::AppState;
use haip_server::auth::{random_secret, Authenticator};
use haip_server::config::ServerConfig;
use haip_server::tools::{Tool, ToolContext, ToolFuture, ToolRegistry};
use serde_json::{json, Map, Value};

/// Answers every message in capitals, one word at a time, and stops when cancelled.
struct ShoutingAgent;

impl Agent for ShoutingAgent {
    fn on_text(&self, reply: Reply, text: String) -> BoxFuture {
        Box::pin(async move {
            let Some(run) = reply.start_run() else { return };
            let message_id = run.message_start("shouter").await;
            let mut count = 0;
            for word in haip_server::agent::words(&text) {
                if run.is_cancelled() {
                    return run.finish(RunStatus::Cancelled);
                }
                run.message_part(&message_id, &word.to_uppercase()).await;
                count += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            run.message_end(&message_id, count).await;
            run.finish(RunStatus::Ok);
        })
    }
}

/// `length` {text: string} -> {chars}
struct LengthTool;

impl Tool for LengthTool {
    fn name(&self) -> &str {
        "length"
    }
    fn description(&self) -> &str {
        "Counts the characters of a text"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object", "properties": {"chars": {"type": "integer"}}})
    }
    fn call(&self, params: Map<String, Value>, _ctx: ToolContext) -> ToolFuture {
        let chars = params
            .get("text")
            .and_then(Value::as_str)
            .map_or(0, |t| t.chars().count());
        Box::pin(async move { Ok(json!({ "chars": chars })) })
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = ServerConfig {
        port: std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(8080),
        ..ServerConfig::default()
    };
    let secret = random_secret();
    let auth = Authenticator::with_secret(secret.as_bytes(), None, None);
    let mut tools = ToolRegistry::with_builtins();
    tools
        .register(Arc::new(LengthTool))
        .map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
    println!("listening on {}", listener.local_addr()?);
    if let Some(token) = auth.mint("demo", 3600) {
        println!("token: {token}");
    }
    let state = AppState::new(config, auth, Arc::new(ShoutingAgent), tools);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    });
    haip_server::server::serve(listener, state).await
}
