//! The protocol rules of the wire contract for a session's ordinary life, checked identically
//! on every transport (WebSocket at `/haip/websocket` and `/` where it matters, SSE +
//! `POST /haip/messages`, NDJSON HTTP streaming): the server speaks first, a client written
//! from the HAIP docs, a whole echo run, input aliases, audio as base64.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The server speaks first
// ---------------------------------------------------------------------------------------

async fn server_speaks_first(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    if kind == Kind::Stream {
        // The NDJSON response starts once the first request line is in.
        c.ping("first").await;
    }
    let hai = c.recv().await;
    assert_eq!(ty(&hai), "HAI", "first message: {hai}");
    assert_eq!(chan(&hai), "SYSTEM");
    assert_eq!(hai["seq"], "1");
    let session = hai["session"].as_str().expect("session");
    assert_eq!(
        session.len(),
        36,
        "server session ids are UUIDv4: {session}"
    );
    assert!(hai.get("ack").is_none(), "nothing processed yet: {hai}");
    let ts: u64 = hai["ts"].as_str().unwrap().parse().unwrap();
    assert!(ts.abs_diff(now_ms()) < 60_000, "ts is ms since the epoch");
    assert!(!hai["id"].as_str().unwrap().is_empty());
    let p = &hai["payload"];
    assert_eq!(p["haip_version"], "1.1.2");
    assert_eq!(p["accept_major"], json!([1]));
    let mut events: Vec<&str> = p["accept_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    events.sort();
    let mut all = ALL_EVENTS.to_vec();
    all.sort();
    assert_eq!(events, all, "the server accepts all 22 types");
    let caps = &p["capabilities"];
    assert_eq!(caps["binary_frames"], json!(kind.is_ws()));
    assert_eq!(caps["signed_envelopes"], json!(false));
    assert_eq!(caps["max_concurrent_runs"], json!(10));
    assert_eq!(caps["flow_control"]["initial_credit_messages"], json!(1000));
    assert_eq!(caps["flow_control"]["initial_credit_bytes"], json!(1048576));

    let list = c.recv().await;
    assert_eq!(ty(&list), "TOOL_LIST", "second message: {list}");
    assert_eq!(list["seq"], "2");
    assert_eq!(list["session"], session);
    let names: Vec<&str> = list["payload"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "add", "sleep"]);
    for t in list["payload"]["tools"].as_array().unwrap() {
        assert!(t["description"].is_string(), "{t}");
    }
    if kind == Kind::Stream {
        let pong = c.recv().await;
        assert_eq!(ty(&pong), "PONG");
        assert_eq!(pong["payload"]["nonce"], "first");
        assert_eq!(pong["seq"], "3");
        assert_eq!(pong["ack"], "1");
    }
}

on_transports!(speaks_first, server_speaks_first, [
    websocket => Kind::Ws,
    websocket_root => Kind::WsRoot,
    sse => Kind::Sse,
    stream => Kind::Stream,
]);

// ---------------------------------------------------------------------------------------
// A client written from the HAIP docs, with an event filter
// ---------------------------------------------------------------------------------------

async fn seed_client(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let accepted = ["HAI", "MESSAGE_START", "MESSAGE_PART", "MESSAGE_END"];
    c.send(&envelope(
        "handshake-1",
        "test-session",
        1,
        "SYSTEM",
        "HAI",
        hai_payload(&accepted),
    ))
    .await;
    c.send(&envelope(
        "msg-start-1",
        "test-session",
        2,
        "USER",
        "MESSAGE_START",
        json!({"message_id": "user-msg-1", "text": "hello big world"}),
    ))
    .await;
    c.send(&envelope(
        "msg-end-1",
        "test-session",
        3,
        "USER",
        "MESSAGE_END",
        json!({"message_id": "user-msg-1"}),
    ))
    .await;
    let mut got = c.collect_until(|v| ty(v) == "MESSAGE_END").await;
    got.extend(c.collect_for(ms(300)).await);

    assert_eq!(ty(&got[0]), "HAI");
    assert_eq!(got[0]["seq"], "1");
    // TOOL_LIST went out with the server's HAI, before the client's HAI was read.
    assert_eq!(ty(&got[1]), "TOOL_LIST");
    assert_eq!(got[1]["seq"], "2");
    let rest = &got[2..];
    assert_eq!(
        types(rest),
        [
            "MESSAGE_START",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_END"
        ],
        "only accepted types after the client's HAI: {}",
        Value::from(rest.to_vec())
    );
    let start = &rest[0];
    assert_eq!(chan(start), "AGENT");
    assert_eq!(start["payload"]["author"], "echo");
    let mid = start["payload"]["message_id"].as_str().unwrap();
    assert_ne!(mid, "user-msg-1", "the answer is a new message");
    let parts: Vec<&str> = rest[1..4]
        .iter()
        .map(|p| {
            assert_eq!(p["payload"]["message_id"], mid);
            p["payload"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(parts, ["hello ", "big ", "world"]);
    assert_eq!(rest[4]["payload"]["message_id"], mid);
    assert_eq!(rest[4]["payload"]["tokens"], "3");
    for m in rest {
        assert_eq!(
            m["ack"], "3",
            "ack is the highest client seq processed: {m}"
        );
    }
    for m in &c.log {
        let t = ty(m);
        assert!(
            accepted.contains(&t) || t == "ERROR" || (t == "TOOL_LIST" && m["seq"] == "2"),
            "a type the client did not accept: {m}"
        );
    }
    assert_eq!(assert_contiguous(&c.log), 7);
}

on_transports!(seed_style_client, seed_client, [
    websocket => Kind::Ws,
    websocket_root => Kind::WsRoot,
    sse => Kind::Sse,
    stream => Kind::Stream,
]);

// ---------------------------------------------------------------------------------------
// Without a filter: the whole run, with run_id and ack
// ---------------------------------------------------------------------------------------

async fn echo_run_without_filter(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let start = c.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": "u1", "text": "one two three"}),
    );
    let end = c.msg("USER", "MESSAGE_END", json!({"message_id": "u1"}));
    let r1 = c.send(&start).await;
    let r2 = c.send(&end).await;
    if kind == Kind::Sse {
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert_eq!(r1.status, 200);
        assert_eq!(r1.body, json!({"status": "ok", "accepted": 1, "ack": "1"}));
        assert_eq!(r2.body, json!({"status": "ok", "accepted": 1, "ack": "2"}));
    }
    let got = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let agent = agent_msgs(&got);
    assert_eq!(types(&agent), echo_run_types(3));
    let run_id = agent[0]["run_id"].as_str().expect("run_id on RUN_STARTED");
    assert_eq!(agent[0]["payload"]["run_id"], run_id);
    for m in &agent {
        assert_eq!(
            m["run_id"], run_id,
            "every message of the run carries it: {m}"
        );
        assert_eq!(m["ack"], "2", "{m}");
    }
    let fin = agent.last().unwrap();
    assert_eq!(fin["payload"]["status"], "OK");
    assert_eq!(fin["payload"]["run_id"], run_id);
    let text: String = agent[2..5]
        .iter()
        .map(|p| p["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "one two three");
    assert_eq!(agent[5]["payload"]["tokens"], "3");
    // Anything else is SYSTEM housekeeping (credit given back, ...).
    for m in got.iter().filter(|v| chan(v) != "AGENT") {
        assert_eq!(chan(m), "SYSTEM", "{m}");
        assert_ne!(ty(m), "ERROR", "{m}");
    }
    c.collect_for(ms(150)).await;
    assert_contiguous(&c.log);
}

on_transports!(run_without_filter, echo_run_without_filter);

// ---------------------------------------------------------------------------------------
// Input aliases and multi-part user messages
// ---------------------------------------------------------------------------------------

async fn text_message_aliases(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.send_msg(
        "USER",
        "TEXT_MESSAGE_START",
        json!({"message_id": "alias", "text": "hello "}),
    )
    .await;
    c.send_msg(
        "USER",
        "TEXT_MESSAGE_PART",
        json!({"message_id": "alias", "text": "big "}),
    )
    .await;
    c.send_msg(
        "USER",
        "MESSAGE_PART",
        json!({"message_id": "alias", "text": "world"}),
    )
    .await;
    c.send_msg("USER", "TEXT_MESSAGE_END", json!({"message_id": "alias"}))
        .await;
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let parts = part_texts(&run);
    assert_eq!(parts, ["hello ", "big ", "world"]);
    assert!(!c.log.iter().any(|v| ty(v) == "ERROR"), "{:?}", c.log);
}

on_transports!(input_aliases_and_multipart, text_message_aliases);

// ---------------------------------------------------------------------------------------
// Audio as base64 (every transport)
// ---------------------------------------------------------------------------------------

async fn audio_base64_echo(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let bytes: Vec<u8> = (0..=255u8).collect();
    c.send_msg(
        "USER",
        "AUDIO_CHUNK",
        json!({"message_id": "aud-1", "mime": "audio/pcm;rate=16000", "data": b64(&bytes)}),
    )
    .await;
    let echo = c.recv_type("AUDIO_CHUNK").await;
    assert_eq!(chan(&echo), "AGENT");
    assert_eq!(echo["payload"]["mime"], "audio/pcm;rate=16000");
    assert_eq!(unb64(echo["payload"]["data"].as_str().unwrap()), bytes);
    assert!(echo.get("bin_len").is_none());
}

on_transports!(audio_base64, audio_base64_echo);

/// Every session's HAI and TOOL_LIST share their serialized payload on the server, but each
/// is that session's own message: its own id, session and seq 1 and 2.
#[tokio::test]
async fn each_session_greeting_is_its_own_message() {
    let srv = Server::start().await;
    let mut ids = std::collections::HashSet::new();
    let mut sessions = std::collections::HashSet::new();
    for kind in [Kind::Ws, Kind::Ws, Kind::Sse, Kind::Stream] {
        let mut c = srv.connect(kind).await;
        if kind == Kind::Stream {
            c.ping("open").await;
        }
        let hai = c.recv_type("HAI").await;
        let tools = c.recv_type("TOOL_LIST").await;
        assert_eq!((seq(&hai), seq(&tools)), (1, 2), "{kind:?}");
        assert_eq!(hai["session"], tools["session"]);
        assert!(sessions.insert(hai["session"].as_str().unwrap().to_string()));
        for m in [&hai, &tools] {
            assert!(ids.insert(m["id"].as_str().unwrap().to_string()), "{m}");
        }
        assert!(tools["payload"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty()));
        assert_eq!(
            hai["payload"]["capabilities"]["binary_frames"],
            json!(kind == Kind::Ws),
            "{kind:?}"
        );
    }
}
