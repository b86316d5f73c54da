//! Graceful shutdown (contract section 4, issue points on draining): WebSocket clients get
//! 1001, streams end cleanly, and what the server had sent is written before it stops.

mod common;

use common::*;

async fn shutdown_mid_stream(kind: Kind) {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(5)).await;
    let mut c = srv.connect(kind).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await;
    c.recv_type("HAI").await;
    let words: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
    c.say(&words.join(" ")).await;
    c.recv_type("MESSAGE_PART").await;
    srv.state.shutdown.cancel();
    let (code, _) = c.expect_close().await;
    if kind.is_ws() {
        assert_eq!(
            code,
            Some(1001),
            "WebSocket clients are told the server is going away"
        );
    } else {
        assert_eq!(code, None, "streams simply end");
    }
    // Everything written arrived in order, with no gap: nothing was cut mid-batch.
    let last = assert_contiguous(&c.log);
    assert!(last >= 3, "{:?}", c.log);
}

#[tokio::test]
async fn websocket_gets_1001_and_every_message_written() {
    shutdown_mid_stream(Kind::Ws).await
}

#[tokio::test]
async fn sse_ends_cleanly() {
    shutdown_mid_stream(Kind::Sse).await
}

#[tokio::test]
async fn http_stream_ends_cleanly() {
    shutdown_mid_stream(Kind::Stream).await
}
