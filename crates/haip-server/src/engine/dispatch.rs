//! What a client message asks the engine to start: the agent's answer, a tool call, a
//! cancel on another node.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use haip_protocol::Envelope;
use tokio_util::sync::CancellationToken;

use super::agent_link::AgentLink;
use super::clock::now_ms;
use super::core::Action;
use super::registry::Engine;
use super::session::Session;
use super::store::Forwarded;
use super::tap;
use super::work::{run_tool, InFlight};
use crate::agent::{Reply, Turn};

impl Engine {
    /// Processes one valid client envelope and starts the work it asks for. Errors, and a
    /// close when one is due, go to the session's attached connection.
    pub fn handle(self: &Arc<Self>, session: &Arc<Session>, env: Envelope, cost: u64) {
        self.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        if self.tap.active() {
            self.tap.send(tap::Tapped {
                direction: tap::Direction::In,
                session: Arc::from(session.id.as_str()),
                subject: Arc::from(session.subject.as_str()),
                json: env.to_json(),
            });
        }
        let actions = session
            .lock()
            .receive(env, cost, self.tools.as_ref(), now_ms());
        for action in actions {
            match action {
                Action::RoundTrip(ms) => self.metrics.round_trip(ms),
                Action::CancelRunOn { node, run_id } => {
                    if let Some(store) = self.store().cloned() {
                        let id = session.id.clone();
                        tokio::spawn(async move {
                            store
                                .tell_node(&node, &id, Forwarded::CancelRun { run_id })
                                .await;
                        });
                    }
                }
                Action::Text {
                    text,
                    thread_id,
                    abandon,
                } => {
                    let history = self.take_history(&session.id);
                    if self.has_no_workers_here() {
                        self.answer_on_a_worker_node(session, text, thread_id, history, abandon);
                        continue;
                    }
                    let reply = Reply::new(self.agent_link(session, abandon), thread_id)
                        .with_history(history);
                    tokio::spawn(self.agent.on_text(reply, text));
                }
                Action::Audio { chunk, abandon } => {
                    let reply = Reply::new(self.agent_link(session, abandon), None);
                    tokio::spawn(self.agent.on_audio(reply, chunk));
                }
                Action::CallTool(call) => {
                    let in_flight = InFlight::new(session.clone());
                    let task = run_tool(self.tools.clone(), session.clone(), call);
                    tokio::spawn(async move {
                        let _in_flight = in_flight;
                        task.await
                    });
                }
            }
        }
    }

    /// Gives the agent the conversation before the session's next user message.
    pub fn set_history(&self, session_id: &str, history: Vec<Turn>) {
        self.histories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session_id.to_string(), history);
    }

    /// Takes what [`Engine::set_history`] left for the session (a giver calls it after its
    /// message, so that nothing stays behind when the message was refused).
    pub fn take_history(&self, session_id: &str) -> Option<Vec<Turn>> {
        let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
        if histories.is_empty() {
            return None;
        }
        histories.remove(session_id)
    }

    pub(super) fn agent_link(
        &self,
        session: &Arc<Session>,
        abandon: CancellationToken,
    ) -> Arc<AgentLink> {
        Arc::new(AgentLink::new(session.clone(), self.tools.clone(), abandon))
    }
}
