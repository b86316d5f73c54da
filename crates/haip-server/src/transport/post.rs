//! Upstream for SSE and browsers: `POST /haip/messages` (contract section 4.3).

use crate::engine::connection::Connection;
use crate::engine::store::StoreError;
use crate::engine::Move;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use haip_protocol::payload::Hai;
use haip_protocol::{Envelope, Payload};
use serde_json::json;
use serde_json::value::RawValue;

use crate::engine::now_ms;
use crate::state::{authenticate, bearer, SharedState};

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The largest body `POST /haip/messages` reads; past it the answer is 413.
pub const MAX_POST_BODY: usize = 2 * 1024 * 1024;

/// Reads the whole body, counted in the memory budget while it is read, within
/// `MAX_POST_BODY` bytes and the HTTP stream timeout.
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
pub async fn read_body(state: &SharedState, body: Body) -> Result<Vec<u8>, Response> {
    let mut guard = state.engine.budget.reading_body();
    let mut data = Vec::new();
    let mut stream = body.into_data_stream();
    let deadline = tokio::time::Instant::now() + state.config.http_stream_timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "PROTOCOL_VIOLATION",
                    "the body did not arrive in time",
                ))
            }
            Ok(None) => return Ok(data),
            Ok(Some(Err(_))) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "PROTOCOL_VIOLATION",
                    "the body was cut short",
                ))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if data.len() + chunk.len() > MAX_POST_BODY {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PROTOCOL_VIOLATION",
                &format!(
                    "the body is larger than {MAX_POST_BODY} bytes: send fewer envelopes per \
                     request"
                ),
            ));
        }
        guard.add(chunk.len());
        data.extend_from_slice(&chunk);
    }
}

pub async fn messages(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let identity = match authenticate(&state, bearer(&headers)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let body = match read_body(&state, body).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    // One envelope or an array of them (JSON allows whitespace before either); each is
    // validated on its own below.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let raws: Vec<&RawValue> = match first {
        Some(b'[') => match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "PROTOCOL_VIOLATION",
                    &e.to_string(),
                )
            }
        },
        _ => match serde_json::from_slice::<&RawValue>(&body) {
            Ok(v) => vec![v],
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "PROTOCOL_VIOLATION",
                    &e.to_string(),
                )
            }
        },
    };
    let parsed: Vec<Result<Envelope, _>> = raws.iter().map(|r| Envelope::parse(r.get())).collect();
    let header = headers.get("x-haip-session").and_then(|v| v.to_str().ok());
    let first_session = parsed
        .iter()
        .find_map(|p| p.as_ref().ok().map(|e| e.session.as_str()));
    if let Some(target) = header.or(first_session) {
        if state.engine.store().is_some() && !state.engine.drives_here(target) {
            return forward_to_owner(&state, &identity.subject, target, &raws, &parsed).await;
        }
    }
    let Some(mut session) = state
        .engine
        .session_for_post(&identity.subject, header, first_session)
    else {
        return error(
            StatusCode::NOT_FOUND,
            "SESSION_NOT_FOUND",
            "no live session of this subject to deliver to",
        );
    };
    let mut accepted = 0u64;
    for (raw, result) in raws.iter().zip(parsed) {
        match result {
            Ok(env) => {
                // A HAI naming another kept session resumes it on the live stream, as it
                // would had it come through the stream itself.
                if let Payload::Hai(Hai {
                    last_rx_seq: Some(last),
                    ..
                }) = &env.payload
                {
                    if env.session != session.id {
                        // Cluster mode: claimed here first, so the move is done at once
                        // (a failed claim fails the move with RESUME_FAILED).
                        let _ = Connection::claim_resumed(
                            &state.engine,
                            &identity.subject,
                            Some(Ok((env.session.clone(), *last))),
                        )
                        .await;
                        if let Move::Done(resumed) = state.engine.move_connection(
                            &session,
                            &env.session,
                            *last,
                            env.id.clone(),
                        ) {
                            session = resumed;
                        }
                    }
                }
                let cost = env.flow_cost(raw.get().len());
                state.engine.handle(&session, env, cost);
                accepted += 1;
            }
            // Counted against the session's live connection, as if it came through it.
            Err(e) => session.lock().refuse(&e, now_ms()),
        }
    }
    let ack = session
        .durable_ack()
        .await
        .map(|s| s.to_string())
        .unwrap_or_default();
    Json(json!({"status": "ok", "accepted": accepted, "ack": ack})).into_response()
}

/// Cluster mode: the envelopes of a POST for a session another node drives go to that
/// node, in order, each as it came (a refusal reaches the client's stream from there).
/// The answer cannot carry the ack: that node processes them.
async fn forward_to_owner(
    state: &SharedState,
    subject: &str,
    target: &str,
    raws: &[&RawValue],
    parsed: &[Result<Envelope, haip_protocol::ValidationError>],
) -> Response {
    let mut accepted = 0u64;
    for (raw, result) in raws.iter().zip(parsed) {
        let cost = match result {
            Ok(env) => env.flow_cost(raw.get().len()),
            Err(_) => raw.get().len() as u64,
        };
        match state
            .engine
            .forward_inbound(subject, target, raw.get().to_string(), cost)
            .await
        {
            Ok(()) => accepted += u64::from(result.is_ok()),
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(session = %target, error = %why, "POST not forwarded: the session store is out of reach");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "INTERNAL_ERROR",
                    "the session store is out of reach; try again shortly",
                );
            }
            Err(_) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "SESSION_NOT_FOUND",
                    "no live session of this subject to deliver to",
                )
            }
        }
    }
    Json(json!({"status": "ok", "accepted": accepted, "ack": ""})).into_response()
}
