//! Shared threads: sessions that connect with `?thread=ID` receive, as their own messages,
//! everything the server sends in that thread for another session of the same subject.

mod common;

use common::*;
use serde_json::{json, Value};

const ALL: [Kind; 3] = [Kind::Ws, Kind::Sse, Kind::Stream];

#[tokio::test]
async fn followers_on_every_transport_receive_the_thread_as_their_own_messages() {
    let server = Server::start().await;
    let text = "one two three four five";
    for publisher_kind in ALL {
        let thread = next_id("thread");
        let mut followers = Vec::new();
        for kind in ALL {
            followers.push(open_session(&server, kind, follow(&thread)).await);
        }
        let mut publisher = open_session(&server, publisher_kind, Opts::default()).await;
        assert_eq!(server.state.engine.threads.follower_count(USER, &thread), 3);
        say_in(&mut publisher, &thread, text).await;

        let mine = publisher.collect_until(|m| ty(m) == "RUN_FINISHED").await;
        let own_session = publisher.session.clone().expect("publisher session");
        assert_eq!(check_thread_run(&mine, &own_session, &thread), text);
        for f in &mut followers {
            let got = f.collect_until(|m| ty(m) == "RUN_FINISHED").await;
            let session = f.session.clone().expect("follower session");
            assert_ne!(session, own_session);
            assert_eq!(
                check_thread_run(&got, &session, &thread),
                text,
                "{:?}",
                f.kind
            );
            let all: Vec<Value> = f.log.clone();
            assert_contiguous(&all);
        }
        // Exactly one copy each: nothing more arrives for the publisher or the followers.
        for c in followers.iter_mut().chain([&mut publisher]) {
            let extra = c.collect_for(ms(150)).await;
            assert!(
                extra.iter().all(|m| m["channel"] == "SYSTEM"),
                "{:?} got more: {extra:?}",
                c.kind
            );
        }
    }
}

#[tokio::test]
async fn threads_belong_to_their_subject_and_only_thread_output_is_shared() {
    let server = Server::start().await;
    let thread = next_id("thread");
    let other_token = server.token_for("someone-else");
    let mut stranger =
        open_session(&server, Kind::Ws, follow(&thread).with_token(other_token)).await;
    let mut follower = open_session(&server, Kind::Ws, follow(&thread)).await;
    let mut publisher = open_session(&server, Kind::Ws, Opts::default()).await;

    // A message outside the thread is not shared.
    publisher.say("not shared").await;
    publisher.recv_type("RUN_FINISHED").await;
    // One inside it reaches the follower of the same subject only.
    say_in(&mut publisher, &thread, "shared").await;
    publisher.recv_type("RUN_FINISHED").await;

    let got = follower.collect_until(|m| ty(m) == "RUN_FINISHED").await;
    let session = follower.session.clone().expect("session");
    assert_eq!(check_thread_run(&got, &session, &thread), "shared");
    let later = follower.collect_for(ms(150)).await;
    assert!(later.iter().all(|m| m["channel"] == "SYSTEM"), "{later:?}");
    let strangers = stranger.collect_for(ms(200)).await;
    assert!(
        strangers.iter().all(|m| m["channel"] == "SYSTEM"),
        "another subject's session must not see the thread: {strangers:?}"
    );
}

#[tokio::test]
async fn a_follower_that_was_away_gets_what_it_missed_on_resume() {
    let server = Server::start().await;
    let thread = next_id("thread");
    let mut follower = open_session(&server, Kind::Ws, follow(&thread)).await;
    let session = follower.session.clone().expect("session");
    let seen = follower.log.iter().map(seq).max().unwrap_or(0);
    follower.send_close(1000).await;
    drop(follower);

    let mut publisher = open_session(&server, Kind::Sse, Opts::default()).await;
    say_in(&mut publisher, &thread, "while you were away").await;
    publisher.recv_type("RUN_FINISHED").await;

    // The session still follows the thread; its copies wait in its replay window.
    for kind in [Kind::Stream, Kind::Ws] {
        let mut back = connect_session(&server, kind, Opts::resume(&session, seen)).await;
        let got = back.collect_until(|m| ty(m) == "HAI").await;
        let (replay, confirm) = got.split_at(got.len() - 1);
        assert_eq!(confirm[0]["session"], session);
        assert_eq!(
            check_thread_run(replay, &session, &thread),
            "while you were away",
            "{kind:?}"
        );
        assert_eq!(
            seq(&replay[0]),
            seen + 1,
            "replay starts after what was seen"
        );
        if kind.is_ws() {
            back.send_close(1000).await;
        } else {
            back.end_body();
        }
    }
}

#[tokio::test]
async fn a_cancelled_run_ends_cancelled_for_followers_too() {
    let server = Server::start_with(|c| c.echo_word_delay = ms(20)).await;
    let thread = next_id("thread");
    let mut follower = open_session(&server, Kind::Stream, follow(&thread)).await;
    let mut publisher = open_session(&server, Kind::Ws, Opts::default()).await;
    let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    say_in(&mut publisher, &thread, &words.join(" ")).await;
    let started = publisher.recv_type("RUN_STARTED").await;
    publisher.recv_type("MESSAGE_PART").await;
    publisher
        .send_msg("AGENT", "RUN_CANCEL", json!({"run_id": started["run_id"]}))
        .await;
    let done = publisher.recv_type("RUN_FINISHED").await;
    assert_eq!(done["payload"]["status"], "CANCELLED");

    let got = follower.collect_until(|m| ty(m) == "RUN_FINISHED").await;
    let finished = got.last().expect("finished");
    assert_eq!(finished["payload"]["status"], "CANCELLED");
    assert_eq!(finished["run_id"], started["run_id"]);
    let parts = got.iter().filter(|m| ty(m) == "MESSAGE_PART").count();
    assert!(
        parts < words.len(),
        "the follower's copy stopped too ({parts} parts)"
    );
}

#[tokio::test]
async fn a_thread_id_the_contract_would_refuse_is_answered_400() {
    let server = Server::start().await;
    let long = "t".repeat(129);
    for path in ["/haip/sse", "/haip/stream", "/haip/websocket"] {
        for bad in ["", long.as_str()] {
            let url = server.url(&format!("{path}?thread={bad}"));
            let mut req = if path == "/haip/stream" {
                http().post(url).body("")
            } else {
                http().get(url)
            };
            req = req.header("Authorization", format!("Bearer {}", server.token()));
            if path == "/haip/websocket" {
                req = req
                    .header("Connection", "Upgrade")
                    .header("Upgrade", "websocket")
                    .header("Sec-WebSocket-Version", "13")
                    .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
            }
            let resp = bounded(req.send()).await.expect("request");
            assert_eq!(resp.status().as_u16(), 400, "{path}?thread={bad:?}");
            let body = resp.text().await.unwrap_or_default();
            assert!(body.contains("thread"), "{body}");
        }
    }
    // The server still serves everyone else.
    let mut c = open_session(&server, Kind::Ws, follow("fine")).await;
    c.ping("still-up").await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "still-up");
}

/// A follower's copies pass through its own flow control: with credit for two AGENT
/// messages it gets two, the rest waits (serialized for it only when released), and a
/// FLOW_UPDATE releases the remainder in order, each copy its own message.
#[tokio::test]
async fn a_follower_with_little_credit_gets_the_rest_of_the_thread_as_credit_comes() {
    let server = Server::start().await;
    let text = "one two three four";
    for kind in ALL {
        let thread = next_id("thread");
        let mut follower = connect_session(&server, kind, follow(&thread)).await;
        let mut hai = hai_payload(&[
            "HAI",
            "TOOL_LIST",
            "ERROR",
            "PING",
            "PONG",
            "FLOW_UPDATE",
            "RUN_STARTED",
            "RUN_FINISHED",
            "MESSAGE_START",
            "MESSAGE_PART",
            "MESSAGE_END",
        ]);
        hai["capabilities"] = json!({"flow_control": {"initial_credit_messages": 2}});
        follower.send_msg("SYSTEM", "HAI", hai).await;
        follower.recv_type("TOOL_LIST").await;
        let mut publisher = open_session(&server, Kind::Ws, Opts::default()).await;
        say_in(&mut publisher, &thread, text).await;
        publisher.collect_until(|m| ty(m) == "RUN_FINISHED").await;

        follower.collect_for(ms(300)).await;
        let agent: Vec<&str> = follower
            .log
            .iter()
            .filter(|m| m["channel"] == "AGENT")
            .map(ty)
            .collect();
        assert_eq!(
            agent,
            ["RUN_STARTED", "MESSAGE_START"],
            "{kind:?}: credit of 2"
        );

        follower
            .send_msg(
                "SYSTEM",
                "FLOW_UPDATE",
                json!({"channel": "AGENT", "add_messages": 100}),
            )
            .await;
        follower.collect_until(|m| ty(m) == "RUN_FINISHED").await;
        let session = follower.session.clone().expect("follower session");
        let log = follower.log.clone();
        assert_eq!(check_thread_run(&log, &session, &thread), text, "{kind:?}");
        assert_contiguous(&log);
    }
}
