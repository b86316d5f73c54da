//! Rules of contract section 5 on the replay window and REPLAY_REQUEST, and the resume
//! failures of section 3 on every transport.
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

// =======================================================================================
// Section 5: the replay window and REPLAY_REQUEST
// =======================================================================================

/// Re-sent copies of `from..=to` (messages with those seqs arriving after `after` log
/// entries), in order, each identical to its first copy.
async fn resent(c: &mut Conn, after: usize, from: u64, to: u64) -> Vec<Value> {
    let n = (to - from + 1) as usize;
    let pick = |c: &Conn| -> Vec<Value> {
        c.log[after..]
            .iter()
            .filter(|v| (from..=to).contains(&seq(v)))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while pick(c).len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.frame_within(left).await {
            Some(Frame::Json(v)) => assert_ne!(ty(&v), "ERROR", "{v}"),
            other => panic!(
                "{:?}: only {} of seqs {from}..={to} re-sent ({other:?}); log: {:?}",
                c.kind,
                pick(c).len(),
                c.log
            ),
        }
    }
    let copies = pick(c);
    for (i, m) in copies.iter().enumerate() {
        assert_eq!(seq(m), from + i as u64, "in order");
        let first = c.log[..after]
            .iter()
            .find(|v| seq(v) == seq(m))
            .expect("first copy");
        assert_eq!(m, first, "original id, seq, ts and payload");
    }
    copies
}

/// "A sent message is kept until it is both beyond the newest replay_window_size and older
/// than replay_window_time": a small size alone, or a zero time alone, evicts nothing, for
/// REPLAY_REQUEST as for a resume from 0.
async fn replay_window_needs_both_limits(kind: Kind) {
    for (size, time) in [(2, 300_000), (1000, 0)] {
        let srv = Server::start_with(|c| {
            c.replay_window_size = size;
            c.replay_window_time = ms(time);
        })
        .await;
        let mut c = srv.connect(kind).await;
        c.say("a b c").await;
        c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
        c.collect_for(ms(100)).await;
        tokio::time::sleep(ms(20)).await;
        let before = c.log.len();
        c.send_msg(
            "SYSTEM",
            "REPLAY_REQUEST",
            json!({"from_seq": "1", "to_seq": "5"}),
        )
        .await;
        resent(&mut c, before, 1, 5).await;

        let session = known_session(&c);
        let last = c.log.iter().map(seq).max().unwrap();
        let log1 = c.log.clone();
        let next_seq = c.seq;
        drop(c);
        let mut c2 = srv.connect_with(kind, Opts::resume(&session, 0)).await;
        c2.seq = next_seq;
        if kind == Kind::Stream {
            c2.ping("resumed").await;
        }
        let mut replay = c2.collect_until(|v| ty(v) == "HAI" && seq(v) > last).await;
        let confirm = replay.pop().unwrap();
        assert_eq!(
            confirm["session"], session,
            "size {size}, time {time}: {confirm}"
        );
        let seqs: Vec<u64> = replay.iter().map(seq).collect();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "size {size}, time {time}: everything is replayed"
        );
        for m in &replay {
            let first = log1.iter().find(|v| seq(v) == seq(m)).unwrap();
            assert_eq!(m, first);
        }
    }
}

on_transports!(
    replay_window_keeps_until_both,
    replay_window_needs_both_limits
);

/// REPLAY_REQUEST without to_seq re-sends from from_seq through the newest message.
async fn replay_request_open_ended(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.say("replay the tail").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    c.collect_for(ms(150)).await;
    let last = c.log.iter().map(seq).max().unwrap();
    let before = c.log.len();
    c.send_msg("SYSTEM", "REPLAY_REQUEST", json!({"from_seq": "3"}))
        .await;
    let copies = resent(&mut c, before, 3, last).await;
    assert_eq!(copies.len() as u64, last - 2);
}

on_transports!(replay_request_without_to_seq, replay_request_open_ended);

/// REPLAY_TOO_OLD, and nothing of the range is re-sent (replays are all or nothing).
async fn replay_too_old_resends_nothing(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.replay_window_size = 2;
        c.replay_window_time = ms(0);
    })
    .await;
    let mut c = srv.connect(kind).await;
    c.say("a b c d").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    c.collect_for(ms(100)).await;
    tokio::time::sleep(ms(10)).await;
    let last = c.log.iter().map(seq).max().unwrap();
    let before = c.log.len();
    let req = c
        .send_msg(
            "SYSTEM",
            "REPLAY_REQUEST",
            json!({"from_seq": "1", "to_seq": last.to_string()}),
        )
        .await;
    let e = expect_error(&mut c, "REPLAY_TOO_OLD").await;
    assert_eq!(e["payload"]["related_id"], req["id"]);
    c.collect_for(ms(200)).await;
    let resent: Vec<&Value> = c.log[before..].iter().filter(|v| seq(v) <= last).collect();
    assert!(
        resent.is_empty(),
        "nothing of 1..={last} is re-sent (the newest ones are still in the window): {resent:?}"
    );
}

on_transports!(
    replay_too_old_is_all_or_nothing,
    replay_too_old_resends_nothing
);

// =======================================================================================
// Section 3: resume failures on every transport
// =======================================================================================

/// Past the replay window and another subject's session: both refused at connect time
/// (protocol_sequencing.rs and cross_transport.rs check these on WebSocket only).
async fn resume_failures(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.replay_window_size = 2;
        c.replay_window_time = ms(0);
    })
    .await;
    let mut c1 = srv.connect(kind).await;
    c1.say("one two three").await;
    c1.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    c1.collect_for(ms(100)).await;
    let session = known_session(&c1);
    let last = c1.log.iter().map(seq).max().unwrap();
    drop(c1);
    tokio::time::sleep(ms(20)).await;

    let mut past = srv.connect_with(kind, Opts::resume(&session, 1)).await;
    expect_resume_failed(&mut past, &session).await;
    if kind == Kind::Sse {
        let opts = Opts {
            last_event_id: Some(format!("{session}:1")),
            ..Opts::default()
        };
        let mut past = srv.connect_with(kind, opts).await;
        expect_resume_failed(&mut past, &session).await;
        let opts = Opts {
            last_event_id: Some("no-such-session:3".into()),
            ..Opts::default()
        };
        let mut unknown = srv.connect_with(kind, opts).await;
        expect_resume_failed(&mut unknown, "no-such-session").await;
    }
    let bob = srv.token_for("bob");
    let mut other = srv
        .connect_with(kind, Opts::resume(&session, last).with_token(bob))
        .await;
    expect_resume_failed(&mut other, &session).await;

    // The session itself is intact for its owner.
    let mut again = srv.connect_with(kind, Opts::resume(&session, last)).await;
    if kind == Kind::Stream {
        again.seq = 2;
        again.ping("mine").await;
    }
    let confirm = again.recv().await;
    assert_eq!(ty(&confirm), "HAI", "{confirm}");
    assert_eq!(confirm["session"], session.as_str());
    assert_eq!(seq(&confirm), last + 1);
}

on_transports!(resume_refused, resume_failures);

/// A resume request that cannot be read (a last_rx_seq that is not a u64, an SSE
/// Last-Event-ID of another shape) fails with RESUME_FAILED before the fresh session's HAI,
/// as any failed resume does, instead of quietly giving a fresh session (contract
/// section 3); and another user's session is refused in the same words as one that does
/// not exist.
async fn unreadable_resume(kind: Kind) {
    let srv = Server::start().await;
    let mut owner = srv.connect(kind).await;
    if kind == Kind::Stream {
        owner.ping("open").await;
    }
    owner.recv_type("HAI").await;
    let session = known_session(&owner);
    for last in ["abc", "-1", "18446744073709551616", "", "1.5", "+3"] {
        let opts = Opts {
            query: vec![
                ("session".into(), session.clone()),
                ("last_rx_seq".into(), last.into()),
            ],
            ..Opts::default()
        };
        let mut c = srv.connect_with(kind, opts).await;
        let e = expect_resume_failed_msg(&mut c, &session).await;
        assert!(e.contains("last_rx_seq"), "{last:?}: {e}");
    }
    if kind == Kind::Sse {
        for id in ["garbage", &format!("{session}:abc"), ":5", ""] {
            let opts = Opts {
                last_event_id: Some(id.to_string()),
                ..Opts::default()
            };
            let mut c = srv.connect_with(kind, opts).await;
            let e = expect_resume_failed_msg(&mut c, &session).await;
            assert!(e.contains("Last-Event-ID"), "{id:?}: {e}");
        }
    }
    let unknown = expect_resume_failed_msg(
        &mut srv
            .connect_with(kind, Opts::resume("no-such-session", 1))
            .await,
        "no-such-session",
    )
    .await;
    let bob = srv.token_for("bob");
    let foreign = expect_resume_failed_msg(
        &mut srv
            .connect_with(kind, Opts::resume(&session, 1).with_token(bob))
            .await,
        &session,
    )
    .await;
    assert_eq!(
        foreign.replace(&session, "ID"),
        unknown.replace("no-such-session", "ID"),
        "another user's session is refused as an unknown one"
    );
}

/// [`expect_resume_failed`], returning the error's message.
async fn expect_resume_failed_msg(c: &mut Conn, session: &str) -> String {
    expect_resume_failed(c, session).await;
    let e = c
        .log
        .iter()
        .find(|v| ty(v) == "ERROR")
        .expect("the RESUME_FAILED");
    e["payload"]["message"].as_str().unwrap_or("").to_string()
}

on_transports!(unreadable_resume_fails, unreadable_resume);

/// Resume by a client HAI posted to `POST /haip/messages` next to a fresh SSE stream: the
/// HAI names the kept session with last_rx_seq, so the stream must carry the replay and the
/// confirming HAI (contract section 3: "a client HAI whose envelope session names a kept
/// session ... resumes it"; the connect-time forms are an addition, not the only way).
#[tokio::test]
async fn sse_resume_by_posted_hai() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(20)).await;
    let mut c1 = srv.connect(Kind::Sse).await;
    c1.say("alpha beta gamma delta").await;
    c1.recv_type("MESSAGE_PART").await;
    let session = known_session(&c1);
    let log1 = c1.log.clone();
    let last = log1.iter().map(seq).max().unwrap();
    drop(c1);

    let mut c2 = srv.connect(Kind::Sse).await;
    let fresh = c2.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    c2.recv_type("TOOL_LIST").await;
    let mut p = hai_payload(&ALL_EVENTS);
    p["last_rx_seq"] = json!((last - 1).to_string());
    let hai = envelope(&next_id("resume"), &session, 3, "SYSTEM", "HAI", p);
    let reply = c2.send(&hai).await.expect("posted");
    assert_eq!(reply.status, 200, "{reply:?}");
    let msgs = c2.collect_for(ms(500)).await;
    let Some(at) = msgs
        .iter()
        .position(|v| ty(v) == "HAI" && v["session"] == session.as_str())
    else {
        panic!("no replay and no confirming HAI of {session} after the posted HAI: {msgs:?}");
    };
    let msgs = &msgs[..=at];
    let confirm = msgs.last().unwrap();
    let replay: Vec<&Value> = msgs
        .iter()
        .filter(|v| v["session"] == session.as_str() && ty(v) != "HAI")
        .collect();
    assert_eq!(seq(replay[0]), last, "the replay starts after last_rx_seq");
    assert_eq!(replay[0], log1.iter().find(|v| seq(v) == last).unwrap());
    assert_eq!(seq(confirm), seq(replay.last().unwrap()) + 1);
    if !c2.log.iter().any(|v| ty(v) == "RUN_FINISHED") {
        c2.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    }
    assert!(
        srv.state.engine.get(&fresh).is_none(),
        "the fresh session is dropped"
    );
}
