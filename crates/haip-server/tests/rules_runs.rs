//! Rules of contract section 5 on runs: the run limit, runs the client opens, RUN_CANCEL.
//!
//! They check what the other test files do not check in a way that would fail if the rule
//! were broken. Each check is one async function run once per transport where it applies.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

// =======================================================================================
// Section 5: runs
// =======================================================================================

/// The run limit is min(server max_concurrent_runs, client's): server 2, client 5 -> 2.
async fn run_limit_is_the_smaller(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.max_concurrent_runs = 2;
        c.echo_word_delay = ms(40);
    })
    .await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"max_concurrent_runs": 5});
    c.send_msg("SYSTEM", "HAI", hai).await;
    let server_hai = c.recv_type("HAI").await;
    assert_eq!(
        server_hai["payload"]["capabilities"]["max_concurrent_runs"],
        2
    );
    c.say("first run of several words").await;
    c.say("second run of several words").await;
    c.say("third").await;
    c.collect_until(|v| ty(v) == "ERROR" && v["payload"]["code"] == "RUN_LIMIT_EXCEEDED")
        .await;
    until_logged(&mut c, "RUN_FINISHED", 2, |v| ty(v) == "RUN_FINISHED").await;
    c.collect_for(ms(150)).await;
    assert_eq!(
        count_logged(&c, |v| ty(v) == "RUN_STARTED"),
        2,
        "{:?}",
        c.log
    );
    for fin in c.log.iter().filter(|v| ty(v) == "RUN_FINISHED") {
        assert_eq!(fin["payload"]["status"], "OK");
    }
    assert_eq!(logged_errors(&c).len(), 1, "{:?}", logged_errors(&c));
}

on_transports!(run_limit_min_of_both, run_limit_is_the_smaller);

/// Runs the client opens count towards the limit; RUN_FINISHED from the client closes one.
async fn client_runs_count(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"max_concurrent_runs": 1});
    c.send_msg("SYSTEM", "HAI", hai).await;
    let run_msg = |c: &mut Conn, t: &str, run: &str, payload: Value| {
        let mut v = c.msg("USER", t, payload);
        v["run_id"] = json!(run);
        v
    };
    let r1 = run_msg(&mut c, "RUN_STARTED", "r1", json!({"run_id": "r1"}));
    c.send(&r1).await;
    let r2 = run_msg(&mut c, "RUN_STARTED", "r2", json!({"run_id": "r2"}));
    c.send(&r2).await;
    let e = expect_error(&mut c, "RUN_LIMIT_EXCEEDED").await;
    assert_eq!(e["payload"]["related_id"], r2["id"]);
    // The agent cannot open a run either while r1 is open.
    c.say("blocked").await;
    expect_error(&mut c, "RUN_LIMIT_EXCEEDED").await;
    let fin = run_msg(
        &mut c,
        "RUN_FINISHED",
        "r1",
        json!({"run_id": "r1", "status": "OK"}),
    );
    c.send(&fin).await;
    c.say("now it may run").await;
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["payload"]["status"], "OK");
    assert_eq!(logged_errors(&c).len(), 2, "{:?}", logged_errors(&c));
}

on_transports!(client_opened_runs_count, client_runs_count);

/// RUN_CANCEL twice in a row stops the echo once (one RUN_FINISHED CANCELLED); cancelling a
/// run that is over is RUN_NOT_FOUND and sends no second RUN_FINISHED.
async fn run_cancel_once(kind: Kind) {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(30)).await;
    let mut c = srv.connect(kind).await;
    let words: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
    c.say(&words.join(" ")).await;
    let run_id = c.recv_type("RUN_STARTED").await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.recv_type("MESSAGE_PART").await;
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    let fin = c.recv_type("RUN_FINISHED").await;
    assert_eq!(fin["payload"]["status"], "CANCELLED");
    c.collect_for(ms(300)).await;
    let late = c
        .send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    let e = c
        .recv_where(|v| ty(v) == "ERROR" && v["payload"]["related_id"] == late["id"])
        .await;
    assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND", "{e}");
    assert!(count_logged(&c, |v| ty(v) == "MESSAGE_PART") < words.len());

    // A run that finished normally.
    c.say("x y").await;
    let done = c.recv_type("RUN_FINISHED").await;
    assert_eq!(done["payload"]["status"], "OK");
    let ok_run = done["run_id"].as_str().unwrap().to_string();
    let late = c
        .send_msg("USER", "RUN_CANCEL", json!({"run_id": ok_run}))
        .await;
    let e = c
        .recv_where(|v| ty(v) == "ERROR" && v["payload"]["related_id"] == late["id"])
        .await;
    assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND", "{e}");
    c.collect_for(ms(150)).await;
    for rid in [&run_id, &ok_run] {
        assert_eq!(
            count_logged(&c, |v| ty(v) == "RUN_FINISHED"
                && v["run_id"] == rid.as_str()),
            1,
            "one RUN_FINISHED per run: {:?}",
            c.log
        );
    }
    // The second RUN_CANCEL of the first run may have been accepted or refused, nothing else.
    for e in logged_errors(&c) {
        assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND", "{e}");
    }
}

on_transports!(run_cancel_finishes_once, run_cancel_once);

/// RUN_CANCEL stops a running sleep tool call of the run (TOOL_DONE CANCELLED well before the
/// sleep would end) and RUN_FINISHED CANCELLED closes the run last. protocol_tools_runs.rs
/// checks this on WebSocket only.
async fn run_cancel_stops_sleep(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut start = c.msg("USER", "RUN_STARTED", json!({"run_id": "nap-run"}));
    start["run_id"] = json!("nap-run");
    c.send(&start).await;
    let mut call = c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "nap", "tool": "sleep", "params": {"ms": 20000}}),
    );
    call["run_id"] = json!("nap-run");
    c.send(&call).await;
    c.recv_where(call_of("nap", "TOOL_UPDATE")).await;
    tokio::time::sleep(ms(100)).await;
    let t0 = Instant::now();
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": "nap-run"}))
        .await;
    let done = c.recv_where(call_of("nap", "TOOL_DONE")).await;
    assert!(t0.elapsed() < ms(1000), "stopped mid-way");
    assert_eq!(done["payload"]["status"], "CANCELLED");
    c.collect_for(ms(200)).await;
    let of_run: Vec<&Value> = c.log.iter().filter(|v| v["run_id"] == "nap-run").collect();
    let last = of_run.last().unwrap();
    assert_eq!(ty(last), "RUN_FINISHED", "{of_run:?}");
    assert_eq!(last["payload"]["status"], "CANCELLED");
    assert_eq!(
        count_logged(&c, |v| ty(v) == "RUN_FINISHED"),
        1,
        "{:?}",
        c.log
    );
}

on_transports!(run_cancel_stops_a_sleep_call, run_cancel_stops_sleep, [
    sse => Kind::Sse,
    stream => Kind::Stream,
]);
