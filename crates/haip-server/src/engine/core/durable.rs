//! The state a session kept in a store holds (cluster mode, see `engine::store`): the
//! messages waiting for the store, who drives the session, what goes to and comes from
//! other nodes. The write path is in `store_writes.rs`; handing the session over and
//! taking one over, in `handover.rs`.
//!
//! A sent message gets its seq and its place in the replay window as in memory mode, but
//! it waits in `unstored` until the store confirms it; only then does it go to the
//! connection. A node that no longer drives the session forwards what it still produces,
//! without seq, to the node that does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};

use haip_protocol::Envelope;
use tokio_util::sync::CancellationToken;

use super::forwarding::Forwarding;
use crate::engine::outbound::Outgoing;
use crate::engine::store::{SessionStore, WritingSession};

/// The message a node that lost a run's agent gives for it (contract section 13).
pub const AGENT_NODE_LOST: &str = "agent node lost";

/// A sent message the store has not confirmed.
#[derive(Debug)]
pub(super) struct Unstored {
    pub(super) ts: u64,
    pub(super) out: Arc<Outgoing>,
    /// Who produced it, when another node did (its producer and number, see
    /// `Forwarding`).
    pub(super) origin: Option<(String, u64)>,
}

pub(super) struct Durable {
    /// Where the session is kept, and the session itself (for the store to pull from).
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) session: Option<Weak<dyn WritingSession>>,
    /// This node as owners are recorded.
    pub(super) me: Arc<str>,
    /// The epoch this node drives the session in.
    pub(super) epoch: u64,
    /// Sent messages the store has not confirmed, oldest first; the first `writing` of
    /// them are in a write under way.
    pub(super) unstored: VecDeque<Unstored>,
    pub(super) writing: usize,
    /// Set once another node drives the session: what is produced here goes there.
    pub(super) elsewhere: bool,
    /// Output made after another node took the session but before the hand-over, which
    /// waits for the write under way (see `now_driven_elsewhere`): forwarded after what
    /// the hand-over sends, so that it cannot overtake older output.
    pub(super) after_handover: Vec<Envelope>,
    /// What goes to (and comes from) the other nodes, in order.
    pub(super) forwarding: Forwarding,
    /// The producer of the message being sent, while a forwarded one is.
    pub(super) origin: Option<(String, u64)>,
    /// The node of each open run whose agent is not on this node.
    pub(super) remote_runs: HashMap<String, String>,
    /// Work started by client messages the store does not have yet, by client seq: given
    /// up if the session moves first (the node that takes it over processes them again).
    pub(super) work: Vec<(u64, CancellationToken)>,
    /// Runs given up that way: their output is dropped.
    pub(super) abandoned_runs: HashSet<String>,
    pub(super) runs_changed: bool,
    pub(super) client_hai: Option<String>,
    pub(super) written_client_seq: Option<u64>,
    /// The generation of the user messages being assembled last written.
    pub(super) written_texts: Option<u32>,
    /// The client seq processed that the store has (what may be acknowledged outside a
    /// stored message, e.g. in the answer to a POST).
    pub(super) stored_client_seq: Option<u64>,
    pub(super) ended_written: bool,
    /// Asked the store to pull a write and not pulled yet.
    pub(super) scheduled: bool,
    /// The client was told that the store is out of reach (once per outage).
    pub(super) told_unavailable: bool,
}

impl Durable {
    /// Forwards `env`, made here, to the node that drives the session, unless its run was
    /// given up (its output is dropped).
    pub(super) fn produce_unless_abandoned(&mut self, env: Envelope) {
        let abandoned = env
            .run_id
            .as_ref()
            .is_some_and(|run| self.abandoned_runs.contains(run));
        if !abandoned {
            self.forwarding.produce(forwardable(env));
        }
    }

    /// The last message waiting for the store.
    pub(super) fn last_unstored(&self) -> Option<Arc<Outgoing>> {
        self.unstored.back().map(|u| u.out.clone())
    }
}

/// An envelope as forwarded: its own id, seq, ack and ts are given by the node that sends
/// it. The fields stay valid so that the receiver can read it with the usual checks.
pub(super) fn forwardable(mut env: Envelope) -> String {
    env.id = "forwarded".to_string();
    env.seq = 1;
    env.ack = None;
    env.ts = 0;
    env.to_json()
}

/// The user messages being assembled, as stored: message id to text and thread.
pub(super) fn texts_json(texts: &HashMap<String, (String, Option<String>)>) -> String {
    serde_json::to_string(texts).unwrap_or_default()
}
