//! The test client: one [`Conn`] type with the same methods on every transport.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};

use super::envelope::{envelope, next_id, ty};
use super::http::{header_list, http, post_messages, Head, PostReply};
use super::server::Server;
use super::time::{bounded, WAIT};
use super::wire::{parse_text, read_ndjson, read_sse, ws_connect, Frame, WsStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WebSocket at /haip/websocket.
    Ws,
    /// WebSocket at `/`.
    WsRoot,
    /// GET /haip/sse, upstream with POST /haip/messages.
    Sse,
    /// POST /haip/stream, NDJSON both ways over one request.
    Stream,
}

impl Kind {
    pub fn is_ws(self) -> bool {
        matches!(self, Kind::Ws | Kind::WsRoot)
    }
}

/// How to open a connection.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// The token; `None` uses a valid token of [`USER`].
    pub token: Option<String>,
    /// Extra query parameters (already URL-safe).
    pub query: Vec<(String, String)>,
    /// SSE only: a Last-Event-ID header.
    pub last_event_id: Option<String>,
}

impl Opts {
    pub fn token(token: impl Into<String>) -> Opts {
        Opts {
            token: Some(token.into()),
            ..Opts::default()
        }
    }

    /// `?session=ID&last_rx_seq=N`.
    pub fn resume(session: &str, last_rx_seq: u64) -> Opts {
        Opts {
            query: vec![
                ("session".into(), session.into()),
                ("last_rx_seq".into(), last_rx_seq.to_string()),
            ],
            ..Opts::default()
        }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Opts {
        self.token = Some(token.into());
        self
    }
}

enum Io {
    Ws(Box<WsStream>),
    Sse {
        rx: mpsc::UnboundedReceiver<(Frame, Option<String>, String)>,
    },
    Stream {
        tx: Option<mpsc::UnboundedSender<Bytes>>,
        rx: mpsc::UnboundedReceiver<(Frame, Option<String>, String)>,
        head: Option<oneshot::Receiver<Head>>,
    },
}

/// A client connection on any transport.
pub struct Conn {
    pub kind: Kind,
    io: Io,
    pending: VecDeque<Frame>,
    done: bool,
    /// Every JSON message received, in order.
    pub log: Vec<Value>,
    /// The text of each message of `log` as it was received, byte for byte (parallel to it).
    pub texts: Vec<String>,
    /// SSE only: the `id:` of each message of `log` (parallel to it).
    pub sse_ids: Vec<Option<String>>,
    /// Everything the SSE stream carried, verbatim.
    pub sse_raw: Arc<Mutex<String>>,
    /// The session of the last HAI received (where SSE posts go).
    pub session: Option<String>,
    /// The last client seq used by [`Conn::msg`].
    pub seq: u64,
    /// The `session` field of the envelopes this client builds.
    pub client_session: String,
    pub token: String,
    /// Response headers of the upgrade / SSE response (lower-case names).
    pub headers: Vec<(String, String)>,
    base: String,
    reader: Option<JoinHandle<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

fn query_string(token: Option<&str>, extra: &[(String, String)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(t) = token {
        parts.push(format!("token={t}"));
    }
    parts.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

impl Conn {
    pub async fn open(server: &Server, kind: Kind, opts: Opts) -> Conn {
        let token = opts.token.clone().unwrap_or_else(|| server.token());
        let base = format!("http://{}", server.addr);
        let mut conn = Conn::new(
            kind,
            Io::Sse {
                rx: mpsc::unbounded_channel().1,
            },
            token.clone(),
            Vec::new(),
            base,
        );
        match kind {
            Kind::Ws | Kind::WsRoot => {
                let path = if kind == Kind::Ws {
                    "/haip/websocket"
                } else {
                    "/"
                };
                let url = server.ws_url(&format!(
                    "{path}{}",
                    query_string(Some(&token), &opts.query)
                ));
                let (ws, resp) = ws_connect(url.into_client_request().expect("request")).await;
                conn.headers = resp;
                conn.io = Io::Ws(Box::new(ws));
            }
            Kind::Sse => {
                let url = server.url(&format!(
                    "/haip/sse{}",
                    query_string(Some(&token), &opts.query)
                ));
                let mut req = http().get(url);
                if let Some(id) = &opts.last_event_id {
                    req = req.header("Last-Event-ID", id.as_str());
                }
                let resp = bounded(req.send()).await.expect("GET /haip/sse");
                assert_eq!(resp.status().as_u16(), 200, "SSE stream must open");
                conn.headers = header_list(resp.headers());
                let (tx, rx) = mpsc::unbounded_channel();
                conn.reader = Some(tokio::spawn(read_sse(resp, tx, conn.sse_raw.clone())));
                conn.io = Io::Sse { rx };
            }
            Kind::Stream => {
                let url = server.url(&format!("/haip/stream{}", query_string(None, &opts.query)));
                let (body_tx, body_rx) = mpsc::unbounded_channel::<Bytes>();
                let body = futures_util::stream::unfold(body_rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
                });
                let req = http()
                    .post(url)
                    .header("Authorization", format!("Bearer {token}"))
                    .header("Content-Type", "application/x-ndjson")
                    .body(reqwest::Body::wrap_stream(body));
                let (tx, rx) = mpsc::unbounded_channel();
                let (head_tx, head_rx) = oneshot::channel();
                conn.reader = Some(tokio::spawn(read_ndjson(req, tx, head_tx)));
                conn.io = Io::Stream {
                    tx: Some(body_tx),
                    rx,
                    head: Some(head_rx),
                };
            }
        }
        conn
    }

    /// Wraps an already connected WebSocket.
    pub fn from_ws(ws: WsStream, headers: Vec<(String, String)>) -> Conn {
        Conn::new(
            Kind::Ws,
            Io::Ws(Box::new(ws)),
            String::new(),
            headers,
            String::new(),
        )
    }

    /// A connection over `io` that has read nothing yet.
    fn new(
        kind: Kind,
        io: Io,
        token: String,
        headers: Vec<(String, String)>,
        base: String,
    ) -> Conn {
        Conn {
            kind,
            io,
            pending: VecDeque::new(),
            done: false,
            log: Vec::new(),
            texts: Vec::new(),
            sse_ids: Vec::new(),
            sse_raw: Arc::new(Mutex::new(String::new())),
            session: None,
            seq: 0,
            client_session: "test-session".into(),
            token,
            headers,
            base,
            reader: None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Stream only: the response status and headers (available once the first line was sent).
    pub async fn stream_head(&mut self) -> Head {
        let Io::Stream { head, .. } = &mut self.io else {
            panic!("not a stream connection");
        };
        let rx = head.take().expect("stream head already taken");
        bounded(rx).await.expect("stream response head")
    }

    // --- reading ------------------------------------------------------------------------

    async fn read_raw(&mut self, deadline: Instant) -> Option<Frame> {
        if self.done {
            return Some(Frame::End);
        }
        let (frame, sse_id, text) = match &mut self.io {
            Io::Ws(ws) => loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, ws.next()).await {
                    Err(_) => return None,
                    Ok(None) | Ok(Some(Err(_))) => break (Frame::End, None, String::new()),
                    Ok(Some(Ok(m))) => match m {
                        Message::Text(t) => break (parse_text(t.as_str()), None, t.to_string()),
                        Message::Binary(b) => {
                            break (Frame::Binary(b.to_vec()), None, String::new())
                        }
                        Message::Close(cf) => {
                            let (code, reason) = match cf {
                                Some(cf) => (Some(u16::from(cf.code)), cf.reason.to_string()),
                                None => (None, String::new()),
                            };
                            break (Frame::Close(code, reason), None, String::new());
                        }
                        _ => continue,
                    },
                }
            },
            Io::Sse { rx } | Io::Stream { rx, .. } => {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rx.recv()).await {
                    Err(_) => return None,
                    Ok(None) => (Frame::End, None, String::new()),
                    Ok(Some(item)) => item,
                }
            }
        };
        match &frame {
            Frame::Close(..) | Frame::End => self.done = true,
            Frame::Json(v) => {
                if ty(v) == "HAI" {
                    if let Some(s) = v["session"].as_str() {
                        self.session = Some(s.to_string());
                    }
                }
                self.log.push(v.clone());
                self.texts.push(text);
                self.sse_ids.push(sse_id);
            }
            _ => {}
        }
        Some(frame)
    }

    /// The next frame within `within`, or `None` on timeout.
    pub async fn frame_within(&mut self, within: Duration) -> Option<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.read_raw(Instant::now() + within).await
    }

    /// The next frame, within [`WAIT`].
    pub async fn frame(&mut self) -> Frame {
        match self.frame_within(WAIT).await {
            Some(f) => f,
            None => panic!(
                "{:?}: nothing received within {WAIT:?}; received so far: {}",
                self.kind,
                self.dump()
            ),
        }
    }

    /// The next message, which must be JSON.
    pub async fn recv(&mut self) -> Value {
        match self.frame().await {
            Frame::Json(v) => v,
            other => panic!(
                "{:?}: expected a JSON message, got {other:?}; received so far: {}",
                self.kind,
                self.dump()
            ),
        }
    }

    /// Reads until a message satisfies `pred` (within [`WAIT`]); returns every message read,
    /// the matching one last.
    pub async fn collect_until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frame_within(left).await {
                Some(Frame::Json(v)) => {
                    let hit = pred(&v);
                    out.push(v);
                    if hit {
                        return out;
                    }
                }
                Some(Frame::NonJson(t)) => panic!("{:?}: non-JSON frame {t:?}", self.kind),
                Some(Frame::Binary(_)) => {}
                Some(other) => panic!(
                    "{:?}: connection ended ({other:?}) before the awaited message; got: {}",
                    self.kind,
                    Value::from(out)
                ),
                None => panic!(
                    "{:?}: awaited message not received within {WAIT:?}; got: {}",
                    self.kind,
                    Value::from(out)
                ),
            }
        }
    }

    /// The first message satisfying `pred`, skipping others.
    pub async fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.collect_until(pred).await.pop().expect("matched")
    }

    /// The next message of type `t`, skipping others.
    pub async fn recv_type(&mut self, t: &str) -> Value {
        self.recv_where(|v| ty(v) == t).await
    }

    /// Every JSON message received within `within` (stops early if the connection ends).
    pub async fn collect_for(&mut self, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frame_within(left).await {
                Some(Frame::Json(v)) => out.push(v),
                Some(Frame::Close(..)) | Some(Frame::End) => {
                    self.pending.push_back(Frame::End);
                    return out;
                }
                Some(_) => {}
                None => return out,
            }
        }
    }

    /// Skips messages until the connection closes; returns the WebSocket close code and
    /// reason (`None` when a stream simply ended).
    pub async fn expect_close(&mut self) -> (Option<u16>, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frame_within(left).await {
                Some(Frame::Close(code, reason)) => return (code, reason),
                Some(Frame::End) => return (None, String::new()),
                Some(_) => {}
                None => panic!(
                    "{:?}: connection still open after {WAIT:?}; received: {}",
                    self.kind,
                    self.dump()
                ),
            }
        }
    }

    fn dump(&self) -> String {
        let tail: Vec<String> = self
            .log
            .iter()
            .rev()
            .take(30)
            .rev()
            .map(|v| v.to_string())
            .collect();
        format!("[{}]", tail.join(",\n "))
    }

    /// Reads until a HAI names the session (SSE posts need it).
    async fn ensure_session(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        while self.session.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_raw(Instant::now() + left).await {
                Some(f) => {
                    let end = matches!(f, Frame::End | Frame::Close(..));
                    self.pending.push_back(f);
                    if end {
                        break;
                    }
                }
                None => break,
            }
        }
        self.session
            .clone()
            .expect("no HAI received: the session to post to is unknown")
    }

    // --- writing ------------------------------------------------------------------------

    /// Builds the next client envelope (seq = last + 1).
    pub fn msg(&mut self, channel: &str, ty: &str, payload: Value) -> Value {
        self.seq += 1;
        envelope(
            &next_id("c"),
            &self.client_session,
            self.seq,
            channel,
            ty,
            payload,
        )
    }

    /// Sends one envelope. SSE connections post it and return the answer.
    pub async fn send(&mut self, v: &Value) -> Option<PostReply> {
        self.send_text(&v.to_string()).await
    }

    /// Builds and sends the next envelope; returns it.
    pub async fn send_msg(&mut self, channel: &str, ty: &str, payload: Value) -> Value {
        let v = self.msg(channel, ty, payload);
        let reply = self.send(&v).await;
        if let Some(r) = reply {
            assert_eq!(r.status, 200, "POST /haip/messages refused {v}: {r:?}");
        }
        v
    }

    /// A complete USER text message: MESSAGE_START {text} then MESSAGE_END.
    pub async fn say(&mut self, text: &str) -> String {
        let message_id = next_id("m");
        self.send_msg(
            "USER",
            "MESSAGE_START",
            json!({"message_id": message_id, "text": text}),
        )
        .await;
        self.send_msg("USER", "MESSAGE_END", json!({"message_id": message_id}))
            .await;
        message_id
    }

    /// PING with `nonce`.
    pub async fn ping(&mut self, nonce: &str) -> Value {
        self.send_msg("SYSTEM", "PING", json!({"nonce": nonce}))
            .await
    }

    /// Sends raw text (a WebSocket text frame, an NDJSON line, or an SSE post body).
    pub async fn send_text(&mut self, text: &str) -> Option<PostReply> {
        match &mut self.io {
            Io::Ws(ws) => {
                bounded(ws.send(Message::Text(text.into())))
                    .await
                    .expect("websocket send");
                None
            }
            Io::Stream { tx, .. } => {
                if let Some(tx) = tx {
                    let _ = tx.send(Bytes::from(format!("{text}\n")));
                }
                None
            }
            Io::Sse { .. } => {
                let session = self.ensure_session().await;
                Some(post_messages(&self.base, &self.token, Some(&session), text).await)
            }
        }
    }

    /// WebSocket only: a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        let Io::Ws(ws) = &mut self.io else {
            panic!("binary frames are WebSocket only");
        };
        bounded(ws.send(Message::Binary(data.into())))
            .await
            .expect("websocket send");
    }

    /// WebSocket only: sends a close frame.
    pub async fn send_close(&mut self, code: u16) {
        let Io::Ws(ws) = &mut self.io else {
            panic!("close frames are WebSocket only");
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        let _ = bounded(ws.send(Message::Close(Some(frame)))).await;
    }

    /// Stream only: ends the request body.
    pub fn end_body(&mut self) {
        if let Io::Stream { tx, .. } = &mut self.io {
            tx.take();
        }
    }
}

impl Server {
    pub async fn connect(&self, kind: Kind) -> Conn {
        Conn::open(self, kind, Opts::default()).await
    }

    pub async fn connect_with(&self, kind: Kind, opts: Opts) -> Conn {
        Conn::open(self, kind, opts).await
    }
}
