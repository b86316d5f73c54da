//! `haip send TEXT`: one message, its reply on stdout.

use std::process::ExitCode;

use crate::connect::{block_on, fail, open, stream_reply, ConnectArgs, ReplyEnd};

#[derive(clap::Args)]
#[command(about = "Send one text message and print the agent's reply")]
pub struct SendArgs {
    /// The message
    text: String,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print the raw envelopes of the reply (agent messages and errors), one JSON per line
    #[arg(long)]
    json: bool,
}

pub fn run(args: &SendArgs) -> ExitCode {
    block_on(async {
        let (conn, mut sub) = match open(&args.connect, "send", ">").await {
            Ok(opened) => opened,
            Err(code) => return code,
        };
        if let Err(e) = conn
            .send_text_in_thread(&args.text, args.connect.thread.as_deref())
            .await
        {
            return fail(&e, "SEND_FAILED");
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
            Ok(ReplyEnd::Lost) => {
                eprintln!("error RESUME_FAILED: the reply was lost with the old session; send the message again");
                ExitCode::from(1)
            }
            Err(e) => fail(&e, "CONNECTION_LOST"),
        };
        conn.close();
        code
    })
}
