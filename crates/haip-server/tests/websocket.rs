//! WebSocket specifics (contract sections 4.1, 7, 9): the upgrade at both paths, the three
//! ways to pass a token, authentication failures, close codes, and two-frame binary.

mod common;

use common::*;
use serde_json::{json, Value};
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
    assert_eq!(reason, "authentication failed");
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
#[ignore = "server bug: a client close frame is never answered; the server stops reading at Close (ws.rs take_while) and drops the socket without sending its close frame"]
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

/// RFC 7692 (contract section 4.1): offered by the client and on by default, so negotiated.
/// The upgrade is made by hand to read the answer whatever the client library supports.
#[tokio::test]
#[ignore = "server bug: permessage-deflate is never negotiated although websocket_per_message_deflate defaults to true (the setting is unused in ws.rs)"]
async fn permessage_deflate_is_negotiated_when_offered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = Server::start().await;
    let mut tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let req = format!(
        "GET /haip/websocket?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
        srv.token(),
        srv.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = bounded(tcp.read(&mut buf)).await.unwrap();
        assert!(n > 0, "connection closed during the upgrade");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let ext = head
        .lines()
        .find(|l| l.starts_with("sec-websocket-extensions:"))
        .unwrap_or("");
    assert!(ext.contains("permessage-deflate"), "upgrade answer: {head}");
}
