//! Bounded waits: every read and request of the harness gives up after [`WAIT`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default bound of every wait.
pub const WAIT: Duration = Duration::from_secs(3);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Awaits `f` for at most [`WAIT`], panicking on timeout.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("operation timed out")
}
