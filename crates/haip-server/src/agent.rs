//! The agent interface and the built-in echo agent (contract section 10).
//!
//! An [`Agent`] is told when a user message completes; it answers through a [`Reply`],
//! which opens runs and sends messages into the session. Everything sent goes through the
//! session engine, so the agent never deals with seqs, credit, filters or connections, and
//! its output is kept for replay while the client is away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use haip_protocol::payload::{AudioChunk, MessageEnd, MessagePart, MessageStart, RunStatus};
use haip_protocol::{channel, Payload};
use serde_json::Map;
use tokio_util::sync::CancellationToken;

use crate::engine::{now_ms, Session};

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Answers user input. Implement it to plug your own model in; see `examples/custom_agent.rs`.
pub trait Agent: Send + Sync + 'static {
    /// A USER text message completed (MESSAGE_START, MESSAGE_PART*, MESSAGE_END).
    fn on_text(&self, reply: Reply, text: String) -> BoxFuture;

    /// An AUDIO_CHUNK arrived from the user. Ignored unless overridden.
    fn on_audio(&self, _reply: Reply, _chunk: AudioChunk) -> BoxFuture {
        Box::pin(async {})
    }
}

/// The way back to the session a user message came from.
pub struct Reply {
    session: Arc<Session>,
    thread_id: Option<String>,
}

impl Reply {
    pub(crate) fn new(session: Arc<Session>, thread_id: Option<String>) -> Reply {
        Reply { session, thread_id }
    }

    pub fn session_id(&self) -> &str {
        &self.session.id
    }

    /// The user the session belongs to (the token's subject).
    pub fn subject(&self) -> &str {
        &self.session.subject
    }

    /// Opens a run (sends RUN_STARTED). `None` when the session's run limit is reached;
    /// the client has then been told with RUN_LIMIT_EXCEEDED.
    pub fn start_run(&self) -> Option<Run> {
        let (run_id, cancel) = self
            .session
            .lock()
            .open_run(self.thread_id.clone(), now_ms())?;
        Some(Run {
            session: self.session.clone(),
            run_id,
            cancel,
            thread_id: self.thread_id.clone(),
        })
    }

    /// Asks the client to stop sending on `channel` (PAUSE_CHANNEL): back-pressure for an
    /// agent that cannot keep up, e.g. with audio input. Messages the client sends there
    /// anyway are refused with FLOW_CONTROL_VIOLATION (CHANNEL_PAUSED).
    pub fn pause_channel(&self, channel: &str) {
        self.session.lock().pause_inbound(channel, now_ms());
    }

    /// Lets the client send on `channel` again (RESUME_CHANNEL).
    pub fn resume_channel(&self, channel: &str) {
        self.session.lock().resume_inbound(channel, now_ms());
    }

    /// Sends a message outside any run.
    pub fn send(&self, channel: &str, payload: Payload) {
        let mut core = self.session.lock();
        let env = core.envelope(channel, payload);
        core.emit(env, now_ms());
    }
}

/// An open run. Every message sent through it carries its run_id; dropping it without
/// [`finish`](Run::finish) closes it with status ERROR.
pub struct Run {
    session: Arc<Session>,
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

    /// Sends a message of this run on `channel`.
    pub fn send(&self, channel: &str, payload: Payload) {
        let mut core = self.session.lock();
        let mut env = core.envelope(channel, payload);
        env.run_id = Some(self.run_id.clone());
        env.thread_id = self.thread_id.clone();
        core.emit(env, now_ms());
    }

    /// Starts an AGENT text message and returns its message_id.
    pub fn message_start(&self, author: &str) -> String {
        let message_id = uuid::Uuid::new_v4().to_string();
        self.send(
            channel::AGENT,
            Payload::MessageStart(MessageStart {
                message_id: message_id.clone(),
                author: Some(author.to_string()),
                text: None,
                extra: Map::new(),
            }),
        );
        message_id
    }

    pub fn message_part(&self, message_id: &str, text: &str) {
        self.send(
            channel::AGENT,
            Payload::MessagePart(MessagePart {
                message_id: message_id.to_string(),
                text: text.to_string(),
                extra: Map::new(),
            }),
        );
    }

    pub fn message_end(&self, message_id: &str, tokens: u64) {
        self.send(
            channel::AGENT,
            Payload::MessageEnd(MessageEnd {
                message_id: message_id.to_string(),
                tokens: Some(tokens),
                extra: Map::new(),
            }),
        );
    }

    /// Closes the run with RUN_FINISHED.
    pub fn finish(mut self, status: RunStatus) {
        self.close(status);
    }

    fn close(&mut self, status: RunStatus) {
        if !self.run_id.is_empty() {
            self.session
                .lock()
                .finish_run(&self.run_id, status, now_ms());
            self.run_id.clear();
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.close(RunStatus::Error);
    }
}

/// Splits text into words, each keeping the whitespace that follows it (leading whitespace
/// stays with the first word), so that the parts concatenate to the original text.
pub fn words(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    let mut seen_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else {
            if in_space && seen_word {
                parts.push(&text[start..i]);
                start = i;
            }
            in_space = false;
            seen_word = true;
        }
    }
    if start < text.len() {
        parts.push(&text[start..]);
    }
    parts
}

/// The built-in agent: answers each message with its own words, one MESSAGE_PART per word,
/// in a run that RUN_CANCEL stops; echoes audio back with identical bytes.
pub struct EchoAgent {
    /// Pause between words, so that a reply streams like a model's would.
    pub word_delay: Duration,
}

impl Agent for EchoAgent {
    fn on_text(&self, reply: Reply, text: String) -> BoxFuture {
        let delay = self.word_delay;
        Box::pin(async move {
            let Some(run) = reply.start_run() else { return };
            let message_id = run.message_start("echo");
            let parts = words(&text);
            for (i, word) in parts.iter().enumerate() {
                if i > 0 && !delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = run.cancelled() => {}
                    }
                }
                if run.is_cancelled() {
                    run.finish(RunStatus::Cancelled);
                    return;
                }
                run.message_part(&message_id, word);
            }
            run.message_end(&message_id, parts.len() as u64);
            run.finish(RunStatus::Ok);
        })
    }

    fn on_audio(&self, reply: Reply, chunk: AudioChunk) -> BoxFuture {
        Box::pin(async move {
            reply.send(channel::AGENT, Payload::AudioChunk(chunk));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn words_keep_their_spaces_and_rebuild_the_text() {
        assert_eq!(words("hello world"), vec!["hello ", "world"]);
        assert_eq!(words("  hi  there "), vec!["  hi  ", "there "]);
        assert_eq!(words("one"), vec!["one"]);
        assert!(words("").is_empty());
        assert_eq!(words("   "), vec!["   "]);
        for t in ["a b  c", " x\ty\n", "héllo wörld"] {
            assert_eq!(words(t).concat(), t);
        }
    }
}
