//! `connections`: idle sessions opened at a bounded rate and held; the server's memory per
//! session is read from /proc, then compared with bare WebSocket connections.

use std::time::{Duration, Instant};

use haip_client::Connection;

use super::args::BenchArgs;
use super::ceiling;
use super::cpu::rss_kib;
use super::report::{percentile, Ceiling, Progress, Report};

/// Bare connections held for the comparison: enough for a stable figure, few enough to
/// leave the file limit (20 000 here) to the HAIP sessions.
const MAX_BARE: usize = 2000;

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    // The bare connections go first and stay open while the sessions open, so that
    // neither reuses memory the other freed.
    let bare_count = args.sessions.min(MAX_BARE);
    let bare = match args.server_pid {
        Some(pid) => {
            args.ceiling(|url| async move {
                let idle = ceiling::idle_memory(&url, bare_count, args.rate, pid).await?;
                Ok(idle)
            })
            .await
        }
        None => Err("needs --server-pid".into()),
    };
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
    let mut per_session = None;
    if let (Some(b), Some(a)) = (before, after) {
        rows.push(("server RSS growth", a.saturating_sub(b) as f64, "KiB"));
        if a > b {
            let per = ((a - b) as f64 * 1024.0) / held.len().max(1) as f64;
            rows.push(("server memory per session", per, "bytes"));
            per_session = Some(per);
        } else {
            // The allocator handed out memory it already had: nothing to divide.
            eprintln!(
                "server memory per session: the server's RSS did not grow with {} sessions; \
                 hold more (--sessions 1000) to measure it",
                held.len()
            );
        }
    }
    for c in &held {
        c.close();
    }
    let ceilings = match (bare, per_session) {
        (Ok(idle), Some(per)) => {
            let bare = idle.bytes_per_connection;
            idle.close().await;
            Ok(vec![Ceiling {
                what: format!("{bare_count} bare WebSocket connections held on the same server"),
                rows: vec![("server memory per connection", bare, "bytes")],
                ratio: per / bare.max(1.0),
                ratio_of: "memory per session",
            }])
        }
        (Ok(idle), None) => {
            idle.close().await;
            Err(match (before, after) {
                (Some(_), Some(_)) => "the server's memory did not grow measurably".into(),
                _ => "the server's memory could not be read (give --server-pid)".into(),
            })
        }
        (Err(why), _) => Err(why),
    };
    Ok(Report {
        scenario: "connections",
        transport: args.connect.transport.as_str(),
        rows,
        ceilings,
    })
}
