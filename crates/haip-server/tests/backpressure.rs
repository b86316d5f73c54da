//! Back-pressure for agents (issue: an agent producing faster than its client reads waits
//! instead of getting the session ended): the echo agent at full speed over WebSocket.

mod common;

use common::*;
use serde_json::{json, Value};

/// Reads the agent's run to its end; returns the joined text of its parts and how many.
async fn read_run(c: &mut Conn, expected_parts: usize) -> (String, usize) {
    let mut text = String::new();
    let mut parts = 0;
    let mut last_seq = 0;
    loop {
        let v: Value = c.recv().await;
        let seq = seq(&v);
        assert!(seq > last_seq, "seq went back: {v}");
        last_seq = seq;
        match ty(&v) {
            "MESSAGE_PART" if chan(&v) == "AGENT" => {
                parts += 1;
                text.push_str(v["payload"]["text"].as_str().expect("text"));
            }
            "RUN_FINISHED" => {
                assert_eq!(v["payload"]["status"], "OK", "{v}");
                return (text, parts);
            }
            "ERROR" | "RUN_ERROR" => panic!("after {parts} of {expected_parts} parts: {v}"),
            _ => {}
        }
    }
}

fn many_words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn an_echo_of_20_000_words_at_full_speed_arrives_whole() {
    let server = Server::start_with(|c| c.echo_word_delay = ms(0)).await;
    let mut c = server.connect(Kind::Ws).await;
    c.recv_type("HAI").await;
    let text = many_words(20_000);
    c.say(&text).await;
    let (echoed, parts) = read_run(&mut c, 20_000).await;
    assert_eq!(parts, 20_000);
    assert_eq!(echoed, text);
}

#[tokio::test]
async fn an_agent_waits_for_a_client_that_stops_reading_instead_of_ending_its_session() {
    // A small bound, so that a backlog past it would end the session quickly.
    let server = Server::start_with(|c| {
        c.echo_word_delay = ms(0);
        c.flow_control_max_held_messages = 400;
    })
    .await;
    let mut c = server.connect(Kind::Ws).await;
    c.recv_type("HAI").await;
    let text = many_words(5_000);
    c.say(&text).await;
    // The client looks away while the agent could have sent everything many times over.
    tokio::time::sleep(ms(500)).await;
    let (echoed, parts) = read_run(&mut c, 5_000).await;
    assert_eq!(parts, 5_000);
    assert_eq!(echoed, text);
    // The session is alive and serves on.
    c.send_msg("SYSTEM", "PING", json!({"nonce": "after"}))
        .await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "after");
}
