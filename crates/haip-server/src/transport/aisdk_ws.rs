//! The WebSocket side of the AI SDK (`WebSocketChatTransport`, contract section 14): the
//! chat path upgraded, requests `send`, `resume` and `abort` as JSON text frames, answers
//! `start`, `chunk` {sequence, chunk}, `end`, `error` and `no-active`, each carrying the
//! request's `requestId`. Many requests share one socket; each is a task forwarding one
//! answer's chunks to the socket's writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use yawc::Frame;

use super::aisdk_http as http;
use crate::aisdk::answer::{Answer, AnswerReader};
use crate::aisdk::request::{check_chat_id, parse_send};
use crate::auth::Identity;
use crate::engine::connection::{Inbound, Transport};
use crate::state::SharedState;
use crate::transport::ws::{accept, handshake};
use crate::transport::ws_conn::{WsConn, WsInbound};
use crate::transport::ConnectParams;

/// Requests one socket may have running at once.
pub const MAX_REQUESTS_PER_SOCKET: usize = 32;

/// `GET /api/chat` with an upgrade.
pub async fn upgrade(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    mut req: Request,
) -> Response {
    let hs = match handshake(&mut req, &state.config) {
        Ok(hs) => hs,
        Err(r) => return r,
    };
    // A token in the URL authenticates every request of the socket; a request may
    // bring its own in `headers.authorization` instead. A bad one in the URL is not
    // fatal: each request without a good token is answered with `error`.
    let url_identity = params
        .token
        .as_deref()
        .map(|t| state.auth.verify_user(t).map_err(|e| e.to_string()));
    let slot = match state.admit(Transport::AiSdk) {
        Ok(s) => s,
        Err(r) => return r,
    };
    accept(hs, move |conn| {
        Box::pin(async move {
            let _slot = slot;
            serve(state, conn.clone(), url_identity).await;
            conn.finish().await;
        })
    })
}

/// A frame for the socket, from one request; dropped unsent once that request stopped.
type Outbound = (Arc<AtomicBool>, Bytes);

/// One running request: what `abort` stops.
struct Running {
    task: JoinHandle<()>,
    /// Set by `abort`: what the request had queued is not sent.
    stopped: Arc<AtomicBool>,
    /// The answer a `send` started: `abort` cancels it. A `resume` only stops reading.
    started: Option<Arc<Answer>>,
}

async fn serve(state: SharedState, conn: WsConn, url_identity: Option<Result<Identity, String>>) {
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(64);
    let mut inbound = WsInbound(conn.clone());
    let mut running: HashMap<String, Running> = HashMap::new();
    let heartbeat = state.config.heartbeat_interval;
    // A write that makes no progress this long means the client is gone or not reading.
    let stall = heartbeat + state.config.heartbeat_timeout;
    let send = |frame: Frame| tokio::time::timeout(stall, conn.send([frame]));
    let mut next_ping = tokio::time::Instant::now() + heartbeat;
    loop {
        tokio::select! {
            item = inbound.next() => match item {
                Some(Inbound::Text(text)) => {
                    running.retain(|_, r| !r.task.is_finished());
                    // An answer to the request itself (an error, `no-active`) is written
                    // here and now: it never waits behind, or is dropped for, chunks.
                    if let Some(reply) = handle(&state, &url_identity, &text, &mut running, &out_tx) {
                        if !matches!(send(Frame::text(reply)).await, Ok(Ok(()))) {
                            break;
                        }
                    }
                }
                // Binary frames mean nothing here; too-large ones get yawc's 1009.
                Some(Inbound::Binary(_)) | Some(Inbound::TooLarge) => {}
                None => break,
            },
            Some((stopped, frame)) = out_rx.recv() => {
                if stopped.load(Ordering::Acquire) {
                    continue;
                }
                if !matches!(send(Frame::text(frame)).await, Ok(Ok(()))) {
                    break;
                }
            }
            // A ping frame now and then: a client that went away is noticed by the write.
            _ = tokio::time::sleep_until(next_ping) => {
                next_ping = tokio::time::Instant::now() + heartbeat;
                if !matches!(send(Frame::ping(Bytes::new())).await, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
    // The answers go on (a `send` is only stopped by `abort`); only the reading stops.
    for (_, r) in running {
        r.task.abort();
    }
}

fn handle(
    state: &SharedState,
    url_identity: &Option<Result<Identity, String>>,
    text: &[u8],
    running: &mut HashMap<String, Running>,
    out: &mpsc::Sender<Outbound>,
) -> Option<Bytes> {
    // Without a requestId nothing can be answered: the frame is dropped.
    let frame = serde_json::from_slice::<Value>(text).ok()?;
    let request_id = frame.get("requestId").and_then(Value::as_str)?.to_string();
    let reply_error = |message: &str| Some(error_frame(&request_id, message));
    let kind = frame.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "abort" {
        if let Some(r) = running.remove(&request_id) {
            r.stopped.store(true, Ordering::Release);
            r.task.abort();
            if let Some(answer) = r.started {
                answer.cancel();
            }
        }
        return None;
    }
    if running.contains_key(&request_id) {
        return reply_error("a request with this requestId is running");
    }
    if running.len() >= MAX_REQUESTS_PER_SOCKET {
        return reply_error(&format!(
            "at most {MAX_REQUESTS_PER_SOCKET} requests at once on one socket"
        ));
    }
    let identity = match frame_identity(state, &frame, url_identity) {
        Ok(id) => id,
        Err(reason) => return reply_error(&format!("authentication failed: {reason}")),
    };
    match kind {
        "send" => {
            let request = match parse_send(&frame) {
                Ok(r) => r,
                Err(message) => return reply_error(&message),
            };
            let answer = match http::start(state, &identity.subject, request) {
                Ok(answer) => answer,
                Err((_, _, message)) => return reply_error(&message),
            };
            let reader = answer.reader();
            running.insert(
                request_id.clone(),
                forward_to(reader, request_id, out, Some(answer)),
            );
            None
        }
        "resume" => {
            let chat_id = match frame.get("id").and_then(Value::as_str).map(check_chat_id) {
                Some(Ok(id)) => id,
                Some(Err(message)) => return reply_error(&message),
                None => return reply_error("id (the chat id) is missing"),
            };
            let after = match frame.get("lastSequence") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(n) => Some(n as usize),
                    None => return reply_error("lastSequence must be a whole number from 0"),
                },
            };
            let Some(answer) = state.chats.in_progress(&identity.subject, &chat_id) else {
                return Some(plain_frame("no-active", &request_id));
            };
            let reader = answer.reader_after(after);
            running.insert(
                request_id.clone(),
                forward_to(reader, request_id, out, None),
            );
            None
        }
        other => reply_error(&format!(
            "unknown request type {:?}: send, resume or abort",
            crate::transport::clip(other)
        )),
    }
}

/// The request's identity: the token in its `headers.authorization`, else the socket's.
fn frame_identity(
    state: &SharedState,
    frame: &Value,
    url_identity: &Option<Result<Identity, String>>,
) -> Result<Identity, String> {
    let header = frame
        .get("headers")
        .and_then(Value::as_object)
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| v.as_str())
        });
    if let Some(value) = header {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or(value)
            .trim();
        return state.auth.verify_user(token).map_err(|e| e.to_string());
    }
    match url_identity {
        // Checked at the upgrade; its expiry is checked again for each request.
        Some(Ok(identity)) if identity.expires_ms <= crate::engine::now_ms() => {
            Err("the token given in the URL has expired: reconnect with a fresh one".into())
        }
        Some(result) => result.clone(),
        None => Err(
            "missing token: give ?token= on the URL or an authorization header in \
                     the request"
                .into(),
        ),
    }
}

/// Starts sending an answer's chunks for one request.
fn forward_to(
    reader: AnswerReader,
    request_id: String,
    out: &mpsc::Sender<Outbound>,
    started: Option<Arc<Answer>>,
) -> Running {
    let stopped = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(forward(
        reader,
        request_id,
        Sender(stopped.clone(), out.clone()),
    ));
    Running {
        task,
        stopped,
        started,
    }
}

/// One request's way to the socket.
struct Sender(Arc<AtomicBool>, mpsc::Sender<Outbound>);

impl Sender {
    async fn send(&self, frame: Bytes) -> Result<(), ()> {
        self.1.send((self.0.clone(), frame)).await.map_err(|_| ())
    }
}

/// Sends one request's answer: `start`, every chunk with its index, `end`.
async fn forward(mut reader: AnswerReader, request_id: String, out: Sender) {
    if out.send(plain_frame("start", &request_id)).await.is_err() {
        return;
    }
    let id = json_string(&request_id);
    while let Some((first, chunks)) = reader.next().await {
        for (i, chunk) in chunks.iter().enumerate() {
            let mut frame = Vec::with_capacity(chunk.len() + id.len() + 64);
            frame.extend_from_slice(b"{\"type\":\"chunk\",\"requestId\":");
            frame.extend_from_slice(id.as_bytes());
            frame.extend_from_slice(format!(",\"sequence\":{},\"chunk\":", first + i).as_bytes());
            frame.extend_from_slice(chunk);
            frame.push(b'}');
            if out.send(Bytes::from(frame)).await.is_err() {
                return;
            }
        }
    }
    let _ = out.send(plain_frame("end", &request_id)).await;
}

fn json_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

fn plain_frame(kind: &str, request_id: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"{kind}\",\"requestId\":{}}}",
        json_string(request_id)
    ))
}

fn error_frame(request_id: &str, message: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"error\",\"requestId\":{},\"errorText\":{}}}",
        json_string(request_id),
        json_string(message)
    ))
}
