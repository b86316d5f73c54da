//! Seeded random connection cuts in the middle of echo runs (contract sections 3 and 5).
//!
//! A client starts an echo run of a few hundred words, then again and again drops its
//! connection abruptly (no close frame, no end of stream) after a random number of messages,
//! sometimes waits a few milliseconds while the agent keeps streaming into the replay window,
//! and resumes: `?session=&last_rx_seq=`, SSE `Last-Event-ID`, or a client HAI naming the
//! session with `last_rx_seq`, on the same transport or handing the session over from
//! WebSocket to SSE to HTTP streaming and back. Sometimes it reports a `last_rx_seq` below
//! what it has, and then the messages after it must come again, identical.
//!
//! Checked on every connection: each message of the session carries exactly the next seq
//! (the replay starts right after the reported `last_rx_seq`, nothing is skipped, nothing is
//! sent twice), the replay comes before the HAI that confirms the resume and that HAI takes
//! the next seq, a connect-time resume announces no fresh session, a resume by HAI drops the
//! fresh one. Checked at the end of each run: its messages, de-duplicated by seq, are the
//! exact and complete run, and its parts rebuild the text. At the end of each test the
//! server's own record (REPLAY_REQUEST from seq 1) equals what the client assembled.
//!
//! Client messages the server has not acknowledged when a connection is cut are sent again
//! after the next confirming HAI (whose `last_rx_seq` says what the server processed), as a
//! client following the contract would; the server must drop the duplicates silently.
//!
//! A cut drops the client's socket: WebSocket without a close frame, SSE and HTTP streaming
//! in the middle of their chunked responses (and, for HTTP streaming, of the chunked request
//! body). Half the cuts reset the connection (SO_LINGER 0), the others close it. The clients
//! here speak to the sockets directly so that nothing is ended gracefully behind the test's
//! back.
//!
//! The seed is fixed per test and printed on failure; `HAIP_CUTS_SEED=<n>` overrides it.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Words of each echoed text.
const WORDS: usize = 200;
/// Cuts within one run at most; the rest of the run is then read without a cut.
const MAX_CUTS_PER_RUN: usize = 50;
/// Runs of one test at most.
const MAX_RUNS: usize = 20;
/// Wall-clock bound of one test.
const BUDGET: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------

/// xorshift64*: small, deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// The test's fixed seed, unless `HAIP_CUTS_SEED` (decimal or 0x-hex) overrides it.
fn seed_or(default: u64) -> u64 {
    let Ok(s) = std::env::var("HAIP_CUTS_SEED") else {
        return default;
    };
    let s = s.trim();
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("HAIP_CUTS_SEED={s:?} is not a number"))
}

// ---------------------------------------------------------------------------------------
// Raw clients: a cut is a dropped socket
// ---------------------------------------------------------------------------------------

/// What a raw connection read.
#[derive(Debug)]
enum Got {
    /// A message, with its SSE event id on SSE.
    Msg(Value, Option<String>),
    /// Text that is not JSON.
    Garbage(String),
    /// The server closed or ended the connection (WebSocket close code if any).
    End(Option<u16>),
}

enum RawIo {
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Http(Box<HttpIo>),
}

/// One HTTP/1.1 exchange over a plain socket: the chunked response is decoded by hand.
struct HttpIo {
    tcp: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    head_done: bool,
    chunked: bool,
    body_end: bool,
    eof: bool,
    /// SSE: the event being read.
    data: Vec<String>,
    id: Option<String>,
}

struct RawConn {
    kind: Kind,
    io: RawIo,
    got: VecDeque<Got>,
    ended: bool,
    token: String,
    base: String,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn query(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("?{}", parts.join("&"))
}

impl RawConn {
    /// Opens a connection. `params` go on the URL; SSE may carry a Last-Event-ID. SSE
    /// returns once the response head is in (the server has attached the session by then);
    /// HTTP streaming answers only after a first request line.
    async fn open(
        srv: &Server,
        kind: Kind,
        mut params: Vec<(String, String)>,
        last_event_id: Option<String>,
    ) -> RawConn {
        let token = srv.token();
        let io = match kind {
            Kind::Ws | Kind::WsRoot => {
                params.insert(0, ("token".into(), token.clone()));
                let url = srv.ws_url(&format!("/haip/websocket{}", query(&params)));
                let (ws, _) = bounded(tokio_tungstenite::connect_async(url))
                    .await
                    .expect("websocket handshake");
                RawIo::Ws(Box::new(ws))
            }
            Kind::Sse | Kind::Stream => {
                let mut tcp = bounded(TcpStream::connect(srv.addr))
                    .await
                    .expect("connect");
                tcp.set_nodelay(true).expect("nodelay");
                let head = if kind == Kind::Sse {
                    params.insert(0, ("token".into(), token.clone()));
                    let lei = last_event_id
                        .map(|id| format!("Last-Event-ID: {id}\r\n"))
                        .unwrap_or_default();
                    format!(
                        "GET /haip/sse{} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{lei}\r\n",
                        query(&params),
                        srv.addr
                    )
                } else {
                    format!(
                        "POST /haip/stream{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
                         Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
                        query(&params),
                        srv.addr
                    )
                };
                bounded(tcp.write_all(head.as_bytes()))
                    .await
                    .expect("write request head");
                RawIo::Http(Box::new(HttpIo {
                    tcp,
                    raw: Vec::new(),
                    body: Vec::new(),
                    head_done: false,
                    chunked: false,
                    body_end: false,
                    eof: false,
                    data: Vec::new(),
                    id: None,
                }))
            }
        };
        let mut conn = RawConn {
            kind,
            io,
            got: VecDeque::new(),
            ended: false,
            token,
            base: srv.url(""),
        };
        if kind == Kind::Sse {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !matches!(&conn.io, RawIo::Http(h) if h.head_done) && !conn.ended {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                assert!(!left.is_zero(), "no SSE response head within {WAIT:?}");
                conn.pump(left).await;
            }
        }
        conn
    }

    /// Sends one envelope: a text frame, an NDJSON line (one request-body chunk), or for SSE
    /// a `POST /haip/messages` to `session`.
    async fn send(&mut self, v: &Value, session: &str) -> Option<PostReply> {
        let text = v.to_string();
        match &mut self.io {
            RawIo::Ws(ws) => {
                bounded(ws.send(Message::Text(text.into())))
                    .await
                    .expect("websocket send");
                None
            }
            RawIo::Http(h) if self.kind == Kind::Stream => {
                let chunk = format!("{:x}\r\n{text}\n\r\n", text.len() + 1);
                bounded(h.tcp.write_all(chunk.as_bytes()))
                    .await
                    .expect("write request body chunk");
                None
            }
            RawIo::Http(_) => {
                Some(post_messages(&self.base, &self.token, Some(session), &text).await)
            }
        }
    }

    /// Reads from the socket once (up to `within`) and decodes what arrived.
    async fn pump(&mut self, within: Duration) -> bool {
        match &mut self.io {
            RawIo::Ws(ws) => match tokio::time::timeout(within, ws.next()).await {
                Err(_) => false,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.got.push_back(Got::End(None));
                    self.ended = true;
                    true
                }
                Ok(Some(Ok(m))) => {
                    match m {
                        Message::Text(t) => {
                            self.got
                                .push_back(match serde_json::from_str::<Value>(t.as_str()) {
                                    Ok(v) => Got::Msg(v, None),
                                    Err(_) => Got::Garbage(t.to_string()),
                                })
                        }
                        Message::Close(cf) => {
                            self.got.push_back(Got::End(cf.map(|c| u16::from(c.code))));
                            self.ended = true;
                        }
                        Message::Binary(b) => self
                            .got
                            .push_back(Got::Garbage(format!("binary frame {b:?}"))),
                        _ => {}
                    }
                    true
                }
            },
            RawIo::Http(h) => {
                let mut buf = [0u8; 16 * 1024];
                match tokio::time::timeout(within, h.tcp.read(&mut buf)).await {
                    Err(_) => return false,
                    Ok(Ok(0)) | Ok(Err(_)) => h.eof = true,
                    Ok(Ok(n)) => h.raw.extend_from_slice(&buf[..n]),
                }
                let sse = self.kind == Kind::Sse;
                h.decode(sse, &mut self.got);
                if (h.body_end || h.eof) && !self.ended {
                    self.got.push_back(Got::End(None));
                    self.ended = true;
                }
                true
            }
        }
    }

    async fn next_within(&mut self, within: Duration) -> Option<Got> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(g) = self.got.pop_front() {
                return Some(g);
            }
            if self.ended {
                return Some(Got::End(None));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.pump(left).await {
                return None;
            }
        }
    }

    /// Drops the socket without a close frame or the end of a chunked body; with `reset`,
    /// SO_LINGER 0 makes the kernel send RST instead of FIN.
    fn cut(self, reset: bool) {
        if reset {
            match &self.io {
                RawIo::Ws(ws) => {
                    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                        let _ = s.set_zero_linger();
                    }
                }
                RawIo::Http(h) => {
                    let _ = h.tcp.set_zero_linger();
                }
            }
        }
        drop(self);
    }
}

impl HttpIo {
    fn decode(&mut self, sse: bool, out: &mut VecDeque<Got>) {
        if !self.head_done {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
            let status = head.split(' ').nth(1).unwrap_or("");
            assert_eq!(status, "200", "response head: {head}");
            self.chunked = head.contains("transfer-encoding: chunked");
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        if self.chunked {
            while !self.body_end {
                let Some(le) = find(&self.raw, b"\r\n") else {
                    break;
                };
                let size_text = String::from_utf8_lossy(&self.raw[..le]).to_string();
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
                if self.raw.len() < le + 2 + size + 2 {
                    break;
                }
                self.body
                    .extend_from_slice(&self.raw[le + 2..le + 2 + size]);
                self.raw.drain(..le + 2 + size + 2);
                if size == 0 {
                    self.body_end = true;
                }
            }
        } else {
            self.body.append(&mut self.raw);
        }
        while let Some(nl) = self.body.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.body.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim_end_matches('\r')
                .to_string();
            let parse = |text: &str, id: Option<String>| match serde_json::from_str::<Value>(text) {
                Ok(v) => Got::Msg(v, id),
                Err(_) => Got::Garbage(text.to_string()),
            };
            if !sse {
                if !line.trim().is_empty() {
                    out.push_back(parse(&line, None));
                }
            } else if line.is_empty() {
                if !self.data.is_empty() {
                    let text = self.data.join("\n");
                    self.data.clear();
                    out.push_back(parse(&text, self.id.take()));
                }
                self.id = None;
            } else if let Some(d) = line.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            } else if let Some(d) = line.strip_prefix("id:") {
                self.id = Some(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The cutting client
// ---------------------------------------------------------------------------------------

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Ws | Kind::WsRoot => "websocket",
        Kind::Sse => "sse",
        Kind::Stream => "stream",
    }
}

/// How a connection resumes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// The first connection: a new session.
    Fresh,
    /// `?session=ID&last_rx_seq=N` on the connection URL.
    Query,
    /// SSE `Last-Event-ID: <session>:<seq>`.
    LastEventId,
    /// A client HAI naming the session, with payload `last_rx_seq`.
    Hai,
}

/// Which transport each new connection uses.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Only(Kind),
    /// WebSocket -> SSE -> HTTP streaming -> WebSocket ...
    Rotate,
}

impl Plan {
    fn first(self) -> Kind {
        match self {
            Plan::Only(k) => k,
            Plan::Rotate => Kind::Ws,
        }
    }

    fn after(self, k: Kind) -> Kind {
        match self {
            Plan::Only(k) => k,
            Plan::Rotate => match k {
                Kind::Ws | Kind::WsRoot => Kind::Sse,
                Kind::Sse => Kind::Stream,
                Kind::Stream => Kind::Ws,
            },
        }
    }
}

/// One connection of the client.
struct Live {
    conn: RawConn,
    kind: Kind,
    method: Method,
    /// The last_rx_seq this connection resumed from.
    reported: u64,
    /// The seq the next message of the session must carry on this connection.
    next: u64,
    /// Wall clock when the connection was started. Every HAI an earlier connection caused
    /// is older, so the confirming HAI is the first HAI of the session at or after it.
    t0: u64,
    confirmed: bool,
    /// The newest ts among the messages replayed before the confirming HAI.
    replay_max_ts: u64,
    /// The fresh session the server announced before a resume by HAI.
    fresh: Option<String>,
    /// Messages of the session read on this connection.
    read: usize,
    /// What the client knew the server had processed when it connected.
    acked_at_connect: u64,
}

fn ts_of(v: &Value) -> u64 {
    v["ts"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no decimal ts in {v}"))
}

fn dec(v: &Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok())
}

struct Client<'a> {
    /// The nodes serving the session: one, or several sharing a Redis (cluster mode).
    nodes: &'a [Server],
    /// The node of the live connection.
    node: usize,
    name: &'static str,
    seed: u64,
    rng: Rng,
    started: Instant,
    /// The session; empty until the server's first HAI.
    session: String,
    /// Every message of the session received, by seq (de-duplicated).
    got: BTreeMap<u64, Value>,
    highest: u64,
    /// Every client message; `outbox[i]` has seq i + 1.
    outbox: Vec<Value>,
    /// The highest client seq the server is known to have processed.
    acked: u64,
    pings: Vec<String>,
    pongs: HashMap<String, usize>,
    /// Run ids in the order their RUN_STARTED arrived.
    runs: Vec<String>,
    finished: HashSet<String>,
    cuts: BTreeMap<&'static str, usize>,
    resumes: BTreeMap<String, usize>,
    /// Messages received again because a lower last_rx_seq was reported (identical copies).
    allowed_repeats: usize,
    retransmits: usize,
    /// Cuts before the confirming HAI was read (in the middle of a replay or before it).
    cuts_unconfirmed: usize,
    longest_replay: usize,
    away_pauses: usize,
    trace: Vec<String>,
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.context());
        }
    }
}

impl<'a> Client<'a> {
    fn new(nodes: &'a [Server], name: &'static str, seed: u64) -> Client<'a> {
        Client {
            nodes,
            node: 0,
            name,
            seed,
            rng: Rng::new(seed),
            started: Instant::now(),
            session: String::new(),
            got: BTreeMap::new(),
            highest: 0,
            outbox: Vec::new(),
            acked: 0,
            pings: Vec::new(),
            pongs: HashMap::new(),
            runs: Vec::new(),
            finished: HashSet::new(),
            cuts: BTreeMap::new(),
            resumes: BTreeMap::new(),
            allowed_repeats: 0,
            retransmits: 0,
            cuts_unconfirmed: 0,
            longest_replay: 0,
            away_pauses: 0,
            trace: Vec::new(),
        }
    }

    fn context(&self) -> String {
        let tail: Vec<&String> = self.trace.iter().rev().take(25).rev().collect();
        let tail: Vec<&str> = tail.iter().map(|s| s.as_str()).collect();
        format!(
            "resume_cuts::{} failed with seed {:#x} (rerun with HAIP_CUTS_SEED={:#x}); \
             session {}, highest seq {}, client seq {}, acked {}, cuts {:?}\nlast events:\n  {}",
            self.name,
            self.seed,
            self.seed,
            self.session,
            self.highest,
            self.outbox.len(),
            self.acked,
            self.cuts,
            tail.join("\n  ")
        )
    }

    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{msg}\n(seed {:#x})", self.seed)
    }

    fn note(&mut self, s: String) {
        self.trace.push(s);
    }

    fn total_cuts(&self) -> usize {
        self.cuts.values().sum()
    }

    fn run_done(&self, run: usize) -> bool {
        self.runs
            .get(run)
            .is_some_and(|r| self.finished.contains(r))
    }

    fn check_budget(&self) {
        if self.started.elapsed() > BUDGET {
            self.fail(format!(
                "time budget of {BUDGET:?} exceeded after {} cuts",
                self.total_cuts()
            ));
        }
    }

    // --- sending ------------------------------------------------------------------------

    /// Builds the next client envelope and keeps it for retransmission.
    fn new_msg(&mut self, channel: &str, ty: &str, payload: Value) -> Value {
        let seq = self.outbox.len() as u64 + 1;
        let session = if self.session.is_empty() {
            "pending"
        } else {
            self.session.as_str()
        };
        let v = envelope(&next_id("cut"), session, seq, channel, ty, payload);
        self.outbox.push(v.clone());
        v
    }

    async fn send(&mut self, live: &mut Live, v: &Value) {
        if let Some(reply) = live.conn.send(v, &self.session).await {
            if reply.status != 200 {
                self.fail(format!("POST /haip/messages refused {v}: {reply:?}"));
            }
            if let Some(a) = dec(&reply.body["ack"]) {
                self.acked = self.acked.max(a);
            }
        }
    }

    async fn ping(&mut self, live: &mut Live) {
        let nonce = format!("p{}", self.pings.len());
        self.pings.push(nonce.clone());
        let v = self.new_msg("SYSTEM", "PING", json!({ "nonce": nonce }));
        self.send(live, &v).await;
    }

    /// The user's text as MESSAGE_START (first piece), two MESSAGE_PARTs, MESSAGE_END.
    async fn say(&mut self, live: &mut Live, text: &str) {
        let message_id = next_id("user-msg");
        let len = text.len() as u64;
        let mut cut_a = 1 + self.rng.below(len - 2) as usize;
        let mut cut_b = 1 + self.rng.below(len - 2) as usize;
        if cut_a > cut_b {
            std::mem::swap(&mut cut_a, &mut cut_b);
        }
        let pieces = [&text[..cut_a], &text[cut_a..cut_b], &text[cut_b..]];
        let start = self.new_msg(
            "USER",
            "MESSAGE_START",
            json!({"message_id": message_id, "text": pieces[0]}),
        );
        self.send(live, &start).await;
        for p in &pieces[1..] {
            let part = self.new_msg(
                "USER",
                "MESSAGE_PART",
                json!({"message_id": message_id, "text": p}),
            );
            self.send(live, &part).await;
        }
        let end = self.new_msg("USER", "MESSAGE_END", json!({ "message_id": message_id }));
        self.send(live, &end).await;
    }

    /// Sends again every client message after `processed`, in order.
    async fn retransmit_after(&mut self, live: &mut Live, processed: u64) {
        let again: Vec<Value> = self.outbox[processed as usize..].to_vec();
        self.retransmits += again.len();
        for v in &again {
            self.send(live, v).await;
        }
    }

    // --- connections --------------------------------------------------------------------

    /// The node of the live connection.
    fn srv(&self) -> &'a Server {
        &self.nodes[self.node]
    }

    async fn open_first(&mut self, kind: Kind) -> Live {
        let conn = RawConn::open(self.srv(), kind, Vec::new(), None).await;
        let mut live = Live {
            conn,
            kind,
            method: Method::Fresh,
            reported: 0,
            next: 1,
            t0: now_ms(),
            confirmed: true,
            replay_max_ts: 0,
            fresh: None,
            read: 0,
            acked_at_connect: 0,
        };
        if kind == Kind::Sse {
            // Posts need the session: wait for the server's HAI.
            self.read_one(&mut live).await;
        }
        let hai = self.new_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS));
        self.send(&mut live, &hai).await;
        self.note(format!("open {kind:?}"));
        live
    }

    /// Drops the connection abruptly: no close frame, no end of the request body.
    fn cut(&mut self, live: Live) {
        let reset = self.rng.percent(50);
        *self.cuts.entry(kind_name(live.kind)).or_default() += 1;
        if !live.confirmed {
            self.cuts_unconfirmed += 1;
        }
        self.note(format!(
            "cut {:?}/{:?} after {} messages (confirmed: {}, highest {}, {})",
            live.kind,
            live.method,
            live.read,
            live.confirmed,
            self.highest,
            if reset { "RST" } else { "FIN" }
        ));
        live.conn.cut(reset);
    }

    async fn reconnect(&mut self, kind: Kind) -> Live {
        // Whatever an earlier connection caused the server to send is stamped before this.
        let t_cut = now_ms();
        while now_ms() <= t_cut {
            tokio::time::sleep(ms(1)).await;
        }
        let method = match kind {
            Kind::Sse if self.rng.percent(50) => Method::LastEventId,
            Kind::Sse => Method::Query,
            _ if self.rng.percent(50) => Method::Hai,
            _ => Method::Query,
        };
        let reported = if self.highest > 0 && self.rng.percent(20) {
            self.highest - self.rng.below(self.highest.min(6) + 1)
        } else {
            self.highest
        };
        if self.nodes.len() > 1 && self.rng.percent(50) {
            // Cluster mode: the client lands on another node.
            self.node = (self.node + 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize)
                % self.nodes.len();
            self.note(format!("to node {}", self.node));
        }
        let t0 = now_ms();
        let s = self.session.clone();
        let conn = match method {
            Method::Query => {
                let params = vec![
                    ("session".to_string(), s.clone()),
                    ("last_rx_seq".to_string(), reported.to_string()),
                ];
                RawConn::open(self.srv(), kind, params, None).await
            }
            Method::LastEventId => {
                RawConn::open(
                    self.srv(),
                    kind,
                    Vec::new(),
                    Some(format!("{s}:{reported}")),
                )
                .await
            }
            Method::Hai | Method::Fresh => RawConn::open(self.srv(), kind, Vec::new(), None).await,
        };
        let mut live = Live {
            conn,
            kind,
            method,
            reported,
            next: reported + 1,
            t0,
            confirmed: false,
            replay_max_ts: 0,
            fresh: None,
            read: 0,
            acked_at_connect: self.acked,
        };
        *self
            .resumes
            .entry(format!("{}/{method:?}", kind_name(kind)))
            .or_default() += 1;
        self.note(format!(
            "resume {kind:?}/{method:?} last_rx_seq={reported} (highest {}, client seq {}, acked {})",
            self.highest,
            self.outbox.len(),
            self.acked
        ));
        match method {
            Method::Hai => {
                let mut p = hai_payload(&ALL_EVENTS);
                p["last_rx_seq"] = json!(reported.to_string());
                let hai = self.new_msg("SYSTEM", "HAI", p);
                self.send(&mut live, &hai).await;
            }
            Method::Query if kind == Kind::Stream => {
                // The NDJSON response starts once a first request line is in: the oldest
                // message not known to be processed, else a new PING.
                if (self.acked as usize) < self.outbox.len() {
                    let v = self.outbox[self.acked as usize].clone();
                    self.retransmits += 1;
                    self.send(&mut live, &v).await;
                } else {
                    self.ping(&mut live).await;
                }
            }
            _ => {}
        }
        live
    }

    // --- receiving ----------------------------------------------------------------------

    async fn read_one(&mut self, live: &mut Live) {
        match live.conn.next_within(WAIT).await {
            Some(Got::Msg(v, id)) => {
                if live.kind == Kind::Sse {
                    let expected = format!("{}:{}", v["session"].as_str().unwrap_or(""), seq(&v));
                    if id.as_deref() != Some(expected.as_str()) {
                        self.fail(format!("SSE event id {id:?}, expected {expected:?}: {v}"));
                    }
                }
                self.on_msg(live, v).await
            }
            other => {
                let what = match other {
                    None => format!("nothing within {WAIT:?}"),
                    Some(Got::Garbage(t)) => format!("a frame that is not JSON: {t:?}"),
                    Some(Got::End(code)) => format!("the end of the connection (close {code:?})"),
                    Some(Got::Msg(..)) => unreachable!(),
                };
                self.fail(format!(
                    "{:?}/{:?} connection: expected a message, got {what} \
                     (read {} of the session on it, confirmed: {})",
                    live.kind, live.method, live.read, live.confirmed
                ))
            }
        }
    }

    async fn read_until_confirmed(&mut self, live: &mut Live) {
        while !live.confirmed {
            self.read_one(live).await;
        }
    }

    async fn on_msg(&mut self, live: &mut Live, m: Value) {
        let t = ty(&m).to_string();
        if t == "ERROR" {
            self.fail(format!(
                "{:?}/{:?}: unexpected ERROR {m}",
                live.kind, live.method
            ));
        }
        let s = seq(&m);
        let sess = m["session"].as_str().unwrap_or_default().to_string();
        if self.session.is_empty() {
            if t != "HAI" || s != 1 {
                self.fail(format!("the first message must be the server's HAI: {m}"));
            }
            self.session = sess.clone();
        }
        if sess != self.session {
            // Only a resume by HAI sees another session: the fresh one announced first.
            let ok = live.method == Method::Hai
                && !live.confirmed
                && match (s, t.as_str()) {
                    (1, "HAI") => {
                        live.fresh = Some(sess.clone());
                        true
                    }
                    (2, "TOOL_LIST") => live.fresh.as_deref() == Some(sess.as_str()),
                    _ => false,
                };
            if !ok {
                self.fail(format!(
                    "{:?}/{:?}: a message of another session (confirmed: {}): {m}",
                    live.kind, live.method, live.confirmed
                ));
            }
            return;
        }
        if s != live.next {
            self.fail(format!(
                "{:?}/{:?} resumed from {}: expected seq {}, got {s} (gap, reorder or \
                 duplicate; highest held {}): {m}",
                live.kind, live.method, live.reported, live.next, self.highest
            ));
        }
        live.next += 1;
        live.read += 1;
        let new = s > self.highest;
        if new {
            self.got.insert(s, m.clone());
            self.highest = s;
        } else {
            // Allowed only because this connection reported a lower last_rx_seq.
            debug_assert!(s > live.reported);
            if self.got.get(&s) != Some(&m) {
                self.fail(format!(
                    "seq {s} came again but differs: first {}, now {m}",
                    self.got[&s]
                ));
            }
            self.allowed_repeats += 1;
        }
        if let Some(a) = dec(&m["ack"]) {
            if a > self.outbox.len() as u64 {
                self.fail(format!(
                    "ack {a} beyond the last client seq {}: {m}",
                    self.outbox.len()
                ));
            }
            self.acked = self.acked.max(a);
        }

        if !live.confirmed {
            if t == "HAI" && ts_of(&m) >= live.t0 {
                self.confirm(live, &m).await;
            } else {
                // Replayed: sent before the resume was attached.
                live.replay_max_ts = live.replay_max_ts.max(ts_of(&m));
            }
        } else if t == "HAI" && new && live.method != Method::Fresh {
            self.fail(format!(
                "a second confirming HAI on one connection (t0 {}, read {}): {m}",
                live.t0, live.read
            ));
        }

        if !new {
            return;
        }
        match t.as_str() {
            "RUN_STARTED" => {
                let rid = m["run_id"].as_str().unwrap_or_else(|| {
                    self.fail(format!("RUN_STARTED without run_id: {m}"));
                });
                self.runs.push(rid.to_string());
            }
            "RUN_FINISHED" => {
                let rid = m["run_id"].as_str().unwrap_or_default().to_string();
                self.finished.insert(rid);
            }
            "PONG" => {
                let nonce = m["payload"]["nonce"].as_str().unwrap_or_default();
                *self.pongs.entry(nonce.to_string()).or_default() += 1;
            }
            "REPLAY_REQUEST" => {
                // The server misses client messages: send them again (contract section 5).
                let from = dec(&m["payload"]["from_seq"]).unwrap_or(1).max(1);
                let to = dec(&m["payload"]["to_seq"])
                    .unwrap_or(self.outbox.len() as u64)
                    .min(self.outbox.len() as u64);
                self.note(format!("server asked for client seqs {from}..={to}"));
                let again: Vec<Value> = self.outbox[(from - 1) as usize..to as usize].to_vec();
                for v in &again {
                    self.send(live, v).await;
                }
            }
            _ => {}
        }
    }

    /// The HAI that confirms this connection's resume.
    async fn confirm(&mut self, live: &mut Live, hai: &Value) {
        let s = seq(hai);
        if s != live.reported + live.read as u64 {
            self.fail(format!(
                "the confirming HAI must follow the replay directly: {hai}"
            ));
        }
        if ts_of(hai) < live.replay_max_ts {
            self.fail(format!(
                "a replayed message is newer ({}) than the confirming HAI: {hai}",
                live.replay_max_ts
            ));
        }
        let p = &hai["payload"];
        if p["haip_version"] != "1.1.2" {
            self.fail(format!("confirming HAI: {hai}"));
        }
        if p["capabilities"]["binary_frames"] != json!(live.kind.is_ws()) {
            self.fail(format!(
                "binary_frames must follow the new transport {:?}: {hai}",
                live.kind
            ));
        }
        let Some(processed) = dec(&p["last_rx_seq"]) else {
            self.fail(format!("the confirming HAI has no last_rx_seq: {hai}"));
        };
        if processed < live.acked_at_connect || processed > self.outbox.len() as u64 {
            self.fail(format!(
                "last_rx_seq {processed} of the confirming HAI: the server had acknowledged \
                 {} and the client sent {}: {hai}",
                live.acked_at_connect,
                self.outbox.len()
            ));
        }
        if let Some(fresh) = &live.fresh {
            if self.srv().state.engine.get(fresh).is_some() {
                self.fail(format!(
                    "the fresh session {fresh} announced before the resume by HAI is kept"
                ));
            }
        }
        live.confirmed = true;
        self.longest_replay = self.longest_replay.max(live.read - 1);
        self.acked = self.acked.max(processed);
        self.note(format!(
            "confirmed seq {s} after {} replayed, last_rx_seq {processed}",
            live.read - 1
        ));
        self.retransmit_after(live, processed).await;
        if live.kind != Kind::Stream || live.method != Method::Query {
            if self.rng.percent(30) {
                self.ping(live).await;
            }
        } else if self.rng.percent(15) {
            self.ping(live).await;
        }
    }

    // --- checks -------------------------------------------------------------------------

    /// Run `run` is complete, exact and in order in what the client assembled.
    fn check_run(&self, run: usize, text: &str) {
        if self.runs.len() != run + 1 {
            self.fail(format!(
                "{} runs started, expected {}",
                self.runs.len(),
                run + 1
            ));
        }
        let rid = self.runs[run].as_str();
        let msgs: Vec<&Value> = self.got.values().filter(|v| v["run_id"] == rid).collect();
        let words = text.split(' ').count();
        let mut expected = vec!["RUN_STARTED", "MESSAGE_START"];
        expected.extend(std::iter::repeat_n("MESSAGE_PART", words));
        expected.extend(["MESSAGE_END", "RUN_FINISHED"]);
        let got: Vec<&str> = msgs.iter().map(|v| ty(v)).collect();
        if got != expected {
            let each: Vec<String> = msgs
                .iter()
                .map(|v| format!("{}:{}:{}", seq(v), ty(v), v["payload"]["text"]))
                .collect();
            self.fail(format!(
                "run {run} ({rid}) is not the exact echo run: {} messages, types {got:?}; each (seq:type:text): {each:?}",
                msgs.len()
            ));
        }
        for m in &msgs {
            assert_eq!(chan(m), "AGENT", "{m}");
        }
        assert_eq!(msgs[0]["payload"]["run_id"], rid);
        let mid = msgs[1]["payload"]["message_id"].clone();
        assert_eq!(msgs[1]["payload"]["author"], "echo");
        let echoed: String = msgs[2..2 + words]
            .iter()
            .map(|p| {
                assert_eq!(p["payload"]["message_id"], mid, "{p}");
                p["payload"]["text"].as_str().unwrap()
            })
            .collect();
        if echoed != text {
            self.fail(format!(
                "run {run}: the parts do not rebuild the text\n sent: {text}\n got:  {echoed}"
            ));
        }
        let end = msgs[2 + words];
        assert_eq!(end["payload"]["message_id"], mid);
        assert_eq!(end["payload"]["tokens"], words.to_string());
        let fin = msgs.last().unwrap();
        assert_eq!(fin["payload"]["status"], "OK", "{fin}");
        assert_eq!(fin["payload"]["run_id"], rid);
    }

    /// Everything acknowledged, every PING answered once, and the server's record (a
    /// REPLAY_REQUEST from seq 1) equal to what the client assembled.
    async fn finish(&mut self, live: &mut Live) {
        self.read_until_confirmed(live).await;
        let nonce = "final".to_string();
        self.pings.push(nonce.clone());
        let v = self.new_msg("SYSTEM", "PING", json!({ "nonce": nonce }));
        self.send(live, &v).await;
        while !self.pongs.contains_key("final") {
            self.read_one(live).await;
        }
        assert_eq!(
            self.acked,
            self.outbox.len() as u64,
            "every client message processed"
        );
        for p in &self.pings {
            assert_eq!(
                self.pongs.get(p).copied().unwrap_or(0),
                1,
                "PING {p} must be answered exactly once (retransmitted copies are duplicates)"
            );
        }
        assert_eq!(assert_contiguous(self.got.values()), self.highest);
        let mut last_ts = 0;
        for m in self.got.values() {
            assert!(ts_of(m) >= last_ts, "ts goes back at {m}");
            last_ts = ts_of(m);
        }

        let h = self.highest;
        let rr = self.new_msg(
            "SYSTEM",
            "REPLAY_REQUEST",
            json!({"from_seq": "1", "to_seq": h.to_string()}),
        );
        self.send(live, &rr).await;
        let mut expect = 1;
        while expect <= h {
            let m = match live.conn.next_within(WAIT).await {
                Some(Got::Msg(m, _)) => m,
                other => self.fail(format!("replay of 1..={h} stopped at {expect}: {other:?}")),
            };
            if m["session"] == self.session.as_str() && seq(&m) <= h {
                assert_eq!(seq(&m), expect, "the replay is in order");
                if self.got.get(&expect) != Some(&m) {
                    self.fail(format!(
                        "the server's record of seq {expect} differs from what the client got:\n \
                         server {m}\n client {}",
                        self.got[&expect]
                    ));
                }
                expect += 1;
            } else {
                self.on_msg(live, m).await;
            }
        }
    }
}

/// `n` words, single spaces, some punctuation.
fn text_for(rng: &mut Rng, run: usize, n: usize) -> String {
    (0..n)
        .map(|i| {
            let tail = match rng.below(8) {
                0 => ",",
                1 => ".",
                2 => "!",
                _ => "",
            };
            format!("r{run}w{i}{tail}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Messages to read before the next cut (at least one of the session, so that the server
/// has attached the connection; SSE attaches before its response starts, so 0 there too).
fn pick_k(rng: &mut Rng, kind: Kind) -> usize {
    if kind == Kind::Sse && rng.percent(10) {
        return 0;
    }
    (match rng.below(10) {
        0 => 1,
        1..=5 => 1 + rng.below(5),
        6..=8 => 6 + rng.below(15),
        _ => 21 + rng.below(40),
    }) as usize
}

/// Runs echo runs with random cuts until `target` cuts were made, then checks the whole.
async fn cut_and_resume(name: &'static str, default_seed: u64, plan: Plan, target: usize) {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(1)).await;
    cut_and_resume_on(&[srv], name, default_seed, plan, target).await
}

/// The same over `nodes`: each reconnect lands on a random one when there are several.
async fn cut_and_resume_on(
    nodes: &[Server],
    name: &'static str,
    default_seed: u64,
    plan: Plan,
    target: usize,
) {
    let seed = seed_or(default_seed);
    let mut cl = Client::new(nodes, name, seed);
    let mut kind = plan.first();
    let mut live = cl.open_first(kind).await;
    let mut run = 0;
    while cl.total_cuts() < target {
        if run == MAX_RUNS {
            cl.fail(format!("only {} cuts in {MAX_RUNS} runs", cl.total_cuts()));
        }
        cl.read_until_confirmed(&mut live).await;
        let text = text_for(&mut cl.rng, run, WORDS);
        cl.note(format!("run {run} starts"));
        cl.say(&mut live, &text).await;
        let mut cuts_in_run = 0;
        while !cl.run_done(run) {
            cl.check_budget();
            if cuts_in_run == MAX_CUTS_PER_RUN {
                cl.read_one(&mut live).await;
                continue;
            }
            let k = pick_k(&mut cl.rng, kind);
            while live.read < k && !cl.run_done(run) {
                cl.read_one(&mut live).await;
            }
            if cl.run_done(run) {
                break;
            }
            cl.cut(live);
            cuts_in_run += 1;
            if cl.rng.percent(30) {
                // The agent goes on streaming with no connection attached.
                let pause = if cl.rng.percent(20) {
                    15 + cl.rng.below(50)
                } else {
                    1 + cl.rng.below(8)
                };
                cl.note(format!("away {pause} ms"));
                cl.away_pauses += 1;
                tokio::time::sleep(ms(pause)).await;
            }
            kind = plan.after(kind);
            live = cl.reconnect(kind).await;
        }
        cl.check_run(run, &text);
        cl.note(format!("run {run} complete after {cuts_in_run} cuts"));
        run += 1;
    }
    cl.finish(&mut live).await;
    for r in 0..run {
        assert!(cl.run_done(r));
    }
    eprintln!(
        "resume_cuts::{name}: seed {seed:#x}, {run} runs of {WORDS} words, cuts {:?} \
         ({} before the confirming HAI, {} followed by a pause), resumes {:?}, longest \
         replay {}, {} messages, {} identical repeats after a lowered last_rx_seq, {} client \
         retransmits, {:?}",
        cl.cuts,
        cl.cuts_unconfirmed,
        cl.away_pauses,
        cl.resumes,
        cl.longest_replay,
        cl.highest,
        cl.allowed_repeats,
        cl.retransmits,
        cl.started.elapsed()
    );
}

#[tokio::test]
async fn websocket_cuts() {
    cut_and_resume("websocket_cuts", 0x5EED_0001, Plan::Only(Kind::Ws), 200).await
}

#[tokio::test]
async fn sse_cuts() {
    cut_and_resume("sse_cuts", 0x5EED_0002, Plan::Only(Kind::Sse), 200).await
}

#[tokio::test]
async fn stream_cuts() {
    cut_and_resume("stream_cuts", 0x5EED_0003, Plan::Only(Kind::Stream), 200).await
}

/// Every cut hands the session to the next transport: WebSocket -> SSE -> HTTP streaming.
#[tokio::test]
async fn handoff_cuts() {
    cut_and_resume("handoff_cuts", 0x5EED_0004, Plan::Rotate, 150).await
}

/// Cluster mode (contract section 13): two nodes on one Redis, and half the reconnects
/// land on the other node, on every transport in turn. Nothing may be lost or repeated.
#[tokio::test]
async fn cluster_cuts() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        let url = redis.url();
        let node = Server::start_with(move |c| {
            c.echo_word_delay = ms(1);
            c.redis_url = Some(url);
            c.node_id = Some(name.to_string());
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.get_json("/health").await.0 != 200 {
            assert!(Instant::now() < deadline, "{name} did not reach Redis");
            tokio::time::sleep(ms(20)).await;
        }
        nodes.push(node);
    }
    cut_and_resume_on(&nodes, "cluster_cuts", 0x5EED_0005, Plan::Rotate, 150).await
}
