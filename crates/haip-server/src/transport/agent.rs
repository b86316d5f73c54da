//! `GET /haip/agent`: agent workers attach here over WebSocket (contract section 12.2).
//! A thin adapter: it authenticates the worker (a token with `role: "agent"`), takes its
//! seat in the [`WorkerPool`], and moves frames, jobs and the clock between the socket and
//! the worker's [`WorkerLink`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use haip_protocol::ErrorCode;
use yawc::close::CloseCode;
use yawc::Frame;

use crate::agent::workers::link::{Output, WorkerLink};
use crate::agent::workers::WorkerPool;
use crate::auth::Identity;
use crate::engine::connection::{sessionless_error, Inbound, Transport};
use crate::engine::now_ms;
use crate::state::{bearer, SharedState};
use crate::transport::ws::{accept, handshake, protocol_token, WsConn, WsInbound};
use crate::transport::ConnectParams;

/// How often cancels, cancel deadlines and the users' held output are looked at while the
/// worker has runs open.
const LOOK_INTERVAL: Duration = Duration::from_millis(50);

pub async fn upgrade(
    State(state): State<SharedState>,
    Query(params): Query<ConnectParams>,
    mut req: Request,
) -> Response {
    let Some(pool) = state.workers.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "this server does not take agent workers: start it with --agent workers",
        )
            .into_response();
    };
    let hs = match handshake(&mut req, &state.config) {
        Ok(hs) => hs,
        Err(r) => return r,
    };
    let token = params
        .token
        .clone()
        .or_else(|| bearer(req.headers()).map(str::to_string))
        .or_else(|| protocol_token(req.headers()));
    let verdict = match token {
        None => Err("missing token".to_string()),
        Some(t) => state.auth.verify_agent(&t).map_err(|e| e.to_string()),
    };
    let slot = match &verdict {
        Ok(_) => match state.admit(Transport::WebSocket) {
            Ok(s) => Some(s),
            Err(r) => return r,
        },
        Err(_) => None,
    };
    let heartbeat = state.config.heartbeat_interval;
    accept(hs, move |conn| {
        Box::pin(async move {
            let _slot = slot;
            match verdict {
                Ok(identity) => serve(conn.clone(), pool, identity, heartbeat).await,
                Err(reason) => {
                    tracing::info!(%reason, "agent worker refused");
                    let error = sessionless_error(ErrorCode::AuthenticationFailed, &reason);
                    let _ = conn.send([Frame::text(error)]).await;
                    let mut close = format!("authentication failed: {reason}");
                    while close.len() > 123 {
                        close.pop();
                    }
                    conn.send_close(CloseCode::Policy, &close).await;
                }
            }
            conn.finish().await;
        })
    })
}

async fn serve(conn: WsConn, pool: Arc<WorkerPool>, identity: Identity, heartbeat: Duration) {
    let mut seat = pool.join();
    let mut link = WorkerLink::new(uuid::Uuid::new_v4().to_string());
    tracing::info!(worker = seat.id, subject = %identity.subject, "agent worker joined");
    let mut inbound = WsInbound(conn.clone());
    let mut next_ping = tokio::time::Instant::now() + heartbeat;
    let mut out = vec![link.hello(now_ms())];
    'conn: loop {
        for o in out.drain(..) {
            match o {
                Output::Frame(text) => {
                    if conn.send([Frame::text(Bytes::from(text))]).await.is_err() {
                        break 'conn;
                    }
                }
                Output::Close(code, reason) => {
                    conn.send_close(CloseCode::from(code), &reason).await;
                    break 'conn;
                }
            }
        }
        seat.set_open_runs(link.open_runs());
        let look = if link.open_runs() > 0 || link.is_paused() {
            tokio::time::Instant::now() + LOOK_INTERVAL
        } else {
            next_ping
        };
        tokio::select! {
            item = inbound.next() => match item {
                Some(Inbound::Text(text)) => out = link.on_text(&text, now_ms()),
                Some(Inbound::Binary(_)) => out = link.on_binary(now_ms()),
                // yawc closes with 1009.
                Some(Inbound::TooLarge) | None => break 'conn,
            },
            Some(job) = seat.jobs.recv() => out.push(link.assign(job, now_ms())),
            _ = tokio::time::sleep_until(look.min(next_ping)) => {
                let now = Instant::now();
                link.expire(now);
                out = link.poll_cancels(now, now_ms());
                out.extend(link.check_pressure(now_ms()));
                if tokio::time::Instant::now() >= next_ping {
                    next_ping = tokio::time::Instant::now() + heartbeat;
                    if conn.send([Frame::ping(Bytes::new())]).await.is_err() {
                        break 'conn;
                    }
                }
            }
        }
    }
    tracing::info!(
        worker = seat.id,
        open_runs = link.open_runs(),
        "agent worker left"
    );
    link.gone();
    // Jobs given to it that it never took go to the other workers (or fail).
    for job in seat.leave() {
        if let Err(job) = pool.dispatch(job) {
            job.run
                .fail(ErrorCode::AgentError, "no agent worker connected");
        }
    }
}
