//! Agent workers (contract section 12.2) over real sockets: workers attach at
//! `/haip/agent` with an agent token and answer users' messages; one test per rule.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use haip_server::agent::workers::{WorkerPool, WorkersAgent};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server() -> Server {
    server_with(|_| {}).await
}

async fn server_with(tweak: impl FnOnce(&mut haip_server::config::ServerConfig)) -> Server {
    let agent = Arc::new(WorkersAgent::new(WorkerPool::new()));
    Server::start_with_config_and_agent(tweak, agent).await
}

fn agent_token(srv: &Server) -> String {
    srv.state
        .auth
        .mint_with_role("worker-1", 3600, Some("agent"))
        .expect("mint")
}

/// A worker as a test drives it: its socket and its own numbering.
struct Worker {
    ws: Ws,
    seq: u64,
    session: String,
}

impl Worker {
    async fn connect(srv: &Server) -> Worker {
        let url = format!("ws://{}/haip/agent?token={}", srv.addr, agent_token(srv));
        let (ws, _) = bounded(tokio_tungstenite::connect_async(url))
            .await
            .expect("upgrade");
        let mut w = Worker {
            ws,
            seq: 0,
            session: String::new(),
        };
        let hai = w.recv().await;
        assert_eq!(ty(&hai), "HAI", "{hai}");
        assert_eq!(hai["seq"], "1");
        w.session = hai["session"].as_str().unwrap().to_string();
        w
    }

    async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("a frame in time")
    }

    async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(within, self.ws.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(f))) => {
                    return Some(json!({"closed": f.map(|f| u16::from(f.code))}))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn recv_type(&mut self, t: &str) -> Value {
        loop {
            let v = self.recv().await;
            if ty(&v) == t {
                return v;
            }
        }
    }

    /// The next job: its RUN_STARTED.
    async fn job(&mut self) -> Value {
        self.recv_type("RUN_STARTED").await
    }

    async fn send(&mut self, t: &str, payload: Value, run_id: Option<&str>) -> Value {
        self.seq += 1;
        let mut env = envelope(
            &next_id("w"),
            &self.session,
            self.seq,
            if t == "RUN_FINISHED" || t == "RUN_ERROR" || t.starts_with("MESSAGE") {
                "AGENT"
            } else {
                "SYSTEM"
            },
            t,
            payload,
        );
        if let Some(r) = run_id {
            env["run_id"] = json!(r);
        }
        self.send_raw(&env).await;
        env
    }

    async fn send_raw(&mut self, env: &Value) {
        self.ws
            .send(Message::text(env.to_string()))
            .await
            .expect("send");
    }

    /// Answers a job with `text` in one message, then RUN_FINISHED OK.
    async fn answer(&mut self, run_id: &str, text: &str) {
        let m = next_id("a");
        self.send(
            "MESSAGE_START",
            json!({"message_id": m, "author": "test-worker"}),
            Some(run_id),
        )
        .await;
        self.send(
            "MESSAGE_PART",
            json!({"message_id": m, "text": text}),
            Some(run_id),
        )
        .await;
        self.send("MESSAGE_END", json!({"message_id": m}), Some(run_id))
            .await;
        self.send("RUN_FINISHED", json!({"status": "OK"}), Some(run_id))
            .await;
    }
}

async fn user(srv: &Server) -> Conn {
    let mut c = srv.connect(Kind::Ws).await;
    c.recv_type("TOOL_LIST").await;
    c
}

/// The user says `text`, the worker gets the job, the user cancels its run and the
/// worker is told: returns the run id.
async fn cancel_a_job(u: &mut Conn, w: &mut Worker, text: &str) -> String {
    u.say(text).await;
    let job = w.job().await;
    let rid = run_id(&job);
    u.recv_type("RUN_STARTED").await;
    u.send_msg("USER", "RUN_CANCEL", json!({"run_id": rid}))
        .await;
    let cancel = w.recv_type("RUN_CANCEL").await;
    assert_eq!(cancel["payload"]["run_id"], rid.as_str());
    rid
}

fn run_id(v: &Value) -> String {
    v["run_id"].as_str().expect("run_id").to_string()
}

#[tokio::test]
async fn a_user_message_becomes_a_job_and_the_answer_the_sessions_own() {
    let srv = server().await;
    let mut w = Worker::connect(&srv).await;
    let mut u = user(&srv).await;
    let mut start = u.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": "q1", "text": "what is HAIP?"}),
    );
    start["thread_id"] = json!("t-1");
    let mut end = u.msg("USER", "MESSAGE_END", json!({"message_id": "q1"}));
    end["thread_id"] = json!("t-1");
    u.send(&start).await;
    u.send(&end).await;
    let job = w.job().await;
    assert_eq!(chan(&job), "AGENT");
    let meta = &job["payload"]["metadata"];
    assert_eq!(meta["text"], "what is HAIP?");
    assert_eq!(meta["subject"], USER);
    assert_eq!(meta["conversation"], "t-1");
    assert_eq!(job["payload"]["thread_id"], "t-1");
    let session = meta["session"].as_str().unwrap().to_string();
    let rid = run_id(&job);
    assert_eq!(job["payload"]["run_id"], rid.as_str());
    let started = u.recv_type("RUN_STARTED").await;
    assert_eq!(run_id(&started), rid, "the user's run has the job's run_id");
    assert_eq!(started["session"], session.as_str());
    w.answer(&rid, "a protocol").await;
    let run = u.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let part = run.iter().find(|v| ty(v) == "MESSAGE_PART").unwrap();
    assert_eq!(part["payload"]["text"], "a protocol");
    assert_eq!(part["run_id"], rid.as_str());
    assert_eq!(
        part["session"],
        session.as_str(),
        "the session's own message"
    );
    assert_eq!(run.last().unwrap()["payload"]["status"], "OK");
    assert_contiguous(&u.log);
}

#[tokio::test]
async fn each_message_goes_to_the_worker_with_the_fewest_open_runs() {
    let srv = server().await;
    let mut a = Worker::connect(&srv).await;
    let mut b = Worker::connect(&srv).await;
    let mut u = user(&srv).await;
    u.say("one").await;
    // Equal loads: the one connected first.
    let first = a.job().await;
    u.say("two").await;
    let second = b.job().await;
    assert_eq!(second["payload"]["metadata"]["text"], "two");
    // a finishes its run: it has fewer open runs than b.
    a.answer(&run_id(&first), "1").await;
    u.recv_type("RUN_FINISHED").await;
    u.say("three").await;
    let third = a.job().await;
    assert_eq!(third["payload"]["metadata"]["text"], "three");
    assert!(
        b.recv_within(ms(200)).await.is_none(),
        "b had more open runs"
    );
    let (_, stats) = srv.get_json("/stats").await;
    let workers = &stats["workers"];
    assert_eq!(workers["connected"], 2);
    let open: Vec<u64> = workers["openRuns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["openRuns"].as_u64().unwrap())
        .collect();
    assert_eq!(open, [1, 1], "{workers}");
}

#[tokio::test]
async fn a_cancel_is_forwarded_and_a_run_not_finished_in_5_s_is_finished_cancelled() {
    let srv = server().await;
    let mut w = Worker::connect(&srv).await;
    let mut u = user(&srv).await;
    let rid = cancel_a_job(&mut u, &mut w, "long job").await;
    let asked = std::time::Instant::now();
    // The worker does not finish it; the server does, after the deadline (longer than
    // the harness's usual wait).
    let finished = loop {
        match u.frame_within(Duration::from_secs(8)).await {
            Some(Frame::Json(v)) if ty(&v) == "RUN_FINISHED" => break v,
            Some(Frame::Json(_)) => continue,
            other => panic!("no RUN_FINISHED: {other:?}"),
        }
    };
    assert_eq!(finished["payload"]["status"], "CANCELLED");
    assert!(
        asked.elapsed() >= Duration::from_millis(4900),
        "not before the deadline"
    );
    // Later messages for that run are strays.
    w.send(
        "MESSAGE_PART",
        json!({"message_id": "x", "text": "late"}),
        Some(&rid),
    )
    .await;
    let e = w.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND");
}

#[tokio::test]
async fn a_worker_that_finishes_a_cancelled_run_ends_it_at_once() {
    let srv = server().await;
    let mut w = Worker::connect(&srv).await;
    let mut u = user(&srv).await;
    u.say("job").await;
    let rid = run_id(&w.job().await);
    u.recv_type("RUN_STARTED").await;
    u.send_msg("USER", "RUN_CANCEL", json!({"run_id": rid}))
        .await;
    w.recv_type("RUN_CANCEL").await;
    w.send("RUN_FINISHED", json!({"status": "CANCELLED"}), Some(&rid))
        .await;
    let finished = u.recv_type("RUN_FINISHED").await;
    assert_eq!(finished["payload"]["status"], "CANCELLED");
}

#[tokio::test]
async fn without_a_worker_the_run_fails_at_once_and_is_counted() {
    let srv = server().await;
    let mut u = user(&srv).await;
    u.say("anyone?").await;
    let e = u.recv_type("RUN_ERROR").await;
    assert_eq!(e["payload"]["code"], "AGENT_ERROR");
    assert_eq!(e["payload"]["message"], "no agent worker connected");
    let (_, stats) = srv.get_json("/stats").await;
    assert_eq!(stats["workers"]["dispatchFailures"], 1);
    let (_, metrics) = {
        let r = bounded(http().get(srv.url("/metrics")).send())
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    assert!(
        metrics.contains("haip_worker_dispatch_failures_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("haip_workers_connected 0"), "{metrics}");
}

#[tokio::test]
async fn a_worker_that_goes_away_ends_its_runs_with_agent_error() {
    let srv = server().await;
    let mut w = Worker::connect(&srv).await;
    let mut u = user(&srv).await;
    u.say("one").await;
    u.say("two").await;
    w.job().await;
    w.job().await;
    drop(w);
    for _ in 0..2 {
        let e = u.recv_type("RUN_ERROR").await;
        assert_eq!(e["payload"]["code"], "AGENT_ERROR");
    }
}

#[tokio::test]
async fn stray_run_ids_and_bad_envelopes_get_errors_and_repeated_ones_a_close() {
    let srv = server().await;
    let mut w = Worker::connect(&srv).await;
    let sent = w
        .send(
            "MESSAGE_PART",
            json!({"message_id": "m", "text": "?"}),
            Some("nope"),
        )
        .await;
    let e = w.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND");
    assert_eq!(e["payload"]["related_id"], sent["id"]);
    assert_eq!(e["ack"], "1", "the server acks the worker's seq");
    for i in 0..11 {
        w.ws.send(Message::text(format!("not json {i}")))
            .await
            .unwrap();
    }
    let mut closed = None;
    for _ in 0..20 {
        let v = w.recv().await;
        if let Some(code) = v.get("closed") {
            closed = code.as_u64();
            break;
        }
        assert_eq!(v["payload"]["code"], "PROTOCOL_VIOLATION", "{v}");
    }
    assert_eq!(closed, Some(1008));
}

#[tokio::test]
async fn user_tokens_are_refused_as_workers_and_agent_tokens_open_no_user_session() {
    let srv = server().await;
    let url = format!("ws://{}/haip/agent?token={}", srv.addr, srv.token());
    let (mut ws, _) = bounded(tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    let mut saw_error = false;
    let mut close = None;
    while let Some(Ok(m)) = bounded(ws.next()).await {
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["payload"]["code"], "AUTHENTICATION_FAILED");
                saw_error = true;
            }
            Message::Close(f) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert!(saw_error);
    assert_eq!(close, Some(1008));
    // An agent token on a user endpoint.
    let r = bounded(
        http()
            .post(srv.url("/haip/stream"))
            .bearer_auth(agent_token(&srv))
            .body("")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let mut c = srv
        .connect_with(Kind::Ws, Opts::token(agent_token(&srv)))
        .await;
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "AUTHENTICATION_FAILED");
    assert_eq!(srv.get_json("/stats").await.1["sessions"], 0);
}

/// A user who does not read: once the output held for the worker's runs passes the bound
/// the worker is told PAUSE_CHANNEL AGENT, and RESUME_CHANNEL once the user caught up.
#[tokio::test]
async fn a_user_who_does_not_read_pauses_the_worker_until_drained() {
    let srv = server_with(|c| c.flow_control_max_held_messages = 100).await;
    let mut w = Worker::connect(&srv).await;
    let mut u = srv.connect(Kind::Ws).await;
    // The user grants little credit and grants no more until it chooses to.
    u.send_msg(
        "SYSTEM",
        "HAI",
        json!({"haip_version": "1.1.2", "accept_major": [1],
               "accept_events": ["HAI", "ERROR", "RUN_STARTED", "RUN_FINISHED", "MESSAGE_START",
                                 "MESSAGE_PART", "MESSAGE_END", "FLOW_UPDATE", "RUN_ERROR"],
               "capabilities": {"flow_control": {"initial_credit_messages": 5,
                                                  "initial_credit_bytes": 1000000}}}),
    )
    .await;
    u.say("flood me").await;
    let rid = run_id(&w.job().await);
    let m = "m1";
    w.send("MESSAGE_START", json!({"message_id": m}), Some(&rid))
        .await;
    let mut paused = false;
    for i in 0..200 {
        w.send(
            "MESSAGE_PART",
            json!({"message_id": m, "text": format!("{i} ")}),
            Some(&rid),
        )
        .await;
        if i % 10 == 0 {
            if let Some(v) = w.recv_within(ms(100)).await {
                if ty(&v) == "PAUSE_CHANNEL" {
                    assert_eq!(v["payload"]["channel"], "AGENT");
                    paused = true;
                    break;
                }
            }
        }
    }
    if !paused {
        let v = w.recv_type("PAUSE_CHANNEL").await;
        assert_eq!(v["payload"]["channel"], "AGENT");
    }
    // The user catches up: credit for everything held.
    u.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 10000, "add_bytes": 10000000}),
    )
    .await;
    let resumed = w.recv_type("RESUME_CHANNEL").await;
    assert_eq!(resumed["payload"]["channel"], "AGENT");
    w.send("MESSAGE_END", json!({"message_id": m}), Some(&rid))
        .await;
    w.send("RUN_FINISHED", json!({"status": "OK"}), Some(&rid))
        .await;
    let run = u.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["payload"]["status"], "OK");
}

/// A user who drops mid-answer resumes and gets the worker's whole answer, in order.
#[tokio::test]
async fn a_user_resumes_an_answer_a_worker_is_still_giving() {
    let srv = server().await;
    let mut w = Worker::connect(&srv).await;
    let mut u = user(&srv).await;
    u.say("tell me").await;
    let rid = run_id(&w.job().await);
    w.send("MESSAGE_START", json!({"message_id": "m"}), Some(&rid))
        .await;
    for word in ["one ", "two "] {
        w.send(
            "MESSAGE_PART",
            json!({"message_id": "m", "text": word}),
            Some(&rid),
        )
        .await;
    }
    let first = u.recv_type("MESSAGE_PART").await;
    let session = first["session"].as_str().unwrap().to_string();
    let last_seen = seq(&first);
    drop(u);
    for word in ["three ", "four"] {
        w.send(
            "MESSAGE_PART",
            json!({"message_id": "m", "text": word}),
            Some(&rid),
        )
        .await;
    }
    w.send("MESSAGE_END", json!({"message_id": "m"}), Some(&rid))
        .await;
    w.send("RUN_FINISHED", json!({"status": "OK"}), Some(&rid))
        .await;
    let mut again = srv
        .connect_with(Kind::Ws, Opts::resume(&session, last_seen))
        .await;
    let rest = again.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let text: String = rest
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "two three four");
    let seqs: Vec<u64> = rest.iter().filter(|v| ty(v) != "HAI").map(seq).collect();
    assert_eq!(seqs.first(), Some(&(last_seen + 1)), "nothing skipped");
}

/// A worker that stops answering (a dead host, a hung process) is dropped after a PING it
/// leaves unanswered, and its users' runs end with AGENT_ERROR.
#[tokio::test]
async fn a_worker_that_answers_no_ping_is_dropped() {
    let srv = server_with(|c| {
        c.heartbeat_interval = ms(300);
        c.heartbeat_timeout = ms(300);
    })
    .await;
    let mut w = Worker::connect(&srv).await;
    let mut u = user(&srv).await;
    u.say("hello?").await;
    w.job().await;
    let ping = w.recv_type("PING").await;
    assert_eq!(chan(&ping), "SYSTEM");
    // Silence from the worker: no PONG, nothing. (The user answers its own PINGs: the
    // heartbeat is as short for it.)
    let e = loop {
        let v = u.recv().await;
        match ty(&v) {
            "PING" => {
                u.send_msg("SYSTEM", "PONG", json!({"nonce": v["payload"]["nonce"]}))
                    .await;
            }
            "RUN_ERROR" => break v,
            _ => {}
        }
    };
    assert_eq!(e["payload"]["code"], "AGENT_ERROR");
    let mut closed = None;
    while let Some(v) = w.recv_within(Duration::from_secs(2)).await {
        if let Some(code) = v.get("closed") {
            closed = code.as_u64();
            break;
        }
    }
    assert_eq!(closed, Some(1001));
}

/// A worker that keeps sending (a fast stream) still gets the cancel at once: its
/// messages do not hold back the server's look at cancels.
#[tokio::test]
async fn a_cancel_reaches_a_worker_that_is_streaming() {
    let srv = server().await;
    let mut w = Worker::connect(&srv).await;
    let mut u = user(&srv).await;
    u.say("stream").await;
    let rid = run_id(&w.job().await);
    u.recv_type("RUN_STARTED").await;
    w.send("MESSAGE_START", json!({"message_id": "m"}), Some(&rid))
        .await;
    let mut cancelled_after = None;
    for i in 0..300 {
        w.send(
            "MESSAGE_PART",
            json!({"message_id": "m", "text": "x "}),
            Some(&rid),
        )
        .await;
        if i == 20 {
            u.send_msg("USER", "RUN_CANCEL", json!({"run_id": rid}))
                .await;
        }
        if let Some(v) = w.recv_within(ms(10)).await {
            if ty(&v) == "RUN_CANCEL" {
                cancelled_after = Some(i);
                break;
            }
        }
    }
    let at = cancelled_after.expect("the cancel arrived while streaming");
    assert!(at < 150, "arrived after {at} parts (10 ms apart)");
}

/// Cluster mode (contract section 13): a worker attached to one node answers the users
/// of another; its run is the user's, cancellable from there.
#[tokio::test]
async fn workers_on_one_node_answer_users_of_another() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    let node = |name: &'static str| {
        let url = redis.url();
        server_with(move |c| {
            c.redis_url = Some(url);
            c.node_id = Some(name.to_string());
        })
    };
    let (a, b) = (node("node-a").await, node("node-b").await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.get_json("/health").await.0 != 200 || b.get_json("/health").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut w = Worker::connect(&a).await;
    // Node a says it has workers with its next heartbeat.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while redis.command("HLEN haip:worker-nodes").as_deref() != Some(":1\r\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node a never listed its worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut u = user(&b).await;
    u.say("answered elsewhere?").await;
    let job = w.job().await;
    assert_eq!(job["payload"]["metadata"]["text"], "answered elsewhere?");
    let rid = run_id(&job);
    w.answer(&rid, "yes, by a worker on node a").await;
    let run = u.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let started = run
        .iter()
        .find(|v| ty(v) == "RUN_STARTED")
        .expect("its run");
    assert_eq!(run_id(started), rid, "{run:?}");
    let part = run
        .iter()
        .find(|v| ty(v) == "MESSAGE_PART")
        .expect("a part");
    assert_eq!(part["payload"]["text"], "yes, by a worker on node a");
    assert_eq!(
        run.last().map(|v| v["payload"]["status"].clone()),
        Some(json!("OK"))
    );

    // RUN_CANCEL on node b reaches the job on node a.
    let rid = cancel_a_job(&mut u, &mut w, "and cancelled?").await;
    w.send("RUN_FINISHED", json!({"status": "CANCELLED"}), Some(&rid))
        .await;
    let finished = u.recv_type("RUN_FINISHED").await;
    assert_eq!(finished["payload"]["status"], "CANCELLED");
}
