//! WebSocket: `GET /haip/websocket`, and the upgrade at `/` (contract section 4.1), on
//! `yawc`, with permessage-deflate (RFC 7692) when the client offers it and
//! `websocket_per_message_deflate` is on. The bare echo that
//! `haip bench` and the Autobahn suite use runs on the same stack (`bare_echo.rs`).
//!
//! This module only opens connections; `ws_conn.rs` moves their frames and `ws_frames.rs`
//! checks them. Everything about HAIP happens in [`Connection`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use haip_protocol::ErrorCode;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use yawc::close::CloseCode;
use yawc::{CompressionLevel, DeflatePool, Frame, HttpWebSocket, Options, Role, WebSocket};

use super::ws_conn::{WsConn, WsInbound, WsSink};
use super::ws_frames::Checked;
use crate::config::ServerConfig;
use crate::engine::connection::{sessionless_error, Connection, Transport};
use crate::state::{bearer, SharedState};
use crate::transport::ConnectParams;

/// Initial size of each connection's read and write buffers; they grow for larger frames
/// and batches and shrink back afterwards. Small, because an idle connection keeps them:
/// 512 bytes hold a typical client message, and 1 KiB cost 478 bytes more per session.
const BUFFER_CAPACITY: usize = 512;

/// Deflate state shared by every connection. With no context takeover in either direction
/// a connection holds deflate state only while it compresses or decompresses a message, so
/// idle connections cost a few KiB instead of hundreds.
fn deflate_pool() -> DeflatePool {
    static POOL: OnceLock<DeflatePool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        DeflatePool::new(2 * threads)
    })
    .clone()
}

/// The yawc settings of every WebSocket this server accepts, the HAIP endpoints and the
/// Autobahn echo alike. `request` is the upgrade request's headers.
pub fn options(config: &ServerConfig, request: &HeaderMap) -> Options {
    // yawc's limit is exclusive; the contract's is inclusive (only "larger than" closes).
    // UTF-8 is checked by [`WsInbound`], which must tell a bad message (its close to send)
    // from a bad close reason (yawc closes).
    let limit = config.websocket_max_payload.saturating_add(1);
    let options = Options::default()
        .with_limits(limit, limit)
        .with_read_buffer_capacity(BUFFER_CAPACITY)
        .with_write_buffer_capacity(BUFFER_CAPACITY);
    if !config.websocket_per_message_deflate {
        return options;
    }
    // Both directions without context takeover (RFC 7692 lets the server impose it), so the
    // shared pool applies.
    let options = options
        .with_compression_level(CompressionLevel::fast())
        .server_no_context_takeover()
        .client_no_context_takeover()
        .with_deflate_pool(deflate_pool())
        .with_compression_threshold(config.websocket_compression_threshold);
    // A client that offers client_max_window_bits with no value gets the full window (yawc
    // would otherwise answer 9). One that does not offer it must not get the parameter back
    // (RFC 7692 section 7.1.2.2).
    if offers_client_window_bits(request) {
        options.with_client_max_window_bits(15)
    } else {
        options
    }
}

fn offers_client_window_bits(headers: &HeaderMap) -> bool {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("client_max_window_bits"))
}

/// The subprotocols the client offered.
fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The token offered as `Sec-WebSocket-Protocol: haip, token.JWT`.
pub(crate) fn protocol_token(headers: &HeaderMap) -> Option<String> {
    offered_protocols(headers).find_map(|p| p.strip_prefix("token.").map(str::to_string))
}

/// Whether `headers` ask for a WebSocket (`Upgrade: websocket`, `Connection: upgrade`).
pub(crate) fn wants_websocket(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(UPGRADE, "websocket") && has(CONNECTION, "upgrade")
}

/// An accepted WebSocket handshake: the 101 answer, and what opens the socket once the
/// client has it.
pub(crate) struct Handshake {
    response: Response,
    on_upgrade: OnUpgrade,
    options: Options,
    /// The agreed `Sec-WebSocket-Extensions`.
    extensions: Option<String>,
}

/// Checks the upgrade request (key, version, extension offer) with yawc and builds the
/// answer; the error is the 400 to send.
///
/// yawc builds the answer, but the socket is opened here from hyper's upgrade rather than
/// by yawc's upgrade future, so that it reads through [`Checked`].
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
pub(crate) fn handshake(req: &mut Request, config: &ServerConfig) -> Result<Handshake, Response> {
    let bad = |reason: &str| (StatusCode::BAD_REQUEST, reason.to_string()).into_response();
    if !wants_websocket(req.headers()) {
        return Err(bad("not a WebSocket upgrade request"));
    }
    let options = options(config, req.headers());
    let on_upgrade = hyper::upgrade::on(&mut *req);
    // yawc's upgrade future is dropped: it finds no upgrade left in the request.
    let (response, _) = HttpWebSocket::upgrade_with_options(&mut *req, options.clone())
        .map_err(|e| bad(&e.to_string()))?;
    let mut response = response.map(Body::new);
    let extensions = response
        .headers()
        .get(SEC_WEBSOCKET_EXTENSIONS)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // The subprotocol is `haip` when offered; a token offered as `token.JWT` is never
    // echoed.
    if offered_protocols(req.headers()).any(|p| p == "haip") {
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("haip"));
    }
    Ok(Handshake {
        response,
        on_upgrade,
        options,
        extensions,
    })
}

/// A connection's whole life on its WebSocket, boxed: its size is only known once built.
pub(crate) type ConnectionTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Sends the 101 answer and, once the client has it, runs the connection `open` makes of
/// the WebSocket in a task of its own. The task that waited for the upgrade then ends, so
/// an idle connection keeps only its own state, not that of its handshake.
pub(crate) fn accept<F>(hs: Handshake, open: F) -> Response
where
    F: FnOnce(WsConn) -> ConnectionTask + Send + 'static,
{
    let Handshake {
        response,
        on_upgrade,
        options,
        extensions,
    } = hs;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        let violation = Arc::new(OnceLock::new());
        let io = Checked::new(TokioIo::new(upgraded), violation.clone());
        match WebSocket::from_stream_with_extensions(
            io,
            Role::Server,
            extensions.as_deref(),
            options,
        ) {
            Ok(ws) => {
                tokio::spawn(open(WsConn::new(ws, violation)));
            }
            Err(e) => tracing::debug!(error = %e, "websocket setup failed"),
        }
    });
    response
}

pub async fn upgrade(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    mut req: Request,
) -> Response {
    match handshake(&mut req, &state.config) {
        Ok(hs) => haip(state, params, req.headers(), hs).await,
        Err(r) => r,
    }
}

/// `/`: a WebSocket upgrade for clients of the reference server, else a short page.
pub async fn root(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    mut req: Request,
) -> Response {
    if wants_websocket(req.headers()) {
        return match handshake(&mut req, &state.config) {
            Ok(hs) => haip(state, params, req.headers(), hs).await,
            Err(r) => r,
        };
    }
    crate::web::index()
}

/// A HAIP connection over an accepted handshake.
async fn haip(
    state: SharedState,
    params: ConnectParams,
    headers: &HeaderMap,
    hs: Handshake,
) -> Response {
    let follow = match params.follow() {
        Ok(f) => f,
        Err(r) => return r,
    };
    let token = params
        .token
        .clone()
        .or_else(|| bearer(headers).map(str::to_string))
        .or_else(|| protocol_token(headers));
    let verdict = match token {
        Some(t) => state.auth.verify_user(&t).map_err(|e| e.to_string()),
        None => Err("missing token".to_string()),
    };
    // Only an authenticated connection takes a slot: refusals cannot crowd out others
    // while their ERROR and close go out.
    let slot = match &verdict {
        Ok(_) => match state.admit(Transport::WebSocket) {
            Ok(s) => Some(s),
            Err(r) => return r,
        },
        Err(_) => None,
    };
    // Cluster mode: the session to resume is brought here before the upgrade.
    let resume = match &verdict {
        Ok(identity) => {
            Connection::claim_resumed(&state.engine, &identity.subject, params.resume()).await
        }
        Err(_) => None,
    };
    accept(hs, move |conn| {
        // Set up now, so that the task keeps only what the connection needs (the run
        // itself is boxed: awaiting a future held by value would keep it twice).
        let run: ConnectionTask = match verdict {
            Ok(identity) => {
                let options = state.options(Transport::WebSocket, &identity);
                let connection = Connection::open(
                    state.engine.clone(),
                    &identity.subject,
                    options,
                    resume,
                    follow,
                );
                Box::pin(connection.run(
                    WsInbound(conn.clone()),
                    WsSink(conn.clone()),
                    state.shutdown.clone(),
                ))
            }
            Err(reason) => {
                // Browsers cannot read the status of a failed upgrade, so the upgrade is
                // accepted and the reason sent as ERROR before closing with 1008.
                tracing::info!(%reason, "websocket authentication failed");
                let conn = conn.clone();
                Box::pin(async move {
                    let error = sessionless_error(ErrorCode::AuthenticationFailed, &reason);
                    let _ = conn.send([Frame::text(error)]).await;
                    // The reason travels in the close frame too (at most 123 bytes), for
                    // clients that only look there.
                    let mut close_reason = format!("authentication failed: {reason}");
                    while close_reason.len() > 123 {
                        close_reason.pop();
                    }
                    conn.send_close(CloseCode::Policy, &close_reason).await;
                })
            }
        };
        Box::pin(async move {
            let _slot = slot;
            run.await;
            Box::pin(conn.finish()).await;
        })
    })
}
