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
fn permanent_failures_fail_at_once_in_plain_words_with_their_own_exit_code() {
    let served = common::serve(&[]);
    let url = served.url();
    // (what, args, exit status, words the message must contain)
    let cases: Vec<(&str, Vec<String>, i32, &str)> = vec![
        (
            "bad token over ws",
            vec![
                "--url".into(),
                url.clone(),
                "--token".into(),
                "not-a-token".into(),
            ],
            3,
            "token",
        ),
        (
            "bad token over sse",
            vec![
                "--url".into(),
                url.clone(),
                "--token".into(),
                "not-a-token".into(),
                "--transport".into(),
                "sse".into(),
            ],
            3,
            "AUTHENTICATION_FAILED",
        ),
        (
            "bad token over stream",
            vec![
                "--url".into(),
                url.clone(),
                "--token".into(),
                "not-a-token".into(),
                "--transport".into(),
                "stream".into(),
            ],
            3,
            "AUTHENTICATION_FAILED",
        ),
        ("no token", vec!["--url".into(), url.clone()], 3, "token"),
        (
            "a path with nothing there",
            vec![
                "--url".into(),
                format!("{url}/nothing/here"),
                "--token".into(),
                served.token.clone(),
            ],
            4,
            "404",
        ),
        (
            "an unknown scheme",
            vec![
                "--url".into(),
                format!("ftp://127.0.0.1:{}", served.port),
                "--token".into(),
                served.token.clone(),
            ],
            4,
            "scheme",
        ),
    ];
    for (what, args, status, words) in cases {
        let started = std::time::Instant::now();
        let mut all = vec![
            "send".to_string(),
            "x".to_string(),
            "--timeout".into(),
            "30".into(),
        ];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = haip(&all, None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{what}: {err}");
        assert!(err.contains(words), "{what}: {err}");
        assert!(!err.contains("Some("), "{what}: a Rust Debug string: {err}");
        // Not retried until the 30 s timeout: refused at once.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "{what}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_bare_host_and_port_is_a_url_and_an_unreachable_server_has_its_own_exit_code() {
    let served = common::serve(&["--echo-word-delay", "1"]);
    let bare = format!("127.0.0.1:{}", served.port);
    let out = haip(
        &["send", "hi there", "--url", &bare, "--token", &served.token],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi there\n");
    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    let out = haip(
        &[
            "send",
            "x",
            "--url",
            &nobody,
            "--token",
            &served.token,
            "--timeout",
            "2",
        ],
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("is the server running"), "{err}");
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

#[test]
fn a_token_from_before_a_restart_is_refused_saying_why_and_how_to_keep_one() {
    let before = common::serve(&[]);
    let after = common::serve(&[]); // another made-up secret, as after a restart
    let out = haip(
        &["send", "x", "--url", &after.url(), "--token", &before.token],
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("made up a new secret"), "{err}");
    assert!(err.contains("JWT_SECRET"), "{err}");
}

/// `haip serve` on `port` with a fixed secret (so tokens outlive a restart); returns it
/// once it listens.
fn serve_on(port: u16) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--echo-word-delay", "1", "--enable-logging", "false"])
        .env("JWT_SECRET", "chat-restart-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haip serve starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "haip serve did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

#[test]
fn chat_across_a_server_restart_keeps_replies_in_step() {
    use std::io::{BufRead, BufReader};
    let port = common::free_port();
    let mut server = serve_on(port);
    let token = text(
        &haip(
            &["token", "--secret", "chat-restart-secret", "--sub", "ada"],
            None,
        )
        .stdout,
    )
    .trim()
    .to_string();
    let mut chat = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args([
            "chat",
            "--url",
            &format!("127.0.0.1:{port}"),
            "--token",
            &token,
        ])
        .env_remove("HAIP_URL")
        .env_remove("HAIP_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haip chat runs");
    let mut stdin = chat.stdin.take().expect("stdin");
    let mut replies = BufReader::new(chat.stdout.take().expect("stdout")).lines();
    writeln!(stdin, "before the restart").expect("write");
    assert_eq!(
        replies.next().expect("a reply").expect("utf-8"),
        "before the restart"
    );
    // The server goes away and comes back with none of its sessions.
    let _ = server.kill();
    let _ = server.wait();
    let mut server = serve_on(port);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for line in ["after the restart", "and once more"] {
        writeln!(stdin, "{line}").expect("write");
    }
    drop(stdin);
    let rest: Vec<String> = replies.map_while(Result::ok).collect();
    let out = chat.wait_with_output().expect("chat ends");
    let _ = server.kill();
    let _ = server.wait();
    let err = text(&out.stderr);
    assert_eq!(rest, ["after the restart", "and once more"], "{err}");
    assert!(err.contains("could not resume the session"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn monitor_shows_the_first_messages_of_the_session_and_count_zero_prints_none() {
    let served = common::serve(&[]);
    let out = haip(
        &[
            "monitor",
            "--url",
            &served.url(),
            "--token",
            &served.token,
            "--count",
            "2",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].trim_start().starts_with("1 SYSTEM  HAI"),
        "{lines:?}"
    );
    assert!(
        lines[1].trim_start().starts_with("2 SYSTEM  TOOL_LIST"),
        "{lines:?}"
    );
    let out = haip(
        &[
            "monitor",
            "--url",
            &served.url(),
            "--token",
            &served.token,
            "--count",
            "0",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn tool_calls_a_server_tool_from_the_shell() {
    let served = common::serve(&[]);
    let url = served.url();
    let out = haip(
        &[
            "tool",
            "add",
            "--params",
            r#"{"a": 2, "b": 40}"#,
            "--url",
            &url,
            "--token",
            &served.token,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"result\":42}\n");
    let out = haip(
        &["tool", "nope", "--url", &url, "--token", &served.token],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("TOOL_NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );
    let out = haip(
        &[
            "tool",
            "add",
            "--params",
            "[1]",
            "--url",
            &url,
            "--token",
            &served.token,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("JSON object"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn thread_lets_one_session_watch_what_another_says_in_it() {
    let served = common::serve(&["--echo-word-delay", "1"]);
    let url = served.url();
    let watcher = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args([
            "monitor",
            "--url",
            &url,
            "--token",
            &served.token,
            "--thread",
            "t-42",
        ])
        .args(["--type", "MESSAGE_PART", "--count", "2", "--json"])
        .env_remove("HAIP_URL")
        .env_remove("HAIP_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("monitor runs");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = haip(
        &[
            "send",
            "in thread",
            "--url",
            &url,
            "--token",
            &served.token,
            "--thread",
            "t-42",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let watched = watcher.wait_with_output().expect("monitor ends");
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched.stderr));
    let parts: String = text(&watched.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            assert_eq!(v["thread_id"], "t-42", "{v}");
            v["payload"]["text"].as_str().unwrap_or("").to_string()
        })
        .collect();
    assert_eq!(parts, "in thread");
}

#[test]
fn an_admin_watches_every_session_live_and_a_user_may_not() {
    let port = common::free_port();
    let mut server = serve_on(port);
    let url = format!("http://127.0.0.1:{port}");
    let mint = |sub: &str, role: Option<&str>| {
        let mut args = vec!["token", "--secret", "chat-restart-secret", "--sub", sub];
        if let Some(r) = role {
            args.extend(["--role", r]);
        }
        text(&haip(&args, None).stdout).trim().to_string()
    };
    let admin = mint("root", Some("admin"));
    let (ada, bob) = (mint("ada", None), mint("bob", None));
    // A user token is refused.
    let out = haip(
        &[
            "monitor", "--all", "--url", &url, "--token", &ada, "--count", "1",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("role is admin"),
        "{}",
        text(&out.stderr)
    );
    // The admin sees what ada says and what she gets back, and nothing of bob's.
    let watcher = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args([
            "monitor",
            "--all",
            "--subject",
            "ada",
            "--type",
            "MESSAGE_START",
        ])
        .args(["--url", &url, "--token", &admin, "--count", "2", "--json"])
        .env_remove("HAIP_URL")
        .env_remove("HAIP_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("monitor --all");
    std::thread::sleep(std::time::Duration::from_millis(500));
    for (who, token) in [("bob", &bob), ("ada", &ada)] {
        let out = haip(
            &[
                "send",
                &format!("{who} here"),
                "--url",
                &url,
                "--token",
                token,
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let watched = watcher.wait_with_output().expect("monitor ends");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched.stderr));
    let lines: Vec<serde_json::Value> = text(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(l["subject"], "ada", "{l}");
        assert_eq!(l["envelope"]["type"], "MESSAGE_START", "{l}");
    }
    assert_eq!(lines[0]["direction"], "in", "ada's own message first");
    assert_eq!(lines[1]["direction"], "out", "then the agent's answer");
}
