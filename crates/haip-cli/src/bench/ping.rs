//! `ping`: sessions send HAIP PINGs and wait for each PONG, back to back. The cheapest
//! round trip the protocol has: the server's cost per message, without any agent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haip_protocol::payload::Nonce;
use haip_protocol::Payload;
use serde_json::Map;

use super::args::BenchArgs;
use super::cpu::cpu_rows;
use super::report::{percentile, Progress, Report};
use super::shared::open_all;

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let mut config = args.connect.config();
    config.ping_interval = None; // only the bench's own PINGs
    let sessions = open_all(args, &config, args.sessions, "ping").await?;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let cpu = args.cpu_mark();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (conn, mut sub)) in sessions.into_iter().enumerate() {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let nonce = format!("{i}-{n}");
                n += 1;
                let sent = Instant::now();
                let ping = Payload::Ping(Nonce {
                    nonce: Some(nonce.clone()),
                    extra: Map::new(),
                });
                conn.send("SYSTEM", ping).await?;
                loop {
                    let got = tokio::time::timeout(Duration::from_secs(30), sub.recv())
                        .await
                        .map_err(|_| anyhow::anyhow!("no PONG within 30 s"))?
                        .ok_or_else(|| anyhow::anyhow!("connection ended"))?;
                    if let Payload::Pong(p) = &got.message.payload {
                        if p.nonce.as_deref() == Some(nonce.as_str()) {
                            break;
                        }
                    }
                }
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                done.fetch_add(1, Ordering::Relaxed);
            }
            conn.close();
            anyhow::Ok(latencies)
        }));
    }
    let progress = Progress::new();
    while tasks.iter().any(|t| !t.is_finished()) {
        let part = started.elapsed().as_secs_f64() / args.duration.max(1) as f64;
        progress.show(
            part,
            &format!("{} round trips", done.load(Ordering::Relaxed)),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.done();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let trips = latencies.len() as u64;
    let mut rows = vec![
        ("sessions", args.sessions as f64, ""),
        ("round trips", trips as f64, ""),
        ("round trips/s", trips as f64 / elapsed.max(1e-9), "/s"),
        ("latency p50", percentile(&latencies, 0.5), "ms"),
        ("latency p99", percentile(&latencies, 0.99), "ms"),
    ];
    let cpu_figures = cpu_rows(cpu, trips);
    if let Some((_, cpu_ms, _)) = cpu_figures.first() {
        rows.push((
            "round trips per server CPU second",
            trips as f64 / (cpu_ms / 1000.0),
            "/s",
        ));
    }
    // Per round trip here: one message in (the PING) and one out (the PONG).
    rows.extend(cpu_figures.into_iter().map(|(name, v, unit)| match name {
        "server CPU per message" => ("server CPU per round trip", v, unit),
        _ => (name, v, unit),
    }));
    Ok(Report {
        scenario: "ping",
        transport: args.connect.transport.as_str(),
        rows,
        ceilings: Err("not measured for ping".into()),
    })
}
