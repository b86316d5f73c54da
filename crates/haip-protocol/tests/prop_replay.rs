//! Property tests for `haip_protocol::replay` (wire contract sections 3 and 5: the replay
//! window behind REPLAY_REQUEST and resume; nothing is ever replayed partially).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use haip_protocol::replay::{ReplayConfig, ReplayError, ReplayWindow};
use proptest::prelude::*;

/// 256 cases per property; no regression files are written next to the sources.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    }
}

/// A stored message that reports its own drop, so evictions are observed independently of
/// the window's own bookkeeping (`oldest_seq`, `len`, `bytes`).
struct Tracked {
    seq: u64,
    dropped: Rc<RefCell<BTreeSet<u64>>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped.borrow_mut().insert(self.seq);
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Send the next message: `bytes` long, `advance` ms after the previous step.
    Push { bytes: u64, advance: u64 },
    /// Run eviction `advance` ms after the previous step.
    Evict { advance: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..60, 0u64..40).prop_map(|(bytes, advance)| Op::Push { bytes, advance }),
        1 => (0u64..200).prop_map(|advance| Op::Evict { advance }),
    ]
}

fn replay_config() -> impl Strategy<Value = ReplayConfig> {
    (0usize..12, 0u64..150, 0usize..25, 0u64..400).prop_map(
        |(keep_newest, keep_for_ms, max_messages, max_bytes)| ReplayConfig {
            keep_newest,
            keep_for_ms,
            max_messages,
            max_bytes,
        },
    )
}

/// The test's view of a window: what was sent, and which seqs have been dropped.
struct Model {
    window: ReplayWindow<Tracked>,
    dropped: Rc<RefCell<BTreeSet<u64>>>,
    /// (sent_ms, bytes) of seq i + 1.
    sent: Vec<(u64, u64)>,
    now: u64,
}

impl Model {
    fn new(config: ReplayConfig) -> Model {
        Model {
            window: ReplayWindow::new(config),
            dropped: Rc::default(),
            sent: Vec::new(),
            now: 0,
        }
    }

    fn last(&self) -> u64 {
        self.sent.len() as u64
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Push { bytes, advance } => {
                self.now += advance;
                let seq = self.last() + 1;
                self.sent.push((self.now, bytes));
                let item = Tracked {
                    seq,
                    dropped: self.dropped.clone(),
                };
                prop_assert!(self.window.push(seq, self.now, bytes, item).is_ok());
            }
            Op::Evict { advance } => {
                self.now += advance;
                self.window.evict(self.now);
            }
        }
        Ok(())
    }

    /// The window keeps a suffix of what was sent; its bookkeeping agrees with the drops.
    fn check_consistent(&self) -> Result<(), TestCaseError> {
        let dropped = self.dropped.borrow();
        let kept: Vec<u64> = (1..=self.last()).filter(|s| !dropped.contains(s)).collect();
        if let (Some(&first), Some(&last)) = (kept.first(), kept.last()) {
            prop_assert_eq!(
                last,
                self.last(),
                "the newest message was dropped but not all"
            );
            prop_assert_eq!(
                kept.len() as u64,
                last - first + 1,
                "kept seqs not consecutive"
            );
        }
        prop_assert_eq!(self.window.oldest_seq(), kept.first().copied());
        prop_assert_eq!(self.window.len(), kept.len());
        prop_assert_eq!(self.window.is_empty(), kept.is_empty());
        let bytes: u64 = kept.iter().map(|&s| self.sent[s as usize - 1].1).sum();
        prop_assert_eq!(self.window.bytes(), bytes);
        prop_assert_eq!(self.window.last_seq(), self.last());
        Ok(())
    }
}

proptest! {
    #![proptest_config(config())]

    /// Rule: a replay is all or nothing (contract: "Nothing is ever replayed partially";
    /// a from_seq that has left the window gets REPLAY_TOO_OLD). `range(a, b)` yields exactly
    /// the messages max(a,1)..=min(b, last), consecutive and in order, or TooOld — and TooOld
    /// exactly when one of those messages has been evicted.
    #[test]
    fn range_is_exact_or_too_old(
        cfg in replay_config(),
        ops in prop::collection::vec(op(), 0..50),
        queries in prop::collection::vec((0u64..55, prop::option::of(0u64..55)), 1..8),
    ) {
        let mut m = Model::new(cfg);
        for op in ops {
            m.apply(op)?;
            m.check_consistent()?;
            for &(a, b) in &queries {
                let from = a.max(1);
                let to = b.unwrap_or(u64::MAX).min(m.last());
                let wanted: Vec<u64> = (from..=to).collect();
                let any_evicted = {
                    let dropped = m.dropped.borrow();
                    wanted.iter().any(|s| dropped.contains(s))
                };
                match m.window.range(a, b) {
                    Ok(items) => {
                        let got: Vec<u64> = items.map(|t| t.seq).collect();
                        prop_assert!(!any_evicted, "range({}, {:?}) answered although part of it was evicted", a, b);
                        prop_assert_eq!(got, wanted, "range({}, {:?})", a, b);
                    }
                    Err(ReplayError::TooOld { from_seq, oldest_kept }) => {
                        prop_assert!(any_evicted, "range({}, {:?}) refused although all of it is kept", a, b);
                        prop_assert_eq!(from_seq, from);
                        prop_assert_eq!(oldest_kept, m.window.oldest_seq());
                    }
                    Err(e) => prop_assert!(false, "range({}, {:?}) gave {:?}", a, b, e),
                }
            }
        }
    }

    /// Rule (contract section 5): a sent message is kept until it is both beyond the newest
    /// `keep_newest` and older than `keep_for_ms`; only the hard caps (`max_messages`,
    /// `max_bytes`) may evict it earlier, and the window never exceeds them.
    #[test]
    fn eviction_follows_the_window_rule_and_the_hard_caps(
        cfg in replay_config(),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        let mut m = Model::new(cfg);
        for op in ops {
            let before: BTreeSet<u64> = m.dropped.borrow().clone();
            m.apply(op)?;
            m.check_consistent()?;
            let now = m.now;
            let last = m.last();
            let newly: Vec<u64> = m.dropped.borrow().difference(&before).copied().collect();
            for seq in newly {
                let (sent_ms, _) = m.sent[seq as usize - 1];
                let among_newest = last - seq < cfg.keep_newest as u64;
                let young = now - sent_ms <= cfg.keep_for_ms;
                if among_newest || young {
                    // Eviction is oldest first, so when `seq` went the window held seq..=last.
                    let count = (last - seq + 1) as usize;
                    let bytes: u64 = m.sent[seq as usize - 1..].iter().map(|&(_, b)| b).sum();
                    prop_assert!(
                        count > cfg.max_messages || bytes > cfg.max_bytes,
                        "seq {} evicted at {} (sent {}, last {}) though protected and within caps \
                         ({} msgs, {} bytes) under {:?}",
                        seq, now, sent_ms, last, count, bytes, cfg
                    );
                }
            }
            prop_assert!(m.window.len() <= cfg.max_messages, "len {} > {:?}", m.window.len(), cfg);
            prop_assert!(m.window.bytes() <= cfg.max_bytes, "bytes {} > {:?}", m.window.bytes(), cfg);
        }
    }

    /// Rule (contract section 3, resume): a peer claiming a last_rx_seq beyond what was sent
    /// gets NeverSent; claiming exactly the last seq means nothing is missing; otherwise the
    /// answer is everything after it, or TooOld if part of that has left the window.
    #[test]
    fn after_refuses_unsent_claims_and_is_empty_at_the_last_seq(
        cfg in replay_config(),
        ops in prop::collection::vec(op(), 0..40),
        beyond in 1u64..1_000,
        below in 0u64..45,
    ) {
        let mut m = Model::new(cfg);
        let check = |m: &Model| -> Result<(), TestCaseError> {
            let last = m.last();
            // Just past the last seq, and further out.
            for claimed in [last + 1, last.saturating_add(beyond)] {
                prop_assert_eq!(
                    m.window.after(claimed).err(),
                    Some(ReplayError::NeverSent { claimed, last_sent: last })
                );
            }
            prop_assert_eq!(m.window.after(last).map(|i| i.count()).ok(), Some(0));
            let k = below.min(last);
            let any_evicted = m.dropped.borrow().range(k + 1..).next().is_some();
            match m.window.after(k) {
                Ok(items) => {
                    prop_assert!(!any_evicted);
                    prop_assert_eq!(items.map(|t| t.seq).collect::<Vec<_>>(), (k + 1..=last).collect::<Vec<_>>());
                }
                Err(ReplayError::TooOld { .. }) => prop_assert!(any_evicted),
                Err(e) => prop_assert!(false, "after({}) gave {:?}", k, e),
            }
            Ok(())
        };
        check(&m)?;
        for op in ops {
            m.apply(op)?;
            check(&m)?;
        }
    }
}

/// Packs each full segment of seqs into one vector (a stand-in for the server's compact
/// log: lossless, one allocation a segment).
struct SeqPacker;

impl haip_protocol::replay::Packer<u64> for SeqPacker {
    type Packed = Box<[u64]>;
    fn pack(&mut self, items: &[u64]) -> Option<Box<[u64]>> {
        Some(items.into())
    }
    fn unpack(&self, packed: &Box<[u64]>, _: u64) -> Vec<u64> {
        packed.to_vec()
    }
    fn packed_bytes(&self, packed: &Box<[u64]>) -> u64 {
        packed.len() as u64
    }
}

proptest! {
    #![proptest_config(config())]

    /// Packing changes what a window holds, never what it answers: under the count and
    /// time rules a packing window keeps and replays exactly what a plain one does,
    /// across many segments.
    #[test]
    fn a_packing_window_answers_as_a_plain_one(
        keep_newest in 0usize..300,
        keep_for_ms in 0u64..2_000,
        steps in prop::collection::vec((1usize..40, 0u64..60), 1..30),
        queries in prop::collection::vec((0u64..800, prop::option::of(0u64..800)), 1..6),
    ) {
        let cfg = ReplayConfig { keep_newest, keep_for_ms, max_messages: 100_000, max_bytes: u64::MAX };
        let mut plain = ReplayWindow::<u64>::new(cfg);
        let mut packing = ReplayWindow::with_packer(cfg, SeqPacker);
        let (mut seq, mut now) = (0u64, 0u64);
        for (burst, advance) in steps {
            now += advance;
            for _ in 0..burst {
                seq += 1;
                prop_assert!(plain.push(seq, now, 10, seq).is_ok());
                prop_assert!(packing.push(seq, now, 10, seq).is_ok());
            }
            prop_assert_eq!(plain.oldest_seq(), packing.oldest_seq());
            prop_assert_eq!(plain.len(), packing.len());
            for &(a, b) in &queries {
                let want = plain.range(a, b).map(|it| it.map(|s| *s).collect::<Vec<_>>());
                let got = packing.range(a, b).map(|it| it.map(|s| *s).collect::<Vec<_>>());
                prop_assert_eq!(want, got, "range({}, {:?})", a, b);
            }
        }
    }
}
