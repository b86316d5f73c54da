use std::sync::Arc;

use haip_protocol::payload::RunStatus;
use haip_protocol::{channel, Envelope, Payload};
use serde_json::{Map, Value};

use super::limits::*;
use super::messages::*;
use super::session_core::SessionCore;
use crate::agent::RunEnding;
use crate::engine::outbound::{ConnQueue, OutItem};
use crate::tools::ToolRegistry;
use serde_json::json;

struct Fixture {
    core: SessionCore,
    queue: Arc<ConnQueue>,
    tools: ToolRegistry,
    seq: u64,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_limits(SessionLimits::default())
    }

    fn with_limits(limits: SessionLimits) -> Fixture {
        let mut core = SessionCore::new("s1".into(), "alice".into(), Arc::new(limits), true, 0);
        let queue = Arc::new(ConnQueue::default());
        core.attach(queue.clone(), None, true, 0).unwrap();
        Fixture {
            core,
            queue,
            tools: ToolRegistry::with_builtins(),
            seq: 0,
        }
    }

    fn send(
        &mut self,
        ty: &str,
        channel: &str,
        run_id: Option<&str>,
        payload: Value,
    ) -> Vec<Action> {
        self.seq += 1;
        let mut v = json!({"id": format!("c{}", self.seq), "session": "s1",
            "seq": self.seq.to_string(), "ts": "0", "channel": channel,
            "type": ty, "payload": payload});
        if let Some(r) = run_id {
            v["run_id"] = json!(r);
        }
        let env = Envelope::parse(&v.to_string()).unwrap();
        self.core.receive(env, 100, &self.tools, 10)
    }

    /// Everything queued since the last call: (type, run_id, payload).
    fn sent(&self) -> Vec<(String, Option<String>, Value)> {
        self.queue
            .take_now()
            .into_iter()
            .map(|i| match i {
                OutItem::Frame(f) => {
                    let v: Value = serde_json::from_slice(&f.json()).unwrap();
                    (
                        v["type"].as_str().unwrap().to_string(),
                        v["run_id"].as_str().map(str::to_string),
                        v["payload"].clone(),
                    )
                }
                OutItem::Close(c) => (format!("CLOSE {}", c.code), None, Value::Null),
                OutItem::Switch(_) => ("SWITCH".to_string(), None, Value::Null),
            })
            .collect()
    }
}

#[test]
fn the_eleventh_protocol_violation_closes_with_1008() {
    let mut f = Fixture::new();
    for _ in 0..MAX_PROTOCOL_VIOLATIONS {
        assert!(!f.core.count_violation(Violation::Protocol));
    }
    assert!(f.sent().iter().all(|(t, _, _)| !t.starts_with("CLOSE")));
    assert!(f.core.count_violation(Violation::Protocol));
    assert_eq!(f.sent().last().unwrap().0, "CLOSE 1008");
}

#[test]
fn flow_violations_have_their_own_threshold_and_reset_on_attach() {
    let mut f = Fixture::new();
    for _ in 0..MAX_FLOW_VIOLATIONS {
        assert!(!f.core.count_violation(Violation::FlowControl));
    }
    let fresh = Arc::new(ConnQueue::default());
    f.core.attach(fresh, Some(0), true, 1).unwrap();
    assert!(!f.core.count_violation(Violation::FlowControl));
}

#[test]
fn a_wrong_version_hai_answers_error_and_closes_with_1002() {
    let mut f = Fixture::new();
    f.sent();
    f.send(
        "HAI",
        "SYSTEM",
        None,
        json!({"haip_version": "2.0.0", "accept_major": [2], "accept_events": ["HAI"]}),
    );
    let sent = f.sent();
    assert_eq!(sent[0].0, "ERROR");
    assert_eq!(sent[0].2["code"], "VERSION_INCOMPATIBLE");
    assert_eq!(sent[1].0, "CLOSE 1002");
}

#[test]
fn a_cancelled_run_finishes_only_after_its_tool_calls() {
    let mut f = Fixture::new();
    f.send("RUN_STARTED", "USER", Some("r1"), json!({"run_id": "r1"}));
    let actions = f.send(
        "TOOL_CALL",
        "USER",
        Some("r1"),
        json!({"call_id": "c1", "tool": "sleep", "params": {"ms": 1000}}),
    );
    let cancel = match &actions[..] {
        [Action::CallTool(call)] => call.cancel.clone(),
        other => panic!("{other:?}"),
    };
    f.sent();
    f.send("RUN_CANCEL", "USER", None, json!({"run_id": "r1"}));
    assert!(cancel.is_cancelled());
    assert!(f.sent().is_empty(), "RUN_FINISHED must wait for TOOL_DONE");
    let mut done = f.core.envelope(
        channel::AGENT,
        Payload::ToolDone(haip_protocol::payload::ToolDone {
            call_id: "c1".into(),
            status: RunStatus::Cancelled,
            result: None,
            extra: Map::new(),
        }),
    );
    done.run_id = Some("r1".into());
    f.core.tool_done(done, "c1", 20);
    let sent = f.sent();
    let types: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(types, ["TOOL_DONE", "RUN_FINISHED"]);
    assert_eq!(sent[1].2["status"], "CANCELLED");
}

#[test]
fn an_agents_tool_call_is_announced_refused_or_run_and_closes_its_run_last() {
    let mut f = Fixture::new();
    let (run_id, _) = f.core.open_run(None, 0).expect("a run");
    f.sent();
    let mut params = Map::new();
    params.insert("ms".into(), json!(5));
    // Unknown tool: TOOL_CALL, then TOOL_DONE ERROR TOOL_NOT_FOUND at once.
    let refused = f
        .core
        .start_agent_tool_call(&run_id, "c1", "nope", Ok(params.clone()), false, 1);
    assert!(matches!(&refused, Err(o) if o.status == RunStatus::Error));
    // Params the agent could not read: the reason goes back as the error.
    let bad = f
        .core
        .start_agent_tool_call(&run_id, "c2", "sleep", Err("not JSON".into()), true, 2);
    assert!(matches!(&bad, Err(o) if o.status == RunStatus::Error));
    let sent = f.sent();
    let types: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(types, ["TOOL_CALL", "TOOL_DONE", "TOOL_CALL", "TOOL_DONE"]);
    assert_eq!(sent[1].2["result"]["code"], "TOOL_NOT_FOUND");
    assert_eq!(sent[3].2["result"]["message"], "not JSON");
    // A good call runs with its params; the run's end waits for its TOOL_DONE.
    let (cancel, got) = f
        .core
        .start_agent_tool_call(&run_id, "c3", "sleep", Ok(params.clone()), true, 3)
        .expect("started");
    assert_eq!(got, params);
    f.sent();
    f.core
        .close_run(&run_id, RunEnding::Finished(RunStatus::Ok), 4);
    assert!(f.sent().is_empty(), "RUN_FINISHED must wait for TOOL_DONE");
    assert!(!cancel.is_cancelled());
    let mut done = f.core.envelope(
        channel::AGENT,
        Payload::ToolDone(haip_protocol::payload::ToolDone {
            call_id: "c3".into(),
            status: RunStatus::Ok,
            result: Some(json!({"slept_ms": 5})),
            extra: Map::new(),
        }),
    );
    done.run_id = Some(run_id.clone());
    f.core.tool_done(done, "c3", 5);
    let types: Vec<String> = f.sent().into_iter().map(|s| s.0).collect();
    assert_eq!(types, ["TOOL_DONE", "RUN_FINISHED"]);
    // A cancelled run starts no more calls and sends nothing.
    let (run_id, run_cancel) = f.core.open_run(None, 6).expect("a run");
    run_cancel.cancel();
    f.send("RUN_CANCEL", "USER", None, json!({"run_id": run_id}));
    f.sent();
    let late = f
        .core
        .start_agent_tool_call(&run_id, "c4", "sleep", Ok(params), true, 7);
    assert!(matches!(&late, Err(o) if o.status == RunStatus::Cancelled));
    assert!(!f.sent().iter().any(|s| s.0 == "TOOL_CALL"));
}

#[test]
fn a_pong_with_the_ping_nonce_is_timed() {
    let mut f = Fixture::new();
    f.core.ping(0);
    let nonce = f.sent().last().unwrap().2["nonce"].clone();
    let actions = f.send("PONG", "SYSTEM", None, json!({"nonce": "other"}));
    assert!(actions.is_empty());
    let actions = f.send("PONG", "SYSTEM", None, json!({"nonce": nonce}));
    assert!(matches!(actions[..], [Action::RoundTrip(10)]));
}

#[test]
fn a_gap_wakes_the_attached_connection_timers() {
    let mut f = Fixture::new();
    f.send("PING", "SYSTEM", None, json!({}));
    f.seq += 1; // skip one: a gap opens and its deadline must be watched
    f.send("PING", "SYSTEM", None, json!({}));
    assert!(f.core.next_gap_deadline().is_some());
    let woken = futures_util::FutureExt::now_or_never(f.queue.timers_changed());
    assert!(woken.is_some());
}

fn hai_with_credit(messages: u64) -> Value {
    let all: Vec<&str> = haip_protocol::EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect();
    json!({"haip_version": "1.1.2", "accept_major": [1], "accept_events": all,
        "capabilities": {"flow_control": {"initial_credit_messages": messages,
            "initial_credit_bytes": 1_000_000}}})
}

fn agent_text(core: &SessionCore, text: &str) -> Envelope {
    core.envelope(
        channel::AGENT,
        Payload::MessagePart(haip_protocol::payload::MessagePart {
            message_id: "m1".into(),
            text: text.into(),
            extra: Map::new(),
        }),
    )
}

/// Byte credit is spent exactly as the client counts what it receives (the length of
/// the text as sent), for a session's own messages and for shared ones alike.
#[test]
fn byte_credit_is_spent_as_the_client_counts_it() {
    let mut f = Fixture::new();
    f.send("HAI", "SYSTEM", None, hai_with_credit(1000));
    f.sent();
    let copy = Arc::new(SharedMessage::copies_of(agent_text(
        &f.core,
        "shared \"words\"",
    )));
    for now in [5, 1_700_000_000_000] {
        let before = f.core.gate.credit(channel::AGENT);
        let env = agent_text(&f.core, "own");
        f.core.emit(env, now);
        f.core.emit_shared(&copy, now);
        let spent = before.bytes.unwrap() - f.core.gate.credit(channel::AGENT).bytes.unwrap();
        let sent: u64 = f
            .queue
            .take_now()
            .into_iter()
            .map(|i| match i {
                OutItem::Frame(o) => {
                    assert!(o.json().ends_with(b"}"));
                    o.json().len() as u64
                }
                other => panic!("unexpected {other:?}"),
            })
            .sum();
        assert_eq!(spent, sent, "at ts {now}");
    }
}

#[test]
fn output_held_beyond_the_bound_ends_the_session() {
    let mut f = Fixture::with_limits(SessionLimits {
        max_held_messages: 3,
        ..SessionLimits::default()
    });
    f.send("HAI", "SYSTEM", None, hai_with_credit(1));
    f.sent();
    for i in 0..4 {
        let env = agent_text(&f.core, &format!("w{i}"));
        f.core.emit(env, 5);
    }
    // One fits the credit, three are held: at the bound, not over it.
    assert_eq!(f.core.held_outbound().0, 3);
    assert!(!f.core.is_ended());
    let env = agent_text(&f.core, "one too many");
    f.core.emit(env, 6);
    assert!(f.core.is_ended());
    let sent = f.sent();
    let types: Vec<&str> = sent.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(types, ["MESSAGE_PART", "ERROR", "CLOSE 1008"]);
    assert_eq!(sent[1].2["code"], "FLOW_CONTROL_VIOLATION");
    assert_eq!(sent[1].2["detail"]["reason"], "HELD_OUTPUT_LIMIT");
    assert_eq!(f.core.held_outbound(), (0, 0), "held output is freed");
    // An ended session sends nothing more and cannot be attached again.
    let env = agent_text(&f.core, "late");
    f.core.emit(env, 7);
    assert!(f.sent().is_empty());
    assert!(!f.core.is_attached());
}

#[test]
fn an_unwritten_backlog_beyond_the_bound_ends_the_session_but_a_replay_does_not() {
    let mut f = Fixture::with_limits(SessionLimits {
        max_held_messages: 4,
        ..SessionLimits::default()
    });
    f.send("HAI", "SYSTEM", None, hai_with_credit(1000));
    for i in 0..4 {
        let env = agent_text(&f.core, &format!("w{i}"));
        f.core.emit(env, 5);
    }
    f.sent(); // the writer took them
              // A resume replays more than the bound: that backlog was bounded by the window.
    let fresh = Arc::new(ConnQueue::default());
    f.core.attach(fresh.clone(), Some(0), true, 6).unwrap();
    assert!(!f.core.is_ended());
    assert!(fresh.len() > 4);
    // New output the writer does not take counts.
    fresh.set_writing(true);
    // The confirming HAI and three more are within the bound.
    for i in 0..3 {
        let env = agent_text(&f.core, &format!("x{i}"));
        f.core.emit(env, 7);
    }
    assert!(!f.core.is_ended(), "4 new messages are within the bound");
    let env = agent_text(&f.core, "x3");
    f.core.emit(env, 8);
    assert!(f.core.is_ended());
    assert!(
        futures_util::FutureExt::now_or_never(fresh.aborted()).is_some(),
        "a stuck writer is aborted"
    );
}

#[test]
fn a_paused_client_channel_refuses_with_channel_paused_until_resumed() {
    let mut f = Fixture::new();
    f.send("HAI", "SYSTEM", None, hai_with_credit(1000));
    f.core.pause_inbound("USER", 1);
    let sent = f.sent();
    assert_eq!(sent.last().unwrap().0, "PAUSE_CHANNEL");
    let refused = f.send(
        "TOOL_CALL",
        "USER",
        None,
        json!({"call_id": "c1", "tool": "echo",
        "params": {"message": "x"}}),
    );
    assert!(refused.is_empty(), "not processed");
    let sent = f.sent();
    assert_eq!(sent[0].0, "ERROR");
    assert_eq!(sent[0].2["code"], "FLOW_CONTROL_VIOLATION");
    assert_eq!(sent[0].2["detail"]["reason"], "CHANNEL_PAUSED");
    // SYSTEM cannot be paused.
    f.core.pause_inbound("SYSTEM", 2);
    assert!(f.sent().is_empty());
    f.core.resume_inbound("USER", 3);
    assert_eq!(f.sent()[0].0, "RESUME_CHANNEL");
    f.seq -= 1; // the refused message's seq was not used: the client sends it again
    let accepted = f.send(
        "TOOL_CALL",
        "USER",
        None,
        json!({"call_id": "c2", "tool": "echo",
        "params": {"message": "x"}}),
    );
    assert_eq!(accepted.len(), 1);
}
