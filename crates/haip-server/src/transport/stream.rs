//! HTTP streaming: `POST /haip/stream`, NDJSON both ways (contract section 4.4).

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::engine::connection::{Connection, FrameSink, Inbound, Transport};
use crate::engine::outbound::{Close, Outgoing};
use crate::state::{authenticate, bearer, SharedState};
use crate::transport::lines::{Line, LineSplitter};
use crate::transport::{clip, ndjson_response, ConnectParams};

struct NdjsonSink {
    tx: mpsc::Sender<Bytes>,
}

impl FrameSink for NdjsonSink {
    async fn send_batch(&mut self, frames: &[Arc<Outgoing>]) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(frames.iter().map(|f| f.json_len() + 1).sum());
        for f in frames {
            f.put_json(&mut buf);
            buf.put_u8(b'\n');
        }
        self.tx
            .send(buf.freeze())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// An empty line, which NDJSON readers skip: it only shows whether the client is
    /// still there.
    async fn keepalive(&mut self) -> io::Result<()> {
        self.tx
            .send(Bytes::from_static(b"\n"))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    async fn close(&mut self, _close: &Close) {}
}

pub async fn open(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let identity = match authenticate(&state, bearer(&headers)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let follow = match params.follow() {
        Ok(f) => f,
        Err(r) => return r,
    };
    let end_when_answered = match params.other.get("end").map(String::as_str) {
        None => false,
        Some("answered") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "end={:?} is not known; end=answered ends the stream once the request \
                     body has ended and everything it asked for is answered",
                    clip(other)
                ),
            )
                .into_response()
        }
    };
    let limit = state.config.http_stream_max_payload;
    let mut splitter = LineSplitter::new(limit);
    let mut body = body.into_data_stream();
    // A line being read counts in the memory budget until it is complete.
    let mut pending = state.engine.budget.reading_body();
    let mut first: Vec<Inbound> = Vec::new();
    let mut ended = false;
    // A body sent whole (with a Content-Length) has its first line read before the
    // answer, so that one too large before its first newline gets 413 (contract section
    // 4.4). A streamed body is answered at once, the server speaking first: a full-duplex
    // client may wait for the HAI before it sends anything. Either way the first line
    // comes under the stream's timeout and the connection slot is taken only once it did.
    if headers.contains_key(header::CONTENT_LENGTH) {
        let deadline = tokio::time::Instant::now() + state.config.http_stream_timeout;
        while first.is_empty() && !ended {
            match tokio::time::timeout_at(deadline, body.next()).await {
                Err(_) => return first_line_timeout(),
                Ok(Some(Ok(chunk))) => {
                    for line in splitter.push(&chunk) {
                        match line {
                            Line::Complete(l) => first.push(Inbound::Text(l)),
                            Line::TooLong if first.is_empty() => return too_large(limit),
                            Line::TooLong => first.push(Inbound::TooLarge),
                        }
                    }
                    pending.set(splitter.buffered());
                }
                // A cut body (an error) drops its unterminated tail: it may be half a
                // message. A body that ended cleanly delivers it.
                Ok(Some(Err(_))) => ended = true,
                Ok(None) => {
                    ended = true;
                    if let Some(Line::Complete(l)) = splitter.finish() {
                        first.push(Inbound::Text(l));
                    }
                }
            }
        }
    }
    let slot = match state.admit(Transport::HttpStream) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let inbound = futures_util::stream::iter(first).chain(
        futures_util::stream::unfold(
            (body, splitter, pending, ended),
            |(mut body, mut splitter, mut pending, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    match body.next().await {
                        Some(Ok(chunk)) => {
                            let items: Vec<Inbound> = splitter
                                .push(&chunk)
                                .into_iter()
                                .map(|l| match l {
                                    Line::Complete(b) => Inbound::Text(b),
                                    Line::TooLong => Inbound::TooLarge,
                                })
                                .collect();
                            pending.set(splitter.buffered());
                            if !items.is_empty() {
                                return Some((items, (body, splitter, pending, false)));
                            }
                        }
                        Some(Err(_)) => return Some((Vec::new(), (body, splitter, pending, true))),
                        None => {
                            let last: Vec<Inbound> = match splitter.finish() {
                                Some(Line::Complete(b)) => vec![Inbound::Text(b)],
                                _ => Vec::new(),
                            };
                            pending.set(0);
                            return Some((last, (body, splitter, pending, true)));
                        }
                    }
                }
            },
        )
        .flat_map(futures_util::stream::iter),
    );
    let mut options = state.options(Transport::HttpStream, &identity);
    options.end_when_answered = end_when_answered;
    let resume = Connection::claim_resumed(&state.engine, &identity.subject, params.resume()).await;
    let conn = Connection::open(
        state.engine.clone(),
        &identity.subject,
        options,
        resume,
        follow,
    );
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let _slot = slot;
        conn.run(Box::pin(inbound), NdjsonSink { tx }, shutdown)
            .await;
    });
    ndjson_response(rx)
}

fn first_line_timeout() -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        Json(json!({"error": {"code": "PROTOCOL_VIOLATION",
            "message": "the request body's first line did not arrive in time"}})),
    )
        .into_response()
}

fn too_large(limit: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(json!({"error": {"code": "PROTOCOL_VIOLATION",
            "message": format!("first line longer than {limit} bytes")}})),
    )
        .into_response()
}
