//! Work a session's messages start outside its lock: a tool call running, counted while it
//! lasts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use haip_protocol::payload::{RunStatus, ToolDone, ToolProgress, ToolUpdate};
use haip_protocol::{channel, Payload};
use serde_json::Map;

use super::clock::now_ms;
use super::core::ToolRun;
use super::session::Session;
use crate::tools::{ToolContext, ToolOutcome, ToolRegistry};

/// One piece of work a session's messages started (an agent answering, a tool running),
/// counted in the session while it lasts. When the last one ends the connection is woken,
/// so that a stream asked to end once everything is answered can end.
pub(super) struct InFlight(Arc<Session>);

impl InFlight {
    pub(super) fn new(session: Arc<Session>) -> InFlight {
        session.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(session)
    }

    pub(super) fn session(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(queue) = self.0.lock().attached_queue() {
                queue.wake_timers();
            }
        }
    }
}

/// Runs one tool call, a client's or an agent's: TOOL_UPDATE RUNNING, then TOOL_DONE with
/// the result, an error, or CANCELLED when TOOL_CANCEL (or the run's cancellation) arrives
/// first. Returns how it ended.
pub(super) async fn run_tool(
    tools: Arc<ToolRegistry>,
    session: Arc<Session>,
    call: ToolRun,
) -> ToolOutcome {
    let ToolRun {
        call_id,
        tool,
        params,
        run_id,
        cancel,
        abandon,
    } = call;
    let send = |payload: Payload| {
        if abandon.is_cancelled() {
            return;
        }
        let mut core = session.lock();
        let mut env = core.envelope(channel::AGENT, payload);
        env.run_id = run_id.clone();
        core.emit(env, now_ms());
    };
    send(Payload::ToolUpdate(ToolUpdate {
        call_id: call_id.clone(),
        status: ToolProgress::Running,
        progress: None,
        partial: None,
        extra: Map::new(),
    }));
    let progress = {
        let session = session.clone();
        let call_id = call_id.clone();
        let run_id = run_id.clone();
        let abandon = abandon.clone();
        move |pct: f64| {
            if abandon.is_cancelled() {
                return;
            }
            let mut core = session.lock();
            let mut env = core.envelope(
                channel::AGENT,
                Payload::ToolUpdate(ToolUpdate {
                    call_id: call_id.clone(),
                    status: ToolProgress::Running,
                    progress: Some(pct.clamp(0.0, 100.0)),
                    partial: None,
                    extra: Map::new(),
                }),
            );
            env.run_id = run_id.clone();
            core.emit(env, now_ms());
        }
    };
    let ctx = ToolContext::new(cancel.clone(), Box::new(progress));
    let outcome = tokio::select! {
        outcome = tools.call(&tool, params, ctx) => outcome,
        _ = abandon.cancelled() => Err(crate::tools::ToolError("given up".into())),
    };
    let (status, result) = match outcome {
        _ if cancel.is_cancelled() || abandon.is_cancelled() => (RunStatus::Cancelled, None),
        Ok(v) => (RunStatus::Ok, Some(v)),
        Err(e) => (
            RunStatus::Error,
            Some(serde_json::json!({"code": "TOOL_EXECUTION_ERROR", "message": e.to_string()})),
        ),
    };
    if abandon.is_cancelled() {
        return ToolOutcome { status, result };
    }
    let mut core = session.lock();
    let mut env = core.envelope(
        channel::AGENT,
        Payload::ToolDone(ToolDone {
            call_id: call_id.clone(),
            status,
            result: result.clone(),
            extra: Map::new(),
        }),
    );
    env.run_id = run_id;
    core.tool_done(env, &call_id, now_ms());
    ToolOutcome { status, result }
}
