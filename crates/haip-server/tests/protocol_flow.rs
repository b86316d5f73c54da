//! The protocol rules of the wire contract on flow control, checked identically on every
//! transport: credit, PAUSE_CHANNEL / RESUME_CHANNEL, inbound credit, flow control off.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use std::time::Instant;

use common::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Flow control
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
    assert_eq!(types(&agent), echo_run_types(4), "nothing lost, in order");
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
    assert_eq!(types(&agent), echo_run_types(3));
    let seqs: Vec<u64> = agent.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "released in order");
    assert_contiguous(&c.log);
}

on_transports!(pause_resume_channel, pause_resume);

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
