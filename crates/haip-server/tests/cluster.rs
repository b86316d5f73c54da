//! Cluster mode (contract section 13), with in-process nodes that share a real
//! `redis-server` started by the test: resume on another node in every form and on every
//! transport, an agent still answering on the first node, POSTs to another node, the
//! takeover closing the first connection, subjects kept apart, every message stored before
//! it is written, and a Redis outage. The node deaths (SIGKILL) are in
//! `haip-cli/tests/cluster.rs`, with real `haip serve` processes.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

/// Two nodes on one Redis (the echo agent answers a word every `word_delay`).
struct Cluster {
    redis: Redis,
    a: Server,
    b: Server,
}

async fn cluster(word_delay: u64) -> Option<Cluster> {
    let redis = Redis::start()?;
    let a = node(&redis, "node-a", word_delay).await;
    let b = node(&redis, "node-b", word_delay).await;
    Some(Cluster { redis, a, b })
}

async fn node(redis: &Redis, name: &str, word_delay: u64) -> Server {
    let url = redis.url();
    let name = name.to_string();
    let server = Server::start_with(move |c| {
        c.redis_url = Some(url);
        c.node_id = Some(name);
        c.echo_word_delay = ms(word_delay);
    })
    .await;
    wait_health(&server, 200).await;
    server
}

/// Waits until the node's /health answers `status` (bounded: 10 s).
async fn wait_health(server: &Server, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = server.get_json("/health").await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health stayed {got} {body}, waited for {status}"
        );
        tokio::time::sleep(ms(50)).await;
    }
}

/// Reads a resume's replay and confirming HAI on `c` and checks them against `before`
/// (what the client had, of which it reported up to `after`); returns the HAI.
async fn replay_and_confirm(c: &mut Conn, before: &[Value], session: &str, after: u64) -> Value {
    let mut replay = c
        .collect_until(|v| ty(v) == "HAI" && v["session"] == session)
        .await;
    let confirm = replay.pop().expect("confirming HAI");
    check_replay(&replay, &confirm, before, session, after);
    confirm
}

#[tokio::test]
async fn a_session_resumes_on_another_node_mid_answer_in_every_form_on_every_transport() {
    let Some(cl) = cluster(40).await else { return };
    let cases = [
        (Kind::Ws, ResumeForm::Url),
        (Kind::Ws, ResumeForm::Hai),
        (Kind::Sse, ResumeForm::Url),
        (Kind::Sse, ResumeForm::LastEventId),
        (Kind::Sse, ResumeForm::Hai),
        (Kind::Stream, ResumeForm::Url),
        (Kind::Stream, ResumeForm::Hai),
    ];
    for (kind, form) in cases {
        let text = words(16);
        let (session, log1, last) = answer_then_leave(&cl.a, kind, &text, 3).await;
        // The agent keeps answering on node A while the client is away.
        tokio::time::sleep(ms(150)).await;

        let mut c2 = resume_in_form(&cl.b, kind, form, &session, last - 2).await;
        let confirm = replay_and_confirm(&mut c2, &log1, &session, last - 2).await;
        assert_eq!(
            confirm["payload"]["last_rx_seq"], "2",
            "{kind:?} {form:?}: the client seqs node A processed"
        );
        // The rest of the answer, produced on node A, arrives through node B in order.
        c2.collect_until(|v| ty(v) == "RUN_FINISHED").await;
        let all: Vec<&Value> = log1.iter().chain(&c2.log).collect();
        check_complete_run(&all, &session, &text);
        // Node B drives the session now: acks go on from the client's last seq.
        c2.client_session = session.clone();
        c2.seq = if matches!(form, ResumeForm::Hai) {
            3
        } else {
            2
        };
        c2.ping("after-resume").await;
        let pong = c2.recv_type("PONG").await;
        assert_eq!(pong["session"], session.as_str(), "{kind:?} {form:?}");
        assert_eq!(pong["ack"], (c2.seq).to_string(), "{kind:?} {form:?}");
    }
}

#[tokio::test]
async fn the_node_that_loses_a_session_closes_its_connection() {
    let Some(cl) = cluster(5).await else { return };
    let mut c1 = cl.a.connect(Kind::Ws).await;
    let session = session_of(&c1.recv_type("HAI").await);
    c1.recv_type("TOOL_LIST").await;
    let mut c2 = cl.b.connect_with(Kind::Ws, Opts::resume(&session, 2)).await;
    let confirm = c2.recv_type("HAI").await;
    assert_eq!(confirm["session"], session.as_str());
    assert_eq!(seq(&confirm), 3);
    let (code, reason) = c1.expect_close().await;
    assert_eq!(code, Some(1000), "{reason}");
}

#[tokio::test]
async fn posts_to_one_node_reach_the_stream_on_another() {
    let Some(cl) = cluster(5).await else { return };
    let mut sse = cl.a.connect(Kind::Sse).await;
    let session = session_of(&sse.recv_type("HAI").await);
    sse.recv_type("TOOL_LIST").await;
    let base_b = format!("http://{}", cl.b.addr);
    let id = next_id("m");
    let start = envelope(
        &next_id("c"),
        &session,
        1,
        "USER",
        "MESSAGE_START",
        json!({"message_id": id, "text": "over there"}),
    );
    let end = envelope(
        &next_id("c"),
        &session,
        2,
        "USER",
        "MESSAGE_END",
        json!({"message_id": id}),
    );
    let body = json!([start, end]).to_string();
    let reply = post_messages(&base_b, &sse.token, Some(&session), &body).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["accepted"], 2);
    let answer = sse.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let echoed: String = answer
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(echoed, "over there");
    assert_eq!(
        answer.last().map(|v| v["ack"].clone()),
        Some(json!("2")),
        "node A processed both posted messages"
    );
}

#[tokio::test]
async fn subjects_stay_apart_across_nodes() {
    let Some(cl) = cluster(5).await else { return };
    let mut alice = cl.a.connect(Kind::Ws).await;
    let session = session_of(&alice.recv_type("HAI").await);
    alice.recv_type("TOOL_LIST").await;
    let bob = cl.b.token_for("bob");
    let mut intruder =
        cl.b.connect_with(Kind::Ws, Opts::resume(&session, 0).with_token(bob.clone()))
            .await;
    let refused = intruder.recv().await;
    assert_eq!(ty(&refused), "ERROR");
    assert_eq!(refused["payload"]["code"], "RESUME_FAILED");
    let fresh = intruder.recv_type("HAI").await;
    assert_ne!(
        fresh["session"],
        session.as_str(),
        "bob gets a session of his own"
    );
    let base_b = format!("http://{}", cl.b.addr);
    let ping = envelope(
        &next_id("c"),
        &session,
        1,
        "SYSTEM",
        "PING",
        json!({"nonce": "x"}),
    );
    let reply = post_messages(&base_b, &bob, Some(&session), &ping.to_string()).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    // Alice's connection on node A was not taken.
    alice.ping("still-mine").await;
    assert_eq!(alice.recv_type("PONG").await["session"], session.as_str());
}

#[tokio::test]
async fn every_message_is_in_redis_byte_for_byte_before_the_client_has_it() {
    let Some(cl) = cluster(5).await else { return };
    let mut c = cl.a.connect(Kind::Ws).await;
    let session = session_of(&c.recv_type("HAI").await);
    c.say("kept before sent").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let stored = stored_messages(&cl.redis, &session);
    assert_eq!(stored.len(), c.texts.len(), "{stored:?}");
    for (text, (seq, json)) in c.texts.iter().zip(&stored) {
        assert_eq!(
            text, json,
            "seq {seq}: the stored text is what the client got"
        );
    }
    let meta = cl
        .redis
        .command(&format!("HGET haip:{{{session}}}:meta subject"))
        .unwrap_or_default();
    assert!(meta.contains(USER), "{meta}");
}

/// The session's stream in Redis: (seq, json) of each entry.
fn stored_messages(redis: &Redis, session: &str) -> Vec<(u64, String)> {
    let raw = redis
        .command(&format!("XRANGE haip:{{{session}}}:out - +"))
        .unwrap_or_default();
    // RESP: each entry is *2, $id, *4, $1 t, $ts, $1 j, $json.
    let lines: Vec<&str> = raw.split("\r\n").collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with('$') && lines.get(i + 1).is_some_and(|l| l.ends_with("-0")) {
            let id = lines[i + 1];
            // id, *4, $1, t, $n, ts, $1, j, $n, json
            if let (Some(json), Ok(seq)) = (lines.get(i + 10), id.trim_end_matches("-0").parse()) {
                out.push((seq, json.to_string()));
            }
            i += 11;
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test]
async fn a_redis_outage_refuses_new_connections_tells_live_ones_and_loses_nothing() {
    let Some(mut cl) = cluster(5).await else {
        return;
    };
    let mut c = cl.a.connect(Kind::Ws).await;
    let session = session_of(&c.recv_type("HAI").await);
    c.recv_type("TOOL_LIST").await;

    cl.redis.stop();
    let health = wait_health(&cl.a, 503).await;
    wait_health(&cl.b, 503).await;
    assert_eq!(health["mode"], "redis");
    assert_eq!(health["node"], "node-a");
    let refused = http()
        .get(cl.b.url(&format!("/haip/sse?token={}", cl.b.token())))
        .send()
        .await
        .expect("GET /haip/sse");
    assert_eq!(
        refused.status().as_u16(),
        503,
        "new connections wait for Redis"
    );

    // The live session is told, and what it sends now is held, not lost.
    c.say("held while away").await;
    let told = c.recv_type("ERROR").await;
    assert_eq!(told["payload"]["code"], "INTERNAL_ERROR", "{told}");

    cl.redis.restart();
    wait_health(&cl.a, 200).await;
    wait_health(&cl.b, 200).await;
    let answer = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let echoed: String = answer
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(echoed, "held while away");
    let sequenced: Vec<&Value> = c.log.iter().filter(|v| seq(v) > 0).collect();
    assert_contiguous(sequenced.iter().copied());

    // Everything the client got was stored: node B replays it all, byte for byte.
    let mut again = cl.b.connect_with(Kind::Ws, Opts::resume(&session, 0)).await;
    let mut replay = again.collect_until(|v| ty(v) == "HAI" && seq(v) > 2).await;
    replay.pop();
    let before: Vec<Value> = c.log.iter().filter(|v| seq(v) > 0).cloned().collect();
    assert_eq!(replay, before);
}

#[tokio::test]
async fn followers_of_a_thread_on_every_node_get_what_is_sent_in_it() {
    let Some(cl) = cluster(5).await else { return };
    let thread = next_id("thread");
    let mut publisher = open_session(&cl.a, Kind::Ws, Opts::default()).await;
    let mut here = open_session(&cl.a, Kind::Sse, follow(&thread)).await;
    let mut there = open_session(&cl.b, Kind::Ws, follow(&thread)).await;
    let mut there_too = open_session(&cl.b, Kind::Stream, follow(&thread)).await;
    let stranger_token = cl.b.token_for("mallory");
    let mut stranger =
        open_session(&cl.b, Kind::Ws, follow(&thread).with_token(stranger_token)).await;
    // The follow is recorded in Redis as the connection opens.
    tokio::time::sleep(ms(200)).await;
    say_in(&mut publisher, &thread, "one thread on two nodes").await;
    for follower in [&mut here, &mut there, &mut there_too] {
        let session = follower.session.clone().expect("its session");
        let got = follower.collect_until(|v| ty(v) == "RUN_FINISHED").await;
        assert_eq!(
            check_thread_run(&got, &session, &thread),
            "one thread on two nodes",
            "{:?}",
            follower.kind
        );
    }
    let strangers = stranger.collect_for(ms(300)).await;
    assert!(
        strangers.iter().all(|m| m["channel"] != "AGENT"),
        "another subject's session must not see the thread: {strangers:?}"
    );
}

/// The same over a Redis Cluster (three masters): a session's keys live on one shard, its
/// node's channel is heard across the cluster.
#[tokio::test]
async fn over_a_redis_cluster_sessions_resume_on_another_node_and_posts_reach_them() {
    let Some(redis) = common::redis::RedisCluster::start() else {
        return;
    };
    let url = redis.url();
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        let url = url.clone();
        let node = Server::start_with(move |c| {
            c.redis_url = Some(url);
            c.node_id = Some(name.to_string());
            c.echo_word_delay = ms(40);
        })
        .await;
        wait_health(&node, 200).await;
        nodes.push(node);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let text = words(12);
    let (session, log1, last) = answer_then_leave(a, Kind::Ws, &text, 3).await;
    let mut c2 = b
        .connect_with(Kind::Sse, Opts::resume(&session, last - 1))
        .await;
    replay_and_confirm(&mut c2, &log1, &session, last - 1).await;
    c2.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let all: Vec<&Value> = log1.iter().chain(&c2.log).collect();
    check_complete_run(&all, &session, &text);
    // A POST to node a reaches the stream on node b.
    let ping = envelope(
        &next_id("c"),
        &session,
        3,
        "SYSTEM",
        "PING",
        json!({"nonce": "n"}),
    );
    let base_a = format!("http://{}", a.addr);
    let reply = post_messages(&base_a, &c2.token, Some(&session), &ping.to_string()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let pong = c2.recv_type("PONG").await;
    assert_eq!(pong["payload"]["nonce"], "n");
}
