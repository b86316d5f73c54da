//! `haip bench`: a load generator against a running server, over real sockets from this
//! process, bounded in sessions and time. Scenarios: `echo` (round trips through the echo
//! agent), `stream` (long agent streams), `connections` (idle sessions held, with the
//! server's memory per session read from /proc).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haip_client::{Connection, Subscription};
use haip_protocol::Payload;
use serde_json::json;

use crate::connect::ConnectArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Sessions send short messages and wait for the whole streamed echo
    Echo,
    /// Sessions each receive one long agent stream
    Stream,
    /// Open idle sessions at a bounded rate and hold them
    Connections,
}

#[derive(clap::Args)]
#[command(about = "Measure a running server (start it with --echo-word-delay 0)")]
pub struct BenchArgs {
    /// What to measure
    #[arg(value_enum)]
    scenario: Scenario,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Concurrent sessions
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Seconds to run `echo` (other scenarios end when their work is done)
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Words per echo message (`echo`) or per agent stream (`stream`)
    #[arg(long)]
    words: Option<usize>,
    /// Sessions opened per second (`connections`)
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// The server's pid, to read its memory from /proc (`connections`)
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
}

pub fn run(args: &BenchArgs) -> ExitCode {
    crate::connect::block_on(async {
        let result = match args.scenario {
            Scenario::Echo => echo(args).await,
            Scenario::Stream => stream(args).await,
            Scenario::Connections => connections(args).await,
        };
        match result {
            Ok(report) => {
                report.print(args.json);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Named figures of one run, printed as a table or JSON.
struct Report {
    scenario: &'static str,
    transport: &'static str,
    rows: Vec<(&'static str, f64, &'static str)>,
}

impl Report {
    fn print(&self, json: bool) {
        if json {
            let mut figures = serde_json::Map::new();
            for (name, value, _) in &self.rows {
                figures.insert((*name).to_string(), json!(value));
            }
            let out = json!({"scenario": self.scenario, "transport": self.transport,
                "results": figures});
            println!("{out}");
            return;
        }
        println!("{} over {}", self.scenario, self.transport);
        for (name, value, unit) in &self.rows {
            println!("  {name:<28} {value:>14.1} {unit}");
        }
    }
}

/// A progress line on a terminal's stderr; silent otherwise.
struct Progress {
    on: bool,
    started: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    fn show(&self, done: f64, note: &str) {
        if !self.on {
            return;
        }
        let width = 30;
        let filled = ((done.clamp(0.0, 1.0)) * width as f64) as usize;
        eprint!(
            "\r[{}{}] {:>3.0}% {:>5.1}s {note}   ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            done * 100.0,
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn open_all(args: &BenchArgs, n: usize) -> anyhow::Result<Vec<(Connection, Subscription)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let conn = args
            .connect
            .connect(&format!("bench-{i}"))
            .await
            .map_err(|e| anyhow::anyhow!("session {i}: {e}"))?;
        let sub = conn.subscribe(">")?;
        out.push((conn, sub));
    }
    Ok(out)
}

/// Waits for the end of the run answering the last message; counts what arrived and
/// notes when the first agent part came.
async fn until_finished(
    sub: &mut Subscription,
    first_part: &mut Option<Instant>,
    bytes: &mut u64,
) -> anyhow::Result<u64> {
    let mut messages = 0;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no reply within 30 s"))?
            .ok_or_else(|| anyhow::anyhow!("connection ended"))?;
        messages += 1;
        *bytes += item.raw.len() as u64;
        match &item.message.payload {
            Payload::MessagePart(_) if first_part.is_none() => *first_part = Some(Instant::now()),
            Payload::RunFinished(_) => return Ok(messages),
            Payload::Error(e) => anyhow::bail!("server error {}: {}", e.code, e.message),
            _ => {}
        }
    }
}

async fn echo(args: &BenchArgs) -> anyhow::Result<Report> {
    let words = args.words.unwrap_or(8);
    let text: Vec<String> = (0..words).map(|i| format!("word{i}")).collect();
    let text = Arc::new(text.join(" "));
    let sessions = open_all(args, args.sessions).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (conn, mut sub) in sessions {
        let text = text.clone();
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                conn.send_text(&text).await?;
                let (mut first, mut bytes) = (None, 0);
                let n = until_finished(&mut sub, &mut first, &mut bytes).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                delivered.fetch_add(n, Ordering::Relaxed);
            }
            conn.close();
            anyhow::Ok(latencies)
        }));
    }
    let progress = Progress::new();
    while tasks.iter().any(|t| !t.is_finished()) {
        let done = started.elapsed().as_secs_f64() / args.duration.max(1) as f64;
        let msgs = delivered.load(Ordering::Relaxed);
        progress.show(done, &format!("{msgs} messages"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.done();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let total = delivered.load(Ordering::Relaxed) as f64;
    Ok(Report {
        scenario: "echo",
        transport: args.connect.transport.as_str(),
        rows: vec![
            ("sessions", args.sessions as f64, ""),
            ("round trips", latencies.len() as f64, ""),
            ("messages delivered/s", total / elapsed, "msg/s"),
            ("latency p50", percentile(&latencies, 0.50), "ms"),
            ("latency p90", percentile(&latencies, 0.90), "ms"),
            ("latency p99", percentile(&latencies, 0.99), "ms"),
            (
                "latency max",
                latencies.last().copied().unwrap_or(0.0),
                "ms",
            ),
        ],
    })
}

async fn stream(args: &BenchArgs) -> anyhow::Result<Report> {
    let words = args.words.unwrap_or(1000);
    // Words of 16 to 64 bytes, like model tokens with their markup.
    let text: Vec<String> = (0..words)
        .map(|i| format!("{i:0>width$}", width = 15 + (i * 7919) % 49))
        .collect();
    let text = Arc::new(text.join(" "));
    let sessions = open_all(args, args.sessions).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (conn, mut sub) in sessions {
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            conn.send_text(&text).await?;
            let (mut first, mut bytes) = (None, 0);
            let n = until_finished(&mut sub, &mut first, &mut bytes).await?;
            let ttfp = first.map_or(0.0, |f| (f - sent).as_secs_f64() * 1000.0);
            conn.close();
            anyhow::Ok((n, bytes, ttfp))
        }));
    }
    let progress = Progress::new();
    while tasks.iter().any(|t| !t.is_finished()) {
        let finished = tasks.iter().filter(|t| t.is_finished()).count();
        progress.show(finished as f64 / tasks.len() as f64, "streams done");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.done();
    let (mut messages, mut bytes, mut ttfp) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let (n, b, first) = t.await??;
        messages += n;
        bytes += b;
        ttfp.push(first);
    }
    let elapsed = started.elapsed().as_secs_f64();
    ttfp.sort_by(f64::total_cmp);
    Ok(Report {
        scenario: "stream",
        transport: args.connect.transport.as_str(),
        rows: vec![
            ("sessions", args.sessions as f64, ""),
            ("parts per stream", words as f64, ""),
            ("messages delivered/s", messages as f64 / elapsed, "msg/s"),
            ("bytes delivered/s", bytes as f64 / elapsed, "B/s"),
            ("time to first part p50", percentile(&ttfp, 0.5), "ms"),
            (
                "time to first part max",
                ttfp.last().copied().unwrap_or(0.0),
                "ms",
            ),
        ],
    })
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

async fn connections(args: &BenchArgs) -> anyhow::Result<Report> {
    let before = args.server_pid.and_then(rss_kib);
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.sessions);
    let mut handshakes = Vec::with_capacity(args.sessions);
    let progress = Progress::new();
    let mut config = args.connect.config();
    config.ping_interval = None; // idle means idle
    for i in 0..args.sessions {
        let t0 = Instant::now();
        let conn = Connection::start(format!("idle-{i}"), config.clone());
        conn.connected(Duration::from_secs(args.connect.timeout))
            .await
            .map_err(|e| anyhow::anyhow!("session {i}: {e}"))?;
        handshakes.push(t0.elapsed().as_secs_f64() * 1000.0);
        held.push(conn);
        if i % 100 == 0 {
            progress.show(i as f64 / args.sessions as f64, "sessions open");
        }
        let next = started + gap * (i as u32 + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    progress.done();
    let elapsed = started.elapsed().as_secs_f64();
    // Let the server settle before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = args.server_pid.and_then(rss_kib);
    handshakes.sort_by(f64::total_cmp);
    let mut rows = vec![
        ("sessions held", held.len() as f64, ""),
        ("connect rate", held.len() as f64 / elapsed, "sessions/s"),
        ("handshake p50", percentile(&handshakes, 0.5), "ms"),
        ("handshake p99", percentile(&handshakes, 0.99), "ms"),
    ];
    if let (Some(b), Some(a)) = (before, after) {
        let per = (a.saturating_sub(b) as f64 * 1024.0) / held.len().max(1) as f64;
        rows.push(("server RSS growth", a.saturating_sub(b) as f64, "KiB"));
        rows.push(("server memory per session", per, "bytes"));
    }
    for c in &held {
        c.close();
    }
    Ok(Report {
        scenario: "connections",
        transport: args.connect.transport.as_str(),
        rows,
    })
}
