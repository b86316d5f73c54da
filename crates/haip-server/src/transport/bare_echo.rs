//! The bare WebSocket echo (`/autobahn`, only with `autobahn_echo`): the measuring tool
//! beside the product transport. It runs on exactly the WebSocket stack and settings of
//! `/haip/websocket`, with no HAIP, for the Autobahn conformance suite and as the ceiling
//! `haip bench` compares HAIP figures with.

use std::io;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use yawc::Frame;

use super::ws::{accept, handshake};
use super::ws_conn::{WsConn, WsInbound};
use crate::engine::connection::{Inbound, Transport};
use crate::engine::outbound::MAX_BATCH_FRAMES;
use crate::state::SharedState;

/// The most copies `/autobahn?repeat=N` sends of one message.
const MAX_REPEAT: usize = 1_000_000;

/// `/autobahn` (only with `autobahn_echo`): echoes every message, with no authentication
/// and no HAIP, on the same WebSocket stack and settings as `/haip/websocket`, for the
/// Autobahn conformance suite (`scripts/autobahn`). With `?repeat=N` each text message is
/// sent back N times, in batches as large as a HAIP connection's: the bare transport doing
/// what a HAIP stream does (one message in, many out), which `haip bench` measures as the
/// ceiling HAIP figures are compared with.
pub async fn autobahn_echo(
    State(state): State<SharedState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    mut req: Request,
) -> Response {
    let repeat = match query.get("repeat").map(|r| r.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if (1..=MAX_REPEAT).contains(&n) => n,
        Some(_) => {
            let reason = format!("repeat must be 1 to {MAX_REPEAT}");
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let hs = match handshake(&mut req, &state.config) {
        Ok(hs) => hs,
        Err(r) => return r,
    };
    let slot = match state.admit(Transport::WebSocket) {
        Ok(s) => s,
        Err(r) => return r,
    };
    accept(hs, move |conn| {
        Box::pin(async move {
            let _slot = slot;
            let mut inbound = WsInbound(conn.clone());
            while let Some(item) = inbound.next().await {
                let sent = match item {
                    Inbound::Text(t) => send_copies(&conn, &t, repeat).await,
                    Inbound::Binary(b) => conn.send([Frame::binary(b)]).await,
                    Inbound::TooLarge => continue,
                };
                if sent.is_err() {
                    break;
                }
            }
            conn.finish().await;
        })
    })
}

/// Sends `n` copies of a text message, at most [`MAX_BATCH_FRAMES`] per write like a HAIP
/// connection.
async fn send_copies(conn: &WsConn, text: &bytes::Bytes, n: usize) -> io::Result<()> {
    let mut left = n;
    while left > 0 {
        let batch = left.min(MAX_BATCH_FRAMES);
        conn.send((0..batch).map(|_| Frame::text(text.clone())))
            .await?;
        left -= batch;
    }
    Ok(())
}
