//! The shared session vectors under `tests/vectors/session/` (format in its README.md), run
//! against the Rust implementation: haip-protocol's `Sequencer`, `SendGate` and
//! `ReceiveMeter`, and this crate's `ClientSession`. `tests/browser/vectors.test.mjs` runs
//! the same files against the browser client's modules (`web/haip/`), so that the two
//! clients follow one set of rules.
//!
//! A case marked `disagreement` names the implementation that does not produce its
//! expected outputs (`"browser: ..."` or `"rust: ..."`): that implementation's runner
//! checks that the disagreement is still there, the other checks the outputs as usual.

use std::fs;
use std::path::PathBuf;

use haip_client::session::{ClientSession, Output, SendError, SessionConfig};
use haip_protocol::flow::{Credit, Grant, ReceiveMeter, SendGate, GRANT_DELAY_MS};
use haip_protocol::sequencer::{Arrival, Sequencer};
use haip_protocol::Envelope;
use serde_json::{json, Value};

/// This runner's name in a case's `disagreement`.
const THIS_SIDE: &str = "rust:";

fn load(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors/session")
        .join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(!cases.is_empty(), "{file} has no case");
    cases
}

/// Whether `actual` has everything `expected` says: objects key by key (a `null` expected
/// means absent or null), anything else equal.
fn subset(expected: &Value, actual: Option<&Value>) -> bool {
    match (expected, actual) {
        (Value::Null, None | Some(Value::Null)) => true,
        (Value::Object(want), Some(Value::Object(got))) => {
            want.iter().all(|(k, v)| subset(v, got.get(k)))
        }
        (want, Some(got)) => want == got,
        (_, None) => false,
    }
}

fn num(step: &Value, key: &str) -> u64 {
    step[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` in {step}"))
}

fn text<'a>(step: &'a Value, key: &str) -> &'a str {
    step[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` in {step}"))
}

/// `{"messages": n | null, "bytes": n | null}`, or null for unlimited.
fn credit(v: &Value) -> Credit {
    Credit::new(v["messages"].as_u64(), v["bytes"].as_u64())
}

fn credit_json(c: Credit) -> Value {
    json!({ "messages": c.messages, "bytes": c.bytes })
}

fn grant_json(g: &Grant) -> Value {
    json!({ "channel": g.channel, "add_messages": g.add_messages, "add_bytes": g.add_bytes })
}

fn expect_eq(step: &Value, got: Value) -> Result<(), String> {
    if step["expect"] == got {
        Ok(())
    } else {
        Err(format!("{step}: got {got}"))
    }
}

/// Runs every case of `file` with `run_case`; panics listing the cases that failed (and
/// the disagreements that are gone).
fn check(file: &str, run_case: fn(&Value) -> Result<(), String>) {
    let mut failures = Vec::new();
    for case in load(file) {
        let name = case["name"].as_str().unwrap_or("?");
        let steps = case["steps"].as_array().map_or(0, |s| s.len());
        assert!(steps > 0, "{file}: {name}: no steps");
        let result = run_case(&case);
        let disagrees = case["disagreement"]
            .as_str()
            .is_some_and(|d| d.starts_with(THIS_SIDE));
        match (result, disagrees) {
            (Ok(()), false) | (Err(_), true) => {}
            (Err(e), false) => failures.push(format!("{file}: {name}: {e}")),
            (Ok(()), true) => failures.push(format!(
                "{file}: {name}: passes now: remove its `disagreement`"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// --- sequencer.json ------------------------------------------------------------------

fn sequencer_case(case: &Value) -> Result<(), String> {
    let capacity = case["capacity"].as_u64().unwrap_or(1000) as usize;
    let mut s: Sequencer<u64> = Sequencer::new(capacity);
    for step in case["steps"].as_array().into_iter().flatten() {
        let got = match text(step, "op") {
            "accept" => {
                let seq = num(step, "seq");
                match s.accept(seq, seq, num(step, "at")) {
                    Arrival::Deliver(v) => json!({ "deliver": v }),
                    Arrival::Duplicate => json!("duplicate"),
                    Arrival::Held => json!("held"),
                    Arrival::Overflow(_) => json!("overflow"),
                }
            }
            "poll_gap" => match s.poll_gap(num(step, "at")) {
                Some(m) => json!({ "from_seq": m.from_seq, "to_seq": m.to_seq }),
                None => Value::Null,
            },
            "next_deadline" => json!(s.next_deadline()),
            "last_delivered" => json!(s.last_delivered()),
            other => panic!("unknown sequencer op {other}"),
        };
        expect_eq(step, got)?;
    }
    Ok(())
}

#[test]
fn sequencer_vectors() {
    check("sequencer.json", sequencer_case);
}

// --- credit.json ---------------------------------------------------------------------

fn credit_case(case: &Value) -> Result<(), String> {
    let mut gate: SendGate<String> = SendGate::new(credit(&case["gate"]));
    let mut meter = ReceiveMeter::new(credit(&case["meter"]));
    for step in case["steps"].as_array().into_iter().flatten() {
        let channel = step["channel"].as_str().unwrap_or_default();
        let got = match text(step, "op") {
            "offer" => {
                let id = text(step, "id").to_string();
                match gate.offer(channel, num(step, "cost"), id) {
                    Some(_) => json!("allowed"),
                    None => json!("blocked"),
                }
            }
            "grant" => {
                json!(gate.grant(channel, num(step, "add_messages"), num(step, "add_bytes")))
            }
            "pause" => {
                gate.pause(channel);
                continue;
            }
            "resume" => json!(gate.resume(channel)),
            "credit" => credit_json(gate.credit(channel)),
            "held" => json!(gate.held_messages()),
            "consume" => {
                // A message arrived (charged against the advertised credit, as
                // ClientSession::receive does) and the application consumed it.
                let cost = num(step, "cost");
                let _ = meter.admit(channel, cost);
                meter
                    .consumed(channel, cost, num(step, "at"))
                    .as_ref()
                    .map_or(Value::Null, grant_json)
            }
            "flush" => Value::Array(
                meter
                    .flush(num(step, "at"))
                    .iter()
                    .map(grant_json)
                    .collect(),
            ),
            "next_flush" => {
                // The grant delay differs between the clients: the vector gives the time
                // the delay counts from.
                let want = step["expect_since"]
                    .as_u64()
                    .map(|since| since + GRANT_DELAY_MS);
                if meter.next_flush_ms() != want {
                    return Err(format!("{step}: got {:?}", meter.next_flush_ms()));
                }
                continue;
            }
            other => panic!("unknown credit op {other}"),
        };
        expect_eq(step, got)?;
    }
    Ok(())
}

#[test]
fn credit_vectors() {
    check("credit.json", credit_case);
}

// --- session.json and resume.json ----------------------------------------------------

fn session_config(case: &Value) -> SessionConfig {
    let mut config = SessionConfig::default();
    if let Some(c) = case["config"].as_object() {
        if let Some(v) = c.get("credit") {
            config.credit = credit(v);
        }
        if let Some(n) = c.get("max_pending").and_then(Value::as_u64) {
            config.max_pending = n as usize;
        }
    }
    config
}

/// A server envelope from its short form in a vector (see the README for the defaults).
fn server_envelope(short: &Value) -> Envelope {
    let seq = text(short, "seq");
    let mut env = json!({
        "id": format!("s{seq}"),
        "session": short["session"].as_str().unwrap_or("S"),
        "seq": seq,
        "ts": "0",
        "channel": short["channel"].as_str().unwrap_or("SYSTEM"),
        "type": text(short, "type"),
        "payload": short["payload"],
    });
    if let Some(ack) = short.get("ack") {
        env["ack"] = ack.clone();
    }
    Envelope::parse(&env.to_string()).unwrap_or_else(|e| panic!("{short}: {e:?}"))
}

fn wire(env: &Envelope) -> Value {
    serde_json::from_str(&env.to_json()).expect("an envelope serializes to JSON")
}

/// Compares the outputs of one step with its `expect`: every write (in order), delivery,
/// replacement and latency must be the expected ones, no more.
fn outputs_match(step: &Value, out: &[Output]) -> Result<(), String> {
    let expect = &step["expect"];
    let writes: Vec<Value> = out
        .iter()
        .filter_map(|o| match o {
            Output::Write(e) => Some(wire(e)),
            _ => None,
        })
        .collect();
    let delivered: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Deliver(m) => Some(m.env.seq),
            _ => None,
        })
        .collect();
    let replaced = out.iter().find_map(|o| match o {
        Output::SessionReplaced { old, new } => Some(json!({ "old": old, "new": new })),
        _ => None,
    });
    let latency = out.iter().find_map(|o| match o {
        Output::Latency(ms) => Some(json!(ms)),
        _ => None,
    });
    let want_writes = expect["writes"].as_array().cloned().unwrap_or_default();
    let writes_ok = want_writes.len() == writes.len()
        && want_writes
            .iter()
            .zip(&writes)
            .all(|(w, g)| subset(w, Some(g)));
    let want_delivered = expect.get("delivered").cloned().unwrap_or(json!([]));
    let ok = writes_ok
        && want_delivered == json!(delivered)
        && expect["replaced"] == replaced.clone().unwrap_or(Value::Null)
        && expect["latency"] == latency.clone().unwrap_or(Value::Null);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{step}: got writes {writes:?}, delivered {delivered:?}, replaced {replaced:?}, latency {latency:?}"
        ))
    }
}

fn session_case(case: &Value) -> Result<(), String> {
    let mut c = ClientSession::new(session_config(case));
    for step in case["steps"].as_array().into_iter().flatten() {
        let at = step["at"].as_u64().unwrap_or(0);
        let out = match text(step, "op") {
            "connected" => {
                let hai = wire(&c.connected(at));
                if !subset(&step["expect"]["hai"], Some(&hai)) {
                    return Err(format!("{step}: got {hai}"));
                }
                continue;
            }
            "disconnected" => {
                c.disconnected();
                continue;
            }
            "send" => {
                let env = json!({
                    "id": text(step, "id"), "session": "-", "seq": "0", "ts": at.to_string(),
                    "channel": text(step, "channel"), "type": text(step, "type"),
                    "payload": step["payload"],
                });
                let env =
                    Envelope::parse(&env.to_string()).unwrap_or_else(|e| panic!("{step}: {e:?}"));
                match c.submit(env, at) {
                    Ok(out) if step["expect"]["error"].is_null() => out,
                    Ok(out) => return Err(format!("{step}: sent, {out:?}")),
                    Err(SendError::QueueFull(_)) => {
                        if step["expect"]["error"] == "QUEUE_FULL" {
                            continue;
                        }
                        return Err(format!("{step}: QUEUE_FULL"));
                    }
                }
            }
            "receive" => c.received(server_envelope(&step["env"]), at),
            "poll" => c.poll(at),
            "consumed" => c.consumed(text(step, "channel"), num(step, "cost"), at),
            "ping" => c.ping(at),
            "state" => {
                let got = json!({
                    "pending": c.pending(),
                    "session": c.session_id(),
                    "last_rx_seq": c.last_rx_seq(),
                });
                if !subset(&step["expect"], Some(&got)) {
                    return Err(format!("{step}: got {got}"));
                }
                continue;
            }
            other => panic!("unknown session op {other}"),
        };
        outputs_match(step, &out)?;
    }
    Ok(())
}

#[test]
fn session_vectors() {
    check("session.json", session_case);
}

#[test]
fn resume_vectors() {
    check("resume.json", session_case);
}

#[test]
fn the_subset_rule_tells_absent_from_present() {
    let got = json!({"seq": "1", "payload": {"a": 1}});
    assert!(subset(&json!({"seq": "1"}), Some(&got)));
    assert!(subset(&json!({"payload": {"b": null}}), Some(&got)));
    assert!(!subset(&json!({"payload": {"a": null}}), Some(&got)));
    assert!(!subset(&json!({"seq": "2"}), Some(&got)));
    assert!(!subset(&json!({"ack": "1"}), Some(&got)));
}
