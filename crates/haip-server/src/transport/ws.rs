//! WebSocket: `GET /haip/websocket`, and the upgrade at `/` (contract section 4.1), on
//! `yawc`, with permessage-deflate (RFC 7692) when the client offers it and
//! `websocket_per_message_deflate` is on. Also the Autobahn conformance echo endpoint, which
//! runs on exactly the same stack and settings.
//!
//! This module only moves frames: [`WsInbound`] turns what the client sends into
//! [`Inbound`] items, [`WsSink`] writes what the connection sends, and the closing
//! handshake is completed here. Everything about HAIP happens in [`Connection`].

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, Stream, StreamExt};
use haip_protocol::ErrorCode;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use yawc::close::CloseCode;
use yawc::{
    CompressionLevel, DeflatePool, Frame, HttpWebSocket, OpCode, Options, Role, WebSocket,
    WebSocketError,
};

use crate::config::ServerConfig;
use crate::engine::connection::{sessionless_error, Connection, FrameSink, Inbound, Transport};
use crate::engine::outbound::{Close, Outgoing, MAX_BATCH_FRAMES};
use crate::state::{bearer, SharedState};
use crate::transport::ConnectParams;

/// Initial size of each connection's read and write buffers; they grow for larger frames
/// and batches and shrink back afterwards. Small, because an idle connection keeps them:
/// 512 bytes hold a typical client message, and 1 KiB cost 478 bytes more per session.
const BUFFER_CAPACITY: usize = 512;
/// How long a connection waits for the client's close frame after sending its own.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Deflate state shared by every connection. With no context takeover in either direction
/// a connection holds deflate state only while it compresses or decompresses a message, so
/// idle connections cost a few KiB instead of hundreds.
fn deflate_pool() -> DeflatePool {
    static POOL: OnceLock<DeflatePool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        DeflatePool::new(2 * threads)
    })
    .clone()
}

/// The yawc settings of every WebSocket this server accepts, the HAIP endpoints and the
/// Autobahn echo alike. `request` is the upgrade request's headers.
pub fn options(config: &ServerConfig, request: &HeaderMap) -> Options {
    // yawc's limit is exclusive; the contract's is inclusive (only "larger than" closes).
    // UTF-8 is checked by [`WsInbound`], which must tell a bad message (its close to send)
    // from a bad close reason (yawc closes).
    let limit = config.websocket_max_payload.saturating_add(1);
    let options = Options::default()
        .with_limits(limit, limit)
        .with_read_buffer_capacity(BUFFER_CAPACITY)
        .with_write_buffer_capacity(BUFFER_CAPACITY);
    if !config.websocket_per_message_deflate {
        return options;
    }
    // Both directions without context takeover (RFC 7692 lets the server impose it), so the
    // shared pool applies.
    let options = options
        .with_compression_level(CompressionLevel::fast())
        .server_no_context_takeover()
        .client_no_context_takeover()
        .with_deflate_pool(deflate_pool())
        .with_compression_threshold(config.websocket_compression_threshold);
    // A client that offers client_max_window_bits with no value gets the full window (yawc
    // would otherwise answer 9). One that does not offer it must not get the parameter back
    // (RFC 7692 section 7.1.2.2).
    if offers_client_window_bits(request) {
        options.with_client_max_window_bits(15)
    } else {
        options
    }
}

fn offers_client_window_bits(headers: &HeaderMap) -> bool {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("client_max_window_bits"))
}

/// The subprotocols the client offered.
fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The token offered as `Sec-WebSocket-Protocol: haip, token.JWT`.
pub(crate) fn protocol_token(headers: &HeaderMap) -> Option<String> {
    offered_protocols(headers).find_map(|p| p.strip_prefix("token.").map(str::to_string))
}

/// Whether `headers` ask for a WebSocket (`Upgrade: websocket`, `Connection: upgrade`).
pub(crate) fn wants_websocket(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(UPGRADE, "websocket") && has(CONNECTION, "upgrade")
}

/// An accepted WebSocket handshake: the 101 answer, and what opens the socket once the
/// client has it.
pub(crate) struct Handshake {
    response: Response,
    on_upgrade: OnUpgrade,
    options: Options,
    /// The agreed `Sec-WebSocket-Extensions`.
    extensions: Option<String>,
}

/// Checks the upgrade request (key, version, extension offer) with yawc and builds the
/// answer; the error is the 400 to send.
///
/// yawc builds the answer, but the socket is opened here from hyper's upgrade rather than
/// by yawc's upgrade future, so that it reads through [`Checked`].
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
pub(crate) fn handshake(req: &mut Request, config: &ServerConfig) -> Result<Handshake, Response> {
    let bad = |reason: &str| (StatusCode::BAD_REQUEST, reason.to_string()).into_response();
    if !wants_websocket(req.headers()) {
        return Err(bad("not a WebSocket upgrade request"));
    }
    let options = options(config, req.headers());
    let on_upgrade = hyper::upgrade::on(&mut *req);
    // yawc's upgrade future is dropped: it finds no upgrade left in the request.
    let (response, _) = HttpWebSocket::upgrade_with_options(&mut *req, options.clone())
        .map_err(|e| bad(&e.to_string()))?;
    let mut response = response.map(Body::new);
    let extensions = response
        .headers()
        .get(SEC_WEBSOCKET_EXTENSIONS)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // The subprotocol is `haip` when offered; a token offered as `token.JWT` is never
    // echoed.
    if offered_protocols(req.headers()).any(|p| p == "haip") {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("haip"));
    }
    Ok(Handshake {
        response,
        on_upgrade,
        options,
        extensions,
    })
}

/// A connection's whole life on its WebSocket, boxed: its size is only known once built.
pub(crate) type ConnectionTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Sends the 101 answer and, once the client has it, runs the connection `open` makes of
/// the WebSocket in a task of its own. The task that waited for the upgrade then ends, so
/// an idle connection keeps only its own state, not that of its handshake.
pub(crate) fn accept<F>(hs: Handshake, open: F) -> Response
where
    F: FnOnce(WsConn) -> ConnectionTask + Send + 'static,
{
    let Handshake {
        response,
        on_upgrade,
        options,
        extensions,
    } = hs;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        let violation = Arc::new(OnceLock::new());
        let io = Checked::new(TokioIo::new(upgraded), violation.clone());
        match WebSocket::from_stream_with_extensions(
            io,
            Role::Server,
            extensions.as_deref(),
            options,
        ) {
            Ok(ws) => {
                tokio::spawn(open(WsConn::new(ws, violation)));
            }
            Err(e) => tracing::debug!(error = %e, "websocket setup failed"),
        }
    });
    response
}

pub async fn upgrade(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    mut req: Request,
) -> Response {
    match handshake(&mut req, &state.config) {
        Ok(hs) => haip(state, params, req.headers(), hs).await,
        Err(r) => r,
    }
}

/// `/`: a WebSocket upgrade for clients of the reference server, else a short page.
pub async fn root(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    mut req: Request,
) -> Response {
    if wants_websocket(req.headers()) {
        return match handshake(&mut req, &state.config) {
            Ok(hs) => haip(state, params, req.headers(), hs).await,
            Err(r) => r,
        };
    }
    crate::web::index()
}

/// A HAIP connection over an accepted handshake.
async fn haip(
    state: SharedState,
    params: ConnectParams,
    headers: &HeaderMap,
    hs: Handshake,
) -> Response {
    let follow = match params.follow() {
        Ok(f) => f,
        Err(r) => return r,
    };
    let token = params
        .token
        .clone()
        .or_else(|| bearer(headers).map(str::to_string))
        .or_else(|| protocol_token(headers));
    let verdict = match token {
        Some(t) => state.auth.verify_user(&t).map_err(|e| e.to_string()),
        None => Err("missing token".to_string()),
    };
    // Only an authenticated connection takes a slot: refusals cannot crowd out others
    // while their ERROR and close go out.
    let slot = match &verdict {
        Ok(_) => match state.admit(Transport::WebSocket) {
            Ok(s) => Some(s),
            Err(r) => return r,
        },
        Err(_) => None,
    };
    // Cluster mode: the session to resume is brought here before the upgrade.
    let resume = match &verdict {
        Ok(identity) => {
            Connection::claim_resumed(&state.engine, &identity.subject, params.resume()).await
        }
        Err(_) => None,
    };
    accept(hs, move |conn| {
        // Set up now, so that the task keeps only what the connection needs (the run
        // itself is boxed: awaiting a future held by value would keep it twice).
        let run: ConnectionTask = match verdict {
            Ok(identity) => {
                let options = state.options(Transport::WebSocket, &identity);
                let connection = Connection::open(
                    state.engine.clone(),
                    &identity.subject,
                    options,
                    resume,
                    follow,
                );
                Box::pin(connection.run(
                    WsInbound(conn.clone()),
                    WsSink(conn.clone()),
                    state.shutdown.clone(),
                ))
            }
            Err(reason) => {
                // Browsers cannot read the status of a failed upgrade, so the upgrade is
                // accepted and the reason sent as ERROR before closing with 1008.
                tracing::info!(%reason, "websocket authentication failed");
                let conn = conn.clone();
                Box::pin(async move {
                    let error = sessionless_error(ErrorCode::AuthenticationFailed, &reason);
                    let _ = conn.send([Frame::text(error)]).await;
                    // The reason travels in the close frame too (at most 123 bytes), for
                    // clients that only look there.
                    let mut close_reason = format!("authentication failed: {reason}");
                    while close_reason.len() > 123 {
                        close_reason.pop();
                    }
                    conn.send_close(CloseCode::Policy, &close_reason).await;
                })
            }
        };
        Box::pin(async move {
            let _slot = slot;
            run.await;
            Box::pin(conn.finish()).await;
        })
    })
}

/// The most copies `/autobahn?repeat=N` sends of one message.
const MAX_REPEAT: usize = 1_000_000;

/// `/autobahn` (only with `autobahn_echo`): echoes every message, with no authentication
/// and no HAIP, on the same WebSocket stack and settings as `/haip/websocket`, for the
/// Autobahn conformance suite (`scripts/autobahn`). With `?repeat=N` each text message is
/// sent back N times, in batches as large as a HAIP connection's: the bare transport doing
/// what a HAIP stream does (one message in, many out), which `haip bench` measures as the
/// ceiling HAIP figures are compared with.
pub async fn autobahn_echo(
    State(state): State<SharedState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    mut req: Request,
) -> Response {
    let repeat = match query.get("repeat").map(|r| r.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if (1..=MAX_REPEAT).contains(&n) => n,
        Some(_) => {
            let reason = format!("repeat must be 1 to {MAX_REPEAT}");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let hs = match handshake(&mut req, &state.config) {
        Ok(hs) => hs,
        Err(r) => return r,
    };
    let slot = match state.admit(Transport::WebSocket) {
        Ok(s) => s,
        Err(r) => return r,
    };
    accept(hs, move |conn| {
        Box::pin(async move {
            let _slot = slot;
            let mut inbound = WsInbound(conn.clone());
            while let Some(item) = inbound.next().await {
                let sent = match item {
                    Inbound::Text(t) => send_copies(&conn, &t, repeat).await,
                    Inbound::Binary(b) => conn.send([Frame::binary(b)]).await,
                    Inbound::TooLarge => continue,
                };
                if sent.is_err() {
                    break;
                }
            }
            conn.finish().await;
        })
    })
}

/// Sends `n` copies of a text message, at most [`MAX_BATCH_FRAMES`] per write like a HAIP
/// connection.
async fn send_copies(conn: &WsConn, text: &bytes::Bytes, n: usize) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let batch = left.min(MAX_BATCH_FRAMES);
        conn.send((0..batch).map(|_| Frame::text(text.clone())))
            .await?;
        left -= batch;
    }
    Ok(())
}

/// One WebSocket, shared by its reading and writing halves. Both are driven by the same
/// task and never at the same moment, so the lock is never contended; it is only held
/// within a poll.
#[derive(Clone)]
pub(crate) struct WsConn(Arc<Mutex<WsState>>);

struct WsState {
    ws: WebSocket<Checked<TokioIo<Upgraded>>>,
    /// A close frame has been sent or queued, by this module or by yawc (answering the
    /// client's close, or failing the connection): nothing may follow it.
    close_sent: bool,
    /// yawc reads nothing more: the client's close came, the stream ended, or a protocol
    /// error failed the connection.
    read_closed: bool,
    /// The close this module owes the client, for errors that yawc reports without
    /// closing.
    owed_close: Option<(CloseCode, &'static str)>,
    /// A frame over the size limit was read: reported once yawc's 1009 close is out.
    too_large: bool,
    /// Set by [`Checked`] when it ended the input at a bad frame.
    violation: Arc<OnceLock<&'static str>>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "websocket closing")
}

impl WsConn {
    fn new(
        ws: WebSocket<Checked<TokioIo<Upgraded>>>,
        violation: Arc<OnceLock<&'static str>>,
    ) -> WsConn {
        WsConn(Arc::new(Mutex::new(WsState {
            ws,
            close_sent: false,
            read_closed: false,
            owed_close: None,
            too_large: false,
            violation,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, WsState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `frames` in order, then flushes once. Refuses once a close frame is out.
    pub(crate) async fn send(&self, frames: impl IntoIterator<Item = Frame>) -> io::Result<()> {
        for frame in frames {
            poll_fn(|cx| {
                let mut s = self.lock();
                if s.close_sent {
                    return Poll::Ready(Err(closed()));
                }
                Pin::new(&mut s.ws).poll_ready(cx).map_err(io::Error::other)
            })
            .await?;
            let mut s = self.lock();
            if frame.opcode() == OpCode::Close {
                s.close_sent = true;
            }
            Pin::new(&mut s.ws)
                .start_send(frame)
                .map_err(io::Error::other)?;
        }
        poll_fn(|cx| Pin::new(&mut self.lock().ws).poll_flush(cx))
            .await
            .map_err(io::Error::other)
    }

    /// Sends a close frame, unless one was already sent.
    pub(crate) async fn send_close(&self, code: CloseCode, reason: &str) {
        if !self.lock().close_sent {
            let _ = self.send([Frame::close(code, reason)]).await;
        }
    }

    /// Completes the closing handshake once the connection is done with the socket: sends
    /// the close still owed, ends the sending side, and waits a little for the client's
    /// close frame, so that the server closes the TCP connection first (RFC 6455 7.1.1).
    pub(crate) async fn finish(&self) {
        let owed = self.lock().owed_close.take();
        if let Some((code, reason)) = owed {
            self.send_close(code, reason).await;
        }
        if !self.lock().close_sent {
            // The client went away (or a write failed): nothing to complete.
            return;
        }
        let closing = async {
            // Writes what yawc still has queued (its close frame), flushes, and shuts down
            // the sending side.
            let _ = poll_fn(|cx| {
                let mut s = self.lock();
                ready!(Pin::new(&mut s.ws).poll_ready(cx))?;
                Pin::new(&mut s.ws).poll_close(cx)
            })
            .await;
            // Reads until the client's close frame, or the end of the stream.
            while !self.lock().read_closed {
                let read = poll_fn(|cx| self.lock().ws.poll_next_frame(cx)).await;
                match read {
                    Ok(f) if f.opcode() == OpCode::Close => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, closing).await;
    }
}

/// What the client sends, as [`Inbound`] items. Ping, pong and close frames are handled
/// by yawc (pongs and the answering close are queued and written by the next read or
/// write); the stream ends when the connection is closed.
pub(crate) struct WsInbound(pub(crate) WsConn);

impl Stream for WsInbound {
    type Item = Inbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let mut s = self.0.lock();
        loop {
            if s.read_closed || s.owed_close.is_some() {
                return Poll::Ready(None);
            }
            match ready!(s.ws.poll_next_frame(cx)) {
                Ok(frame) => match frame.opcode() {
                    OpCode::Text => {
                        let text = frame.into_payload();
                        if std::str::from_utf8(&text).is_err() {
                            s.owed_close = Some((CloseCode::Invalid, "invalid UTF-8"));
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Inbound::Text(text)));
                    }
                    OpCode::Binary => {
                        return Poll::Ready(Some(Inbound::Binary(frame.into_payload())))
                    }
                    // yawc queued the answering close; the next read writes it and ends.
                    OpCode::Close => s.close_sent = true,
                    _ => {}
                },
                Err(WebSocketError::ConnectionClosed) => {
                    s.read_closed = true;
                    if let Some(reason) = s.violation.get().copied() {
                        s.owed_close = Some((CloseCode::Protocol, reason));
                    }
                    if std::mem::take(&mut s.too_large) {
                        return Poll::Ready(Some(Inbound::TooLarge));
                    }
                    return Poll::Ready(None);
                }
                Err(e) => {
                    // Everything else yawc reports after queuing a close (1009 for a frame
                    // over the limit, 1002 for a framing error, 1007 for a close reason
                    // that is not UTF-8); reading on writes it, then reports the end.
                    // ([`Checked`] stops the frames yawc would report without closing.)
                    tracing::debug!(error = %e, "websocket read failed");
                    if s.close_sent {
                        // A second failure: the connection is gone.
                        s.read_closed = true;
                        return Poll::Ready(None);
                    }
                    s.close_sent = true;
                    s.too_large = matches!(e, WebSocketError::FrameTooLarge);
                }
            }
        }
    }
}

/// Where the connection writes: text frames, pings and the close frame.
struct WsSink(WsConn);

impl FrameSink for WsSink {
    async fn send_batch(&mut self, frames: &[Arc<Outgoing>]) -> io::Result<()> {
        // Frames are valid UTF-8 JSON produced by serde_json. Audio for a client that takes
        // binary frames goes as two frames: the envelope with bin_len, then the bytes.
        let mut batch: Vec<Frame> = Vec::with_capacity(frames.len());
        for f in frames {
            match f.two_frame.as_deref() {
                Some((header, data)) => {
                    batch.push(Frame::text(header.clone()));
                    batch.push(Frame::binary(data.clone()));
                }
                None => batch.push(Frame::text(f.json())),
            }
        }
        self.0.send(batch).await
    }

    async fn keepalive(&mut self) -> io::Result<()> {
        self.0.send([Frame::ping(bytes::Bytes::new())]).await
    }

    async fn close(&mut self, close: &Close) {
        self.0
            .send_close(CloseCode::from(close.code), &close.reason)
            .await;
    }
}

/// The client's bytes, checked frame header by frame header for what yawc 0.5 lets
/// through, answers with the wrong code, or reports without closing (RFC 6455 sections
/// 5.2, 5.4, 5.5): a reserved opcode (yawc closes with 1003), a control frame over 125
/// bytes (yawc echoes a long close frame), a continuation with no message to continue and
/// a new message inside a fragmented one. Input ends just before the first such frame, and
/// the connection then fails with 1002.
///
/// Headers are only scanned; the bytes pass through untouched.
struct Checked<S> {
    io: S,
    /// The header being read (up to 14 bytes) and how much of it has arrived.
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// A message was started by a frame without FIN.
    in_message: bool,
    /// The first byte of a header that arrived alone, held back until the second one
    /// arrives (a frame is judged on both), so that input never ends inside a header.
    held: Option<u8>,
    violation: Arc<OnceLock<&'static str>>,
}

enum Scan {
    Ok,
    /// The last byte is a header's first byte.
    Hold,
    /// A bad frame starts at this offset.
    Bad(usize, &'static str),
}

impl<S> Checked<S> {
    fn new(io: S, violation: Arc<OnceLock<&'static str>>) -> Checked<S> {
        Checked {
            io,
            header: [0; 14],
            have: 0,
            payload_left: 0,
            in_message: false,
            held: None,
            violation,
        }
    }

    /// Judges a frame on its first two bytes.
    fn check(&mut self, b0: u8, b1: u8) -> Option<&'static str> {
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        match opcode {
            0x3..=0x7 | 0xb..=0xf => return Some("reserved opcode"),
            0x8..=0xa if b1 & 0x7f > 125 => return Some("control frame over 125 bytes"),
            0x0 if !self.in_message => return Some("continuation frame with nothing to continue"),
            0x1 | 0x2 if self.in_message => return Some("new message inside a fragmented one"),
            _ => {}
        }
        if opcode <= 0x2 {
            self.in_message = !fin;
        }
        None
    }

    fn scan(&mut self, data: &[u8]) -> Scan {
        let mut i = 0;
        let mut frame_start = 0;
        while i < data.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min((data.len() - i) as u64);
                self.payload_left -= n;
                i += n as usize;
                continue;
            }
            if self.have == 0 {
                frame_start = i;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.have == 2 {
                if let Some(reason) = self.check(self.header[0], self.header[1]) {
                    return Scan::Bad(frame_start, reason);
                }
            }
            if self.have < 2 {
                continue;
            }
            let len_code = self.header[1] & 0x7f;
            let extra = match len_code {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + extra + mask {
                continue;
            }
            self.payload_left = match extra {
                0 => u64::from(len_code),
                _ => self.header[2..2 + extra]
                    .iter()
                    .fold(0, |n, &b| (n << 8) | u64::from(b)),
            };
            self.have = 0;
        }
        if self.have == 1 {
            return Scan::Hold;
        }
        Scan::Ok
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Checked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.violation.get().is_some() {
            return Poll::Ready(Ok(())); // the end of input
        }
        loop {
            let start = buf.filled().len();
            let held = this.held.take();
            if let Some(b) = held {
                if buf.remaining() == 0 {
                    this.held = held;
                    return Poll::Ready(Ok(()));
                }
                buf.put_slice(&[b]);
                if buf.remaining() == 0 {
                    // No room for the byte after it: pass it on; the scan goes on from it.
                    this.header[0] = b;
                    this.have = 1;
                    return Poll::Ready(Ok(()));
                }
            }
            let before = buf.filled().len();
            let res = Pin::new(&mut this.io).poll_read(cx, buf);
            if !matches!(res, Poll::Ready(Ok(()))) || buf.filled().len() == before {
                // Pending, an error or the end of the stream: a held byte stays held
                // unless the stream ended, when it is passed on.
                if !matches!(res, Poll::Ready(Ok(()))) && held.is_some() {
                    buf.set_filled(start);
                    this.held = held;
                }
                return res;
            }
            let end = buf.filled().len();
            match this.scan(&buf.filled()[start..end]) {
                Scan::Ok => return Poll::Ready(Ok(())),
                Scan::Hold => {
                    this.held = Some(buf.filled()[end - 1]);
                    this.have = 0;
                    buf.set_filled(end - 1);
                    if end - 1 > start {
                        return Poll::Ready(Ok(()));
                    }
                    // Nothing to pass yet: read on (returning nothing would mean the end).
                }
                Scan::Bad(at, reason) => {
                    tracing::debug!(reason, "websocket protocol violation");
                    let _ = this.violation.set(reason);
                    buf.set_filled(start + at);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Checked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Vec<&'static str> {
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        let mut out = Vec::new();
        for chunk in chunks {
            match c.scan(chunk) {
                Scan::Ok => out.push("ok"),
                Scan::Hold => {
                    c.have = 0;
                    out.push("hold")
                }
                Scan::Bad(_, reason) => out.push(reason),
            }
        }
        out
    }

    #[test]
    fn frames_split_anywhere_are_followed() {
        // Masked text "hi" (fin), then a masked ping with 126-byte extended length.
        let text = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        assert_eq!(
            scan_all(&[&text, &text[..3], &text[3..]]),
            ["ok", "ok", "ok"]
        );
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        // A 300-byte binary frame: 16-bit length, then the payload in pieces.
        assert!(matches!(c.scan(&[0x82, 0xfe, 0x01]), Scan::Ok));
        assert!(matches!(c.scan(&[0x2c, 1, 2, 3, 4]), Scan::Ok));
        assert_eq!(c.payload_left, 300);
        assert!(matches!(c.scan(&[0; 299]), Scan::Ok));
        assert!(matches!(c.scan(&[0, 0x81]), Scan::Hold));
    }

    #[test]
    fn bad_frames_are_found_at_their_start() {
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        let data = [0x81, 0x80, 1, 2, 3, 4, 0x83, 0x80, 1, 2, 3, 4];
        assert!(matches!(c.scan(&data), Scan::Bad(6, "reserved opcode")));
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        assert!(matches!(
            c.scan(&[0x88, 0xfe, 0, 126]),
            Scan::Bad(0, "control frame over 125 bytes")
        ));
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        assert!(matches!(c.scan(&[0x80, 0x80]), Scan::Bad(0, _)));
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        // A fragmented text message, then a second text frame inside it.
        let data = [0x01, 0x80, 1, 2, 3, 4, 0x81, 0x80, 1, 2, 3, 4];
        assert!(matches!(c.scan(&data), Scan::Bad(6, _)));
        // A control frame between fragments is fine, and so is the end of the message.
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        let data = [
            0x01, 0x80, 1, 2, 3, 4, 0x89, 0x80, 1, 2, 3, 4, 0x80, 0x80, 1, 2, 3, 4, 0x81, 0x80, 1,
            2, 3, 4,
        ];
        assert!(matches!(c.scan(&data), Scan::Ok));
    }
}
