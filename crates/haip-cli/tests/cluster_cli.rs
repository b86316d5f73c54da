//! Cluster mode with real `haip serve` processes on one real `redis-server` (contract
//! section 13): a node killed (SIGKILL) in the middle of an answer. The client resumes on
//! another node and gets every stored message exactly once, without a gap, and the run
//! that was open on the dead node is ended with RUN_ERROR AGENT_ERROR "agent node lost".
//! In-process multi-node tests are in `haip-server/tests/cluster.rs`.

mod common;
#[path = "../../haip-server/tests/common/redis.rs"]
#[allow(dead_code)] // the restart helpers are for the in-process suite
mod redis;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "cluster-test-secret";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn node(redis: &redis::Redis, name: &str) -> common::Served {
    common::serve_node(&redis.url(), name, SECRET, &["--echo-word-delay", "40"])
}

async fn connect(port: u16, token: &str, query: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{port}/haip/websocket?token={token}{query}");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("connect in time")
    .expect("websocket handshake");
    ws
}

/// The next JSON message, or None when the connection ends or nothing comes in `within`.
async fn next(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(within, ws.next()).await.ok()??.ok()?;
        match frame {
            Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

fn seq(v: &Value) -> u64 {
    v["seq"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn envelope(session: &str, seq: u64, ty: &str, payload: Value) -> Value {
    json!({"id": format!("c{seq}"), "session": session, "seq": seq.to_string(),
           "ts": "0", "channel": "USER", "type": ty, "payload": payload})
}

#[tokio::test]
async fn a_node_killed_mid_answer_loses_nothing_stored_and_its_run_is_ended_elsewhere() {
    let Some(redis) = redis::Redis::start() else {
        return;
    };
    let mut a = node(&redis, "node-a");
    let b = node(&redis, "node-b");
    let token = common::mint(SECRET, "alice");
    let text: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();

    let mut ws = connect(a.port, &token, "").await;
    let hai = next(&mut ws, Duration::from_secs(5)).await.expect("HAI");
    let session = hai["session"].as_str().expect("session").to_string();
    let start = envelope(
        &session,
        1,
        "MESSAGE_START",
        json!({"message_id": "m1", "text": text.join(" ")}),
    );
    let end = envelope(&session, 2, "MESSAGE_END", json!({"message_id": "m1"}));
    for env in [start, end] {
        ws.send(Message::Text(env.to_string().into()))
            .await
            .expect("send");
    }
    let mut got: BTreeMap<u64, Value> = BTreeMap::new();
    got.insert(seq(&hai), hai);
    let mut parts = 0;
    while parts < 10 {
        let m = next(&mut ws, Duration::from_secs(5))
            .await
            .expect("answer streams");
        if m["type"] == "MESSAGE_PART" {
            parts += 1;
        }
        got.insert(seq(&m), m);
    }
    let run_id = got
        .values()
        .find(|m| m["type"] == "RUN_STARTED")
        .and_then(|m| m["run_id"].as_str())
        .expect("the run")
        .to_string();
    let last = *got.keys().last().expect("received");

    // SIGKILL: no goodbye, its lease runs out by itself.
    a.child.kill().expect("kill node a");
    let _ = a.child.wait();
    drop(ws);

    let mut ws = connect(
        b.port,
        &token,
        &format!("&session={session}&last_rx_seq={last}"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ended = None;
    while Instant::now() < deadline {
        let Some(m) = next(&mut ws, Duration::from_secs(20)).await else {
            break;
        };
        assert_eq!(m["session"], session.as_str(), "{m}");
        assert!(
            got.insert(seq(&m), m.clone()).is_none(),
            "seq {} twice: {m}",
            seq(&m)
        );
        if m["type"] == "RUN_ERROR" || m["type"] == "RUN_FINISHED" {
            ended = Some(m);
            break;
        }
    }
    let ended = ended.expect("the run open on the dead node is ended");
    assert_eq!(ended["type"], "RUN_ERROR", "{ended}");
    assert_eq!(ended["run_id"], run_id.as_str());
    assert_eq!(ended["payload"]["code"], "AGENT_ERROR");
    assert_eq!(ended["payload"]["message"], "agent node lost");

    // Gap-free from 1, every stored message once, and the words a prefix of the text.
    let seqs: Vec<u64> = got.keys().copied().collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    let words: Vec<String> = got
        .values()
        .filter(|m| m["type"] == "MESSAGE_PART")
        .map(|m| {
            m["payload"]["text"]
                .as_str()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .collect();
    assert!(words.len() >= 10);
    assert_eq!(
        words,
        text[..words.len()].to_vec(),
        "in order, nothing skipped"
    );
    let stored = redis
        .command(&format!("XLEN haip:{{{session}}}:out"))
        .unwrap_or_default();
    assert_eq!(
        stored.trim().trim_start_matches(':'),
        seqs.len().to_string(),
        "every stored message reached the client once"
    );
    drop(b);
}
