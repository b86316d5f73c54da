//! Fuzzing the session engine with proptest (run by `cargo test`, bounded): sequences of
//! client envelopes drawn from every event type, with seqs that jump, repeat and go
//! back, channel names made up on the spot, ids that collide, texts of any size and
//! parameters of the wrong shape, fed to one session as its connection would. The engine
//! must never panic, and whatever the session holds must stay within its bounds.

mod common;

use std::sync::Arc;

use common::ALL_EVENTS;
use haip_protocol::flow::Credit;
use haip_protocol::replay::ReplayConfig;
use haip_protocol::Envelope;
use haip_server::agent::EchoAgent;
use haip_server::engine::core::{SessionLimits, TOOL_CALL_BYTES};
use haip_server::engine::outbound::ConnQueue;
use haip_server::engine::Engine;
use haip_server::tools::ToolRegistry;
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(300)
    }
}

fn limits() -> SessionLimits {
    SessionLimits {
        replay: ReplayConfig {
            max_bytes: 64 * 1024,
            ..ReplayConfig::default()
        },
        max_concurrent_runs: 3,
        inbound_credit: Credit::new(Some(20), Some(20_000)),
        max_held_inbound: 8,
        max_pending_input_bytes: 8_000,
        max_running_tool_calls: 5,
        max_held_messages: 200,
        max_held_bytes: 64 * 1024,
    }
}

/// A payload for `ty`, from small pools of values so that ids collide, with now and
/// then a field of the wrong type.
fn payload(ty: &'static str) -> impl Strategy<Value = Value> {
    let id = prop::sample::select(vec!["a", "b", "c", ""]);
    let text = prop_oneof![
        Just(String::new()),
        "[a-z ]{0,12}",
        (1usize..3000).prop_map(|n| "x".repeat(n)),
    ];
    let seq = prop_oneof![
        Just("1".to_string()),
        Just("0".to_string()),
        "[0-9]{1,3}",
        Just("x".to_string())
    ];
    let tool = prop::sample::select(vec!["echo", "add", "sleep", "nope"]);
    let channel = prop::sample::select(vec!["USER", "AGENT", "SYSTEM", "AUDIO_IN", "made-up"]);
    let wrong = prop_oneof![
        Just(json!(null)),
        Just(json!(7)),
        Just(json!([1])),
        Just(json!({}))
    ];
    (
        id,
        text,
        seq,
        tool,
        channel,
        wrong,
        prop::bool::weighted(0.15),
    )
        .prop_map(move |(id, text, seq, tool, channel, wrong, break_it)| {
            let mut p = match ty {
                "HAI" => {
                    json!({"haip_version": "1.1.2", "accept_major": [1], "accept_events": ALL_EVENTS,
                                "capabilities": {"flow_control": {"initial_credit_messages": 3}}})
                }
                "RUN_STARTED" | "RUN_FINISHED" | "RUN_CANCEL" => {
                    json!({"run_id": id, "status": "OK"})
                }
                "RUN_ERROR" | "ERROR" => json!({"code": "INTERNAL_ERROR", "message": text}),
                "PING" | "PONG" => json!({"nonce": id}),
                "REPLAY_REQUEST" => json!({"from_seq": seq, "to_seq": "50"}),
                "MESSAGE_START" => json!({"message_id": id, "text": text}),
                "MESSAGE_PART" => json!({"message_id": id, "text": text}),
                "MESSAGE_END" => json!({"message_id": id}),
                "AUDIO_CHUNK" => json!({"mime": "audio/pcm", "data": "AAAA", "seq": 1}),
                "TOOL_CALL" => json!({"call_id": id, "tool": tool,
                    "params": {"message": text, "a": 1, "b": 2, "ms": 5}}),
                "TOOL_UPDATE" => json!({"call_id": id, "status": "RUNNING"}),
                "TOOL_DONE" | "TOOL_CANCEL" => json!({"call_id": id}),
                "TOOL_LIST" => json!({"tools": []}),
                "TOOL_SCHEMA" => json!({"tool": tool}),
                "FLOW_UPDATE" => json!({"channel": channel, "add_messages": 5, "add_bytes": 500}),
                _ => json!({"channel": channel}),
            };
            if break_it {
                if let Some(first) = p.as_object().and_then(|o| o.keys().next().cloned()) {
                    p[first] = wrong;
                }
            }
            p
        })
}

#[derive(Debug, Clone)]
struct Step {
    ty: &'static str,
    channel: String,
    seq_move: i8,
    payload: Value,
}

fn step() -> impl Strategy<Value = Step> {
    prop::sample::select(ALL_EVENTS.to_vec()).prop_flat_map(|ty| {
        let channel = prop_oneof![
            4 => prop::sample::select(vec!["USER", "SYSTEM", "AGENT", "AUDIO_IN"]).prop_map(str::to_string),
            1 => "[a-z]{1,3}",
        ];
        // Mostly the next seq; sometimes a repeat, a step back, or a jump.
        let seq_move = prop_oneof![8 => Just(1i8), 1 => Just(0i8), 1 => Just(-2i8), 1 => Just(3i8)];
        (channel, seq_move, payload(ty)).prop_map(move |(channel, seq_move, payload)| Step {
            ty,
            channel,
            seq_move,
            payload,
        })
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_sequence_of_client_messages_keeps_the_session_within_its_bounds(
        steps in prop::collection::vec(step(), 1..120)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let limits = limits();
            let engine = Engine::new(
                limits.clone(),
                Arc::new(EchoAgent { word_delay: std::time::Duration::ZERO }),
                ToolRegistry::with_builtins(),
                60_000,
                64 * 1024 * 1024,
            );
            let queue = Arc::new(ConnQueue::default());
            let session = engine.open_session("fuzz", queue.clone(), false);
            let mut seq: i64 = 0;
            for (i, s) in steps.iter().enumerate() {
                seq = (seq + i64::from(s.seq_move)).max(1);
                let text = json!({"id": format!("f{i}"), "session": session.id, "seq": seq.to_string(),
                    "ts": "0", "channel": s.channel, "type": s.ty, "payload": s.payload}).to_string();
                if let Ok(env) = Envelope::parse(&text) {
                    let cost = env.flow_cost(text.len());
                    engine.handle(&session, env, cost);
                }
                // Let agents and tools run now and then.
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
                let usage = session.lock().memory_usage();
                prop_assert!(usage.inbound_held <= limits.max_pending_input_bytes, "{usage:?}");
                prop_assert!(usage.unfinished_messages <= limits.max_pending_input_bytes, "{usage:?}");
                prop_assert!(usage.replay <= limits.replay.max_bytes, "{usage:?}");
                prop_assert!(
                    usage.tool_calls <= limits.max_running_tool_calls as u64 * TOOL_CALL_BYTES,
                    "{usage:?}"
                );
                // Take what the connection would write, as a reading client does.
                drop(queue.take_now());
            }
            Ok(())
        })?;
    }
}
