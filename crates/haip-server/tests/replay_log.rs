//! The compact replay log over real sockets: what a session kept for replay comes back
//! byte for byte as it was first sent (same id, seq, ts, everything), through
//! REPLAY_REQUEST and through resume on every transport, including messages from segments
//! the log packed long before.

mod common;

use common::*;
use serde_json::json;

/// The echo streams one message a word: 400 words make about 405 messages, six packed
/// segments of 64 and an open one.
const WORDS: usize = 400;

/// Starts a server, streams a long reply to one client and returns both with every
/// message the client received so far.
async fn streamed(kind: Kind) -> (Server, Conn) {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(0)).await;
    let mut c = srv.connect(kind).await;
    c.recv_type("HAI").await;
    let text = (0..WORDS)
        .map(|i| format!("w{i}-{}", uuid::Uuid::new_v4().simple()))
        .collect::<Vec<_>>()
        .join(" ");
    c.say(&text).await;
    c.recv_type("RUN_FINISHED").await;
    // Grants may follow the run; the PONG comes after everything before it.
    c.ping("all-sent").await;
    c.recv_type("PONG").await;
    (srv, c)
}

/// The server's messages a client received, as (seq, text received).
fn sent(c: &Conn) -> Vec<(u64, String)> {
    c.log
        .iter()
        .zip(&c.texts)
        .map(|(v, t)| (seq(v), t.clone()))
        .collect()
}

/// Reads until `count` messages with a seq in `from..=to` have arrived (new messages the
/// session sends meanwhile have higher seqs); returns those.
async fn replayed(c: &mut Conn, from: u64, to: u64) -> Vec<(u64, String)> {
    let before = c.log.len();
    let count = (to - from + 1) as usize;
    let in_range = |c: &Conn| -> Vec<(u64, String)> {
        sent(c)[before..]
            .iter()
            .filter(|(s, _)| (from..=to).contains(s))
            .cloned()
            .collect()
    };
    while in_range(c).len() < count {
        c.recv().await;
    }
    in_range(c)
}

/// Asserts that `replayed` is exactly `original` again, text for text.
fn assert_same_bytes(original: &[(u64, String)], replayed: &[(u64, String)], what: &str) {
    assert_eq!(
        original.len(),
        replayed.len(),
        "{what}: {} messages replayed, {} sent",
        replayed.len(),
        original.len()
    );
    for ((seq, first), (_, again)) in original.iter().zip(replayed) {
        assert_eq!(first, again, "{what}: seq {seq} differs");
    }
}

/// Waits (bounded) until the budget has counted the session's replay window.
async fn replay_bytes(srv: &Server) -> u64 {
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    loop {
        let bytes = srv.get_json("/stats").await.1["memory"]["usedBy"]["replay"]
            .as_u64()
            .unwrap_or(0);
        if bytes > 0 {
            return bytes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replay never counted"
        );
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test]
async fn a_replay_request_returns_packed_messages_byte_for_byte_on_every_transport() {
    for kind in [Kind::Ws, Kind::Sse, Kind::Stream] {
        let (srv, mut c) = streamed(kind).await;
        let original = sent(&c);
        let last = original.last().expect("messages").0;
        assert!(last > 6 * 64, "{kind:?}: {last} messages");
        // The log holds far less than the JSON it replays: older segments are packed.
        let json_bytes: usize = original.iter().map(|(_, t)| t.len()).sum();
        let kept = replay_bytes(&srv).await;
        assert!(
            kept * 3 < json_bytes as u64,
            "{kind:?}: {kept} bytes kept for {json_bytes} bytes of JSON"
        );

        c.send_msg(
            "SYSTEM",
            "REPLAY_REQUEST",
            json!({"from_seq": "1", "to_seq": last.to_string()}),
        )
        .await;
        let again = replayed(&mut c, 1, last).await;
        assert_same_bytes(&original, &again, &format!("{kind:?} REPLAY_REQUEST"));

        // A range inside one packed segment, and one across segments.
        for (from, to) in [(70u64, 90u64), (100, 300)] {
            c.send_msg(
                "SYSTEM",
                "REPLAY_REQUEST",
                json!({"from_seq": from.to_string(), "to_seq": to.to_string()}),
            )
            .await;
            let again = replayed(&mut c, from, to).await;
            let want: Vec<(u64, String)> = original
                .iter()
                .filter(|(s, _)| (from..=to).contains(s))
                .cloned()
                .collect();
            assert_same_bytes(&want, &again, &format!("{kind:?} {from}..={to}"));
        }
    }
}

#[tokio::test]
async fn a_resume_on_any_transport_returns_packed_messages_byte_for_byte() {
    for (first, then) in [
        (Kind::Ws, Kind::Ws),
        (Kind::Ws, Kind::Sse),
        (Kind::Sse, Kind::Stream),
        (Kind::Stream, Kind::Ws),
    ] {
        let (srv, c) = streamed(first).await;
        let original = sent(&c);
        let session = c.session.clone().expect("session");
        let last = original.last().expect("messages").0;
        drop(c);
        for after in [0, 100] {
            let mut again = srv.connect_with(then, Opts::resume(&session, after)).await;
            let replayed = replayed(&mut again, after + 1, last).await;
            let want: Vec<(u64, String)> = original
                .iter()
                .filter(|(s, _)| *s > after)
                .cloned()
                .collect();
            assert_same_bytes(
                &want,
                &replayed,
                &format!("{first:?} then {then:?}, resume after {after}"),
            );
        }
    }
}
