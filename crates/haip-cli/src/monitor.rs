//! `haip monitor`: prints every message the session receives, filtered.

use std::process::ExitCode;

use crate::connect::{block_on, fail, open, show_reconnects, ConnectArgs};

#[derive(clap::Args)]
#[command(about = "Print every message received, optionally filtered")]
pub struct MonitorArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Only these types (repeatable): --type MESSAGE_PART --type RUN_FINISHED
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only these channels (repeatable)
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Only topics matching this pattern (`agent.*`, `*.tool_done`, `agent.>`)
    #[arg(long, default_value = ">")]
    topic: String,
    /// Print raw envelopes, one JSON per line
    #[arg(long)]
    json: bool,
    /// Exit after this many messages
    #[arg(long)]
    count: Option<u64>,
    /// Send this text first (to watch its reply)
    #[arg(long)]
    say: Option<String>,
}

pub fn run(args: &MonitorArgs) -> ExitCode {
    block_on(async {
        let (conn, mut sub) = match open(&args.connect, "monitor", &args.topic).await {
            Ok(opened) => opened,
            Err(code) => return code,
        };
        show_reconnects(&conn);
        if let Some(text) = &args.say {
            if let Err(e) = conn.send_text(text).await {
                return fail(&e, "SEND_FAILED");
            }
        }
        let wanted = |list: &[String], value: &str| {
            list.is_empty() || list.iter().any(|v| v.eq_ignore_ascii_case(value))
        };
        let mut printed = 0;
        loop {
            if args.count.is_some_and(|n| printed >= n) {
                break;
            }
            let item = tokio::select! {
                item = sub.recv() => item,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(item) = item else { break };
            let m = &item.message;
            if !wanted(&args.types, m.event_type().as_str()) || !wanted(&args.channels, &m.channel)
            {
                continue;
            }
            if args.json {
                println!("{}", String::from_utf8_lossy(&item.raw));
            } else {
                let payload = serde_json::to_string(&m.payload).unwrap_or_default();
                println!(
                    "{:>6} {:<7} {:<16} {}",
                    m.seq,
                    m.channel,
                    m.event_type().as_str(),
                    payload
                );
            }
            printed += 1;
        }
        conn.close();
        ExitCode::SUCCESS
    })
}
