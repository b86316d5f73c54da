//! `GET /haip/admin/monitor`: every message of every session, live, as NDJSON, for a token
//! whose `role` claim is `admin` (`haip token --role admin`, `haip monitor --all`).
//! Filters: `subject`, `session`, `thread`, `type` (repeatable as a comma list).
//! Each line: `{"direction":"in"|"out","session":...,"subject":...,"envelope":{...}}`;
//! a watcher too slow to keep up gets `{"missed":N}` and goes on from the newest.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::engine::tap::Tapped;
use crate::state::{authenticate, bearer, SharedState, HTTP_KEEPALIVE_INTERVAL};
use crate::transport::ndjson_response;

#[derive(Debug, Default, serde::Deserialize)]
pub struct MonitorParams {
    token: Option<String>,
    subject: Option<String>,
    session: Option<String>,
    thread: Option<String>,
    /// Comma-separated event types.
    r#type: Option<String>,
}

/// Which tapped messages a watcher asked for.
struct Filter {
    subject: Option<String>,
    session: Option<String>,
    thread: Option<String>,
    types: Vec<String>,
}

impl Filter {
    fn wants(&self, t: &Tapped) -> bool {
        if self.subject.as_deref().is_some_and(|s| s != &*t.subject)
            || self.session.as_deref().is_some_and(|s| s != &*t.session)
        {
            return false;
        }
        if self.thread.is_none() && self.types.is_empty() {
            return true;
        }
        // Only now is the envelope read.
        let Ok(env) = serde_json::from_str::<Value>(&t.json) else {
            return false;
        };
        let thread_ok = self
            .thread
            .as_deref()
            .is_none_or(|th| env["thread_id"].as_str() == Some(th));
        let type_ok = self.types.is_empty()
            || env["type"]
                .as_str()
                .is_some_and(|ty| self.types.iter().any(|w| w.eq_ignore_ascii_case(ty)));
        thread_ok && type_ok
    }
}

fn line(t: &Tapped) -> Bytes {
    let text = format!(
        "{{\"direction\":\"{}\",\"session\":{},\"subject\":{},\"envelope\":{}}}\n",
        t.direction.as_str(),
        Value::from(&*t.session),
        Value::from(&*t.subject),
        t.json
    );
    Bytes::from(text)
}

pub async fn monitor(
    State(state): State<SharedState>,
    Query(params): Query<MonitorParams>,
    headers: HeaderMap,
) -> Response {
    let token = params.token.as_deref().or_else(|| bearer(&headers));
    let identity = match authenticate(&state, token) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if !identity.is_admin() {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": {"code": "AUTHENTICATION_FAILED",
                "message": "watching every session needs a token whose role is admin \
                            (haip token --role admin)"}})),
        )
            .into_response();
    }
    tracing::info!(subject = %identity.subject, "admin monitor opened");
    let filter = Filter {
        subject: params.subject.filter(|s| !s.is_empty()),
        session: params.session.filter(|s| !s.is_empty()),
        thread: params.thread.filter(|s| !s.is_empty()),
        types: params
            .r#type
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut taps = state.engine.tap.watch();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(HTTP_KEEPALIVE_INTERVAL);
        keepalive.tick().await;
        loop {
            let out = tokio::select! {
                tapped = taps.rx.recv() => match tapped {
                    Ok(t) if filter.wants(&t) => line(&t),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Bytes::from(format!("{{\"missed\":{n}}}\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                // An empty line: a watcher that went away is noticed.
                _ = keepalive.tick() => Bytes::from_static(b"\n"),
                _ = shutdown.cancelled() => break,
            };
            if tx.send(out).await.is_err() {
                break;
            }
        }
    });
    ndjson_response(rx)
}
