//! Raw clients: a cut is a dropped socket, so nothing here ends a connection gracefully
//! behind the test's back. WebSocket through tungstenite; SSE and HTTP streaming as HTTP/1.1
//! over a plain socket, the chunked response decoded by hand.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{bounded, post_messages, Kind, PostReply, Server, WAIT};

/// What a raw connection read.
#[derive(Debug)]
pub(super) enum Got {
    /// A message, with its SSE event id on SSE.
    Msg(Value, Option<String>),
    /// Text that is not JSON.
    Garbage(String),
    /// The server closed or ended the connection (WebSocket close code if any).
    End(Option<u16>),
}

pub(super) enum RawIo {
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Http(Box<HttpIo>),
}

/// One HTTP/1.1 exchange over a plain socket: the chunked response is decoded by hand.
pub(super) struct HttpIo {
    pub(super) tcp: TcpStream,
    pub(super) raw: Vec<u8>,
    pub(super) body: Vec<u8>,
    pub(super) head_done: bool,
    pub(super) chunked: bool,
    pub(super) body_end: bool,
    pub(super) eof: bool,
    /// SSE: the event being read.
    pub(super) data: Vec<String>,
    pub(super) id: Option<String>,
}

pub(super) struct RawConn {
    pub(super) kind: Kind,
    pub(super) io: RawIo,
    pub(super) got: VecDeque<Got>,
    pub(super) ended: bool,
    pub(super) token: String,
    pub(super) base: String,
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn query(pairs: &[(String, String)]) -> String {
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
    pub(super) async fn open(
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
    pub(super) async fn send(&mut self, v: &Value, session: &str) -> Option<PostReply> {
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
    pub(super) async fn pump(&mut self, within: Duration) -> bool {
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

    pub(super) async fn next_within(&mut self, within: Duration) -> Option<Got> {
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
    pub(super) fn cut(self, reset: bool) {
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
    pub(super) fn decode(&mut self, sse: bool, out: &mut VecDeque<Got>) {
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
