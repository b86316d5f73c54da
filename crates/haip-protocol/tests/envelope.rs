//! Envelope parsing and serialization beyond the vectors: wire forms, kept fields, costs.

use haip_protocol::payload::{AudioChunk, MessagePart, Nonce};
use haip_protocol::{Envelope, ErrorCode, EventType, Payload};
use serde_json::{json, Map, Value};

fn wire(env: &Envelope) -> Value {
    serde_json::from_str(&env.to_json()).unwrap()
}

#[test]
fn numbers_travel_as_decimal_strings() {
    let mut env = Envelope::new(
        "id-1",
        "s-1",
        42,
        1_700_000_000_123,
        "AGENT",
        Payload::MessagePart(MessagePart {
            message_id: "m".into(),
            text: "hi ".into(),
            extra: Map::new(),
        }),
    );
    env.ack = Some(7);
    env.run_id = Some("r-1".into());
    assert_eq!(
        wire(&env),
        json!({
            "id": "id-1", "session": "s-1", "seq": "42", "ack": "7", "ts": "1700000000123",
            "channel": "AGENT", "type": "MESSAGE_PART",
            "payload": {"message_id": "m", "text": "hi "}, "run_id": "r-1"
        })
    );
}

#[test]
fn absent_optional_fields_are_not_written() {
    let env = Envelope::new("a", "s", 1, 0, "SYSTEM", Payload::Ping(Nonce::default()));
    let v = wire(&env);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec!["channel", "id", "payload", "seq", "session", "ts", "type"]
    );
    assert_eq!(v["payload"], json!({}));
}

#[test]
fn unknown_fields_are_kept_and_written_back_without_crit() {
    let line = r#"{"id":"a","session":"s","seq":"1","ts":"0","channel":"SYSTEM","type":"PING","payload":{"nonce":"n","later":[1]},"trace":"t-9"}"#;
    let env = Envelope::parse(line).unwrap();
    assert_eq!(env.extra.get("trace"), Some(&json!("t-9")));
    let v = wire(&env);
    assert_eq!(v["trace"], "t-9");
    assert_eq!(v["payload"]["later"], json!([1]));
}

#[test]
fn draft_type_names_are_written_with_their_current_name() {
    let line = r#"{"id":"a","session":"s","seq":"1","ts":"0","channel":"USER","type":"TEXT_MESSAGE_PART","payload":{"message_id":"m","text":"x"}}"#;
    let env = Envelope::parse(line).unwrap();
    assert_eq!(env.event_type(), EventType::MessagePart);
    assert_eq!(wire(&env)["type"], "MESSAGE_PART");
}

#[test]
fn audio_data_is_decoded_and_counted_for_flow_control() {
    let line = r#"{"id":"a","session":"s","seq":"1","ts":"0","channel":"AUDIO_IN","type":"AUDIO_CHUNK","payload":{"message_id":"m","mime":"audio/raw","data":"AAECAw=="}}"#;
    let env = Envelope::parse(line).unwrap();
    match &env.payload {
        Payload::AudioChunk(AudioChunk { data: Some(d), .. }) => assert_eq!(d, &vec![0, 1, 2, 3]),
        other => panic!("unexpected payload {other:?}"),
    }
    assert_eq!(env.flow_cost(line.len()), line.len() as u64 + 4);
    assert_eq!(wire(&env)["payload"]["data"], "AAECAw==");
}

#[test]
fn binary_length_counts_for_flow_control() {
    let mut env = Envelope::new("a", "s", 1, 0, "AUDIO_IN", Payload::Ping(Nonce::default()));
    env.bin_len = Some(960);
    assert_eq!(env.flow_cost(100), 1060);
}

#[test]
fn a_broken_field_still_reports_the_id() {
    let err = Envelope::parse(
        r#"{"id":"handshake-1","session":"s","seq":"x","ts":"0","channel":"SYSTEM","type":"HAI","payload":{}}"#,
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
    assert_eq!(err.field.as_deref(), Some("seq"));
    assert_eq!(err.related_id.as_deref(), Some("handshake-1"));
    assert_eq!(err.detail(), json!({"field": "seq", "reason": err.reason}));
}

#[test]
fn non_utf8_bytes_are_a_protocol_violation() {
    let err = Envelope::parse_bytes(b"{\"id\":\"\xff\"}").unwrap_err();
    assert_eq!(err.code, ErrorCode::ProtocolViolation);
    assert_eq!(err.field, None);
}

#[test]
fn error_codes_round_trip_through_their_wire_names() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
    }
    assert_eq!(ErrorCode::parse("NOT_A_CODE"), None);
}

#[test]
fn deeply_nested_or_huge_input_does_not_panic() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(Envelope::parse(&deep).is_err());
    let deep_payload = format!(
        r#"{{"id":"a","session":"s","seq":"1","ts":"0","channel":"USER","type":"TOOL_CALL","payload":{{"call_id":"c","tool":"t","params":{{"x":{}{}}}}}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    assert!(Envelope::parse(&deep_payload).is_err());
}

/// A message copied to many sessions is serialized once from `channel` on; each session's
/// copy must be byte for byte what serializing the whole envelope gives.
#[test]
fn a_shared_tail_completed_per_session_equals_the_whole_serialization() {
    let tricky = [
        "plain",
        "quo\"te",
        "back\\slash",
        "tab\there",
        "line\nbreak",
        "é ☃ \u{1}",
    ];
    for (i, word) in tricky.iter().enumerate() {
        let mut env = Envelope::new(
            format!("id-{word}"),
            format!("sess-{word}"),
            i as u64 * 1_000_003,
            1_700_000_000_000 + i as u64,
            "AGENT",
            Payload::MessagePart(MessagePart {
                message_id: "m".into(),
                text: (*word).into(),
                extra: Map::new(),
            }),
        );
        env.run_id = Some(format!("run-{word}"));
        env.thread_id = Some(format!("thread-{word}"));
        env.extra.insert("x_vendor".into(), json!({"k": word}));
        for ack in [None, Some(0), Some(u64::MAX)] {
            env.ack = ack;
            let shared = env.shared_json();
            assert!(shared.starts_with(",\"channel\":"), "{shared}");
            let mut copy = Envelope::json_head(&env.id, &env.session, env.seq, ack, env.ts);
            copy.push_str(&shared);
            assert_eq!(copy, env.to_json(), "{word:?} ack {ack:?}");
            let head = Envelope::json_head(&env.id, &env.session, env.seq, ack, env.ts);
            assert_eq!(
                Envelope::json_head_len(&env.id, &env.session, env.seq, ack, env.ts),
                head.len(),
                "{head}"
            );
            let parsed = Envelope::parse(&copy).expect("a copy parses");
            assert_eq!(parsed.to_json(), env.to_json());
        }
    }
}
