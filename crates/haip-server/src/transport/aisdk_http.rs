//! The HTTP side of the AI SDK's `DefaultChatTransport` (contract section 14): `POST` a
//! chat request and read its answer as a UI message stream; `GET {id}/stream` resumes the
//! answer in progress (the whole of it, then live) or answers 204; `DELETE {id}/stream`
//! stops it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::aisdk::answer::{Answer, AnswerReader, StartError};
use crate::aisdk::request::{check_chat_id, parse_send, SendRequest};
use crate::auth::Identity;
use crate::engine::connection::Transport;
use crate::state::{authenticate, bearer, ConnectionSlot, SharedState, HTTP_KEEPALIVE_INTERVAL};
use crate::transport::post::read_body;

/// `POST /api/chat`: starts answering the chat's last user message and streams the answer.
pub async fn send(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    let identity = match authenticate(&state, bearer(&headers)) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let body = match read_body(&state, body).await {
        Ok(body) => body,
        Err(r) => return r,
    };
    let request = match serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("the body is not JSON: {e}"))
        .and_then(|v| parse_send(&v))
    {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", &message),
    };
    let stream_slot = match state.admit(Transport::AiSdk) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match start(&state, &identity.subject, request) {
        Ok(answer) => ui_message_stream(answer.reader(), stream_slot),
        Err(e) => {
            let (status, code, message) = e;
            error(status, code, &message)
        }
    }
}

/// Why an answer did not start: the HTTP status, the error code and what to do.
pub type Refusal = (StatusCode, &'static str, String);

/// Starts an answer for `subject` (shared with the WebSocket side).
pub fn start(
    state: &SharedState,
    subject: &str,
    request: SendRequest,
) -> Result<Arc<Answer>, Refusal> {
    let Ok(pump_slot) = state.admit(Transport::AiSdk) else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "the server is at its connection limit or over its memory budget: try again \
             shortly"
                .into(),
        ));
    };
    let options = state.internal_options(Transport::AiSdk);
    state
        .chats
        .start(
            &state.engine,
            subject,
            request,
            options,
            pump_slot,
            state.shutdown.clone(),
        )
        .map_err(|e| match e {
            StartError::Busy => (
                StatusCode::CONFLICT,
                "ANSWER_IN_PROGRESS",
                "this chat already has an answer in progress: resume it or stop it first".into(),
            ),
            StartError::TooMany => (
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_ANSWERS",
                format!(
                    "at most {} answers in progress per user",
                    crate::aisdk::answer::MAX_ANSWERS_PER_SUBJECT
                ),
            ),
        })
}

/// `GET /api/chat/{id}/stream`: the answer in progress from its first chunk, or 204.
pub async fn resume(
    State(state): State<SharedState>,
    Path(chat_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let identity = match chat_request(&state, &headers, &chat_id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Some(answer) = state.chats.in_progress(&identity.subject, &chat_id) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let slot = match state.admit(Transport::AiSdk) {
        Ok(s) => s,
        Err(r) => return r,
    };
    ui_message_stream(answer.reader(), slot)
}

/// `DELETE /api/chat/{id}/stream`: stops the answer in progress (its streams end with
/// `abort`). 204 either way: afterwards nothing is in progress.
pub async fn cancel(
    State(state): State<SharedState>,
    Path(chat_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let identity = match chat_request(&state, &headers, &chat_id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if let Some(answer) = state.chats.in_progress(&identity.subject, &chat_id) {
        answer.cancel();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Who asks about a chat, once the token and the chat id are checked.
#[allow(clippy::result_large_err)] // the error is the HTTP answer itself
fn chat_request(
    state: &SharedState,
    headers: &HeaderMap,
    chat_id: &str,
) -> Result<Identity, Response> {
    let identity = authenticate(state, bearer(headers))?;
    check_chat_id(chat_id)
        .map_err(|message| error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", &message))?;
    Ok(identity)
}

/// The UI message stream: each chunk as an SSE `data:` event as it comes, a comment line
/// as keep-alive, `data: [DONE]` at the end.
fn ui_message_stream(reader: AnswerReader, slot: ConnectionSlot) -> Response {
    let events = futures_util::stream::unfold(
        (reader, slot, false),
        |(mut reader, slot, done)| async move {
            if done {
                return None;
            }
            let keepalive: Duration = HTTP_KEEPALIVE_INTERVAL;
            let (bytes, done) = match tokio::time::timeout(keepalive, reader.next()).await {
                Err(_) => (Bytes::from_static(b": keepalive\n\n"), false),
                Ok(Some((_, chunks))) => {
                    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len() + 8).sum());
                    for chunk in chunks {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(&chunk);
                        out.extend_from_slice(b"\n\n");
                    }
                    (Bytes::from(out), false)
                }
                Ok(None) => (Bytes::from_static(b"data: [DONE]\n\n"), true),
            };
            Some((Ok::<_, std::io::Error>(bytes), (reader, slot, done)))
        },
    );
    let mut response = Body::from_stream(events).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-vercel-ai-ui-message-stream",
        HeaderValue::from_static("v1"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
