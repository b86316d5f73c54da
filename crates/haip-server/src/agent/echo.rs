//! The built-in agent (contract section 10): answers each message with its own words.

use std::time::Duration;

use haip_protocol::payload::{AudioChunk, RunStatus};
use haip_protocol::{channel, Payload};

use super::reply::{words, Reply};
use super::seam::{Agent, BoxFuture};

/// Answers each message with its own words, one MESSAGE_PART per word, in a run that
/// RUN_CANCEL stops; echoes audio back with identical bytes.
pub struct EchoAgent {
    /// Pause between words, so that a reply streams like a model's would.
    pub word_delay: Duration,
}

impl Agent for EchoAgent {
    fn on_text(&self, reply: Reply, text: String) -> BoxFuture {
        let delay = self.word_delay;
        Box::pin(async move {
            let Some(run) = reply.start_run() else { return };
            let message_id = run.message_start("echo").await;
            let mut parts = 0;
            for (i, word) in words(&text).enumerate() {
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
                run.message_part(&message_id, word).await;
                parts += 1;
            }
            run.message_end(&message_id, parts).await;
            if run.is_cancelled() {
                run.finish(RunStatus::Cancelled);
            } else {
                run.finish(RunStatus::Ok);
            }
        })
    }

    fn on_audio(&self, reply: Reply, chunk: AudioChunk) -> BoxFuture {
        Box::pin(async move {
            reply.send(channel::AGENT, Payload::AudioChunk(chunk)).await;
        })
    }

    fn describe(&self) -> String {
        format!(
            "echo (answers with your own words, {} ms between words)",
            self.word_delay.as_millis()
        )
    }
}
