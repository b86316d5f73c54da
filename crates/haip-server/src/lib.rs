//! The HAIP server: one session engine and its WebSocket, SSE and HTTP-streaming adapters.
//!
//! - [`engine`]: sessions, the protocol rules applied to them, and the connection driver
//!   shared by all transports;
//! - [`transport`]: the three thin adapters plus `POST /haip/messages`;
//! - [`agent`] and [`tools`]: the pluggable agent and tools, with the built-in echo agent,
//!   the OpenAI-compatible agent, and the `echo`, `add`, `sleep` tools;
//! - [`web`]: the browser client (`/haip.js`) and its demo page, embedded;
//! - [`auth`]: JWT verification; [`tls`]: the TLS set-up shared by HTTP clients; [`config`]: settings; [`app`]: routes and shared state;
//!   [`server`]: binding, serving and graceful shutdown.

pub mod agent;
pub mod aisdk;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod server;
pub mod state;
pub mod tls;
pub mod tools;
pub mod transport;
pub mod web;
