//! WebSocket: `GET /haip/websocket`, and the upgrade at `/` (contract section 4.1).

use std::io;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use haip_protocol::ErrorCode;

use crate::app::{bearer, SharedState};
use crate::engine::connection::{sessionless_error, Connection, FrameSink, Inbound, Transport};
use crate::engine::outbound::{Close, Outgoing};
use crate::transport::ConnectParams;

struct WsSink {
    sink: SplitSink<WebSocket, Message>,
}

impl FrameSink for WsSink {
    async fn send_batch(&mut self, frames: &[Arc<Outgoing>]) -> io::Result<()> {
        for f in frames {
            // Frames are valid UTF-8 JSON produced by serde_json.
            let text = std::str::from_utf8(&f.json).map_err(io::Error::other)?;
            self.sink
                .feed(Message::Text(text.into()))
                .await
                .map_err(io::Error::other)?;
        }
        self.sink.flush().await.map_err(io::Error::other)
    }

    async fn keepalive(&mut self) -> io::Result<()> {
        self.sink
            .send(Message::Ping(Default::default()))
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self, close: &Close) {
        let frame = CloseFrame {
            code: close.code,
            reason: close.reason.as_str().into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}

/// The token offered as `Sec-WebSocket-Protocol: haip, token.JWT`.
fn protocol_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix("token.").map(str::to_string))
}

pub async fn upgrade(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let slot = match state.admit(Transport::WebSocket) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let token = params
        .token
        .clone()
        .or_else(|| bearer(&headers).map(str::to_string))
        .or_else(|| protocol_token(&headers));
    let verdict = match token {
        Some(t) => state.auth.verify(&t).map_err(|e| e.to_string()),
        None => Err("missing token".to_string()),
    };
    let max = state.config.websocket_max_payload;
    ws.protocols(["haip"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            let (mut sink, stream) = socket.split();
            let identity = match verdict {
                Ok(identity) => identity,
                Err(reason) => {
                    // Browsers cannot read the status of a failed upgrade, so the upgrade is
                    // accepted and the reason sent as ERROR before closing with 1008.
                    tracing::info!(%reason, "websocket authentication failed");
                    let error = sessionless_error(ErrorCode::AuthenticationFailed, &reason);
                    if let Ok(text) = std::str::from_utf8(&error) {
                        let _ = sink.send(Message::Text(text.into())).await;
                    }
                    let frame = CloseFrame {
                        code: 1008,
                        reason: "authentication failed".into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            };
            let options = state.options(Transport::WebSocket, &identity);
            let conn = Connection::open(
                state.engine.clone(),
                &identity.subject,
                options,
                params.resume(),
            );
            let inbound = stream
                .take_while(|m| std::future::ready(!matches!(m, Ok(Message::Close(_)))))
                .filter_map(|m| {
                    std::future::ready(match m {
                        Ok(Message::Text(t)) => Some(Inbound::Text(t.into())),
                        Ok(Message::Binary(b)) => Some(Inbound::Binary(b)),
                        Ok(_) => None,
                        Err(e) => match e.into_inner().downcast_ref::<tungstenite::Error>() {
                            Some(tungstenite::Error::Capacity(_)) => Some(Inbound::TooLarge),
                            _ => None,
                        },
                    })
                });
            conn.run(Box::pin(inbound), WsSink { sink }, state.shutdown.clone())
                .await;
        })
}

/// `/`: a WebSocket upgrade for clients of the reference server, else a short page.
pub async fn root(
    state: State<SharedState>,
    params: Query<ConnectParams>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(state, params, headers, ws).await,
        Err(_) => Html(
            "<!doctype html><title>haip-rs</title><p>haip-rs HAIP 1.1.2 server. \
             WebSocket: /haip/websocket, SSE: /haip/sse, HTTP streaming: /haip/stream, \
             health: /health.</p>",
        )
        .into_response(),
    }
}
