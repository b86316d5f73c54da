//! `retention`: what the server keeps for replay under an LLM's pace. Sessions each receive
//! one long stream at the echo agent's word delay (start the server with its default,
//! 20 ms: 50 messages a second, a model's pace); every message stays in its session's
//! replay window. The server's RSS is read from /proc before, during and after: its
//! growth divided by the messages kept is what one message costs to keep. With `--after N`
//! the sessions then close and RSS is watched for N seconds more (start the server with a
//! short `--session-ttl` to see whether memory returns once they expired).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::BenchArgs;
use super::cpu::rss_kib;
use super::report::{Progress, Report};
use super::shared::{long_text, open_all, until_finished, Received};

/// How long memory is left to settle before it is read: the server's workers give freed
/// memory back to the system when idle (at most every 100 ms each, once they park).
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let Some(server) = args.server_cpu() else {
        anyhow::bail!(
            "retention reads the server's memory from /proc: run it against a server on this \
             machine, or give --server-pid"
        );
    };
    let pid = server.pid;
    let words = args.words.unwrap_or(1500);
    let text = Arc::new(long_text(words));
    let sessions = open_all(args, &args.connect.config(), args.sessions, "retention").await?;
    // Settle, then the baseline: sessions open, nothing streamed yet.
    tokio::time::sleep(SETTLE).await;
    let before = rss_kib(pid).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}"))?;
    let delivered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut held = Vec::new();
    for (conn, mut sub) in sessions {
        let text = text.clone();
        let delivered = delivered.clone();
        held.push(conn.clone());
        tasks.push(tokio::spawn(async move {
            conn.send_text(&text).await?;
            let mut got = Received::default();
            until_finished(&mut sub, &mut got).await?;
            delivered.fetch_add(got.messages, Ordering::Relaxed);
            anyhow::Ok(got.messages)
        }));
    }
    let progress = Progress::new();
    let mut peak = before;
    while tasks.iter().any(|t| !t.is_finished()) {
        let finished = tasks.iter().filter(|t| t.is_finished()).count();
        let rss = rss_kib(pid).unwrap_or(0);
        peak = peak.max(rss);
        progress.show(
            finished as f64 / tasks.len().max(1) as f64,
            &format!("streams done, server RSS {} MiB", rss / 1024),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    progress.done();
    let mut kept = 0;
    for t in tasks {
        kept += t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(pid).unwrap_or(0);
    peak = peak.max(after);
    let grown = after.saturating_sub(before) as f64 * 1024.0;
    let mut rows = vec![
        ("sessions", args.sessions as f64, ""),
        ("messages kept", kept as f64, ""),
        ("stream time", elapsed, "s"),
        (
            "messages delivered/s",
            kept as f64 / elapsed.max(1e-9),
            "msg/s",
        ),
        ("server RSS before", before as f64 / 1024.0, "MiB"),
        ("server RSS after", after as f64 / 1024.0, "MiB"),
        ("server RSS peak", peak as f64 / 1024.0, "MiB"),
        ("retained per message", grown / kept.max(1) as f64, "bytes"),
    ];
    if args.after > 0 {
        for conn in &held {
            conn.close();
        }
        drop(held);
        let watch = Duration::from_secs(args.after);
        let until = Instant::now() + watch;
        let mut last = after;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            last = rss_kib(pid).unwrap_or(last);
            progress.show(
                1.0 - until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    / watch.as_secs_f64(),
                &format!("sessions closed, server RSS {} MiB", last / 1024),
            );
        }
        progress.done();
        rows.push((
            "server RSS after close and wait",
            last as f64 / 1024.0,
            "MiB",
        ));
        rows.push((
            "after close / before",
            last as f64 / before.max(1) as f64,
            "x",
        ));
    }
    Ok(Report {
        scenario: "retention",
        transport: args.connect.transport.as_str(),
        rows,
        ceilings: Err("not applicable: this scenario measures memory kept".into()),
    })
}
