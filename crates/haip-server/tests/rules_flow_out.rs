//! Rules of contract section 6 on flow control from server to client: SYSTEM needs no credit,
//! byte credit, pause over credit, the bound of held output, an agent waiting for credit.
//!
//! They check what the other test files do not check in a way that would fail if the rule
//! were broken. Each check is one async function run once per transport where it applies.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use common::*;
use serde_json::{json, Value};

// =======================================================================================
// Section 6: flow control, server to client
// =======================================================================================

async fn agent_count(c: &mut Conn, n: usize) {
    until_logged(c, "AGENT messages", n, |v| chan(v) == "AGENT").await
}

/// SYSTEM messages never consume credit (PONG, TOOL_LIST, ERROR go out while AGENT is out
/// of credit), and SYSTEM cannot be paused.
async fn system_needs_no_credit_outbound(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] =
        json!({"flow_control": {"initial_credit_messages": 1, "initial_credit_bytes": 1000000}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    c.say("a b c").await;
    agent_count(&mut c, 1).await;
    for i in 0..5 {
        c.ping(&format!("n{i}")).await;
    }
    until_logged(&mut c, "PONG", 5, |v| ty(v) == "PONG").await;
    c.send_msg("SYSTEM", "TOOL_LIST", json!({"tools": []}))
        .await;
    c.recv_where(|v| ty(v) == "TOOL_LIST" && seq(v) > 2).await;
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": "none"}))
        .await;
    expect_error(&mut c, "RUN_NOT_FOUND").await;
    c.send_msg("SYSTEM", "PAUSE_CHANNEL", json!({"channel": "SYSTEM"}))
        .await;
    c.ping("unpausable").await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "unpausable");
    assert_eq!(
        agent_msgs(&c.log).len(),
        1,
        "AGENT still holds: {:?}",
        c.log
    );
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 100}),
    )
    .await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(agent_msgs(&c.log).len(), 7);
    assert_contiguous(&c.log);
}

on_transports!(
    system_channel_outside_credit,
    system_needs_no_credit_outbound
);

/// Byte credit: what is released never exceeds the bytes granted (each message counted as
/// its serialized envelope); add_bytes alone releases more, in order, nothing lost.
async fn byte_credit_outbound(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_bytes": 700}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    let text = "w1 w2 w3 w4 w5 w6 w7 w8";
    c.say(text).await;
    agent_count(&mut c, 1).await;
    c.collect_for(ms(300)).await;
    let size = |msgs: &[Value]| -> usize { msgs.iter().map(|m| m.to_string().len()).sum() };
    let first = agent_msgs(&c.log);
    assert!(
        first.len() < 12,
        "700 bytes cannot carry the whole run: {first:?}"
    );
    assert!(
        size(&first) <= 700,
        "{} bytes released on a credit of 700: {first:?}",
        size(&first)
    );
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_bytes": 600}),
    )
    .await;
    agent_count(&mut c, first.len() + 1).await;
    c.collect_for(ms(300)).await;
    let second = agent_msgs(&c.log);
    assert!(second.len() < 12);
    assert!(
        size(&second) <= 1300,
        "{} bytes released on a credit of 1300",
        size(&second)
    );
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_bytes": 1000000}),
    )
    .await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let all = agent_msgs(&c.log);
    assert_eq!(all.len(), 12, "nothing dropped");
    let echoed: String = all
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(echoed, text, "in order");
    assert_contiguous(&c.log);
}

on_transports!(byte_credit_server_to_client, byte_credit_outbound);

/// PAUSE_CHANNEL holds a channel even when credit arrives; RESUME_CHANNEL releases in order.
async fn pause_beats_credit(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_messages": 1}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    c.send_msg("SYSTEM", "PAUSE_CHANNEL", json!({"channel": "AGENT"}))
        .await;
    c.say("x y z").await;
    c.collect_for(ms(200)).await;
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 20}),
    )
    .await;
    c.collect_for(ms(250)).await;
    assert!(
        agent_msgs(&c.log).is_empty(),
        "paused despite credit: {:?}",
        c.log
    );
    c.send_msg("SYSTEM", "RESUME_CHANNEL", json!({"channel": "AGENT"}))
        .await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let agent = agent_msgs(&c.log);
    assert_eq!(types(&agent), echo_run_types(3));
    assert_contiguous(&c.log);
}

on_transports!(pause_holds_despite_credit, pause_beats_credit);

/// Held output is bounded (`flow_control_max_held_messages`) for what a client causes: a
/// client that grants no more credit while making the server answer it (its own tool
/// calls) gets ERROR FLOW_CONTROL_VIOLATION with reason HELD_OUTPUT_LIMIT, its connection
/// closes, and the session cannot be resumed.
async fn held_output_bound(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_max_held_messages = 20).await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_messages": 2}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    for i in 0..40 {
        let call = c.msg(
            "USER",
            "TOOL_CALL",
            json!({"call_id": format!("c{i}"), "tool": "echo", "params": {"message": "hi"}}),
        );
        if c.send(&call).await.is_some_and(|r| r.status != 200) {
            break; // the session already ended
        }
    }
    let error = expect_error(&mut c, "FLOW_CONTROL_VIOLATION").await;
    assert_eq!(error["payload"]["detail"]["reason"], "HELD_OUTPUT_LIMIT");
    let (code, _) = c.expect_close().await;
    if kind.is_ws() {
        assert_eq!(code, Some(1008));
    }
    assert!(
        agent_msgs(&c.log).len() <= 2,
        "nothing beyond the credit was sent: {:?}",
        agent_msgs(&c.log)
    );
    let session = known_session(&c);
    let last = seq(c.log.last().expect("messages"));
    let mut again = srv.connect_with(kind, Opts::resume(&session, last)).await;
    expect_resume_failed(&mut again, &session).await;
}

on_transports!(held_output_is_bounded, held_output_bound);

/// An agent is not a client: while the client grants no credit, the agent's answer waits
/// (it never reaches the bound), and once FLOW_UPDATE grants credit every word arrives.
async fn agent_waits_for_credit(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.flow_control_max_held_messages = 20;
        c.echo_word_delay = ms(0);
    })
    .await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_messages": 2}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    c.say(&words.join(" ")).await;
    // Long enough for 100 words to pass the bound many times over without back-pressure.
    let early = c.collect_for(ms(300)).await;
    assert!(
        !early.iter().any(|v| ty(v) == "ERROR"),
        "the agent's output ended the session: {early:?}"
    );
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 1000}),
    )
    .await;
    c.recv_where(|v| ty(v) == "RUN_FINISHED").await;
    let parts: String = c
        .log
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART" && chan(v) == "AGENT")
        .map(|v| v["payload"]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(parts, words.join(" "));
    assert!(logged_errors(&c).is_empty(), "{:?}", logged_errors(&c));
}

on_transports!(agent_output_waits_for_credit, agent_waits_for_credit);
