//! Binding, serving and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};

use crate::app::{router, SharedState};
use crate::engine::budget::SAMPLE_INTERVAL;
use crate::tls::ServerTls;

/// How long a connection may take to send a request head, from when it opens or from its
/// previous response.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How often cluster mode checks the nodes of runs and renews sessions in Redis.
const CLUSTER_UPKEEP: Duration = Duration::from_secs(2);
/// The largest request head (request line and headers) read, in bytes; larger gets 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Serves `state` on `listener` until `state.shutdown` is cancelled; then every connection
/// is told (WebSocket 1001, streams end) and the server returns.
pub async fn serve(listener: TcpListener, state: SharedState) -> std::io::Result<()> {
    state.name_node(listener.local_addr()?.port());
    state.start_cluster().map_err(std::io::Error::other)?;
    let reaper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_reap = tokio::time::Instant::now();
            let mut last_upkeep = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                state.engine.enforce_budget(state.live_connections());
                if last_upkeep.elapsed() >= CLUSTER_UPKEEP {
                    last_upkeep = tokio::time::Instant::now();
                    state.engine.cluster_upkeep().await;
                }
                if last_reap.elapsed() >= Duration::from_secs(5) {
                    last_reap = tokio::time::Instant::now();
                    let n = state.engine.reap();
                    if n > 0 {
                        tracing::debug!(expired = n, "dropped sessions past their TTL");
                    }
                }
            }
        })
    };
    let shutdown = state.shutdown.clone();
    let dead_after = state.config.heartbeat_interval + state.config.heartbeat_timeout;
    let tls = match (&state.config.tls_cert, &state.config.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = Arc::new(ServerTls::load(cert, key).map_err(std::io::Error::other)?);
            reload_on_sighup(tls.clone());
            Some(tls)
        }
        (None, None) => None,
        _ => {
            return Err(std::io::Error::other(
                "TLS needs both TLS_CERT and TLS_KEY (or neither)",
            ))
        }
    };
    let app = router(state);
    let mut builder = Builder::new(TokioExecutor::new());
    // A connection must send a whole request head within REQUEST_HEAD_TIMEOUT of being
    // opened (or of its previous response, when kept alive) and within MAX_REQUEST_HEAD
    // bytes: idle sockets, slow heads and huge heads cannot pile up.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_HEAD_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(REQUEST_HEAD_TIMEOUT))
        .keep_alive_timeout(REQUEST_HEAD_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: connections being closed free
                    // some. Waiting a little keeps this loop from spinning meanwhile.
                    tracing::warn!(error = %e, "cannot accept a connection; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        tune_socket(&tcp, dead_after);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            // hyper tells HTTP/1 from HTTP/2 by the first bytes before its own head
            // timeout starts: a connection that sends nothing is closed here.
            let mut first = [0u8; 1];
            let first_byte = tokio::select! {
                peeked = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, tcp.peek(&mut first)) => peeked,
                _ = shutdown.cancelled() => return,
            };
            if !matches!(first_byte, Ok(Ok(1))) {
                return;
            }
            // A client that goes away mid-request is its own business.
            match tls {
                None => {
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .into_owned();
                    let _ = watcher.watch(connection).await;
                }
                Some(tls) => {
                    // The handshake is part of the request head's time.
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    let stream = match tokio::time::timeout(
                        REQUEST_HEAD_TIMEOUT,
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let _ = watcher.watch(connection).await;
                }
            }
        });
    }
    drop(listener);
    // Connections waiting for a request close at once; the others end as their sessions
    // are told to (WebSocket 1001, streams end).
    graceful.shutdown().await;
    reaper.abort();
    Ok(())
}

/// Reloads the certificate and key on SIGHUP (a renewed certificate is then used for new
/// connections without a restart); a file that cannot be read leaves the old one in use.
fn reload_on_sighup(tls: Arc<ServerTls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: TLS certificates will not be reloaded");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                    Err(e) => {
                        tracing::error!("SIGHUP: {e}; the previous certificate stays in use")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// Makes a vanished peer visible to the kernel: a half-open connection (the client's
/// machine slept or lost its network) would otherwise keep a session attached for as long
/// as TCP retransmits (~15 min on Linux). Data unacknowledged for `dead_after` fails the
/// socket, and keepalive probes find idle dead peers. Frames are small and latency
/// matters more than packet count, so Nagle is off.
fn tune_socket(tcp: &TcpStream, dead_after: Duration) {
    let _ = tcp.set_nodelay(true);
    let sock = SockRef::from(tcp);
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
