//! The protocol rules of the wire contract on tools and runs, checked identically on every
//! transport: calls, progress and cancel of tools; cancel and limit of runs.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------

async fn tools_call_list_schema(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;

    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "call-add", "tool": "add", "params": {"a": 2, "b": 3}}),
    )
    .await;
    let upd = c.recv_where(call_of("call-add", "TOOL_UPDATE")).await;
    assert_eq!(upd["payload"]["status"], "RUNNING");
    assert_eq!(chan(&upd), "AGENT");
    let done = c.recv_where(|v| ty(v) == "TOOL_DONE").await;
    assert_eq!(
        done["payload"]["call_id"], "call-add",
        "RUNNING comes first, then DONE"
    );
    assert_eq!(done["payload"]["status"], "OK");
    assert_eq!(done["payload"]["result"], json!({"result": 5}));

    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "call-echo", "tool": "echo", "params": {"message": "hi"}}),
    )
    .await;
    let done = c.recv_where(call_of("call-echo", "TOOL_DONE")).await;
    assert_eq!(done["payload"]["status"], "OK");
    assert_eq!(done["payload"]["result"], json!({"echoed": "hi"}));

    // Params that do not match the schema.
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "call-bad", "tool": "add", "params": {"a": "two", "b": 3}}),
    )
    .await;
    let done = c.recv_where(call_of("call-bad", "TOOL_DONE")).await;
    assert_eq!(done["payload"]["status"], "ERROR");
    assert_eq!(done["payload"]["result"]["code"], "TOOL_EXECUTION_ERROR");
    assert!(done["payload"]["result"]["message"].is_string());

    // Unknown tool.
    let call = c
        .send_msg(
            "USER",
            "TOOL_CALL",
            json!({"call_id": "call-nope", "tool": "nope", "params": {}}),
        )
        .await;
    let e = expect_described_error(&mut c, "TOOL_NOT_FOUND").await;
    assert_eq!(e["payload"]["related_id"], call["id"]);

    // The list on request.
    c.send_msg("SYSTEM", "TOOL_LIST", json!({"tools": []}))
        .await;
    let list = c.recv_type("TOOL_LIST").await;
    let names: Vec<&str> = list["payload"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "add", "sleep"]);

    // A schema on request.
    c.send_msg(
        "SYSTEM",
        "TOOL_SCHEMA",
        json!({"tool": "add", "schema": {}}),
    )
    .await;
    let s = c.recv_type("TOOL_SCHEMA").await;
    let p = &s["payload"];
    assert_eq!(p["tool"], "add");
    assert_eq!(p["schema"]["type"], "object");
    assert_eq!(p["schema"]["properties"]["a"]["type"], "number");
    assert_eq!(p["schema"]["properties"]["b"]["type"], "number");
    assert_eq!(p["inputSchema"], p["schema"]);
    assert!(p["outputSchema"]["properties"]["result"].is_object(), "{s}");

    // No stray TOOL_DONE for the unknown tool.
    c.collect_for(ms(100)).await;
    assert!(!c.log.iter().any(call_of("call-nope", "TOOL_DONE")));
    assert_contiguous(&c.log);
}

on_transports!(tools, tools_call_list_schema);

async fn tool_sleep_progress(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let t0 = Instant::now();
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "nap", "tool": "sleep", "params": {"ms": 400}}),
    )
    .await;
    let msgs = c.collect_until(call_of("nap", "TOOL_DONE")).await;
    let elapsed = t0.elapsed();
    let updates: Vec<&Value> = msgs
        .iter()
        .filter(|v| call_of("nap", "TOOL_UPDATE")(v))
        .collect();
    assert_eq!(updates[0]["payload"]["status"], "RUNNING");
    let progress: Vec<f64> = updates
        .iter()
        .filter_map(|u| u["payload"]["progress"].as_f64())
        .collect();
    assert!(progress.len() >= 3, "progress reported: {progress:?}");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert!(progress.iter().all(|p| (0.0..=100.0).contains(p)));
    let done = msgs.last().unwrap();
    assert_eq!(done["payload"]["status"], "OK");
    assert_eq!(done["payload"]["result"], json!({"slept_ms": 400}));
    assert!(elapsed >= ms(380), "slept only {elapsed:?}");
}

on_transports!(tool_sleep, tool_sleep_progress);

async fn tool_cancel(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "long-nap", "tool": "sleep", "params": {"ms": 20000}}),
    )
    .await;
    c.recv_where(call_of("long-nap", "TOOL_UPDATE")).await;
    tokio::time::sleep(ms(100)).await;
    let t0 = Instant::now();
    c.send_msg(
        "USER",
        "TOOL_CANCEL",
        json!({"call_id": "long-nap", "reason": "changed my mind"}),
    )
    .await;
    let done = c.recv_where(call_of("long-nap", "TOOL_DONE")).await;
    assert!(t0.elapsed() < ms(1000));
    assert_eq!(done["payload"]["status"], "CANCELLED", "{done}");
}

on_transports!(tool_cancel_mid_sleep, tool_cancel);

// ---------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------

async fn run_cancel(kind: Kind) {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(50)).await;
    let mut c = srv.connect(kind).await;
    let words: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
    c.say(&words.join(" ")).await;
    let started = c.recv_type("RUN_STARTED").await;
    let run_id = started["run_id"].as_str().unwrap().to_string();
    c.recv_type("MESSAGE_PART").await;
    let cancel = c
        .send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    let msgs = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let fin = msgs.last().unwrap();
    assert_eq!(fin["payload"]["status"], "CANCELLED", "{fin}");
    assert_eq!(fin["payload"]["run_id"], run_id);
    assert_eq!(fin["run_id"], run_id);
    let after = c.collect_for(ms(300)).await;
    assert!(
        !after
            .iter()
            .any(|v| matches!(ty(v), "MESSAGE_PART" | "MESSAGE_END")),
        "output after RUN_FINISHED: {after:?}"
    );
    let parts = c.log.iter().filter(|v| ty(v) == "MESSAGE_PART").count();
    assert!(parts < words.len(), "the run was stopped: {parts} parts");
    assert!(!c.log.iter().any(|v| ty(v) == "ERROR"), "{:?}", c.log);
    let _ = cancel;
    assert_contiguous(&c.log);
}

on_transports!(run_cancel_mid_stream, run_cancel);

async fn run_cancel_unknown(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let cancel = c
        .send_msg("USER", "RUN_CANCEL", json!({"run_id": "no-such-run"}))
        .await;
    let e = expect_described_error(&mut c, "RUN_NOT_FOUND").await;
    assert_eq!(e["payload"]["related_id"], cancel["id"]);
}

on_transports!(run_cancel_unknown_run, run_cancel_unknown);

async fn run_limit(kind: Kind) {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(50)).await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"max_concurrent_runs": 1});
    c.send_msg("SYSTEM", "HAI", hai).await;
    c.say("first message with several words").await;
    c.say("second").await;
    let msgs = c
        .collect_until(|v| ty(v) == "ERROR" && v["payload"]["code"] == "RUN_LIMIT_EXCEEDED")
        .await;
    assert!(
        !msgs.iter().any(|v| ty(v) == "RUN_FINISHED"),
        "the limit is hit while the first run is open"
    );
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let more = c.collect_for(ms(200)).await;
    assert!(!more.iter().any(|v| ty(v) == "RUN_STARTED"), "{more:?}");
    assert_eq!(c.log.iter().filter(|v| ty(v) == "RUN_STARTED").count(), 1);
    // Once the run is over, a new one may open.
    c.say("third").await;
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["payload"]["status"], "OK");
}

on_transports!(run_limit_exceeded, run_limit);

async fn run_cancel_stops_its_tool_calls(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.send_msg("USER", "RUN_STARTED", json!({"run_id": "client-run"}))
        .await;
    let mut call = c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "in-run", "tool": "sleep", "params": {"ms": 20000}}),
    );
    call["run_id"] = json!("client-run");
    c.send(&call).await;
    let upd = c.recv_where(call_of("in-run", "TOOL_UPDATE")).await;
    assert_eq!(upd["run_id"], "client-run");
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": "client-run"}))
        .await;
    let done = c.recv_where(call_of("in-run", "TOOL_DONE")).await;
    assert_eq!(done["payload"]["status"], "CANCELLED");
    c.collect_for(ms(200)).await;
    let of_run: Vec<&Value> = c
        .log
        .iter()
        .filter(|v| v["run_id"] == "client-run")
        .collect();
    let last = of_run.last().unwrap();
    assert_eq!(
        ty(last),
        "RUN_FINISHED",
        "RUN_FINISHED closes the run: nothing of it may follow; got {of_run:?}"
    );
    assert_eq!(last["payload"]["status"], "CANCELLED");
}

#[tokio::test]
async fn run_cancel_stops_its_tool_calls_websocket() {
    run_cancel_stops_its_tool_calls(Kind::Ws).await
}
