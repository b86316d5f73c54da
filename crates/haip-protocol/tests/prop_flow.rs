//! Property tests for `haip_protocol::flow` (wire contract section 6: per-channel credit in
//! messages and bytes, SYSTEM exempt, queue and never drop, PAUSE/RESUME, FLOW_UPDATE).

use std::collections::VecDeque;

use haip_protocol::channel::SYSTEM;
use haip_protocol::flow::{Credit, FlowRefusal, Grant, ReceiveMeter, SendGate};
use proptest::prelude::*;

/// 256 cases per property; no regression files are written next to the sources.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    }
}

const CHANNELS: [&str; 3] = [SYSTEM, "AGENT", "AUDIO_OUT"];

fn credit() -> impl Strategy<Value = Credit> {
    prop_oneof![
        1 => Just(Credit::UNLIMITED),
        4 => (prop::option::of(0u64..5), prop::option::of(0u64..120))
            .prop_map(|(m, b)| Credit::new(m, b)),
    ]
}

// ---------------------------------------------------------------------------------------
// SendGate
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum GateOp {
    Offer {
        ch: usize,
        cost: u64,
    },
    Grant {
        ch: usize,
        messages: u64,
        bytes: u64,
    },
    Pause {
        ch: usize,
    },
    Resume {
        ch: usize,
    },
}

fn gate_op() -> impl Strategy<Value = GateOp> {
    prop_oneof![
        5 => (0..CHANNELS.len(), 0u64..50).prop_map(|(ch, cost)| GateOp::Offer { ch, cost }),
        3 => (0..CHANNELS.len(), 0u64..3, 0u64..80)
            .prop_map(|(ch, messages, bytes)| GateOp::Grant { ch, messages, bytes }),
        1 => (0..CHANNELS.len()).prop_map(|ch| GateOp::Pause { ch }),
        1 => (0..CHANNELS.len()).prop_map(|ch| GateOp::Resume { ch }),
    ]
}

/// A message as the gate sees it: (channel index, offer number, cost).
type Msg = (usize, u64, u64);

/// What the test expects of one channel.
#[derive(Debug)]
struct ModelChannel {
    credit: Credit,
    paused: bool,
    /// Offered, not yet released, in offer order.
    held: VecDeque<Msg>,
    offered: Vec<u64>,
    released: Vec<u64>,
}

fn covers(c: Credit, cost: u64) -> bool {
    c.messages.is_none_or(|m| m >= 1) && c.bytes.is_none_or(|b| b >= cost)
}

struct GateModel {
    gate: SendGate<Msg>,
    channels: Vec<ModelChannel>,
    next_id: u64,
}

impl GateModel {
    fn new(initial: Credit) -> GateModel {
        GateModel {
            gate: SendGate::new(initial),
            channels: CHANNELS
                .iter()
                .map(|_| ModelChannel {
                    credit: initial,
                    paused: false,
                    held: VecDeque::new(),
                    offered: Vec::new(),
                    released: Vec::new(),
                })
                .collect(),
            next_id: 0,
        }
    }

    /// Checks one message the gate let out on channel `ch` and updates the model.
    fn released(&mut self, ch: usize, msg: Msg, fresh: Option<Msg>) -> Result<(), TestCaseError> {
        let c = &mut self.channels[ch];
        prop_assert_eq!(msg.0, ch, "a message came out of another channel's release");
        if CHANNELS[ch] == SYSTEM {
            prop_assert_eq!(Some(msg), fresh);
            c.released.push(msg.1);
            return Ok(());
        }
        prop_assert!(
            !c.paused,
            "{:?} released on paused channel {}",
            msg,
            CHANNELS[ch]
        );
        // In offer order: the oldest held message, or the fresh one if nothing is held.
        let expected = c.held.front().copied().or(fresh);
        prop_assert_eq!(Some(msg), expected, "released out of offer order");
        if c.held.front() == Some(&msg) {
            c.held.pop_front();
        }
        let cost = msg.2;
        if let Some(m) = &mut c.credit.messages {
            prop_assert!(
                *m >= 1,
                "release of {:?} drives message credit negative",
                msg
            );
            *m -= 1;
        }
        if let Some(b) = &mut c.credit.bytes {
            prop_assert!(
                *b >= cost,
                "release of {:?} drives byte credit negative ({})",
                msg,
                b
            );
            *b -= cost;
        }
        c.released.push(msg.1);
        Ok(())
    }

    fn releases(&mut self, ch: usize, out: Vec<Msg>) -> Result<(), TestCaseError> {
        for msg in out {
            self.released(ch, msg, None)?;
        }
        Ok(())
    }

    fn apply(&mut self, op: GateOp) -> Result<(), TestCaseError> {
        match op {
            GateOp::Offer { ch, cost } => {
                let msg = (ch, self.next_id, cost);
                self.next_id += 1;
                self.channels[ch].offered.push(msg.1);
                match self.gate.offer(CHANNELS[ch], cost, msg) {
                    Some(out) => self.released(ch, out, Some(msg))?,
                    None => {
                        prop_assert!(CHANNELS[ch] != SYSTEM, "SYSTEM message held");
                        self.channels[ch].held.push_back(msg);
                    }
                }
            }
            GateOp::Grant {
                ch,
                messages,
                bytes,
            } => {
                let out = self.gate.grant(CHANNELS[ch], messages, bytes);
                if CHANNELS[ch] != SYSTEM {
                    let c = &mut self.channels[ch].credit;
                    if let Some(m) = &mut c.messages {
                        *m = m.saturating_add(messages);
                    }
                    if let Some(b) = &mut c.bytes {
                        *b = b.saturating_add(bytes);
                    }
                }
                self.releases(ch, out)?;
            }
            GateOp::Pause { ch } => {
                let accepted = self.gate.pause(CHANNELS[ch]);
                prop_assert_eq!(
                    accepted,
                    CHANNELS[ch] != SYSTEM,
                    "pause of {}",
                    CHANNELS[ch]
                );
                if accepted {
                    self.channels[ch].paused = true;
                }
                prop_assert_eq!(self.gate.is_paused(CHANNELS[ch]), accepted);
            }
            GateOp::Resume { ch } => {
                let out = self.gate.resume(CHANNELS[ch]);
                self.channels[ch].paused = false;
                self.releases(ch, out)?;
                prop_assert!(!self.gate.is_paused(CHANNELS[ch]));
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let held_messages: usize = self.channels.iter().map(|c| c.held.len()).sum();
        let held_bytes: u64 = self
            .channels
            .iter()
            .flat_map(|c| c.held.iter().map(|m| m.2))
            .sum();
        prop_assert_eq!(self.gate.held_messages(), held_messages);
        prop_assert_eq!(self.gate.held_bytes(), held_bytes);
        for (name, c) in CHANNELS.iter().zip(&self.channels) {
            if *name == SYSTEM {
                prop_assert_eq!(self.gate.credit(name), Credit::UNLIMITED);
                prop_assert!(c.held.is_empty());
                continue;
            }
            prop_assert_eq!(self.gate.credit(name), c.credit, "credit of {}", name);
            prop_assert_eq!(self.gate.is_paused(name), c.paused);
            // Queue only when credit is spent (or paused): never sit on a sendable message.
            if let Some(front) = c.held.front() {
                prop_assert!(
                    c.paused || !covers(c.credit, front.2),
                    "{} holds {:?} although unpaused with credit {:?}",
                    name,
                    front,
                    c.credit
                );
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// ReceiveMeter
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum MeterOp {
    Admit {
        ch: usize,
        cost: u64,
    },
    /// The application consumes the oldest admitted, not yet consumed message of `ch`.
    Consume {
        ch: usize,
    },
    Pause {
        ch: usize,
    },
    Resume {
        ch: usize,
    },
}

fn meter_op() -> impl Strategy<Value = MeterOp> {
    prop_oneof![
        5 => (0..CHANNELS.len(), 0u64..50).prop_map(|(ch, cost)| MeterOp::Admit { ch, cost }),
        4 => (0..CHANNELS.len()).prop_map(|ch| MeterOp::Consume { ch }),
        1 => (0..CHANNELS.len()).prop_map(|ch| MeterOp::Pause { ch }),
        1 => (0..CHANNELS.len()).prop_map(|ch| MeterOp::Resume { ch }),
    ]
}

#[derive(Debug, Default)]
struct MeterModel {
    admitted_messages: u64,
    admitted_bytes: u64,
    granted_messages: u64,
    granted_bytes: u64,
    paused: bool,
    unconsumed: VecDeque<u64>,
}

proptest! {
    #![proptest_config(config())]

    /// Rule (contract section 6): the sender queues and never drops; SYSTEM never spends
    /// credit and is never held; a paused channel releases nothing until RESUME_CHANNEL,
    /// which releases in order; credit is never overspent; held counters are exact. After
    /// resuming every channel and granting a huge credit everywhere, every offered message has
    /// come out exactly once, in offer order per channel.
    #[test]
    fn send_gate_releases_everything_once_in_order_within_credit(
        initial in credit(),
        ops in prop::collection::vec(gate_op(), 0..80),
    ) {
        let mut m = GateModel::new(initial);
        m.check()?;
        for op in ops {
            m.apply(op)?;
        }
        for ch in 0..CHANNELS.len() {
            m.apply(GateOp::Resume { ch })?;
        }
        for ch in 0..CHANNELS.len() {
            m.apply(GateOp::Grant { ch, messages: u64::MAX, bytes: u64::MAX })?;
        }
        for (name, c) in CHANNELS.iter().zip(&m.channels) {
            prop_assert_eq!(&c.released, &c.offered, "channel {}", name);
            prop_assert!(c.held.is_empty());
        }
        prop_assert_eq!(m.gate.held_messages(), 0);
        prop_assert_eq!(m.gate.held_bytes(), 0);
    }

    /// Rule (contract section 6): the receiver enforces the credit it advertised — what it
    /// admits on a channel never exceeds the advertised credit plus what its FLOW_UPDATEs
    /// handed back; SYSTEM is always admitted; a paused channel refuses with CHANNEL_PAUSED;
    /// every FLOW_UPDATE adds at least one message and one byte.
    #[test]
    fn receive_meter_admits_within_advertised_plus_granted(
        advertised in credit(),
        ops in prop::collection::vec(meter_op(), 0..120),
    ) {
        let mut meter = ReceiveMeter::new(advertised);
        prop_assert_eq!(meter.advertised(), advertised);
        let mut model: Vec<MeterModel> = CHANNELS.iter().map(|_| MeterModel::default()).collect();
        for op in ops {
            match op {
                MeterOp::Admit { ch, cost } => {
                    let result = meter.admit(CHANNELS[ch], cost);
                    let c = &mut model[ch];
                    if CHANNELS[ch] == SYSTEM {
                        prop_assert_eq!(result, Ok(()), "SYSTEM refused");
                        continue;
                    }
                    if c.paused {
                        prop_assert_eq!(result, Err(FlowRefusal::ChannelPaused));
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            c.admitted_messages += 1;
                            c.admitted_bytes += cost;
                            c.unconsumed.push_back(cost);
                            if let Some(limit) = advertised.messages {
                                prop_assert!(
                                    c.admitted_messages <= limit + c.granted_messages,
                                    "{} messages admitted on {} with credit {} + granted {}",
                                    c.admitted_messages, CHANNELS[ch], limit, c.granted_messages
                                );
                            }
                            if let Some(limit) = advertised.bytes {
                                prop_assert!(
                                    c.admitted_bytes <= limit + c.granted_bytes,
                                    "{} bytes admitted on {} with credit {} + granted {}",
                                    c.admitted_bytes, CHANNELS[ch], limit, c.granted_bytes
                                );
                            }
                        }
                        Err(refusal) => {
                            prop_assert_eq!(refusal, FlowRefusal::InsufficientCredits);
                            prop_assert!(!advertised.is_unlimited(), "unlimited meter refused");
                        }
                    }
                }
                MeterOp::Consume { ch } => {
                    let c = &mut model[ch];
                    let Some(cost) = c.unconsumed.pop_front() else { continue };
                    if let Some(Grant { channel, add_messages, add_bytes }) =
                        meter.consumed(CHANNELS[ch], cost, 0)
                    {
                        prop_assert_eq!(channel.as_str(), CHANNELS[ch]);
                        prop_assert!(CHANNELS[ch] != SYSTEM, "grant on SYSTEM");
                        prop_assert!(!advertised.is_unlimited(), "grant from an unlimited meter");
                        prop_assert!(add_messages >= 1 && add_bytes >= 1,
                            "empty grant {} msgs / {} bytes", add_messages, add_bytes);
                        c.granted_messages += add_messages;
                        c.granted_bytes += add_bytes;
                    }
                }
                MeterOp::Pause { ch } => {
                    let accepted = meter.pause(CHANNELS[ch]);
                    prop_assert_eq!(accepted, CHANNELS[ch] != SYSTEM);
                    model[ch].paused = accepted;
                }
                MeterOp::Resume { ch } => {
                    meter.resume(CHANNELS[ch]);
                    model[ch].paused = false;
                }
            }
        }
    }

    /// Extra (sender and receiver together, contract section 6): a SendGate starting with the
    /// credit a ReceiveMeter advertised, talking to that meter whose application consumes
    /// everything it admits, is never refused and never stalls — provided each message fits
    /// the advertised credit at all.
    #[test]
    fn gate_and_meter_never_deadlock(
        advertised in (prop::option::of(1u64..6), prop::option::of(1u64..120))
            .prop_map(|(m, b)| Credit::new(m, b)),
        sizes in prop::collection::vec(1u64..120, 1..30),
    ) {
        let mut gate: SendGate<u64> = SendGate::new(advertised);
        let mut meter = ReceiveMeter::new(advertised);
        let fits = advertised.bytes.unwrap_or(u64::MAX);
        let sizes: Vec<u64> = sizes.into_iter().map(|s| s.min(fits)).collect();
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        for &cost in &sizes {
            if let Some(c) = gate.offer("AGENT", cost, cost) {
                in_flight.push_back(c);
            }
        }
        let mut delivered = Vec::new();
        let mut now = 0u64;
        loop {
            while let Some(cost) = in_flight.pop_front() {
                prop_assert_eq!(meter.admit("AGENT", cost), Ok(()), "a credit-respecting sender was refused");
                delivered.push(cost);
                if let Some(g) = meter.consumed("AGENT", cost, now) {
                    in_flight.extend(gate.grant(&g.channel, g.add_messages, g.add_bytes));
                }
            }
            // Nothing in flight: time passes and the delayed grants go out.
            let Some(due) = meter.next_flush_ms() else { break };
            now = due;
            for g in meter.flush(now) {
                in_flight.extend(gate.grant(&g.channel, g.add_messages, g.add_bytes));
            }
        }
        prop_assert_eq!(
            gate.held_messages(), 0,
            "stalled with {} held (credit {:?}) after delivering {:?}",
            gate.held_messages(), gate.credit("AGENT"), delivered
        );
        prop_assert_eq!(delivered, sizes);
    }
}
