//! The server's clock for message timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch: the `ts` of every message the server sends.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
