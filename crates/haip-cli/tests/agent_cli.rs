//! `haip serve --agent openai` as a real process: its settings, its banner, and an API key
//! that never shows, in front of a scripted model server that refuses it (quoting it back,
//! as some do), with `haip send` as the client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

const KEY: &str = "sk-cli-test-0c9d7e15-never-shown";

fn haip() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_haip"));
    for key in [
        "PORT",
        "HOST",
        "JWT_SECRET",
        "HAIP_CONFIG",
        "AGENT",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_MODEL",
        "AGENT_SYSTEM_PROMPT",
        "AGENT_HISTORY",
        "AGENT_TIMEOUT",
        "AGENT_MAX_TOOL_ROUNDS",
    ] {
        c.env_remove(key);
    }
    c
}

/// Exit code and stderr of a `haip serve` that must not start.
fn start_error(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = haip();
    cmd.arg("serve")
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("haip runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn agent_settings_are_checked_at_start_up_naming_the_key() {
    let (code, err) = start_error(&["--agent", "openai"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("OPENAI_MODEL is required"), "{err}");

    let (code, err) = start_error(&[], &[("AGENT", "llama")]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("AGENT") && err.contains("echo, openai or workers"),
        "{err}"
    );

    let (code, err) = start_error(
        &["--agent", "openai", "--openai-model", "m"],
        &[("OPENAI_BASE_URL", "ftp://example.com/v1")],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("OPENAI_BASE_URL"), "{err}");

    let (code, err) = start_error(
        &[
            "--agent",
            "openai",
            "--openai-model",
            "m",
            "--agent-history",
            "0",
        ],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("AGENT_HISTORY"), "{err}");

    let dir = std::env::temp_dir().join(format!("haip-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        "agent = \"openai\"\nagent_timeout = 0\nopenai_model = \"m\"\n",
    )
    .expect("write");
    let (code, err) = start_error(&["--config", file.to_str().expect("path")], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("AGENT_TIMEOUT"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_help_documents_the_agent_settings() {
    let out = haip().args(["serve", "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    for key in [
        "AGENT",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_MODEL",
        "AGENT_SYSTEM_PROMPT",
        "AGENT_HISTORY",
        "AGENT_TIMEOUT",
        "AGENT_MAX_TOOL_ROUNDS",
    ] {
        assert!(help.contains(&format!("env: {key}")), "--help lacks {key}");
    }
}

/// A model server that answers every request 401, quoting the key it was given.
fn refusing_model_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("authorization: Bearer "))
                .unwrap_or("none");
            let body = format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {key}","type":"invalid_request_error"}}}}"#
            );
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn the_api_key_never_shows_in_the_banner_the_log_a_reply_or_stats() {
    let model_port = refusing_model_server();
    let port = common::free_port();
    let mut server = haip()
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--agent", "openai", "--openai-model", "gpt-test"])
        .args([
            "--openai-base-url",
            &format!("http://127.0.0.1:{model_port}/v1"),
        ])
        .env("OPENAI_API_KEY", KEY)
        .env("HAIP_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haip serve starts");
    // Read the log as it comes, so that the server never waits on a full pipe.
    let stderr = server.stderr.take().expect("stderr");
    let log_reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut log);
        log
    });
    let mut banner = Vec::new();
    let mut token = String::new();
    let stdout = server.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("utf-8");
        if let Some(t) = line.strip_prefix("token (sub=demo, valid 24 h): ") {
            token = t.to_string();
        }
        let done = line.trim_start().starts_with("health:");
        banner.push(line);
        if done {
            break;
        }
    }
    let banner = banner.join("\n");
    assert!(
        banner.contains(&format!(
            "agent: openai (model gpt-test at http://127.0.0.1:{model_port}/v1, API key set)"
        )),
        "{banner}"
    );

    let sent = haip()
        .args(["send", "--url", &format!("http://127.0.0.1:{port}")])
        .args(["--token", &token, "hello"])
        .output()
        .expect("haip send runs");
    let said = String::from_utf8_lossy(&sent.stderr);
    assert_eq!(sent.status.code(), Some(1), "{said}");
    assert!(said.contains("AGENT_ERROR"), "{said}");
    assert!(said.contains("401"), "{said}");
    assert!(said.contains("Incorrect API key provided"), "{said}");
    assert!(!said.contains(KEY), "the key reached a client: {said}");
    assert!(!String::from_utf8_lossy(&sent.stdout).contains(KEY));

    let mut stats = String::new();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        conn,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    conn.read_to_string(&mut stats).expect("stats");
    assert!(stats.contains("200 OK"), "{stats}");
    assert!(!stats.contains(KEY));

    let _ = server.kill();
    let _ = server.wait();
    let log = log_reader.join().expect("log");
    assert!(log.contains("agent failed"), "the failure is logged: {log}");
    assert!(!log.contains(KEY), "the key reached the log: {log}");
    assert!(!banner.contains(KEY));
}
