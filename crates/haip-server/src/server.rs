//! Binding, serving and graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};

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
    let dead_after = state.config.heartbeat_interval + state.config.heartbeat_timeout;
    let listener = listener.tap_io(move |tcp| tune_socket(tcp, dead_after));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    reaper.abort();
    result
}

/// Makes a vanished peer visible to the kernel: a half-open connection (the client's
/// machine slept or lost its network) would otherwise keep a session attached for as long
/// as TCP retransmits (~15 min on Linux). Data unacknowledged for `dead_after` fails the
/// socket, and keepalive probes find idle dead peers. Frames are small and latency
/// matters more than packet count, so Nagle is off.
fn tune_socket(tcp: &mut TcpStream, dead_after: Duration) {
    let _ = tcp.set_nodelay(true);
    let sock = SockRef::from(&*tcp);
    let keepalive = TcpKeepalive::new()
        .with_time(dead_after)
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(dead_after)) {
        tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
    }
}
