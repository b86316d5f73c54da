//! A scripted OpenAI-compatible chat server on a real loopback socket: it records every
//! request the agent makes and answers each with the next scripted [`Answer`], written
//! byte for byte, so that tests can split chunks anywhere, send malformed ones, go silent,
//! or hold a stream open and see when the agent closes it.
//!
//! Every wait is bounded; a held connection gives up after [`HOLD_LIMIT`].

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a held stream stays open at most when the agent never closes it.
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);
/// How long [`Upstream::request`] and [`Upstream::closed`] wait.
pub const WAIT: Duration = Duration::from_secs(3);

/// What the server answers to one request.
pub enum Answer {
    /// 200 `text/event-stream`: these pieces, each written on its own, then the end.
    Stream(Vec<Vec<u8>>),
    /// 200 `text/event-stream`: these pieces, then nothing, the connection kept open until
    /// the agent closes it (reported by [`Upstream::closed`]).
    Hold(Vec<Vec<u8>>),
    /// A status and a JSON or text body.
    Status(u16, String),
}

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// The request as it arrived, head and body.
    pub raw: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `messages` of the request.
    pub fn messages(&self) -> &[Value] {
        self.body["messages"].as_array().map_or(&[], Vec::as_slice)
    }

    /// The `content` of each message, in order ("" where there is none).
    pub fn contents(&self) -> Vec<String> {
        self.messages()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Answer>>>,
    requests: mpsc::UnboundedReceiver<Request>,
    closed: mpsc::UnboundedReceiver<()>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let (request_tx, requests) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let task = tokio::spawn({
            let script = script.clone();
            async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let answer = {
                        let script = script.clone();
                        move || script.lock().expect("script").pop_front()
                    };
                    tokio::spawn(serve(socket, answer, request_tx.clone(), closed_tx.clone()));
                }
            }
        });
        Upstream {
            addr,
            script,
            requests,
            closed,
            task,
        }
    }

    /// The base URL the agent is configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues the answer to the next request.
    pub fn then(&self, answer: Answer) -> &Upstream {
        self.script.lock().expect("script").push_back(answer);
        self
    }

    /// The next request the agent made.
    pub async fn request(&mut self) -> Request {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("no request reached the model server in time")
            .expect("model server stopped")
    }

    /// Whether another request arrives within `within`.
    pub async fn request_within(&mut self, within: Duration) -> Option<Request> {
        tokio::time::timeout(within, self.requests.recv())
            .await
            .ok()
            .flatten()
    }

    /// Resolves when the agent closed a held stream; panics after [`WAIT`].
    pub async fn closed(&mut self) {
        tokio::time::timeout(WAIT, self.closed.recv())
            .await
            .expect("the agent kept the model server's stream open")
            .expect("model server stopped");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    answer: impl FnOnce() -> Option<Answer>,
    requests: mpsc::UnboundedSender<Request>,
    closed: mpsc::UnboundedSender<()>,
) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    let _ = requests.send(request);
    let answer = answer().unwrap_or_else(|| {
        Answer::Status(500, r#"{"error":{"message":"no scripted answer"}}"#.into())
    });
    let (pieces, hold) = match answer {
        Answer::Status(status, body) => {
            let head = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            return;
        }
        Answer::Stream(pieces) => (pieces, false),
        Answer::Hold(pieces) => (pieces, true),
    };
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                cache-control: no-cache\r\nconnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for piece in pieces {
        if socket.write_all(&piece).await.is_err() {
            return;
        }
        let _ = socket.flush().await;
        // Separate TCP segments, so that the agent reads the pieces as they were cut.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if hold {
        let mut buf = [0u8; 1024];
        let read_to_end = async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(HOLD_LIMIT, read_to_end).await.is_ok() {
            let _ = closed.send(());
        }
    }
}

/// A recording proxy in front of a real model server: each request is recorded, then
/// passed on, and the answer streamed back untouched.
pub struct Recorder {
    pub addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Request>,
    task: JoinHandle<()>,
}

impl Recorder {
    pub async fn start(target: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, requests) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut client).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    // One request per connection, so that each passes through here
                    // whole: the model server closes after answering, and so do we.
                    let raw = with_connection_close(&request.raw);
                    if server.write_all(&raw).await.is_err() {
                        return;
                    }
                    let _ = tx.send(request);
                    // Either side closing ends both: a cancel reaches the model server.
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Recorder {
            addr,
            requests,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The next request, waiting at most `within`.
    pub async fn request(&mut self, within: Duration) -> Request {
        tokio::time::timeout(within, self.requests.recv())
            .await
            .expect("no request reached the model server in time")
            .expect("recorder stopped")
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `raw` with its Connection header, if any, replaced by `connection: close`.
fn with_connection_close(raw: &[u8]) -> Vec<u8> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |i| i + 2);
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut out = String::new();
    for line in head.split_inclusive("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
        }
    }
    out.push_str("connection: close\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&raw[head_end..]);
    bytes
}

/// Reads one HTTP/1.1 request with a Content-Length body.
async fn read_request(socket: &mut TcpStream) -> Option<Request> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 || data.len() > 1 << 20 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = serde_json::from_slice(&data[head_end..head_end + length]).unwrap_or(Value::Null);
    data.truncate(head_end + length);
    Some(Request {
        method,
        path,
        headers,
        body,
        raw: data,
    })
}

// --- building answers ----------------------------------------------------------------

/// One server-sent event carrying `chunk`.
pub fn event(chunk: &Value) -> Vec<u8> {
    format!("data: {chunk}\n\n").into_bytes()
}

/// The end of a stream.
pub fn done() -> Vec<u8> {
    b"data: [DONE]\n\n".to_vec()
}

/// A chunk with one choice whose delta is `delta`.
pub fn delta(delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

/// The usage chunk sent last with `stream_options.include_usage`.
pub fn usage(completion_tokens: u64) -> Vec<u8> {
    event(&json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": completion_tokens,
                  "total_tokens": 11 + completion_tokens},
    }))
}

/// A whole text answer as OpenAI streams it: the role, one chunk per part, the finish
/// reason, the usage when given, `[DONE]`.
pub fn text_answer(parts: &[&str], completion_tokens: Option<u64>) -> Vec<Vec<u8>> {
    let mut pieces = vec![event(&delta(
        json!({"role": "assistant", "content": ""}),
        None,
    ))];
    for part in parts {
        pieces.push(event(&delta(json!({ "content": part }), None)));
    }
    pieces.push(event(&delta(json!({}), Some("stop"))));
    if let Some(tokens) = completion_tokens {
        pieces.push(usage(tokens));
    }
    pieces.push(done());
    pieces
}

/// One fragment of a streamed tool call.
pub fn tool_fragment(index: u64, id: Option<&str>, name: Option<&str>, arguments: &str) -> Vec<u8> {
    let mut function = json!({ "arguments": arguments });
    if let Some(name) = name {
        function["name"] = json!(name);
    }
    let mut call = json!({"index": index, "function": function});
    if let Some(id) = id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    event(&delta(json!({ "tool_calls": [call] }), None))
}

/// The end of a round of tool calls.
pub fn tool_calls_end() -> Vec<Vec<u8>> {
    vec![event(&delta(json!({}), Some("tool_calls"))), done()]
}
