//! Sessions outliving their connections (contract section 3): resume at connect time
//! (`?session=&last_rx_seq=`, SSE `Last-Event-ID`) and by client HAI, mid-stream, on the same
//! and on another transport, and every way a resume can fail.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn websocket_resume_with_url_parameters_mid_echo() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(40)).await;
    let text = words(16);
    let (session, log1, last) = answer_then_leave(&srv, Kind::Ws, &text, 3).await;
    // The agent keeps streaming while the client is away.
    tokio::time::sleep(ms(150)).await;

    let mut c2 = resume_in_form(&srv, Kind::Ws, ResumeForm::Url, &session, last - 2).await;
    let mut replay = c2.collect_until(|v| ty(v) == "HAI").await;
    let confirm = replay.pop().unwrap();
    check_replay(&replay, &confirm, &log1, &session, last - 2);
    assert!(
        replay.len() > 2,
        "messages produced while away are replayed: {replay:?}"
    );
    assert_eq!(confirm["payload"]["last_rx_seq"], "2");
    c2.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let all: Vec<&Value> = log1.iter().chain(&c2.log).collect();
    check_complete_run(&all, &session, &text);
    // The resumed session goes on: acks continue from the client's last seq.
    c2.seq = 2;
    c2.ping("after-resume").await;
    assert_eq!(c2.recv_type("PONG").await["ack"], "3");
}

#[tokio::test]
async fn websocket_resume_with_client_hai_mid_echo() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(40)).await;
    let text = words(16);
    let (session, log1, last) = answer_then_leave(&srv, Kind::Ws, &text, 3).await;
    tokio::time::sleep(ms(150)).await;

    let (mut c2, fresh) = resume_by_client_hai(&srv, Kind::Ws, &session, last - 2).await;
    let mut replay = c2.collect_until(|v| ty(v) == "HAI").await;
    let confirm = replay.pop().unwrap();
    check_replay(&replay, &confirm, &log1, &session, last - 2);
    let last_rx = confirm["payload"]["last_rx_seq"].as_str().unwrap();
    assert!(
        last_rx == "2" || last_rx == "3",
        "highest client seq processed: {confirm}"
    );
    assert!(
        srv.state.engine.get(&fresh).is_none(),
        "the fresh session the server announced is dropped"
    );
    c2.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let all: Vec<&Value> = log1.iter().chain(&c2.log).collect();
    check_complete_run(&all, &session, &text);
    c2.client_session = session.clone();
    c2.seq = 3;
    c2.ping("after-resume").await;
    let pong = c2.recv_type("PONG").await;
    assert_eq!(pong["session"], session.as_str());
    assert_eq!(pong["ack"], "4");
}

#[tokio::test]
async fn sse_resume_with_last_event_id_mid_echo() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(40)).await;
    let text = words(16);
    let (session, log1, last) = answer_then_leave(&srv, Kind::Sse, &text, 3).await;
    tokio::time::sleep(ms(150)).await;

    let mut c2 = resume_in_form(&srv, Kind::Sse, ResumeForm::LastEventId, &session, last - 2).await;
    let mut replay = c2.collect_until(|v| ty(v) == "HAI").await;
    let confirm = replay.pop().unwrap();
    check_replay(&replay, &confirm, &log1, &session, last - 2);
    assert_eq!(confirm["payload"]["last_rx_seq"], "2");
    c2.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    for (m, id) in c2.log.iter().zip(&c2.sse_ids) {
        assert_eq!(
            id.as_deref(),
            Some(format!("{session}:{}", seq(m)).as_str())
        );
    }
    let all: Vec<&Value> = log1.iter().chain(&c2.log).collect();
    check_complete_run(&all, &session, &text);
    // Posts now reach the resumed session.
    c2.seq = 2;
    c2.ping("after-resume").await;
    let pong = c2.recv_type("PONG").await;
    assert_eq!(pong["session"], session.as_str());
    assert_eq!(pong["ack"], "3");
}

#[tokio::test]
async fn stream_resumes_a_websocket_session_with_client_hai() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(40)).await;
    let text = words(12);
    let (session, log1, last) = answer_then_leave(&srv, Kind::Ws, &text, 2).await;

    let mut c2 = srv.connect(Kind::Stream).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["last_rx_seq"] = json!(last.to_string());
    c2.send(&envelope(
        &next_id("resume"),
        &session,
        3,
        "SYSTEM",
        "HAI",
        hai,
    ))
    .await;
    let fresh = c2.recv().await;
    assert_eq!(ty(&fresh), "HAI");
    assert_ne!(fresh["session"], session.as_str());
    let msgs = c2
        .collect_until(|v| ty(v) == "HAI" && v["session"] == session.as_str())
        .await;
    assert!(
        msgs.iter().all(|v| ty(v) != "ERROR"),
        "resume accepted: {msgs:?}"
    );
    c2.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let all: Vec<&Value> = log1.iter().chain(&c2.log).collect();
    check_complete_run(&all, &session, &text);
}

/// After a connect-time resume from `last`: whatever the previous connection missed (e.g. a
/// delayed FLOW_UPDATE) is replayed, then the confirming HAI. Returns the HAI.
async fn confirm_after(c: &mut Conn, before: &[Value], session: &str, last: u64) -> Value {
    let mut msgs = c.collect_until(|v| ty(v) == "HAI").await;
    let confirm = msgs.pop().unwrap();
    if msgs.is_empty() {
        assert_eq!(confirm["session"], session);
        assert_eq!(seq(&confirm), last + 1, "{confirm}");
    } else {
        check_replay(&msgs, &confirm, before, session, last);
    }
    confirm
}

#[tokio::test]
async fn one_session_resumed_websocket_then_sse_then_stream() {
    let srv = Server::start().await;
    // WebSocket: client seqs 1-2.
    let mut ws = srv.connect(Kind::Ws).await;
    let session = session_of(&ws.recv_type("HAI").await);
    ws.say("alpha beta").await;
    ws.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let log_ws = ws.log.clone();
    drop(ws);
    let last = log_ws.iter().map(seq).max().unwrap();

    // SSE: client seqs 3-4.
    let mut sse = srv
        .connect_with(Kind::Sse, Opts::resume(&session, last))
        .await;
    let confirm = confirm_after(&mut sse, &log_ws, &session, last).await;
    assert_eq!(confirm["payload"]["last_rx_seq"], "2");
    assert_eq!(confirm["payload"]["capabilities"]["binary_frames"], false);
    sse.seq = 2;
    sse.say("gamma delta").await;
    sse.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let log_sse = sse.log.clone();
    drop(sse);
    let last = log_sse.iter().map(seq).max().unwrap();

    // HTTP streaming: client seqs 5-7.
    let mut st = srv
        .connect_with(Kind::Stream, Opts::resume(&session, last))
        .await;
    st.seq = 4;
    st.ping("stream").await;
    let confirm = confirm_after(&mut st, &log_sse, &session, last).await;
    assert_eq!(confirm["payload"]["last_rx_seq"], "4");
    assert_eq!(st.recv_type("PONG").await["ack"], "5");
    st.say("epsilon").await;
    let run = st.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["ack"], "7");

    let all: Vec<&Value> = log_ws.iter().chain(&log_sse).chain(&st.log).collect();
    for m in &all {
        assert_eq!(m["session"], session.as_str(), "{m}");
    }
    assert_contiguous(all.iter().copied());
    let echoed = part_texts(all.iter().copied());
    assert_eq!(echoed, ["alpha ", "beta", "gamma ", "delta", "epsilon"]);
}

#[tokio::test]
async fn another_subject_cannot_resume() {
    let srv = Server::start().await;
    let mut alice = srv.connect(Kind::Ws).await;
    let session = session_of(&alice.recv_type("HAI").await);
    alice.recv_type("TOOL_LIST").await;

    let bob = srv.token_for("bob");
    let mut b1 = srv
        .connect_with(Kind::Ws, Opts::resume(&session, 2).with_token(bob.clone()))
        .await;
    let e = b1.recv().await;
    assert_eq!(e["payload"]["code"], "RESUME_FAILED", "{e}");
    let hai = b1.recv().await;
    assert_eq!(ty(&hai), "HAI");
    assert_ne!(hai["session"], session.as_str());
    assert_eq!(hai["seq"], "1");

    let mut b2 = srv.connect_with(Kind::Ws, Opts::token(bob)).await;
    let fresh = session_of(&b2.recv_type("HAI").await);
    let mut p = hai_payload(&ALL_EVENTS);
    p["last_rx_seq"] = json!("0");
    let resume = envelope(&next_id("r"), &session, 1, "SYSTEM", "HAI", p);
    b2.send(&resume).await;
    let e = b2.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "RESUME_FAILED");
    assert_eq!(e["payload"]["related_id"], resume["id"]);
    // It carries on with the fresh session it announced.
    b2.seq = 1;
    b2.ping("fresh").await;
    let pong = b2.recv_type("PONG").await;
    assert_eq!(pong["session"], fresh.as_str());
    assert!(
        !b2.log.iter().any(|v| v["session"] == session.as_str()),
        "nothing of alice's session leaks"
    );
    // Alice's connection is untouched.
    alice.ping("still mine").await;
    assert_eq!(
        alice.recv_type("PONG").await["payload"]["nonce"],
        "still mine"
    );
}

#[tokio::test]
async fn resume_past_the_replay_window_fails_and_replays_nothing() {
    let srv = Server::start_with(|c| {
        c.replay_window_size = 2;
        c.replay_window_time = ms(0);
    })
    .await;
    let mut c1 = srv.connect(Kind::Ws).await;
    let session = session_of(&c1.recv_type("HAI").await);
    c1.say("one two three").await;
    c1.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let last = c1.log.iter().map(seq).max().unwrap();
    drop(c1);
    tokio::time::sleep(ms(20)).await;

    let mut c2 = srv.connect_with(Kind::Ws, Opts::resume(&session, 1)).await;
    let e = c2.recv().await;
    assert_eq!(ty(&e), "ERROR");
    assert_eq!(e["payload"]["code"], "RESUME_FAILED");
    let hai = c2.recv().await;
    assert_eq!(ty(&hai), "HAI");
    assert_eq!(hai["seq"], "1");
    assert_ne!(hai["session"], session.as_str());
    let more = c2.collect_for(ms(150)).await;
    assert!(
        !more.iter().any(|v| v["session"] == session.as_str()),
        "nothing is replayed partially: {more:?}"
    );
    drop(c2);

    // Nothing to replay after the last seq: that resume still works.
    let mut c3 = srv
        .connect_with(Kind::Ws, Opts::resume(&session, last))
        .await;
    let confirm = c3.recv().await;
    assert_eq!(ty(&confirm), "HAI", "{confirm}");
    assert_eq!(confirm["session"], session.as_str());
    assert_eq!(seq(&confirm), last + 1);
}

#[tokio::test]
async fn resume_of_an_unknown_session_by_hai_keeps_the_fresh_session() {
    for kind in [Kind::Ws, Kind::Stream] {
        let srv = Server::start().await;
        let mut c = srv.connect(kind).await;
        let mut p = hai_payload(&ALL_EVENTS);
        p["last_rx_seq"] = json!("5");
        let hai = envelope(&next_id("r"), "no-such-session", 1, "SYSTEM", "HAI", p);
        c.send(&hai).await;
        c.seq = 1;
        let first = c.recv().await;
        assert_eq!(ty(&first), "HAI");
        let fresh = first["session"].as_str().unwrap().to_string();
        let e = c.recv_type("ERROR").await;
        assert_eq!(e["payload"]["code"], "RESUME_FAILED", "{kind:?}: {e}");
        assert_eq!(e["payload"]["related_id"], hai["id"]);
        c.say("carry on").await;
        let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
        assert_eq!(run.last().unwrap()["session"], fresh.as_str());
        assert_contiguous(&c.log);
    }
}
