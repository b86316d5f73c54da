//! The HAIP 1.1.2 protocol core, with no I/O.
//!
//! Everything here is a pure data structure or state machine: it never touches a socket,
//! a clock or a random number generator. Callers pass the current time in milliseconds
//! (`now_ms`) and move bytes themselves. The server, the client and the tests all build on
//! these same pieces, so a protocol rule is written exactly once.
//!
//! - [`envelope`] and [`payload`]: the message format and its strict validation;
//! - [`handshake`]: HAI negotiation (version, event filter, capabilities, resume point);
//! - [`sequencer`]: in-order delivery of inbound messages, duplicates, gaps and replay requests;
//! - [`replay`]: the window of sent messages kept for replay and resume;
//! - [`flow`]: per-channel credit in both directions, pause/resume, the hold queue;
//! - [`runs`]: open runs and tool calls, with the concurrent-run limit.

pub mod envelope;
pub mod error;
pub mod event;
pub mod flow;
pub mod handshake;
mod json;
pub mod payload;
pub mod replay;
pub mod runs;
pub mod sequencer;

pub use envelope::Envelope;
pub use error::{ErrorCode, ValidationError};
pub use event::{channel, EventSet, EventType};
pub use json::parse_dec_u64;
pub use payload::Payload;

/// The protocol version this crate implements.
pub const HAIP_VERSION: &str = "1.1.2";
/// The protocol major this crate speaks.
pub const HAIP_MAJOR: u64 = 1;
