//! The bounds a session is created with and what it counts against them.

use haip_protocol::flow::Credit;
use haip_protocol::replay::ReplayConfig;

/// The limits a session is created with (from the server configuration).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub replay: ReplayConfig,
    pub max_concurrent_runs: u64,
    /// Credit the client may use towards the server (`UNLIMITED` when flow control is off).
    pub inbound_credit: Credit,
    /// Out-of-order client messages held while waiting for a gap to fill.
    pub max_held_inbound: usize,
    /// Client input the session keeps before it can act on it, in bytes: out-of-order
    /// messages held for a gap, and user messages not ended yet (each bound on its own).
    pub max_pending_input_bytes: u64,
    /// Client tool calls running at once.
    pub max_running_tool_calls: usize,
    /// Output the client has not taken (held by flow control, or queued behind a write
    /// that does not progress) beyond which the session is ended.
    pub max_held_messages: usize,
    pub max_held_bytes: u64,
}

/// What one running tool call is counted as in the memory budget (its task, params and
/// bookkeeping), in bytes.
pub const TOOL_CALL_BYTES: u64 = 2048;

/// The bytes a session holds that a client can make grow, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionUsage {
    /// Sent messages kept for resume.
    pub replay: u64,
    /// Output the client has not taken: held by flow control or queued for its writer.
    pub held_output: u64,
    /// Replayed messages queued for the writer (shared with the window, counted anyway).
    pub queued_replays: u64,
    /// Out-of-order client messages held for a gap.
    pub inbound_held: u64,
    /// User messages started and not ended.
    pub unfinished_messages: u64,
    pub tool_calls: u64,
}

impl SessionUsage {
    pub fn total(&self) -> u64 {
        self.replay
            + self.held_output
            + self.queued_replays
            + self.inbound_held
            + self.unfinished_messages
            + self.tool_calls
    }
}

/// The most user messages a session assembles at once (started, not ended).
pub const MAX_OPEN_MESSAGES: usize = 64;

/// The most unsent output an agent may be ahead of its client (see
/// [`SessionLimits::agent_high_water`]).
pub(super) const AGENT_HIGH_WATER_MESSAGES: usize = 1000;
pub(super) const AGENT_HIGH_WATER_BYTES: u64 = 1024 * 1024;

impl SessionLimits {
    /// Unsent output above which an agent's sends wait: at most half the held-output
    /// bound, so that an agent alone never reaches the bound and only what a client causes
    /// does; and no more than keeps a fast client busy between two writes, so that a client
    /// that reads slowly costs little memory.
    pub fn agent_high_water(&self) -> (usize, u64) {
        (
            (self.max_held_messages / 2).min(AGENT_HIGH_WATER_MESSAGES),
            (self.max_held_bytes / 2).min(AGENT_HIGH_WATER_BYTES),
        )
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            replay: ReplayConfig::default(),
            max_concurrent_runs: 10,
            inbound_credit: Credit::new(Some(1000), Some(1024 * 1024)),
            max_held_inbound: 1000,
            max_pending_input_bytes: 4 * 1024 * 1024,
            max_running_tool_calls: 100,
            max_held_messages: 10_000,
            max_held_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A rule broken by the client, counted by the connection towards its close thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Protocol,
    FlowControl,
}

/// Protocol violations a connection may commit before it is closed (contract section 2).
pub const MAX_PROTOCOL_VIOLATIONS: u32 = 10;
/// Flow-control violations a connection may commit before it is closed.
pub const MAX_FLOW_VIOLATIONS: u32 = 20;
