//! Scenarios shared by several suites: resumes mid-answer (single node and cluster) and
//! shared threads.

use serde_json::{json, Value};

use super::checks::session_of;
use super::conn::{Conn, Kind, Opts};
use super::envelope::{
    assert_contiguous, chan, envelope, hai_payload, next_id, seq, ty, ALL_EVENTS,
};
use super::server::Server;

// --- resume scenarios (shared by the single-node and the cluster suites) ---------------

/// `n` distinct words, for an echo run whose every word can be found again.
pub fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads until `n` MESSAGE_PARTs have arrived.
pub async fn parts(c: &mut Conn, n: usize) {
    for _ in 0..n {
        c.recv_type("MESSAGE_PART").await;
    }
}

/// Asks `node` for an echo answer of `text` over `kind`, reads its first `parts_read` parts
/// and leaves: returns the session, what was received and its highest seq.
pub async fn answer_then_leave(
    node: &Server,
    kind: Kind,
    text: &str,
    parts_read: usize,
) -> (String, Vec<Value>, u64) {
    let mut c = node.connect(kind).await;
    let session = session_of(&c.recv_type("HAI").await);
    c.say(text).await;
    parts(&mut c, parts_read).await;
    let last = c.log.iter().map(seq).max().expect("received");
    (session, c.log.clone(), last)
}

/// How a client resumes a session it left.
#[derive(Debug, Clone, Copy)]
pub enum ResumeForm {
    /// `?session=&last_rx_seq=`.
    Url,
    /// SSE's `Last-Event-ID`.
    LastEventId,
    /// A client HAI naming the session, on a fresh connection.
    Hai,
}

/// Resumes `session` on `node` over `kind` in `form`, reporting `last_rx_seq`; the replay and
/// the confirming HAI are left to read.
pub async fn resume_in_form(
    node: &Server,
    kind: Kind,
    form: ResumeForm,
    session: &str,
    last_rx_seq: u64,
) -> Conn {
    match form {
        ResumeForm::Url => {
            node.connect_with(kind, Opts::resume(session, last_rx_seq))
                .await
        }
        ResumeForm::LastEventId => {
            let opts = Opts {
                last_event_id: Some(format!("{session}:{last_rx_seq}")),
                ..Opts::default()
            };
            node.connect_with(kind, opts).await
        }
        ResumeForm::Hai => {
            resume_by_client_hai(node, kind, session, last_rx_seq)
                .await
                .0
        }
    }
}

/// Opens a fresh connection on `node`, reads its session's HAI and TOOL_LIST, then sends a
/// client HAI (seq 3) that names `session` with `last_rx_seq`. Returns the connection and
/// the fresh session the server announced first, which the resume must drop.
pub async fn resume_by_client_hai(
    node: &Server,
    kind: Kind,
    session: &str,
    last_rx_seq: u64,
) -> (Conn, String) {
    let mut c = node.connect(kind).await;
    let fresh = session_of(&c.recv_type("HAI").await);
    assert_ne!(fresh, session);
    c.recv_type("TOOL_LIST").await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["last_rx_seq"] = json!(last_rx_seq.to_string());
    c.send(&envelope(
        &next_id("resume"),
        session,
        3,
        "SYSTEM",
        "HAI",
        hai,
    ))
    .await;
    (c, fresh)
}

/// Checks a resume: the messages before the confirming HAI are the replay, starting right
/// after `after` with consecutive seqs, identical to what `before` received of them; the
/// confirming HAI names `session` and takes the next seq.
pub fn check_replay(
    replay: &[Value],
    confirm: &Value,
    before: &[Value],
    session: &str,
    after: u64,
) {
    assert!(!replay.is_empty(), "nothing replayed");
    for (i, m) in replay.iter().enumerate() {
        assert_eq!(seq(m), after + 1 + i as u64, "replay in order: {m}");
        assert_eq!(m["session"], session);
        if let Some(orig) = before.iter().find(|o| seq(o) == seq(m)) {
            assert_eq!(m, orig, "a replay carries the original id, seq and ts");
        }
    }
    assert_eq!(ty(confirm), "HAI", "{confirm}");
    assert_eq!(chan(confirm), "SYSTEM");
    assert_eq!(
        confirm["session"], session,
        "the HAI confirms the resumed session"
    );
    assert_eq!(
        seq(confirm),
        seq(replay.last().unwrap()) + 1,
        "the confirming HAI takes the next seq"
    );
    assert_eq!(confirm["payload"]["haip_version"], "1.1.2");
}

/// The union of everything received, deduplicated by seq, is the complete echo run.
pub fn check_complete_run(all: &[&Value], session: &str, text: &str) {
    let mine: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|v| v["session"] == session)
        .collect();
    assert_contiguous(mine.iter().copied());
    let mut by_seq = std::collections::BTreeMap::new();
    for m in &mine {
        by_seq.insert(seq(m), *m);
    }
    let echoed: String = by_seq
        .values()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(echoed, text, "every word exactly once");
    let fin: Vec<&&Value> = by_seq
        .values()
        .filter(|v| ty(v) == "RUN_FINISHED")
        .collect();
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0]["payload"]["status"], "OK");
}

// --- shared threads ------------------------------------------------------------------

/// Options that follow `thread` (`?thread=`).
pub fn follow(thread: &str) -> Opts {
    Opts {
        query: vec![("thread".into(), thread.into())],
        ..Opts::default()
    }
}

/// A complete USER text message sent in `thread`.
pub async fn say_in(conn: &mut Conn, thread: &str, text: &str) {
    let message_id = next_id("m");
    let mut start = conn.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": message_id, "text": text}),
    );
    start["thread_id"] = json!(thread);
    let mut end = conn.msg("USER", "MESSAGE_END", json!({"message_id": message_id}));
    end["thread_id"] = json!(thread);
    for m in [start, end] {
        if let Some(r) = conn.send(&m).await {
            assert_eq!(r.status, 200, "POST refused: {r:?}");
        }
    }
}

/// Opens a connection and waits for its session's HAI (and the TOOL_LIST after it).
pub async fn open_session(server: &Server, kind: Kind, opts: Opts) -> Conn {
    let mut c = connect_session(server, kind, opts).await;
    c.recv_type("HAI").await;
    c.recv_type("TOOL_LIST").await;
    c
}

/// Opens a connection. An HTTP streaming request only starts once its body has a first
/// line, as with every real client, which sends its HAI first: here a PING.
pub async fn connect_session(server: &Server, kind: Kind, opts: Opts) -> Conn {
    let mut c = Conn::open(server, kind, opts).await;
    if kind == Kind::Stream {
        c.ping("open").await;
    }
    c
}

/// The run as one follower or the publisher saw it: checks its shape and returns the text.
pub fn check_thread_run(msgs: &[Value], session: &str, thread: &str) -> String {
    let run: Vec<&Value> = msgs.iter().filter(|m| m["channel"] == "AGENT").collect();
    let kinds: Vec<&str> = run.iter().map(|m| ty(m)).collect();
    assert_eq!(kinds.first(), Some(&"RUN_STARTED"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"RUN_FINISHED"), "{kinds:?}");
    let run_id = &run[0]["run_id"];
    let mut text = String::new();
    for m in &run {
        assert_eq!(
            m["session"], session,
            "each copy is the follower's own: {m}"
        );
        assert_eq!(&m["run_id"], run_id, "one run: {m}");
        if matches!(ty(m), "RUN_STARTED" | "MESSAGE_PART" | "RUN_FINISHED") {
            assert_eq!(m["thread_id"], thread, "carries its thread: {m}");
        }
        if ty(m) == "MESSAGE_PART" {
            text.push_str(m["payload"]["text"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(
        run.last().map(|m| &m["payload"]["status"]),
        Some(&json!("OK"))
    );
    text
}
