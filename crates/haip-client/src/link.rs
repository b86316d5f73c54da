//! One open connection to a server, whatever the transport: it writes envelopes and reads
//! frames. Reconnecting, ordering and resending live in the driver and the session, once.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use haip_protocol::Envelope;
use tokio::sync::mpsc;

use crate::error::ClientError;
use crate::Transport;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Dial {
    pub url: String,
    pub token: Option<String>,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// The session to resume and the last seq received from it.
    pub resume: Option<(String, u64)>,
    pub timeout: Duration,
    /// Used for `wss://` (the HTTP transports get it through their client).
    pub tls: std::sync::Arc<rustls::ClientConfig>,
}

impl Dial {
    fn query(&self, with_token: bool) -> Vec<(String, String)> {
        let mut q = self.query.clone();
        if with_token {
            if let Some(t) = &self.token {
                q.push(("token".into(), t.clone()));
            }
        }
        if let Some((session, last)) = &self.resume {
            q.push(("session".into(), session.clone()));
            q.push(("last_rx_seq".into(), last.to_string()));
        }
        q
    }

    fn http_request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let mut b = builder;
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b
    }
}

/// A frame read from the server.
#[derive(Debug)]
pub enum Wire {
    Text(Bytes),
    Binary(Bytes),
}

/// How the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The WebSocket close code, when there was one.
    pub code: Option<u16>,
    pub reason: String,
}

type Ws = yawc::TcpWebSocket;

pub enum Link {
    WebSocket(Box<Ws>),
    Sse(Box<SseLink>),
    Stream(StreamLink),
}

impl Link {
    /// Opens a connection; `first` is written before anything is read (the client's HAI,
    /// which HTTP streaming needs as its first line).
    pub async fn open(
        transport: Transport,
        dial: &Dial,
        http: &reqwest::Client,
        first: &Envelope,
    ) -> Result<Link, ClientError> {
        let opening = async {
            let mut link = match transport {
                Transport::WebSocket => Link::WebSocket(Box::new(open_ws(dial).await?)),
                Transport::Sse => Link::Sse(Box::new(SseLink::open(dial, http).await?)),
                Transport::HttpStream => {
                    return Ok(Link::Stream(StreamLink::open(dial, http, first).await?))
                }
            };
            link.write(std::slice::from_ref(first), false).await?;
            Ok(link)
        };
        tokio::time::timeout(dial.timeout, opening)
            .await
            .map_err(|_| ClientError::Timeout(dial.timeout))?
    }

    /// Whether writes wait for something (SSE posts wait until the stream names the
    /// session); [`Link::write`] with nothing new sends them.
    pub fn has_waiting(&self) -> bool {
        matches!(self, Link::Sse(sse) if !sse.waiting.is_empty() && sse.session.is_some())
    }

    pub fn transport(&self) -> Transport {
        match self {
            Link::WebSocket(_) => Transport::WebSocket,
            Link::Sse(_) => Transport::Sse,
            Link::Stream(_) => Transport::HttpStream,
        }
    }

    /// Writes envelopes in order with one flush. With `binary_frames` (the server's HAI
    /// said it takes them), audio goes over WebSocket as two frames: the envelope with
    /// `bin_len`/`bin_mime` and no data, then the bytes; elsewhere it stays base64.
    pub async fn write(
        &mut self,
        envs: &[Envelope],
        binary_frames: bool,
    ) -> Result<(), ClientError> {
        match self {
            Link::WebSocket(ws) => {
                for env in envs {
                    let frames = match two_frame(env) {
                        Some((header, data)) if binary_frames => {
                            vec![yawc::Frame::text(header), yawc::Frame::binary(data)]
                        }
                        _ => vec![yawc::Frame::text(env.to_json())],
                    };
                    for frame in frames {
                        ws.feed(frame).await.map_err(ClientError::transport)?;
                    }
                }
                ws.flush().await.map_err(ClientError::transport)
            }
            Link::Sse(sse) => sse.write(envs).await,
            Link::Stream(s) => s.write(envs),
        }
    }

    /// The next frame; `Err(Ended)` when the server closed or the connection broke.
    pub async fn read(&mut self) -> Result<Wire, Ended> {
        match self {
            Link::WebSocket(ws) => loop {
                let Some(frame) = ws.next().await else {
                    return Err(Ended {
                        code: None,
                        reason: "connection lost".into(),
                    });
                };
                match frame.opcode() {
                    yawc::OpCode::Text => return Ok(Wire::Text(frame.into_payload())),
                    yawc::OpCode::Binary => return Ok(Wire::Binary(frame.into_payload())),
                    yawc::OpCode::Close => {
                        return Err(Ended {
                            code: frame.close_code().map(u16::from),
                            reason: String::from_utf8_lossy(close_reason(frame.payload()))
                                .into_owned(),
                        })
                    }
                    _ => {}
                }
            },
            Link::Sse(sse) => sse.read().await,
            Link::Stream(s) => s.read().await,
        }
    }

    pub async fn close(&mut self) {
        if let Link::WebSocket(ws) = self {
            let _ = ws
                .send(yawc::Frame::close(yawc::close::CloseCode::Normal, b""))
                .await;
        }
    }
}

/// The two-frame form of an AUDIO_CHUNK carrying data.
fn two_frame(env: &Envelope) -> Option<(String, Bytes)> {
    let haip_protocol::Payload::AudioChunk(chunk) = &env.payload else {
        return None;
    };
    let data = chunk.data.as_ref()?;
    let mut header = env.clone();
    if let haip_protocol::Payload::AudioChunk(c) = &mut header.payload {
        c.data = None;
    }
    header.bin_len = Some(data.len() as u64);
    header.bin_mime = Some(chunk.mime.clone());
    Some((header.to_json(), Bytes::copy_from_slice(data)))
}

fn close_reason(payload: &[u8]) -> &[u8] {
    payload.get(2..).unwrap_or_default()
}

async fn open_ws(dial: &Dial) -> Result<Ws, ClientError> {
    // A browser can only pass the token in the URL; a Rust client can use the header.
    let url = crate::url::for_transport(&dial.url, Transport::WebSocket, &dial.query(false))?;
    let parsed = parse_url(&url)?;
    let mut request = yawc::HttpRequestBuilder::new().header("Sec-WebSocket-Protocol", "haip");
    if let Some(t) = &dial.token {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    for (k, v) in &dial.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    yawc::WebSocket::connect(parsed)
        .with_options(websocket_options())
        .with_request(request)
        .with_connector(tokio_rustls::TlsConnector::from(dial.tls.clone()))
        .await
        .map_err(|e| match e {
            // The server answered the upgrade with an HTTP error: a wrong path (404) or a
            // full server (503) say more as a status than as a transport failure.
            yawc::WebSocketError::InvalidStatusCode(status) => ClientError::Http {
                status,
                code: "HTTP_ERROR".into(),
                message: "the server answered the WebSocket upgrade with an error".into(),
            },
            other => ClientError::transport(other),
        })
}

fn parse_url(url: &str) -> Result<url::Url, ClientError> {
    url.parse().map_err(|_| {
        ClientError::Url(crate::url::UrlError {
            url: url.to_string(),
            reason: "not a valid URL",
        })
    })
}

/// The WebSocket settings of every HAIP connection.
fn websocket_options() -> yawc::Options {
    // Frames are small and latency matters: no Nagle delay (it waits for the peer's
    // delayed ACK, 40 ms on Linux, before a second small write).
    // Small messages go uncompressed, as the server sends them: deflating a few hundred
    // bytes costs more CPU than the bytes it saves.
    yawc::Options::default()
        .with_no_delay()
        .with_utf8()
        .with_low_latency_compression()
        .with_compression_threshold(1024)
        .with_max_payload_read(16 * 1024 * 1024)
        .with_read_buffer_capacity(64 * 1024)
}

/// A WebSocket with exactly the settings of a HAIP connection, but no HAIP on it: what
/// `haip bench` measures the transport's own ceiling with.
pub async fn open_plain_websocket(url: &str) -> Result<yawc::TcpWebSocket, ClientError> {
    yawc::WebSocket::connect(parse_url(url)?)
        .with_options(websocket_options())
        .await
        .map_err(ClientError::transport)
}

/// Server-Sent Events down, `POST /haip/messages` up.
pub struct SseLink {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: Vec<u8>,
    data: Vec<u8>,
    ready: VecDeque<Bytes>,
    /// Learnt from the first event's `id: <session>:<seq>`; posts wait for it.
    session: Option<String>,
    waiting: Vec<Envelope>,
    post_url: String,
    http: reqwest::Client,
    dial: Dial,
}

impl SseLink {
    async fn open(dial: &Dial, http: &reqwest::Client) -> Result<SseLink, ClientError> {
        let url = crate::url::for_transport(&dial.url, Transport::Sse, &dial.query(false))?;
        let response = dial
            .http_request(http.get(&url))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(ClientError::transport)?;
        let response = check_status(response).await?;
        Ok(SseLink {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            data: Vec::new(),
            ready: VecDeque::new(),
            session: dial.resume.as_ref().map(|(s, _)| s.clone()),
            waiting: Vec::new(),
            post_url: sibling_url(&url, "messages"),
            http: http.clone(),
            dial: dial.clone(),
        })
    }

    async fn write(&mut self, envs: &[Envelope]) -> Result<(), ClientError> {
        self.waiting.extend_from_slice(envs);
        let Some(session) = self.session.clone() else {
            return Ok(()); // sent once the stream names the session
        };
        if self.waiting.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.waiting);
        let body = format!(
            "[{}]",
            batch
                .iter()
                .map(Envelope::to_json)
                .collect::<Vec<_>>()
                .join(",")
        );
        let response = self
            .dial
            .http_request(self.http.post(&self.post_url))
            .header("X-HAIP-Session", session)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(ClientError::transport)?;
        check_status(response).await.map(|_| ())
    }

    async fn read(&mut self) -> Result<Wire, Ended> {
        loop {
            // Nothing is written here: a read may be cancelled at any await, and only the
            // stream body (whose state lives in `self`) is awaited.
            if let Some(data) = self.ready.pop_front() {
                return Ok(Wire::Text(data));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.buffer.extend_from_slice(&chunk);
                    self.parse_events();
                }
                Some(Err(e)) => {
                    return Err(Ended {
                        code: None,
                        reason: e.to_string(),
                    })
                }
                None => {
                    return Err(Ended {
                        code: None,
                        reason: "stream ended".into(),
                    })
                }
            }
        }
    }

    /// Moves complete events out of the buffer (`data:` lines joined; `id:` names the
    /// session; comments and `retry:` skipped).
    fn parse_events(&mut self) {
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    self.ready
                        .push_back(Bytes::from(std::mem::take(&mut self.data)));
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data
                    .extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
            } else if let Some(rest) = line.strip_prefix(b"id:") {
                let id = String::from_utf8_lossy(rest.strip_prefix(b" ").unwrap_or(rest));
                if let Some((session, _)) = id.rsplit_once(':') {
                    self.session = Some(session.to_string());
                }
            }
        }
    }
}

/// NDJSON both ways over one `POST /haip/stream`, the request body streamed.
pub struct StreamLink {
    up: mpsc::UnboundedSender<Result<Bytes, std::io::Error>>,
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl StreamLink {
    async fn open(
        dial: &Dial,
        http: &reqwest::Client,
        first: &Envelope,
    ) -> Result<StreamLink, ClientError> {
        let url = crate::url::for_transport(&dial.url, Transport::HttpStream, &dial.query(false))?;
        let (up, rx) = mpsc::unbounded_channel();
        let mut line = first.to_json();
        line.push('\n');
        let _ = up.send(Ok(Bytes::from(line)));
        let body =
            reqwest::Body::wrap_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        let response = dial
            .http_request(http.post(&url))
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(ClientError::transport)?;
        let response = check_status(response).await?;
        Ok(StreamLink {
            up,
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        })
    }

    fn write(&mut self, envs: &[Envelope]) -> Result<(), ClientError> {
        let mut text = String::new();
        for env in envs {
            text.push_str(&env.to_json());
            text.push('\n');
        }
        self.up
            .send(Ok(Bytes::from(text)))
            .map_err(|_| ClientError::Closed(None, "request body closed".into()))
    }

    async fn read(&mut self) -> Result<Wire, Ended> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Wire::Text(Bytes::from(line)));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(Ended {
                        code: None,
                        reason: e.to_string(),
                    })
                }
                None => {
                    return Err(Ended {
                        code: None,
                        reason: "stream ended".into(),
                    })
                }
            }
        }
    }
}

/// `http://h/haip/sse?x` -> `http://h/haip/messages` (the upstream beside the stream).
fn sibling_url(url: &str, leaf: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let host_start = base.find("://").map_or(0, |i| i + 3);
    match base[host_start..].rfind('/') {
        Some(i) if i + 1 < base.len() - host_start => {
            format!("{}/{leaf}", &base[..host_start + i])
        }
        _ => format!("{}/haip/{leaf}", base.trim_end_matches('/')),
    }
}

async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v["error"]["code"].as_str())
        .unwrap_or("HTTP_ERROR")
        .to_string();
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str())
        .map_or(body.clone(), str::to_string);
    Err(ClientError::Http {
        status,
        code,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::sibling_url;

    #[test]
    fn the_upstream_sits_beside_the_sse_path() {
        assert_eq!(
            sibling_url("http://h:1/haip/sse?token=t", "messages"),
            "http://h:1/haip/messages"
        );
        assert_eq!(
            sibling_url("http://h:1", "messages"),
            "http://h:1/haip/messages"
        );
    }
}
