//! The engine of `resume_cuts.rs`: echo runs whose connections are cut at seeded random
//! points and resumed, by one client that checks every message it reads ([`client`]) and
//! each run and the whole at the end ([`checks`]).

mod checks;
mod client;
mod live;
mod raw;
mod rng;

use client::Client;
use rng::{seed_or, Rng};

use crate::common::{ms, Kind, Server};

/// Words of each echoed text.
const WORDS: usize = 200;
/// Cuts within one run at most; the rest of the run is then read without a cut.
const MAX_CUTS_PER_RUN: usize = 50;
/// Runs of one test at most.
const MAX_RUNS: usize = 20;

/// Which transport each new connection uses.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    Only(Kind),
    /// WebSocket -> SSE -> HTTP streaming -> WebSocket ...
    Rotate,
}

impl Plan {
    fn first(self) -> Kind {
        match self {
            Plan::Only(k) => k,
            Plan::Rotate => Kind::Ws,
        }
    }

    fn after(self, k: Kind) -> Kind {
        match self {
            Plan::Only(k) => k,
            Plan::Rotate => match k {
                Kind::Ws | Kind::WsRoot => Kind::Sse,
                Kind::Sse => Kind::Stream,
                Kind::Stream => Kind::Ws,
            },
        }
    }
}

/// `n` words, single spaces, some punctuation.
fn text_for(rng: &mut Rng, run: usize, n: usize) -> String {
    (0..n)
        .map(|i| {
            let tail = match rng.below(8) {
                0 => ",",
                1 => ".",
                2 => "!",
                _ => "",
            };
            format!("r{run}w{i}{tail}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Messages to read before the next cut (at least one of the session, so that the server
/// has attached the connection; SSE attaches before its response starts, so 0 there too).
fn pick_k(rng: &mut Rng, kind: Kind) -> usize {
    if kind == Kind::Sse && rng.percent(10) {
        return 0;
    }
    (match rng.below(10) {
        0 => 1,
        1..=5 => 1 + rng.below(5),
        6..=8 => 6 + rng.below(15),
        _ => 21 + rng.below(40),
    }) as usize
}
/// Runs echo runs with random cuts until `target` cuts were made, then checks the whole.
pub async fn cut_and_resume(name: &'static str, default_seed: u64, plan: Plan, target: usize) {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(1)).await;
    cut_and_resume_on(&[srv], name, default_seed, plan, target).await
}

/// The same over `nodes`: each reconnect lands on a random one when there are several.
pub async fn cut_and_resume_on(
    nodes: &[Server],
    name: &'static str,
    default_seed: u64,
    plan: Plan,
    target: usize,
) {
    let seed = seed_or(default_seed);
    let mut cl = Client::new(nodes, name, seed);
    let mut kind = plan.first();
    let mut live = cl.open_first(kind).await;
    let mut run = 0;
    while cl.total_cuts() < target {
        if run == MAX_RUNS {
            cl.fail(format!("only {} cuts in {MAX_RUNS} runs", cl.total_cuts()));
        }
        cl.read_until_confirmed(&mut live).await;
        let text = text_for(&mut cl.rng, run, WORDS);
        cl.note(format!("run {run} starts"));
        cl.say(&mut live, &text).await;
        let mut cuts_in_run = 0;
        while !cl.run_done(run) {
            cl.check_budget();
            if cuts_in_run == MAX_CUTS_PER_RUN {
                cl.read_one(&mut live).await;
                continue;
            }
            let k = pick_k(&mut cl.rng, kind);
            while live.read < k && !cl.run_done(run) {
                cl.read_one(&mut live).await;
            }
            if cl.run_done(run) {
                break;
            }
            cl.cut(live);
            cuts_in_run += 1;
            if cl.rng.percent(30) {
                // The agent goes on streaming with no connection attached.
                let pause = if cl.rng.percent(20) {
                    15 + cl.rng.below(50)
                } else {
                    1 + cl.rng.below(8)
                };
                cl.note(format!("away {pause} ms"));
                cl.away_pauses += 1;
                tokio::time::sleep(ms(pause)).await;
            }
            kind = plan.after(kind);
            live = cl.reconnect(kind).await;
        }
        cl.check_run(run, &text);
        cl.note(format!("run {run} complete after {cuts_in_run} cuts"));
        run += 1;
    }
    cl.finish(&mut live).await;
    for r in 0..run {
        assert!(cl.run_done(r));
    }
    eprintln!(
        "resume_cuts::{name}: seed {seed:#x}, {run} runs of {WORDS} words, cuts {:?} \
         ({} before the confirming HAI, {} followed by a pause), resumes {:?}, longest \
         replay {}, {} messages, {} identical repeats after a lowered last_rx_seq, {} client \
         retransmits, {:?}",
        cl.cuts,
        cl.cuts_unconfirmed,
        cl.away_pauses,
        cl.resumes,
        cl.longest_replay,
        cl.highest,
        cl.allowed_repeats,
        cl.retransmits,
        cl.started.elapsed()
    );
}
