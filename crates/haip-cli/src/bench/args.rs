//! What `haip bench` is asked to do: the scenario and its bounds.

use crate::connect::ConnectArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Sessions send short messages and wait for the whole streamed echo
    Echo,
    /// Sessions each receive one long agent stream
    Stream,
    /// One publisher's agent stream delivered to every session following its thread
    Fanout,
    /// Open idle sessions at a bounded rate and hold them
    Connections,
    /// Sessions send PINGs and wait for each PONG, back to back (no agent)
    Ping,
    /// Sessions receive long streams at the agent's pace; the server's memory kept per
    /// message is read from /proc (start the server with its default word delay)
    Retention,
}

#[derive(clap::Args)]
#[command(
    about = "Measure a running server (start it with --echo-word-delay 0 --autobahn-echo)",
    long_about = "Measure a running server over real sockets from this process.\n\n\
        Start the server with `haip serve --echo-word-delay 0 --autobahn-echo`: the first \
        lets the echo agent answer at full speed, the second serves the bare WebSocket echo \
        each scenario is also run against, so that every figure comes with its ratio to \
        what the transport alone does on the same machine in the same run."
)]
pub struct BenchArgs {
    /// What to measure
    #[arg(value_enum)]
    pub(super) scenario: Scenario,
    #[command(flatten)]
    pub(super) connect: ConnectArgs,
    /// Concurrent sessions (`fanout`: followers of the publisher's thread)
    #[arg(long, default_value_t = 10)]
    pub(super) sessions: usize,
    /// Seconds to run `echo` and `fanout` (`stream` and `connections` end when done)
    #[arg(long, default_value_t = 5)]
    pub(super) duration: u64,
    /// Words per echo message (`echo`, default 8) or per agent stream (`stream`, `fanout`,
    /// default 1000)
    #[arg(long)]
    pub(super) words: Option<usize>,
    /// Milliseconds each session waits between round trips (`echo`); 0 sends again as
    /// soon as the answer is complete
    #[arg(long, default_value_t = 0)]
    pub(super) interval_ms: u64,
    /// Sessions opened per second (`connections`)
    #[arg(long, default_value_t = 500)]
    pub(super) rate: u64,
    /// The server's pid, to read its CPU time (every scenario) and memory (`connections`)
    /// from /proc [default: the process on this machine listening on the URL's port]
    #[arg(long)]
    pub(super) server_pid: Option<u32>,
    /// Other nodes of the same cluster: sessions are spread over the URL and these, in
    /// turn (`fanout`: followers on all, the publisher on the first)
    #[arg(long = "also-url")]
    pub(super) also_urls: Vec<String>,
    /// Other processes whose CPU time counts as the server's (the other nodes of a
    /// cluster, its Redis)
    #[arg(long = "also-pid")]
    pub(super) also_pids: Vec<u32>,
    /// The bare WebSocket echo to compare with [default: /autobahn on the server's host]
    #[arg(long)]
    pub(super) ceiling_url: Option<String>,
    /// Do not measure the ceiling
    #[arg(long)]
    pub(super) no_ceiling: bool,
    /// Print the result as one JSON object
    #[arg(long)]
    pub(super) json: bool,
    /// `retention`: after the streams, close the sessions and watch the server's memory
    /// for this many seconds (give the server a short --session-ttl to see it return)
    #[arg(long, default_value_t = 0)]
    pub(super) after: u64,
}
