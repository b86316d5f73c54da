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
