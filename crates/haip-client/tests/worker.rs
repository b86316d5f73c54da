//! The SDK's worker mode against the real server (`--agent workers`) over real sockets: a
//! job arrives with the user's text, the answer reaches the user, a cancel reaches the run.

use std::sync::Arc;
use std::time::Duration;

use haip_client::worker::Worker;
use haip_client::{Connection, ConnectionConfig};
use haip_protocol::payload::{RunCancel, RunStatus};
use haip_protocol::Payload;
use haip_server::agent::workers::{WorkerPool, WorkersAgent};
use haip_server::app::{AppState, SharedState};
use haip_server::auth::Authenticator;
use haip_server::config::ServerConfig;
use haip_server::tools::ToolRegistry;
use serde_json::Map;
use tokio::net::TcpListener;

const SECRET: &[u8] = b"worker-test-secret";
const WAIT: Duration = Duration::from_secs(10);

async fn server() -> (SharedState, String) {
    let config = ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        enable_logging: false,
        ..ServerConfig::default()
    };
    let state = AppState::new(
        config,
        Authenticator::with_secret(SECRET, None, None),
        Arc::new(WorkersAgent::new(WorkerPool::new())),
        ToolRegistry::with_builtins(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn({
        let state = state.clone();
        async move {
            let _ = haip_server::server::serve(listener, state).await;
        }
    });
    (state, format!("http://{addr}"))
}

async fn worker(state: &SharedState, base: &str) -> Worker {
    let mut config = ConnectionConfig::new(base);
    config.token = state.auth.mint_with_role("worker", 600, Some("agent"));
    tokio::time::timeout(WAIT, Worker::connect(config))
        .await
        .expect("in time")
        .expect("worker connects")
}

async fn user(state: &SharedState, base: &str) -> Connection {
    let mut config = ConnectionConfig::new(format!("{base}/haip/websocket"));
    config.token = state.auth.mint("alice", 600);
    let conn = Connection::start("user", config);
    conn.connected(WAIT).await.expect("user connects");
    conn
}

#[tokio::test]
async fn a_worker_answers_a_user_through_its_run() {
    let (state, base) = server().await;
    let mut worker = worker(&state, &base).await;
    let user = user(&state, &base).await;
    let mut answer = user.subscribe("agent.>").unwrap();
    user.send_text("shout this").await.unwrap();
    let job = tokio::time::timeout(WAIT, worker.next_job())
        .await
        .unwrap()
        .expect("a job");
    assert_eq!(job.text, "shout this");
    assert_eq!(job.subject, "alice");
    assert_eq!(job.conversation, job.session);
    let run = job.run;
    let id = run.message_start("shouter").await.unwrap();
    run.message_part(&id, "SHOUT THIS").await.unwrap();
    run.message_end(&id, 2).await.unwrap();
    let run_id = run.id().to_string();
    run.finish(RunStatus::Ok).await.unwrap();
    let mut text = String::new();
    loop {
        let m = tokio::time::timeout(WAIT, answer.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.message.run_id.as_deref(), Some(run_id.as_str()));
        match &m.message.payload {
            Payload::MessagePart(p) => text.push_str(&p.text),
            Payload::RunFinished(f) => {
                assert_eq!(f.status, Some(RunStatus::Ok));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(text, "SHOUT THIS");
}

#[tokio::test]
async fn a_users_cancel_reaches_the_workers_run() {
    let (state, base) = server().await;
    let mut worker = worker(&state, &base).await;
    let user = user(&state, &base).await;
    let mut runs = user.subscribe("agent.run_finished").unwrap();
    let mut started = user.subscribe("agent.run_started").unwrap();
    user.send_text("long one").await.unwrap();
    let job = tokio::time::timeout(WAIT, worker.next_job())
        .await
        .unwrap()
        .expect("a job");
    let run_id = job.run.id().to_string();
    tokio::time::timeout(WAIT, started.recv()).await.unwrap();
    user.send(
        "USER",
        Payload::RunCancel(RunCancel {
            run_id: run_id.clone(),
            extra: Map::new(),
        }),
    )
    .await
    .unwrap();
    tokio::time::timeout(WAIT, job.run.cancelled())
        .await
        .expect("the cancel arrives");
    assert!(job.run.is_cancelled());
    job.run.finish(RunStatus::Cancelled).await.unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(3), runs.recv())
        .await
        .expect("well before the server's 5 s deadline")
        .unwrap();
    match &finished.message.payload {
        Payload::RunFinished(f) => assert_eq!(f.status, Some(RunStatus::Cancelled)),
        other => panic!("{other:?}"),
    }
}

/// An AI SDK front-end (POST /api/chat) answered by a worker: the same seam serves every
/// way in.
#[tokio::test]
async fn a_worker_answers_an_ai_sdk_chat() {
    let (state, base) = server().await;
    let mut worker = worker(&state, &base).await;
    tokio::spawn(async move {
        while let Some(job) = worker.next_job().await {
            let run = job.run;
            let id = run.message_start("w").await.unwrap();
            for word in job.text.split(' ') {
                run.message_part(&id, &word.to_uppercase()).await.unwrap();
            }
            run.message_end(&id, 2).await.unwrap();
            run.finish(RunStatus::Ok).await.unwrap();
        }
    });
    let body = serde_json::json!({"id": "c", "messages": [{"id": "u", "role": "user",
        "parts": [{"type": "text", "text": "two words"}]}]});
    let token = state.auth.mint("alice", 600).unwrap();
    let response = tokio::time::timeout(
        WAIT,
        haip_client::tls::http_client()
            .post(format!("{base}/api/chat"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = tokio::time::timeout(WAIT, response.text())
        .await
        .unwrap()
        .unwrap();
    let deltas: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|c| c["type"] == "text-delta")
        .map(|c| c["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, "TWOWORDS");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
