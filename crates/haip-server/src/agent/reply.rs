//! What an agent answers through: the [`Reply`] to one user message, the [`Run`]s it
//! opens, the conversation before it ([`Turn`]), and [`words`] to stream text by.

use std::sync::Arc;

use haip_protocol::payload::RunStatus;
use haip_protocol::{channel, ErrorCode, Payload};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::handle::{AgentMessage, AgentToolCall, RunEnding, SessionHandle};
use crate::tools::{ToolOutcome, ToolSpec};

/// Who said one earlier message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    User,
    Assistant,
}

/// One earlier message of a conversation, when the client keeps the conversation itself
/// (the AI SDK's `useChat` sends it with every request).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    pub speaker: Speaker,
    pub text: String,
}

/// The way back to the session a user message came from.
pub struct Reply {
    handle: Arc<dyn SessionHandle>,
    thread_id: Option<String>,
    history: Option<Vec<Turn>>,
}

impl Reply {
    pub fn new(handle: Arc<dyn SessionHandle>, thread_id: Option<String>) -> Reply {
        Reply {
            handle,
            thread_id,
            history: None,
        }
    }

    /// The conversation before this message, as the client gave it.
    pub fn with_history(mut self, history: Option<Vec<Turn>>) -> Reply {
        self.history = history;
        self
    }

    /// The conversation before this message when the client gave it; an agent then
    /// answers from it rather than from what it remembers.
    pub fn history(&self) -> Option<&[Turn]> {
        self.history.as_deref()
    }

    pub fn session_id(&self) -> &str {
        self.handle.session_id()
    }

    /// The user the session belongs to (the token's subject).
    pub fn subject(&self) -> &str {
        self.handle.subject()
    }

    /// The thread the user message was sent in, if any.
    pub fn thread_id(&self) -> Option<&str> {
        self.thread_id.as_deref()
    }

    /// The server's tools, with their input schemas.
    pub fn tools(&self) -> Vec<ToolSpec> {
        self.handle.tools()
    }

    /// Opens a run (sends RUN_STARTED). `None` when the session's run limit is reached;
    /// the client has then been told with RUN_LIMIT_EXCEEDED.
    pub fn start_run(&self) -> Option<Run> {
        let (run_id, cancel) = self.handle.open_run(self.thread_id.as_deref())?;
        Some(Run {
            handle: self.handle.clone(),
            run_id,
            cancel,
            thread_id: self.thread_id.clone(),
        })
    }

    /// Asks the client to stop sending on `channel` (PAUSE_CHANNEL): back-pressure for an
    /// agent that cannot keep up, e.g. with audio input. Messages the client sends there
    /// anyway are refused with FLOW_CONTROL_VIOLATION (CHANNEL_PAUSED).
    pub fn pause_channel(&self, channel: &str) {
        self.handle.pause_channel(channel);
    }

    /// Lets the client send on `channel` again (RESUME_CHANNEL).
    pub fn resume_channel(&self, channel: &str) {
        self.handle.resume_channel(channel);
    }

    /// Sends a message outside any run, once the client has taken enough of the output
    /// before it (see [`SessionHandle::writable`]).
    pub async fn send(&self, channel: &str, payload: Payload) {
        self.handle.writable().await;
        self.handle.send(AgentMessage {
            channel,
            payload,
            run_id: None,
            thread_id: None,
        });
    }
}

/// An open run. Every message sent through it carries its run_id; dropping it without
/// [`finish`](Run::finish) or [`fail`](Run::fail) closes it with status ERROR.
pub struct Run {
    handle: Arc<dyn SessionHandle>,
    run_id: String,
    cancel: CancellationToken,
    thread_id: Option<String>,
}

impl Run {
    pub fn id(&self) -> &str {
        &self.run_id
    }

    /// True once the client sent RUN_CANCEL for this run.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the client cancels the run.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// A token cancelled when the client cancels the run, for watching it from elsewhere.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether the client has left more of the session's output untaken than the
    /// high-water mark: an agent that does not wait in [`Run::send`] slows down itself.
    pub fn is_over_high_water(&self) -> bool {
        self.handle.over_high_water()
    }

    /// Sends a message of this run at once, without waiting for the client to take what
    /// came before: for agents that apply back-pressure their own way (workers are told
    /// PAUSE_CHANNEL). A cancelled run sends nothing.
    pub fn send_now(&self, channel: &str, payload: Payload) {
        if self.cancel.is_cancelled() {
            return;
        }
        self.handle.send(AgentMessage {
            channel,
            payload,
            run_id: Some(&self.run_id),
            thread_id: self.thread_id.as_deref(),
        });
    }

    /// Sends a message of this run on `channel`. Waits while the client has not taken
    /// enough of the output before it (back-pressure); a cancelled run sends nothing.
    pub async fn send(&self, channel: &str, payload: Payload) {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return,
            _ = self.handle.writable() => {}
        }
        self.send_now(channel, payload);
    }

    /// Starts an AGENT text message and returns its message_id.
    pub async fn message_start(&self, author: &str) -> String {
        let message_id = uuid::Uuid::new_v4().to_string();
        self.send(
            channel::AGENT,
            Payload::message_start(message_id.clone(), Some(author)),
        )
        .await;
        message_id
    }

    pub async fn message_part(&self, message_id: &str, text: &str) {
        self.send(channel::AGENT, Payload::message_part(message_id, text))
            .await;
    }

    pub async fn message_end(&self, message_id: &str, tokens: u64) {
        self.send(
            channel::AGENT,
            Payload::message_end(message_id, Some(tokens)),
        )
        .await;
    }

    /// Runs one of the server's tools in this run: the client sees TOOL_CALL, TOOL_UPDATE
    /// and TOOL_DONE, and RUN_CANCEL cancels the call. `params` is an error when the agent
    /// could not make sense of the model's arguments; the call then ends with ERROR.
    pub async fn call_tool(
        &self,
        call_id: &str,
        tool: &str,
        params: Result<Map<String, Value>, String>,
    ) -> ToolOutcome {
        if self.is_cancelled() {
            return ToolOutcome::cancelled();
        }
        self.handle.writable().await;
        self.handle
            .call_tool(AgentToolCall {
                run_id: self.run_id.clone(),
                call_id: call_id.to_string(),
                tool: tool.to_string(),
                params,
            })
            .await
    }

    /// Closes the run with RUN_FINISHED.
    pub fn finish(mut self, status: RunStatus) {
        self.close(RunEnding::Finished(status));
    }

    /// Closes the run with RUN_ERROR {code, message}.
    pub fn fail(mut self, code: ErrorCode, message: impl Into<String>) {
        self.close(RunEnding::Failed {
            code,
            message: message.into(),
        });
    }

    fn close(&mut self, ending: RunEnding) {
        if !self.run_id.is_empty() {
            self.handle.close_run(&self.run_id, ending);
            self.run_id.clear();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.close(RunEnding::Finished(RunStatus::Error));
    }
}

/// Splits text into words, each keeping the whitespace that follows it (leading whitespace
/// stays with the first word), so that the parts concatenate to the original text. Lazy:
/// a long text costs no list of its words.
pub fn words(text: &str) -> Words<'_> {
    Words { rest: text }
}

/// The iterator of [`words`].
pub struct Words<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        // The word ends where whitespace that follows non-whitespace gives way to the
        // next non-whitespace character.
        let mut seen_word = false;
        let mut in_space = false;
        let mut end = self.rest.len();
        for (i, c) in self.rest.char_indices() {
            if c.is_whitespace() {
                in_space = true;
            } else {
                if in_space && seen_word {
                    end = i;
                    break;
                }
                in_space = false;
                seen_word = true;
            }
        }
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(word)
    }
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn words_keep_their_spaces_and_rebuild_the_text() {
        let list = |t| words(t).collect::<Vec<_>>();
        assert_eq!(list("hello world"), vec!["hello ", "world"]);
        assert_eq!(list("  hi  there "), vec!["  hi  ", "there "]);
        assert_eq!(list("one"), vec!["one"]);
        assert!(list("").is_empty());
        assert_eq!(list("   "), vec!["   "]);
        for t in ["a b  c", " x\ty\n", "héllo wörld"] {
            assert_eq!(list(t).concat(), t);
        }
    }
}
