//! The protocol's common requests as one call each: tools, runs, audio, channel pauses and
//! replays. Each builds an envelope and sends it through the connection like any message.

use haip_protocol::payload::{
    AudioChunk, ChannelRef, ReplayRequest, RunCancel, RunStarted, RunStatus, ToolCall, ToolProgress,
};
use haip_protocol::{channel, Envelope, Payload};
use serde_json::{Map, Value};

use crate::error::ClientError;
use crate::Connection;

/// A unique id for a request of this process.
fn request_id(kind: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{kind}-{t:x}-{n}")
}

fn envelope(id: String, channel: &str, payload: Payload) -> Envelope {
    Envelope::new(id, "-", 0, 0, channel, payload)
}

impl Connection {
    /// Calls a tool of the server and waits for its TOOL_DONE: the result when OK; a
    /// typed error for an unknown tool (TOOL_NOT_FOUND), a failed call (its code, e.g.
    /// TOOL_EXECUTION_ERROR) or a cancelled one (CANCELLED). `progress` gets each
    /// TOOL_UPDATE's progress (0-100).
    pub async fn call_tool(
        &self,
        tool: &str,
        params: Map<String, Value>,
        mut progress: impl FnMut(f64) + Send,
    ) -> Result<Value, ClientError> {
        let call_id = request_id("call");
        let env_id = request_id("msg");
        // Subscribed before sending, so the answer cannot be missed.
        let mut answers = self.subscribe(">")?;
        let call = envelope(
            env_id.clone(),
            channel::USER,
            Payload::ToolCall(ToolCall {
                call_id: call_id.clone(),
                tool: tool.to_string(),
                params: Some(params),
                extra: Map::new(),
            }),
        );
        self.send_envelope(call).await?;
        while let Some(item) = answers.recv().await {
            match &item.message.payload {
                Payload::ToolUpdate(u) if u.call_id == call_id => {
                    if let (ToolProgress::Running, Some(p)) = (u.status, u.progress) {
                        progress(p);
                    }
                }
                Payload::ToolDone(d) if d.call_id == call_id => {
                    let result = d.result.clone().unwrap_or(Value::Null);
                    return match d.status {
                        RunStatus::Ok => Ok(result),
                        RunStatus::Cancelled => Err(ClientError::Server {
                            code: "CANCELLED".into(),
                            message: format!("tool call {call_id} was cancelled"),
                        }),
                        RunStatus::Error => Err(ClientError::Server {
                            code: result["code"]
                                .as_str()
                                .unwrap_or("TOOL_EXECUTION_ERROR")
                                .to_string(),
                            message: result["message"].as_str().unwrap_or("").to_string(),
                        }),
                    };
                }
                Payload::Error(e) if e.related_id.as_deref() == Some(env_id.as_str()) => {
                    return Err(ClientError::Server {
                        code: e.code.clone(),
                        message: e.message.clone(),
                    });
                }
                _ => {}
            }
        }
        Err(ClientError::Stopped)
    }

    /// Opens a run of the client's own (RUN_STARTED) and returns its id.
    pub async fn start_run(&self, thread_id: Option<String>) -> Result<String, ClientError> {
        let run_id = request_id("run");
        let mut env = envelope(
            request_id("msg"),
            channel::USER,
            Payload::RunStarted(RunStarted {
                run_id: Some(run_id.clone()),
                thread_id: thread_id.clone(),
                metadata: None,
                extra: Map::new(),
            }),
        );
        env.run_id = Some(run_id.clone());
        env.thread_id = thread_id;
        self.send_envelope(env).await?;
        Ok(run_id)
    }

    /// Asks the server to stop a run (RUN_CANCEL); it answers RUN_FINISHED CANCELLED.
    pub async fn cancel_run(&self, run_id: &str) -> Result<(), ClientError> {
        let env = envelope(
            request_id("msg"),
            channel::USER,
            Payload::RunCancel(RunCancel {
                run_id: run_id.to_string(),
                extra: Map::new(),
            }),
        );
        self.send_envelope(env).await
    }

    /// Sends audio on USER: as a binary frame on WebSocket when the server takes them,
    /// base64 in `data` elsewhere.
    pub async fn send_audio(&self, mime: &str, data: Vec<u8>) -> Result<String, ClientError> {
        let message_id = request_id("audio");
        let env = envelope(
            request_id("msg"),
            channel::USER,
            Payload::AudioChunk(AudioChunk {
                message_id: message_id.clone(),
                mime: mime.to_string(),
                data: Some(data),
                duration_ms: None,
                extra: Map::new(),
            }),
        );
        self.send_envelope(env).await?;
        Ok(message_id)
    }

    /// Asks the server to hold its messages on `channel` (PAUSE_CHANNEL) ...
    pub async fn pause_channel(&self, channel_name: &str) -> Result<(), ClientError> {
        self.channel_request(channel_name, true).await
    }

    /// ... and to release them, in order (RESUME_CHANNEL).
    pub async fn resume_channel(&self, channel_name: &str) -> Result<(), ClientError> {
        self.channel_request(channel_name, false).await
    }

    async fn channel_request(&self, channel_name: &str, pause: bool) -> Result<(), ClientError> {
        let target = ChannelRef {
            channel: channel_name.to_string(),
            extra: Map::new(),
        };
        let payload = if pause {
            Payload::PauseChannel(target)
        } else {
            Payload::ResumeChannel(target)
        };
        self.send_envelope(envelope(request_id("msg"), channel::SYSTEM, payload))
            .await
    }

    /// Asks the server to send again what it sent from `from_seq` (through `to_seq`).
    /// What the client already delivered is dropped as a duplicate, so this fills gaps: the
    /// client asks by itself when a gap stays open 500 ms; this asks at once.
    pub async fn request_replay(
        &self,
        from_seq: u64,
        to_seq: Option<u64>,
    ) -> Result<(), ClientError> {
        let payload = Payload::ReplayRequest(ReplayRequest {
            from_seq,
            to_seq,
            extra: Map::new(),
        });
        self.send_envelope(envelope(request_id("msg"), channel::SYSTEM, payload))
            .await
    }
}
