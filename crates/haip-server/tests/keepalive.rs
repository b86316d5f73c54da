//! Keepalives of the HTTP transports: an SSE comment every 15 s whatever the heartbeat
//! interval (contract section 4), the same as an empty NDJSON line, and a client that went
//! away is noticed by the keepalive that cannot be written, so its slot is freed within
//! one interval. Each test waits one interval (15 s) once.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const KEEPALIVE: Duration = Duration::from_secs(15);
/// The heartbeat is set far beyond the keepalive, so that only the keepalive can show.
const HEARTBEAT_MS: u64 = 120_000;

async fn server() -> Server {
    Server::start_with(|c| {
        c.heartbeat_interval = ms(HEARTBEAT_MS);
        c.http_stream_timeout = ms(HEARTBEAT_MS);
    })
    .await
}

/// The bytes of a streamed response body, as they arrive, until `until` holds or `within`.
async fn read_body_until(
    resp: reqwest::Response,
    within: Duration,
    until: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Ok(Some(Ok(chunk))) =
        tokio::time::timeout(within.saturating_sub(start.elapsed()), stream.next()).await
    {
        body.extend_from_slice(&chunk);
        if until(&body) {
            break;
        }
    }
    (body, start.elapsed())
}

#[tokio::test]
async fn sse_and_ndjson_get_a_keepalive_every_15_s() {
    let srv = server().await;
    let token = srv.token();
    let sse = bounded(
        http()
            .get(srv.url(&format!("/haip/sse?token={token}")))
            .send(),
    )
    .await
    .expect("SSE");
    let hai = envelope("h1", "-", 1, "SYSTEM", "HAI", hai_payload(&ALL_EVENTS));
    let ndjson = bounded(
        http()
            .post(srv.url("/haip/stream"))
            .bearer_auth(&token)
            .body(format!("{hai}\n"))
            .send(),
    )
    .await
    .expect("NDJSON");
    let wait = KEEPALIVE + Duration::from_secs(3);
    let ((sse_body, sse_at), (nd_body, nd_at)) = tokio::join!(
        read_body_until(sse, wait, |b| b.windows(12).any(|w| w == b": keepalive")),
        read_body_until(ndjson, wait, |b| b.windows(2).any(|w| w == b"\n\n")),
    );
    let sse_text = String::from_utf8_lossy(&sse_body);
    assert!(sse_text.contains("\n: keepalive\n\n"), "{sse_text}");
    assert!(sse_at >= KEEPALIVE - Duration::from_secs(1), "{sse_at:?}");
    let nd_text = String::from_utf8_lossy(&nd_body);
    assert!(
        nd_text.contains("}\n\n"),
        "an empty line after the messages: {nd_text:?}"
    );
    assert!(nd_at >= KEEPALIVE - Duration::from_secs(1), "{nd_at:?}");
}

/// `activeConnections` of /stats.
async fn active(srv: &Server) -> u64 {
    srv.get_json("/stats").await.1["activeConnections"]
        .as_u64()
        .expect("activeConnections")
}

#[tokio::test]
async fn a_vanished_sse_or_ndjson_client_frees_its_slot_within_one_keepalive() {
    let srv = server().await;
    let token = srv.token();
    let before = active(&srv).await;
    let mut clients = Vec::new();
    for request in [
        format!(
            "GET /haip/sse?token={token} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        ),
        {
            let hai = envelope("h1", "-", 1, "SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).to_string();
            format!(
                "POST /haip/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: {}\r\n\r\n{hai}\n",
                hai.len() + 1
            )
        },
    ] {
        let mut tcp = TcpStream::connect(srv.addr).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("request");
        let mut head = [0u8; 512];
        let n = bounded(tcp.read(&mut head)).await.expect("answer");
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        clients.push(tcp);
    }
    assert_eq!(active(&srv).await, before + 2);
    // Both vanish without a word (as when a phone loses its network the kernel would
    // eventually reset; here the sockets are simply closed).
    drop(clients);
    let deadline = Instant::now() + KEEPALIVE + Duration::from_secs(3);
    while active(&srv).await > before {
        assert!(
            Instant::now() < deadline,
            "the vanished clients still hold {} slots",
            active(&srv).await - before
        );
        tokio::time::sleep(ms(250)).await;
    }
}
