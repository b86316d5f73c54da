//! The protocol rules of the wire contract on sequencing, checked identically on every
//! transport: PING and the heartbeat, duplicates, gaps, REPLAY_REQUEST, the client's seq
//! baseline, and a resume of an unknown session.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// PING, duplicates, gaps
// ---------------------------------------------------------------------------------------

async fn ping_pong(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.ping("nonce-42").await;
    let pong = c.recv_type("PONG").await;
    assert_eq!(pong["payload"]["nonce"], "nonce-42");
    assert_eq!(chan(&pong), "SYSTEM");
    assert_eq!(pong["ack"], "1");
}

on_transports!(ping, ping_pong);

async fn duplicate_dropped(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let start = c.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": "dup", "text": "only once"}),
    );
    let end = c.msg("USER", "MESSAGE_END", json!({"message_id": "dup"}));
    c.send(&start).await;
    c.send(&end).await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    c.send(&start).await;
    c.send(&end).await;
    let after = c.collect_for(ms(300)).await;
    assert!(
        !after.iter().any(|v| chan(v) == "AGENT" || ty(v) == "ERROR"),
        "duplicates are dropped silently: {after:?}"
    );
    c.ping("after-dups").await;
    let pong = c.recv_type("PONG").await;
    assert_eq!(pong["ack"], "3");
    assert_eq!(c.log.iter().filter(|v| ty(v) == "RUN_STARTED").count(), 1);
}

on_transports!(duplicate_seq_dropped, duplicate_dropped);

async fn gap_replay_request(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let one = c.msg("SYSTEM", "PING", json!({"nonce": "one"}));
    let two = c.msg("SYSTEM", "PING", json!({"nonce": "two"}));
    let three = c.msg("SYSTEM", "PING", json!({"nonce": "three"}));
    c.send(&one).await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "one");
    let t0 = Instant::now();
    c.send(&three).await;
    let msgs = c.collect_until(|v| ty(v) == "REPLAY_REQUEST").await;
    let waited = t0.elapsed();
    assert!(
        !msgs.iter().any(|v| ty(v) == "PONG"),
        "seq 3 is held until 2 arrives: {msgs:?}"
    );
    assert!(
        waited >= ms(400),
        "asked after {waited:?}, expected ~500 ms"
    );
    assert!(
        waited <= ms(1500),
        "asked after {waited:?}, expected ~500 ms"
    );
    let rr = msgs.last().unwrap();
    assert_eq!(chan(rr), "SYSTEM");
    assert_eq!(rr["payload"]["from_seq"], "2");
    if let Some(to) = rr["payload"].get("to_seq") {
        assert_eq!(to, "2");
    }
    c.send(&two).await;
    let a = c.recv_type("PONG").await;
    let b = c.recv_type("PONG").await;
    assert_eq!(a["payload"]["nonce"], "two");
    assert_eq!(b["payload"]["nonce"], "three");
    assert_eq!(b["ack"], "3");
}

on_transports!(gap_then_replay_request, gap_replay_request, [
    websocket => Kind::Ws,
    stream => Kind::Stream,
]);

/// SSE: the held message arrives by POST, nothing is queued for the stream, and the gap
/// timer of the SSE connection is not re-armed.
#[tokio::test]
async fn gap_then_replay_request_sse() {
    gap_replay_request(Kind::Sse).await
}

async fn seq_baseline_zero(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.send(&envelope(
        "zero",
        "s",
        0,
        "SYSTEM",
        "PING",
        json!({"nonce": "0"}),
    ))
    .await;
    assert_eq!(c.recv_type("PONG").await["ack"], "0");
    c.send(&envelope(
        "one",
        "s",
        1,
        "SYSTEM",
        "PING",
        json!({"nonce": "1"}),
    ))
    .await;
    let pong = c.recv_type("PONG").await;
    assert_eq!(pong["payload"]["nonce"], "1");
    assert_eq!(pong["ack"], "1");
}

on_transports!(client_seq_may_start_at_zero, seq_baseline_zero);

async fn resume_unknown_at_connect(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv
        .connect_with(kind, Opts::resume("no-such-session", 0))
        .await;
    if kind == Kind::Stream {
        c.ping("opening").await;
    }
    let e = c.recv().await;
    assert_eq!(ty(&e), "ERROR", "RESUME_FAILED comes first: {e}");
    assert_eq!(e["payload"]["code"], "RESUME_FAILED");
    let hai = c.recv().await;
    assert_eq!(ty(&hai), "HAI", "then a fresh session: {hai}");
    assert_eq!(hai["seq"], "1");
    assert_ne!(hai["session"], "no-such-session");
    assert!(hai["payload"].get("last_rx_seq").is_none());
    assert_eq!(ty(&c.recv().await), "TOOL_LIST");
    if kind == Kind::Sse {
        assert_eq!(c.sse_ids[0], None, "the unsequenced ERROR has no event id");
        assert_eq!(
            c.sse_ids[1].as_deref(),
            Some(format!("{}:1", hai["session"].as_str().unwrap()).as_str())
        );
    }
    // The fresh session works.
    c.say("fresh").await;
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["session"], hai["session"]);
}

on_transports!(resume_unknown_session, resume_unknown_at_connect);

// ---------------------------------------------------------------------------------------
// Client REPLAY_REQUEST and the heartbeat
// ---------------------------------------------------------------------------------------

async fn client_replay_request(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.say("replay me please").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let originals: Vec<Value> = c
        .log
        .iter()
        .filter(|v| (3..=5).contains(&seq(v)))
        .cloned()
        .collect();
    assert_eq!(originals.len(), 3);
    c.send_msg(
        "SYSTEM",
        "REPLAY_REQUEST",
        json!({"from_seq": "3", "to_seq": "5"}),
    )
    .await;
    let mut replayed = Vec::new();
    while replayed.len() < 3 {
        let m = c.recv().await;
        if (3..=5).contains(&seq(&m)) {
            replayed.push(m);
        }
    }
    assert_eq!(
        replayed, originals,
        "re-sent with their original id, seq and ts"
    );
}

on_transports!(replay_request_from_client, client_replay_request);

async fn replay_request_too_old(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.replay_window_size = 2;
        c.replay_window_time = ms(0);
    })
    .await;
    let mut c = srv.connect(kind).await;
    c.say("a b c").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    tokio::time::sleep(ms(10)).await;
    let req = c
        .send_msg("SYSTEM", "REPLAY_REQUEST", json!({"from_seq": "1"}))
        .await;
    let e = expect_described_error(&mut c, "REPLAY_TOO_OLD").await;
    assert_eq!(e["payload"]["related_id"], req["id"]);
}

on_transports!(replay_request_too_old_is_refused, replay_request_too_old);

async fn heartbeat_answered(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.heartbeat_interval = ms(150);
        c.heartbeat_timeout = ms(200);
    })
    .await;
    let mut c = srv.connect(kind).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await;
    for _ in 0..4 {
        let ping = c.recv_type("PING").await;
        assert_eq!(chan(&ping), "SYSTEM");
        let nonce = ping["payload"]["nonce"].clone();
        c.send_msg("SYSTEM", "PONG", json!({"nonce": nonce})).await;
    }
    c.say("alive").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
}

on_transports!(heartbeat_answered_keeps_open, heartbeat_answered, [
    websocket => Kind::Ws,
    stream => Kind::Stream,
]);

async fn heartbeat_unanswered(kind: Kind) {
    heartbeat_unanswered_with(kind, 300, 150).await
}

async fn heartbeat_unanswered_with(kind: Kind, interval_ms: u64, timeout_ms: u64) {
    let srv = Server::start_with(|c| {
        c.heartbeat_interval = ms(interval_ms);
        c.heartbeat_timeout = ms(timeout_ms);
    })
    .await;
    let mut c = srv.connect(kind).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await;
    let session = c.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    c.recv_type("PING").await;
    c.expect_close().await;
    let last = c.log.iter().map(seq).max().unwrap();
    // The session is kept.
    let mut again = srv
        .connect_with(Kind::Ws, Opts::resume(&session, last))
        .await;
    let confirm = again.recv_type("HAI").await;
    assert_eq!(confirm["session"], session.as_str());
    assert_eq!(confirm["payload"]["last_rx_seq"], "1");
}

on_transports!(heartbeat_unanswered_closes, heartbeat_unanswered, [
    websocket => Kind::Ws,
    stream => Kind::Stream,
]);

/// A heartbeat_timeout longer than the interval: the first PING goes unanswered for longer
/// than the timeout, so the connection must still close.
#[tokio::test]
async fn heartbeat_timeout_longer_than_interval_still_closes() {
    heartbeat_unanswered_with(Kind::Ws, 150, 200).await
}
