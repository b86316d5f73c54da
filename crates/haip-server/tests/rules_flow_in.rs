//! Rules of contract section 6 on flow control from client to server: credit handed back
//! (duplicates included), what lies beyond the credit, violations, SYSTEM and base64 counted
//! as the contract says.
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

/// Client-side flow control towards the server, as the contract asks of a client: the
/// credit of the server's HAI plus every FLOW_UPDATE for USER; a message is sent only when it
/// fits, else the client waits for credit to come back.
struct UserCredit {
    messages: u64,
    bytes: u64,
    seen: usize,
}

impl UserCredit {
    fn from_hai(hai: &Value) -> UserCredit {
        let fc = &hai["payload"]["capabilities"]["flow_control"];
        UserCredit {
            messages: fc["initial_credit_messages"].as_u64().expect("credit"),
            bytes: fc["initial_credit_bytes"].as_u64().expect("credit"),
            seen: 0,
        }
    }

    fn absorb(&mut self, c: &Conn) {
        for m in &c.log[self.seen..] {
            if ty(m) == "FLOW_UPDATE" && m["payload"]["channel"] == "USER" {
                self.messages += m["payload"]["add_messages"].as_u64().unwrap_or(0);
                self.bytes += m["payload"]["add_bytes"].as_u64().unwrap_or(0);
            }
        }
        self.seen = c.log.len();
    }

    /// Sends `v` once it fits in the credit; panics if no credit comes back within 1.5 s.
    async fn send(&mut self, c: &mut Conn, v: &Value) {
        let cost = v.to_string().len() as u64;
        let deadline = Instant::now() + ms(1500);
        loop {
            self.absorb(c);
            if self.messages >= 1 && self.bytes >= cost {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{:?}: no credit handed back within 1.5 s (have {} messages, {} bytes; need \
                 1 and {cost}); log: {:?}",
                c.kind,
                self.messages,
                self.bytes,
                c.log
            );
            c.frame_within(left.min(ms(100))).await;
        }
        self.messages -= 1;
        self.bytes -= cost;
        let reply = c.send(v).await;
        if let Some(r) = reply {
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
}

/// Duplicates are dropped silently however many there are: the credit a client spent on
/// them must come back, or a client that honours its credit stalls after a few
/// retransmissions (and one that does not is refused with FLOW_CONTROL_VIOLATION).
async fn duplicates_give_credit_back(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_initial_credit_messages = 4).await;
    let mut c = srv.connect(kind).await;
    let hai = open_with_ping(&mut c).await;
    let mut credit = UserCredit::from_hai(&hai);
    assert_eq!(credit.messages, 4);
    let first = c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "once", "tool": "add", "params": {"a": 1, "b": 1}}),
    );
    credit.send(&mut c, &first).await;
    until_logged(&mut c, "TOOL_DONE", 1, call_of("once", "TOOL_DONE")).await;
    // The same message again, as a client resending after a lost connection would.
    for _ in 0..8 {
        credit.send(&mut c, &first).await;
    }
    let next = c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "next", "tool": "add", "params": {"a": 2, "b": 2}}),
    );
    credit.send(&mut c, &next).await;
    until_logged(&mut c, "TOOL_DONE", 1, call_of("next", "TOOL_DONE")).await;
    c.collect_for(ms(100)).await;
    assert_eq!(
        count_logged(&c, call_of("once", "TOOL_DONE")),
        1,
        "processed once"
    );
    assert!(
        logged_errors(&c).is_empty(),
        "dropped silently: {:?}",
        logged_errors(&c)
    );
}

on_transports!(
    duplicates_dropped_silently_and_credited,
    duplicates_give_credit_back
);

// =======================================================================================
// Section 6: flow control, client to server
// =======================================================================================

/// A client that honours the advertised credit (4 messages, 1200 bytes) can send 16 USER
/// messages: the server hands credit back with FLOW_UPDATE (SYSTEM, per channel) as it
/// consumes, and nothing is refused.
async fn credit_comes_back(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.flow_control_initial_credit_messages = 4;
        c.flow_control_initial_credit_bytes = 1200;
    })
    .await;
    let mut c = srv.connect(kind).await;
    let hai = open_with_ping(&mut c).await;
    let mut credit = UserCredit::from_hai(&hai);
    assert_eq!((credit.messages, credit.bytes), (4, 1200));
    for i in 0..16 {
        let v = c.msg(
            "USER",
            "TOOL_CALL",
            json!({"call_id": format!("c{i}"), "tool": "echo",
                   "params": {"message": "m".repeat(120)}}),
        );
        credit.send(&mut c, &v).await;
    }
    until_logged(&mut c, "TOOL_DONE", 16, |v| ty(v) == "TOOL_DONE").await;
    assert!(logged_errors(&c).is_empty(), "{:?}", logged_errors(&c));
    let grants: Vec<&Value> = c.log.iter().filter(|v| ty(v) == "FLOW_UPDATE").collect();
    assert!(!grants.is_empty());
    for g in grants {
        assert_eq!(chan(g), "SYSTEM", "{g}");
        assert_eq!(g["payload"]["channel"], "USER", "{g}");
        assert!(
            g["payload"]["add_messages"].as_u64().unwrap_or(0) >= 1,
            "{g}"
        );
        assert!(g["payload"]["add_bytes"].as_u64().unwrap_or(0) >= 1, "{g}");
    }
}

on_transports!(credit_handed_back, credit_comes_back);

fn oversized_call(c: &mut Conn, id: &str) -> Value {
    c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": id, "tool": "echo", "params": {"message": "x".repeat(1000)}}),
    )
}

/// A message beyond the byte credit gets FLOW_CONTROL_VIOLATION {INSUFFICIENT_CREDITS,
/// channel} and is not processed (its seq is free for the next message).
async fn beyond_credit_not_processed(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_initial_credit_bytes = 400).await;
    let mut c = srv.connect(kind).await;
    open_with_ping(&mut c).await;
    let big = oversized_call(&mut c, "big");
    c.send(&big).await;
    let e = expect_error(&mut c, "FLOW_CONTROL_VIOLATION").await;
    assert_eq!(e["payload"]["related_id"], big["id"]);
    assert_eq!(
        e["payload"]["detail"],
        json!({"reason": "INSUFFICIENT_CREDITS", "channel": "USER"})
    );
    c.collect_for(ms(300)).await;
    assert_eq!(
        count_logged(&c, |v| v["payload"]["call_id"] == "big"),
        0,
        "{:?}",
        c.log
    );
    c.seq -= 1;
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "small", "tool": "echo", "params": {"message": "hi"}}),
    )
    .await;
    let done = c.recv_where(call_of("small", "TOOL_DONE")).await;
    assert_eq!(done["payload"]["status"], "OK");
}

on_transports!(beyond_credit_refused, beyond_credit_not_processed);

/// Twenty flow-control violations are tolerated, the 21st closes the connection (contract
/// section 2; WebSocket 1008, streams end).
async fn flow_violations_close(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_initial_credit_bytes = 400).await;
    let mut c = srv.connect(kind).await;
    open_with_ping(&mut c).await;
    for i in 0..20 {
        let big = oversized_call(&mut c, &format!("big{i}"));
        c.seq -= 1;
        c.send(&big).await;
        expect_error(&mut c, "FLOW_CONTROL_VIOLATION").await;
    }
    c.ping("still-open").await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "still-open");
    let big = oversized_call(&mut c, "big-last");
    c.send(&big).await;
    expect_error(&mut c, "FLOW_CONTROL_VIOLATION").await;
    let (code, _) = c.expect_close().await;
    if kind.is_ws() {
        assert_eq!(code, Some(1008));
    } else {
        assert_eq!(code, None, "the stream ends");
    }
}

on_transports!(twenty_flow_violations_then_close, flow_violations_close);

/// SYSTEM messages from the client never consume credit: ten PINGs of 600-byte nonces go
/// through a credit of 2 messages and 1000 bytes.
async fn system_needs_no_credit_inbound(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.flow_control_initial_credit_messages = 2;
        c.flow_control_initial_credit_bytes = 1000;
    })
    .await;
    let mut c = srv.connect(kind).await;
    for i in 0..10 {
        c.ping(&format!("{i}{}", "n".repeat(600))).await;
    }
    until_logged(&mut c, "PONG", 10, |v| ty(v) == "PONG").await;
    assert!(logged_errors(&c).is_empty(), "{:?}", logged_errors(&c));
}

on_transports!(
    system_channel_outside_credit_inbound,
    system_needs_no_credit_inbound
);

fn audio_msg(seq: u64, data_len: usize) -> Value {
    let bytes: Vec<u8> = (0..data_len).map(|i| (i % 251) as u8).collect();
    envelope(
        "audio-1",
        "test-session",
        seq,
        "USER",
        "AUDIO_CHUNK",
        json!({"message_id": "aud", "mime": "audio/pcm", "data": b64(&bytes)}),
    )
}

/// Bytes count the serialized envelope plus the decoded base64 length: a chunk whose
/// envelope fits the credit but not with its decoded bytes added is refused; one that fits
/// with them is accepted.
async fn base64_counts_decoded(kind: Kind) {
    const DATA: usize = 1500;
    let msg = audio_msg(1, DATA);
    let serialized = msg.to_string().len() as u64;
    let cost = serialized + DATA as u64;
    for (credit, accepted) in [(cost + 16, true), (serialized + DATA as u64 / 2, false)] {
        let srv = Server::start_with(|c| c.flow_control_initial_credit_bytes = credit).await;
        let mut c = srv.connect(kind).await;
        c.send(&msg).await;
        c.seq = 1;
        c.ping("after").await;
        let mut got = c
            .collect_until(|v| ty(v) == "PONG" && v["payload"]["nonce"] == "after")
            .await;
        got.extend(c.collect_for(ms(150)).await);
        let echoed = got.iter().any(|v| ty(v) == "AUDIO_CHUNK");
        let refused = got.iter().any(|v| {
            ty(v) == "ERROR"
                && v["payload"]["code"] == "FLOW_CONTROL_VIOLATION"
                && v["payload"]["detail"]["reason"] == "INSUFFICIENT_CREDITS"
        });
        assert_eq!(
            (echoed, refused),
            (accepted, !accepted),
            "credit {credit} for {serialized} serialized + {DATA} decoded bytes: {got:?}"
        );
    }
}

on_transports!(base64_data_counts_decoded_bytes, base64_counts_decoded);

/// WebSocket two-frame messages count the text frame plus bin_len (contract section 6).
#[tokio::test]
async fn binary_frame_counts_bin_len_once() {
    const N: usize = 3000;
    let text_frame = |seq: u64| {
        let mut env = envelope(
            "bin-1",
            "test-session",
            seq,
            "USER",
            "AUDIO_CHUNK",
            json!({"message_id": "aud-bin", "mime": "audio/opus"}),
        );
        env["bin_len"] = json!(N);
        env["bin_mime"] = json!("audio/opus");
        env
    };
    let text_len = text_frame(1).to_string().len() as u64;
    let bytes: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
    for (credit, accepted) in [
        (text_len + N as u64 + 16, true),
        (text_len + N as u64 / 2, false),
    ] {
        let srv = Server::start_with(|c| c.flow_control_initial_credit_bytes = credit).await;
        let mut c = srv.connect(Kind::Ws).await;
        c.send(&text_frame(1)).await;
        c.send_binary(bytes.clone()).await;
        c.seq = 1;
        c.ping("after").await;
        let mut got = c
            .collect_until(|v| ty(v) == "PONG" && v["payload"]["nonce"] == "after")
            .await;
        got.extend(c.collect_for(ms(150)).await);
        let echoed = got.iter().any(|v| ty(v) == "AUDIO_CHUNK");
        let refused = got.iter().any(|v| {
            ty(v) == "ERROR" && v["payload"]["detail"]["reason"] == "INSUFFICIENT_CREDITS"
        });
        assert_eq!(
            (echoed, refused),
            (accepted, !accepted),
            "credit {credit} for a {text_len}-byte text frame + {N} binary bytes: {got:?}"
        );
    }
}
