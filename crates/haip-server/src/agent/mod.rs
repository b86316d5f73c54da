//! The agent side of the server (contract section 12): the [`Agent`] trait, the [`Reply`]
//! and [`Run`] an agent answers through, and the agents that come with the server: the
//! echo agent ([`echo`]) and any OpenAI-compatible model server ([`openai`]).
//!
//! The seam between agents and the session engine is [`SessionHandle`]: a small trait this
//! module defines and the engine implements. Agents see only it, so they never deal with
//! seqs, credit, event filters or connections, and this module imports nothing from the
//! engine: the dependency runs one way, engine to agent.
//!
//! The parts: the trait an agent implements (`seam`), the engine's side of the seam
//! (`handle`), what an agent answers through (`reply`), and the agents themselves.

mod handle;
mod reply;
mod seam;

pub mod echo;
pub mod openai;
pub mod workers;

pub use echo::EchoAgent;
pub use handle::{AgentMessage, AgentToolCall, HandleFuture, RunEnding, SessionHandle};
pub use reply::{words, Reply, Run, Speaker, Turn, Words};
pub use seam::{Agent, BoxFuture};
