//! Server-Sent Events: `GET /haip/sse` (contract section 4.2).

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use haip_protocol::parse_dec_u64;
use tokio::sync::mpsc;

use crate::engine::connection::{BadResume, Connection, FrameSink, ResumeRequest, Transport};
use crate::engine::outbound::{Close, Outgoing};
use crate::state::{authenticate, bearer, SharedState};
use crate::transport::{clip, ChunkBody, ConnectParams};

/// Writes SSE events into the response body.
struct SseSink {
    tx: mpsc::Sender<Bytes>,
}

impl FrameSink for SseSink {
    async fn send_batch(&mut self, frames: &[Arc<Outgoing>]) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(frames.iter().map(|f| f.json_len() + 64).sum());
        for f in frames {
            if f.seq > 0 {
                buf.put_slice(b"id: ");
                buf.put_slice(f.session.as_bytes());
                buf.put_u8(b':');
                buf.put_slice(f.seq.to_string().as_bytes());
                buf.put_u8(b'\n');
            }
            buf.put_slice(b"data: ");
            f.put_json(&mut buf);
            buf.put_slice(b"\n\n");
        }
        self.tx
            .send(buf.freeze())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    async fn keepalive(&mut self) -> io::Result<()> {
        self.tx
            .send(Bytes::from_static(b": keepalive\n\n"))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    async fn close(&mut self, _close: &Close) {}
}

/// `Last-Event-ID: <session>:<seq>` as a resume request; one of another shape makes the
/// resume fail with RESUME_FAILED.
fn last_event_id(headers: &HeaderMap) -> Option<ResumeRequest> {
    let value = headers.get("last-event-id")?;
    let text = String::from_utf8_lossy(value.as_bytes());
    let bad = |session: &str| {
        Err(BadResume {
            session: session.to_string(),
            reason: format!(
                "Last-Event-ID {:?} is not <session>:<seq> as this server sends it",
                clip(&text)
            ),
        })
    };
    Some(match text.rsplit_once(':') {
        Some((session, seq)) if !session.is_empty() => match parse_dec_u64(seq) {
            Some(seq) => Ok((session.to_string(), seq)),
            None => bad(session),
        },
        _ => bad(""),
    })
}

pub async fn open(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
) -> Response {
    let token = params.token.as_deref().or_else(|| bearer(&headers));
    let identity = match authenticate(&state, token) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let slot = match state.admit(Transport::Sse) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let follow = match params.follow() {
        Ok(f) => f,
        Err(r) => return r,
    };
    let resume = last_event_id(&headers).or_else(|| params.resume());
    let resume = Connection::claim_resumed(&state.engine, &identity.subject, resume).await;
    let options = state.options(Transport::Sse, &identity);
    let conn = Connection::open(
        state.engine.clone(),
        &identity.subject,
        options,
        resume,
        follow,
    );
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let retry = format!("retry: {}\n\n", state.config.sse_retry_timeout.as_millis());
    let _ = tx.try_send(Bytes::from(retry));
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let _slot = slot;
        conn.run(futures_util::stream::pending(), SseSink { tx }, shutdown)
            .await;
    });
    let mut r = Body::from_stream(ChunkBody(rx)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
