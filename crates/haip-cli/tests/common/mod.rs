//! Starting `haip serve` as a real process for the process tests.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A running `haip serve`, killed when dropped; its stderr (the log) is collected.
pub struct Served {
    pub child: Child,
    pub port: u16,
    pub token: String,
    /// The random JWT secret it printed, for minting other tokens with `haip token`.
    pub secret: Option<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `haip serve` on a free loopback port with `extra` arguments and waits until it
/// printed its token and URLs.
pub fn serve(extra: &[&str]) -> Served {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(extra)
        .env_remove("JWT_SECRET")
        .env("HAIP_LOG", "haip_server=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haip serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut token = None;
    let mut secret = None;
    for line in lines.by_ref() {
        let line = line.expect("utf-8");
        if let Some(s) = line.strip_prefix("JWT secret (random, set JWT_SECRET to keep one): ") {
            secret = Some(s.to_string());
        }
        if let Some(t) = line.strip_prefix("token (sub=demo, valid 24 h): ") {
            token = Some(t.to_string());
        }
        if line.trim_start().starts_with("health:") {
            break;
        }
    }
    // Keep reading: what the server prints later must not meet a closed pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    // With a secret of the caller's, the server prints no token: one is minted with it.
    let given_secret = extra
        .iter()
        .position(|a| *a == "--jwt-secret")
        .and_then(|i| extra.get(i + 1))
        .map(|s| s.to_string());
    let token = match (token, &given_secret) {
        (Some(token), _) => token,
        (None, Some(secret)) => mint(secret, "demo"),
        (None, None) => panic!("haip serve printed no token"),
    };
    Served {
        child,
        port,
        token,
        secret: secret.or(given_secret),
        log,
    }
}

/// A token of `subject` for a server started with `secret` (`haip token`).
pub fn mint(secret: &str, subject: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_haip"))
        .args(["token", "--secret", secret, "--sub", subject])
        .env_remove("JWT_SECRET")
        .output()
        .expect("haip token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A node of a cluster: `haip serve` sharing the Redis at `redis_url` and the JWT `secret`,
/// named `name`, with `extra` arguments; returns once its /health says it reaches Redis.
pub fn serve_node(redis_url: &str, name: &str, secret: &str, extra: &[&str]) -> Served {
    let mut args = vec![
        "--redis-url",
        redis_url,
        "--node-id",
        name,
        "--jwt-secret",
        secret,
    ];
    args.extend_from_slice(extra);
    let served = serve(&args);
    wait_healthy(served.port, std::time::Duration::from_secs(10));
    served
}

/// Waits until `haip health` says the node on `port` is healthy.
pub fn wait_healthy(port: u16, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_haip"))
            .args(["health", "--url", &format!("http://127.0.0.1:{port}")])
            .output()
            .expect("haip health");
        if out.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node on {port} never became healthy"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
