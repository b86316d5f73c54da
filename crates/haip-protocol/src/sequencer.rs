//! In-order delivery of a peer's messages (contract section 5).
//!
//! The first seq seen sets the baseline. After that, messages are delivered strictly in seq
//! order: an old seq is a duplicate and is dropped; a seq beyond the next expected one opens a
//! gap, and the later messages are held (up to a bound in count and in bytes) until the
//! gap fills. When a gap has
//! stayed open for the gap timeout (500 ms), [`Sequencer::poll_gap`] says which range to ask
//! for with REPLAY_REQUEST, and repeats the request every timeout while the gap stays open.

use std::collections::BTreeMap;

/// How long a gap may stay open before a REPLAY_REQUEST is sent.
pub const GAP_TIMEOUT_MS: u64 = 500;

/// What became of one arriving message.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// These messages are now next in order: process them, in this order. The arriving
    /// message comes first, followed by any held messages it unblocked.
    Deliver(Vec<T>),
    /// Already processed or already held: drop it silently.
    Duplicate,
    /// Beyond a gap: kept until the gap fills.
    Held,
    /// Beyond a gap, but the hold buffer is full (in count or in bytes): refused (the
    /// message is handed back).
    Overflow(T),
}

/// The range a REPLAY_REQUEST should ask for (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    pub from_seq: u64,
    pub to_seq: u64,
}

/// Orders one peer's messages of one session.
#[derive(Debug)]
pub struct Sequencer<T> {
    /// The next seq expected; u128 so that u64::MAX itself can be delivered and passed.
    next: Option<u128>,
    last_delivered: Option<u64>,
    /// Each held message with its size.
    held: BTreeMap<u64, (T, u64)>,
    capacity: usize,
    held_bytes: u64,
    max_bytes: u64,
    gap_opened_ms: Option<u64>,
    last_request_ms: Option<u64>,
}

impl<T> Sequencer<T> {
    /// `capacity` bounds how many out-of-order messages are held.
    pub fn new(capacity: usize) -> Sequencer<T> {
        Sequencer::with_byte_bound(capacity, u64::MAX)
    }

    /// `capacity` bounds how many out-of-order messages are held, `max_bytes` the sum of
    /// their sizes as given to [`accept_sized`](Self::accept_sized).
    pub fn with_byte_bound(capacity: usize, max_bytes: u64) -> Sequencer<T> {
        Sequencer {
            next: None,
            last_delivered: None,
            held: BTreeMap::new(),
            capacity,
            held_bytes: 0,
            max_bytes,
            gap_opened_ms: None,
            last_request_ms: None,
        }
    }

    /// Continues after `last`, delivered before (by another node that served the session):
    /// the next message expected is `last + 1`. Only before anything arrived or is held.
    pub fn start_after(&mut self, last: u64) -> bool {
        if !self.held.is_empty() {
            return false;
        }
        self.next = Some(u128::from(last) + 1);
        self.last_delivered = Some(last);
        true
    }

    /// The highest seq delivered in order so far: the value of `ack`.
    pub fn last_delivered(&self) -> Option<u64> {
        self.last_delivered
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The sizes of the held messages, summed.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Accepts the message numbered `seq`, arriving at `now_ms`.
    pub fn accept(&mut self, seq: u64, item: T, now_ms: u64) -> Arrival<T> {
        self.accept_sized(seq, item, 0, now_ms)
    }

    /// Accepts the message numbered `seq`, of `size` bytes, arriving at `now_ms`.
    pub fn accept_sized(&mut self, seq: u64, item: T, size: u64, now_ms: u64) -> Arrival<T> {
        let next = *self.next.get_or_insert(u128::from(seq));
        if u128::from(seq) < next || self.held.contains_key(&seq) {
            return Arrival::Duplicate;
        }
        if u128::from(seq) > next {
            if self.held.len() >= self.capacity
                || self.held_bytes.saturating_add(size) > self.max_bytes
            {
                return Arrival::Overflow(item);
            }
            self.held.insert(seq, (item, size));
            self.held_bytes += size;
            self.gap_opened_ms.get_or_insert(now_ms);
            return Arrival::Held;
        }
        let mut out = vec![item];
        let mut last = seq;
        while let Some((held, size)) = last.checked_add(1).and_then(|n| self.held.remove(&n)) {
            self.held_bytes -= size;
            out.push(held);
            last += 1;
        }
        self.next = Some(u128::from(last) + 1);
        self.last_delivered = Some(last);
        if self.held.is_empty() {
            self.gap_opened_ms = None;
            self.last_request_ms = None;
        } else {
            // A new gap starts behind what was just delivered.
            self.gap_opened_ms = Some(now_ms);
            self.last_request_ms = None;
        }
        Arrival::Deliver(out)
    }

    /// When a gap has been open for [`GAP_TIMEOUT_MS`] (and no request went out in the last
    /// timeout), returns the range to request and records that it was requested.
    pub fn poll_gap(&mut self, now_ms: u64) -> Option<Missing> {
        let opened = self.gap_opened_ms?;
        let since = self.last_request_ms.unwrap_or(opened);
        if now_ms < since.saturating_add(GAP_TIMEOUT_MS) {
            return None;
        }
        let from_seq = u64::try_from(self.next?).ok()?;
        let first_held = *self.held.keys().next()?;
        self.last_request_ms = Some(now_ms);
        Some(Missing {
            from_seq,
            to_seq: first_held - 1,
        })
    }

    /// When [`poll_gap`](Self::poll_gap) should next be called, if a gap is open.
    pub fn next_deadline(&self) -> Option<u64> {
        let opened = self.gap_opened_ms?;
        Some(
            self.last_request_ms
                .unwrap_or(opened)
                .saturating_add(GAP_TIMEOUT_MS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(a: Arrival<u64>) -> Vec<u64> {
        match a {
            Arrival::Deliver(v) => v,
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn a_sequencer_started_after_a_seq_continues_from_it() {
        let mut s = Sequencer::new(10);
        assert!(s.start_after(7));
        assert_eq!(s.last_delivered(), Some(7));
        assert_eq!(
            s.accept(7, 7, 0),
            Arrival::Duplicate,
            "already processed elsewhere"
        );
        assert_eq!(s.accept(9, 9, 0), Arrival::Held);
        assert!(!s.start_after(3), "refused while something is held");
        assert_eq!(delivered(s.accept(8, 8, 0)), vec![8, 9]);
    }

    #[test]
    fn the_hold_buffer_is_bounded_in_bytes_too() {
        let mut s: Sequencer<u64> = Sequencer::with_byte_bound(10, 100);
        delivered(s.accept_sized(1, 1, 500, 0)); // delivered at once: never held
        assert_eq!(s.accept_sized(3, 3, 60, 0), Arrival::Held);
        assert_eq!(s.accept_sized(4, 4, 50, 0), Arrival::Overflow(4));
        assert_eq!(s.accept_sized(5, 5, 40, 0), Arrival::Held);
        assert_eq!(s.held_bytes(), 100);
        assert_eq!(delivered(s.accept_sized(2, 2, 1, 0)), vec![2, 3]);
        assert_eq!(s.held_bytes(), 40);
        assert_eq!(s.accept_sized(4, 4, 50, 0), Arrival::Deliver(vec![4, 5]));
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn in_order_messages_are_delivered_at_once() {
        let mut s = Sequencer::new(10);
        assert_eq!(s.last_delivered(), None);
        for seq in 1..=5 {
            assert_eq!(delivered(s.accept(seq, seq, 0)), vec![seq]);
        }
        assert_eq!(s.last_delivered(), Some(5));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn first_seq_sets_the_baseline_even_at_zero() {
        let mut s = Sequencer::new(10);
        assert_eq!(delivered(s.accept(0, 0, 0)), vec![0]);
        assert_eq!(s.last_delivered(), Some(0));
        assert_eq!(delivered(s.accept(1, 1, 0)), vec![1]);
        let mut s = Sequencer::new(10);
        assert_eq!(delivered(s.accept(7, 7, 0)), vec![7]);
        assert_eq!(s.accept(6, 6, 0), Arrival::Duplicate);
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut s = Sequencer::new(10);
        delivered(s.accept(1, 1, 0));
        delivered(s.accept(2, 2, 0));
        assert_eq!(s.accept(2, 2, 0), Arrival::Duplicate);
        assert_eq!(s.accept(1, 1, 0), Arrival::Duplicate);
        assert_eq!(s.accept(4, 4, 0), Arrival::Held);
        assert_eq!(s.accept(4, 4, 0), Arrival::Duplicate);
    }

    #[test]
    fn a_gap_holds_later_messages_until_it_fills() {
        let mut s = Sequencer::new(10);
        delivered(s.accept(1, 1, 0));
        assert_eq!(s.accept(3, 3, 10), Arrival::Held);
        assert_eq!(s.accept(4, 4, 20), Arrival::Held);
        assert_eq!(s.held_len(), 2);
        assert_eq!(s.last_delivered(), Some(1));
        assert_eq!(delivered(s.accept(2, 2, 30)), vec![2, 3, 4]);
        assert_eq!(s.last_delivered(), Some(4));
        assert_eq!(s.held_len(), 0);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn gap_deadline_yields_a_replay_request_then_repeats() {
        let mut s = Sequencer::new(10);
        delivered(s.accept(1, 1, 1000));
        assert_eq!(s.accept(4, 4, 1100), Arrival::Held);
        assert_eq!(s.next_deadline(), Some(1600));
        assert_eq!(s.poll_gap(1599), None);
        assert_eq!(
            s.poll_gap(1600),
            Some(Missing {
                from_seq: 2,
                to_seq: 3
            })
        );
        assert_eq!(s.poll_gap(1700), None);
        assert_eq!(s.next_deadline(), Some(2100));
        assert!(s.poll_gap(2100).is_some());
    }

    #[test]
    fn filling_part_of_a_gap_restarts_the_deadline_for_the_rest() {
        let mut s = Sequencer::new(10);
        delivered(s.accept(1, 1, 0));
        s.accept(3, 3, 0);
        s.accept(5, 5, 0);
        assert_eq!(delivered(s.accept(2, 2, 400)), vec![2, 3]);
        assert_eq!(s.poll_gap(500), None);
        assert_eq!(
            s.poll_gap(900),
            Some(Missing {
                from_seq: 4,
                to_seq: 4
            })
        );
    }

    #[test]
    fn hold_buffer_is_bounded() {
        let mut s = Sequencer::new(2);
        delivered(s.accept(1, 1, 0));
        assert_eq!(s.accept(3, 3, 0), Arrival::Held);
        assert_eq!(s.accept(4, 4, 0), Arrival::Held);
        assert_eq!(s.accept(5, 5, 0), Arrival::Overflow(5));
        // The next expected message still gets through and unblocks the held ones.
        assert_eq!(delivered(s.accept(2, 2, 0)), vec![2, 3, 4]);
        assert_eq!(delivered(s.accept(5, 5, 0)), vec![5]);
    }
}
