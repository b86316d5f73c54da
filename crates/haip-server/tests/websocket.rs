//! WebSocket specifics (contract sections 4.1, 7, 9): the upgrade at both paths, the three
//! ways to pass a token, authentication failures, close codes, and two-frame binary.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

async fn raw_ws(srv: &Server, path_and_query: &str) -> Conn {
    let req = srv
        .ws_url(path_and_query)
        .into_client_request()
        .expect("request");
    let (ws, headers) = ws_connect(req).await;
    Conn::from_ws(ws, headers)
}

/// The upgrade succeeds; the server sends ERROR AUTHENTICATION_FAILED then closes 1008.
async fn assert_auth_failure(mut c: Conn) {
    let e = c.recv().await;
    assert_eq!(ty(&e), "ERROR", "{e}");
    assert_eq!(e["payload"]["code"], "AUTHENTICATION_FAILED");
    assert_eq!(chan(&e), "SYSTEM");
    assert!(e["payload"]["message"].is_string());
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, Some(1008));
    assert!(reason.starts_with("authentication failed: "), "{reason}");
    assert!(reason.len() <= 123);
    assert!(
        !c.log.iter().any(|v| ty(v) == "HAI"),
        "no session for an unauthenticated client"
    );
}

#[tokio::test]
async fn missing_token_is_refused_with_error_then_1008() {
    let srv = Server::start().await;
    assert_auth_failure(raw_ws(&srv, "/haip/websocket").await).await;
}

#[tokio::test]
async fn bad_signature_is_refused() {
    let srv = Server::start().await;
    let c = raw_ws(
        &srv,
        &format!("/haip/websocket?token={}", jwt_bad_signature()),
    )
    .await;
    assert_auth_failure(c).await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let srv = Server::start().await;
    let c = raw_ws(&srv, &format!("/haip/websocket?token={}", jwt_expired())).await;
    assert_auth_failure(c).await;
}

#[tokio::test]
async fn alg_none_token_is_refused() {
    let srv = Server::start().await;
    let c = raw_ws(&srv, &format!("/haip/websocket?token={}", jwt_alg_none())).await;
    assert_auth_failure(c).await;
}

#[tokio::test]
async fn garbage_token_is_refused_at_root_too() {
    let srv = Server::start().await;
    assert_auth_failure(raw_ws(&srv, "/?token=not.a.jwt").await).await;
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let srv = Server::start().await;
    let token = jwt_hs256(SECRET, &json!({"sub": USER}));
    let c = raw_ws(&srv, &format!("/haip/websocket?token={token}")).await;
    assert_auth_failure(c).await;
}

#[tokio::test]
async fn token_in_authorization_header() {
    let srv = Server::start().await;
    let mut req = srv.ws_url("/haip/websocket").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", srv.token())).unwrap(),
    );
    let (ws, headers) = ws_connect(req).await;
    let mut c = Conn::from_ws(ws, headers);
    let hai = c.recv().await;
    assert_eq!(ty(&hai), "HAI");
    assert_eq!(hai["seq"], "1");
}

#[tokio::test]
async fn token_in_sec_websocket_protocol() {
    let srv = Server::start().await;
    let token = srv.token();
    let mut req = srv.ws_url("/haip/websocket").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("haip, token.{token}")).unwrap(),
    );
    let (ws, headers) = ws_connect(req).await;
    let mut c = Conn::from_ws(ws, headers);
    assert_eq!(
        c.header("sec-websocket-protocol"),
        Some("haip"),
        "the server selects haip"
    );
    for (k, v) in &c.headers {
        assert!(!v.contains(&token), "the token is echoed in {k}");
    }
    let hai = c.recv().await;
    assert_eq!(ty(&hai), "HAI");
}

#[tokio::test]
async fn bad_token_in_sec_websocket_protocol_is_refused() {
    let srv = Server::start().await;
    let mut req = srv.ws_url("/haip/websocket").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("haip, token.{}", jwt_expired())).unwrap(),
    );
    let (ws, headers) = ws_connect(req).await;
    assert_auth_failure(Conn::from_ws(ws, headers)).await;
}

#[tokio::test]
async fn plain_get_of_root_serves_a_page() {
    let srv = Server::start().await;
    let resp = bounded(http().get(srv.url("/")).send()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
}

#[tokio::test]
async fn token_expiring_during_connection_closes_1008_and_session_resumes() {
    let srv = Server::start().await;
    // Valid for one more second (the 60 s leeway only applies at verification).
    let short = srv.state.auth.mint(USER, 1).unwrap();
    let mut c = srv.connect_with(Kind::Ws, Opts::token(short.clone())).await;
    let hai = c.recv_type("HAI").await;
    let session = hai["session"].as_str().unwrap().to_string();
    c.ping("p").await;
    c.recv_type("PONG").await;
    let deadline = tokio::time::Instant::now() + ms(2500);
    let e = loop {
        let f = c
            .frame_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
            .expect("the token expires within ~1-2 s");
        match f {
            Frame::Json(v) if ty(&v) == "ERROR" => break v,
            Frame::Json(_) => {}
            other => panic!("closed without ERROR: {other:?}"),
        }
    };
    assert_eq!(e["payload"]["code"], "AUTHENTICATION_FAILED");
    let (code, _) = c.expect_close().await;
    assert_eq!(code, Some(1008));
    let last = c.log.iter().map(seq).max().unwrap();
    // The session stays resumable with a fresh token.
    let mut c2 = srv
        .connect_with(Kind::Ws, Opts::resume(&session, last))
        .await;
    let confirm = c2.recv().await;
    assert_eq!(ty(&confirm), "HAI", "{confirm}");
    assert_eq!(confirm["session"], session.as_str());
    assert_eq!(confirm["payload"]["last_rx_seq"], "1");
}

#[tokio::test]
async fn oversize_frame_closes_1009() {
    let srv = Server::start_with(|c| c.websocket_max_payload = 1024).await;
    let mut c = srv.connect(Kind::Ws).await;
    c.recv_type("TOOL_LIST").await;
    // Just under the limit is fine.
    let mut small = c.msg("SYSTEM", "PING", json!({"nonce": "x".repeat(700)}));
    small["id"] = json!("small");
    c.send(&small).await;
    assert_eq!(c.recv_type("PONG").await["ack"], "1");
    let big = c.msg("SYSTEM", "PING", json!({"nonce": "x".repeat(2000)}));
    c.send(&big).await;
    let (code, _) = c.expect_close().await;
    assert_eq!(code, Some(1009), "received: {:?}", c.log);
}

#[tokio::test]
async fn stray_binary_frame_is_an_error() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    c.send_binary(vec![1, 2, 3]).await;
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "BINARY_FRAME_ERROR");
    // The connection stays open.
    c.ping("after").await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "after");
}

fn audio_envelope(c: &mut Conn, len: usize, mime: &str) -> Value {
    let mut env = c.msg(
        "USER",
        "AUDIO_CHUNK",
        json!({"message_id": "aud-bin", "mime": mime}),
    );
    env["bin_len"] = json!(len);
    env["bin_mime"] = json!(mime);
    env
}

#[tokio::test]
async fn two_frame_audio_is_echoed_with_identical_bytes() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let env = audio_envelope(&mut c, bytes.len(), "audio/opus");
    c.send(&env).await;
    c.send_binary(bytes.clone()).await;
    let echo = c.recv_type("AUDIO_CHUNK").await;
    assert_eq!(chan(&echo), "AGENT");
    assert_eq!(echo["payload"]["mime"], "audio/opus");
    let data = echo["payload"]["data"].as_str().expect("base64 data");
    assert_eq!(unb64(data), bytes);
    assert!(!c.log.iter().any(|v| ty(v) == "ERROR"), "{:?}", c.log);
}

#[tokio::test]
async fn binary_length_mismatch_is_an_error() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    let env = audio_envelope(&mut c, 10, "audio/pcm");
    c.send(&env).await;
    c.send_binary(vec![0; 5]).await;
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "BINARY_FRAME_ERROR");
    assert_eq!(e["payload"]["related_id"], env["id"]);
    let more = c.collect_for(ms(200)).await;
    assert!(!more.iter().any(|v| ty(v) == "AUDIO_CHUNK"), "{more:?}");
}

#[tokio::test]
async fn text_frame_instead_of_announced_binary_is_an_error() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    let env = audio_envelope(&mut c, 4, "audio/pcm");
    c.send(&env).await;
    c.seq -= 1; // the announced message was not processed
    c.ping("instead").await;
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], "BINARY_FRAME_ERROR");
    assert_eq!(e["payload"]["related_id"], env["id"]);
    // The text frame itself is processed.
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "instead");
}

#[tokio::test]
async fn invalid_json_text_frames_then_1008() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    for _ in 0..11 {
        c.send_text("not json at all").await;
    }
    let (code, _) = c.expect_close().await;
    assert_eq!(code, Some(1008));
    let errors = c
        .log
        .iter()
        .filter(|v| ty(v) == "ERROR" && v["payload"]["code"] == "PROTOCOL_VIOLATION")
        .count();
    assert_eq!(errors, 11, "one ERROR per violation before the close");
}

/// RFC 6455 section 5.5.1: an endpoint that receives a Close frame must send one back.
#[tokio::test]
async fn client_close_is_answered() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    c.recv_type("TOOL_LIST").await;
    c.send_close(1000).await;
    let (code, _) = c.expect_close().await;
    assert_eq!(code, Some(1000), "RFC 6455: the close is echoed");
}

#[tokio::test]
async fn second_connection_resuming_closes_the_first_with_1000() {
    let srv = Server::start().await;
    let mut a = srv.connect(Kind::Ws).await;
    let hai = a.recv_type("HAI").await;
    a.recv_type("TOOL_LIST").await;
    let session = hai["session"].as_str().unwrap();
    let mut b = srv.connect_with(Kind::Ws, Opts::resume(session, 2)).await;
    let confirm = b.recv().await;
    assert_eq!(ty(&confirm), "HAI");
    assert_eq!(confirm["session"], session);
    assert_eq!(confirm["seq"], "3");
    let (code, _) = a.expect_close().await;
    assert_eq!(code, Some(1000));
}

/// Upgrades `/haip/websocket` by hand, offering `extensions` when given, and reads the
/// answer's head byte by byte so that no frame byte is consumed. Returns the status line
/// and headers (names in lower case) and the socket.
async fn raw_upgrade(
    srv: &Server,
    extensions: Option<&str>,
) -> (String, Vec<(String, String)>, TcpStream) {
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let offer = extensions.map_or(String::new(), |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    let req = format!(
        "GET /haip/websocket?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{offer}\r\n",
        srv.token(),
        srv.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = bounded(tcp.read_u8())
            .await
            .expect("connection closed during the upgrade");
        head.push(b);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, tcp)
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A socket that counts the bytes read from it.
struct Counted {
    io: TcpStream,
    read: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        self.read
            .fetch_add(buf.filled().len() - before, Ordering::Relaxed);
        res
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The next text frame, as JSON.
async fn next_json<S>(ws: &mut yawc::WebSocket<S>) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = bounded(ws.next_frame()).await.expect("frame");
        if frame.opcode() == yawc::OpCode::Text {
            return serde_json::from_slice(frame.payload()).expect("JSON text frame");
        }
    }
}

/// RFC 7692 (contract section 4.1): offered by the client and on by default, so negotiated,
/// and messages then travel compressed both ways.
#[tokio::test]
async fn permessage_deflate_is_negotiated_when_offered() {
    let srv = Server::start().await;
    let (status, headers, tcp) =
        raw_upgrade(&srv, Some("permessage-deflate; client_max_window_bits")).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let ext = find(&headers, "sec-websocket-extensions")
        .unwrap_or("")
        .to_string();
    assert!(ext.starts_with("permessage-deflate"), "{headers:?}");
    // Imposed by the server so that idle connections hold no deflate state.
    assert!(ext.contains("server_no_context_takeover"), "{ext}");
    assert!(ext.contains("client_no_context_takeover"), "{ext}");

    let read = Arc::new(AtomicUsize::new(0));
    let io = Counted {
        io: tcp,
        read: read.clone(),
    };
    let options = yawc::Options::default().with_low_latency_compression();
    let mut ws =
        yawc::WebSocket::from_stream_with_extensions(io, yawc::Role::Client, Some(&ext), options)
            .expect("client with the negotiated extension");
    assert_eq!(ty(&next_json(&mut ws).await), "HAI");
    assert_eq!(ty(&next_json(&mut ws).await), "TOOL_LIST");
    // A very compressible message, compressed by the client; the PONG repeats it.
    let nonce = "haip ".repeat(2000);
    let ping = envelope(
        "deflate-ping",
        "test-session",
        1,
        "SYSTEM",
        "PING",
        json!({ "nonce": nonce }),
    );
    let before = read.load(Ordering::Relaxed);
    bounded(ws.send(yawc::Frame::text(ping.to_string())))
        .await
        .expect("send");
    let pong = loop {
        let v = next_json(&mut ws).await;
        if ty(&v) == "PONG" {
            break v;
        }
    };
    assert_eq!(pong["payload"]["nonce"], nonce.as_str());
    let wire = read.load(Ordering::Relaxed) - before;
    assert!(
        wire < nonce.len() / 4,
        "a {}-byte PONG took {wire} bytes on the wire: not compressed",
        pong.to_string().len()
    );
}

/// RFC 7692 section 7.1.2.2: no client_max_window_bits in the answer unless offered.
#[tokio::test]
async fn plain_deflate_offer_gets_no_client_window_bits() {
    let srv = Server::start().await;
    let (status, headers, _tcp) = raw_upgrade(&srv, Some("permessage-deflate")).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let ext = find(&headers, "sec-websocket-extensions").unwrap_or("");
    assert!(ext.starts_with("permessage-deflate"), "{headers:?}");
    assert!(!ext.contains("client_max_window_bits"), "{ext}");
}

#[tokio::test]
async fn permessage_deflate_is_not_negotiated_when_off() {
    let srv = Server::start_with(|c| c.websocket_per_message_deflate = false).await;
    let (status, headers, mut tcp) =
        raw_upgrade(&srv, Some("permessage-deflate; client_max_window_bits")).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    assert_eq!(
        find(&headers, "sec-websocket-extensions"),
        None,
        "{headers:?}"
    );
    // The HAI arrives as a plain text frame: FIN, no RSV1.
    let first = bounded(tcp.read_u8()).await.unwrap();
    assert_eq!(first, 0x81, "first frame header byte {first:#04x}");
}

#[tokio::test]
async fn no_extension_without_an_offer() {
    let srv = Server::start().await;
    let (status, headers, _tcp) = raw_upgrade(&srv, None).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    assert_eq!(
        find(&headers, "sec-websocket-extensions"),
        None,
        "{headers:?}"
    );
}

/// The Autobahn echo (`autobahn_echo`, for scripts/autobahn) exists only when enabled.
#[tokio::test]
async fn autobahn_echo_only_when_enabled() {
    use tokio_tungstenite::tungstenite::Message;
    let srv = Server::start().await;
    let err = bounded(tokio_tungstenite::connect_async(srv.ws_url("/autobahn")))
        .await
        .expect_err("no /autobahn by default");
    assert!(err.to_string().contains("404"), "{err}");

    let srv = Server::start_with(|c| c.autobahn_echo = true).await;
    let (mut ws, _) = bounded(tokio_tungstenite::connect_async(srv.ws_url("/autobahn")))
        .await
        .expect("upgrade without a token");
    bounded(ws.send(Message::Text("héllo".into())))
        .await
        .unwrap();
    bounded(ws.send(Message::Binary(vec![0, 1, 2].into())))
        .await
        .unwrap();
    assert_eq!(
        bounded(ws.next()).await.unwrap().unwrap(),
        Message::Text("héllo".into())
    );
    assert_eq!(
        bounded(ws.next()).await.unwrap().unwrap(),
        Message::Binary(vec![0, 1, 2].into())
    );
}

/// One server frame read by hand: (opcode, payload).
async fn raw_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let b0 = bounded(tcp.read_u8()).await.expect("frame header");
    let b1 = bounded(tcp.read_u8()).await.expect("frame header");
    let len = match b1 & 0x7f {
        126 => u64::from(tcp.read_u16().await.unwrap()),
        127 => tcp.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0; len as usize];
    bounded(tcp.read_exact(&mut payload)).await.unwrap();
    (b0 & 0x0f, payload)
}

/// Sends a masked client frame (mask 0: the payload goes as is).
async fn raw_send(tcp: &mut TcpStream, b0: u8, payload: &[u8]) {
    assert!(payload.len() < 126);
    let mut frame = vec![b0, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    tcp.write_all(&frame).await.unwrap();
}

/// Reads frames until the close frame; returns its code.
async fn raw_close_code(tcp: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = raw_frame(tcp).await;
        if opcode == 8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// RFC 6455 sections 5.2 and 8.1 on the HAIP endpoint: a reserved opcode fails the
/// connection with 1002, a text message that is not UTF-8 with 1007.
#[tokio::test]
async fn framing_errors_close_1002_and_bad_utf8_1007() {
    let srv = Server::start().await;
    let (_, _, mut tcp) = raw_upgrade(&srv, None).await;
    raw_send(&mut tcp, 0x83, b"").await;
    assert_eq!(raw_close_code(&mut tcp).await, 1002);

    let (_, _, mut tcp) = raw_upgrade(&srv, None).await;
    raw_send(&mut tcp, 0x81, &[0xce, 0xba, 0xff]).await;
    assert_eq!(raw_close_code(&mut tcp).await, 1007);
}
