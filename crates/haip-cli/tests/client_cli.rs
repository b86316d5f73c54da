//! `haip chat`, `send`, `monitor` and `health` as real processes against a real
//! `haip serve`.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn haip(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args(args)
        .env_remove("HAIP_URL")
        .env_remove("HAIP_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haip runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().expect("haip finishes")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn chat_on_a_pipe_prints_each_streamed_echo_and_exits_zero() {
    let served = common::serve(&["--echo-word-delay", "1"]);
    let url = served.url();
    let out = haip(
        &["chat", "--url", &url, "--token", &served.token],
        Some("hello world\nsecond line here\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello world\nsecond line here\n");
}

#[test]
fn send_works_over_every_transport() {
    let served = common::serve(&["--echo-word-delay", "1"]);
    let url = served.url();
    for transport in ["ws", "sse", "stream"] {
        let message = format!("over {transport} we go");
        let out = haip(
            &[
                "send",
                &message,
                "--url",
                &url,
                "--token",
                &served.token,
                "--transport",
                transport,
            ],
            None,
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{transport}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), format!("{message}\n"), "{transport}");
    }
}

#[test]
fn send_json_prints_the_raw_envelopes_of_the_run() {
    let served = common::serve(&["--echo-word-delay", "1"]);
    let out = haip(
        &[
            "send",
            "a b",
            "--json",
            "--url",
            &served.url(),
            "--token",
            &served.token,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let types: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON per line");
            v["type"].as_str().unwrap_or_default().to_string()
        })
        .filter(|t| t != "FLOW_UPDATE")
        .collect();
    assert_eq!(
        types,
        [
            "RUN_STARTED",
            "MESSAGE_START",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_END",
            "RUN_FINISHED"
        ]
    );
}

#[test]
fn a_refused_token_exits_non_zero_with_the_error_code() {
    let served = common::serve(&[]);
    for transport in ["sse", "stream"] {
        let out = haip(
            &[
                "send",
                "x",
                "--url",
                &served.url(),
                "--token",
                "not-a-token",
                "--transport",
                transport,
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{transport}");
        assert!(
            text(&out.stderr).contains("AUTHENTICATION_FAILED"),
            "{transport}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn monitor_filters_by_type_and_stops_after_count() {
    let served = common::serve(&["--echo-word-delay", "1"]);
    let out = haip(
        &[
            "monitor",
            "--url",
            &served.url(),
            "--token",
            &served.token,
            "--say",
            "one two three",
            "--type",
            "MESSAGE_PART",
            "--count",
            "3",
            "--json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let parts: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            assert_eq!(v["type"], "MESSAGE_PART");
            v["payload"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(parts.concat(), "one two three");
}

#[test]
fn health_reports_and_fails_when_unreachable() {
    let served = common::serve(&[]);
    let out = haip(&["health", "--url", &served.url()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(": ok (up"),
        "{}",
        text(&out.stdout)
    );
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let out = haip(&["health", "--url", &closed], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unreachable"));
}
