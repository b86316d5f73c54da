//! What a hostile or careless client may try, over real sockets: each test is a finding
//! that once worked against the server, and checks the answer it gets now and that others
//! are still served.

mod common;

use common::*;
use serde_json::{json, Value};

/// An SSE session past its HAI; returns it with its session id.
async fn sse_session(srv: &Server) -> (Conn, String) {
    let mut c = srv.connect(Kind::Sse).await;
    c.recv_type("HAI").await;
    let session = c.session.clone().expect("session");
    (c, session)
}

#[tokio::test]
async fn a_posted_batch_may_start_with_whitespace() {
    let srv = Server::start().await;
    let (mut c, session) = sse_session(&srv).await;
    let pings: Vec<Value> = (1..=2)
        .map(|i| {
            envelope(
                &format!("p{i}"),
                &session,
                i,
                "SYSTEM",
                "PING",
                json!({"nonce": format!("n{i}")}),
            )
        })
        .collect();
    let body = format!(" \r\n\t [{}, {}]", pings[0], pings[1]);
    let reply = post_messages(&srv.url(""), &srv.token(), Some(&session), &body).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    for nonce in ["n1", "n2"] {
        let pong = c.recv_type("PONG").await;
        assert_eq!(pong["payload"]["nonce"], nonce);
    }
}

#[tokio::test]
async fn an_oversized_post_gets_413_in_the_json_error_shape() {
    let srv = Server::start().await;
    let (_c, session) = sse_session(&srv).await;
    let body = format!("[{}]", "\"x\",".repeat(1024 * 1024));
    let reply = post_messages(&srv.url(""), &srv.token(), Some(&session), &body).await;
    assert_eq!(reply.status, 413);
    assert_eq!(
        reply.body["error"]["code"], "PROTOCOL_VIOLATION",
        "{:?}",
        reply.body
    );
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("larger than")),
        "{:?}",
        reply.body
    );
}

/// Sends a raw HTTP request head (and `body`) on a new connection; returns the socket.
async fn raw_request(srv: &Server, head: &str, body: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(body).await.expect("body");
    tcp
}

/// What the server answered on `tcp` within `within` ("" if nothing).
async fn answer_within(tcp: &mut tokio::net::TcpStream, within: std::time::Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(within, tcp.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn a_stream_whose_first_line_never_completes_holds_no_slot_and_times_out() {
    let srv = Server::start_with(|c| {
        c.max_connections = 3;
        c.http_stream_timeout = ms(600);
    })
    .await;
    let token = srv.token();
    // Five requests that promise a body and send a few bytes of it, never a newline.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let head = format!(
            "POST /haip/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 1000\r\n\r\n"
        );
        stalled.push(raw_request(&srv, &head, b"{\"id\":").await);
    }
    tokio::time::sleep(ms(100)).await;
    // They hold no connection slot: a real client still gets in.
    let mut c = srv.connect(Kind::Ws).await;
    c.recv_type("HAI").await;
    assert_eq!(srv.get_json("/health").await.1["activeConnections"], 1);
    // And each is answered 408 once the stream's timeout has passed.
    for tcp in &mut stalled {
        let answer = answer_within(tcp, ms(2000)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("first line"), "{answer:?}");
    }
}

#[tokio::test]
async fn a_streamed_body_is_answered_with_the_hai_before_it_sends_anything() {
    let srv = Server::start().await;
    let token = srv.token();
    let head = format!(
        "POST /haip/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let mut tcp = raw_request(&srv, &head, b"").await;
    let mut answer = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !answer.contains("\"HAI\"") && tokio::time::Instant::now() < deadline {
        answer.push_str(&answer_within(&mut tcp, ms(200)).await);
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.contains("\"type\":\"HAI\""),
        "the server speaks first: {answer:?}"
    );
}

/// Whether the server closed `tcp` (read returns end of stream or an error) within
/// `within`; what it sent first is ignored.
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn connections_that_never_finish_a_request_head_are_closed() {
    use tokio::io::AsyncWriteExt;
    let srv = Server::start().await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(
            tokio::net::TcpStream::connect(srv.addr)
                .await
                .expect("connect"),
        );
    }
    // One sends its head a byte now and then, never finishing it.
    let mut slow = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let dribble = tokio::spawn(async move {
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
            .take(60)
        {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(ms(250)).await;
        }
        false
    });
    // Meanwhile everyone else is served.
    let mut c = srv.connect(Kind::Ws).await;
    c.recv_type("HAI").await;
    let bound = haip_server::server::REQUEST_HEAD_TIMEOUT + std::time::Duration::from_secs(3);
    for tcp in &mut idle {
        assert!(
            closed_within(tcp, bound).await,
            "an idle connection stays open"
        );
    }
    assert!(
        dribble.await.expect("dribbler"),
        "a head sent byte by byte was allowed to go on"
    );
    c.send_msg("SYSTEM", "PING", json!({"nonce": "still"}))
        .await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "still");
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_refused() {
    use tokio::io::AsyncWriteExt;
    let srv = Server::start().await;
    let mut tcp = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let big = "a".repeat(haip_server::server::MAX_REQUEST_HEAD + 1024);
    let head = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = tcp.write_all(head.as_bytes()).await;
    let answer = answer_within(&mut tcp, ms(2000)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:?}"
    );
    assert!(closed_within(&mut tcp, ms(2000)).await);
}

#[tokio::test]
async fn idle_connections_do_not_hold_up_shutdown() {
    let srv = Server::start().await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            tokio::net::TcpStream::connect(srv.addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(ms(100)).await;
    let started = tokio::time::Instant::now();
    srv.state.shutdown.cancel();
    for tcp in &mut idle {
        assert!(
            closed_within(tcp, ms(2000)).await,
            "still open after shutdown"
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn refused_websocket_upgrades_hold_no_connection_slot() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = Server::start_with(|c| c.max_connections = 2).await;
    // Five upgrades with a bad token whose clients never answer the close.
    let mut refused = Vec::new();
    for _ in 0..5 {
        let req = srv
            .ws_url(&format!("/haip/websocket?token={}", jwt_bad_signature()))
            .into_client_request()
            .expect("request");
        refused.push(ws_connect(req).await);
    }
    // Both slots are still free for clients with a good token.
    let mut admitted = Vec::new();
    for _ in 0..2 {
        let mut c = srv.connect(Kind::Ws).await;
        let hai = c.recv().await;
        assert_eq!(ty(&hai), "HAI", "{hai}");
        admitted.push(c);
    }
    assert_eq!(srv.get_json("/health").await.1["activeConnections"], 2);
    drop(refused);
}

/// Opens a chunked NDJSON stream, sends a whole PING without its newline, then either
/// resets the connection or ends the body cleanly; returns whether the session answered
/// the PING (seen in its replay on resume).
async fn unterminated_ping_answered(reset: bool) -> bool {
    use tokio::io::AsyncWriteExt;
    let srv = Server::start().await;
    let token = srv.token();
    let head = format!(
        "POST /haip/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let mut tcp = raw_request(&srv, &head, b"").await;
    let mut answer = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !answer.contains("\"HAI\"") && tokio::time::Instant::now() < deadline {
        answer.push_str(&answer_within(&mut tcp, ms(200)).await);
    }
    let hai_line = answer
        .lines()
        .find(|l| l.contains("\"HAI\""))
        .expect("the server's HAI");
    let hai: Value =
        serde_json::from_str(&hai_line[hai_line.find('{').expect("JSON")..]).expect("HAI");
    let session = hai["session"].as_str().expect("session").to_string();
    let ping = envelope(
        "cut",
        &session,
        1,
        "SYSTEM",
        "PING",
        json!({"nonce": "cut"}),
    )
    .to_string();
    let chunk = format!("{:x}\r\n{ping}\r\n", ping.len());
    tcp.write_all(chunk.as_bytes()).await.expect("chunk");
    tokio::time::sleep(ms(150)).await;
    if reset {
        socket2::SockRef::from(&tcp)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        drop(tcp);
    } else {
        tcp.write_all(b"0\r\n\r\n").await.expect("last chunk");
        tokio::time::sleep(ms(150)).await;
        drop(tcp);
    }
    tokio::time::sleep(ms(150)).await;
    let mut again = srv.connect_with(Kind::Ws, Opts::resume(&session, 1)).await;
    let seen = again.collect_for(ms(400)).await;
    assert!(
        seen.iter().any(|v| ty(v) == "HAI"),
        "the session resumed: {seen:?}"
    );
    seen.iter().any(|v| ty(v) == "PONG")
}

#[tokio::test]
async fn an_ndjson_body_cut_by_a_reset_does_not_deliver_its_unfinished_line() {
    assert!(
        !unterminated_ping_answered(true).await,
        "the line cut by the reset was taken as a message"
    );
    // The same line at the clean end of a body is a message.
    assert!(unterminated_ping_answered(false).await);
}

/// Posts `envelopes` as one batch to the session of `c` (an SSE connection).
async fn post_batch(srv: &Server, c: &Conn, envelopes: &[Value]) -> PostReply {
    let session = c.session.clone().expect("session");
    let body = Value::from(envelopes.to_vec()).to_string();
    post_messages(&srv.url(""), &srv.token(), Some(&session), &body).await
}

/// The ERRORs received so far with `code`.
fn errors_with<'a>(msgs: &'a [Value], code: &str) -> Vec<&'a Value> {
    msgs.iter()
        .filter(|v| ty(v) == "ERROR" && v["payload"]["code"] == code)
        .collect()
}

#[tokio::test]
async fn replay_requests_cannot_pile_up_replays() {
    let srv = Server::start_with(|c| c.flow_control_max_held_messages = 1000).await;
    let (mut c, _) = sse_session(&srv).await;
    c.say("one two three four five six seven eight").await;
    c.recv_type("RUN_FINISHED").await;
    let window = c.log.iter().map(seq).max().expect("messages");
    // 300 requests for the whole window at once: 300 x the window without a bound.
    let requests: Vec<Value> = (0..300)
        .map(|_| c.msg("SYSTEM", "REPLAY_REQUEST", json!({"from_seq": "1"})))
        .collect();
    let reply = post_batch(&srv, &c, &requests).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = c.collect_for(ms(1500)).await;
    let refused = errors_with(&seen, "RATE_LIMITED");
    assert!(!refused.is_empty(), "no request was refused");
    let replayed = seen.iter().filter(|v| seq(v) <= window).count();
    assert!(
        replayed + refused.len() * window as usize <= 300 * window as usize,
        "replayed {replayed}"
    );
    assert!(
        replayed <= 1000 + 2 * 256,
        "replays went past the bound: {replayed} frames"
    );
}

#[tokio::test]
async fn out_of_order_messages_are_held_up_to_a_byte_bound() {
    let srv = Server::start().await;
    let mut c = srv.connect(Kind::Ws).await;
    c.recv_type("HAI").await;
    c.ping("first").await;
    c.seq += 1; // a gap: this seq never comes
                // 900 KB messages beyond the gap, each on its own channel (fresh credit each).
    for i in 0..8 {
        let big = c.msg(
            &format!("big{i}"),
            "MESSAGE_PART",
            json!({"message_id": format!("m{i}"), "text": "x".repeat(900_000)}),
        );
        c.send(&big).await;
    }
    let e = c
        .recv_where(|v| ty(v) == "ERROR" && v["payload"]["code"] == "SEQ_VIOLATION")
        .await;
    assert!(
        e["payload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too far ahead")),
        "{e}"
    );
    c.collect_for(ms(300)).await;
    let refused = errors_with(&c.log, "SEQ_VIOLATION").len();
    assert_eq!(refused, 4, "four fit in 4 MiB, the other four were refused");
}

#[tokio::test]
async fn a_user_message_that_never_ends_is_dropped_at_the_bound() {
    let srv = Server::start_with(|c| c.flow_control_enabled = false).await;
    let mut c = srv.connect(Kind::Ws).await;
    c.recv_type("HAI").await;
    c.send_msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": "endless", "text": "start "}),
    )
    .await;
    for _ in 0..12 {
        c.send_msg(
            "USER",
            "MESSAGE_PART",
            json!({"message_id": "endless", "text": "y".repeat(512 * 1024)}),
        )
        .await;
    }
    let e = c
        .recv_where(|v| ty(v) == "ERROR" && v["payload"]["code"] == "PROTOCOL_VIOLATION")
        .await;
    assert!(
        e["payload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("dropped")),
        "{e}"
    );
    c.send_msg("USER", "MESSAGE_END", json!({"message_id": "endless"}))
        .await;
    // Dropped once: no more errors for its parts, and its end starts no run.
    let after = c.collect_for(ms(400)).await;
    assert!(!after.iter().any(|v| ty(v) == "RUN_STARTED"), "{after:?}");
    assert_eq!(errors_with(&c.log, "PROTOCOL_VIOLATION").len(), 1);
    // The session still answers.
    c.say("short").await;
    c.recv_type("RUN_FINISHED").await;
}

#[tokio::test]
async fn channel_names_are_bounded_and_forgotten_when_idle() {
    let srv = Server::start().await;
    let (mut c, _) = sse_session(&srv).await;
    let calls: Vec<Value> = (0..80)
        .map(|i| {
            c.msg(
                &format!("ch{i}"),
                "TOOL_CALL",
                json!({"call_id": format!("c{i}"), "tool": "echo", "params": {"message": "m"}}),
            )
        })
        .collect();
    assert_eq!(post_batch(&srv, &c, &calls).await.status, 200);
    let seen = c.collect_for(ms(600)).await;
    let refused = errors_with(&seen, "FLOW_CONTROL_VIOLATION");
    assert!(
        !refused.is_empty(),
        "80 channel names at once were all tracked"
    );
    assert!(refused
        .iter()
        .all(|e| e["payload"]["detail"]["reason"] == "TOO_MANY_CHANNELS"));
    let done = seen.iter().filter(|v| ty(v) == "TOOL_DONE").count();
    assert_eq!(done + refused.len(), 80);
    // Refused messages leave their seqs free; the refused ones were the last.
    c.seq -= refused.len() as u64;
    // Once their credit is handed back, the names are forgotten: a new one is served.
    let late = c.msg(
        "late-channel",
        "TOOL_CALL",
        json!({"call_id": "late", "tool": "echo", "params": {"message": "m"}}),
    );
    assert_eq!(post_batch(&srv, &c, &[late]).await.status, 200);
    let done = c
        .recv_where(|v| ty(v) == "TOOL_DONE" || ty(v) == "ERROR")
        .await;
    assert_eq!(ty(&done), "TOOL_DONE", "{done}");
}

#[tokio::test]
async fn running_tool_calls_are_bounded_per_session() {
    let srv = Server::start().await;
    let (mut c, _) = sse_session(&srv).await;
    let calls: Vec<Value> = (0..130)
        .map(|i| {
            c.msg(
                "USER",
                "TOOL_CALL",
                json!({"call_id": format!("nap{i}"), "tool": "sleep", "params": {"ms": 20000}}),
            )
        })
        .collect();
    assert_eq!(post_batch(&srv, &c, &calls).await.status, 200);
    let seen = c.collect_for(ms(500)).await;
    assert_eq!(errors_with(&seen, "RATE_LIMITED").len(), 30, "{seen:?}");
}

#[tokio::test]
async fn a_user_keeps_a_bounded_number_of_sessions() {
    let srv = Server::start().await;
    let limit = haip_server::engine::MAX_SESSIONS_PER_SUBJECT;
    let mut ids = Vec::new();
    for _ in 0..=limit {
        let mut c = srv.connect(Kind::Ws).await;
        let hai = c.recv_type("HAI").await;
        ids.push(hai["session"].as_str().expect("session").to_string());
        c.send_close(1000).await;
        drop(c);
        tokio::time::sleep(ms(2)).await;
    }
    tokio::time::sleep(ms(100)).await;
    // The oldest detached one made room for the last.
    let mut oldest = srv.connect_with(Kind::Ws, Opts::resume(&ids[0], 2)).await;
    let e = oldest.recv().await;
    assert_eq!(e["payload"]["code"], "RESUME_FAILED", "{e}");
    let mut kept = srv.connect_with(Kind::Ws, Opts::resume(&ids[2], 2)).await;
    let hai = kept.recv_type("HAI").await;
    assert_eq!(hai["session"], ids[2].as_str());
}
