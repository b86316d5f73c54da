//! The window of sent messages kept for REPLAY_REQUEST and resume (contract sections 3, 5).
//!
//! A sent message stays until it is both beyond the newest `keep_newest` messages and older
//! than `keep_for_ms` (the contract's rule). On top of that rule, hard caps on message count
//! and bytes bound the memory of a session that sends fast for a long time. Queries are all or
//! nothing: either every message of the asked range is still here, or the answer is
//! [`ReplayError::TooOld`] and nothing is replayed.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// `replay_window_size` (default 1000).
    pub keep_newest: usize,
    /// `replay_window_time` in ms (default 300 000).
    pub keep_for_ms: u64,
    /// Never keep more than this many messages, whatever their age.
    pub max_messages: usize,
    /// Never keep more than this many bytes, whatever their age.
    pub max_bytes: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            keep_newest: 1000,
            keep_for_ms: 300_000,
            max_messages: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a range cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Part of the range has left the window (REPLAY_TOO_OLD, or RESUME_FAILED on resume).
    #[error("seq {from_seq} has left the replay window (oldest kept: {oldest_kept:?})")]
    TooOld {
        from_seq: u64,
        oldest_kept: Option<u64>,
    },
    /// The peer claims to have received messages that were never sent.
    #[error("seq {claimed} was never sent (last sent: {last_sent})")]
    NeverSent { claimed: u64, last_sent: u64 },
    /// A packed copy could not be read back (a bug; the replay is refused whole).
    #[error("the kept copy of seq {seq} could not be read back")]
    Unreadable { seq: u64 },
}

/// How a window packs a full segment of messages into less memory, and unpacks it for a
/// replay. Packing must be lossless: what `unpack` gives back is replayed as it was sent.
pub trait Packer<T> {
    type Packed;
    /// Packs a segment, oldest message first; `None` keeps the messages as they are.
    fn pack(&mut self, items: &[T]) -> Option<Self::Packed>;
    /// Every message `pack` was given, oldest first; `first_seq` is the seq of the first.
    /// Fewer messages than were packed means the packed form could not be read back; the
    /// window then refuses the replay whole.
    fn unpack(&self, packed: &Self::Packed, first_seq: u64) -> Vec<T>;
    /// The memory the packed segment holds, counted in the window's bytes.
    fn packed_bytes(&self, packed: &Self::Packed) -> u64;
}

/// Keeps every message as it was pushed (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAsIs;

impl<T> Packer<T> for KeepAsIs {
    type Packed = std::convert::Infallible;
    fn pack(&mut self, _: &[T]) -> Option<Self::Packed> {
        None
    }
    fn unpack(&self, packed: &Self::Packed, _: u64) -> Vec<T> {
        match *packed {}
    }
    fn packed_bytes(&self, packed: &Self::Packed) -> u64 {
        match *packed {}
    }
}

/// Messages per segment: a segment is packed once it holds this many.
pub const SEGMENT_MESSAGES: usize = 64;
/// A segment is packed earlier once its messages hold this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024;

/// A run of consecutive messages, packed together once full. Messages leave from the
/// front one by one; a packed segment frees its memory when its last message leaves.
struct Segment<T, Q> {
    /// The seq of the oldest message still kept here.
    first_seq: u64,
    base_ms: u64,
    /// When each kept message was sent, in ms after `base_ms` (4 bytes a message).
    sent: VecDeque<u32>,
    body: Body<T, Q>,
}

enum Body<T, Q> {
    Open {
        items: VecDeque<T>,
        sizes: VecDeque<u64>,
        bytes: u64,
        /// Full but kept as it is: the next message starts a new segment.
        closed: bool,
    },
    Packed {
        packed: Q,
        /// The seq of the first message `unpack` returns.
        packed_first_seq: u64,
        bytes: u64,
    },
}

impl<T, Q> Segment<T, Q> {
    fn len(&self) -> usize {
        self.sent.len()
    }

    fn sent_ms(&self, index: usize) -> u64 {
        self.base_ms + u64::from(self.sent[index])
    }
}

/// A message of a replay: a reference to the one kept, or a copy unpacked from a packed
/// segment.
pub enum Replayed<'a, T> {
    Kept(&'a T),
    Unpacked(T),
}

impl<T> std::ops::Deref for Replayed<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Replayed::Kept(item) => item,
            Replayed::Unpacked(item) => item,
        }
    }
}

impl<T: Clone> Replayed<'_, T> {
    pub fn into_owned(self) -> T {
        match self {
            Replayed::Kept(item) => item.clone(),
            Replayed::Unpacked(item) => item,
        }
    }
}

/// Sent messages, oldest first, with consecutive seqs, in segments that `P` packs once
/// full (see [`Packer`]).
pub struct ReplayWindow<T, P: Packer<T> = KeepAsIs> {
    config: ReplayConfig,
    segments: VecDeque<Segment<T, P::Packed>>,
    packer: P,
    len: usize,
    bytes: u64,
    last_seq: u64,
}

impl<T> ReplayWindow<T, KeepAsIs> {
    pub fn new(config: ReplayConfig) -> ReplayWindow<T, KeepAsIs> {
        ReplayWindow::with_packer(config, KeepAsIs)
    }
}

impl<T, P: Packer<T>> ReplayWindow<T, P> {
    pub fn with_packer(config: ReplayConfig, packer: P) -> ReplayWindow<T, P> {
        ReplayWindow {
            config,
            segments: VecDeque::new(),
            packer,
            len: 0,
            bytes: 0,
            last_seq: 0,
        }
    }

    /// Makes an empty window continue a session whose messages up to `last_seq` were
    /// sent elsewhere (a session taken over from another node): the next push is
    /// `last_seq + 1`. Refused (false) once the window holds anything.
    pub fn start_after(&mut self, last_seq: u64) -> bool {
        if !self.segments.is_empty() {
            return false;
        }
        self.last_seq = last_seq;
        true
    }

    /// Records a sent message. Seqs must be pushed in order without gaps, starting at 1;
    /// a seq that breaks this is a bug in the caller and is refused.
    pub fn push(&mut self, seq: u64, now_ms: u64, bytes: u64, item: T) -> Result<(), u64> {
        if seq != self.last_seq + 1 {
            return Err(self.last_seq + 1);
        }
        // A message sent before its segment began (the clock went back) or more than
        // u32::MAX ms after starts a segment of its own, so its time is kept exactly.
        let offset = |s: &Segment<T, P::Packed>| {
            now_ms
                .checked_sub(s.base_ms)
                .and_then(|d| u32::try_from(d).ok())
        };
        let fits = self.segments.back().is_some_and(|s| {
            matches!(s.body, Body::Open { closed: false, .. })
                && s.len() < SEGMENT_MESSAGES
                && offset(s).is_some()
        });
        if !fits {
            if self.segments.capacity() == 0 {
                // Room for one: most sessions never fill a segment, and an idle one would
                // otherwise keep room for four.
                self.segments.reserve_exact(1);
            }
            self.segments.push_back(Segment {
                first_seq: seq,
                base_ms: now_ms,
                sent: VecDeque::new(),
                body: Body::Open {
                    items: VecDeque::new(),
                    sizes: VecDeque::new(),
                    bytes: 0,
                    closed: false,
                },
            });
        }
        let back = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        back.sent.push_back(offset(back).unwrap_or(0));
        let full = match &mut back.body {
            Body::Open {
                items,
                sizes,
                bytes: held,
                ..
            } => {
                items.push_back(item);
                sizes.push_back(bytes);
                *held += bytes;
                items.len() >= SEGMENT_MESSAGES || *held >= SEGMENT_BYTES
            }
            Body::Packed { .. } => unreachable!("only an open segment takes messages"),
        };
        self.len += 1;
        self.bytes += bytes;
        self.last_seq = seq;
        if full {
            self.pack_back();
        }
        self.evict(now_ms);
        Ok(())
    }

    /// Packs the newest segment; if the packer keeps it as it is, the next message starts
    /// a new segment all the same.
    fn pack_back(&mut self) {
        let Some(back) = self.segments.back_mut() else {
            return;
        };
        let Body::Open { items, bytes, .. } = &mut back.body else {
            return;
        };
        match self.packer.pack(items.make_contiguous()) {
            Some(packed) => {
                let packed_bytes = self.packer.packed_bytes(&packed);
                self.bytes = self.bytes - *bytes + packed_bytes;
                back.body = Body::Packed {
                    packed,
                    packed_first_seq: back.first_seq,
                    bytes: packed_bytes,
                };
            }
            None => {
                if let Body::Open { closed, .. } = &mut back.body {
                    *closed = true;
                }
            }
        }
    }

    /// Drops the oldest kept message.
    fn pop_oldest(&mut self) -> bool {
        let Some(front) = self.segments.front_mut() else {
            return false;
        };
        front.sent.pop_front();
        front.first_seq += 1;
        if let Body::Open {
            items,
            sizes,
            bytes,
            ..
        } = &mut front.body
        {
            items.pop_front();
            let size = sizes.pop_front().unwrap_or(0);
            *bytes -= size;
            self.bytes -= size;
        }
        if front.sent.is_empty() {
            if let Body::Packed { bytes, .. } = front.body {
                self.bytes -= bytes;
            }
            self.segments.pop_front();
        }
        self.len -= 1;
        true
    }

    /// Drops what the window no longer has to keep at `now_ms`.
    pub fn evict(&mut self, now_ms: u64) {
        while let Some(front) = self.segments.front() {
            let beyond_count = self.len > self.config.keep_newest;
            let too_old = now_ms.saturating_sub(front.sent_ms(0)) > self.config.keep_for_ms;
            let over_cap =
                self.len > self.config.max_messages || self.bytes > self.config.max_bytes;
            let evictable = (beyond_count && too_old) || over_cap;
            if !evictable {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Drops the oldest entries until the window holds at most `max_bytes` (a server short
    /// of memory gives up replay depth first); returns how many bytes it dropped. A resume
    /// that needed them then fails as for any message past the window.
    pub fn shrink_to(&mut self, max_bytes: u64) -> u64 {
        let before = self.bytes;
        while self.bytes > max_bytes && self.pop_oldest() {}
        before - self.bytes
    }

    /// The seq of the last message sent (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn oldest_seq(&self) -> Option<u64> {
        self.segments.front().map(|s| s.first_seq)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the kept messages hold: their sizes as pushed, a packed segment's packed size.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many messages are kept packed.
    pub fn packed_len(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s.body, Body::Packed { .. }))
            .map(Segment::len)
            .sum()
    }

    /// Every message from `from_seq` through `to_seq` (or the last sent), in order, or an
    /// error if any of them has left the window. Seqs past the last sent are not an error:
    /// they simply are not there yet.
    pub fn range(
        &self,
        from_seq: u64,
        to_seq: Option<u64>,
    ) -> Result<std::vec::IntoIter<Replayed<'_, T>>, ReplayError> {
        let from = from_seq.max(1);
        let to = to_seq.unwrap_or(u64::MAX).min(self.last_seq);
        if from <= to && self.oldest_seq().is_none_or(|oldest| from < oldest) {
            return Err(ReplayError::TooOld {
                from_seq: from,
                oldest_kept: self.oldest_seq(),
            });
        }
        let mut out = Vec::new();
        if from > to {
            return Ok(out.into_iter());
        }
        out.reserve((to - from + 1) as usize);
        let first = self
            .segments
            .partition_point(|s| s.first_seq + (s.len() as u64) <= from);
        for segment in self.segments.range(first..) {
            if segment.first_seq > to {
                break;
            }
            let lo = from.max(segment.first_seq);
            let hi = to.min(segment.first_seq + segment.len() as u64 - 1);
            match &segment.body {
                Body::Open { items, .. } => {
                    let skip = (lo - segment.first_seq) as usize;
                    let take = (hi - lo + 1) as usize;
                    out.extend(items.iter().skip(skip).take(take).map(Replayed::Kept));
                }
                Body::Packed {
                    packed,
                    packed_first_seq,
                    ..
                } => {
                    let unpacked = self.packer.unpack(packed, *packed_first_seq);
                    let skip = (lo - packed_first_seq) as usize;
                    let take = (hi - lo + 1) as usize;
                    if unpacked.len() < skip + take {
                        return Err(ReplayError::Unreadable { seq: lo });
                    }
                    out.extend(
                        unpacked
                            .into_iter()
                            .skip(skip)
                            .take(take)
                            .map(Replayed::Unpacked),
                    );
                }
            }
        }
        Ok(out.into_iter())
    }

    /// What a peer that last received `last_rx_seq` is missing, for resume.
    pub fn after(
        &self,
        last_rx_seq: u64,
    ) -> Result<std::vec::IntoIter<Replayed<'_, T>>, ReplayError> {
        if last_rx_seq > self.last_seq {
            return Err(ReplayError::NeverSent {
                claimed: last_rx_seq,
                last_sent: self.last_seq,
            });
        }
        self.range(last_rx_seq.saturating_add(1), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_drops_the_oldest_first_and_resumes_then_fail_cleanly() {
        let mut w = ReplayWindow::new(ReplayConfig::default());
        for seq in 1..=10 {
            w.push(seq, 0, 100, seq).expect("push");
        }
        assert_eq!(w.shrink_to(450), 600);
        assert_eq!(w.bytes(), 400);
        assert_eq!(w.oldest_seq(), Some(7));
        assert!(w.after(5).is_err(), "a resume needing seq 6 fails whole");
        assert_eq!(
            w.after(6).expect("kept").map(|m| *m).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
    }

    #[test]
    fn a_window_started_after_a_seq_continues_from_it_and_refuses_older_resumes() {
        let mut w = ReplayWindow::new(ReplayConfig::default());
        assert!(w.start_after(40));
        assert_eq!(w.last_seq(), 40);
        assert!(w.after(40).expect("nothing to replay").next().is_none());
        assert!(w.after(39).is_err(), "seq 40 is not kept here");
        assert_eq!(w.push(42, 0, 1, 42), Err(41));
        w.push(41, 0, 1, 41).expect("next in order");
        assert_eq!(collect(w.after(40)), vec![41]);
        assert!(!w.start_after(100), "refused once something is kept");
    }

    fn window(keep_newest: usize, keep_for_ms: u64) -> ReplayWindow<u64> {
        ReplayWindow::new(ReplayConfig {
            keep_newest,
            keep_for_ms,
            ..ReplayConfig::default()
        })
    }

    fn collect<'a>(r: Result<impl Iterator<Item = Replayed<'a, u64>>, ReplayError>) -> Vec<u64> {
        r.expect("range available").map(|m| *m).collect()
    }

    #[test]
    fn range_returns_exactly_the_asked_messages() {
        let mut w = window(100, 1000);
        for seq in 1..=10 {
            w.push(seq, 0, 10, seq * 100).unwrap();
        }
        assert_eq!(collect(w.range(3, Some(5))), vec![300, 400, 500]);
        assert_eq!(collect(w.range(9, None)), vec![900, 1000]);
        assert_eq!(collect(w.range(0, Some(2))), vec![100, 200]);
        assert_eq!(collect(w.range(11, None)), Vec::<u64>::new());
        assert_eq!(collect(w.range(8, Some(50))), vec![800, 900, 1000]);
    }

    #[test]
    fn pushing_out_of_order_is_refused() {
        let mut w = window(10, 10);
        assert_eq!(w.push(2, 0, 1, 2), Err(1));
        w.push(1, 0, 1, 1).unwrap();
        assert_eq!(w.push(1, 0, 1, 1), Err(2));
    }

    #[test]
    fn messages_leave_only_when_beyond_count_and_older_than_time() {
        let mut w = window(3, 1000);
        for seq in 1..=5 {
            w.push(seq, 0, 1, seq).unwrap();
        }
        // Beyond the newest 3, but still young: all kept.
        assert_eq!(w.len(), 5);
        w.evict(1000);
        assert_eq!(w.len(), 5);
        w.evict(1001);
        assert_eq!(w.len(), 3);
        assert_eq!(w.oldest_seq(), Some(3));
        // Old but among the newest 3: kept however old.
        w.evict(1_000_000);
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn a_range_reaching_before_the_window_is_refused_whole() {
        let mut w = window(2, 0);
        for seq in 1..=5 {
            w.push(seq, 0, 1, seq).unwrap();
        }
        w.evict(1);
        assert_eq!(w.oldest_seq(), Some(4));
        assert_eq!(
            w.range(3, Some(5)).err(),
            Some(ReplayError::TooOld {
                from_seq: 3,
                oldest_kept: Some(4)
            })
        );
        assert_eq!(collect(w.range(4, None)), vec![4, 5]);
    }

    #[test]
    fn hard_caps_bound_a_young_window() {
        let mut w = ReplayWindow::new(ReplayConfig {
            keep_newest: 1000,
            keep_for_ms: 1_000_000,
            max_messages: 5,
            max_bytes: 1_000,
        });
        for seq in 1..=8 {
            w.push(seq, 0, 10, seq).unwrap();
        }
        assert_eq!(w.len(), 5);
        assert_eq!(w.oldest_seq(), Some(4));
        w.push(9, 0, 990, 9).unwrap();
        assert!(w.bytes() <= 1_000);
        assert_eq!(w.oldest_seq(), Some(8));
        assert!(w.range(7, None).is_err());
    }

    #[test]
    fn after_serves_resume() {
        let mut w = window(2, 0);
        assert_eq!(collect(w.after(0)), Vec::<u64>::new());
        for seq in 1..=4 {
            w.push(seq, 0, 1, seq).unwrap();
        }
        assert_eq!(collect(w.after(2)), vec![3, 4]);
        assert_eq!(collect(w.after(4)), Vec::<u64>::new());
        assert_eq!(
            w.after(9).err(),
            Some(ReplayError::NeverSent {
                claimed: 9,
                last_sent: 4
            })
        );
        w.evict(10);
        assert!(matches!(w.after(1), Err(ReplayError::TooOld { .. })));
        assert_eq!(collect(w.after(2)), vec![3, 4]);
    }

    #[test]
    fn an_empty_window_after_eviction_refuses_old_ranges() {
        let mut w = ReplayWindow::new(ReplayConfig {
            keep_newest: 0,
            keep_for_ms: 0,
            max_messages: 10,
            max_bytes: 10,
        });
        w.push(1, 0, 1, 1).unwrap();
        w.evict(5);
        assert!(w.is_empty());
        assert!(w.range(1, None).is_err());
        assert_eq!(collect(w.after(1)), Vec::<u64>::new());
    }

    /// Packs seqs into one vector and counts what it did; `lossy` drops the last one to
    /// stand for a packed form that cannot be read back.
    #[derive(Default)]
    struct VecPacker {
        packs: usize,
        refuse: bool,
        lossy: bool,
    }

    impl Packer<u64> for VecPacker {
        type Packed = Vec<u64>;
        fn pack(&mut self, items: &[u64]) -> Option<Vec<u64>> {
            if self.refuse {
                return None;
            }
            self.packs += 1;
            Some(items.to_vec())
        }
        fn unpack(&self, packed: &Vec<u64>, first_seq: u64) -> Vec<u64> {
            assert_eq!(packed.first(), Some(&first_seq), "first_seq given back");
            let mut out = packed.clone();
            if self.lossy {
                out.pop();
            }
            out
        }
        fn packed_bytes(&self, packed: &Vec<u64>) -> u64 {
            packed.len() as u64
        }
    }

    fn packing(config: ReplayConfig, packer: VecPacker) -> ReplayWindow<u64, VecPacker> {
        ReplayWindow::with_packer(config, packer)
    }

    #[test]
    fn full_segments_are_packed_and_ranges_cross_them_whole() {
        let mut w = packing(ReplayConfig::default(), VecPacker::default());
        let n = SEGMENT_MESSAGES as u64 * 3 + 5;
        for seq in 1..=n {
            w.push(seq, seq, 100, seq).unwrap();
        }
        assert_eq!(w.packer.packs, 3);
        assert_eq!(w.packed_len(), SEGMENT_MESSAGES * 3);
        assert_eq!(w.len(), n as usize);
        // Three packed segments of 64 count one byte a message; five open ones 100 each.
        assert_eq!(w.bytes(), SEGMENT_MESSAGES as u64 * 3 + 500);
        assert_eq!(collect(w.range(1, None)), (1..=n).collect::<Vec<_>>());
        assert_eq!(
            collect(w.range(60, Some(70))),
            (60..=70).collect::<Vec<_>>()
        );
        assert_eq!(collect(w.after(n - 2)), vec![n - 1, n]);
        assert_eq!(collect(w.range(64, Some(64))), vec![64]);
        assert_eq!(collect(w.range(65, Some(65))), vec![65]);
    }

    #[test]
    fn a_packed_segment_keeps_its_memory_until_its_last_message_leaves() {
        let mut w = packing(
            ReplayConfig {
                keep_newest: 0,
                keep_for_ms: 1_000,
                ..ReplayConfig::default()
            },
            VecPacker::default(),
        );
        for seq in 1..=SEGMENT_MESSAGES as u64 {
            w.push(seq, seq, 100, seq).unwrap();
        }
        let before = w.bytes();
        w.evict(1_019); // seqs 1..=18 are older than 1 000 ms
        assert_eq!(w.oldest_seq(), Some(19));
        assert_eq!(w.bytes(), before, "the packed segment is one allocation");
        assert!(w.range(18, None).is_err());
        assert_eq!(collect(w.range(19, Some(21))), vec![19, 20, 21]);
        w.evict(10_000);
        assert!(w.is_empty());
        assert_eq!(w.bytes(), 0);
    }

    #[test]
    fn a_segment_the_packer_keeps_stays_as_it_is() {
        let mut w = packing(
            ReplayConfig::default(),
            VecPacker {
                refuse: true,
                ..VecPacker::default()
            },
        );
        for seq in 1..=200 {
            w.push(seq, 0, 10, seq).unwrap();
        }
        assert_eq!(w.packed_len(), 0);
        assert_eq!(w.bytes(), 2_000);
        assert_eq!(collect(w.range(1, None)), (1..=200).collect::<Vec<_>>());
    }

    #[test]
    fn a_packed_form_that_cannot_be_read_back_refuses_the_replay_whole() {
        let mut w = packing(
            ReplayConfig::default(),
            VecPacker {
                lossy: true,
                ..VecPacker::default()
            },
        );
        for seq in 1..=100 {
            w.push(seq, 0, 10, seq).unwrap();
        }
        assert!(matches!(
            w.range(1, None).err(),
            Some(ReplayError::Unreadable { seq: 1 })
        ));
        // The open segment after it is still replayed.
        assert_eq!(collect(w.range(65, None)), (65..=100).collect::<Vec<_>>());
    }

    #[test]
    fn large_messages_close_a_segment_early_and_time_offsets_never_overflow() {
        let mut w = packing(ReplayConfig::default(), VecPacker::default());
        w.push(1, 0, SEGMENT_BYTES, 1).unwrap();
        assert_eq!(
            w.packed_len(),
            1,
            "a segment reaching SEGMENT_BYTES is packed"
        );
        // A message sent more than u32::MAX ms after its segment began starts a new one.
        w.push(2, 0, 1, 2).unwrap();
        w.push(3, u64::from(u32::MAX) + 10, 1, 3).unwrap();
        assert_eq!(w.segments.len(), 3);
        assert_eq!(collect(w.range(1, None)), vec![1, 2, 3]);
    }

    #[test]
    fn a_clock_going_back_keeps_each_message_time_exactly() {
        let mut w = window(0, 100);
        w.push(1, 1_000, 1, 1).unwrap();
        w.push(2, 500, 1, 2).unwrap(); // the clock went back 500 ms
        w.evict(1_050);
        assert_eq!(w.oldest_seq(), Some(1), "seq 1 is 50 ms old");
        w.evict(1_101);
        assert!(
            w.is_empty(),
            "seq 2 was sent at 500, so it is older than seq 1"
        );
    }
}
