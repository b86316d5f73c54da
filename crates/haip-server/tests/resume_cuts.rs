//! Seeded random connection cuts in the middle of echo runs (contract sections 3 and 5).
//!
//! A client starts an echo run of a few hundred words, then again and again drops its
//! connection abruptly (no close frame, no end of stream) after a random number of messages,
//! sometimes waits a few milliseconds while the agent keeps streaming into the replay window,
//! and resumes: `?session=&last_rx_seq=`, SSE `Last-Event-ID`, or a client HAI naming the
//! session with `last_rx_seq`, on the same transport or handing the session over from
//! WebSocket to SSE to HTTP streaming and back. Sometimes it reports a `last_rx_seq` below
//! what it has, and then the messages after it must come again, identical.
//!
//! Checked on every connection: each message of the session carries exactly the next seq
//! (the replay starts right after the reported `last_rx_seq`, nothing is skipped, nothing is
//! sent twice), the replay comes before the HAI that confirms the resume and that HAI takes
//! the next seq, a connect-time resume announces no fresh session, a resume by HAI drops the
//! fresh one. Checked at the end of each run: its messages, de-duplicated by seq, are the
//! exact and complete run, and its parts rebuild the text. At the end of each test the
//! server's own record (REPLAY_REQUEST from seq 1) equals what the client assembled.
//!
//! Client messages the server has not acknowledged when a connection is cut are sent again
//! after the next confirming HAI (whose `last_rx_seq` says what the server processed), as a
//! client following the contract would; the server must drop the duplicates silently.
//!
//! A cut drops the client's socket: WebSocket without a close frame, SSE and HTTP streaming
//! in the middle of their chunked responses (and, for HTTP streaming, of the chunked request
//! body). Half the cuts reset the connection (SO_LINGER 0), the others close it. The clients
//! here speak to the sockets directly so that nothing is ended gracefully behind the test's
//! back.
//!
//! The seed is fixed per test and printed on failure; `HAIP_CUTS_SEED=<n>` overrides it.

mod common;

use std::time::{Duration, Instant};

use common::cuts::{cut_and_resume, cut_and_resume_on, Plan};
use common::*;

#[tokio::test]
async fn websocket_cuts() {
    cut_and_resume("websocket_cuts", 0x5EED_0001, Plan::Only(Kind::Ws), 200).await
}

#[tokio::test]
async fn sse_cuts() {
    cut_and_resume("sse_cuts", 0x5EED_0002, Plan::Only(Kind::Sse), 200).await
}

#[tokio::test]
async fn stream_cuts() {
    cut_and_resume("stream_cuts", 0x5EED_0003, Plan::Only(Kind::Stream), 200).await
}

/// Every cut hands the session to the next transport: WebSocket -> SSE -> HTTP streaming.
#[tokio::test]
async fn handoff_cuts() {
    cut_and_resume("handoff_cuts", 0x5EED_0004, Plan::Rotate, 150).await
}

/// Cluster mode (contract section 13): two nodes on one Redis, and half the reconnects
/// land on the other node, on every transport in turn. Nothing may be lost or repeated.
#[tokio::test]
async fn cluster_cuts() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        let url = redis.url();
        let node = Server::start_with(move |c| {
            c.echo_word_delay = ms(1);
            c.redis_url = Some(url);
            c.node_id = Some(name.to_string());
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.get_json("/health").await.0 != 200 {
            assert!(Instant::now() < deadline, "{name} did not reach Redis");
            tokio::time::sleep(ms(20)).await;
        }
        nodes.push(node);
    }
    cut_and_resume_on(&nodes, "cluster_cuts", 0x5EED_0005, Plan::Rotate, 150).await
}
