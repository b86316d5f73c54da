//! `haip monitor`: prints every message the session receives, filtered.

use std::process::ExitCode;

use serde_json::Value;

use crate::connect::{block_on, exit, fail, open, show_reconnects, ConnectArgs};

#[derive(clap::Args)]
#[command(about = "Print every message received, optionally filtered")]
pub struct MonitorArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Only these types (repeatable): --type MESSAGE_PART --type RUN_FINISHED
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only these channels (repeatable)
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Only topics matching this pattern (`agent.*`, `*.tool_done`, `agent.>`)
    #[arg(long, default_value = ">")]
    topic: String,
    /// Print raw envelopes, one JSON per line
    #[arg(long)]
    json: bool,
    /// Exit after this many messages
    #[arg(long)]
    count: Option<u64>,
    /// Send this text first (to watch its reply)
    #[arg(long)]
    say: Option<String>,
    /// Every session's messages, both ways, live: needs an admin token (`haip token
    /// --role admin`); --subject, --session, --thread, --type and --channel filter them
    #[arg(long)]
    all: bool,
    /// With --all: only this user's sessions
    #[arg(long, requires = "all")]
    subject: Option<String>,
    /// With --all: only this session
    #[arg(long, requires = "all")]
    session: Option<String>,
}

pub fn run(args: &MonitorArgs) -> ExitCode {
    if args.all {
        return block_on(watch_all(args));
    }
    block_on(async {
        let (conn, mut sub) = match open(&args.connect, "monitor", &args.topic).await {
            Ok(opened) => opened,
            Err(code) => return code,
        };
        show_reconnects(&conn);
        if let Some(text) = &args.say {
            if let Err(e) = conn.send_text(text).await {
                return fail(&e, "SEND_FAILED");
            }
        }
        let wanted = |list: &[String], value: &str| {
            list.is_empty() || list.iter().any(|v| v.eq_ignore_ascii_case(value))
        };
        let mut printed = 0;
        loop {
            if args.count.is_some_and(|n| printed >= n) {
                break;
            }
            let item = tokio::select! {
                item = sub.recv() => item,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(item) = item else { break };
            let m = &item.message;
            if !wanted(&args.types, m.event_type().as_str()) || !wanted(&args.channels, &m.channel)
            {
                continue;
            }
            if args.json {
                println!("{}", String::from_utf8_lossy(&item.raw));
            } else {
                let payload = serde_json::to_string(&m.payload).unwrap_or_default();
                println!(
                    "{:>6} {:<7} {:<16} {}",
                    m.seq,
                    m.channel,
                    m.event_type().as_str(),
                    payload
                );
            }
            printed += 1;
        }
        conn.close();
        ExitCode::SUCCESS
    })
}

/// `--all`: the admin monitor of the server (`GET /haip/admin/monitor`), as NDJSON.
async fn watch_all(args: &MonitorArgs) -> ExitCode {
    use futures_util::StreamExt;
    let tls = match haip_client::tls::client_config(args.connect.ca_cert.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::TLS);
        }
    };
    let http = match haip_client::tls::http_client_builder_with(&tls).build() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let url = admin_url(&args.connect.full_url());
    let mut query: Vec<(&str, String)> = Vec::new();
    for (key, value) in [
        ("subject", &args.subject),
        ("session", &args.session),
        ("thread", &args.connect.thread),
    ] {
        if let Some(v) = value {
            query.push((key, v.clone()));
        }
    }
    if !args.types.is_empty() {
        query.push(("type", args.types.join(",")));
    }
    let mut request = http.get(&url).query(&query);
    if let Some(token) = &args.connect.token {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error CONNECT_FAILED: cannot reach {url}: {}\n  (is the server running, and is --url right?)", haip_client::error::with_causes(&e));
            return ExitCode::from(exit::UNREACHABLE);
        }
    };
    let status = response.status().as_u16();
    if status != 200 {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or("refused");
        eprintln!("error HTTP {status}: {message}");
        return ExitCode::from(if status == 401 || status == 403 {
            exit::AUTH
        } else {
            exit::FAILED
        });
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut printed = 0u64;
    loop {
        if args.count.is_some_and(|n| printed >= n) {
            break;
        }
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(Ok(chunk)) = chunk else { break };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(missed) = v.get("missed") {
                eprintln!("[{missed} messages missed: this terminal was too slow]");
                continue;
            }
            let env = &v["envelope"];
            let channel = env["channel"].as_str().unwrap_or("");
            if !args.channels.is_empty()
                && !args
                    .channels
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(channel))
            {
                continue;
            }
            if args.json {
                println!("{}", String::from_utf8_lossy(&line).trim_end());
            } else {
                let session = v["session"].as_str().unwrap_or("");
                println!(
                    "{:<3} {:.8} {:<12} {:>6} {:<7} {:<16} {}",
                    v["direction"].as_str().unwrap_or(""),
                    session,
                    v["subject"].as_str().unwrap_or(""),
                    env["seq"].as_str().unwrap_or(""),
                    channel,
                    env["type"].as_str().unwrap_or(""),
                    env["payload"]
                );
            }
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                break;
            }
        }
    }
    ExitCode::SUCCESS
}

/// The admin monitor's URL on the server of `url` (any transport's URL, or a bare origin).
fn admin_url(url: &str) -> String {
    let url = url
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let origin = match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => &url,
    };
    format!("{origin}/haip/admin/monitor")
}
