//! The HAIP client SDK: talks HAIP 1.1.2 to a server over WebSocket, SSE or HTTP streaming
//! and never loses a message across reconnects.
//!
//! The pure parts (reconnect policy, URL conversion, topic matching) are plain functions
//! with no I/O, tested on their own.

pub mod backoff;
pub mod client;
mod config;
mod driver;
pub mod error;
pub mod helpers;
mod inbox;
pub mod link;
pub mod session;
pub mod tls;
pub mod topic;
pub mod url;
pub mod worker;

pub use client::{Client, Connection};
pub use config::{ConnectionConfig, TokenProvider};
pub use error::ClientError;
pub use inbox::{Meta, Received, Status, Subscription};

/// The three HAIP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Sse,
    HttpStream,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::Sse => "sse",
            Transport::HttpStream => "stream",
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ws" | "websocket" => Ok(Transport::WebSocket),
            "sse" => Ok(Transport::Sse),
            "stream" | "http" | "http-stream" => Ok(Transport::HttpStream),
            other => Err(format!("unknown transport {other:?} (ws, sse or stream)")),
        }
    }
}
