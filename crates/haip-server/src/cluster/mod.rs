//! Cluster mode (contract section 13): sessions kept in Redis so that every node that
//! shares it serves any session. [`RedisStore`] implements the engine's storage seam
//! (`engine::store::SessionStore`); the engine never sees Redis.
//!
//! Five tasks per node:
//! - the writer (`writer.rs`) pulls what sessions have to keep and writes it, many
//!   sessions per round trip, one write per session at a time (so each session's writes
//!   stay in order);
//! - the heartbeat renews this node run's liveness key every second; whether it succeeds
//!   is whether the node takes new connections;
//! - the listener hears what other nodes forward to sessions this node drives;
//! - the connector opens the connection, again and again with backoff until it works;
//! - the relay (`threads.rs`) sends what sessions send in threads to followers on other
//!   nodes, in order.
//!
//! The parts: the store and the seam over it (`store.rs`), the tasks (`background.rs`),
//! the writer (`writer.rs`), thread followers (`threads.rs`), the connection (`conn.rs`),
//! the Lua scripts (`scripts.rs`) and reading replies (`replies.rs`).

mod background;
mod conn;
mod replies;
pub mod scripts;
mod store;
mod threads;
mod writer;

pub use conn::Target;
pub use store::{
    ClusterSettings, RedisStore, HEARTBEAT, MAX_KEPT_FORWARDS, NODE_LEASE, WORKER_NODES,
};
