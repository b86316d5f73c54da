//! Thin adapters between the HTTP stack and the session engine. Each one only turns its
//! transport's bytes into [`Inbound`](crate::engine::connection::Inbound) items and writes
//! frames through a [`FrameSink`](crate::engine::connection::FrameSink).

pub mod lines;
pub mod post;
pub mod sse;
pub mod stream;
pub mod ws;

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use haip_protocol::parse_dec_u64;
use tokio::sync::mpsc;

use crate::engine::threads::{valid_thread_id, MAX_THREAD_ID};

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
    /// `?session=ID&last_rx_seq=N` asks to resume at connect time.
    pub fn resume(&self) -> Option<(String, u64)> {
        let session = self.session.clone().filter(|s| !s.is_empty())?;
        let last = self.last_rx_seq.as_deref().map_or(Some(0), parse_dec_u64)?;
        Some((session, last))
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

/// A response body fed chunk by chunk by a connection's writer.
pub struct ChunkBody(pub mpsc::Receiver<Bytes>);

impl futures_util::Stream for ChunkBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}
