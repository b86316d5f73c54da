//! Envelopes: building client messages and reading the fields of received ones.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use super::time::now_ms;

/// The 22 event types of HAIP 1.1.2 (contract section 2).
pub const ALL_EVENTS: [&str; 22] = [
    "HAI",
    "RUN_STARTED",
    "RUN_FINISHED",
    "RUN_CANCEL",
    "RUN_ERROR",
    "PING",
    "PONG",
    "REPLAY_REQUEST",
    "MESSAGE_START",
    "MESSAGE_PART",
    "MESSAGE_END",
    "AUDIO_CHUNK",
    "TOOL_CALL",
    "TOOL_UPDATE",
    "TOOL_DONE",
    "TOOL_CANCEL",
    "TOOL_LIST",
    "TOOL_SCHEMA",
    "ERROR",
    "FLOW_UPDATE",
    "PAUSE_CHANNEL",
    "RESUME_CHANNEL",
];

static IDS: AtomicU64 = AtomicU64::new(1);

/// A unique client message id.
pub fn next_id(prefix: &str) -> String {
    format!("{prefix}-{}", IDS.fetch_add(1, Ordering::Relaxed))
}

pub fn envelope(
    id: &str,
    session: &str,
    seq: u64,
    channel: &str,
    ty: &str,
    payload: Value,
) -> Value {
    json!({
        "id": id,
        "session": session,
        "seq": seq.to_string(),
        "ts": now_ms().to_string(),
        "channel": channel,
        "type": ty,
        "payload": payload,
    })
}

/// A client HAI payload accepting `events`.
pub fn hai_payload(events: &[&str]) -> Value {
    json!({"haip_version": "1.1.2", "accept_major": [1], "accept_events": events})
}

pub fn ty(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

pub fn chan(v: &Value) -> &str {
    v["channel"].as_str().unwrap_or("")
}

pub fn seq(v: &Value) -> u64 {
    v["seq"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no decimal seq in {v}"))
}

/// The types of an echo run of `words` words, in order.
pub fn echo_run_types(words: usize) -> Vec<&'static str> {
    let mut run = vec!["RUN_STARTED", "MESSAGE_START"];
    run.extend(std::iter::repeat_n("MESSAGE_PART", words));
    run.extend(["MESSAGE_END", "RUN_FINISHED"]);
    run
}

/// The texts of the MESSAGE_PARTs among `msgs`, in order.
pub fn part_texts<'a>(msgs: impl IntoIterator<Item = &'a Value>) -> Vec<&'a str> {
    msgs.into_iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect()
}

pub fn types(msgs: &[Value]) -> Vec<&str> {
    msgs.iter().map(ty).collect()
}

/// Asserts that `msgs` (possibly with duplicates, e.g. replays) cover server seqs
/// 1..=max without a gap, and that every copy of a seq is the same message (same id).
/// Seq 0 (the unsequenced connect-time RESUME_FAILED) is ignored. Returns max.
pub fn assert_contiguous<'a>(msgs: impl IntoIterator<Item = &'a Value>) -> u64 {
    let mut by_seq: BTreeMap<u64, &Value> = BTreeMap::new();
    for m in msgs {
        let s = seq(m);
        if s == 0 {
            continue;
        }
        if let Some(prev) = by_seq.get(&s) {
            assert_eq!(
                prev["id"], m["id"],
                "two different messages with seq {s}: {prev} / {m}"
            );
        }
        by_seq.insert(s, m);
    }
    let seqs: Vec<u64> = by_seq.keys().copied().collect();
    let max = seqs.last().copied().unwrap_or(0);
    let expected: Vec<u64> = (1..=max).collect();
    assert_eq!(seqs, expected, "server seqs must be 1..=max with no gap");
    max
}
