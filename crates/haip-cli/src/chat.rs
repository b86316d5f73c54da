//! `haip chat`: type a line, watch the reply stream in. Works on a pipe: one line is one
//! message, and it exits after the last reply at end of input.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use crate::connect::{
    block_on, drain_between_replies, exit, fail, open, show_reconnects, stream_reply, ConnectArgs,
    ReplyEnd,
};

#[derive(clap::Args)]
#[command(about = "Chat with the agent: each line you type is a message")]
pub struct ChatArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn run(args: &ChatArgs) -> ExitCode {
    block_on(async {
        let (conn, mut sub) = match open(&args.connect, "chat", ">").await {
            Ok(opened) => opened,
            Err(code) => return code,
        };
        let interactive = std::io::stdin().is_terminal();
        if interactive {
            eprintln!(
                "connected to {} (session {}). Type a message; Ctrl-D to quit.",
                args.connect.full_url(),
                conn.session_id().unwrap_or_default()
            );
        }
        show_reconnects(&conn);
        // stdin is read on its own thread so that a slow terminal never blocks the client.
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut outcome = ExitCode::SUCCESS;
        loop {
            if interactive {
                eprint!("> ");
                let _ = std::io::stderr().flush();
            }
            let Some(line) = lines.recv().await else {
                break;
            };
            if line.trim().is_empty() {
                continue;
            }
            drain_between_replies(&mut sub);
            if let Err(e) = conn
                .send_text_in_thread(&line, args.connect.thread.as_deref())
                .await
            {
                outcome = fail(&e, "SEND_FAILED");
                break;
            }
            match stream_reply(&mut sub, false).await {
                Ok(ReplyEnd::Finished { .. }) => {}
                Ok(ReplyEnd::Error { code, message }) => eprintln!("error {code}: {message}"),
                Ok(ReplyEnd::Lost) => {
                    eprintln!(
                        "[the reply to {line:?} was lost with the old session: send it again]"
                    );
                    outcome = ExitCode::from(exit::FAILED);
                }
                Err(e) => {
                    outcome = fail(&e, "CONNECTION_LOST");
                    break;
                }
            }
        }
        conn.close();
        outcome
    })
}
