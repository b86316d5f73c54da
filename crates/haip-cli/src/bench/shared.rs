//! What the scenarios share: opening sessions and waiting for their messages, the
//! server's CPU and memory from /proc, and test text.

use std::time::{Duration, Instant};

use bytes::Bytes;
use haip_client::{Connection, ConnectionConfig, Subscription};
use haip_protocol::Payload;

use super::args::BenchArgs;
use super::cpu::{self, cpu_rows, url_port};
use super::{ceiling, report};

/// Opens `n` sessions with `config`, each subscribed to everything.
pub(super) async fn open_all(
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
pub(super) struct Received {
    pub(super) messages: u64,
    pub(super) bytes: u64,
    pub(super) first_part: Option<Instant>,
    /// A MESSAGE_PART as it came over the wire: the ceiling sends frames like it.
    pub(super) sample: Option<Bytes>,
}

impl Received {
    /// Adds what another session received.
    pub(super) fn add(&mut self, other: Received) {
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
pub(super) async fn until_finished(
    sub: &mut Subscription,
    got: &mut Received,
) -> anyhow::Result<()> {
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

/// Words of 16 to 64 bytes, like model tokens with their markup.
pub(super) fn long_text(words: usize) -> String {
    let text: Vec<String> = (0..words)
        .map(|i| format!("{i:0>width$}", width = 15 + (i * 7919) % 49))
        .collect();
    text.join(" ")
}

/// A number unlikely to repeat between runs, for names (threads) that must not collide.
pub(super) fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl BenchArgs {
    pub(super) fn ceiling_url(&self) -> String {
        self.ceiling_url
            .clone()
            .unwrap_or_else(|| ceiling::url_beside(&self.connect.url))
    }

    /// The server process, when its CPU time can be read here.
    pub(super) fn server_cpu(&self) -> Option<cpu::ServerCpu> {
        cpu::ServerCpu::find(self.server_pid, url_port(&self.connect.full_url()))
            .map(|cpu| cpu.with_also(&self.also_pids))
    }

    /// A reading of the server's CPU time, taken as a load starts.
    pub(super) fn cpu_mark(&self) -> Option<(cpu::ServerCpu, cpu::Mark)> {
        let server = self.server_cpu()?;
        Some((server, server.mark()?))
    }

    /// The report of a throughput scenario (`rows`, whose messages/s is `rate`), with the
    /// server's CPU time for its `messages` since `load` and its ceilings: the bare echo
    /// and the bare stream of `shape`.
    pub(super) async fn report_against_bare(
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
    pub(super) async fn ceiling<T, F, Fut>(&self, measure: F) -> Result<T, String>
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
