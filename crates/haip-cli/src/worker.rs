//! `haip worker -- CMD`: any program becomes an agent worker. Each user message runs the
//! program once: the job goes to its stdin as one JSON line (and in `HAIP_*` environment
//! variables), and each line it prints becomes part of the answer: plain text is the
//! answer's text, a JSON object naming a HAIP type is that message. The program's exit
//! ends the run (0: OK; otherwise RUN_ERROR with the end of its stderr); a user's cancel
//! stops it.

use std::collections::VecDeque;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use haip_client::backoff::ReconnectPolicy;
use haip_client::worker::{Job, Worker, WorkerRun};
use haip_client::ConnectionConfig;
use haip_protocol::payload::RunStatus;
use haip_protocol::{channel, Envelope, ErrorCode, EventType};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::connect::{block_on, exit, fail, with_defaults};

#[derive(clap::Args)]
#[command(
    about = "Run a program as an agent worker: each user message runs it once",
    long_about = "Connects to a server started with --agent workers and runs CMD for each \
                  user message. The job is written to CMD's stdin as one JSON line \
                  ({\"run_id\", \"text\", \"session\", \"subject\", \"conversation\", \
                  \"thread_id\"}) and set in HAIP_TEXT, HAIP_RUN_ID, HAIP_SUBJECT, \
                  HAIP_SESSION and HAIP_CONVERSATION. Each line CMD prints is part of the \
                  answer: plain text is its text (a line per line), a JSON object with a \
                  \"type\" naming a HAIP message is sent as that message (its \"payload\", \
                  or its other fields; message ids and run_id are filled in). Exit 0 ends \
                  the run OK; another status ends it with RUN_ERROR and the end of stderr. \
                  A user's cancel stops CMD.",
    after_help = "Examples:\n  haip token --role agent --sub my-worker   (with the server's \
                  JWT_SECRET)\n  HAIP_AGENT_TOKEN=... haip worker -- python3 my_agent.py\n  \
                  haip worker --url http://127.0.0.1:8080 -- sh -c 'echo \"You said: \
                  $HAIP_TEXT\"'"
)]
pub struct WorkerArgs {
    /// Server URL; a bare host:port gets the agent path /haip/agent
    #[arg(long, env = "HAIP_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A token of role agent (`haip token --role agent`)
    #[arg(long, env = "HAIP_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of CA certificates to trust besides the platform's
    #[arg(long, env = "HAIP_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Runs of CMD at once; further jobs wait for one to end
    #[arg(long, default_value_t = 8)]
    max_runs: usize,
    /// Seconds to wait for connect + handshake
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// When CMD fails, end the user's run with the last lines of its stderr (by default
    /// they stay in this command's own output: they may hold what users should not see)
    #[arg(long)]
    show_stderr: bool,
    /// The program to run for each message, and its arguments (after --)
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(args: &WorkerArgs) -> ExitCode {
    if args.token.is_none() {
        eprintln!(
            "error: no token: give --token or HAIP_AGENT_TOKEN, a token of role agent \
             (haip token --role agent, with the server's JWT_SECRET)"
        );
        return ExitCode::from(exit::USAGE);
    }
    block_on(async {
        let url = with_defaults(&args.url, "/haip/agent");
        let config = ConnectionConfig {
            token: args.token.clone(),
            timeout: Duration::from_secs(args.timeout),
            ca_cert: args.ca_cert.clone(),
            // A worker stays: it reconnects for as long as it runs.
            reconnect: ReconnectPolicy {
                max_attempts: u32::MAX,
                ..ReconnectPolicy::default()
            },
            ..ConnectionConfig::new(url.clone())
        };
        let mut worker = match Worker::connect(config).await {
            Ok(w) => w,
            Err(e) => return fail(&e, "CONNECT_FAILED"),
        };
        eprintln!(
            "haip worker: attached to {url}; each message runs: {}",
            args.command.join(" ")
        );
        let slots = Arc::new(Semaphore::new(args.max_runs.max(1)));
        let command = Arc::new(args.command.clone());
        let show_stderr = args.show_stderr;
        while let Some(job) = worker.next_job().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let command = command.clone();
            tokio::spawn(async move {
                run_job(&command, job, show_stderr).await;
                drop(slot);
            });
        }
        eprintln!("haip worker: the connection closed");
        ExitCode::from(exit::UNREACHABLE)
    })
}

/// Lines of the program's stderr kept for the error of a failed run.
const STDERR_TAIL: usize = 5;

/// The longest text also given in `HAIP_TEXT`: one environment string may not pass 128
/// KiB on Linux, and a message may be longer (stdin always has it whole).
const MAX_ENV_TEXT: usize = 100 * 1024;

async fn run_job(command: &[String], job: Job, show_stderr: bool) {
    let Job {
        text,
        session,
        subject,
        conversation,
        thread_id,
        history,
        run,
    } = job;
    let history: Vec<_> = history
        .into_iter()
        .map(|(role, text)| json!({"role": role, "text": text}))
        .collect();
    let short_id: String = run.id().chars().take(8).collect();
    let line = json!({"run_id": run.id(), "text": text, "session": session, "subject": subject,
                      "conversation": conversation, "thread_id": thread_id,
                      "history": history});
    let mut program = Command::new(&command[0]);
    if text.len() <= MAX_ENV_TEXT {
        program.env("HAIP_TEXT", &text);
    }
    let spawned = program
        .args(&command[1..])
        .env("HAIP_RUN_ID", run.id())
        .env("HAIP_SESSION", &session)
        .env("HAIP_SUBJECT", &subject)
        .env("HAIP_CONVERSATION", &conversation)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("haip worker: cannot run {}: {e}", command[0]);
            let _ = run
                .fail(
                    ErrorCode::AgentError,
                    &format!("the worker cannot run its program: {e}"),
                )
                .await;
            return;
        }
    };
    eprintln!("haip worker: run {short_id}: started");
    if let Some(mut stdin) = child.stdin.take() {
        // Written aside: a program that does not read its stdin must not hold up the
        // reading of what it prints, nor a cancel (a write error is ignored).
        tokio::spawn(async move {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
        });
    }
    let stderr_tail = child.stderr.take().map(|err| {
        let tag = short_id.clone();
        tokio::spawn(async move {
            let mut tail = VecDeque::new();
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("[run {tag}] {l}");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(l);
            }
            tail.into_iter().collect::<Vec<_>>().join("\n")
        })
    });
    let mut answer = Answer::new(run, &command[0]);
    if let Some(out) = child.stdout.take() {
        let mut lines = BufReader::new(out).lines();
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(l)) => answer.line(&l).await,
                    _ => break,
                },
                _ = answer.cancelled() => {
                    let _ = child.start_kill();
                    eprintln!("haip worker: run {short_id}: cancelled, program stopped");
                    answer.finish(Ok(RunStatus::Cancelled)).await;
                    return;
                }
            }
        }
    }
    let status = child.wait().await;
    let tail = match stderr_tail {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    let ending = match status {
        Ok(s) if s.success() => Ok(RunStatus::Ok),
        Ok(s) => Err(if tail.is_empty() || !show_stderr {
            format!("the agent program exited with {s}")
        } else {
            format!("the agent program exited with {s}: {tail}")
        }),
        Err(e) => Err(format!("the agent program could not be waited for: {e}")),
    };
    match &ending {
        Ok(_) => eprintln!("haip worker: run {short_id}: finished OK"),
        Err(why) => eprintln!("haip worker: run {short_id}: failed: {why}"),
    }
    answer.finish(ending).await;
}

/// What one printed line is.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// Text of the answer.
    Text(String),
    /// A HAIP message: its type, channel and payload (ids still to fill in).
    Message {
        event: EventType,
        channel: String,
        payload: Map<String, Value>,
    },
}

/// Reads one line the program printed: a JSON object whose `type` names a HAIP message is
/// that message (its `payload`, or else its other fields); anything else is text.
pub fn read_line(line: &str) -> Line {
    let trimmed = line.trim();
    if trimmed.starts_with('{') {
        if let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(trimmed) {
            if let Some(event) = obj
                .get("type")
                .and_then(Value::as_str)
                .and_then(EventType::parse)
            {
                obj.remove("type");
                let channel = match obj.remove("channel") {
                    Some(Value::String(c)) => c,
                    _ => channel::AGENT.to_string(),
                };
                let payload = match obj.remove("payload") {
                    Some(Value::Object(p)) => p,
                    _ => obj,
                };
                return Line::Message {
                    event,
                    channel,
                    payload,
                };
            }
        }
    }
    Line::Text(line.to_string())
}

/// The answer being built from the program's lines.
struct Answer {
    run: Option<WorkerRun>,
    author: String,
    /// The text message open, and whether it has text yet.
    open: Option<(String, bool)>,
    parts: u64,
}

impl Answer {
    fn new(run: WorkerRun, program: &str) -> Answer {
        let author = std::path::Path::new(program)
            .file_name()
            .map_or_else(|| program.to_string(), |n| n.to_string_lossy().into_owned());
        Answer {
            run: Some(run),
            author,
            open: None,
            parts: 0,
        }
    }

    async fn cancelled(&self) {
        match &self.run {
            Some(run) => run.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// The open text message's id, started if there is none.
    async fn text_message(&mut self) -> Option<String> {
        let run = self.run.as_ref()?;
        if self.open.is_none() {
            let id = run.message_start(&self.author).await.ok()?;
            self.open = Some((id, false));
        }
        self.open.as_ref().map(|(id, _)| id.clone())
    }

    async fn close_text(&mut self) {
        if let (Some(run), Some((id, _))) = (&self.run, self.open.take()) {
            let _ = run.message_end(&id, self.parts).await;
        }
    }

    async fn line(&mut self, line: &str) {
        match read_line(line) {
            Line::Text(text) => {
                let Some(id) = self.text_message().await else {
                    return;
                };
                // Lines after the first are joined by newlines.
                let first = matches!(self.open, Some((_, false)));
                let text = if first { text } else { format!("\n{text}") };
                if let Some(open) = &mut self.open {
                    open.1 = true;
                }
                self.parts += 1;
                if let Some(run) = &self.run {
                    let _ = run.message_part(&id, &text).await;
                }
            }
            Line::Message {
                event,
                channel,
                mut payload,
            } => {
                match event {
                    EventType::RunFinished => {
                        let status = payload.get("status").and_then(Value::as_str).map_or(
                            Ok(RunStatus::Ok),
                            |s| match s {
                                "CANCELLED" => Ok(RunStatus::Cancelled),
                                "ERROR" => Err("the agent program ended the run with ERROR".into()),
                                _ => Ok(RunStatus::Ok),
                            },
                        );
                        return self.finish(status).await;
                    }
                    EventType::RunError => {
                        let message = payload
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("the agent program reported an error")
                            .to_string();
                        return self.finish(Err(message)).await;
                    }
                    EventType::MessageStart => {
                        self.close_text().await;
                        if !payload.contains_key("message_id") {
                            return self.start_with(payload).await;
                        }
                    }
                    EventType::MessagePart | EventType::MessageEnd => {
                        if !payload.contains_key("message_id") {
                            let Some(id) = self.text_message().await else {
                                return;
                            };
                            payload.insert("message_id".into(), json!(id));
                        }
                        if event == EventType::MessageEnd {
                            self.open = None;
                        } else if let Some(open) = &mut self.open {
                            open.1 = true;
                        }
                    }
                    _ => {}
                }
                self.send(event, &channel, payload).await;
            }
        }
    }

    /// MESSAGE_START without an id: a text message of this run, with the given fields.
    async fn start_with(&mut self, payload: Map<String, Value>) {
        if let Some(author) = payload.get("author").and_then(Value::as_str) {
            self.author = author.to_string();
        }
        self.text_message().await;
    }

    /// Sends a message the program named, checked as the server would check it.
    async fn send(&self, event: EventType, channel: &str, payload: Map<String, Value>) {
        let Some(run) = &self.run else { return };
        let env = json!({"id": "x", "session": "-", "seq": "1", "ts": "0", "channel": channel,
                         "type": event.as_str(), "payload": payload});
        match Envelope::parse(&env.to_string()) {
            Ok(env) => {
                let _ = run.send(&env.channel, env.payload).await;
            }
            Err(e) => eprintln!(
                "haip worker: a line of the program is not a valid {}: {e}",
                event.as_str()
            ),
        }
    }

    /// Ends the run (once): closes the open text, then RUN_FINISHED or RUN_ERROR.
    async fn finish(&mut self, ending: Result<RunStatus, String>) {
        self.close_text().await;
        if let Some(run) = self.run.take() {
            let _ = match ending {
                Ok(status) => run.finish(status).await,
                Err(message) => run.fail(ErrorCode::AgentError, &message).await,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_text_and_json_naming_a_type_is_a_message() {
        assert_eq!(read_line("hello there"), Line::Text("hello there".into()));
        assert_eq!(read_line("{not json"), Line::Text("{not json".into()));
        // A JSON object that names no HAIP type is text too.
        assert_eq!(
            read_line(r#"{"answer": 42}"#),
            Line::Text(r#"{"answer": 42}"#.into())
        );
        match read_line(r#"{"type": "MESSAGE_PART", "text": "tok"}"#) {
            Line::Message {
                event,
                channel,
                payload,
            } => {
                assert_eq!(event, EventType::MessagePart);
                assert_eq!(channel, "AGENT");
                assert_eq!(payload.get("text"), Some(&json!("tok")));
            }
            other => panic!("{other:?}"),
        }
        match read_line(
            r#"{"type": "TOOL_CALL", "channel": "TOOLS", "payload": {"call_id": "c", "tool": "t"}}"#,
        ) {
            Line::Message {
                event,
                channel,
                payload,
            } => {
                assert_eq!(event, EventType::ToolCall);
                assert_eq!(channel, "TOOLS");
                assert_eq!(payload.get("call_id"), Some(&json!("c")));
            }
            other => panic!("{other:?}"),
        }
    }
}
