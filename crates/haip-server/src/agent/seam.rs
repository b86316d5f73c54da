//! What an agent implements: the [`Agent`] trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use haip_protocol::payload::AudioChunk;

use super::reply::Reply;
use super::workers::pool::WorkerPool;

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Answers user input. Implement it to plug your own model in; see `examples/custom_agent.rs`.
pub trait Agent: Send + Sync + 'static {
    /// A USER text message completed (MESSAGE_START, MESSAGE_PART*, MESSAGE_END).
    fn on_text(&self, reply: Reply, text: String) -> BoxFuture;

    /// An AUDIO_CHUNK arrived from the user. Ignored unless overridden.
    fn on_audio(&self, _reply: Reply, _chunk: AudioChunk) -> BoxFuture {
        Box::pin(async {})
    }

    /// One line for the start-up banner: who answers.
    fn describe(&self) -> String {
        "custom agent".into()
    }

    /// The pool that agent workers join over `GET /haip/agent`, for an agent that hands
    /// the work to them (`super::workers::WorkersAgent`).
    fn worker_pool(&self) -> Option<Arc<WorkerPool>> {
        None
    }
}
