//! The state of one session and every protocol rule applied to it, whatever the transport.
//!
//! `SessionCore` is plain data behind the session's lock: no sockets, no timers. The
//! connection driver feeds it validated envelopes and the time; it answers with envelopes
//! queued to the attached connection and with [`Action`]s (agent and tool work) that the
//! async side starts. Every message the server sends passes through [`SessionCore::emit`],
//! which applies the client's event filter, flow control, run cancellation, sequencing and
//! the replay window in one place.
//!
//! The parts, each one concern: the state (`session_core`), sending (`delivery`),
//! receiving (`inbound`), runs and tool calls (`runs`); cluster mode: its state
//! (`durable`), the write path (`store_writes`), the hand-over (`handover`) and forwarded
//! output (`forwarding`); and the small types they share (`messages`, `limits`).

mod delivery;
mod durable;
mod forwarding;
mod handover;
#[cfg(test)]
mod handover_tests;
mod inbound;
mod limits;
mod messages;
mod runs;
mod session_core;
mod store_writes;
#[cfg(test)]
mod tests;

pub use durable::AGENT_NODE_LOST;
pub use forwarding::node_of;
pub use limits::{
    SessionLimits, SessionUsage, Violation, MAX_FLOW_VIOLATIONS, MAX_OPEN_MESSAGES,
    MAX_PROTOCOL_VIOLATIONS, TOOL_CALL_BYTES,
};
pub use messages::{Action, SharedMessage, ToolRun};
pub use session_core::SessionCore;
