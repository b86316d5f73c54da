//! `fanout`: one publisher's agent stream delivered to every session that follows its
//! thread (`?thread=ID`). Each round the publisher sends one message in the thread and
//! the round ends when every follower has the whole answer, so queues never grow without
//! bound and the figure is what the server sustains.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::args::BenchArgs;
use super::ceiling::Shape;
use super::report::{percentile, Progress, Report};
use super::shared::{long_text, open_all, until_finished, Received};

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let words = args.words.unwrap_or(1000);
    let text = long_text(words);
    let thread = format!(
        "bench-fanout-{}-{}",
        std::process::id(),
        super::shared::now_nanos()
    );
    let mut config = args.connect.config();
    config.query_params.push(("thread".into(), thread.clone()));
    let followers = open_all(args, &config, args.sessions, "follower").await?;
    let (publisher, mut own) = open_all(args, &args.connect.config(), 1, "publisher")
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no publisher"))?;

    // Each follower reads runs until told the total number of rounds, reporting each
    // finished round on its own channel.
    let (total_tx, total_rx) = watch::channel(usize::MAX);
    let mut progress_rx = Vec::new();
    let mut tasks = Vec::new();
    for (conn, mut sub) in followers {
        let (done_tx, done_rx) = watch::channel(0usize);
        progress_rx.push(done_rx);
        let mut total = total_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Received::default();
            let mut rounds = 0;
            loop {
                tokio::select! {
                    biased;
                    _ = total.wait_for(|t| *t <= rounds) => break,
                    run = until_finished(&mut sub, &mut got) => {
                        run?;
                        rounds += 1;
                        let _ = done_tx.send(rounds);
                    }
                }
            }
            conn.close();
            anyhow::Ok(got)
        }));
    }

    let progress = Progress::new();
    let cpu = args.cpu_mark();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut rounds = 0;
    let mut lags = Vec::new();
    while rounds == 0 || Instant::now() < deadline {
        let sent = Instant::now();
        publisher.send_text_in_thread(&text, Some(&thread)).await?;
        until_finished(&mut own, &mut Received::default()).await?;
        rounds += 1;
        for rx in &mut progress_rx {
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|r| *r >= rounds))
                .await
                .map_err(|_| anyhow::anyhow!("a follower fell 30 s behind"))??;
        }
        lags.push(sent.elapsed().as_secs_f64() * 1000.0);
        let done = started.elapsed().as_secs_f64() / args.duration.max(1) as f64;
        progress.show(done, &format!("{rounds} rounds"));
    }
    let _ = total_tx.send(rounds);
    progress.done();
    let elapsed = started.elapsed().as_secs_f64();
    publisher.close();
    let mut all = Received::default();
    for t in tasks {
        all.add(t.await??);
    }
    let (messages, bytes) = (all.messages, all.bytes);
    lags.sort_by(f64::total_cmp);
    let rate = messages as f64 / elapsed;
    let frame = all.sample.unwrap_or_else(|| Bytes::from(text.clone()));
    let shape = Shape::one_stream(args.sessions, messages, frame);
    let rows = vec![
        ("followers", args.sessions as f64, ""),
        ("rounds", rounds as f64, ""),
        ("parts per round", words as f64, ""),
        ("messages delivered", messages as f64, ""),
        ("messages delivered/s", rate, "msg/s"),
        ("bytes delivered/s", bytes as f64 / elapsed, "B/s"),
        ("round (to last follower) p50", percentile(&lags, 0.5), "ms"),
        (
            "round (to last follower) max",
            lags.last().copied().unwrap_or(0.0),
            "ms",
        ),
    ];
    // Per copy delivered: the publisher's own answer is not counted.
    Ok(args
        .report_against_bare("fanout", rows, (cpu, messages), shape, rate)
        .await)
}
