//! `haip`: the HAIP command-line tool.

mod bench;
mod chat;
mod connect;
mod health;
mod memory;
mod monitor;
mod send;
mod serve;
mod token;
mod tool;
mod validate;
mod worker;

/// mimalloc instead of the system allocator: a server and a client both allocate small
/// objects on one worker thread and free them on another (messages crossing tasks), which
/// glibc's malloc answers with lock contention and consolidation (28 % of the client's CPU
/// in `haip bench fanout` before).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "haip",
    version,
    about = "haip-rs: a HAIP 1.1.2 server and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve(Box<serve::ServeArgs>),
    Token(token::TokenArgs),
    Validate(validate::ValidateArgs),
    Chat(chat::ChatArgs),
    Send(send::SendArgs),
    Monitor(monitor::MonitorArgs),
    Health(health::HealthArgs),
    Tool(tool::ToolArgs),
    Bench(bench::BenchArgs),
    Worker(worker::WorkerArgs),
    /// Print a shell completion script: `haip completions bash > /etc/bash_completion.d/haip`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            memory::run_with_allocator_settings();
            serve::run(&args)
        }
        Command::Token(args) => token::run(&args),
        Command::Validate(args) => validate::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Send(args) => send::run(&args),
        Command::Monitor(args) => monitor::run(&args),
        Command::Health(args) => health::run(&args),
        Command::Tool(args) => tool::run(&args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "haip", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Bench(args) => bench::run(&args),
        Command::Worker(args) => worker::run(&args),
    }
}
