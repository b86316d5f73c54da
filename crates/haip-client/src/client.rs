//! The async client: named servers, each with a driver task that connects, reconnects with
//! backoff, resumes, and moves messages between the application and the [`ClientSession`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haip_protocol::{Envelope, Payload};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use crate::config::{ConnectionConfig, TokenProvider};
use crate::driver::{jitter_unit, now_ms, Driver};
use crate::error::ClientError;
use crate::inbox::Command;
pub use crate::inbox::{Meta, Received, Status, Subscription};
use crate::session::{ClientSession, SessionConfig};
use crate::topic::Pattern;
use crate::Transport;

/// A handle on one server's connection. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    id: String,
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
    latency: watch::Receiver<Option<u64>>,
    session: watch::Receiver<Option<String>>,
    errors: broadcast::Sender<ClientError>,
    /// Why the last connection attempt failed or the last connection ended.
    last_failure: watch::Receiver<Option<ClientError>>,
}

impl Connection {
    /// Starts connecting in the background (on the current tokio runtime).
    pub fn start(id: impl Into<String>, config: ConnectionConfig) -> Connection {
        let id = id.into();
        let (commands, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Status::Disconnected);
        let (latency_tx, latency) = watch::channel(None);
        let (session_tx, session) = watch::channel(None);
        let (errors, _) = broadcast::channel(64);
        let (failure_tx, last_failure) = watch::channel(None);
        let driver = Driver {
            errors: errors.clone(),
            last_failure: failure_tx,
            refresh_at: None,
            id: Arc::from(id.as_str()),
            config,
            session: ClientSession::new(SessionConfig::default()),
            subscribers: Vec::new(),
            labels: Vec::new(),
            status: status_tx,
            latency: latency_tx,
            session_id: session_tx,
            http: None,
            tls: None,
            commands: commands.clone(),
        };
        tokio::spawn(driver.run(rx));
        Connection {
            id,
            commands,
            status,
            latency,
            session,
            errors,
            last_failure,
        }
    }

    /// Problems that do not end the connection (a malformed message from the server),
    /// as typed errors.
    pub fn errors(&self) -> broadcast::Receiver<ClientError> {
        self.errors.subscribe()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The connection status, as a value that changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The last measured PING round trip, in ms.
    pub fn latency_ms(&self) -> Option<u64> {
        *self.latency.borrow()
    }

    /// The server's session id, once known.
    pub fn session_id(&self) -> Option<String> {
        self.session.borrow().clone()
    }

    /// Waits until connected (or `timeout`).
    pub async fn connected(&self, timeout: Duration) -> Result<Transport, ClientError> {
        let mut status = self.status.clone();
        let wait = async {
            loop {
                match &*status.borrow_and_update() {
                    Status::Connected(t) => return Ok(*t),
                    Status::Error(e) => return Err(e.clone()),
                    _ => {}
                }
                if status.changed().await.is_err() {
                    return Err(ClientError::Stopped);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            // Say why, when an attempt failed: "HTTP 503" helps more than a timeout.
            Err(_) => Err(match self.last_failure.borrow().clone() {
                Some(last) => ClientError::NotConnected {
                    waited: timeout,
                    last: Box::new(last),
                },
                None => ClientError::Timeout(timeout),
            }),
        }
    }

    /// Messages whose topic matches `pattern` (`agent.*`, `*.tool_done`, `agent.>`).
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription, ClientError> {
        let pattern = Pattern::parse(pattern)?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.commands
            .send(Command::Subscribe(pattern, tx))
            .map_err(|_| ClientError::Stopped)?;
        Ok(Subscription {
            rx,
            commands: self.commands.clone(),
        })
    }

    /// Sends one message on `channel`. Resolves once it is queued: written now, or kept
    /// for the next connection (it is never dropped while the client lives).
    pub async fn send(&self, channel: &str, payload: Payload) -> Result<(), ClientError> {
        let env = Envelope::new(String::new(), "-", 0, 0, channel, payload);
        self.send_envelope(env).await
    }

    /// Sends a prepared envelope (set `run_id`, `thread_id` as needed; the id, seq,
    /// session and ts are filled in).
    pub async fn send_envelope(&self, env: Envelope) -> Result<(), ClientError> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::Send {
                env: Box::new(env),
                done,
            })
            .map_err(|_| ClientError::Stopped)?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Sends a whole text message on USER (MESSAGE_START, MESSAGE_PART, MESSAGE_END) and
    /// returns its message_id.
    pub async fn send_text(&self, text: &str) -> Result<String, ClientError> {
        self.send_text_in_thread(text, None).await
    }

    /// Sends a whole text message on USER in `thread_id`: the agent answers in that thread,
    /// and every session of the same user that follows it (connected with `?thread=ID`)
    /// receives the answer too.
    pub async fn send_text_in_thread(
        &self,
        text: &str,
        thread_id: Option<&str>,
    ) -> Result<String, ClientError> {
        use haip_protocol::channel;
        let id = format!(
            "text-{}-{}",
            now_ms(),
            jitter_unit().to_bits() & 0xffff_ffff
        );
        let payloads = [
            Payload::message_start(id.clone(), Some("user")),
            Payload::message_part(id.clone(), text),
            Payload::message_end(id.clone(), None),
        ];
        for payload in payloads {
            let mut env = Envelope::new(String::new(), "-", 0, 0, channel::USER, payload);
            env.thread_id = thread_id.map(str::to_string);
            self.send_envelope(env).await?;
        }
        Ok(id)
    }

    /// Stops the connection for good.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// Several named servers in one object, as front-end frameworks keep them.
#[derive(Default)]
pub struct Client {
    servers: Mutex<HashMap<String, Connection>>,
}

impl Client {
    pub fn new() -> Client {
        Client::default()
    }

    /// Starts connecting to a server under `id` (replacing one of the same id).
    pub fn register_server(&self, id: &str, config: ConnectionConfig) -> Connection {
        let conn = Connection::start(id, config);
        let old = self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), conn.clone());
        if let Some(old) = old {
            old.close();
        }
        conn
    }

    pub fn server(&self, id: &str) -> Option<Connection> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}
