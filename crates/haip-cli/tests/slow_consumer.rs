//! One client that never reads must not slow down the others or grow the server's memory
//! past its bound: `haip serve` runs as its own process, its memory is read from /proc, and
//! 50 reading clients check that they get every message while the non-reader floods.

mod common;

use std::time::{Duration, Instant};

use common::Served;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const READERS: usize = 50;
const HELD_BYTES: u64 = 4 * 1024 * 1024;
const WAIT: Duration = Duration::from_secs(60);

/// The server with the bound under test, flooding made fast (no pause between words),
/// and a short replay window so the readers' own replay stays out of the measure.
fn serve() -> Served {
    common::serve(&[
        "--flow-control-max-held-bytes",
        &HELD_BYTES.to_string(),
        "--echo-word-delay",
        "0",
        "--max-connections",
        "200",
        "--replay-window-size",
        "10",
        "--replay-window-time",
        "1",
    ])
}

/// Resident and peak resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The three envelopes of one USER text message, seq numbered from `seq`.
fn say(text: &str, seq: &mut u64, tag: &str) -> Vec<String> {
    let id = format!("{tag}-{seq}");
    let mut out = Vec::new();
    for (ty, payload) in [
        ("MESSAGE_START", json!({"message_id": id, "author": "user"})),
        ("MESSAGE_PART", json!({"message_id": id, "text": text})),
        ("MESSAGE_END", json!({"message_id": id})),
    ] {
        *seq += 1;
        out.push(
            json!({"id": format!("{tag}-e{seq}"), "session": "-", "seq": seq.to_string(),
                "ts": "0", "channel": "USER", "type": ty, "payload": payload})
            .to_string(),
        );
    }
    out
}

fn hai() -> String {
    json!({"id": "hai", "session": "-", "seq": "1", "ts": "0", "channel": "SYSTEM",
        "type": "HAI", "payload": {"haip_version": "1.1.2", "accept_major": [1],
        "accept_events": ["HAI", "ERROR", "PING", "PONG", "RUN_STARTED", "RUN_FINISHED",
            "MESSAGE_START", "MESSAGE_PART", "MESSAGE_END", "TOOL_LIST", "FLOW_UPDATE"]}})
    .to_string()
}

/// A WebSocket client written by hand over a socket with a tiny receive buffer, which
/// sends its requests and then never reads a byte.
async fn non_reader(port: u16, token: &str, texts: usize, words: usize) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let request = format!(
        "GET /haip/websocket?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: haip\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("upgrade");
    let text: String = vec!["flood"; words].join(" ");
    let mut seq = 1;
    let mut envelopes = vec![hai()];
    for i in 0..texts {
        envelopes.extend(say(&text, &mut seq, &format!("nr{i}")));
    }
    for e in envelopes {
        tcp.write_all(&masked_text_frame(e.as_bytes()))
            .await
            .expect("send");
    }
    tcp
}

fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A reading client: says `rounds` texts of `words` words and checks each echo is whole.
async fn reader(port: u16, token: String, n: usize, rounds: usize, words: usize) -> usize {
    let url = format!("ws://127.0.0.1:{port}/haip/websocket?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("reader connects");
    ws.send(Message::Text(hai().into())).await.expect("hai");
    let mut seq = 1;
    let mut parts = 0;
    for round in 0..rounds {
        let text: Vec<String> = (0..words).map(|w| format!("r{n}w{round}x{w}")).collect();
        let text = text.join(" ");
        for e in say(&text, &mut seq, &format!("r{n}-{round}")) {
            ws.send(Message::Text(e.into())).await.expect("send");
        }
        let mut echoed = String::new();
        loop {
            let msg = ws.next().await.expect("open").expect("frame");
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).expect("json");
            match v["type"].as_str() {
                Some("MESSAGE_PART") if v["channel"] == "AGENT" => {
                    parts += 1;
                    echoed.push_str(v["payload"]["text"].as_str().unwrap_or(""));
                }
                Some("RUN_FINISHED") => break,
                Some("ERROR") => panic!("reader {n} got {v}"),
                _ => {}
            }
        }
        assert_eq!(
            echoed, text,
            "reader {n} round {round}: the whole echo, in order"
        );
    }
    parts
}

#[test]
fn a_client_that_never_reads_is_bounded_and_does_not_hold_up_the_others() {
    let served = serve();
    let pid = served.child.id();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // Warm up: the readers' connections and one round each, so that the baseline
        // includes what 50 connections cost.
        let warm: Vec<_> = (0..READERS)
            .map(|n| tokio::spawn(reader(served.port, served.token.clone(), n, 1, 20)))
            .collect();
        for w in warm {
            w.await.expect("warm-up reader");
        }
        let (baseline, _) = memory_kib(pid);

        // The flood: 10 runs of 50 000 words, over 120 MB of output nobody reads.
        let _stuck = non_reader(served.port, &served.token, 10, 50_000).await;
        let started = Instant::now();
        let readers: Vec<_> = (0..READERS)
            .map(|n| tokio::spawn(reader(served.port, served.token.clone(), n, 5, 200)))
            .collect();
        let mut peak = baseline;
        while started.elapsed() < WAIT && !readers.iter().all(|r| r.is_finished()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(memory_kib(pid).0);
        }
        // A little longer, so that a backlog still growing would show.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(memory_kib(pid).0);
        }
        let mut parts = 0;
        for r in readers {
            parts += r.await.expect("reader finished");
        }
        assert_eq!(parts, READERS * 5 * 200, "every reader got every word");
        // Its agent waits for it instead: the output it did not take is not a reason to
        // end its session.
        let log = served.log.lock().unwrap().clone();
        assert!(
            !log.iter().any(|l| l.contains("ending session")),
            "the non-reader's session was ended: {log:?}"
        );
        let growth_kib = peak.saturating_sub(baseline);
        // The bound: the agent stops at half of HELD_BYTES of unsent JSON and the replay
        // window is capped at HELD_BYTES; allocation overhead, the flood's parsed input, the
        // readers' traffic and the allocator's free lists come on top. Without back-pressure
        // the backlog alone would pass 120 MB.
        let allowed_kib = 6 * HELD_BYTES / 1024;
        println!("server RSS: baseline {baseline} KiB, peak {peak} KiB, growth {growth_kib} KiB (allowed {allowed_kib} KiB)");
        assert!(
            growth_kib <= allowed_kib,
            "server memory grew {growth_kib} KiB with one non-reading client (allowed {allowed_kib} KiB)"
        );
    });
}
