//! `haip send TEXT`: one message, its reply on stdout.

use std::process::ExitCode;

use crate::connect::{stream_reply, ConnectArgs, ReplyEnd};

#[derive(clap::Args)]
#[command(about = "Send one text message and print the agent's reply")]
pub struct SendArgs {
    /// The message
    text: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print the raw envelopes of the reply, one JSON per line
    #[arg(long)]
    json: bool,
}

pub fn run(args: &SendArgs) -> ExitCode {
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        eprintln!("error: cannot start the async runtime");
        return ExitCode::from(2);
    };
    runtime.block_on(async {
        let conn = match args.connect.connect("send").await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error {}: {e}", e.code().unwrap_or("CONNECT_FAILED"));
                return ExitCode::from(1);
            }
        };
        let Ok(mut sub) = conn.subscribe(">") else {
            return ExitCode::from(2);
        };
        if let Err(e) = conn.send_text(&args.text).await {
            eprintln!("error {}: {e}", e.code().unwrap_or("SEND_FAILED"));
            return ExitCode::from(1);
        }
        let code = match stream_reply(&mut sub, args.json).await {
            Ok(ReplyEnd::Finished { ok: true, .. }) => ExitCode::SUCCESS,
            Ok(ReplyEnd::Finished { status, .. }) => {
                eprintln!("error RUN_{status}: the run did not finish OK");
                ExitCode::from(1)
            }
            Ok(ReplyEnd::Error { code, message }) => {
                eprintln!("error {code}: {message}");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("error {}: {e}", e.code().unwrap_or("CONNECTION_LOST"));
                ExitCode::from(1)
            }
        };
        conn.close();
        code
    })
}
