//! The memory budget under hostile load: `haip serve --memory-limit 256MiB` as its own
//! process, attacked at once by every kind of client that once made it hold gigabytes
//! (replay requests for a reader that stopped reading, out-of-order megabyte messages on
//! fresh channels, a message that never ends, stalled request bodies, idle sockets,
//! thousands of channel names), while honest clients keep chatting. The server's resident
//! memory is read from /proc throughout and must stay under the budget plus the process's
//! own footprint; every honest echo must come back whole. Bounded: about 20 s.

mod common;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const LIMIT_MIB: u64 = 256;
/// The budget counts what clients make the server hold; the process itself (code,
/// runtime, allocator slack) comes on top.
const ALLOWED_RSS_MIB: u64 = 320;
const ATTACK: Duration = Duration::from_secs(12);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn envelope(session: &str, seq: u64, channel: &str, ty: &str, payload: Value) -> String {
    json!({"id": format!("e{seq}-{ty}"), "session": session, "seq": seq.to_string(),
        "ts": "0", "channel": channel, "type": ty, "payload": payload})
    .to_string()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket session past its HAI: the socket and the session id.
async fn open(port: u16, token: &str) -> (Ws, String) {
    let url = format!("ws://127.0.0.1:{port}/haip/websocket?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("no HAI");
        };
        let v: Value = serde_json::from_str(&t).expect("json");
        if v["type"] == "HAI" {
            return (ws, v["session"].as_str().expect("session").to_string());
        }
    }
}

/// An honest client: chats until `stop` and twice more after it, checking each echo comes
/// back whole; returns how many rounds it made.
async fn honest(port: u16, token: String, n: usize, stop: Instant) -> usize {
    let (mut ws, session) = open(port, &token).await;
    let mut seq = 0;
    let mut rounds = 0;
    let mut after = 0;
    while Instant::now() < stop || after < 2 {
        if Instant::now() >= stop {
            after += 1;
        }
        let text = (0..30)
            .map(|w| format!("h{n}r{rounds}w{w}"))
            .collect::<Vec<_>>()
            .join(" ");
        let id = format!("m{n}-{rounds}");
        for (ty, payload) in [
            ("MESSAGE_START", json!({"message_id": id, "text": text})),
            ("MESSAGE_END", json!({"message_id": id})),
        ] {
            seq += 1;
            ws.send(Message::Text(
                envelope(&session, seq, "USER", ty, payload).into(),
            ))
            .await
            .expect("send");
        }
        let mut echoed = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .unwrap_or_else(|_| panic!("honest client {n}: no echo within 20 s"))
                .expect("open")
                .expect("frame");
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).expect("json");
            match v["type"].as_str() {
                Some("MESSAGE_PART") if v["channel"] == "AGENT" => {
                    echoed.push_str(v["payload"]["text"].as_str().unwrap_or(""));
                }
                Some("RUN_FINISHED") => break,
                Some("ERROR") => panic!("honest client {n} got {v}"),
                _ => {}
            }
        }
        assert_eq!(echoed, text, "honest client {n}: the whole echo");
        rounds += 1;
    }
    rounds
}

/// A reader that stopped reading, its replay window full, asked to replay it over and
/// over through `POST /haip/messages`.
async fn replay_amplifier(port: u16, token: String) {
    let (mut ws, session) = open(port, &token).await;
    let text = vec!["flood"; 3000].join(" ");
    for (seq, ty, payload) in [
        (1, "MESSAGE_START", json!({"message_id": "f", "text": text})),
        (2, "MESSAGE_END", json!({"message_id": "f"})),
    ] {
        let _ = ws
            .send(Message::Text(
                envelope(&session, seq, "USER", ty, payload).into(),
            ))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = haip_client::tls::http_client();
    let mut seq = 2;
    for _ in 0..4 {
        let batch: Vec<Value> = (0..5000)
            .map(|_| {
                seq += 1;
                serde_json::from_str(&envelope(
                    &session,
                    seq,
                    "SYSTEM",
                    "REPLAY_REQUEST",
                    json!({"from_seq": "1"}),
                ))
                .expect("json")
            })
            .collect();
        let _ = http
            .post(format!("http://127.0.0.1:{port}/haip/messages"))
            .bearer_auth(&token)
            .header("X-HAIP-Session", &session)
            .json(&batch)
            .send()
            .await;
    }
    tokio::time::sleep(ATTACK).await;
    drop(ws);
}

/// Out-of-order megabyte messages, each on a fresh channel, never filling the gap.
async fn gap_filler(port: u16, token: String) {
    let (mut ws, session) = open(port, &token).await;
    let big = "x".repeat(1_000_000);
    for i in 0..40u64 {
        let env = envelope(
            &session,
            i + 2,
            &format!("c{i}"),
            "MESSAGE_PART",
            json!({"message_id": format!("g{i}"), "text": big}),
        );
        if ws.send(Message::Text(env.into())).await.is_err() {
            break;
        }
    }
    tokio::time::sleep(ATTACK).await;
}

/// A user message that never ends: 300 MiB of parts.
async fn endless_message(port: u16, token: String, stop: Instant) {
    let (mut ws, session) = open(port, &token).await;
    let part = "y".repeat(512 * 1024);
    let start = envelope(
        &session,
        1,
        "USER",
        "MESSAGE_START",
        json!({"message_id": "e"}),
    );
    let _ = ws.send(Message::Text(start.into())).await;
    let mut seq = 1;
    while Instant::now() < stop && seq <= 600 {
        seq += 1;
        let env = envelope(
            &session,
            seq,
            "USER",
            "MESSAGE_PART",
            json!({"message_id": "e", "text": part}),
        );
        if ws.send(Message::Text(env.into())).await.is_err() {
            return;
        }
        // Read what the server says, so that its answers do not pile up here.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), ws.next()).await {}
    }
}

/// Thousands of channel names.
async fn channel_namer(port: u16, token: String, stop: Instant) {
    let (mut ws, session) = open(port, &token).await;
    let mut seq = 0;
    while Instant::now() < stop && seq < 50_000 {
        seq += 1;
        let env = envelope(
            &session,
            seq,
            &format!("name{seq}"),
            "MESSAGE_PART",
            json!({"message_id": "n", "text": "z"}),
        );
        if ws.send(Message::Text(env.into())).await.is_err() {
            return;
        }
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_micros(10), ws.next()).await {}
    }
}

/// NDJSON requests whose first line never completes, and sockets that say nothing.
async fn stallers(port: u16, token: String) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for i in 0..520 {
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        if i < 20 {
            let head = format!(
                "POST /haip/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: 10000000\r\n\r\n"
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(&vec![b'a'; 4_000_000]).await;
        }
        held.push(tcp);
    }
    held
}

#[test]
fn under_hostile_load_memory_stays_within_the_budget_and_honest_clients_are_served() {
    let served = common::serve(&[
        "--memory-limit",
        &format!("{LIMIT_MIB}MiB"),
        "--echo-word-delay",
        "0",
        "--max-connections",
        "2000",
    ]);
    let pid = served.child.id();
    let port = served.port;
    let token = served.token.clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let baseline = rss_kib(pid);
        let stop = Instant::now() + ATTACK;
        // The honest clients run on a runtime of their own: the attackers poll in tight
        // loops, and on this one they would starve them in this process, which would
        // say nothing of the server.
        let honest_token = token.clone();
        let honest_clients = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let clients: Vec<_> = (0..5)
                    .map(|n| tokio::spawn(honest(port, honest_token.clone(), n, stop)))
                    .collect();
                let mut rounds = Vec::new();
                for h in clients {
                    rounds.push(h.await.expect("an honest client failed"));
                }
                rounds
            })
        });
        let mut attackers = Vec::new();
        for _ in 0..4 {
            attackers.push(tokio::spawn(replay_amplifier(port, token.clone())));
        }
        for _ in 0..20 {
            attackers.push(tokio::spawn(gap_filler(port, token.clone())));
        }
        attackers.push(tokio::spawn(endless_message(port, token.clone(), stop)));
        attackers.push(tokio::spawn(channel_namer(port, token.clone(), stop)));
        let stalled = tokio::spawn(stallers(port, token.clone()));
        let mut peak = baseline;
        while Instant::now() < stop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(rss_kib(pid));
        }
        for a in attackers {
            a.abort();
        }
        drop(stalled.await);
        let rounds = honest_clients.join().expect("the honest clients");
        let stats: Value = haip_client::tls::http_client()
            .get(format!("http://127.0.0.1:{port}/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        println!(
            "server RSS: baseline {} MiB, peak {} MiB (allowed {ALLOWED_RSS_MIB}); honest rounds {rounds:?}; memory {}",
            baseline / 1024,
            peak / 1024,
            stats["memory"]
        );
        // Each was answered during the attack and after it.
        assert!(
            rounds.iter().all(|r| *r >= 3),
            "honest clients kept being served: {rounds:?} rounds"
        );
        assert!(
            peak / 1024 <= ALLOWED_RSS_MIB,
            "server RSS peaked at {} MiB under a {LIMIT_MIB} MiB budget",
            peak / 1024
        );
        assert_eq!(stats["memory"]["limit"], LIMIT_MIB * 1024 * 1024);
    });
}
