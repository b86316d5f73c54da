//! The protocol rules of the wire contract on errors, checked identically on every transport:
//! an error keeps the connection open and other sessions unaffected, an incompatible version
//! and too many violations close it.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Errors keep the connection open and other sessions unaffected
// ---------------------------------------------------------------------------------------

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
            let e = expect_described_error(&mut c, "PROTOCOL_VIOLATION").await;
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
    let e = expect_described_error(&mut c, "PROTOCOL_VIOLATION").await;
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
    let e = expect_described_error(&mut c, "PROTOCOL_VIOLATION").await;
    assert_eq!(e["payload"]["related_id"], "bad-no-ts");
    assert_eq!(e["payload"]["detail"]["field"], "ts", "{e}");

    // A field of the wrong type (seq must be a decimal string).
    let mut num_seq = envelope("bad-seq", "test-session", next, "SYSTEM", "PING", json!({}));
    num_seq["seq"] = json!(next);
    c.send(&num_seq).await;
    let e = expect_described_error(&mut c, "PROTOCOL_VIOLATION").await;
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
    let e = expect_described_error(&mut c, "PROTOCOL_VIOLATION").await;
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
    let e = expect_described_error(&mut c, "UNSUPPORTED_TYPE").await;
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
    let e = expect_described_error(&mut c, "UNSUPPORTED_TYPE").await;
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
    let e = expect_described_error(&mut c, "UNSUPPORTED_TYPE").await;
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
    let e = expect_described_error(&mut c, "VERSION_INCOMPATIBLE").await;
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
        expect_described_error(&mut c, "PROTOCOL_VIOLATION").await;
    }
    // Ten violations are tolerated.
    c.ping("still-open").await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "still-open");
    c.send(&bad(11)).await;
    expect_described_error(&mut c, "PROTOCOL_VIOLATION").await;
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
