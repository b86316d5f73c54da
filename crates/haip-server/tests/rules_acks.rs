//! Rules of contract section 5 on sequencing and acks: the client's seq baseline, ack on every
//! message, gaps held and processed in order.
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
// Section 5: sequencing and acks
// =======================================================================================

/// "The first seq a client sends on a fresh session sets the baseline": 7 works as well as
/// 0 or 1, and a seq below it counts as already processed.
async fn seq_baseline_seven(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.seq = 6;
    c.ping("seven").await;
    let pong = c.recv_type("PONG").await;
    assert_eq!(pong["payload"]["nonce"], "seven");
    assert_eq!(pong["ack"], "7");
    c.ping("eight").await;
    assert_eq!(c.recv_type("PONG").await["ack"], "8");
    c.send(&envelope(
        "below",
        "test-session",
        5,
        "SYSTEM",
        "PING",
        json!({"nonce": "five"}),
    ))
    .await;
    c.ping("nine").await;
    let pong = c.recv_type("PONG").await;
    assert_eq!(
        pong["payload"]["nonce"], "nine",
        "seq 5 is dropped silently"
    );
    assert_eq!(pong["ack"], "9");
    assert!(logged_errors(&c).is_empty(), "{:?}", c.log);
}

on_transports!(seq_baseline_is_the_first_seq, seq_baseline_seven);

/// "The server sets ack on what it sends to the highest client seq it has processed in
/// order": on every kind of message (PONG, TOOL_*, ERROR, TOOL_LIST, the run, FLOW_UPDATE),
/// never decreasing, never beyond what the client sent, and covering the request each answer
/// answers. A replayed copy keeps its original ack.
async fn ack_on_everything(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await; // 1
    c.ping("p").await; // 2
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "call-add", "tool": "add", "params": {"a": 1, "b": 2}}),
    )
    .await; // 3
    c.recv_where(call_of("call-add", "TOOL_DONE")).await;
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "call-nope", "tool": "nope", "params": {}}),
    )
    .await; // 4
    expect_error(&mut c, "TOOL_NOT_FOUND").await;
    c.send_msg("SYSTEM", "TOOL_LIST", json!({"tools": []}))
        .await; // 5
    c.recv_where(|v| ty(v) == "TOOL_LIST" && seq(v) > 2).await;
    c.say("a b").await; // 6, 7
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    // Credit for the USER messages comes back (delayed grant), then a replay.
    c.collect_for(ms(200)).await;
    c.send_msg(
        "SYSTEM",
        "REPLAY_REQUEST",
        json!({"from_seq": "3", "to_seq": "4"}),
    )
    .await; // 8
    c.collect_for(ms(200)).await;

    let mut newest = 0;
    let mut last_ack = 0;
    let mut first_copy = std::collections::HashMap::new();
    for m in &c.log {
        let s = seq(m);
        if s <= newest {
            assert_eq!(first_copy.get(&s), Some(&m), "a replay is identical");
            continue;
        }
        newest = s;
        first_copy.insert(s, m);
        if s <= 2 {
            assert!(
                m.get("ack").is_none(),
                "sent before anything was processed: {m}"
            );
            continue;
        }
        let a = decimal(&m["ack"]);
        assert!(a >= last_ack, "ack went back from {last_ack}: {m}");
        assert!(a <= 8, "ack beyond the last client seq: {m}");
        last_ack = a;
    }
    let ack_of = |pred: &dyn Fn(&Value) -> bool| {
        let m = c
            .log
            .iter()
            .find(|v| pred(v))
            .unwrap_or_else(|| panic!("missing in {:?}", c.log));
        decimal(&m["ack"])
    };
    assert!(ack_of(&|v| ty(v) == "PONG") >= 2);
    assert!(ack_of(&call_of("call-add", "TOOL_UPDATE")) >= 3);
    assert!(ack_of(&call_of("call-add", "TOOL_DONE")) >= 3);
    assert!(ack_of(&|v| ty(v) == "ERROR") >= 4);
    assert!(ack_of(&|v| ty(v) == "TOOL_LIST" && seq(v) > 2) >= 5);
    assert!(ack_of(&|v| ty(v) == "RUN_STARTED") >= 7);
    assert!(ack_of(&|v| ty(v) == "RUN_FINISHED") >= 7);
    let grant = c
        .log
        .iter()
        .find(|v| ty(v) == "FLOW_UPDATE")
        .unwrap_or_else(|| panic!("credit is handed back as it is consumed: {:?}", c.log));
    assert_eq!(chan(grant), "SYSTEM");
    assert_eq!(grant["payload"]["channel"], "USER", "{grant}");
    assert!(decimal(&grant["ack"]) >= 3, "{grant}");
    assert_contiguous(&c.log);
}

on_transports!(ack_on_every_message, ack_on_everything);

// =======================================================================================
// Section 5: gaps and duplicates
// =======================================================================================

/// A gap of three messages arriving in reverse order (and one of them twice): all are held,
/// REPLAY_REQUEST asks for the first missing seq after ~500 ms while ack stays at the last
/// seq processed in order, and once the gap fills they are processed in seq order, once.
async fn gap_held_then_processed_in_order(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let part = |c: &mut Conn, text: &str| {
        c.msg(
            "USER",
            "MESSAGE_PART",
            json!({"message_id": "gap", "text": text}),
        )
    };
    let start = c.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": "gap", "text": "alpha "}),
    ); // 1
    let beta = part(&mut c, "beta "); // 2
    let gamma = part(&mut c, "gamma "); // 3
    let delta = part(&mut c, "delta"); // 4
    let end = c.msg("USER", "MESSAGE_END", json!({"message_id": "gap"})); // 5
    let after = c.msg("SYSTEM", "PING", json!({"nonce": "after"})); // 6
    c.send(&start).await;
    let t0 = Instant::now();
    for m in [&end, &delta, &gamma, &delta] {
        c.send(m).await;
    }
    let msgs = c.collect_until(|v| ty(v) == "REPLAY_REQUEST").await;
    let waited = t0.elapsed();
    assert!(
        waited >= ms(400) && waited <= ms(1500),
        "asked after {waited:?}"
    );
    assert!(
        !msgs.iter().any(|v| chan(v) == "AGENT"),
        "the held messages wait for seq 2: {msgs:?}"
    );
    let rr = msgs.last().unwrap();
    assert_eq!(chan(rr), "SYSTEM");
    assert_eq!(rr["payload"]["from_seq"], "2", "{rr}");
    if let Some(to) = rr["payload"].get("to_seq") {
        assert_eq!(to, "2", "{rr}");
    }
    assert_eq!(
        rr["ack"], "1",
        "held messages are not processed in order yet: {rr}"
    );
    c.send(&beta).await;
    c.send(&after).await;
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let parts = part_texts(&run);
    assert_eq!(parts, ["alpha ", "beta ", "gamma ", "delta"], "seq order");
    c.collect_for(ms(150)).await;
    let pong = c
        .log
        .iter()
        .find(|v| ty(v) == "PONG")
        .expect("PONG for seq 6");
    assert_eq!(pong["ack"], "6");
    assert_eq!(
        count_logged(&c, |v| ty(v) == "RUN_STARTED"),
        1,
        "{:?}",
        c.log
    );
    assert!(logged_errors(&c).is_empty(), "{:?}", c.log);
    assert_contiguous(&c.log);
}

on_transports!(gap_in_order_once_filled, gap_held_then_processed_in_order);

/// "The server holds later messages (up to the replay window)": with a window of 4, four
/// messages beyond a gap are held without complaint and processed once it fills.
async fn gap_holds_up_to_the_window(kind: Kind) {
    let srv = Server::start_with(|c| c.replay_window_size = 4).await;
    let mut c = srv.connect(kind).await;
    let pings: Vec<Value> = (1..=6)
        .map(|i| c.msg("SYSTEM", "PING", json!({"nonce": format!("n{i}")})))
        .collect();
    c.send(&pings[0]).await;
    c.recv_type("PONG").await;
    for p in &pings[2..] {
        c.send(p).await;
    }
    let held = c.collect_for(ms(150)).await;
    assert!(
        !held.iter().any(|v| matches!(ty(v), "PONG" | "ERROR")),
        "{held:?}"
    );
    c.send(&pings[1]).await;
    let mut nonces = Vec::new();
    while nonces.len() < 5 {
        let pong = c.recv_type("PONG").await;
        nonces.push(pong["payload"]["nonce"].as_str().unwrap().to_string());
    }
    assert_eq!(nonces, ["n2", "n3", "n4", "n5", "n6"]);
    assert!(logged_errors(&c).is_empty(), "{:?}", c.log);
}

on_transports!(gap_held_within_window, gap_holds_up_to_the_window);
