//! Agent workers (contract section 12.2): agents in any language attach over one
//! WebSocket each (`GET /haip/agent`, a token with `role: "agent"`) and answer the users'
//! messages. [`WorkersAgent`] is the server's agent: it starts each run in the user's
//! session and hands it, as a [`Job`], to the connected worker with the fewest open runs.
//! Each worker's connection is a [`link::WorkerLink`] driven by `transport/agent.rs`.

pub mod link;

pub mod pool;

use std::sync::Arc;

use haip_protocol::ErrorCode;

use super::reply::Reply;
use super::seam::{Agent, BoxFuture};
pub use link::Job;
pub use pool::{WorkerLoad, WorkerPool, WorkerSeat};

/// The agent of `--agent workers`: every user message goes to a worker.
pub struct WorkersAgent {
    pool: Arc<WorkerPool>,
}

impl WorkersAgent {
    pub fn new(pool: Arc<WorkerPool>) -> WorkersAgent {
        WorkersAgent { pool }
    }
}

impl Agent for WorkersAgent {
    fn on_text(&self, reply: Reply, text: String) -> BoxFuture {
        let pool = self.pool.clone();
        Box::pin(async move {
            let Some(run) = reply.start_run() else { return };
            let job = Job {
                run,
                text,
                session: reply.session_id().to_string(),
                subject: reply.subject().to_string(),
                thread_id: reply.thread_id().map(str::to_string),
                history: reply.history().map(<[_]>::to_vec),
            };
            if let Err(job) = pool.dispatch(job) {
                job.run
                    .fail(ErrorCode::AgentError, "no agent worker connected");
            }
        })
    }

    fn describe(&self) -> String {
        "workers (agents attach over WebSocket at the agent path with a token of role agent)".into()
    }

    fn worker_pool(&self) -> Option<Arc<WorkerPool>> {
        Some(self.pool.clone())
    }
}
