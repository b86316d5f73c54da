//! `haip bench`: a load generator against a running server, over real sockets from this
//! process, bounded in sessions and time. Scenarios: `echo` (round trips through the echo
//! agent), `stream` (long agent streams), `fanout` (one agent stream to many followers of
//! a thread), `connections` (idle sessions held, with the server's memory per session
//! read from /proc). Each is also run against a bare WebSocket echo on the same server
//! (the ceiling, see `ceiling.rs`) and reported as a ratio of it.

mod ceiling;
mod connections;
mod cpu;
mod fanout;
mod load;
mod ping;
mod report;
mod retention;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haip_client::{Connection, ConnectionConfig, Subscription};
use haip_protocol::Payload;

use crate::connect::ConnectArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Sessions send short messages and wait for the whole streamed echo
    Echo,
    /// Sessions each receive one long agent stream
    Stream,
    /// One publisher's agent stream delivered to every session following its thread
    Fanout,
    /// Open idle sessions at a bounded rate and hold them
    Connections,
    /// Sessions send PINGs and wait for each PONG, back to back (no agent)
    Ping,
    /// Sessions receive long streams at the agent's pace; the server's memory kept per
    /// message is read from /proc (start the server with its default word delay)
    Retention,
}

#[derive(clap::Args)]
#[command(
    about = "Measure a running server (start it with --echo-word-delay 0 --autobahn-echo)",
    long_about = "Measure a running server over real sockets from this process.\n\n\
        Start the server with `haip serve --echo-word-delay 0 --autobahn-echo`: the first \
        lets the echo agent answer at full speed, the second serves the bare WebSocket echo \
        each scenario is also run against, so that every figure comes with its ratio to \
        what the transport alone does on the same machine in the same run."
)]
pub struct BenchArgs {
    /// What to measure
    #[arg(value_enum)]
    scenario: Scenario,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Concurrent sessions (`fanout`: followers of the publisher's thread)
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Seconds to run `echo` and `fanout` (`stream` and `connections` end when done)
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Words per echo message (`echo`, default 8) or per agent stream (`stream`, `fanout`,
    /// default 1000)
    #[arg(long)]
    words: Option<usize>,
    /// Milliseconds each session waits between round trips (`echo`); 0 sends again as
    /// soon as the answer is complete
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Sessions opened per second (`connections`)
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// The server's pid, to read its CPU time (every scenario) and memory (`connections`)
    /// from /proc [default: the process on this machine listening on the URL's port]
    #[arg(long)]
    server_pid: Option<u32>,
    /// Other nodes of the same cluster: sessions are spread over the URL and these, in
    /// turn (`fanout`: followers on all, the publisher on the first)
    #[arg(long = "also-url")]
    also_urls: Vec<String>,
    /// Other processes whose CPU time counts as the server's (the other nodes of a
    /// cluster, its Redis)
    #[arg(long = "also-pid")]
    also_pids: Vec<u32>,
    /// The bare WebSocket echo to compare with [default: /autobahn on the server's host]
    #[arg(long)]
    ceiling_url: Option<String>,
    /// Do not measure the ceiling
    #[arg(long)]
    no_ceiling: bool,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
    /// `retention`: after the streams, close the sessions and watch the server's memory
    /// for this many seconds (give the server a short --session-ttl to see it return)
    #[arg(long, default_value_t = 0)]
    after: u64,
}

impl BenchArgs {
    fn ceiling_url(&self) -> String {
        self.ceiling_url
            .clone()
            .unwrap_or_else(|| ceiling::url_beside(&self.connect.url))
    }

    /// The server process, when its CPU time can be read here.
    fn server_cpu(&self) -> Option<cpu::ServerCpu> {
        cpu::ServerCpu::find(self.server_pid, url_port(&self.connect.full_url()))
            .map(|cpu| cpu.with_also(&self.also_pids))
    }

    /// A reading of the server's CPU time, taken as a load starts.
    fn cpu_mark(&self) -> Option<(cpu::ServerCpu, cpu::Mark)> {
        let server = self.server_cpu()?;
        Some((server, server.mark()?))
    }

    /// The report of a throughput scenario (`rows`, whose messages/s is `rate`), with the
    /// server's CPU time for its `messages` since `load` and its ceilings: the bare echo
    /// and the bare stream of `shape`.
    async fn report_against_bare(
        &self,
        scenario: &'static str,
        mut rows: Vec<report::Row>,
        load: (Option<(cpu::ServerCpu, cpu::Mark)>, u64),
        shape: ceiling::Shape,
        rate: f64,
    ) -> report::Report {
        let (mark, messages) = load;
        rows.extend(cpu_rows(mark, messages));
        let server = self.server_cpu();
        let ceilings = self
            .ceiling(|url| async move { ceiling::compare(&url, &shape, rate, server).await })
            .await;
        report::Report {
            scenario,
            transport: self.connect.transport.as_str(),
            rows,
            ceilings,
        }
    }

    /// Measures the ceiling with `measure`, or says why it was not.
    async fn ceiling<T, F, Fut>(&self, measure: F) -> Result<T, String>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        if self.no_ceiling {
            return Err("--no-ceiling".into());
        }
        if !self.json {
            eprintln!("measuring the ceiling: the same work on the bare WebSocket echo");
        }
        measure(self.ceiling_url()).await.map_err(|e| {
            format!(
                "{e:#}; start the server with --autobahn-echo or give --ceiling-url, \
                 or pass --no-ceiling"
            )
        })
    }
}

pub fn run(args: &BenchArgs) -> ExitCode {
    crate::connect::block_on(async {
        let result = match args.scenario {
            Scenario::Echo => load::echo(args).await,
            Scenario::Stream => load::stream(args).await,
            Scenario::Fanout => fanout::run(args).await,
            Scenario::Connections => connections::run(args).await,
            Scenario::Retention => retention::run(args).await,
            Scenario::Ping => ping::run(args).await,
        };
        match result {
            Ok(report) => {
                report.print(args.json);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    })
}

/// Opens `n` sessions with `config`, each subscribed to everything.
async fn open_all(
    args: &BenchArgs,
    config: &ConnectionConfig,
    n: usize,
    name: &str,
) -> anyhow::Result<Vec<(Connection, Subscription)>> {
    let mut out = Vec::with_capacity(n);
    // Spread over the nodes given: the first URL is the config's own.
    let path = match args.connect.transport {
        haip_client::Transport::WebSocket => "/haip/websocket",
        haip_client::Transport::Sse => "/haip/sse",
        haip_client::Transport::HttpStream => "/haip/stream",
    };
    let urls: Vec<String> = std::iter::once(config.url.clone())
        .chain(
            args.also_urls
                .iter()
                .map(|u| crate::connect::with_defaults(u, path)),
        )
        .collect();
    for i in 0..n {
        let mut config = config.clone();
        config.url = urls[i % urls.len()].clone();
        let conn = Connection::start(format!("{name}-{i}"), config);
        conn.connected(Duration::from_secs(args.connect.timeout))
            .await
            .map_err(|e| anyhow::anyhow!("session {i}: {e}"))?;
        let sub = conn.subscribe(">")?;
        out.push((conn, sub));
    }
    Ok(out)
}

/// What one session received of a run.
#[derive(Default)]
struct Received {
    messages: u64,
    bytes: u64,
    first_part: Option<Instant>,
    /// A MESSAGE_PART as it came over the wire: the ceiling sends frames like it.
    sample: Option<Bytes>,
}

impl Received {
    /// Adds what another session received.
    fn add(&mut self, other: Received) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.first_part = match (self.first_part, other.first_part) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.sample = self.sample.take().or(other.sample);
    }
}

/// Reads until the end of a run (RUN_FINISHED), counting what arrived.
async fn until_finished(sub: &mut Subscription, got: &mut Received) -> anyhow::Result<()> {
    // One timer for the whole wait, pushed back every so many messages: a timeout per
    // message would cost a timer registration each, at hundreds of thousands a second.
    const QUIET: Duration = Duration::from_secs(30);
    let quiet = tokio::time::sleep(QUIET);
    tokio::pin!(quiet);
    let mut since_reset = 0u32;
    loop {
        let item = tokio::select! {
            item = sub.recv() => item.ok_or_else(|| anyhow::anyhow!("connection ended"))?,
            _ = &mut quiet => anyhow::bail!("no reply within 30 s"),
        };
        since_reset += 1;
        if since_reset == 64 {
            since_reset = 0;
            quiet.as_mut().reset(tokio::time::Instant::now() + QUIET);
        }
        got.messages += 1;
        got.bytes += item.raw.len() as u64;
        match &item.message.payload {
            Payload::MessagePart(_) if got.first_part.is_none() => {
                got.first_part = Some(Instant::now());
                got.sample = Some(item.raw.clone());
            }
            Payload::RunFinished(_) => return Ok(()),
            Payload::Error(e) => anyhow::bail!("server error {}: {}", e.code, e.message),
            _ => {}
        }
    }
}

/// The server's CPU time since `mark` for `messages` delivered: in all, and per message.
fn cpu_rows(mark: Option<(cpu::ServerCpu, cpu::Mark)>, messages: u64) -> Vec<report::Row> {
    // Nothing measured (no server here) or less than the clock's tick: no figure rather
    // than a zero.
    let Some(used) = mark
        .and_then(|(server, from)| server.since(from))
        .filter(|d| !d.is_zero())
    else {
        return Vec::new();
    };
    let per_message = used.as_secs_f64() * 1e6 / messages.max(1) as f64;
    vec![
        ("server CPU", used.as_secs_f64() * 1000.0, "ms"),
        ("server CPU per message", per_message, "us"),
    ]
}

/// The port of a URL (80 or 443 by its scheme when it names none).
fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?']).next()?;
    match host.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port.parse().ok(),
        _ => Some(if matches!(scheme, "https" | "wss") {
            443
        } else {
            80
        }),
    }
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

/// Words of 16 to 64 bytes, like model tokens with their markup.
fn long_text(words: usize) -> String {
    let text: Vec<String> = (0..words)
        .map(|i| format!("{i:0>width$}", width = 15 + (i * 7919) % 49))
        .collect();
    text.join(" ")
}

/// A number unlikely to repeat between runs, for names (threads) that must not collide.
fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
