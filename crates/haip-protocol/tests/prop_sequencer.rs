//! Property tests for `haip_protocol::sequencer` (wire contract section 5: in-order delivery,
//! duplicates dropped, gaps held and asked for with REPLAY_REQUEST after 500 ms).

use std::collections::BTreeSet;

use haip_protocol::sequencer::{Arrival, Missing, Sequencer, GAP_TIMEOUT_MS};
use proptest::prelude::*;

/// Deterministic Fisher-Yates shuffle driven by a proptest-chosen seed (so shrinking works).
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        // xorshift64*
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Seqs 1..=n in an order that starts with 1 (the first seq seen is the baseline, contract
/// section 5, so a session starts with its first message) followed by a permutation of
/// 2..=n, with duplicates of arbitrary seqs inserted at arbitrary places.
fn arrivals(max_n: u64) -> impl Strategy<Value = (u64, Vec<u64>)> {
    (1..=max_n)
        .prop_flat_map(|n| {
            let rest: Vec<u64> = (2..=n).collect();
            (
                Just(n),
                Just(rest).prop_shuffle(),
                prop::collection::vec((1..=n, any::<prop::sample::Index>()), 0..(n as usize)),
            )
        })
        .prop_map(|(n, rest, dups)| {
            let mut order = vec![1];
            order.extend(rest);
            for (seq, at) in dups {
                // Never before the baseline message.
                let pos = 1 + at.index(order.len());
                order.insert(pos, seq);
            }
            (n, order)
        })
}

/// Checks that a delivery continues the in-order stream exactly and records it.
fn record_delivery(delivered: &mut Vec<u64>, batch: &[u64]) -> Result<(), TestCaseError> {
    prop_assert!(!batch.is_empty(), "empty delivery");
    for &seq in batch {
        let expected = delivered.last().map_or(1, |last| last + 1);
        prop_assert_eq!(
            seq,
            expected,
            "out of order or repeated delivery; delivered so far {:?}, batch {:?}",
            delivered,
            batch
        );
        delivered.push(seq);
    }
    Ok(())
}

/// 256 cases per property; no regression files are written next to the sources.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    }
}

proptest! {
    #![proptest_config(config())]

    /// Rule: messages are processed strictly in seq order, each exactly once; a seq already
    /// processed or already held is a duplicate and dropped; `ack` (last_delivered) is the
    /// highest seq processed in order. With room to hold everything, nothing overflows.
    #[test]
    fn any_permutation_with_duplicates_delivers_each_once_in_order(
        (n, order) in arrivals(40),
        extra_capacity in 0usize..4,
    ) {
        let mut s = Sequencer::new(n as usize + extra_capacity);
        let mut delivered = Vec::new();
        let mut seen = BTreeSet::new();
        for (t, &seq) in order.iter().enumerate() {
            let first_time = seen.insert(seq);
            match s.accept(seq, seq, t as u64) {
                Arrival::Deliver(batch) => {
                    prop_assert!(first_time, "seq {} delivered on a repeat", seq);
                    prop_assert_eq!(batch[0], seq, "the arriving message must come first");
                    record_delivery(&mut delivered, &batch)?;
                }
                Arrival::Held => prop_assert!(first_time, "seq {} held on a repeat", seq),
                Arrival::Duplicate => {
                    prop_assert!(!first_time, "first arrival of {} taken for a duplicate", seq)
                }
                Arrival::Overflow(item) => {
                    prop_assert!(false, "overflow of {} with capacity >= n", item)
                }
            }
            prop_assert_eq!(s.last_delivered(), delivered.last().copied());
        }
        prop_assert_eq!(delivered, (1..=n).collect::<Vec<_>>());
        prop_assert_eq!(s.last_delivered(), Some(n));
        prop_assert_eq!(s.held_len(), 0);
        prop_assert_eq!(s.next_deadline(), None);
    }

    /// Rule: the hold buffer is bounded, yet ordering is never compromised: nothing is
    /// delivered out of order or twice, an overflowed message is handed back untouched, and
    /// a sender that re-sends what overflowed (in any order) eventually gets everything
    /// delivered exactly once, in order.
    #[test]
    fn small_capacity_never_breaks_order_and_resends_complete_the_stream(
        (n, order) in arrivals(40),
        capacity in 0usize..4,
        resend_seed in any::<u64>(),
    ) {
        let mut s: Sequencer<(u64, usize)> = Sequencer::new(capacity);
        let mut delivered = Vec::new();
        // Each send carries a unique tag so "the same item" can be checked.
        let mut tag = 0usize;
        let mut pending: Vec<u64> = Vec::new();
        let mut now = 0u64;
        let mut send = |s: &mut Sequencer<(u64, usize)>,
                        seq: u64,
                        delivered: &mut Vec<u64>,
                        pending: &mut Vec<u64>|
         -> Result<(), TestCaseError> {
            tag += 1;
            now += 1;
            match s.accept(seq, (seq, tag), now) {
                Arrival::Deliver(batch) => {
                    prop_assert_eq!(batch[0], (seq, tag));
                    let seqs: Vec<u64> = batch.iter().map(|&(q, _)| q).collect();
                    record_delivery(delivered, &seqs)?;
                }
                Arrival::Overflow(item) => {
                    prop_assert_eq!(item, (seq, tag), "overflow must hand back the same item");
                    prop_assert!(
                        delivered.last().is_some_and(|&last| seq > last + 1),
                        "the next expected seq {} overflowed",
                        seq
                    );
                    pending.push(seq);
                }
                Arrival::Held | Arrival::Duplicate => {}
            }
            prop_assert!(s.held_len() <= capacity, "held {} > capacity {}", s.held_len(), capacity);
            prop_assert_eq!(s.last_delivered(), delivered.last().copied());
            Ok(())
        };
        for &seq in &order {
            send(&mut s, seq, &mut delivered, &mut pending)?;
        }
        // Re-send what overflowed, in a fresh arbitrary order each round, until nothing
        // overflows any more. Every round delivers at least the next expected seq, so n
        // rounds are always enough.
        let mut round = 0u64;
        while !pending.is_empty() {
            round += 1;
            prop_assert!(round <= n + 1, "re-sending made no progress: pending {:?}", pending);
            let mut batch = std::mem::take(&mut pending);
            shuffle(&mut batch, (resend_seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            for seq in batch {
                send(&mut s, seq, &mut delivered, &mut pending)?;
            }
        }
        prop_assert_eq!(delivered, (1..=n).collect::<Vec<_>>());
        prop_assert_eq!(s.last_delivered(), Some(n));
        prop_assert_eq!(s.held_len(), 0);
    }

    /// Rule: a gap is only asked for after it has been open GAP_TIMEOUT_MS (500 ms), and then
    /// again at most once per timeout; the REPLAY_REQUEST range starts at the first missing
    /// seq (last_delivered + 1) and covers only seqs neither delivered nor held. Nothing is
    /// asked for while nothing is held. (Also checked: once due, the request does go out.)
    #[test]
    fn poll_gap_asks_only_for_missing_seqs_and_only_after_the_timeout(
        (n, order) in arrivals(30),
        steps in prop::collection::vec((0u64..400, any::<bool>()), 1..80),
    ) {
        let mut s = Sequencer::new(n as usize);
        let mut now = 1_000u64;
        let mut delivered: BTreeSet<u64> = BTreeSet::new();
        let mut held: BTreeSet<u64> = BTreeSet::new();
        let mut last_delivered: Option<u64> = None;
        // Model of the gap timer: when the current gap opened and when it was last asked for.
        let mut gap_opened: Option<u64> = None;
        let mut last_request: Option<u64> = None;
        let mut arrivals_left = order.into_iter();
        for (advance, deliver_one) in steps {
            now += advance;
            if deliver_one {
                if let Some(seq) = arrivals_left.next() {
                    match s.accept(seq, seq, now) {
                        Arrival::Deliver(batch) => {
                            for q in batch {
                                held.remove(&q);
                                prop_assert!(delivered.insert(q));
                                last_delivered = Some(q);
                            }
                            // A gap still open behind this delivery is a new gap.
                            gap_opened = if held.is_empty() { None } else { Some(now) };
                            last_request = None;
                        }
                        Arrival::Held => {
                            if held.is_empty() {
                                gap_opened = Some(now);
                            }
                            held.insert(seq);
                        }
                        Arrival::Duplicate => {}
                        Arrival::Overflow(_) => prop_assert!(false, "overflow with capacity n"),
                    }
                }
            }
            let deadline = last_request.or(gap_opened).map(|t| t + GAP_TIMEOUT_MS);
            prop_assert_eq!(s.next_deadline(), deadline);
            match s.poll_gap(now) {
                Some(Missing { from_seq, to_seq }) => {
                    prop_assert!(!held.is_empty(), "request while nothing is held");
                    let opened = gap_opened.expect("held implies an open gap");
                    prop_assert!(now >= opened + GAP_TIMEOUT_MS, "request before the timeout");
                    if let Some(prev) = last_request {
                        prop_assert!(now >= prev + GAP_TIMEOUT_MS, "repeat within the timeout");
                    }
                    let expected_from = last_delivered.expect("a gap needs a baseline") + 1;
                    prop_assert_eq!(from_seq, expected_from);
                    prop_assert!(from_seq <= to_seq, "empty range {}..={}", from_seq, to_seq);
                    for q in from_seq..=to_seq {
                        prop_assert!(!delivered.contains(&q), "asks for delivered seq {}", q);
                        prop_assert!(!held.contains(&q), "asks for held seq {}", q);
                    }
                    last_request = Some(now);
                }
                None => {
                    // Liveness: a gap open for the timeout is asked for.
                    prop_assert!(
                        deadline.is_none_or(|d| now < d),
                        "no request at {} although due at {:?}",
                        now,
                        deadline
                    );
                }
            }
        }
    }

    /// Rule (contract section 5): a seq <= the last processed is a duplicate, whatever the
    /// baseline the client picked — including baselines near the top of the u64 range.
    #[test]
    fn a_delivered_seq_is_never_delivered_again_for_any_baseline(
        base in prop_oneof![any::<u64>(), (u64::MAX - 8)..=u64::MAX],
        count in 1u64..8,
    ) {
        let mut s = Sequencer::new(16);
        let last = base.saturating_add(count - 1);
        for seq in base..=last {
            prop_assert_eq!(s.accept(seq, seq, 0), Arrival::Deliver(vec![seq]));
            prop_assert_eq!(s.last_delivered(), Some(seq));
        }
        for seq in base..=last {
            prop_assert_eq!(s.accept(seq, seq, 0), Arrival::Duplicate);
        }
    }
}
