//! `haip serve` and `haip token` as real processes: configuration precedence, start-up
//! errors naming the key, the printed token, graceful exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn haip() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_haip"));
    // Keep the test independent of the caller's environment.
    for key in [
        "PORT",
        "HOST",
        "JWT_SECRET",
        "MAX_CONNECTIONS",
        "HAIP_CONFIG",
        "LOG_FORMAT",
        "NODE_ID",
    ] {
        c.env_remove(key);
    }
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `haip serve` and returns it with the lines it printed up to the health URL.
fn start(mut cmd: Command) -> (Child, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("haip serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("utf-8 output");
        let done = line.trim_start().starts_with("health:");
        lines.push(line);
        if done {
            break;
        }
    }
    (child, lines)
}

fn listen_port(lines: &[String]) -> u16 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("haip-rs listening on "))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("listen line")
}

fn http_get(port: u16, path: &str, token: Option<&str>) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn stop(mut child: Child) -> Option<i32> {
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[test]
fn serve_with_no_configuration_prints_a_working_token_and_exits_cleanly() {
    let port = free_port();
    let mut cmd = haip();
    cmd.args(["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]);
    let (child, lines) = start(cmd);
    let token = lines
        .iter()
        .find_map(|l| l.strip_prefix("token (sub=demo, valid 24 h): "))
        .expect("a token line")
        .to_string();
    assert!(lines.iter().any(|l| l.contains("/haip/websocket?token=")));
    assert!(lines.iter().any(|l| l.contains("/haip/sse?token=")));
    assert!(lines.iter().any(|l| l.contains("/haip/stream")));
    let health = http_get(port, "/health", None);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\""));
    // The printed token opens an SSE stream; a made-up one is refused.
    let sse = http_get(port, &format!("/haip/sse?token={token}"), None);
    assert!(
        sse.starts_with("HTTP/1.1 200") || sse.is_empty() || sse.contains("text/event-stream"),
        "{sse}"
    );
    let bad = http_get(port, "/haip/sse?token=nope", None);
    assert!(bad.starts_with("HTTP/1.1 401"), "{bad}");
    assert_eq!(stop(child), Some(0), "SIGTERM exits 0 within 5 s");
}

#[test]
fn flag_beats_environment_beats_file() {
    let dir = std::env::temp_dir().join(format!("haip-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("haip.toml");
    let (p_file, p_env, p_flag) = (free_port(), free_port(), free_port());
    std::fs::write(&file, format!("port = {p_file}\nhost = \"127.0.0.1\"\n")).unwrap();

    let mut cmd = haip();
    cmd.args(["serve", "--config", file.to_str().unwrap()]);
    let (child, lines) = start(cmd);
    assert_eq!(listen_port(&lines), p_file);
    stop(child);

    let mut cmd = haip();
    cmd.args(["serve", "--config", file.to_str().unwrap()])
        .env("PORT", p_env.to_string());
    let (child, lines) = start(cmd);
    assert_eq!(listen_port(&lines), p_env);
    stop(child);

    let mut cmd = haip();
    cmd.args([
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--port",
        &p_flag.to_string(),
    ])
    .env("PORT", p_env.to_string())
    .env("NODE_ID", "edge-7");
    let (child, lines) = start(cmd);
    assert_eq!(listen_port(&lines), p_flag);
    let health = http_get(p_flag, "/health", None);
    assert!(
        health.contains(r#""node":"edge-7""#) && health.contains(r#""mode":"memory""#),
        "{health}"
    );
    stop(child);
}

fn start_error(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = haip();
    cmd.args(args);
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
fn invalid_values_stop_start_up_naming_the_key() {
    let (code, err) = start_error(&["serve", "--max-connections", "0"], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("MAX_CONNECTIONS"), "{err}");

    let (code, err) = start_error(&["serve"], &[("HEARTBEAT_TIMEOUT", "soon")]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("heartbeat-timeout") || err.contains("HEARTBEAT_TIMEOUT"),
        "{err}"
    );

    let (code, err) = start_error(&["serve"], &[("LOG_FORMAT", "xml")]);
    assert_ne!(code, Some(0));
    assert!(err.contains("LOG_FORMAT"), "{err}");

    let (code, err) = start_error(&["serve", "--node-id", " "], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("NODE_ID"), "{err}");

    let dir = std::env::temp_dir().join(format!("haip-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "prot = 80\n").unwrap();
    let (code, err) = start_error(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("prot"), "{err}");
    std::fs::write(&file, "port = \"eighty\"\n").unwrap();
    let (code, err) = start_error(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_ne!(code, Some(0));
    assert!(err.contains("port"), "{err}");
}

#[test]
fn serve_help_lists_every_setting() {
    let out = haip().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for key in [
        "PORT",
        "HOST",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY_FILE",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "MAX_CONNECTIONS",
        "HEARTBEAT_INTERVAL",
        "HEARTBEAT_TIMEOUT",
        "SESSION_TTL",
        "ENABLE_WEBSOCKET",
        "ENABLE_SSE",
        "ENABLE_HTTP_STREAM",
        "WEBSOCKET_PATH",
        "SSE_PATH",
        "HTTP_STREAM_PATH",
        "WEBSOCKET_MAX_PAYLOAD",
        "WEBSOCKET_PER_MESSAGE_DEFLATE",
        "HTTP_STREAM_MAX_PAYLOAD",
        "HTTP_STREAM_TIMEOUT",
        "SSE_RETRY_TIMEOUT",
        "SSE_MAX_CONNECTIONS",
        "FLOW_CONTROL_ENABLED",
        "FLOW_CONTROL_INITIAL_CREDIT_MESSAGES",
        "FLOW_CONTROL_INITIAL_CREDIT_BYTES",
        "MAX_CONCURRENT_RUNS",
        "REPLAY_WINDOW_SIZE",
        "REPLAY_WINDOW_TIME",
        "ENABLE_CORS",
        "CORS_ORIGINS",
        "ENABLE_COMPRESSION",
        "ENABLE_LOGGING",
        "LOG_FORMAT",
        "NODE_ID",
    ] {
        assert!(help.contains(&format!("env: {key}")), "--help lacks {key}");
    }
}

#[test]
fn token_mints_a_token_the_server_accepts() {
    let port = free_port();
    let out = haip()
        .args([
            "token", "--secret", "s3cret", "--sub", "alice", "--ttl", "10m",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3);
    let mut cmd = haip();
    cmd.args(["serve", "--port", &port.to_string(), "--host", "127.0.0.1"])
        .env("JWT_SECRET", "s3cret");
    let (child, lines) = start(cmd);
    // With a secret of one's own, no ready token is printed, and never the secret.
    let banner = lines.join("\n");
    assert!(banner.contains("tokens: none printed"), "{banner}");
    assert!(!banner.contains("eyJ"), "{banner}");
    assert!(!banner.contains("s3cret"), "{banner}");
    assert!(banner.contains("?token=TOKEN"), "{banner}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /haip/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    // Authenticated, but alice has no live session yet.
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("SESSION_NOT_FOUND"));
    stop(child);
    let bad = haip()
        .args(["token", "--secret", "x", "--ttl", "5w"])
        .output()
        .unwrap();
    assert_ne!(bad.status.code(), Some(0));
}

#[test]
fn logs_name_connections_in_plain_text_and_never_show_a_token() {
    let port = free_port();
    let mut child = haip()
        .args(["serve", "--port", &port.to_string(), "--host", "127.0.0.1"])
        .env("HAIP_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haip serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().expect("stdout");
    let mut token = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("utf-8");
        if let Some(t) = line.strip_prefix("token (sub=demo, valid 24 h): ") {
            token = t.to_string();
        }
        if line.trim_start().starts_with("health:") {
            break;
        }
    }
    // An SSE stream opened with the token in the URL, read a little, then dropped.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET /haip/sse?token={token} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    let mut first = [0u8; 2048];
    let n = s.read(&mut first).expect("answer");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    stop(child);
    let log = log.join().expect("log");
    assert!(log.contains("connection opened: new session"), "{log}");
    assert!(
        log.contains("transport=\"sse\"") || log.contains("transport=sse"),
        "{log}"
    );
    assert!(!log.contains(&token), "the token reached the log: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
}

#[test]
fn the_printed_curl_line_for_http_streaming_is_interactive() {
    let port = free_port();
    let mut cmd = haip();
    cmd.args(["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]);
    let (child, lines) = start(cmd);
    let curl = lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("HTTP streaming: "))
        .expect("a curl line")
        .to_string();
    assert!(curl.starts_with("curl "), "{curl}");
    let mut shell = Command::new("sh")
        .args(["-c", &curl])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl runs");
    let mut stdin = shell.stdin.take().expect("stdin");
    let stdout = shell.stdout.take().expect("stdout");
    let (tx, replies) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        replies
            .recv_timeout(Duration::from_secs(10))
            .expect("curl printed nothing within 10 s")
    };
    // Nothing typed yet, and the server has spoken.
    let hai = next();
    assert!(hai.contains("\"type\":\"HAI\""), "{hai}");
    // A line typed is a message, answered while input stays open.
    writeln!(
        stdin,
        r#"{{"id":"p1","session":"-","seq":"1","ts":"0","channel":"SYSTEM","type":"PING","payload":{{"nonce":"typed"}}}}"#
    )
    .expect("type");
    let pong = loop {
        let line = next();
        if line.contains("\"PONG\"") {
            break line;
        }
    };
    assert!(pong.contains("typed"), "{pong}");
    drop(stdin);
    let _ = shell.kill();
    let _ = shell.wait();
    stop(child);
}
