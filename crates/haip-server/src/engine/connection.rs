//! One client connection, whatever its transport.
//!
//! A transport adapter only turns bytes into [`Inbound`] items and writes batches of frames
//! through a [`FrameSink`]. Everything else happens here, once for all transports: parsing
//! and validation, two-frame binary pairing, resume on HAI, violation thresholds, the
//! heartbeat, token expiry, and writing what the session queues, in batches.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use haip_protocol::{Envelope, ErrorCode, Payload};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::clock::now_ms;
use super::core::Violation;
pub use super::metrics::Transport;
use super::outbound::{Close, ConnQueue, OutItem, Outgoing};
use super::registry::{Engine, Move};
use super::session::Session;

/// What a transport read from the client.
#[derive(Debug)]
pub enum Inbound {
    Text(Bytes),
    Binary(Bytes),
    /// A frame or line over the transport's size limit.
    TooLarge,
}

/// Where a connection's frames are written.
pub trait FrameSink: Send {
    /// Writes frames in order and flushes once.
    fn send_batch(
        &mut self,
        frames: &[Arc<Outgoing>],
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// A transport-level keepalive (WebSocket ping, SSE comment).
    fn keepalive(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the connection (WebSocket close frame; streams end).
    fn close(&mut self, close: &Close) -> impl Future<Output = ()> + Send;
}

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    pub transport: Transport,
    /// Whether the client reads HAIP messages and can answer PING (not plain SSE).
    pub bidirectional: bool,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// The token's `exp`, in ms since the epoch.
    pub token_expires_ms: Option<u64>,
    /// Ends the connection (session kept) after this long without a message from the
    /// client (`http_stream.timeout`).
    pub idle_timeout: Option<Duration>,
    /// How often the transport's keepalive is written (an SSE comment, an empty NDJSON
    /// line, a WebSocket ping frame): a client that went away is noticed by the write
    /// that fails, within this interval.
    pub keepalive_interval: Duration,
    /// HTTP streaming with `?end=answered`: once the request body has ended, the stream
    /// ends as soon as everything the body asked for is answered and written (no agent or
    /// tool at work, no run open, nothing queued). Without it the stream stays open for
    /// later messages posted to `POST /haip/messages`, as browsers need.
    pub end_when_answered: bool,
}

pub struct Connection {
    engine: Arc<Engine>,
    pub session: Arc<Session>,
    pub queue: Arc<ConnQueue>,
    options: ConnectionOptions,
    /// What only some connections ever wait for. Boxed: the connection's task would
    /// otherwise carry its size always, idle or not.
    waiting: Option<Box<Waiting>>,
}

/// What a connection may be waiting for (see [`Connection::waiting`]).
#[derive(Default)]
struct Waiting {
    /// A text envelope with `bin_len`, waiting for its binary frame, with its flow cost
    /// (the text frame plus `bin_len`).
    binary_for: Option<(Envelope, u64)>,
    /// Cluster mode: what the client sent after a HAI that resumes a session being
    /// claimed, handled once the connection is on it (see [`Connection::switch_to`]).
    held_for_switch: Option<Vec<(Envelope, u64)>>,
}

/// The most messages held while a resume is claimed from the store.
const MAX_HELD_FOR_SWITCH: usize = 1024;

/// A resume asked for at connect time: the session id and last_rx_seq, or why the request
/// could not be read (it then fails with RESUME_FAILED, never quietly becomes a fresh
/// session).
pub type ResumeRequest = Result<(String, u64), BadResume>;

/// A resume request that could not be read.
#[derive(Debug, Clone)]
pub struct BadResume {
    /// The session it named, if any ("" when none could be read).
    pub session: String,
    pub reason: String,
}

impl Connection {
    /// In cluster mode, brings the session a connection resumes to this node before the
    /// connection opens (contract section 13); a session that cannot be claimed fails the
    /// resume with the reason. Nothing to do in memory mode.
    pub async fn claim_resumed(
        engine: &Arc<Engine>,
        subject: &str,
        resume: Option<ResumeRequest>,
    ) -> Option<ResumeRequest> {
        if let Some(Ok((id, _))) = &resume {
            if let Err(e) = engine.claim_for_resume(subject, id).await {
                return Some(Err(BadResume {
                    session: id.clone(),
                    reason: e.to_string(),
                }));
            }
        }
        resume
    }

    /// Opens a connection for an authenticated `subject`: resumes `resume` (session id,
    /// last_rx_seq) when given and possible, else announces a fresh session. The session
    /// then follows `follow`, a thread id, when given.
    pub fn open(
        engine: Arc<Engine>,
        subject: &str,
        options: ConnectionOptions,
        resume: Option<ResumeRequest>,
        follow: Option<String>,
    ) -> Connection {
        let connection = Connection::attach(engine, subject, options, resume);
        if let Some(thread) = follow {
            connection.engine.follow(&thread, &connection.session);
        }
        connection
    }

    fn attach(
        engine: Arc<Engine>,
        subject: &str,
        options: ConnectionOptions,
        resume: Option<ResumeRequest>,
    ) -> Connection {
        let queue = Arc::new(ConnQueue::default());
        let binary = options.transport == Transport::WebSocket;
        engine.metrics.connection_opened(options.transport);
        let resume_error = match resume {
            None => None,
            Some(Ok((id, last))) => {
                match engine.resume(subject, &id, last, queue.clone(), binary) {
                    Ok(session) => {
                        tracing::info!(
                            transport = options.transport.as_str(),
                            session = %session.id,
                            subject = %session.subject,
                            last_rx_seq = last,
                            "connection opened: session resumed"
                        );
                        return Connection::new(engine, session, queue, options);
                    }
                    Err(e) => Some((id, e.to_string())),
                }
            }
            Some(Err(bad)) => Some((bad.session, bad.reason)),
        };
        if let Some((id, reason)) = resume_error {
            // Sent before the fresh session's HAI, as seq 0, so the fresh session still
            // starts at seq 1.
            queue.push(OutItem::Frame(Arc::new(Outgoing::unsequenced_error(
                ErrorCode::ResumeFailed,
                &reason,
                &id,
                now_ms(),
            ))));
        }
        let session = engine.open_session(subject, queue.clone(), binary);
        tracing::info!(
            transport = options.transport.as_str(),
            session = %session.id,
            subject = %session.subject,
            "connection opened: new session"
        );
        Connection::new(engine, session, queue, options)
    }

    fn new(
        engine: Arc<Engine>,
        session: Arc<Session>,
        queue: Arc<ConnQueue>,
        options: ConnectionOptions,
    ) -> Connection {
        Connection {
            engine,
            session,
            queue,
            options,
            waiting: None,
        }
    }

    /// A text frame or NDJSON line.
    pub fn on_text(&mut self, raw: &[u8]) {
        if let Some((waiting, _)) = self.waiting.as_mut().and_then(|w| w.binary_for.take()) {
            self.violation(
                ErrorCode::BinaryFrameError,
                "expected the binary frame announced by bin_len, got a text frame",
                Some(waiting.id),
            );
        }
        let env = match Envelope::parse_bytes(raw) {
            Ok(env) => env,
            Err(e) => {
                self.session.lock().refuse(&e, now_ms());
                return;
            }
        };
        if env.bin_len.is_some() && self.options.transport == Transport::WebSocket {
            let cost = env.flow_cost(raw.len());
            self.waiting.get_or_insert_with(Box::default).binary_for = Some((env, cost));
            return;
        }
        let cost = env.flow_cost(raw.len());
        self.deliver(env, cost)
    }

    /// A binary frame: the second half of a two-frame message.
    pub fn on_binary(&mut self, data: &[u8]) {
        let Some((mut env, cost)) = self.waiting.as_mut().and_then(|w| w.binary_for.take()) else {
            self.violation(
                ErrorCode::BinaryFrameError,
                "binary frame without an envelope announcing it (bin_len)",
                None,
            );
            return;
        };
        if env.bin_len != Some(data.len() as u64) {
            self.violation(
                ErrorCode::BinaryFrameError,
                &format!(
                    "binary frame of {} bytes, bin_len announced {}",
                    data.len(),
                    env.bin_len.unwrap_or(0)
                ),
                Some(env.id),
            );
            return;
        }
        if let Payload::AudioChunk(chunk) = &mut env.payload {
            chunk.data = Some(data.to_vec());
        }
        env.bin_len = None;
        env.bin_mime = None;
        self.deliver(env, cost)
    }

    /// A frame or line over the size limit: ERROR, then close 1009.
    pub fn on_too_large(&mut self) {
        self.error(
            ErrorCode::ProtocolViolation,
            "message larger than the transport's size limit",
            None,
        );
        self.queue.push(OutItem::Close(Close {
            code: 1009,
            reason: "message too big".into(),
        }));
    }

    fn deliver(&mut self, env: Envelope, cost: u64) {
        if let Some(held) = self
            .waiting
            .as_mut()
            .and_then(|w| w.held_for_switch.as_mut())
        {
            if held.len() >= MAX_HELD_FOR_SWITCH {
                self.violation(
                    ErrorCode::ProtocolViolation,
                    "too many messages sent before the resume completed",
                    Some(env.id),
                );
            } else {
                held.push((env, cost));
            }
            return;
        }
        if let Payload::Hai(hai) = &env.payload {
            if let Some(last) = hai.last_rx_seq {
                if env.session != self.session.id {
                    match self.engine.move_connection(
                        &self.session,
                        &env.session,
                        last,
                        env.id.clone(),
                    ) {
                        Move::Done(resumed) => self.session = resumed,
                        Move::Failed => {}
                        Move::Claiming => {
                            // Handled on the session the connection lands on.
                            self.waiting
                                .get_or_insert_with(Box::default)
                                .held_for_switch = Some(vec![(env, cost)]);
                            return;
                        }
                    }
                }
            }
        }
        self.engine.handle(&self.session, env, cost);
    }

    /// The connection serves `session` from now on; what the client sent while its
    /// resume was under way is handled there, in order.
    fn switch_to(&mut self, session: Arc<Session>) {
        self.session = session;
        if let Some(held) = self.waiting.as_mut().and_then(|w| w.held_for_switch.take()) {
            for (env, cost) in held {
                self.engine.handle(&self.session, env, cost);
            }
        }
    }

    fn error(&self, code: ErrorCode, message: &str, related_id: Option<String>) {
        self.session
            .lock()
            .emit_error(code, message, related_id, None, now_ms());
    }

    /// Answers a protocol violation with ERROR and counts it towards the close threshold.
    fn violation(&self, code: ErrorCode, message: &str, related_id: Option<String>) {
        let mut core = self.session.lock();
        core.emit_error(code, message, related_id, None, now_ms());
        core.count_violation(Violation::Protocol);
    }

    /// Leaves the session resumable and updates the counters.
    pub fn finish(&self) {
        tracing::info!(
            transport = self.options.transport.as_str(),
            session = %self.session.id,
            "connection closed: session kept for resume"
        );
        self.session.lock().detach(&self.queue, now_ms());
        self.engine.note_detached(&self.session);
        self.engine
            .metrics
            .connection_closed(self.options.transport);
    }

    /// Runs the connection until either side ends it: reads `inbound`, writes what the
    /// session queues to `sink` in batches, and keeps the timers (gap replay requests,
    /// delayed credit grants, heartbeat, token expiry).
    pub async fn run<S: FrameSink>(
        mut self,
        mut inbound: impl Stream<Item = Inbound> + Unpin + Send,
        mut sink: S,
        shutdown: CancellationToken,
    ) {
        let mut next_ping = Instant::now() + self.options.heartbeat_interval;
        let mut next_keepalive = Instant::now() + self.options.keepalive_interval;
        let mut ping_sent: Option<(Instant, u64)> = None;
        let expiry = self
            .options
            .token_expires_ms
            .map(|exp| Instant::now() + Duration::from_millis(exp.saturating_sub(now_ms())));
        let mut batch: Vec<OutItem> = Vec::new();
        let mut frames: Vec<Arc<Outgoing>> = Vec::new();
        let mut inbound_open = true;
        'conn: loop {
            if !inbound_open && self.options.end_when_answered && self.is_done() {
                tracing::info!(session = %self.session.id, "request body answered: ending the stream, session kept");
                Box::pin(sink.close(&Close {
                    code: 1000,
                    reason: "answered".into(),
                }))
                .await;
                break 'conn;
            }
            let timer = self
                .next_timer(next_ping, ping_sent, expiry)
                .min(next_keepalive);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    Box::pin(self.flush_queue(&mut sink)).await;
                    Box::pin(sink.close(&Close { code: 1001, reason: "server shutting down".into() })).await;
                    break 'conn;
                }
                _ = self.queue.drain(&mut batch) => {
                    let mut close = None;
                    for item in batch.drain(..) {
                        match item {
                            OutItem::Frame(f) => frames.push(f),
                            OutItem::Close(c) => { close = Some(c); break; }
                            OutItem::Switch(to) => {
                                match to.session::<Session>() {
                                    Some(session) => self.switch_to(session),
                                    // The engine queues only its own sessions.
                                    None => tracing::error!("a switch to something not a session"),
                                }
                            }
                        }
                    }
                    if !frames.is_empty() {
                        // A write that makes no progress for this long means the peer is
                        // gone or not reading (a half-open connection never errors).
                        let stall = self.options.heartbeat_interval + self.options.heartbeat_timeout;
                        self.queue.set_writing(true);
                        // Boxed, like every await below that is not the wait itself: the
                        // task's size is that of its largest await, paid while idle too.
                        let sent = Box::pin(async {
                            tokio::select! {
                                r = tokio::time::timeout(stall, sink.send_batch(&frames)) => {
                                    r.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")))
                                }
                                _ = self.queue.aborted() => Err(io::Error::other("connection aborted")),
                            }
                        }).await;
                        self.queue.set_writing(false);
                        self.engine.metrics.frames_written(&frames);
                        frames.clear();
                        if let Err(e) = sent {
                            tracing::info!(session = %self.session.id, error = %e, "write failed: dropping connection, session kept");
                            break 'conn;
                        }
                    }
                    if let Some(c) = close {
                        Box::pin(sink.close(&c)).await;
                        break 'conn;
                    }
                }
                _ = self.queue.timers_changed() => {}
                item = inbound.next(), if inbound_open => {
                    match item {
                        Some(Inbound::Text(t)) => self.on_text(&t),
                        Some(Inbound::Binary(b)) => self.on_binary(&b),
                        Some(Inbound::TooLarge) => self.on_too_large(),
                        None => {
                            if self.options.transport == Transport::HttpStream
                                || self.options.end_when_answered
                            {
                                // The request body ended; the response goes on (browsers
                                // send later messages with POST), or until everything
                                // is answered.
                                inbound_open = false;
                                continue 'conn;
                            }
                            break 'conn;
                        }
                    }
                }
                _ = tokio::time::sleep_until(timer) => {
                    let now = Instant::now();
                    let now_wall = now_ms();
                    {
                        let mut core = self.session.lock();
                        core.poll_gap(now_wall);
                        core.flush_grants(now_wall);
                    }
                    if expiry.is_some_and(|e| now >= e) {
                        self.error(ErrorCode::AuthenticationFailed, "token expired", None);
                        self.queue.push(OutItem::Close(Close { code: 1008, reason: "token expired".into() }));
                        continue 'conn;
                    }
                    // Once the body ended with `end_when_answered`, the client can send
                    // nothing more: it is waiting for the answer, not idle, and cannot
                    // answer a PING.
                    let awaiting_answer = !inbound_open && self.options.end_when_answered;
                    if let Some(idle) = self.options.idle_timeout.filter(|_| !awaiting_answer) {
                        let quiet_ms = now_wall.saturating_sub(self.session.lock().last_client_activity_ms());
                        if quiet_ms >= idle.as_millis() as u64 {
                            tracing::info!(session = %self.session.id, "idle timeout: ending the stream, session kept");
                            Box::pin(sink.close(&Close { code: 1000, reason: "idle timeout".into() })).await;
                            break 'conn;
                        }
                    }
                    if let Some((sent_at, sent_wall)) = ping_sent {
                        if now >= sent_at + self.options.heartbeat_timeout {
                            let heard = self.session.lock().last_client_activity_ms() >= sent_wall;
                            if !heard && self.options.bidirectional && !awaiting_answer {
                                tracing::info!(session = %self.session.id, "heartbeat timeout: closing connection, session kept");
                                Box::pin(sink.close(&Close { code: 1001, reason: "heartbeat timeout".into() })).await;
                                break 'conn;
                            }
                            ping_sent = None;
                        }
                    }
                    if now >= next_keepalive {
                        if Box::pin(sink.keepalive()).await.is_err() { break 'conn; }
                        next_keepalive = now + self.options.keepalive_interval;
                    }
                    if now >= next_ping {
                        self.session.lock().ping(now_wall);
                        // The oldest unanswered PING keeps its deadline: replacing it with
                        // each new PING would postpone the timeout forever when the
                        // timeout is not shorter than the interval.
                        let answered = ping_sent.is_some_and(|(_, sent_wall)| {
                            self.session.lock().last_client_activity_ms() >= sent_wall
                        });
                        if ping_sent.is_none() || answered {
                            ping_sent = Some((now, now_wall));
                        }
                        next_ping = now + self.options.heartbeat_interval;
                    }
                }
            }
        }
        self.finish();
    }

    /// Everything asked for is answered and every frame queued so far is written.
    fn is_done(&self) -> bool {
        self.queue.is_empty() && self.session.is_answered()
    }

    fn next_timer(
        &self,
        next_ping: Instant,
        ping_sent: Option<(Instant, u64)>,
        expiry: Option<Instant>,
    ) -> Instant {
        let opts = &self.options;
        let mut t = next_ping;
        if let Some((sent, _)) = ping_sent {
            t = t.min(sent + opts.heartbeat_timeout);
        }
        if let Some(e) = expiry {
            t = t.min(e);
        }
        let core = self.session.lock();
        let now_wall = now_ms();
        let idle_deadline = opts
            .idle_timeout
            .map(|idle| core.last_client_activity_ms() + idle.as_millis() as u64);
        for deadline in [
            core.next_gap_deadline(),
            core.next_grant_ms(),
            idle_deadline,
        ]
        .into_iter()
        .flatten()
        {
            t = t.min(Instant::now() + Duration::from_millis(deadline.saturating_sub(now_wall)));
        }
        t
    }

    /// Writes what is still queued before a shutdown close, for at most two seconds (a
    /// client that does not read must not hold up the exit; the session stays resumable
    /// for as long as the process lives).
    async fn flush_queue<S: FrameSink>(&self, sink: &mut S) {
        let frames: Vec<Arc<Outgoing>> = self
            .queue
            .take_now()
            .into_iter()
            .filter_map(|i| match i {
                OutItem::Frame(f) => Some(f),
                OutItem::Close(_) | OutItem::Switch(_) => None,
            })
            .collect();
        let write_all = async {
            for chunk in frames.chunks(super::outbound::MAX_BATCH_FRAMES) {
                if sink.send_batch(chunk).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), write_all).await;
    }
}

/// An ERROR frame for a connection that has no session (authentication failed).
pub fn sessionless_error(code: ErrorCode, message: &str) -> Bytes {
    let id = uuid::Uuid::new_v4().to_string();
    Outgoing::unsequenced_error(code, message, &id, now_ms()).json()
}
