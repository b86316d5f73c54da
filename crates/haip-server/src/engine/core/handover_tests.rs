//! The hand-over of a session to another node (cluster mode), driven without a store: the
//! core is told what the store answered, and what it forwards is read from its writes.

use std::sync::Arc;

use haip_protocol::payload::{MessagePart, MessageStart};
use haip_protocol::{channel, Envelope, Payload};
use serde_json::Map;

use super::limits::SessionLimits;
use super::session_core::SessionCore;
use crate::engine::outbound::ConnQueue;
use crate::engine::store::{
    BoxFuture, ClaimedSession, Forwarded, PendingWrite, SessionStore, StoreError, WriteOutcome,
    WritingSession,
};

/// A store this core never reaches: the tests play its answers by hand.
struct UnreachedStore;

impl SessionStore for UnreachedStore {
    fn owner(&self) -> &str {
        "node-a/1"
    }
    fn is_available(&self) -> bool {
        true
    }
    fn schedule(&self, _: Arc<dyn WritingSession>) {}
    fn claim<'a>(
        &'a self,
        s: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<ClaimedSession, StoreError>> {
        Box::pin(async move { Err(StoreError::Unknown(s.to_string())) })
    }
    fn forward<'a>(
        &'a self,
        _: &'a str,
        _: Option<&'a str>,
        _: &'a str,
        _: Forwarded,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn drain<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Forwarded)>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn tell_node<'a>(&'a self, _: &'a str, _: &'a str, _: Forwarded) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn live_nodes(&self, nodes: Vec<String>) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move { nodes })
    }
    fn refresh(&self, _: Vec<String>) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn follow<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn worker_node(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }
    fn copy_to_followers(&self, _: &str, _: &str, _: Vec<(String, String)>) {}
}

fn part(core: &SessionCore, run_id: &str, text: &str) -> Envelope {
    let mut env = core.envelope(
        channel::AGENT,
        Payload::MessagePart(MessagePart {
            message_id: "m".into(),
            text: text.into(),
            extra: Map::new(),
        }),
    );
    env.run_id = Some(run_id.to_string());
    env
}

/// The texts of the forwarded MESSAGE_PARTs, in the order of their numbers: the order the
/// node that drives the session applies them in.
fn forwarded_texts(write: Option<PendingWrite>) -> Vec<String> {
    let Some(PendingWrite::Forward(items)) = write else {
        panic!("expected forwarded output, got {write:?}");
    };
    let mut numbered: Vec<(u64, String)> = items
        .into_iter()
        .filter_map(|(_, item)| match item {
            Forwarded::Output { json, n } => match Envelope::parse(&json).ok()?.payload {
                Payload::MessagePart(p) => Some((n, p.text)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    numbered.sort();
    numbered.into_iter().map(|(_, text)| text).collect()
}

/// An agent goes on answering while a write is under way and another node takes the
/// session: what it says then is forwarded after the unsent output the hand-over sends,
/// never before it (it used to get the next number at once and overtake that output).
#[test]
fn output_made_while_the_hand_over_waits_for_a_write_goes_after_it() {
    let mut core = SessionCore::new(
        "s1".into(),
        "alice".into(),
        Arc::new(SessionLimits::default()),
        false,
        0,
    );
    core.keep_in_store(Arc::new(UnreachedStore), 1);
    core.attach(Arc::new(ConnQueue::default()), None, false, 0)
        .unwrap();
    // A run whose start the store has.
    let (run_id, _cancel) = core.open_run(None, 0).unwrap();
    let mut start = core.envelope(
        channel::AGENT,
        Payload::MessageStart(MessageStart {
            message_id: "m".into(),
            author: None,
            text: None,
            extra: Map::new(),
        }),
    );
    start.run_id = Some(run_id.clone());
    core.emit(start, 0);
    assert!(matches!(core.take_write(), Some(PendingWrite::Keep(_))));
    let stored = core.last_sent_seq();
    core.written(WriteOutcome::Stored { upto: stored }, 0);
    // Two parts sent and in a write under way when another node takes the session.
    for text in ["one ", "two "] {
        let env = part(&core, &run_id, text);
        core.emit(env, 0);
    }
    assert!(matches!(core.take_write(), Some(PendingWrite::Keep(_))));
    core.now_driven_elsewhere();
    // The agent goes on before the write's answer comes.
    for text in ["three ", "four"] {
        let env = part(&core, &run_id, text);
        core.emit(env, 0);
    }
    // The write came too late: the other node has none of it.
    core.written(WriteOutcome::Moved, 0);
    assert_eq!(
        forwarded_texts(core.take_write()),
        ["one ", "two ", "three ", "four"]
    );
}
