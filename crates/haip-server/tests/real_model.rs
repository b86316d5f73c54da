//! The OpenAI-compatible agent in front of a real model: SmolLM2-135M-Instruct served by
//! llama-cpp-python's OpenAI-compatible server, as `scripts/demo-llm` runs it. A recording
//! proxy between the agent and the model server shows what the agent asked.
//!
//! `scripts/test` installs the model (scripts/llm-venv) and sets HAIP_LLM_PYTHON and
//! HAIP_LLM_MODEL; with HAIP_REQUIRE_LLM=1 (as there) a missing model fails the test.
//! A plain `cargo test` without them says so and checks nothing here.

mod common;
#[path = "support/upstream.rs"]
mod upstream;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use haip_server::agent::openai::{OpenAiAgent, OpenAiConfig};
use haip_server::tools::ToolRegistry;
use serde_json::{json, Value};
use tokio::time::Instant;
use upstream::Recorder;

/// Bound of every wait on the model: a CPU answers slowly, but never this slowly.
const MODEL_WAIT: Duration = Duration::from_secs(90);

/// The model server, stopped on drop.
struct ModelServer {
    child: Child,
    port: u16,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts the model server when the model is installed.
async fn model_server() -> Option<ModelServer> {
    let (python, model) = match (
        std::env::var("HAIP_LLM_PYTHON"),
        std::env::var("HAIP_LLM_MODEL"),
    ) {
        (Ok(p), Ok(m)) => (p, m),
        _ => {
            assert!(
                std::env::var("HAIP_REQUIRE_LLM").is_err(),
                "HAIP_REQUIRE_LLM is set but HAIP_LLM_PYTHON / HAIP_LLM_MODEL are not \
                 (scripts/llm-venv prints them)"
            );
            eprintln!(
                "real_model: skipped, no model installed (run scripts/test, which sets \
                 HAIP_LLM_PYTHON and HAIP_LLM_MODEL from scripts/llm-venv)"
            );
            return None;
        }
    };
    let port = free_port();
    let child = Command::new(python)
        .args(["-m", "llama_cpp.server", "--model", &model])
        .args(["--model_alias", "smollm2", "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--n_ctx", "4096"])
        .args(["--verbose", "false"])
        // It reads its settings from the environment too.
        .env_remove("PORT")
        .env_remove("HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the model server");
    let mut server = ModelServer { child, port };
    let deadline = Instant::now() + MODEL_WAIT;
    let url = format!("http://127.0.0.1:{port}/v1/models");
    loop {
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(2), http().get(&url).send()).await
        {
            if r.status().is_success() {
                return Some(server);
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("the model server exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the model server did not start in {MODEL_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads until `pred` holds, within [`MODEL_WAIT`]; returns what was read, the match last.
async fn until(c: &mut Conn, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + MODEL_WAIT;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.frame_within(left).await {
            Some(Frame::Json(v)) => {
                let hit = pred(&v);
                out.push(v);
                if hit {
                    return out;
                }
            }
            Some(Frame::Binary(_)) => {}
            other => panic!("no awaited message ({other:?}); got {out:?}"),
        }
    }
}

fn run_ended(v: &Value) -> bool {
    matches!(ty(v), "RUN_FINISHED" | "RUN_ERROR")
}

/// The text of a run's parts.
fn shown(run: &[Value]) -> String {
    run.iter()
        .filter(|m| ty(m) == "MESSAGE_PART")
        .map(|m| m["payload"]["text"].as_str().unwrap_or(""))
        .collect()
}

#[tokio::test]
async fn a_real_model_answers_remembers_and_stops_when_cancelled() {
    let Some(model) = model_server().await else {
        return;
    };
    let mut recorder = Recorder::start(([127, 0, 0, 1], model.port).into()).await;
    let mut config = OpenAiConfig::new("smollm2");
    config.base_url = recorder.base_url();
    config.system_prompt = Some("You are a helpful assistant. Answer briefly.".into());
    let agent = OpenAiAgent::new(config).expect("agent");
    let server = Server::start_with_agent(Arc::new(agent), ToolRegistry::with_builtins()).await;
    let mut c = server.connect(Kind::Ws).await;
    c.recv_type("HAI").await;

    // A whole answer.
    c.say("What is the capital of France?").await;
    let first = until(&mut c, run_ended).await;
    let kinds = types(&first);
    assert!(kinds.contains(&"RUN_STARTED"), "{kinds:?}");
    let start = first
        .iter()
        .find(|m| ty(m) == "MESSAGE_START")
        .expect("MESSAGE_START");
    assert_eq!(start["payload"]["author"], "smollm2");
    let answer = shown(&first);
    assert!(!answer.trim().is_empty(), "{first:?}");
    let end = first.last().expect("end");
    assert_eq!(ty(end), "RUN_FINISHED", "{end}");
    assert_eq!(end["payload"]["status"], "OK");
    let asked = recorder.request(MODEL_WAIT).await;
    assert_eq!(asked.body["model"], "smollm2");
    assert_eq!(asked.body["stream"], true);

    // The second turn carries the first, as shown.
    c.say("And of Italy?").await;
    let second = until(&mut c, run_ended).await;
    assert_eq!(
        second.last().map(|m| &m["payload"]["status"]),
        Some(&json!("OK"))
    );
    let asked = recorder.request(MODEL_WAIT).await;
    let messages = asked.body["messages"].as_array().expect("messages");
    assert_eq!(
        messages[1..],
        [
            json!({"role": "user", "content": "What is the capital of France?"}),
            json!({"role": "assistant", "content": answer}),
            json!({"role": "user", "content": "And of Italy?"}),
        ]
    );

    // RUN_CANCEL mid-answer ends the run CANCELLED.
    c.say("Write a long story about a dragon who learns to bake bread, in many chapters.")
        .await;
    let started = until(&mut c, |m| ty(m) == "MESSAGE_PART").await;
    let run_id = started
        .iter()
        .find(|m| ty(m) == "RUN_STARTED")
        .map(|m| m["payload"]["run_id"].clone())
        .expect("RUN_STARTED");
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    let rest = until(&mut c, run_ended).await;
    let end = rest.last().expect("end");
    assert_eq!(ty(end), "RUN_FINISHED", "{end}");
    assert_eq!(end["payload"]["status"], "CANCELLED", "{end}");
    assert_eq!(end["payload"]["run_id"], run_id);
}
