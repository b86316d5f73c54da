//! The session engine: owns every session and applies the protocol for all transports.
//!
//! Transports hand the engine a [`connection::Connection`] per client connection; the
//! engine keeps sessions in a registry so that they outlive their connections and can be
//! resumed on any transport.
//!
//! This file only names the parts. Dependencies run one way, from the top of this list
//! down: the engine (`registry`, `dispatch`, `nodes`) uses sessions and the work they
//! start; a session (`session`) wraps its protocol state (`core`), which queues to its
//! connection (`outbound`). The store (`store`) and threads (`threads`) reach sessions
//! only through the traits they define (`WritingSession`, `Follower`); a connection's
//! queue carries a session it switches to without its type (`outbound::SwitchTo`); the
//! tap (`tap`) only gets copies of messages.

mod agent_link;
pub mod budget;
mod clock;
pub mod connection;
pub mod core;
mod dispatch;
pub mod metrics;
mod nodes;
pub mod outbound;
mod registry;
pub mod replay_pack;
pub mod session;
pub mod store;
pub mod tap;
pub mod threads;
mod work;

pub use clock::now_ms;
pub use registry::{Engine, Move, ResumeError, MAX_SESSIONS_PER_SUBJECT};
pub use session::{Session, SessionGuard, ACK_STORED_WAIT};
