//! `haip bench`: a load generator against a running server, over real sockets from this
//! process, bounded in sessions and time. Scenarios: `echo` (round trips through the echo
//! agent), `stream` (long agent streams), `fanout` (one agent stream to many followers of
//! a thread), `connections` (idle sessions held, with the server's memory per session
//! read from /proc). Each is also run against a bare WebSocket echo on the same server
//! (the ceiling, see `ceiling.rs`) and reported as a ratio of it.

mod args;
mod ceiling;
mod connections;
mod cpu;
mod fanout;
mod load;
mod ping;
mod report;
mod retention;
mod shared;

use std::process::ExitCode;

pub use args::{BenchArgs, Scenario};

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
