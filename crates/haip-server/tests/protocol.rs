//! The protocol rules of the wire contract, checked identically on every transport:
//! WebSocket (`/haip/websocket`, and `/` where it matters), SSE + `POST /haip/messages`, and
//! NDJSON HTTP streaming. Each check is one async function run once per transport.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

/// Runs `check(kind)` as one test per transport.
macro_rules! on_transports {
    ($module:ident, $check:ident, [$($test:ident => $kind:expr),+ $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() {
                    $check($kind).await
                }
            )+
        }
    };
    ($module:ident, $check:ident) => {
        on_transports!($module, $check, [
            websocket => Kind::Ws,
            sse => Kind::Sse,
            stream => Kind::Stream,
        ]);
    };
}

fn agent_msgs(msgs: &[Value]) -> Vec<Value> {
    msgs.iter()
        .filter(|v| chan(v) == "AGENT")
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. The server speaks first
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
// 2. A client written from the HAIP docs, with an event filter
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
// 3. Without a filter: the whole run, with run_id and ack
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
    assert_eq!(
        types(&agent),
        [
            "RUN_STARTED",
            "MESSAGE_START",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_END",
            "RUN_FINISHED"
        ]
    );
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
// 4. Errors keep the connection open and other sessions unaffected
// ---------------------------------------------------------------------------------------

async fn expect_error(c: &mut Conn, code: &str) -> Value {
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], code, "{e}");
    assert_eq!(chan(&e), "SYSTEM", "{e}");
    assert!(e["payload"]["message"].is_string(), "{e}");
    e
}

async fn errors_keep_connection_open(kind: Kind) {
    let srv = Server::start().await;
    let mut other = srv
        .connect_with(kind, Opts::token(srv.token_for("bob")))
        .await;
    let mut c = srv.connect(kind).await;
    c.ping("before").await;
    c.recv_type("PONG").await;
    let next = c.seq + 1; // invalid messages are not processed: their seq is reused

    // Not JSON.
    let reply = c.send_text("{this is not json").await;
    match reply {
        // A post body that is not JSON cannot be routed: the POST itself is refused.
        Some(r) if r.status != 200 => {
            assert_eq!(r.status, 400, "{r:?}");
            assert_eq!(r.body["error"]["code"], "PROTOCOL_VIOLATION", "{r:?}");
        }
        _ => {
            let e = expect_error(&mut c, "PROTOCOL_VIOLATION").await;
            assert!(e["payload"].get("related_id").is_none_or(Value::is_null));
        }
    }

    // A required payload field is missing.
    let bad = envelope(
        "bad-missing",
        "test-session",
        next,
        "USER",
        "MESSAGE_START",
        json!({"text": "no id"}),
    );
    c.send(&bad).await;
    let e = expect_error(&mut c, "PROTOCOL_VIOLATION").await;
    assert_eq!(e["payload"]["related_id"], "bad-missing");
    assert_eq!(e["payload"]["detail"]["field"], "payload.message_id", "{e}");

    // A required envelope field is missing.
    let mut no_ts = envelope(
        "bad-no-ts",
        "test-session",
        next,
        "SYSTEM",
        "PING",
        json!({}),
    );
    no_ts.as_object_mut().unwrap().remove("ts");
    c.send(&no_ts).await;
    let e = expect_error(&mut c, "PROTOCOL_VIOLATION").await;
    assert_eq!(e["payload"]["related_id"], "bad-no-ts");
    assert_eq!(e["payload"]["detail"]["field"], "ts", "{e}");

    // A field of the wrong type (seq must be a decimal string).
    let mut num_seq = envelope("bad-seq", "test-session", next, "SYSTEM", "PING", json!({}));
    num_seq["seq"] = json!(next);
    c.send(&num_seq).await;
    let e = expect_error(&mut c, "PROTOCOL_VIOLATION").await;
    assert_eq!(e["payload"]["related_id"], "bad-seq");
    assert_eq!(e["payload"]["detail"]["field"], "seq", "{e}");

    // A malformed haip_version.
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["haip_version"] = json!("one");
    c.send(&envelope(
        "bad-hai",
        "test-session",
        next,
        "SYSTEM",
        "HAI",
        hai,
    ))
    .await;
    let e = expect_error(&mut c, "PROTOCOL_VIOLATION").await;
    assert_eq!(e["payload"]["related_id"], "bad-hai");
    assert_eq!(e["payload"]["detail"]["field"], "payload.haip_version");

    // An unknown type.
    c.send(&envelope(
        "bad-type",
        "test-session",
        next,
        "USER",
        "FOO_BAR",
        json!({}),
    ))
    .await;
    let e = expect_error(&mut c, "UNSUPPORTED_TYPE").await;
    assert_eq!(e["payload"]["related_id"], "bad-type");

    // An unknown field in a message marked crit.
    let mut crit = envelope(
        "bad-crit",
        "test-session",
        next,
        "SYSTEM",
        "PING",
        json!({}),
    );
    crit["crit"] = json!(true);
    crit["x_future_field"] = json!(1);
    c.send(&crit).await;
    let e = expect_error(&mut c, "UNSUPPORTED_TYPE").await;
    assert_eq!(e["payload"]["related_id"], "bad-crit");

    // An unknown payload field in a message marked crit.
    let mut crit = envelope(
        "bad-crit-payload",
        "test-session",
        next,
        "SYSTEM",
        "PING",
        json!({"nonce": "n", "x_future_field": 1}),
    );
    crit["crit"] = json!(true);
    c.send(&crit).await;
    let e = expect_error(&mut c, "UNSUPPORTED_TYPE").await;
    assert_eq!(e["payload"]["related_id"], "bad-crit-payload");

    // The same unknown field without crit is ignored and the message processed.
    let mut lenient = c.msg("SYSTEM", "PING", json!({"nonce": "lenient"}));
    assert_eq!(c.seq, next);
    lenient["x_future_field"] = json!(1);
    c.send(&lenient).await;
    let pong = c.recv_type("PONG").await;
    assert_eq!(pong["payload"]["nonce"], "lenient");
    assert_eq!(
        pong["ack"],
        next.to_string(),
        "no seq was consumed by the errors"
    );

    // Still fully working, and the other session saw none of it.
    c.say("still alive").await;
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["payload"]["status"], "OK");
    other.say("unaffected").await;
    let run = other.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["payload"]["status"], "OK");
    assert!(
        !other.log.iter().any(|m| ty(m) == "ERROR"),
        "errors must not leak into another session: {:?}",
        other.log
    );
    assert_contiguous(&c.log);
}

on_transports!(errors_keep_open, errors_keep_connection_open);

async fn version_incompatible(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut p = hai_payload(&ALL_EVENTS);
    p["haip_version"] = json!("2.0.0");
    p["accept_major"] = json!([2]);
    let hai = c.msg("SYSTEM", "HAI", p);
    c.send(&hai).await;
    let e = expect_error(&mut c, "VERSION_INCOMPATIBLE").await;
    assert_eq!(e["payload"]["related_id"], hai["id"]);
    assert_eq!(
        e["payload"]["detail"],
        json!({"accept_major": [1], "supported_versions": ["1.1.2"]})
    );
    let (code, _) = c.expect_close().await;
    if kind.is_ws() {
        assert_eq!(code, Some(1002), "WebSocket closes with 1002");
    } else {
        assert_eq!(code, None, "the stream ends");
    }
}

on_transports!(version_incompatible_closes, version_incompatible, [
    websocket => Kind::Ws,
    stream => Kind::Stream,
]);

/// SSE: the ERROR travels on the stream, which then ends (contract section 3: "closes
/// (WebSocket 1002, streams end)").
#[tokio::test]
async fn version_incompatible_ends_sse_stream() {
    version_incompatible(Kind::Sse).await
}

async fn too_many_violations(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let bad = |i: u32| {
        envelope(
            &format!("bad-{i}"),
            "test-session",
            1,
            "USER",
            "MESSAGE_START",
            json!({}),
        )
    };
    for i in 1..=10 {
        c.send(&bad(i)).await;
        expect_error(&mut c, "PROTOCOL_VIOLATION").await;
    }
    // Ten violations are tolerated.
    c.ping("still-open").await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "still-open");
    c.send(&bad(11)).await;
    expect_error(&mut c, "PROTOCOL_VIOLATION").await;
    let (code, _) = c.expect_close().await;
    if kind.is_ws() {
        assert_eq!(code, Some(1008));
    } else {
        assert_eq!(code, None, "the stream ends");
    }
}

on_transports!(violations_close, too_many_violations, [
    websocket => Kind::Ws,
    stream => Kind::Stream,
]);

/// SSE: the violations are posted, but the connection they count against is the stream.
#[tokio::test]
async fn too_many_violations_end_sse_stream() {
    too_many_violations(Kind::Sse).await
}

// ---------------------------------------------------------------------------------------
// 7. Tools
// ---------------------------------------------------------------------------------------

fn call_of<'a>(id: &'a str, t: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| ty(v) == t && v["payload"]["call_id"] == id
}

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
    let e = expect_error(&mut c, "TOOL_NOT_FOUND").await;
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
// 8. Runs
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
    let e = expect_error(&mut c, "RUN_NOT_FOUND").await;
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

// ---------------------------------------------------------------------------------------
// 9. PING, duplicates, gaps
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

// ---------------------------------------------------------------------------------------
// 11. Flow control
// ---------------------------------------------------------------------------------------

async fn agent_count(c: &mut Conn, n: usize) {
    let have = |c: &Conn| c.log.iter().filter(|v| chan(v) == "AGENT").count();
    if have(c) >= n {
        return;
    }
    let deadline = Instant::now() + WAIT;
    while have(c) < n {
        assert!(
            Instant::now() < deadline,
            "only {} AGENT messages: {:?}",
            have(c),
            c.log
        );
        c.frame().await;
    }
}

async fn flow_credit(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_messages": 2}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    c.say("a b c d").await; // 8 AGENT messages in all
    agent_count(&mut c, 2).await;
    c.collect_for(ms(300)).await;
    let agent = agent_msgs(&c.log);
    assert_eq!(
        types(&agent),
        ["RUN_STARTED", "MESSAGE_START"],
        "credit of 2"
    );

    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 3}),
    )
    .await;
    agent_count(&mut c, 5).await;
    c.collect_for(ms(300)).await;
    assert_eq!(agent_msgs(&c.log).len(), 5, "3 more credits: {:?}", c.log);

    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 10}),
    )
    .await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let agent = agent_msgs(&c.log);
    assert_eq!(
        types(&agent),
        [
            "RUN_STARTED",
            "MESSAGE_START",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_END",
            "RUN_FINISHED"
        ],
        "nothing lost, in order"
    );
    let text: String = agent[2..6]
        .iter()
        .map(|p| p["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "a b c d");
    assert_contiguous(&c.log);
}

on_transports!(flow_control_credit, flow_credit);

async fn pause_resume(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await;
    c.send_msg("SYSTEM", "PAUSE_CHANNEL", json!({"channel": "AGENT"}))
        .await;
    c.say("x y z").await;
    let held = c.collect_for(ms(300)).await;
    assert!(
        !held.iter().any(|v| chan(v) == "AGENT"),
        "AGENT is paused: {held:?}"
    );
    // SYSTEM is never paused.
    c.ping("system-flows").await;
    assert_eq!(
        c.recv_type("PONG").await["payload"]["nonce"],
        "system-flows"
    );
    c.send_msg("SYSTEM", "RESUME_CHANNEL", json!({"channel": "AGENT"}))
        .await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let agent = agent_msgs(&c.log);
    assert_eq!(
        types(&agent),
        [
            "RUN_STARTED",
            "MESSAGE_START",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_END",
            "RUN_FINISHED"
        ]
    );
    let seqs: Vec<u64> = agent.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "released in order");
    assert_contiguous(&c.log);
}

on_transports!(pause_resume_channel, pause_resume);

// ---------------------------------------------------------------------------------------
// Audio as base64 (every transport) and resume failures
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
    let e = expect_error(&mut c, "REPLAY_TOO_OLD").await;
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

// ---------------------------------------------------------------------------------------
// Input aliases, multi-part user messages, seq baseline, inbound flow control
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
    let parts: Vec<&str> = run
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["hello ", "big ", "world"]);
    assert!(!c.log.iter().any(|v| ty(v) == "ERROR"), "{:?}", c.log);
}

on_transports!(input_aliases_and_multipart, text_message_aliases);

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

async fn inbound_credit_violation(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_initial_credit_messages = 2).await;
    let mut c = srv.connect(kind).await;
    c.ping("one").await;
    let hai = c.recv_type("HAI").await;
    assert_eq!(
        hai["payload"]["capabilities"]["flow_control"]["initial_credit_messages"],
        2
    );
    c.recv_type("PONG").await;
    // Seq 2 is missing: 3, 4 and 5 are held, so none of their credit comes back.
    let part = |s: u64| {
        envelope(
            &format!("held-{s}"),
            "test-session",
            s,
            "USER",
            "MESSAGE_PART",
            json!({"message_id": "m", "text": "x"}),
        )
    };
    for s in 3..=5 {
        c.send(&part(s)).await;
    }
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "FLOW_CONTROL_VIOLATION", "{e}");
    assert_eq!(e["payload"]["related_id"], "held-5");
    assert_eq!(
        e["payload"]["detail"],
        json!({"reason": "INSUFFICIENT_CREDITS", "channel": "USER"})
    );
}

on_transports!(inbound_credit_exceeded, inbound_credit_violation);

#[tokio::test]
async fn flow_control_disabled_advertises_no_credit() {
    let srv = Server::start_with(|c| c.flow_control_enabled = false).await;
    let mut c = srv.connect(Kind::Ws).await;
    let hai = c.recv_type("HAI").await;
    assert!(
        hai["payload"]["capabilities"].get("flow_control").is_none(),
        "{hai}"
    );
}

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
