//! `GET /haip/agent`: agent workers attach here over WebSocket (contract section 12.2).
//! A thin adapter: it authenticates the worker (a token with `role: "agent"`), takes its
//! seat in the [`WorkerPool`], and moves frames, jobs and the clock between the socket and
//! the worker's [`WorkerLink`].

use std::sync::Arc;
use std::time::Duration;

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
use crate::transport::ws::{accept, handshake, protocol_token};
use crate::transport::ws_conn::{WsConn, WsInbound};
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
    let timing = Timing {
        heartbeat: state.config.heartbeat_interval,
        heartbeat_timeout: state.config.heartbeat_timeout,
    };
    accept(hs, move |conn| {
        Box::pin(async move {
            let _slot = slot;
            match verdict {
                Ok(identity) => serve(conn.clone(), pool, identity, timing).await,
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

/// The worker connection's clock, from the server's heartbeat settings.
#[derive(Clone, Copy)]
struct Timing {
    /// How often the worker is sent a HAIP PING.
    heartbeat: Duration,
    /// How long after a PING a worker that sent nothing is taken for gone.
    heartbeat_timeout: Duration,
}

async fn serve(conn: WsConn, pool: Arc<WorkerPool>, identity: Identity, timing: Timing) {
    use tokio::time::Instant as Tick;
    let mut seat = pool.join();
    let mut link = WorkerLink::new(uuid::Uuid::new_v4().to_string());
    tracing::info!(worker = seat.id, subject = %identity.subject, "agent worker joined");
    let mut inbound = WsInbound(conn.clone());
    // A write that makes no progress this long means the worker is gone or not reading.
    let stall = timing.heartbeat + timing.heartbeat_timeout;
    let mut next_ping = Tick::now() + timing.heartbeat;
    // When the PING still unanswered was sent: the worker has until then plus the
    // heartbeat timeout to send anything at all.
    let mut ping_sent: Option<Tick> = None;
    // The next look at cancels, deadlines and the users' held output; re-armed only when
    // it fires, so that a worker sending all the time cannot postpone it.
    let mut next_look = Tick::now() + LOOK_INTERVAL;
    let mut out = vec![link.hello(now_ms())];
    let why = 'conn: loop {
        for o in out.drain(..) {
            match o {
                Output::Frame(text) => {
                    let sent =
                        tokio::time::timeout(stall, conn.send([Frame::text(Bytes::from(text))]));
                    if !matches!(sent.await, Ok(Ok(()))) {
                        break 'conn "a write to it failed or stalled";
                    }
                }
                Output::Close(code, reason) => {
                    conn.send_close(CloseCode::from(code), &reason).await;
                    break 'conn "closed for breaking the protocol";
                }
            }
        }
        seat.set_open_runs(link.open_runs());
        let busy = link.open_runs() > 0 || link.is_paused();
        let mut wake = next_ping;
        if busy {
            wake = wake.min(next_look);
        }
        if let Some(sent) = ping_sent {
            wake = wake.min(sent + timing.heartbeat_timeout);
        }
        tokio::select! {
            item = inbound.next() => {
                ping_sent = None; // anything from the worker shows it is there
                match item {
                    Some(Inbound::Text(text)) => out = link.on_text(&text, now_ms()),
                    Some(Inbound::Binary(_)) => out = link.on_binary(now_ms()),
                    // yawc closes with 1009.
                    Some(Inbound::TooLarge) | None => break 'conn "its connection ended",
                }
            }
            Some(job) = seat.jobs.recv() => out.push(link.assign(job, now_ms())),
            _ = tokio::time::sleep_until(wake) => {
                let now = Tick::now();
                if ping_sent.is_some_and(|sent| now >= sent + timing.heartbeat_timeout) {
                    conn.send_close(CloseCode::Away, "heartbeat timeout").await;
                    break 'conn "it did not answer a PING in time";
                }
                if now >= next_look {
                    next_look = now + LOOK_INTERVAL;
                    link.expire(now.into_std());
                    out = link.poll_cancels(now.into_std(), now_ms());
                    out.extend(link.check_pressure(now_ms()));
                }
                if now >= next_ping {
                    next_ping = now + timing.heartbeat;
                    ping_sent.get_or_insert(now);
                    out.push(link.ping(now_ms()));
                }
            }
        }
    };
    tracing::info!(
        worker = seat.id,
        open_runs = link.open_runs(),
        reason = why,
        "agent worker left"
    );
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
