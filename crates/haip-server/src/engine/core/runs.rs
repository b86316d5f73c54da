//! Runs and tool calls: opening, finishing and cancelling runs; an agent's tool calls;
//! TOOL_DONE ending what waits for it; pausing a client channel; the heartbeat.

use haip_protocol::payload::{
    ChannelRef, ErrorPayload, Nonce, RunFinished, RunStatus, ToolCall, ToolDone,
};
use haip_protocol::runs::RunError;
use haip_protocol::{channel, Envelope, ErrorCode, Payload};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::session_core::SessionCore;
use crate::agent::RunEnding;
use crate::engine::outbound::{Close, OutItem};
use crate::tools::ToolOutcome;

impl SessionCore {
    pub(super) fn run_error(&mut self, e: RunError, related: Option<String>, now_ms: u64) {
        let code = match e {
            RunError::LimitExceeded { .. } => ErrorCode::RunLimitExceeded,
            RunError::NotFound(_) => ErrorCode::RunNotFound,
            RunError::AlreadyOpen(_) => ErrorCode::ProtocolViolation,
        };
        self.emit_error(code, e.to_string(), related, None, now_ms);
    }

    /// Opens a run for agent output; its RUN_STARTED is sent. Fails with
    /// RUN_LIMIT_EXCEEDED (also sent to the client) when too many runs are open.
    pub fn open_run(
        &mut self,
        thread_id: Option<String>,
        now_ms: u64,
    ) -> Option<(String, CancellationToken)> {
        let run_id = uuid::Uuid::new_v4().to_string();
        if let Err(e) = self.runs.open(&run_id, thread_id.clone(), now_ms) {
            self.run_error(e, None, now_ms);
            return None;
        }
        let token = CancellationToken::new();
        self.cancels.insert(run_id.clone(), token.clone());
        let mut env = self.envelope(
            channel::AGENT,
            Payload::RunStarted(haip_protocol::payload::RunStarted {
                run_id: Some(run_id.clone()),
                thread_id: thread_id.clone(),
                metadata: None,
                extra: Map::new(),
            }),
        );
        env.run_id = Some(run_id.clone());
        env.thread_id = thread_id;
        self.emit(env, now_ms);
        Some((run_id, token))
    }

    /// Closes a run with RUN_FINISHED.
    pub fn finish_run(&mut self, run_id: &str, status: RunStatus, now_ms: u64) {
        self.close_run(run_id, RunEnding::Finished(status), now_ms);
    }

    /// Closes a run with RUN_FINISHED or RUN_ERROR, once the last of its tool calls is
    /// done (nothing of a run may follow its closing message).
    pub fn close_run(&mut self, run_id: &str, ending: RunEnding, now_ms: u64) {
        if self.runs.get(run_id).is_none() {
            return;
        }
        if !self.tool_calls.of_run(run_id).is_empty() {
            self.finish_after_tools.insert(run_id.to_string(), ending);
            return;
        }
        let thread_id = self.runs.get(run_id).and_then(|r| r.thread_id.clone());
        if self.runs.close(run_id).is_err() {
            return;
        }
        self.finish_after_tools.remove(run_id);
        self.cancels.remove(run_id);
        let payload = match ending {
            RunEnding::Finished(status) => Payload::RunFinished(RunFinished {
                run_id: Some(run_id.to_string()),
                status: Some(status),
                summary: None,
                extra: Map::new(),
            }),
            RunEnding::Failed { code, message } => Payload::RunError(ErrorPayload {
                code: code.as_str().to_string(),
                message,
                related_id: None,
                detail: None,
                run_id: Some(run_id.to_string()),
                extra: Map::new(),
            }),
        };
        let mut env = self.envelope(channel::AGENT, payload);
        env.run_id = Some(run_id.to_string());
        env.thread_id = thread_id;
        self.emit(env, now_ms);
    }

    /// Starts a tool call an agent makes in its run `run_id`: TOOL_CALL goes to the
    /// client and the call is tracked like a client's, so RUN_CANCEL cancels it and the
    /// run closes only after its TOOL_DONE. Returns the call's cancellation and params to
    /// run it with, or how it ended at once (the run was cancelled, the tool is unknown,
    /// the params are bad, the call id is already in use).
    pub fn start_agent_tool_call(
        &mut self,
        run_id: &str,
        call_id: &str,
        tool: &str,
        params: Result<Map<String, Value>, String>,
        known: bool,
        now_ms: u64,
    ) -> Result<(CancellationToken, Map<String, Value>), ToolOutcome> {
        if self.runs.get(run_id).is_none_or(|r| r.cancelled) {
            return Err(ToolOutcome::cancelled());
        }
        if self
            .tool_calls
            .start(call_id, tool, Some(run_id.to_string()), now_ms)
            .is_err()
        {
            return Err(ToolOutcome::error(
                ErrorCode::ToolExecutionError.as_str(),
                format!("tool call {call_id:?} is already running"),
            ));
        }
        let thread_id = self.runs.get(run_id).and_then(|r| r.thread_id.clone());
        let mut call = self.envelope(
            channel::AGENT,
            Payload::ToolCall(ToolCall {
                call_id: call_id.to_string(),
                tool: tool.to_string(),
                params: Some(params.as_ref().cloned().unwrap_or_default()),
                extra: Map::new(),
            }),
        );
        call.run_id = Some(run_id.to_string());
        call.thread_id = thread_id;
        self.emit(call, now_ms);
        let refusal = match params {
            _ if !known => Err(ToolOutcome::error(
                ErrorCode::ToolNotFound.as_str(),
                format!("no tool named {tool:?}"),
            )),
            Err(why) => Err(ToolOutcome::error(
                ErrorCode::ToolExecutionError.as_str(),
                why,
            )),
            Ok(params) => Ok(params),
        };
        let params = match refusal {
            Ok(params) => params,
            Err(outcome) => {
                let mut done = self.envelope(
                    channel::AGENT,
                    Payload::ToolDone(ToolDone {
                        call_id: call_id.to_string(),
                        status: outcome.status,
                        result: outcome.result.clone(),
                        extra: Map::new(),
                    }),
                );
                done.run_id = Some(run_id.to_string());
                self.tool_done(done, call_id, now_ms);
                return Err(outcome);
            }
        };
        let cancel = CancellationToken::new();
        self.cancels.insert(call_id.to_string(), cancel.clone());
        Ok((cancel, params))
    }

    /// Sends a call's TOOL_DONE and forgets the call; a run that was waiting for it to
    /// finish gets its RUN_FINISHED now. One step under the lock, so nothing slips between.
    pub fn tool_done(&mut self, env: Envelope, call_id: &str, now_ms: u64) {
        self.emit(env, now_ms);
        self.cancels.remove(call_id);
        let Ok(call) = self.tool_calls.finish(call_id) else {
            return;
        };
        if let Some(run_id) = call.run_id {
            if let Some(ending) = self.finish_after_tools.get(&run_id).cloned() {
                self.close_run(&run_id, ending, now_ms);
            }
        }
    }

    /// Cancels all agent and tool work (the session is being dropped).
    pub fn cancel_all(&mut self) {
        for token in self.cancels.values() {
            token.cancel();
        }
    }

    /// Pauses a client channel: PAUSE_CHANNEL, then its messages are refused until resumed.
    pub fn pause_inbound(&mut self, channel: &str, now_ms: u64) {
        if self.meter.pause(channel) {
            let env = self.system(Payload::PauseChannel(ChannelRef {
                channel: channel.to_string(),
                extra: Map::new(),
            }));
            self.emit(env, now_ms);
        }
    }

    pub fn resume_inbound(&mut self, channel: &str, now_ms: u64) {
        self.meter.resume(channel);
        let env = self.system(Payload::ResumeChannel(ChannelRef {
            channel: channel.to_string(),
            extra: Map::new(),
        }));
        self.emit(env, now_ms);
    }

    /// Sends a heartbeat PING whose PONG will be timed.
    pub fn ping(&mut self, now_ms: u64) {
        let nonce = uuid::Uuid::new_v4().to_string();
        self.ping_in_flight = Some((nonce.clone(), now_ms));
        let env = self.system(Payload::Ping(Nonce {
            nonce: Some(nonce),
            extra: Map::new(),
        }));
        self.emit(env, now_ms);
    }

    /// Closes the attached connection, if any, after what is queued.
    pub fn close_connection(&mut self, close: Close) {
        if let Some(q) = &self.attached {
            q.push(OutItem::Close(close));
        }
    }
}
