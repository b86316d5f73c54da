//! AI SDK compatibility (contract section 14): front-ends built on the AI SDK's `useChat`
//! talk to haip-rs through that SDK's own chat transports, unchanged.
//!
//! - [`request`] reads what the SDK sends; [`chunks`] turns HAIP messages into the SDK's
//!   UI message chunks (pure, tested on its own).
//! - [`answer`] runs each answer on the session engine and keeps its chunks for every
//!   reader (the asking request, resumes, other devices).
//! - [`http`] (`DefaultChatTransport`) and [`ws`] (`WebSocketChatTransport`) are the two
//!   thin transports over it.

pub mod answer;
pub mod chunks;
pub mod http;
pub mod request;
pub mod ws;
