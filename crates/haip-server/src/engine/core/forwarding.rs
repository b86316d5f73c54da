//! Output that one node produces for a session another node drives (cluster mode), kept
//! in order across every change of the node that drives it.
//!
//! Each node numbers what it forwards for a session 1, 2, 3... The node that drives the
//! session applies each producer's items in that order: an item already applied is
//! dropped, an item after a gap waits for the missing ones (at most [`GAP_WAIT_MS`]). The
//! numbers applied are stored with the session, so the next driver goes on from them.
//!
//! An item can be in flight when the session moves: the driver that took it but could not
//! store it forwards it again under its producer's name and number; the producer keeps
//! its items until the driver says they are applied, and if the session comes back to
//! it, sends them itself, before anything newer. So nothing is lost, nothing is applied
//! twice, and one producer's items are sent to the client in the order it made them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::engine::store::Forwarded;

/// How long items after a gap wait for the missing ones before they go without them (an
/// item lost with a Redis that was restarted without its data).
pub const GAP_WAIT_MS: u64 = 5_000;
/// The most items of one producer kept: waiting after a gap, or sent and not known to
/// be applied.
pub const MAX_KEPT: usize = 10_000;

/// An item ready to be sent to the client, with who produced it and its number.
pub type Ready = (String, u64, String);

/// The node run a producer belongs to.
pub fn node_of(producer: &str) -> &str {
    producer.split_once('#').map_or(producer, |(node, _)| node)
}

#[derive(Debug)]
pub struct Forwarding {
    /// This producer: the node run and a nonce of this copy of the session (a node that
    /// drops its copy and makes a new one numbers from 1 again, under a new name).
    me: Arc<str>,
    /// This node's next number.
    next: u64,
    /// This node's items sent and not known to be applied.
    unapplied: VecDeque<(u64, String)>,
    /// Items to send to the driving node: (producer, item).
    outbox: Vec<(String, Forwarded)>,
    /// Per producer, the last number applied to the session.
    applied: HashMap<String, u64>,
    applied_changed: bool,
    /// The numbers in the write under way, and the last ones stored.
    in_write: Option<HashMap<String, u64>>,
    stored: HashMap<String, u64>,
    /// Per producer, the last number it was told is applied.
    told: HashMap<String, u64>,
    /// Per producer, items after a gap and since when the gap is open.
    waiting: HashMap<String, (u64, BTreeMap<u64, String>)>,
}

impl Forwarding {
    pub fn new(node: &str) -> Forwarding {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        Forwarding {
            me: Arc::from(format!("{node}#{}", &nonce[..8])),
            next: 1,
            unapplied: VecDeque::new(),
            outbox: Vec::new(),
            applied: HashMap::new(),
            applied_changed: false,
            in_write: None,
            stored: HashMap::new(),
            told: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// This producer's name.
    pub fn producer(&self) -> &str {
        &self.me
    }

    // --- this node as a producer ---------------------------------------------------------

    /// Output made here for a session another node drives.
    pub fn produce(&mut self, json: String) {
        let n = self.next;
        self.next += 1;
        if self.unapplied.len() == MAX_KEPT {
            self.unapplied.pop_front();
        }
        self.unapplied.push_back((n, json.clone()));
        self.outbox
            .push((self.me.to_string(), Forwarded::Output { json, n }));
    }

    /// An item of another producer that this node took but could not store: on to the
    /// node that drives the session now, under its producer's name and number.
    pub fn hand_on(&mut self, from: String, n: u64, json: String) {
        if *from == *self.me {
            // This node's own item, applied here but not stored: kept again until a
            // driver says it is applied, in its place among the others.
            let at = self.unapplied.partition_point(|(m, _)| *m < n);
            if self.unapplied.get(at).is_none_or(|(m, _)| *m != n) {
                self.unapplied.insert(at, (n, json.clone()));
            }
        }
        self.outbox.push((from, Forwarded::Output { json, n }));
    }

    /// A client message that reached this node for a session another node drives: that
    /// node processes it (its sequencer drops what it processed already).
    pub fn pass_inbound(&mut self, json: String, cost: u64) {
        self.outbox
            .push((self.me.to_string(), Forwarded::Inbound { json, cost }));
    }

    /// Items that could not be sent, back at the front of the outbox.
    pub fn send_again(&mut self, items: Vec<(String, Forwarded)>) {
        self.outbox.splice(0..0, items);
    }

    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    pub fn take_outbox(&mut self) -> Vec<(String, Forwarded)> {
        std::mem::take(&mut self.outbox)
    }

    /// The driving node applied this node's items up to `upto`.
    pub fn acknowledged(&mut self, upto: u64) {
        while self.unapplied.front().is_some_and(|(n, _)| *n <= upto) {
            self.unapplied.pop_front();
        }
    }

    // --- this node as the driver ---------------------------------------------------------

    /// This node drives the session again, which had `applied` recorded: returns this
    /// node's own items not applied yet (to send now, before anything newer, in order),
    /// then the other producers' items it was handing on (to apply as if they arrived).
    pub fn take_over(
        &mut self,
        applied: HashMap<String, u64>,
        now_ms: u64,
    ) -> (Vec<(u64, String)>, Vec<Ready>) {
        self.applied = applied;
        self.told = self.applied.clone();
        self.stored = self.applied.clone();
        self.in_write = None;
        let waiting = self.take_waiting();
        let mine_applied = self.applied.get(&*self.me).copied().unwrap_or(0);
        let mine: Vec<(u64, String)> = self
            .unapplied
            .drain(..)
            .filter(|(n, _)| *n > mine_applied)
            .collect();
        if let Some((last, _)) = mine.last() {
            self.applied.insert(self.me.to_string(), *last);
            self.applied_changed = true;
        }
        let mut others = Vec::new();
        for (from, n, json) in waiting {
            others.extend(self.arrive(from, n, json, now_ms));
        }
        for (from, item) in std::mem::take(&mut self.outbox) {
            if let Forwarded::Output { json, n } = item {
                if *from != *self.me {
                    others.extend(self.arrive(from, n, json, now_ms));
                }
            }
        }
        (mine, others)
    }

    /// An item forwarded to this (driving) node: returns what can be sent now, in order.
    pub fn arrive(&mut self, from: String, n: u64, json: String, now_ms: u64) -> Vec<Ready> {
        let last = self.applied.get(&from).copied().unwrap_or(0);
        if n <= last {
            return Vec::new(); // applied already
        }
        if n > last + 1 {
            let (_, items) = self
                .waiting
                .entry(from)
                .or_insert_with(|| (now_ms, BTreeMap::new()));
            if items.len() < MAX_KEPT {
                items.insert(n, json);
            }
            return Vec::new();
        }
        let mut ready = vec![(from.clone(), n, json)];
        let mut last = n;
        if let Some((since, items)) = self.waiting.get_mut(&from) {
            while let Some(json) = items.remove(&(last + 1)) {
                last += 1;
                ready.push((from.clone(), last, json));
            }
            *since = now_ms;
            if items.is_empty() {
                self.waiting.remove(&from);
            }
        }
        self.applied.insert(from, last);
        self.applied_changed = true;
        ready
    }

    /// Items that waited past [`GAP_WAIT_MS`] for missing ones: sent without them.
    pub fn overdue(&mut self, now_ms: u64) -> Vec<Ready> {
        let overdue: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, (since, _))| now_ms.saturating_sub(*since) >= GAP_WAIT_MS)
            .map(|(from, _)| from.clone())
            .collect();
        let mut ready = Vec::new();
        for from in overdue {
            if let Some((_, items)) = self.waiting.remove(&from) {
                tracing::warn!(producer = %from, items = items.len(), "forwarded output sent after a gap that never filled");
                if let Some((&last, _)) = items.last_key_value() {
                    self.applied.insert(from.clone(), last);
                    self.applied_changed = true;
                }
                ready.extend(items.into_iter().map(|(n, json)| (from.clone(), n, json)));
            }
        }
        ready
    }

    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The numbers applied, when they changed since the last call (to store them).
    pub fn applied_to_store(&mut self) -> Option<HashMap<String, u64>> {
        if !std::mem::take(&mut self.applied_changed) {
            return None;
        }
        self.in_write = Some(self.applied.clone());
        self.in_write.clone()
    }

    /// The write under way was stored: returns the producers to tell how far their items
    /// are applied (other nodes whose stored number moved since they were last told).
    pub fn stored(&mut self) -> Vec<(String, u64)> {
        if let Some(written) = self.in_write.take() {
            self.stored = written;
        }
        let mut out = Vec::new();
        for (from, &n) in &self.stored {
            if *from != *self.me && self.told.get(from) != Some(&n) {
                out.push((from.clone(), n));
            }
        }
        for (from, n) in &out {
            self.told.insert(from.clone(), *n);
        }
        out
    }

    /// Items that wait after a gap, in order: handed on when the session moves away.
    pub fn take_waiting(&mut self) -> Vec<Ready> {
        let mut out = Vec::new();
        for (from, (_, items)) in self.waiting.drain() {
            out.extend(items.into_iter().map(|(n, json)| (from.clone(), n, json)));
        }
        out
    }

    pub fn applied_changed(&self) -> bool {
        self.applied_changed
    }

    /// Marks the numbers as not stored yet (a write failed).
    pub fn store_again(&mut self) {
        self.in_write = None;
        self.applied_changed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Forwarding {
        Forwarding::new(name)
    }

    fn numbers(items: &[(String, Forwarded)]) -> Vec<u64> {
        items
            .iter()
            .map(|(_, item)| match item {
                Forwarded::Output { n, .. } => *n,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_producer_numbers_its_items_and_keeps_them_until_applied() {
        let mut a = node("a");
        assert_eq!(node_of(a.producer()), "a");
        a.produce("1".into());
        a.produce("2".into());
        a.produce("3".into());
        assert_eq!(numbers(&a.take_outbox()), [1, 2, 3]);
        a.acknowledged(2);
        let me = a.producer().to_string();
        let (mine, _) = a.take_over(HashMap::from([(me, 2)]), 0);
        assert_eq!(
            mine,
            [(3, "3".to_string())],
            "only what was not applied comes back"
        );
    }

    #[test]
    fn the_driver_applies_each_producers_items_once_in_order() {
        let mut b = node("b");
        assert_eq!(b.arrive("a".into(), 1, "x1".into(), 0).len(), 1);
        assert!(
            b.arrive("a".into(), 3, "x3".into(), 0).is_empty(),
            "waits for 2"
        );
        assert!(
            b.arrive("a".into(), 1, "x1".into(), 0).is_empty(),
            "1 is applied"
        );
        let ready = b.arrive("a".into(), 2, "x2".into(), 0);
        let order: Vec<u64> = ready.iter().map(|(_, n, _)| *n).collect();
        assert_eq!(order, [2, 3]);
        assert_eq!(
            b.applied_to_store(),
            Some(HashMap::from([("a".to_string(), 3)]))
        );
        assert_eq!(b.stored(), [("a".to_string(), 3)]);
        assert!(b.stored().is_empty(), "told once");
    }

    #[test]
    fn a_producer_is_told_only_what_a_stored_write_carried() {
        let mut b = node("b");
        b.arrive("a".into(), 1, "x1".into(), 0);
        let in_write = b.applied_to_store();
        assert_eq!(in_write, Some(HashMap::from([("a".to_string(), 1)])));
        // Applied after the write was taken: not stored by it.
        b.arrive("a".into(), 2, "x2".into(), 0);
        assert_eq!(b.stored(), [("a".to_string(), 1)]);
    }

    #[test]
    fn items_after_a_gap_that_never_fills_go_after_a_while() {
        let mut b = node("b");
        assert!(b.arrive("a".into(), 4, "x4".into(), 100).is_empty());
        assert!(b.overdue(100 + GAP_WAIT_MS - 1).is_empty());
        let ready = b.overdue(100 + GAP_WAIT_MS);
        assert_eq!(ready, [("a".to_string(), 4, "x4".to_string())]);
        assert!(
            b.arrive("a".into(), 3, "x3".into(), 0).is_empty(),
            "too late"
        );
    }

    #[test]
    fn a_session_that_comes_back_sends_its_own_items_first_and_drops_their_copies() {
        // a produces 1..3 while b drives; b applied 1 and stored it, then a took the
        // session back: 2 and 3 are a's to send, before anything newer.
        let mut a = node("a");
        for i in 1..=3 {
            a.produce(format!("x{i}"));
        }
        a.take_outbox();
        let me = a.producer().to_string();
        let (mine, others) = a.take_over(HashMap::from([(me.clone(), 1)]), 0);
        assert_eq!(mine, [(2, "x2".to_string()), (3, "x3".to_string())]);
        assert!(others.is_empty());
        // b handed 2 on (it could not store it): a copy, dropped.
        assert!(a.arrive(me, 2, "x2".into(), 0).is_empty());
    }

    #[test]
    fn own_items_sent_again_and_lost_again_are_kept_until_applied() {
        let mut a = node("a");
        for i in 1..=3 {
            a.produce(format!("x{i}"));
        }
        a.take_outbox();
        let me = a.producer().to_string();
        // a drives again and sends its items itself; the store never gets them.
        let (mine, _) = a.take_over(HashMap::new(), 0);
        assert_eq!(mine.len(), 3);
        for (n, json) in mine {
            a.hand_on(me.clone(), n, json);
        }
        a.produce("x4".into());
        // a drives once more: everything not applied comes back, in order.
        let (mine, _) = a.take_over(HashMap::new(), 0);
        let numbers: Vec<u64> = mine.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3, 4]);
    }

    #[test]
    fn a_new_copy_of_a_session_numbers_under_a_name_of_its_own() {
        let first = node("a");
        let second = node("a");
        assert_ne!(first.producer(), second.producer());
        assert_eq!(node_of(first.producer()), node_of(second.producer()));
    }

    #[test]
    fn items_of_other_producers_being_handed_on_are_applied_by_a_driver_that_comes_back() {
        let mut b = node("b");
        b.hand_on("a".into(), 1, "x1".into());
        let (mine, others) = b.take_over(HashMap::new(), 0);
        assert!(mine.is_empty());
        assert_eq!(others, [("a".to_string(), 1, "x1".to_string())]);
    }
}
