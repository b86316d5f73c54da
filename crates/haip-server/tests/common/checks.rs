//! Checks several test files share: awaiting an ERROR, picking messages out of what a
//! connection received, reading until enough of them arrived.

use std::time::Instant;

use serde_json::Value;

use super::conn::{Conn, Kind};
use super::envelope::{chan, seq, ty};
use super::time::{ms, WAIT};
use super::wire::Frame;

/// The next ERROR, which must carry `code` and travel on SYSTEM.
pub async fn expect_error(c: &mut Conn, code: &str) -> Value {
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], code, "{e}");
    assert_eq!(chan(&e), "SYSTEM", "{e}");
    e
}

/// [`expect_error`], whose payload must also say what went wrong in a `message`.
pub async fn expect_described_error(c: &mut Conn, code: &str) -> Value {
    let e = expect_error(c, code).await;
    assert!(e["payload"]["message"].is_string(), "{e}");
    e
}

/// A failed connect-time resume: ERROR RESUME_FAILED first, then the HAI of a fresh session
/// (seq 1), and nothing of the asked session.
pub async fn expect_resume_failed(c: &mut Conn, session: &str) {
    if c.kind == Kind::Stream {
        c.ping("opening").await;
    }
    let e = c.recv().await;
    assert_eq!(ty(&e), "ERROR", "{e}");
    assert_eq!(e["payload"]["code"], "RESUME_FAILED", "{e}");
    let hai = c.recv().await;
    assert_eq!(ty(&hai), "HAI", "{hai}");
    assert_eq!(hai["seq"], "1");
    assert_ne!(hai["session"], session);
    c.collect_for(ms(150)).await;
    // The unsequenced RESUME_FAILED itself names the session that was asked for.
    assert!(
        !c.log.iter().any(|v| v["session"] == session && seq(v) > 0),
        "nothing of {session} is sent: {:?}",
        c.log
    );
}

/// Matches the message of type `t` about tool call `id`.
pub fn call_of<'a>(id: &'a str, t: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| ty(v) == t && v["payload"]["call_id"] == id
}

/// The AGENT messages of `msgs`, in order.
pub fn agent_msgs(msgs: &[Value]) -> Vec<Value> {
    msgs.iter()
        .filter(|v| chan(v) == "AGENT")
        .cloned()
        .collect()
}

/// How many messages `c` received that match `pred`.
pub fn count_logged(c: &Conn, pred: impl Fn(&Value) -> bool) -> usize {
    c.log.iter().filter(|v| pred(v)).count()
}

/// The ERRORs `c` received.
pub fn logged_errors(c: &Conn) -> Vec<&Value> {
    c.log.iter().filter(|v| ty(v) == "ERROR").collect()
}

/// A decimal string field (seq, ack, from_seq ...) as a number.
pub fn decimal(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
}

/// Reads until `c.log` holds at least `n` messages matching `pred` (within [`WAIT`]).
pub async fn until_logged(c: &mut Conn, what: &str, n: usize, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    while count_logged(c, &pred) < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.frame_within(left).await {
            Some(Frame::Json(_)) | Some(Frame::Binary(_)) => {}
            other => panic!(
                "{:?}: {} of {n} {what} when reading stopped ({other:?}); log: {:?}",
                c.kind,
                count_logged(c, &pred),
                c.log
            ),
        }
    }
}

/// PING "open" (which also opens an HTTP streaming response) and the server's HAI.
pub async fn open_with_ping(c: &mut Conn) -> Value {
    c.ping("open").await;
    let hai = c.recv_type("HAI").await;
    c.recv_where(|v| ty(v) == "PONG" && v["payload"]["nonce"] == "open")
        .await;
    hai
}

/// The session of the last HAI `c` received.
pub fn known_session(c: &Conn) -> String {
    c.session.clone().expect("a HAI named the session")
}

/// The `session` field of a message.
pub fn session_of(v: &Value) -> String {
    v["session"].as_str().expect("session").to_string()
}
