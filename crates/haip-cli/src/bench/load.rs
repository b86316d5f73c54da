//! `echo` and `stream`: sessions sending messages and reading the echo agent's answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::args::BenchArgs;
use super::ceiling::Shape;
use super::report::{percentile, Progress, Report};
use super::shared::{long_text, open_all, until_finished, Received};

pub async fn echo(args: &BenchArgs) -> anyhow::Result<Report> {
    let words = args.words.unwrap_or(8);
    let text: Vec<String> = (0..words).map(|i| format!("word{i}")).collect();
    let text = Arc::new(text.join(" "));
    let sessions = open_all(args, &args.connect.config(), args.sessions, "bench").await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_millis(args.interval_ms);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let cpu = args.cpu_mark();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (conn, mut sub) in sessions {
        let text = text.clone();
        let delivered = delivered.clone();
        // Paced sessions start spread over one interval, as independent users would,
        // rather than all sending in the same instant every interval.
        let offset = interval.mul_f64(tasks.len() as f64 / args.sessions.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut sample) = (Vec::new(), None);
            tokio::time::sleep(offset).await;
            while Instant::now() < deadline {
                let sent = Instant::now();
                conn.send_text(&text).await?;
                let mut got = Received::default();
                until_finished(&mut sub, &mut got).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                delivered.fetch_add(got.messages, Ordering::Relaxed);
                sample = sample.or(got.sample);
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
            conn.close();
            anyhow::Ok((latencies, sample))
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
    let (mut latencies, mut sample) = (Vec::new(), None);
    for t in tasks {
        let (l, s) = t.await??;
        latencies.extend(l);
        sample = sample.or(s);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let total = delivered.load(Ordering::Relaxed);
    let rate = total as f64 / elapsed;
    let round_trips = latencies.len().max(1);
    let shape = Shape {
        sessions: args.sessions,
        frames_per_round: (total as f64 / round_trips as f64).round() as usize,
        frame: sample.unwrap_or_else(|| Bytes::from(text.to_string())),
        rounds: None,
        duration: Duration::from_secs(args.duration),
        interval,
    };
    let rows = vec![
        ("sessions", args.sessions as f64, ""),
        ("round trips", latencies.len() as f64, ""),
        ("messages delivered/s", rate, "msg/s"),
        ("latency p50", percentile(&latencies, 0.50), "ms"),
        ("latency p90", percentile(&latencies, 0.90), "ms"),
        ("latency p99", percentile(&latencies, 0.99), "ms"),
        (
            "latency max",
            latencies.last().copied().unwrap_or(0.0),
            "ms",
        ),
    ];
    Ok(args
        .report_against_bare("echo", rows, (cpu, total), shape, rate)
        .await)
}

pub async fn stream(args: &BenchArgs) -> anyhow::Result<Report> {
    let words = args.words.unwrap_or(1000);
    let text = Arc::new(long_text(words));
    let sessions = open_all(args, &args.connect.config(), args.sessions, "bench").await?;
    let cpu = args.cpu_mark();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (conn, mut sub) in sessions {
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            conn.send_text(&text).await?;
            let mut got = Received::default();
            until_finished(&mut sub, &mut got).await?;
            let ttfp = got
                .first_part
                .map_or(0.0, |f| (f - sent).as_secs_f64() * 1000.0);
            let done_at = Instant::now();
            conn.close();
            anyhow::Ok((got, ttfp, done_at))
        }));
    }
    let progress = Progress::new();
    while tasks.iter().any(|t| !t.is_finished()) {
        let finished = tasks.iter().filter(|t| t.is_finished()).count();
        progress.show(finished as f64 / tasks.len() as f64, "streams done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.done();
    let (mut all, mut ttfp) = (Received::default(), Vec::new());
    // Until the last stream ended, not until this loop noticed it.
    let mut last_done = started;
    for t in tasks {
        let (got, first, done_at) = t.await??;
        all.add(got);
        ttfp.push(first);
        last_done = last_done.max(done_at);
    }
    let (messages, bytes) = (all.messages, all.bytes);
    let elapsed = (last_done - started).as_secs_f64();
    ttfp.sort_by(f64::total_cmp);
    let rate = messages as f64 / elapsed;
    let frame = all.sample.unwrap_or_else(|| Bytes::from(text.to_string()));
    let shape = Shape::one_stream(args.sessions, messages, frame);
    let rows = vec![
        ("sessions", args.sessions as f64, ""),
        ("parts per stream", words as f64, ""),
        ("messages delivered/s", rate, "msg/s"),
        ("bytes delivered/s", bytes as f64 / elapsed, "B/s"),
        ("time to first part p50", percentile(&ttfp, 0.5), "ms"),
        (
            "time to first part max",
            ttfp.last().copied().unwrap_or(0.0),
            "ms",
        ),
    ];
    Ok(args
        .report_against_bare("stream", rows, (cpu, messages), shape, rate)
        .await)
}
