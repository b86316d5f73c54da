//! A connection's driver task: connects, reconnects with backoff, resumes, renews the
//! token, and moves messages between the application and the [`ClientSession`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt;
use haip_protocol::{Envelope, EventType, Payload};
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::ConnectionConfig;
use crate::error::ClientError;
use crate::inbox::{Command, Credit, Meta, Received, Status};
use crate::link::{Dial, Link, Wire};
use crate::session::{ClientSession, Incoming, Output};
use crate::topic::{topic, Pattern};
use crate::Transport;

/// The `exp` of a JWT, in ms since the epoch (the payload is read, not verified: the
/// server verifies; the client only needs to know when to renew).
fn jwt_expiry_ms(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["exp"].as_u64().map(|secs| secs * 1000)
}

/// Most frames read (or commands applied) in one go before the connection's loop looks at
/// its other work.
const MAX_READ_BURST: usize = 64;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A uniform draw from [0, 1) for jitter, from the clock and a counter (no RNG crate
/// needed: the point is only that clients do not agree).
pub(crate) fn jitter_unit() -> f64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut x = now_ms() ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

pub(crate) struct Driver {
    pub(crate) errors: broadcast::Sender<ClientError>,
    pub(crate) last_failure: watch::Sender<Option<ClientError>>,
    /// When to renew the connection for a fresh token (token provider only).
    pub(crate) refresh_at: Option<tokio::time::Instant>,
    pub(crate) id: Arc<str>,
    pub(crate) config: ConnectionConfig,
    pub(crate) session: ClientSession,
    pub(crate) subscribers: Vec<(Pattern, mpsc::UnboundedSender<Received>)>,
    /// The channel and topic of each (channel, type) met so far, made once and shared by
    /// the messages.
    pub(crate) labels: Vec<(Arc<str>, EventType, Arc<str>)>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) latency: watch::Sender<Option<u64>>,
    pub(crate) session_id: watch::Sender<Option<String>>,
    /// Made on the first connect from `config.ca_cert`, then kept.
    pub(crate) http: Option<reqwest::Client>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

/// Why a connection's loop ended.
enum LoopEnd {
    Lost(ClientError),
    /// The server refused us for good (a token it will not take): retrying cannot help.
    Refused(ClientError),
    Closed,
    /// The token is about to expire: reconnect at once with a fresh one and resume.
    RefreshToken,
}

impl Driver {
    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.session = ClientSession::new(self.config.session.clone());
        // Subscriptions made right after `start` are in place before anything arrives, so
        // that they see the session's first messages (its HAI and TOOL_LIST) too.
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Close => {
                    let _ = self.status.send(Status::Disconnected);
                    return;
                }
                cmd => {
                    let _ = self.apply(cmd, now_ms()).await;
                }
            }
        }
        let mut attempt: u32 = 0;
        let mut last_error: Option<ClientError>;
        let outcome = loop {
            let _ = self.status.send(if attempt == 0 {
                Status::Connecting
            } else {
                Status::Reconnecting {
                    attempt,
                    delay: Duration::ZERO,
                }
            });
            match self.connect().await {
                Ok(link) => {
                    attempt = 0;
                    match self.serve(link, &mut commands).await {
                        LoopEnd::Closed => break Status::Disconnected,
                        LoopEnd::RefreshToken => {
                            self.session.disconnected();
                            continue;
                        }
                        LoopEnd::Lost(e) => {
                            tracing::debug!(server = %self.id, error = %e, "connection lost");
                            last_error = Some(e);
                            let _ = self.last_failure.send(last_error.clone());
                        }
                        LoopEnd::Refused(e) => {
                            let _ = self.last_failure.send(Some(e.clone()));
                            break Status::Error(e);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(server = %self.id, error = %e, "connect failed");
                    if e.is_permanent() {
                        // A refused token, a wrong path, a bad URL: trying again cannot help.
                        let _ = self.last_failure.send(Some(e.clone()));
                        break Status::Error(e);
                    }
                    last_error = Some(e);
                    let _ = self.last_failure.send(last_error.clone());
                }
            }
            self.session.disconnected();
            attempt += 1;
            if !self.config.reconnect.allows(attempt) {
                break Status::Error(last_error.take().unwrap_or(ClientError::Stopped));
            }
            let delay = self.config.reconnect.delay(attempt, jitter_unit());
            let _ = self.status.send(Status::Reconnecting { attempt, delay });
            // Commands keep flowing while waiting: sends are queued for the next connection.
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    cmd = commands.recv() => match cmd {
                        None | Some(Command::Close) => {
                            let _ = self.status.send(Status::Disconnected);
                            return;
                        }
                        Some(cmd) => { self.apply(cmd, now_ms()).await; }
                    }
                }
            }
        };
        let _ = self.status.send(outcome);
        // Anyone still waiting learns the client stopped.
        commands.close();
        while let Some(cmd) = commands.recv().await {
            if let Command::Send { done, .. } = cmd {
                let _ = done.send(Err(ClientError::Stopped));
            }
        }
    }

    /// The TLS settings and HTTP client of this connection, made once.
    fn tls_and_http(
        &mut self,
    ) -> Result<(Arc<rustls::ClientConfig>, reqwest::Client), ClientError> {
        if let (Some(tls), Some(http)) = (&self.tls, &self.http) {
            return Ok((tls.clone(), http.clone()));
        }
        let tls =
            crate::tls::client_config(self.config.ca_cert.as_deref()).map_err(ClientError::Tls)?;
        let http = crate::tls::http_client_builder_with(&tls)
            .build()
            .map_err(ClientError::transport)?;
        self.tls = Some(tls.clone());
        self.http = Some(http.clone());
        Ok((tls, http))
    }

    async fn connect(&mut self) -> Result<Link, ClientError> {
        let token = match &self.config.token_provider {
            Some(provider) => Some(provider().await?),
            None => self.config.token.clone(),
        };
        // With a provider, the connection is renewed shortly before the token expires.
        self.refresh_at = match (&self.config.token_provider, &token) {
            (Some(_), Some(t)) => jwt_expiry_ms(t).map(|exp| {
                let left = exp.saturating_sub(now_ms());
                // A tenth of the lifetime early, at least 1 s and at most 30 s, but never
                // before half of it.
                let early = (left / 10).clamp(1_000, 30_000).min(left / 2);
                tokio::time::Instant::now() + Duration::from_millis(left - early)
            }),
            _ => None,
        };
        let resume = self
            .session
            .session_id()
            .map(|s| (s.to_string(), self.session.last_rx_seq().unwrap_or(0)));
        let (tls, http) = self.tls_and_http()?;
        let dial = Dial {
            url: self.config.url.clone(),
            token,
            query: self.config.query_params.clone(),
            headers: self.config.headers.clone(),
            resume,
            timeout: self.config.timeout,
            tls,
        };
        let mut last = ClientError::Transport("no transport configured".into());
        for transport in self.config.transports.clone() {
            let hai = self.session.connected(now_ms());
            match Link::open(transport, &dial, &http, &hai).await {
                Ok(link) => return Ok(link),
                Err(e) => {
                    tracing::debug!(server = %self.id, transport = transport.as_str(), error = %e, "transport failed");
                    let fatal = matches!(e, ClientError::Http { status: 401, .. });
                    last = e;
                    if fatal {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Runs one open connection until it ends.
    async fn serve(
        &mut self,
        mut link: Link,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> LoopEnd {
        let transport = link.transport();
        let mut ping = self.config.ping_interval.map(|every| {
            // The first PING goes one interval after connecting, not at once.
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut pending_binary: Option<Envelope> = None;
        let mut lost = None;
        let mut closing = false;
        loop {
            let deadline = self.session.next_deadline().map(|at| {
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
            });
            let outputs = tokio::select! {
                frame = link.read() => {
                    let mut frame = Some(frame);
                    let mut outputs = Vec::new();
                    let now = now_ms(); // one clock read for the burst
                    // What else has arrived already is taken now, up to a bound: a burst
                    // is handled in one go rather than one select (and its timers) each.
                    for _ in 0..MAX_READ_BURST {
                        let Some(next) = frame.take().or_else(|| link.read().now_or_never()) else {
                            break;
                        };
                        match next {
                            Ok(Wire::Text(raw)) => outputs.extend(self.on_text(raw, transport, &mut pending_binary, now)),
                            Ok(Wire::Binary(data)) => outputs.extend(self.on_binary(data, transport, &mut pending_binary, now)),
                            Err(ended) => {
                                lost = Some(ended);
                                break;
                            }
                        }
                    }
                    outputs
                },
                cmd = commands.recv() => {
                    // Credit comes back one command per message taken: the commands
                    // already waiting are applied too, up to a bound, in one pass.
                    let mut outputs = Vec::new();
                    let now = now_ms();
                    let mut next = cmd;
                    let mut applied = 0;
                    loop {
                        match next.take() {
                            None | Some(Command::Close) => {
                                closing = true;
                                break;
                            }
                            Some(cmd) => outputs.extend(self.apply(cmd, now).await),
                        }
                        applied += 1;
                        if applied == MAX_READ_BURST {
                            break;
                        }
                        match commands.try_recv() {
                            Ok(cmd) => next = Some(cmd),
                            Err(_) => break,
                        }
                    }
                    outputs
                },
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    self.session.poll(now_ms())
                }
                _ = async { match self.refresh_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                    tracing::debug!(server = %self.id, "token about to expire: reconnecting with a fresh one");
                    link.close().await;
                    return LoopEnd::RefreshToken;
                }
                _ = async { match ping.as_mut() { Some(p) => { p.tick().await; } None => std::future::pending().await } } => {
                    if self.session.is_ready() { self.session.ping(now_ms()) } else { Vec::new() }
                }
            };
            if let Err(e) = self.handle(outputs, &mut link, transport).await {
                return LoopEnd::Lost(e);
            }
            if let Some(ended) = lost.take() {
                let e = ClientError::Closed(ended.code, ended.reason);
                // A token the server refused stays refused, unless a provider can give a
                // fresh one.
                if e.is_permanent() && self.config.token_provider.is_none() {
                    return LoopEnd::Refused(e);
                }
                return LoopEnd::Lost(e);
            }
            if closing {
                link.close().await;
                return LoopEnd::Closed;
            }
        }
    }

    fn on_text(
        &mut self,
        raw: Bytes,
        transport: Transport,
        pending_binary: &mut Option<Envelope>,
        now_ms: u64,
    ) -> Vec<Output> {
        let env = match Envelope::parse_bytes(&raw) {
            Ok(env) => env,
            Err(e) => {
                // A malformed frame from the server is reported, never fatal.
                tracing::warn!(server = %self.id, error = %e, "malformed message from server");
                let _ = self.errors.send(ClientError::Malformed {
                    code: e.code.as_str().to_string(),
                    field: e.field.clone(),
                    reason: e.reason.clone(),
                });
                return Vec::new();
            }
        };
        if env.bin_len.is_some() && transport == Transport::WebSocket {
            *pending_binary = Some(env);
            return Vec::new();
        }
        self.session.receive(Incoming::new(env, raw), now_ms)
    }

    fn on_binary(
        &mut self,
        data: Bytes,
        _transport: Transport,
        pending_binary: &mut Option<Envelope>,
        now_ms: u64,
    ) -> Vec<Output> {
        let Some(mut env) = pending_binary.take() else {
            tracing::warn!(server = %self.id, "binary frame without an envelope announcing it");
            return Vec::new();
        };
        if env.bin_len != Some(data.len() as u64) {
            tracing::warn!(server = %self.id, "binary frame length differs from bin_len");
            return Vec::new();
        }
        if let Payload::AudioChunk(chunk) = &mut env.payload {
            chunk.data = Some(data.to_vec());
        }
        env.bin_len = None;
        env.bin_mime = None;
        self.session.received(env, now_ms)
    }

    async fn apply(&mut self, cmd: Command, now_ms: u64) -> Vec<Output> {
        match cmd {
            Command::Send { env, done } => match self.session.submit(*env, now_ms) {
                Ok(out) => {
                    let _ = done.send(Ok(()));
                    out
                }
                Err(e) => {
                    let _ = done.send(Err(e.into()));
                    Vec::new()
                }
            },
            Command::Subscribe(p, tx) => {
                self.subscribers.push((p, tx));
                Vec::new()
            }
            Command::Consumed { channel, cost } => self.session.consumed(&channel, cost, now_ms),
            Command::Close => Vec::new(),
        }
    }

    async fn handle(
        &mut self,
        outputs: Vec<Output>,
        link: &mut Link,
        transport: Transport,
    ) -> Result<(), ClientError> {
        let mut writes = Vec::new();
        let now = now_ms();
        for out in outputs {
            match out {
                Output::Write(env) => writes.push(env),
                Output::Deliver(msg) => {
                    if let Payload::Hai(_) = msg.env.payload {
                        let _ = self.status.send(Status::Connected(transport));
                        let _ = self
                            .session_id
                            .send(self.session.session_id().map(str::to_string));
                    }
                    self.deliver(msg, transport, now);
                }
                Output::Latency(ms) => {
                    let _ = self.latency.send(Some(ms));
                }
                Output::SessionReplaced { old, new } => {
                    tracing::info!(server = %self.id, %old, %new, "session could not be resumed; a new one started");
                }
            }
        }
        if !writes.is_empty() || link.has_waiting() {
            link.write(&writes, self.session.peer_takes_binary())
                .await?;
        }
        Ok(())
    }

    /// The channel and topic of a message, shared with earlier messages of the same kind.
    fn labels_of(&mut self, channel: &str, event_type: EventType) -> (Arc<str>, Arc<str>) {
        if let Some((c, _, t)) = self
            .labels
            .iter()
            .find(|(c, e, _)| *e == event_type && **c == *channel)
        {
            return (c.clone(), t.clone());
        }
        let labels: (Arc<str>, Arc<str>) = (
            Arc::from(channel),
            Arc::from(topic(channel, event_type.as_str())),
        );
        // Channels are few; a server inventing a new one per message must not grow this.
        if self.labels.len() < 256 {
            self.labels
                .push((labels.0.clone(), event_type, labels.1.clone()));
        }
        labels
    }

    fn deliver(&mut self, msg: Incoming, transport: Transport, now_ms: u64) {
        let Incoming { env, raw, cost } = msg;
        let (channel, topic) = self.labels_of(&env.channel, env.event_type());
        let credit = Arc::new(Credit {
            returned: AtomicBool::new(false),
            channel,
            cost,
        });
        let received = Received {
            raw,
            message: Arc::new(env),
            meta: Meta {
                server_id: self.id.clone(),
                transport,
                topic,
                received_at_ms: now_ms,
            },
            credit: credit.clone(),
        };
        self.subscribers.retain(|(_, tx)| !tx.is_closed());
        let mut taken = false;
        for (pattern, tx) in &self.subscribers {
            if pattern.matches(&received.meta.topic) && tx.send(received.clone()).is_ok() {
                taken = true;
            }
        }
        if !taken && !credit.returned.swap(true, Ordering::AcqRel) {
            // Nobody wants it: its credit goes back at once.
            let _ = self.commands.send(Command::Consumed {
                channel: credit.channel.clone(),
                cost,
            });
        }
    }
}
