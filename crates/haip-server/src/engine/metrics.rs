//! Counters read by `/health`, `/stats` and `/metrics`: lock-free, updated by connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use haip_protocol::EventType;

use super::outbound::Outgoing;

/// The kind of a client connection, as the counters are kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
    HttpStream,
    /// The AI SDK endpoints (contract section 14): their streams and the internal
    /// connection each answer runs on.
    AiSdk,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::HttpStream => "stream",
            Transport::AiSdk => "aisdk",
        }
    }

    pub const ALL: [Transport; 4] = [
        Transport::WebSocket,
        Transport::Sse,
        Transport::HttpStream,
        Transport::AiSdk,
    ];
}

/// Open and total connections of one transport.
#[derive(Default)]
pub struct TransportCounts {
    pub active: AtomicU64,
    pub total: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    pub total_connections: AtomicU64,
    pub active_connections: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    /// ERROR messages written to clients.
    pub errors_out: AtomicU64,
    /// PING to PONG round trips measured on the server's heartbeat.
    pub round_trips: AtomicU64,
    pub round_trip_ms_sum: AtomicU64,
    /// Cluster mode: sessions this node took over from the store (resumed here after
    /// another node, or this node before a restart, drove them).
    pub sessions_taken_over: AtomicU64,
    transports: [TransportCounts; 4],
}

impl Metrics {
    pub fn transport(&self, t: Transport) -> &TransportCounts {
        &self.transports[t as usize]
    }

    pub fn connection_opened(&self, t: Transport) {
        self.total_connections.fetch_add(1, Ordering::Relaxed);
        self.active_connections.fetch_add(1, Ordering::Relaxed);
        let counts = self.transport(t);
        counts.total.fetch_add(1, Ordering::Relaxed);
        counts.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, t: Transport) {
        self.active_connections.fetch_sub(1, Ordering::Relaxed);
        self.transport(t).active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn frames_written(&self, frames: &[Arc<Outgoing>]) {
        self.messages_out
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        let errors = frames
            .iter()
            .filter(|f| f.event_type == EventType::Error)
            .count();
        if errors > 0 {
            self.errors_out.fetch_add(errors as u64, Ordering::Relaxed);
        }
    }

    pub fn round_trip(&self, ms: u64) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.round_trip_ms_sum.fetch_add(ms, Ordering::Relaxed);
    }

    /// Mean heartbeat round trip in ms (0 before the first one).
    pub fn average_round_trip_ms(&self) -> f64 {
        let n = self.round_trips.load(Ordering::Relaxed);
        if n == 0 {
            return 0.0;
        }
        self.round_trip_ms_sum.load(Ordering::Relaxed) as f64 / n as f64
    }

    /// ERROR messages as a share of all messages written.
    pub fn error_rate(&self) -> f64 {
        let out = self.messages_out.load(Ordering::Relaxed);
        if out == 0 {
            return 0.0;
        }
        self.errors_out.load(Ordering::Relaxed) as f64 / out as f64
    }
}
