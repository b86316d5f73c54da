//! One connection of the cutting client and how it resumed the session.

use serde_json::Value;

use super::raw::RawConn;
use crate::common::Kind;

pub(super) fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Ws | Kind::WsRoot => "websocket",
        Kind::Sse => "sse",
        Kind::Stream => "stream",
    }
}

/// How a connection resumes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    /// The first connection: a new session.
    Fresh,
    /// `?session=ID&last_rx_seq=N` on the connection URL.
    Query,
    /// SSE `Last-Event-ID: <session>:<seq>`.
    LastEventId,
    /// A client HAI naming the session, with payload `last_rx_seq`.
    Hai,
}

/// One connection of the client.
pub(super) struct Live {
    pub(super) conn: RawConn,
    pub(super) kind: Kind,
    pub(super) method: Method,
    /// The last_rx_seq this connection resumed from.
    pub(super) reported: u64,
    /// The seq the next message of the session must carry on this connection.
    pub(super) next: u64,
    /// Wall clock when the connection was started. Every HAI an earlier connection caused
    /// is older, so the confirming HAI is the first HAI of the session at or after it.
    pub(super) t0: u64,
    pub(super) confirmed: bool,
    /// The newest ts among the messages replayed before the confirming HAI.
    pub(super) replay_max_ts: u64,
    /// The fresh session the server announced before a resume by HAI.
    pub(super) fresh: Option<String>,
    /// Messages of the session read on this connection.
    pub(super) read: usize,
    /// What the client knew the server had processed when it connected.
    pub(super) acked_at_connect: u64,
}

pub(super) fn ts_of(v: &Value) -> u64 {
    v["ts"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no decimal ts in {v}"))
}

pub(super) fn dec(v: &Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok())
}
