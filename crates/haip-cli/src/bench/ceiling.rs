//! The ceiling every HAIP figure is compared with: the same work done by a bare WebSocket
//! echo on the server's own stack and runtime (`/autobahn?repeat=N`, served by
//! `haip serve --autobahn-echo`), with no HAIP on either side. Each round sends one frame
//! (a real HAIP message of the same run, so sizes and compression match) and reads back
//! the N copies the server sends, as a HAIP round trip sends one message and reads the
//! agent's streamed answer.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use haip_client::link::open_plain_websocket;
use tokio::time::timeout;

use super::report::{percentile, Ceiling};

/// What the ceiling run does, copied from the HAIP run it is compared with.
#[derive(Clone)]
pub struct Shape {
    pub sessions: usize,
    /// Frames the server sends back per frame sent.
    pub frames_per_round: usize,
    /// The frame each round sends.
    pub frame: Bytes,
    /// Rounds per session; `None`: rounds until `duration` has passed.
    pub rounds: Option<usize>,
    pub duration: Duration,
    /// Pause between a session's rounds.
    pub interval: Duration,
}

impl Shape {
    /// One round per session: one frame out, and back each session's share of the
    /// `delivered` messages of a HAIP run (a `stream` or a `fanout`).
    pub fn one_stream(sessions: usize, delivered: u64, frame: Bytes) -> Shape {
        Shape {
            sessions,
            frames_per_round: (delivered as f64 / sessions.max(1) as f64).round() as usize,
            frame,
            rounds: Some(1),
            duration: Duration::ZERO,
            interval: Duration::ZERO,
        }
    }
}

/// What the ceiling run measured.
pub struct Measured {
    pub delivered: u64,
    pub bytes: u64,
    pub elapsed: f64,
    pub rounds: usize,
    /// Send-to-last-frame times of every round, in ms, sorted.
    pub latencies: Vec<f64>,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.delivered as f64 / self.elapsed.max(1e-9)
    }

    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies, q)
    }
}

/// Runs the two ceilings a HAIP figure of `haip_rate` messages/s is compared with:
/// - the bare echo: every frame sent comes back once, as many sessions and frames of the
///   same size as the HAIP run, each round waiting for its answer;
/// - the bare stream, of the HAIP run's shape: one frame out, as many frames back as a HAIP
///   round delivered.
pub async fn compare(
    url: &str,
    shape: &Shape,
    haip_rate: f64,
    server: Option<super::cpu::ServerCpu>,
) -> anyhow::Result<Vec<Ceiling>> {
    let echo = Shape {
        frames_per_round: 1,
        rounds: shape.rounds.map(|r| r * shape.frames_per_round.max(1)),
        frame: shape.frame.clone(),
        ..*shape
    };
    let mut out = Vec::new();
    for (name, shape) in [("bare echo", &echo), ("bare stream", shape)] {
        let mark = server.and_then(|s| s.mark().map(|m| (s, m)));
        let m = run(url, shape).await?;
        let mut rows = vec![
            ("rounds", m.rounds as f64, ""),
            ("messages delivered/s", m.per_second(), "msg/s"),
            ("latency p50", m.p(0.50), "ms"),
            ("latency p99", m.p(0.99), "ms"),
        ];
        rows.extend(super::cpu::cpu_rows(mark, m.delivered));
        out.push(Ceiling {
            what: format!(
                "{name}: {} sessions, each round 1 frame out and {} back, {} bytes each",
                shape.sessions,
                shape.frames_per_round.max(1),
                shape.frame.len()
            ),
            rows,
            ratio: haip_rate / m.per_second().max(1e-9),
            ratio_of: "messages delivered/s",
        });
    }
    Ok(out)
}

/// The bare echo's URL next to a HAIP server URL: same host and port, path `/autobahn`.
pub fn url_beside(haip_url: &str) -> String {
    let (scheme, rest) = haip_url.split_once("://").unwrap_or(("http", haip_url));
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    let scheme = match scheme {
        "https" | "wss" => "wss",
        _ => "ws",
    };
    format!("{scheme}://{host}/autobahn")
}

/// Runs `shape` against the bare echo at `url`.
pub async fn run(url: &str, shape: &Shape) -> anyhow::Result<Measured> {
    let url = format!("{url}?repeat={}", shape.frames_per_round.max(1));
    let mut sockets = Vec::with_capacity(shape.sessions);
    for _ in 0..shape.sessions {
        sockets.push(open_plain_websocket(&url).await?);
    }
    let started = Instant::now();
    let deadline = started + shape.duration;
    let frame = shape.frame.clone();
    let per_round = shape.frames_per_round.max(1);
    let (rounds, interval) = (shape.rounds, shape.interval);
    let mut tasks = Vec::new();
    let count = sockets.len().max(1);
    for mut ws in sockets {
        let frame = frame.clone();
        // Spread over one interval, like the HAIP sessions.
        let offset = interval.mul_f64(tasks.len() as f64 / count as f64);
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut delivered, mut bytes) = (Vec::new(), 0u64, 0u64);
            tokio::time::sleep(offset).await;
            loop {
                let done = match rounds {
                    Some(n) => latencies.len() >= n,
                    None => Instant::now() >= deadline,
                };
                if done {
                    break;
                }
                let sent = Instant::now();
                ws.send(yawc::Frame::text(frame.clone())).await?;
                let mut got = 0;
                while got < per_round {
                    let f = timeout(Duration::from_secs(30), ws.next())
                        .await
                        .map_err(|_| anyhow::anyhow!("bare echo: no answer within 30 s"))?
                        .ok_or_else(|| anyhow::anyhow!("bare echo: connection ended"))?;
                    if f.opcode() == yawc::OpCode::Text {
                        got += 1;
                        bytes += f.payload().len() as u64;
                    }
                }
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                delivered += got as u64;
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
            let _ = ws
                .send(yawc::Frame::close(yawc::close::CloseCode::Normal, b""))
                .await;
            anyhow::Ok((latencies, delivered, bytes))
        }));
    }
    let mut out = Measured {
        delivered: 0,
        bytes: 0,
        elapsed: 0.0,
        rounds: 0,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (lat, n, b) = t.await??;
        out.delivered += n;
        out.bytes += b;
        out.latencies.extend(lat);
    }
    out.elapsed = started.elapsed().as_secs_f64();
    out.rounds = out.latencies.len();
    out.latencies.sort_by(f64::total_cmp);
    Ok(out)
}

/// Bare connections held open, and the server's resident memory growth per connection,
/// in bytes (read from /proc of the server).
pub struct IdleConnections {
    pub sockets: Vec<yawc::TcpWebSocket>,
    pub bytes_per_connection: f64,
}

impl IdleConnections {
    /// Closes every connection with 1000.
    pub async fn close(mut self) {
        for ws in &mut self.sockets {
            let _ = ws
                .send(yawc::Frame::close(yawc::close::CloseCode::Normal, b""))
                .await;
        }
    }
}

/// Opens `n` bare connections at `rate` per second and keeps them open, so that the HAIP
/// sessions measured next cannot reuse the memory they took.
pub async fn idle_memory(
    url: &str,
    n: usize,
    rate: u64,
    pid: u32,
) -> anyhow::Result<IdleConnections> {
    let read =
        || super::cpu::rss_kib(pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}"));
    let before = read()?;
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        sockets.push(open_plain_websocket(url).await?);
        tokio::time::sleep_until((started + gap * (i as u32 + 1)).into()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = read()?;
    Ok(IdleConnections {
        bytes_per_connection: after.saturating_sub(before) as f64 * 1024.0 / n.max(1) as f64,
        sockets,
    })
}
