//! The seam between agents and the session engine: [`SessionHandle`], which the engine
//! implements, and what goes through it.

use std::future::Future;
use std::pin::Pin;

use haip_protocol::payload::RunStatus;
use haip_protocol::{ErrorCode, Payload};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::tools::{ToolOutcome, ToolSpec};

/// A future borrowed from a [`SessionHandle`].
pub type HandleFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message an agent sends into a session.
#[derive(Debug)]
pub struct AgentMessage<'a> {
    pub channel: &'a str,
    pub payload: Payload,
    pub run_id: Option<&'a str>,
    pub thread_id: Option<&'a str>,
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnding {
    /// RUN_FINISHED with this status.
    Finished(RunStatus),
    /// RUN_ERROR with this code and message.
    Failed { code: ErrorCode, message: String },
}

/// A tool call an agent makes in one of its runs.
#[derive(Debug, Clone)]
pub struct AgentToolCall {
    pub run_id: String,
    pub call_id: String,
    pub tool: String,
    /// The parameters, or why the agent could not produce them (the call then ends with
    /// TOOL_DONE {ERROR} without running).
    pub params: Result<Map<String, Value>, String>,
}

/// What an agent may do to the session a user message came from. The session engine
/// implements it; agents use it through [`Reply`](super::Reply) and [`Run`](super::Run).
pub trait SessionHandle: Send + Sync + 'static {
    fn session_id(&self) -> &str;
    /// The user the session belongs to (the token's subject).
    fn subject(&self) -> &str;
    /// Opens a run (RUN_STARTED): its id and the token cancelled by RUN_CANCEL. `None`
    /// when the session's run limit is reached (the client was told RUN_LIMIT_EXCEEDED).
    fn open_run(&self, thread_id: Option<&str>) -> Option<(String, CancellationToken)>;
    /// Sends one message.
    fn send(&self, message: AgentMessage<'_>);
    /// Resolves once the session's output that the client has not taken yet is below the
    /// high-water mark: an agent that produces faster than its client reads waits here
    /// instead of making the session hold ever more.
    fn writable(&self) -> HandleFuture<'_, ()>;
    /// Whether that output is past the high-water mark now.
    fn over_high_water(&self) -> bool;
    /// Closes a run, after the last of its tool calls is done.
    fn close_run(&self, run_id: &str, ending: RunEnding);
    /// PAUSE_CHANNEL / RESUME_CHANNEL towards the client.
    fn pause_channel(&self, channel: &str);
    fn resume_channel(&self, channel: &str);
    /// The server's tools.
    fn tools(&self) -> Vec<ToolSpec>;
    /// Runs a tool in a run as a client's TOOL_CALL would be run (TOOL_CALL, TOOL_UPDATE,
    /// TOOL_DONE go to the client; RUN_CANCEL cancels it) and returns how it ended.
    fn call_tool(&self, call: AgentToolCall) -> HandleFuture<'_, ToolOutcome>;
}
