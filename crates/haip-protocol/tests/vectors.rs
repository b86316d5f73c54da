//! The shared test vectors under `tests/vectors/`: each `NAME.ndjson` line is an input and
//! the same line of `NAME.expect` is the verdict (`ok TYPE` or `error CODE FIELD`).

use std::fs;
use std::path::PathBuf;

use haip_protocol::Envelope;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

fn load(name: &str) -> Vec<(String, String)> {
    let dir = vectors_dir();
    let inputs = fs::read_to_string(dir.join(format!("{name}.ndjson"))).expect("vector inputs");
    let expects = fs::read_to_string(dir.join(format!("{name}.expect"))).expect("vector verdicts");
    let inputs: Vec<&str> = inputs.lines().collect();
    let expects: Vec<&str> = expects.lines().collect();
    assert_eq!(inputs.len(), expects.len(), "{name}: one verdict per input");
    inputs
        .into_iter()
        .zip(expects)
        .map(|(i, e)| (i.to_string(), e.to_string()))
        .collect()
}

fn verdict(line: &str) -> String {
    match Envelope::parse(line) {
        Ok(env) => format!("ok {}", env.event_type()),
        Err(e) => format!("error {} {}", e.code, e.field.as_deref().unwrap_or("-")),
    }
}

fn check(name: &str) {
    let cases = load(name);
    assert!(!cases.is_empty());
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter(|(_, (input, expect))| verdict(input) != *expect)
        .map(|(i, (input, expect))| {
            format!(
                "{name}:{}: expected `{expect}`, got `{}` for {input}",
                i + 1,
                verdict(input)
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn contract_examples_are_valid() {
    check("contract-examples");
}

#[test]
fn valid_vectors_are_accepted() {
    check("valid");
}

#[test]
fn invalid_vectors_get_their_code_and_field() {
    check("invalid");
}

#[test]
fn valid_envelopes_survive_a_serialization_round_trip() {
    for name in ["contract-examples", "valid"] {
        for (input, _) in load(name) {
            let parsed = Envelope::parse(&input).expect("valid vector");
            let again = Envelope::parse(&parsed.to_json()).expect("re-serialized envelope parses");
            assert_eq!(parsed, again, "{input}");
        }
    }
}

#[test]
fn related_id_is_set_whenever_the_id_is_readable() {
    for (input, expect) in load("invalid") {
        let err = Envelope::parse(&input).expect_err("invalid vector");
        let id_readable = serde_json::from_str::<serde_json::Value>(&input)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string))
            .filter(|id| !id.is_empty() && id.chars().count() <= 128);
        if expect.ends_with(" id") {
            continue;
        }
        assert_eq!(err.related_id, id_readable, "{input}");
    }
}
