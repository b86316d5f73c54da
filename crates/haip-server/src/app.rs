//! The HTTP application: the routes, over the shared state of [`crate::state`].

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::engine::connection::Transport;
use crate::engine::metrics::{Metrics, TransportCounts};
pub use crate::state::{
    authenticate, bearer, unauthorized, AppState, ConnectionSlot, SharedState,
    HTTP_KEEPALIVE_INTERVAL,
};
use crate::transport;

pub fn router(state: SharedState) -> Router {
    let c = &state.config;
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/haip/admin/monitor", get(transport::admin::monitor))
        .route("/metrics", get(metrics))
        // The browser client and its demo page (`/` serves the page too, through ws::root).
        .route("/haip.js", get(crate::web::haip_js))
        .route("/haip.d.ts", get(crate::web::haip_d_ts))
        .route(
            "/demo.js",
            get(|| async { crate::web::javascript(crate::web::DEMO_JS) }),
        )
        .route("/demo", get(crate::web::demo))
        .route("/admin", get(crate::web::admin));
    for &(path, body) in crate::web::MODULES {
        app = app.route(
            path,
            get(move || async move { crate::web::javascript(body) }),
        );
    }
    if !c.enable_websocket {
        app = app.route("/", get(crate::web::demo));
    }
    if c.enable_websocket {
        app = app
            .route(&c.websocket_path, get(transport::ws::upgrade))
            .route("/", get(transport::ws::root));
    }
    if c.autobahn_echo {
        app = app.route("/autobahn", get(transport::bare_echo::autobahn_echo));
    }
    if c.enable_sse {
        app = app
            .route(
                &c.sse_path,
                get(transport::sse::open).post(transport::post::messages),
            )
            .route("/haip/messages", post(transport::post::messages));
    }
    if c.enable_http_stream {
        app = app.route(&c.http_stream_path, post(transport::stream::open));
        if !c.enable_sse {
            app = app.route("/haip/messages", post(transport::post::messages));
        }
    }
    // Agent workers attach here (answered 404 unless the agent is `workers`).
    app = app.route(&c.agent_path, get(transport::agent::upgrade));
    // The AI SDK's chat endpoints (contract section 14): POST and WebSocket on one path.
    app = app
        .route(
            &c.aisdk_path,
            post(crate::transport::aisdk_http::send).get(crate::transport::aisdk_ws::upgrade),
        )
        .route(
            &format!("{}/{{id}}/stream", c.aisdk_path.trim_end_matches('/')),
            get(crate::transport::aisdk_http::resume).delete(crate::transport::aisdk_http::cancel),
        );
    if c.enable_compression {
        // Streams must reach the client message by message, so they are never compressed.
        app = app.layer(CompressionLayer::new().compress_when(
            DefaultPredicate::new().and(NotForContentType::const_new("application/x-ndjson")),
        ));
    }
    if c.enable_cors {
        app = app.layer(cors_layer(&c.cors_origins));
    }
    if c.enable_logging {
        // The span names the path only: a query may carry a token (`?token=`), and no
        // credential goes to a log.
        app = app.layer(TraceLayer::new_for_http().make_span_with(
            |req: &axum::http::Request<axum::body::Body>| {
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
            },
        ));
    }
    app.with_state(state)
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-haip-session"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

async fn health(axum::extract::State(state): axum::extract::State<SharedState>) -> Response {
    let m = &state.engine.metrics;
    let available = state.store_available();
    let status = if available {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Json(json!({
        "status": if available { "ok" } else { "unavailable" },
        "node": state.node_id(),
        "mode": state.mode(),
        "uptime": state.started.elapsed().as_millis() as u64,
        "activeConnections": m.active_connections.load(Ordering::Relaxed),
        "totalConnections": m.total_connections.load(Ordering::Relaxed),
    }));
    (status, body).into_response()
}

/// Per-transport counts, as a JSON object keyed by transport name.
fn transport_counts(m: &Metrics) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for t in Transport::ALL {
        let c = m.transport(t);
        out.insert(
            t.as_str().to_string(),
            json!({
                "activeConnections": c.active.load(Ordering::Relaxed),
                "totalConnections": c.total.load(Ordering::Relaxed),
            }),
        );
    }
    out.into()
}

async fn stats(axum::extract::State(state): axum::extract::State<SharedState>) -> Response {
    let m = &state.engine.metrics;
    let uptime_ms = state.started.elapsed().as_millis() as u64;
    let total = m.messages_in.load(Ordering::Relaxed) + m.messages_out.load(Ordering::Relaxed);
    Json(json!({
        "node": state.node_id(),
        "mode": state.mode(),
        "totalConnections": m.total_connections.load(Ordering::Relaxed),
        "activeConnections": m.active_connections.load(Ordering::Relaxed),
        "totalMessages": total,
        "messagesPerSecond": total as f64 / (uptime_ms.max(1) as f64 / 1000.0),
        "averageLatency": m.average_round_trip_ms(),
        "errorRate": m.error_rate(),
        "uptime": uptime_ms,
        "sessions": state.engine.session_count(),
        "sessionsTakenOver": m.sessions_taken_over.load(Ordering::Relaxed),
        "transports": transport_counts(m),
        "memory": state.engine.budget.snapshot(),
        "workers": state.workers.as_ref().map(|pool| {
            let loads = pool.loads();
            json!({
                "connected": loads.len(),
                "openRuns": loads.iter().map(|l| json!({"worker": l.id, "openRuns": l.open_runs})).collect::<Vec<_>>(),
                "dispatchFailures": pool.dispatch_failures(),
            })
        }),
    }))
    .into_response()
}

async fn metrics(axum::extract::State(state): axum::extract::State<SharedState>) -> Response {
    use std::fmt::Write;
    let m = &state.engine.metrics;
    let mut body = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(body, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(body, "{name}{labels} {value}");
        }
    };
    let one = |v: &AtomicU64| vec![(String::new(), v.load(Ordering::Relaxed).to_string())];
    let per_transport = |pick: fn(&TransportCounts) -> &AtomicU64| {
        Transport::ALL
            .iter()
            .map(|t| {
                (
                    format!("{{transport=\"{}\"}}", t.as_str()),
                    pick(m.transport(*t)).load(Ordering::Relaxed).to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    metric(
        "haip_node_info",
        "gauge",
        "This node (NODE_ID) and where its sessions live (mode); always 1.",
        &[(
            format!(
                "{{node=\"{}\",mode=\"{}\"}}",
                prometheus_label(state.node_id()),
                state.mode()
            ),
            "1".to_string(),
        )],
    );
    metric(
        "haip_connections_active",
        "gauge",
        "Open client connections.",
        &per_transport(|c| &c.active),
    );
    metric(
        "haip_connections_total",
        "counter",
        "Connections accepted since start.",
        &per_transport(|c| &c.total),
    );
    metric(
        "haip_sessions",
        "gauge",
        "Sessions kept (attached or resumable).",
        &[(String::new(), state.engine.session_count().to_string())],
    );
    metric(
        "haip_messages_received_total",
        "counter",
        "Valid messages received from clients.",
        &one(&m.messages_in),
    );
    metric(
        "haip_messages_sent_total",
        "counter",
        "Messages written to clients.",
        &one(&m.messages_out),
    );
    metric(
        "haip_errors_sent_total",
        "counter",
        "ERROR messages written to clients.",
        &one(&m.errors_out),
    );
    metric(
        "haip_sessions_taken_over_total",
        "counter",
        "Cluster mode: sessions this node took over from Redis (resumed after another node).",
        &one(&m.sessions_taken_over),
    );
    metric(
        "haip_heartbeat_round_trips_total",
        "counter",
        "PING to PONG round trips measured.",
        &one(&m.round_trips),
    );
    metric(
        "haip_heartbeat_round_trip_ms_sum",
        "counter",
        "Sum of the measured PING to PONG round trips, in ms.",
        &one(&m.round_trip_ms_sum),
    );
    if let Some(pool) = &state.workers {
        let loads = pool.loads();
        metric(
            "haip_workers_connected",
            "gauge",
            "Agent workers connected.",
            &[(String::new(), loads.len().to_string())],
        );
        let per_worker: Vec<(String, String)> = loads
            .iter()
            .map(|l| (format!("{{worker=\"{}\"}}", l.id), l.open_runs.to_string()))
            .collect();
        metric(
            "haip_worker_open_runs",
            "gauge",
            "Runs each agent worker has open.",
            &per_worker,
        );
        metric(
            "haip_worker_dispatch_failures_total",
            "counter",
            "User messages no agent worker was connected to answer.",
            &[(String::new(), pool.dispatch_failures().to_string())],
        );
    }
    let memory = state.engine.budget.snapshot();
    let bytes = |v: &serde_json::Value| vec![(String::new(), v.as_u64().unwrap_or(0).to_string())];
    metric(
        "haip_memory_limit_bytes",
        "gauge",
        "The memory budget (MEMORY_LIMIT).",
        &bytes(&memory["limit"]),
    );
    let used_by: Vec<(String, String)> = memory["usedBy"]
        .as_object()
        .map(|kinds| {
            kinds
                .iter()
                .map(|(kind, v)| {
                    (
                        format!("{{kind=\"{kind}\"}}"),
                        v.as_u64().unwrap_or(0).to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    metric(
        "haip_memory_used_bytes",
        "gauge",
        "What clients make the server hold, by kind, at the last sample.",
        &used_by,
    );
    metric(
        "haip_memory_trimmed_replay_bytes_total",
        "counter",
        "Replay window bytes given up to stay under the budget's soft mark.",
        &bytes(&memory["trimmedReplayBytes"]),
    );
    metric(
        "haip_memory_sessions_ended_total",
        "counter",
        "Sessions ended because the server was over its memory budget.",
        &bytes(&memory["sessionsEnded"]),
    );
    metric(
        "haip_memory_connections_refused_total",
        "counter",
        "Connections refused (503) while over the memory budget.",
        &bytes(&memory["connectionsRefused"]),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// A label value as Prometheus' text format writes it: backslash, quote and newline escaped.
fn prometheus_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
