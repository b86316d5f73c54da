//! Shared harness of the haip-server integration tests: an in-process server on a real
//! loopback socket, and small clients for the three transports (WebSocket, SSE with
//! `POST /haip/messages` upstream, NDJSON HTTP streaming) behind one [`Conn`] type.
//!
//! Every wait is bounded: reads give up after [`WAIT`] (or a shorter explicit duration) and
//! panic with what was received so far, so no test can hang.

#![allow(dead_code)]

pub mod redis;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use haip_server::agent::{Agent, EchoAgent};
use haip_server::app::{AppState, SharedState};
use haip_server::auth::Authenticator;
use haip_server::config::ServerConfig;
use haip_server::tools::ToolRegistry;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"test-secret";
/// Default bound of every wait.
pub const WAIT: Duration = Duration::from_secs(3);
/// The default subject of test tokens.
pub const USER: &str = "alice";

/// The 22 event types of HAIP 1.1.2 (contract section 2).
pub const ALL_EVENTS: [&str; 22] = [
    "HAI",
    "RUN_STARTED",
    "RUN_FINISHED",
    "RUN_CANCEL",
    "RUN_ERROR",
    "PING",
    "PONG",
    "REPLAY_REQUEST",
    "MESSAGE_START",
    "MESSAGE_PART",
    "MESSAGE_END",
    "AUDIO_CHUNK",
    "TOOL_CALL",
    "TOOL_UPDATE",
    "TOOL_DONE",
    "TOOL_CANCEL",
    "TOOL_LIST",
    "TOOL_SCHEMA",
    "ERROR",
    "FLOW_UPDATE",
    "PAUSE_CHANNEL",
    "RESUME_CHANNEL",
];

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

static IDS: AtomicU64 = AtomicU64::new(1);

/// A unique client message id.
pub fn next_id(prefix: &str) -> String {
    format!("{prefix}-{}", IDS.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// The test defaults: loopback, an ephemeral port, 5 ms between echo words, no logging.
fn test_config() -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        echo_word_delay: ms(5),
        enable_logging: false,
        ..ServerConfig::default()
    }
}

/// An in-process server on 127.0.0.1 with an ephemeral port; shut down on drop.
pub struct Server {
    pub state: SharedState,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// Starts a server with the test defaults and the echo agent, then `tweak` applied to
    /// the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Server {
        let mut config = test_config();
        tweak(&mut config);
        let agent = Arc::new(EchoAgent {
            word_delay: config.echo_word_delay,
        });
        Server::start_serving(config, agent, ToolRegistry::with_builtins()).await
    }

    /// Starts a server with the test defaults that answers through `agent` with `tools`.
    pub async fn start_with_agent(agent: Arc<dyn Agent>, tools: ToolRegistry) -> Server {
        Server::start_serving(test_config(), agent, tools).await
    }

    /// Both: `tweak` applied to the test defaults, and `agent` answering.
    pub async fn start_with_config_and_agent(
        tweak: impl FnOnce(&mut ServerConfig),
        agent: Arc<dyn Agent>,
    ) -> Server {
        let mut config = test_config();
        tweak(&mut config);
        Server::start_serving(config, agent, ToolRegistry::with_builtins()).await
    }

    async fn start_serving(
        config: ServerConfig,
        agent: Arc<dyn Agent>,
        tools: ToolRegistry,
    ) -> Server {
        let auth = Authenticator::with_secret(
            SECRET,
            config.jwt_issuer.clone(),
            config.jwt_audience.clone(),
        );
        let state = AppState::new(config, auth, agent, tools);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let _ = haip_server::server::serve(listener, state).await;
            }
        });
        Server { state, addr, task }
    }

    /// A valid token of [`USER`].
    pub fn token(&self) -> String {
        self.token_for(USER)
    }

    pub fn token_for(&self, subject: &str) -> String {
        self.state.auth.mint(subject, 3600).expect("mint token")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    pub async fn connect(&self, kind: Kind) -> Conn {
        Conn::open(self, kind, Opts::default()).await
    }

    pub async fn connect_with(&self, kind: Kind, opts: Opts) -> Conn {
        Conn::open(self, kind, opts).await
    }

    /// GET `path` as JSON.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = bounded(http().get(self.url(path)).send())
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        let body = bounded(resp.text()).await.expect("body");
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        self.task.abort();
    }
}

pub fn http() -> reqwest::Client {
    haip_server::tls::install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// Awaits `f` for at most [`WAIT`], panicking on timeout.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("operation timed out")
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            if n > 1 { chunk[1] } else { 0 },
            if n > 2 { chunk[2] } else { 0 },
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= n {
                out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64url without padding (JWT segments).
pub fn b64url(data: &[u8]) -> String {
    b64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Decodes standard base64 (padding optional).
pub fn unb64(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("not base64: {text:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// An HS256 token with the given claims.
pub fn jwt_hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encode jwt")
}

/// A token signed with another secret.
pub fn jwt_bad_signature() -> String {
    let now = now_ms() / 1000;
    jwt_hs256(b"not-the-secret", &json!({"sub": USER, "exp": now + 3600}))
}

/// A correctly signed token that expired an hour ago (well past the 60 s leeway).
pub fn jwt_expired() -> String {
    let now = now_ms() / 1000;
    jwt_hs256(
        SECRET,
        &json!({"sub": USER, "exp": now - 3600, "iat": now - 7200}),
    )
}

/// An unsigned `alg: none` token.
pub fn jwt_alg_none() -> String {
    let now = now_ms() / 1000;
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64url(
        json!({"sub": USER, "exp": now + 3600})
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{claims}.")
}

// ---------------------------------------------------------------------------------------
// Envelopes
// ---------------------------------------------------------------------------------------

pub fn envelope(
    id: &str,
    session: &str,
    seq: u64,
    channel: &str,
    ty: &str,
    payload: Value,
) -> Value {
    json!({
        "id": id,
        "session": session,
        "seq": seq.to_string(),
        "ts": now_ms().to_string(),
        "channel": channel,
        "type": ty,
        "payload": payload,
    })
}

/// A client HAI payload accepting `events`.
pub fn hai_payload(events: &[&str]) -> Value {
    json!({"haip_version": "1.1.2", "accept_major": [1], "accept_events": events})
}

pub fn ty(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

pub fn chan(v: &Value) -> &str {
    v["channel"].as_str().unwrap_or("")
}

pub fn seq(v: &Value) -> u64 {
    v["seq"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no decimal seq in {v}"))
}

pub fn types(msgs: &[Value]) -> Vec<&str> {
    msgs.iter().map(ty).collect()
}

/// Asserts that `msgs` (possibly with duplicates, e.g. replays) cover server seqs
/// 1..=max without a gap, and that every copy of a seq is the same message (same id).
/// Seq 0 (the unsequenced connect-time RESUME_FAILED) is ignored. Returns max.
pub fn assert_contiguous<'a>(msgs: impl IntoIterator<Item = &'a Value>) -> u64 {
    let mut by_seq: BTreeMap<u64, &Value> = BTreeMap::new();
    for m in msgs {
        let s = seq(m);
        if s == 0 {
            continue;
        }
        if let Some(prev) = by_seq.get(&s) {
            assert_eq!(
                prev["id"], m["id"],
                "two different messages with seq {s}: {prev} / {m}"
            );
        }
        by_seq.insert(s, m);
    }
    let seqs: Vec<u64> = by_seq.keys().copied().collect();
    let max = seqs.last().copied().unwrap_or(0);
    let expected: Vec<u64> = (1..=max).collect();
    assert_eq!(seqs, expected, "server seqs must be 1..=max with no gap");
    max
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

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

/// One thing read from a connection.
#[derive(Debug, Clone)]
pub enum Frame {
    Json(Value),
    /// A text frame, line or SSE data that is not JSON.
    NonJson(String),
    Binary(Vec<u8>),
    /// A WebSocket close frame (code, reason).
    Close(Option<u16>, String),
    /// The connection or stream ended without a close frame.
    End,
}

/// The answer to a `POST /haip/messages` (SSE connections send through it).
#[derive(Debug, Clone)]
pub struct PostReply {
    pub status: u16,
    pub body: Value,
}

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// Status and headers (lower-case names) of an HTTP response.
pub type Head = (u16, Vec<(String, String)>);

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

fn parse_text(text: &str) -> Frame {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Frame::Json(v),
        Err(_) => Frame::NonJson(text.to_string()),
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
        let mut conn = Conn {
            kind,
            io: Io::Sse {
                rx: mpsc::unbounded_channel().1,
            },
            pending: VecDeque::new(),
            done: false,
            log: Vec::new(),
            texts: Vec::new(),
            sse_ids: Vec::new(),
            sse_raw: Arc::new(Mutex::new(String::new())),
            session: None,
            seq: 0,
            client_session: "test-session".into(),
            token: token.clone(),
            headers: Vec::new(),
            base,
            reader: None,
        };
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
        Conn {
            kind: Kind::Ws,
            io: Io::Ws(Box::new(ws)),
            pending: VecDeque::new(),
            done: false,
            log: Vec::new(),
            texts: Vec::new(),
            sse_ids: Vec::new(),
            sse_raw: Arc::new(Mutex::new(String::new())),
            session: None,
            seq: 0,
            client_session: "test-session".into(),
            token: String::new(),
            headers,
            base: String::new(),
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

fn header_list(h: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Connects a WebSocket (bounded), panicking on failure; returns the stream and the
/// upgrade response headers.
pub async fn ws_connect(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (WsStream, Vec<(String, String)>) {
    let (ws, resp) = bounded(tokio_tungstenite::connect_async(req))
        .await
        .expect("websocket handshake");
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (ws, headers)
}

/// `POST /haip/messages` with a bearer token and optional `X-HAIP-Session`.
pub async fn post_messages(
    base: &str,
    token: &str,
    session: Option<&str>,
    body: &str,
) -> PostReply {
    let mut req = http()
        .post(format!("{base}/haip/messages"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(s) = session {
        req = req.header("X-HAIP-Session", s);
    }
    let resp = bounded(req.send()).await.expect("POST /haip/messages");
    let status = resp.status().as_u16();
    let text = bounded(resp.text()).await.expect("POST body");
    PostReply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn read_sse(
    resp: reqwest::Response,
    tx: mpsc::UnboundedSender<(Frame, Option<String>, String)>,
    raw: Arc<Mutex<String>>,
) {
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut id: Option<String> = None;
    let mut data: Vec<String> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        if let Ok(mut r) = raw.lock() {
            r.push_str(&String::from_utf8_lossy(&chunk));
        }
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim_end_matches('\r')
                .to_string();
            if line.is_empty() {
                if !data.is_empty() {
                    let text = data.join("\n");
                    data.clear();
                    let _ = tx.send((parse_text(&text), id.take(), text));
                }
                id = None;
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
            // retry:, event: and comments are kept in `raw` only.
        }
    }
    let _ = tx.send((Frame::End, None, String::new()));
}

async fn read_ndjson(
    req: reqwest::RequestBuilder,
    tx: mpsc::UnboundedSender<(Frame, Option<String>, String)>,
    head: oneshot::Sender<Head>,
) {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(_) => {
            let _ = tx.send((Frame::End, None, String::new()));
            return;
        }
    };
    let status = resp.status().as_u16();
    let _ = head.send((status, header_list(resp.headers())));
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        let _ = tx.send((Frame::NonJson(text.clone()), None, text));
        let _ = tx.send((Frame::End, None, String::new()));
        return;
    }
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
            if !text.trim().is_empty() {
                let _ = tx.send((parse_text(&text), None, text));
            }
        }
    }
    let _ = tx.send((Frame::End, None, String::new()));
}

// --- resume scenarios (shared by the single-node and the cluster suites) ---------------

/// `n` distinct words, for an echo run whose every word can be found again.
pub fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads until `n` MESSAGE_PARTs have arrived.
pub async fn parts(c: &mut Conn, n: usize) {
    for _ in 0..n {
        c.recv_type("MESSAGE_PART").await;
    }
}

/// Checks a resume: the messages before the confirming HAI are the replay, starting right
/// after `after` with consecutive seqs, identical to what `before` received of them; the
/// confirming HAI names `session` and takes the next seq.
pub fn check_replay(
    replay: &[Value],
    confirm: &Value,
    before: &[Value],
    session: &str,
    after: u64,
) {
    assert!(!replay.is_empty(), "nothing replayed");
    for (i, m) in replay.iter().enumerate() {
        assert_eq!(seq(m), after + 1 + i as u64, "replay in order: {m}");
        assert_eq!(m["session"], session);
        if let Some(orig) = before.iter().find(|o| seq(o) == seq(m)) {
            assert_eq!(m, orig, "a replay carries the original id, seq and ts");
        }
    }
    assert_eq!(ty(confirm), "HAI", "{confirm}");
    assert_eq!(chan(confirm), "SYSTEM");
    assert_eq!(
        confirm["session"], session,
        "the HAI confirms the resumed session"
    );
    assert_eq!(
        seq(confirm),
        seq(replay.last().unwrap()) + 1,
        "the confirming HAI takes the next seq"
    );
    assert_eq!(confirm["payload"]["haip_version"], "1.1.2");
}

/// The union of everything received, deduplicated by seq, is the complete echo run.
pub fn check_complete_run(all: &[&Value], session: &str, text: &str) {
    let mine: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|v| v["session"] == session)
        .collect();
    assert_contiguous(mine.iter().copied());
    let mut by_seq = std::collections::BTreeMap::new();
    for m in &mine {
        by_seq.insert(seq(m), *m);
    }
    let echoed: String = by_seq
        .values()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(echoed, text, "every word exactly once");
    let fin: Vec<&&Value> = by_seq
        .values()
        .filter(|v| ty(v) == "RUN_FINISHED")
        .collect();
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0]["payload"]["status"], "OK");
}

// --- shared threads ------------------------------------------------------------------

/// Options that follow `thread` (`?thread=`).
pub fn follow(thread: &str) -> Opts {
    Opts {
        query: vec![("thread".into(), thread.into())],
        ..Opts::default()
    }
}

/// A complete USER text message sent in `thread`.
pub async fn say_in(conn: &mut Conn, thread: &str, text: &str) {
    let message_id = next_id("m");
    let mut start = conn.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": message_id, "text": text}),
    );
    start["thread_id"] = json!(thread);
    let mut end = conn.msg("USER", "MESSAGE_END", json!({"message_id": message_id}));
    end["thread_id"] = json!(thread);
    for m in [start, end] {
        if let Some(r) = conn.send(&m).await {
            assert_eq!(r.status, 200, "POST refused: {r:?}");
        }
    }
}

/// Opens a connection and waits for its session's HAI (and the TOOL_LIST after it).
pub async fn open_session(server: &Server, kind: Kind, opts: Opts) -> Conn {
    let mut c = connect_session(server, kind, opts).await;
    c.recv_type("HAI").await;
    c.recv_type("TOOL_LIST").await;
    c
}

/// Opens a connection. An HTTP streaming request only starts once its body has a first
/// line, as with every real client, which sends its HAI first: here a PING.
pub async fn connect_session(server: &Server, kind: Kind, opts: Opts) -> Conn {
    let mut c = Conn::open(server, kind, opts).await;
    if kind == Kind::Stream {
        c.ping("open").await;
    }
    c
}

/// The run as one follower or the publisher saw it: checks its shape and returns the text.
pub fn check_thread_run(msgs: &[Value], session: &str, thread: &str) -> String {
    let run: Vec<&Value> = msgs.iter().filter(|m| m["channel"] == "AGENT").collect();
    let kinds: Vec<&str> = run.iter().map(|m| ty(m)).collect();
    assert_eq!(kinds.first(), Some(&"RUN_STARTED"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"RUN_FINISHED"), "{kinds:?}");
    let run_id = &run[0]["run_id"];
    let mut text = String::new();
    for m in &run {
        assert_eq!(
            m["session"], session,
            "each copy is the follower's own: {m}"
        );
        assert_eq!(&m["run_id"], run_id, "one run: {m}");
        if matches!(ty(m), "RUN_STARTED" | "MESSAGE_PART" | "RUN_FINISHED") {
            assert_eq!(m["thread_id"], thread, "carries its thread: {m}");
        }
        if ty(m) == "MESSAGE_PART" {
            text.push_str(m["payload"]["text"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(
        run.last().map(|m| &m["payload"]["status"]),
        Some(&json!("OK"))
    );
    text
}
