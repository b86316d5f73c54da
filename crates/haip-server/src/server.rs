//! Binding, serving and graceful shutdown.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::app::{router, SharedState};

/// Serves `state` on `listener` until `state.shutdown` is cancelled; then every connection
/// is told (WebSocket 1001, streams end) and the server returns.
pub async fn serve(listener: TcpListener, state: SharedState) -> std::io::Result<()> {
    let reaper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                let n = state.engine.reap();
                if n > 0 {
                    tracing::debug!(expired = n, "dropped sessions past their TTL");
                }
            }
        })
    };
    let shutdown = state.shutdown.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    reaper.abort();
    result
}
