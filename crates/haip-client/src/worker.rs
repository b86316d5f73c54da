//! Worker mode: a program that answers users' messages for a haip-rs server started with
//! `--agent workers` (contract section 12.2). The worker connects to the agent path with a
//! token of role `agent`, receives jobs (one per user message), and answers each through
//! a [`WorkerRun`], which has the shape of the server's own `Run`.
//!
//! ```no_run
//! # async fn run() -> Result<(), haip_client::ClientError> {
//! use haip_client::worker::Worker;
//! use haip_client::ConnectionConfig;
//!
//! let mut config = ConnectionConfig::new("ws://127.0.0.1:8080/haip/agent");
//! config.token = Some(std::env::var("HAIP_AGENT_TOKEN").unwrap_or_default());
//! let mut worker = Worker::connect(config).await?;
//! while let Some(job) = worker.next_job().await {
//!     tokio::spawn(async move {
//!         let run = job.run;
//!         let id = run.message_start("shouter").await?;
//!         run.message_part(&id, &job.text.to_uppercase()).await?;
//!         run.message_end(&id, 1).await?;
//!         run.finish(haip_protocol::payload::RunStatus::Ok).await
//!     });
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Jobs arrive as RUN_STARTED; RUN_CANCEL cancels a [`WorkerRun`]; while the server says
//! PAUSE_CHANNEL AGENT (a user is not reading), [`WorkerRun::send`] waits for
//! RESUME_CHANNEL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use haip_protocol::payload::{ErrorPayload, RunFinished, RunStatus};
use haip_protocol::{channel, Envelope, ErrorCode, Payload};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::ClientError;
use crate::{Connection, ConnectionConfig, Subscription};

/// Run ids to the senders that cancel them, and the cancels that came for runs not taken
/// yet (a job waiting in the queue while the worker is busy).
#[derive(Default)]
struct Routes {
    runs: HashMap<String, watch::Sender<bool>>,
    early: std::collections::VecDeque<String>,
}

/// Cancels remembered for runs not taken yet, at most.
const MAX_EARLY_CANCELS: usize = 1024;

type Cancels = Arc<Mutex<Routes>>;

/// A connected worker.
pub struct Worker {
    connection: Connection,
    jobs: Subscription,
    cancels: Cancels,
    paused: watch::Receiver<bool>,
}

/// One user message to answer.
pub struct Job {
    /// The user's message.
    pub text: String,
    /// The user's session, and the user (the token's subject).
    pub session: String,
    pub subject: String,
    /// What the answer belongs to: the thread when the user wrote in one, else the session.
    /// A worker that keeps state per conversation keys it by this.
    pub conversation: String,
    pub thread_id: Option<String>,
    /// The conversation before the message, oldest first, when the user's client keeps it
    /// and sent it along (the AI SDK's `useChat` does): `(role, text)`, role `user` or
    /// `assistant`. Empty otherwise: keep your own by `conversation` then.
    pub history: Vec<(String, String)>,
    /// Where the answer goes.
    pub run: WorkerRun,
}

impl Worker {
    /// Connects to the server's agent path (a URL without a path gets `/haip/agent`) and
    /// waits for the server's HAI.
    pub async fn connect(mut config: ConnectionConfig) -> Result<Worker, ClientError> {
        if let Some((scheme, rest)) = config.url.split_once("://") {
            if !rest.contains('/') {
                config.url = format!("{scheme}://{rest}/haip/agent");
            }
        }
        let timeout = config.timeout;
        let connection = Connection::start("worker", config);
        let jobs = connection.subscribe("agent.run_started")?;
        let mut cancels_in = connection.subscribe("*.run_cancel")?;
        let mut flow = connection.subscribe("*.pause_channel")?;
        let mut resumes = connection.subscribe("*.resume_channel")?;
        connection.connected(timeout).await?;
        let cancels: Cancels = Arc::default();
        let (paused_tx, paused) = watch::channel(false);
        let routes = cancels.clone();
        let mut status = connection.status();
        // Connected now: only a later connection is a reconnect.
        status.borrow_and_update();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(m) = cancels_in.recv() => {
                        if let Payload::RunCancel(c) = &m.message.payload {
                            if let Ok(mut r) = routes.lock() {
                                match r.runs.get(&c.run_id) {
                                    Some(tx) => { let _ = tx.send(true); }
                                    None => {
                                        if r.early.len() == MAX_EARLY_CANCELS {
                                            r.early.pop_front();
                                        }
                                        r.early.push_back(c.run_id.clone());
                                    }
                                }
                            }
                        }
                    }
                    Ok(()) = status.changed() => {
                        // A new connection is a new worker to the server: the runs of the
                        // old one were ended there, and nothing is paused any more.
                        let connected = matches!(*status.borrow_and_update(), crate::Status::Connected(_));
                        if connected {
                            let _ = paused_tx.send(false);
                            if let Ok(r) = routes.lock() {
                                for tx in r.runs.values() {
                                    let _ = tx.send(true);
                                }
                            }
                        }
                    }
                    Some(m) = flow.recv() => {
                        if is_agent_channel(&m.message.payload) {
                            let _ = paused_tx.send(true);
                        }
                    }
                    Some(m) = resumes.recv() => {
                        if is_agent_channel(&m.message.payload) {
                            let _ = paused_tx.send(false);
                        }
                    }
                    else => break,
                }
            }
        });
        Ok(Worker {
            connection,
            jobs,
            cancels,
            paused,
        })
    }

    /// The next job; `None` once the connection is closed for good.
    pub async fn next_job(&mut self) -> Option<Job> {
        loop {
            let received = self.jobs.recv().await?;
            let env = &received.message;
            let Payload::RunStarted(started) = &env.payload else {
                continue;
            };
            let Some(run_id) = env.run_id.clone().or_else(|| started.run_id.clone()) else {
                continue;
            };
            let meta = started.metadata.clone().unwrap_or_default();
            let field = |name: &str| {
                meta.get(name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let history = meta
                .get("history")
                .and_then(Value::as_array)
                .map(|turns| {
                    turns
                        .iter()
                        .filter_map(|t| {
                            Some((
                                t.get("role")?.as_str()?.to_string(),
                                t.get("text")?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let (cancel_tx, cancelled) = watch::channel(false);
            if let Ok(mut routes) = self.cancels.lock() {
                if let Some(i) = routes.early.iter().position(|id| *id == run_id) {
                    routes.early.remove(i);
                    let _ = cancel_tx.send(true);
                }
                routes.runs.insert(run_id.clone(), cancel_tx);
            }
            return Some(Job {
                text: field("text"),
                session: field("session"),
                subject: field("subject"),
                conversation: field("conversation"),
                thread_id: started.thread_id.clone(),
                history,
                run: WorkerRun {
                    connection: self.connection.clone(),
                    run_id,
                    cancelled,
                    paused: self.paused.clone(),
                    cancels: self.cancels.clone(),
                    messages: AtomicU64::new(0),
                },
            });
        }
    }

    /// The connection, e.g. to watch its status or close it.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

fn is_agent_channel(payload: &Payload) -> bool {
    match payload {
        Payload::PauseChannel(c) | Payload::ResumeChannel(c) => c.channel == channel::AGENT,
        _ => false,
    }
}

/// A run a worker answers. Every message sent through it carries its run id.
pub struct WorkerRun {
    connection: Connection,
    run_id: String,
    cancelled: watch::Receiver<bool>,
    paused: watch::Receiver<bool>,
    cancels: Cancels,
    /// Text messages started, for their ids.
    messages: AtomicU64,
}

impl WorkerRun {
    pub fn id(&self) -> &str {
        &self.run_id
    }

    /// True once the user cancelled the run (RUN_CANCEL).
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves when the user cancels the run.
    pub async fn cancelled(&self) {
        let mut rx = self.cancelled.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Sends one message of the run on `channel`; waits while the server has paused the
    /// AGENT channel (a user is not reading).
    pub async fn send(&self, channel: &str, payload: Payload) -> Result<(), ClientError> {
        let mut paused = self.paused.clone();
        let _ = paused.wait_for(|p| !*p).await;
        let mut env = Envelope::new(String::new(), "-", 0, 0, channel, payload);
        env.run_id = Some(self.run_id.clone());
        self.connection.send_envelope(env).await
    }

    /// Starts an AGENT text message and returns its message_id.
    pub async fn message_start(&self, author: &str) -> Result<String, ClientError> {
        let n = self.messages.fetch_add(1, Ordering::Relaxed);
        let message_id = format!("{}-m{n}", self.run_id);
        self.send(
            channel::AGENT,
            Payload::message_start(message_id.clone(), Some(author)),
        )
        .await?;
        Ok(message_id)
    }

    pub async fn message_part(&self, message_id: &str, text: &str) -> Result<(), ClientError> {
        self.send(channel::AGENT, Payload::message_part(message_id, text))
            .await
    }

    pub async fn message_end(&self, message_id: &str, tokens: u64) -> Result<(), ClientError> {
        self.send(
            channel::AGENT,
            Payload::message_end(message_id, Some(tokens)),
        )
        .await
    }

    /// Ends the run with RUN_FINISHED.
    pub async fn finish(self, status: RunStatus) -> Result<(), ClientError> {
        let payload = Payload::RunFinished(RunFinished {
            run_id: Some(self.run_id.clone()),
            status: Some(status),
            ..RunFinished::default()
        });
        self.end(payload).await
    }

    /// Ends the run with RUN_ERROR {code, message}.
    pub async fn fail(self, code: ErrorCode, message: &str) -> Result<(), ClientError> {
        let payload = Payload::RunError(ErrorPayload {
            code: code.as_str().to_string(),
            message: message.to_string(),
            related_id: None,
            detail: None,
            run_id: Some(self.run_id.clone()),
            extra: Map::new(),
        });
        self.end(payload).await
    }

    /// The end of a run goes out even while paused: it is what lets the server let go.
    async fn end(self, payload: Payload) -> Result<(), ClientError> {
        let mut env = Envelope::new(String::new(), "-", 0, 0, channel::AGENT, payload);
        env.run_id = Some(self.run_id.clone());
        self.connection.send_envelope(env).await
    }
}

impl Drop for WorkerRun {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.cancels.lock() {
            routes.runs.remove(&self.run_id);
        }
    }
}
