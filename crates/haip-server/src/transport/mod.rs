//! Thin adapters between the HTTP stack and the session engine. Each one only turns its
//! transport's bytes into [`Inbound`](crate::engine::connection::Inbound) items and writes
//! frames through a [`FrameSink`](crate::engine::connection::FrameSink).

pub mod admin;
pub mod agent;
pub mod aisdk_http;
pub mod aisdk_ws;
pub mod bare_echo;
pub mod lines;
pub mod post;
pub mod sse;
pub mod stream;
pub mod ws;
mod ws_conn;
mod ws_frames;

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use haip_protocol::parse_dec_u64;
use tokio::sync::mpsc;

use crate::engine::connection::{BadResume, ResumeRequest};
use crate::engine::threads::{valid_thread_id, MAX_THREAD_ID};

/// At most 40 characters of a value a client sent, for an error message.
pub fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Connection URL parameters shared by every transport.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnectParams {
    pub token: Option<String>,
    pub session: Option<String>,
    pub last_rx_seq: Option<String>,
    /// A thread to follow (see [`crate::engine::threads`]).
    pub thread: Option<String>,
    #[serde(flatten)]
    pub other: HashMap<String, String>,
}

impl ConnectParams {
    /// `?session=ID&last_rx_seq=N` asks to resume at connect time (N defaults to 0). A
    /// `last_rx_seq` that is not a u64 in decimal makes the resume fail with RESUME_FAILED
    /// rather than quietly become a fresh session.
    pub fn resume(&self) -> Option<ResumeRequest> {
        let session = self.session.clone().filter(|s| !s.is_empty())?;
        Some(match self.last_rx_seq.as_deref() {
            None => Ok((session, 0)),
            Some(text) => match parse_dec_u64(text) {
                Some(last) => Ok((session, last)),
                None => Err(BadResume {
                    session,
                    reason: format!(
                        "last_rx_seq {:?} is not a sequence number (a decimal integer from 0 \
                         to 18446744073709551615)",
                        clip(text)
                    ),
                }),
            },
        })
    }

    /// `?thread=ID` asks to follow a thread; an id the contract would not accept as a
    /// `thread_id` is answered 400.
    #[allow(clippy::result_large_err)] // the error is the HTTP answer itself
    pub fn follow(&self) -> Result<Option<String>, Response> {
        match &self.thread {
            None => Ok(None),
            Some(t) if valid_thread_id(t) => Ok(Some(t.clone())),
            Some(_) => Err((
                StatusCode::BAD_REQUEST,
                format!("thread must be 1 to {MAX_THREAD_ID} characters"),
            )
                .into_response()),
        }
    }
}

/// A streamed `application/x-ndjson` response fed by `rx`, one chunk as it comes (HTTP
/// streaming, the admin monitor).
pub fn ndjson_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let mut r = axum::body::Body::from_stream(ChunkBody(rx)).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    r
}

/// A response body fed chunk by chunk by a connection's writer.
pub struct ChunkBody(pub mpsc::Receiver<Bytes>);

impl futures_util::Stream for ChunkBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}
