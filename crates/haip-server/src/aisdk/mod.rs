//! AI SDK compatibility (contract section 14): front-ends built on the AI SDK's `useChat`
//! talk to haip-rs through that SDK's own chat transports, unchanged.
//!
//! - [`request`] reads what the SDK sends; [`chunks`] turns HAIP messages into the SDK's
//!   UI message chunks (pure, tested on its own).
//! - [`answer`] runs each answer on the session engine and keeps its chunks for every
//!   reader (the asking request, resumes, other devices).
//! - The two thin transports over it, `DefaultChatTransport` and
//!   `WebSocketChatTransport`, are with the other transports (`transport/aisdk_http.rs`,
//!   `transport/aisdk_ws.rs`).

pub mod answer;
pub mod chunks;
pub mod request;
