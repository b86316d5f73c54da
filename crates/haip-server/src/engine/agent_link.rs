//! The engine's side of the agent seam: [`AgentLink`] implements
//! [`SessionHandle`](crate::agent::SessionHandle) over one session, so that agents reach
//! the session only through that trait.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::{AgentMessage, HandleFuture, RunEnding, SessionHandle};
use crate::tools::{ToolCatalog, ToolOutcome, ToolRegistry, ToolSpec};

use tokio_util::sync::CancellationToken;

use super::clock::now_ms;
use super::core::ToolRun;
use super::session::Session;
use super::work::{run_tool, InFlight};

/// How long an agent waiting for the client to take its output sleeps between looks when
/// nothing wakes it (the connection went away, or credit came back without a write).
const WRITABLE_RECHECK: Duration = Duration::from_millis(50);

/// One session as an agent sees it, for the work of one user message: the work counts
/// as in flight in the session until the agent drops its last handle.
pub struct AgentLink {
    session: InFlight,
    tools: Arc<ToolRegistry>,
    /// Cancelled when this work is given up (cluster mode: the session moved before the
    /// store had the message that asked for it): nothing more reaches the session.
    abandon: CancellationToken,
}

impl AgentLink {
    pub fn new(
        session: Arc<Session>,
        tools: Arc<ToolRegistry>,
        abandon: CancellationToken,
    ) -> AgentLink {
        AgentLink {
            session: InFlight::new(session),
            tools,
            abandon,
        }
    }

    fn session(&self) -> &Arc<Session> {
        self.session.session()
    }
}

impl SessionHandle for AgentLink {
    fn session_id(&self) -> &str {
        &self.session().id
    }

    fn subject(&self) -> &str {
        &self.session().subject
    }

    fn open_run(&self, thread_id: Option<&str>) -> Option<(String, CancellationToken)> {
        if self.abandon.is_cancelled() {
            return None;
        }
        // A run opened here and then given up is cancelled with it (see the session
        // core's hand-over).
        self.session()
            .lock()
            .open_run(thread_id.map(str::to_string), now_ms())
    }

    fn send(&self, message: AgentMessage<'_>) {
        if self.abandon.is_cancelled() {
            return;
        }
        let mut core = self.session().lock();
        let mut env = core.envelope(message.channel, message.payload);
        env.run_id = message.run_id.map(str::to_string);
        env.thread_id = message.thread_id.map(str::to_string);
        core.emit(env, now_ms());
    }

    fn writable(&self) -> HandleFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let queue = {
                    let core = self.session().lock();
                    if !core.over_agent_high_water() {
                        return;
                    }
                    core.attached_queue()
                };
                match queue {
                    Some(queue) => {
                        // Registered before looking again, so a write in between wakes it.
                        let written = queue.written();
                        tokio::pin!(written);
                        written.as_mut().enable();
                        if !self.session().lock().over_agent_high_water() {
                            return;
                        }
                        let _ = tokio::time::timeout(WRITABLE_RECHECK, written).await;
                    }
                    None => tokio::time::sleep(WRITABLE_RECHECK).await,
                }
            }
        })
    }

    fn over_high_water(&self) -> bool {
        self.session().lock().over_agent_high_water()
    }

    fn close_run(&self, run_id: &str, ending: RunEnding) {
        if self.abandon.is_cancelled() {
            return;
        }
        self.session().lock().close_run(run_id, ending, now_ms());
    }

    fn pause_channel(&self, channel: &str) {
        self.session().lock().pause_inbound(channel, now_ms());
    }

    fn resume_channel(&self, channel: &str) {
        self.session().lock().resume_inbound(channel, now_ms());
    }

    fn tools(&self) -> Vec<ToolSpec> {
        self.tools.specs()
    }

    fn call_tool(&self, call: crate::agent::AgentToolCall) -> HandleFuture<'_, ToolOutcome> {
        Box::pin(async move {
            let known = self.tools.has(&call.tool);
            let started = self.session().lock().start_agent_tool_call(
                &call.run_id,
                &call.call_id,
                &call.tool,
                call.params,
                known,
                now_ms(),
            );
            let (cancel, params) = match started {
                Ok(started) => started,
                Err(outcome) => return outcome,
            };
            run_tool(
                self.tools.clone(),
                self.session().clone(),
                ToolRun {
                    call_id: call.call_id,
                    tool: call.tool,
                    params,
                    run_id: Some(call.run_id),
                    cancel,
                    abandon: self.abandon.clone(),
                },
            )
            .await
        })
    }
}
