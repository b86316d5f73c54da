//! Shared harness of the haip-server integration tests: an in-process server on a real
//! loopback socket, and small clients for the three transports (WebSocket, SSE with
//! `POST /haip/messages` upstream, NDJSON HTTP streaming) behind one [`Conn`] type.
//!
//! Every wait is bounded: reads give up after [`WAIT`] (or a shorter explicit duration) and
//! panic with what was received so far, so no test can hang.
//!
//! The modules depend on each other one way only, from the scenarios down:
//! `scenarios`, `checks` → `conn` → `server`, `wire` → `http`, `jwt`, `envelope` → `time`;
//! `transports` (the `on_transports!` macro) names only `Kind`.
//! Every test binary compiles all of them and uses its own part.

#![allow(dead_code)]

mod checks;
mod conn;
pub mod cuts;
mod envelope;
mod http;
mod jwt;
pub mod redis;
mod scenarios;
mod server;
mod time;
mod transports;
mod wire;

// Each test file uses its own part of the harness.
#[allow(unused_imports)]
pub use checks::*;
#[allow(unused_imports)]
pub use conn::*;
#[allow(unused_imports)]
pub use envelope::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use jwt::*;
#[allow(unused_imports)]
pub use scenarios::*;
#[allow(unused_imports)]
pub use server::*;
#[allow(unused_imports)]
pub use time::*;
#[allow(unused_imports)]
pub use transports::*;
#[allow(unused_imports)]
pub use wire::*;
