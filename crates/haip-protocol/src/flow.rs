//! Credit-based flow control (contract section 6).
//!
//! Credit is kept per channel and per direction, in messages and in bytes. Messages on the
//! SYSTEM channel never spend credit and can never be paused, so that errors, heartbeats and
//! the flow-control messages themselves always get through.
//!
//! - [`SendGate`] is the sending side: it lets a message out when its channel has credit and
//!   is not paused, and otherwise holds it, in order, until a grant or a resume. It never drops.
//! - [`ReceiveMeter`] is the receiving side: it checks each arriving message against the
//!   credit this side advertised and decides when to hand credit back with FLOW_UPDATE.

use std::collections::{HashMap, VecDeque};

use crate::event::channel::SYSTEM;

/// An amount of credit; `None` in a field means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
}

impl Credit {
    pub const UNLIMITED: Credit = Credit {
        messages: None,
        bytes: None,
    };

    pub fn new(messages: Option<u64>, bytes: Option<u64>) -> Credit {
        Credit { messages, bytes }
    }

    pub fn is_unlimited(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }

    fn covers(&self, cost: u64) -> bool {
        self.messages.is_none_or(|m| m >= 1) && self.bytes.is_none_or(|b| b >= cost)
    }

    fn spend(&mut self, cost: u64) {
        if let Some(m) = &mut self.messages {
            *m -= 1;
        }
        if let Some(b) = &mut self.bytes {
            *b -= cost;
        }
    }

    fn add(&mut self, messages: u64, bytes: u64) {
        if let Some(m) = &mut self.messages {
            *m = m.saturating_add(messages);
        }
        if let Some(b) = &mut self.bytes {
            *b = b.saturating_add(bytes);
        }
    }
}

/// The most channel names one side tracks flow-control state for at once. Channel names
/// are the peer's to choose: without a bound, each new name would cost state (and fresh
/// credit) for good.
pub const MAX_CHANNELS: usize = 64;

/// Whether a channel is outside flow control.
pub fn is_exempt(channel: &str) -> bool {
    channel == SYSTEM
}

struct GateChannel<T> {
    credit: Credit,
    paused: bool,
    held: VecDeque<(u64, T)>,
}

/// The sending side of flow control: releases what credit allows, holds the rest in order.
pub struct SendGate<T> {
    initial: Credit,
    channels: HashMap<String, GateChannel<T>>,
    held_messages: usize,
    held_bytes: u64,
}

impl<T> SendGate<T> {
    pub fn new(initial: Credit) -> SendGate<T> {
        SendGate {
            initial,
            channels: HashMap::new(),
            held_messages: 0,
            held_bytes: 0,
        }
    }

    /// Replaces the starting credit of every channel, as a peer's HAI does. Credit already
    /// spent before the handshake is not charged against the new amount.
    pub fn reset_credit(&mut self, initial: Credit) -> Vec<T> {
        self.initial = initial;
        let names: Vec<String> = self.channels.keys().cloned().collect();
        let mut released = Vec::new();
        for name in names {
            if let Some(ch) = self.channels.get_mut(&name) {
                ch.credit = initial;
            }
            released.extend(self.release(&name));
        }
        released
    }

    /// Offers one message of `cost` bytes on `channel`. It comes back (`Some`) when it may be
    /// sent now; otherwise the gate keeps it (`None`) until [`grant`](Self::grant) or
    /// [`resume`](Self::resume) releases it.
    pub fn offer(&mut self, channel: &str, cost: u64, item: T) -> Option<T> {
        if is_exempt(channel) {
            return Some(item);
        }
        let ch = self.channel_mut(channel);
        // A message may never overtake one already held on its channel.
        if !ch.paused && ch.held.is_empty() && ch.credit.covers(cost) {
            ch.credit.spend(cost);
            return Some(item);
        }
        ch.held.push_back((cost, item));
        self.held_messages += 1;
        self.held_bytes += cost;
        None
    }

    /// Adds credit to a channel (a FLOW_UPDATE from the peer) and returns, in order, what
    /// that releases.
    /// Credit for a channel not seen yet is ignored once [`MAX_CHANNELS`] are tracked.
    pub fn grant(&mut self, channel: &str, add_messages: u64, add_bytes: u64) -> Vec<T> {
        if is_exempt(channel) || !self.has_room_for(channel) {
            return Vec::new();
        }
        self.channel_mut(channel)
            .credit
            .add(add_messages, add_bytes);
        self.release(channel)
    }

    /// Holds every later message of `channel` until [`resume`](Self::resume). Returns false
    /// for SYSTEM, which cannot be paused, and for a channel not seen yet once
    /// [`MAX_CHANNELS`] are tracked.
    pub fn pause(&mut self, channel: &str) -> bool {
        if is_exempt(channel) || !self.has_room_for(channel) {
            return false;
        }
        self.channel_mut(channel).paused = true;
        true
    }

    /// Ends a pause and returns, in order, what credit now allows out.
    pub fn resume(&mut self, channel: &str) -> Vec<T> {
        match self.channels.get_mut(channel) {
            Some(ch) => ch.paused = false,
            None => return Vec::new(),
        }
        self.release(channel)
    }

    pub fn is_paused(&self, channel: &str) -> bool {
        self.channels.get(channel).is_some_and(|c| c.paused)
    }

    /// Credit left on a channel.
    pub fn credit(&self, channel: &str) -> Credit {
        if is_exempt(channel) {
            return Credit::UNLIMITED;
        }
        self.channels
            .get(channel)
            .map_or(self.initial, |c| c.credit)
    }

    /// Messages held across all channels.
    pub fn held_messages(&self) -> usize {
        self.held_messages
    }

    /// Bytes held across all channels.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// How many channels have state.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    fn has_room_for(&self, channel: &str) -> bool {
        self.channels.len() < MAX_CHANNELS || self.channels.contains_key(channel)
    }

    fn channel_mut(&mut self, channel: &str) -> &mut GateChannel<T> {
        let initial = self.initial;
        self.channels
            .entry(channel.to_string())
            .or_insert_with(|| GateChannel {
                credit: initial,
                paused: false,
                held: VecDeque::new(),
            })
    }

    fn release(&mut self, channel: &str) -> Vec<T> {
        let mut out = Vec::new();
        let Some(ch) = self.channels.get_mut(channel) else {
            return out;
        };
        while !ch.paused {
            match ch.held.front() {
                Some((cost, _)) if ch.credit.covers(*cost) => {}
                _ => break,
            }
            let Some((cost, item)) = ch.held.pop_front() else {
                break;
            };
            ch.credit.spend(cost);
            self.held_messages -= 1;
            self.held_bytes -= cost;
            out.push(item);
        }
        out
    }
}

/// Why an arriving message was refused by flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowRefusal {
    InsufficientCredits,
    ChannelPaused,
    /// A new channel name while [`MAX_CHANNELS`] others have credit in use.
    TooManyChannels,
}

impl FlowRefusal {
    /// The `detail.reason` of the FLOW_CONTROL_VIOLATION error.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowRefusal::InsufficientCredits => "INSUFFICIENT_CREDITS",
            FlowRefusal::ChannelPaused => "CHANNEL_PAUSED",
            FlowRefusal::TooManyChannels => "TOO_MANY_CHANNELS",
        }
    }
}

/// Credit handed back to the peer: the body of one FLOW_UPDATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub channel: String,
    pub add_messages: u64,
    pub add_bytes: u64,
}

#[derive(Default)]
struct MeterChannel {
    spent_messages: u64,
    spent_bytes: u64,
    /// Consumed by the application but not yet handed back.
    returnable_messages: u64,
    returnable_bytes: u64,
    /// When the oldest credit not yet handed back was consumed.
    returnable_since_ms: Option<u64>,
    paused: bool,
}

impl MeterChannel {
    /// Nothing spent, nothing to hand back, not paused: the state of a channel never used.
    fn is_idle(&self) -> bool {
        self.spent_messages == 0
            && self.spent_bytes == 0
            && self.returnable_messages == 0
            && !self.paused
    }
}

/// Credit consumed but below the half-credit threshold is handed back after this delay, so
/// that a sender blocked on a message larger than its remaining credit never waits forever.
pub const GRANT_DELAY_MS: u64 = 50;

/// The receiving side of flow control: enforces the credit this side advertised.
pub struct ReceiveMeter {
    advertised: Credit,
    channels: HashMap<String, MeterChannel>,
}

impl ReceiveMeter {
    /// `advertised` is the credit announced in this side's HAI; `Credit::UNLIMITED` turns
    /// enforcement off.
    pub fn new(advertised: Credit) -> ReceiveMeter {
        ReceiveMeter {
            advertised,
            channels: HashMap::new(),
        }
    }

    pub fn advertised(&self) -> Credit {
        self.advertised
    }

    /// Checks and spends the credit of one arriving message.
    pub fn admit(&mut self, channel: &str, cost: u64) -> Result<(), FlowRefusal> {
        if is_exempt(channel) {
            return Ok(());
        }
        if self.channels.len() >= MAX_CHANNELS && !self.channels.contains_key(channel) {
            return Err(FlowRefusal::TooManyChannels);
        }
        let ch = self.channels.entry(channel.to_string()).or_default();
        if ch.paused {
            return Err(FlowRefusal::ChannelPaused);
        }
        let over_messages = self
            .advertised
            .messages
            .is_some_and(|m| ch.spent_messages >= m);
        let over_bytes = self
            .advertised
            .bytes
            .is_some_and(|b| ch.spent_bytes.saturating_add(cost) > b);
        if over_messages || over_bytes {
            return Err(FlowRefusal::InsufficientCredits);
        }
        ch.spent_messages += 1;
        ch.spent_bytes = ch.spent_bytes.saturating_add(cost);
        Ok(())
    }

    /// Records that the application consumed an admitted message. Once half of a channel's
    /// advertised credit has been consumed, returns the FLOW_UPDATE that hands it back;
    /// handing back in halves keeps the peer from stalling without a message per message.
    /// Smaller amounts are handed back by [`flush`](Self::flush) after [`GRANT_DELAY_MS`].
    pub fn consumed(&mut self, channel: &str, cost: u64, now_ms: u64) -> Option<Grant> {
        if is_exempt(channel) || self.advertised.is_unlimited() {
            return None;
        }
        let ch = self.channels.get_mut(channel)?;
        ch.returnable_messages += 1;
        ch.returnable_bytes = ch.returnable_bytes.saturating_add(cost);
        ch.returnable_since_ms.get_or_insert(now_ms);
        let half = |limit: Option<u64>, n: u64| limit.is_some_and(|l| n >= l.div_ceil(2));
        if !half(self.advertised.messages, ch.returnable_messages)
            && !half(self.advertised.bytes, ch.returnable_bytes)
        {
            return None;
        }
        let grant = Self::hand_back(channel, ch);
        if ch.is_idle() {
            self.channels.remove(channel);
        }
        Some(grant)
    }

    /// How many channels have state.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// Hands back, per channel, credit consumed at least [`GRANT_DELAY_MS`] ago.
    pub fn flush(&mut self, now_ms: u64) -> Vec<Grant> {
        let mut grants: Vec<Grant> = self
            .channels
            .iter_mut()
            .filter(|(_, ch)| {
                ch.returnable_since_ms
                    .is_some_and(|t| now_ms >= t.saturating_add(GRANT_DELAY_MS))
            })
            .map(|(name, ch)| Self::hand_back(name, ch))
            .collect();
        // A channel with nothing in use is forgotten: its next message starts afresh.
        self.channels.retain(|_, ch| !ch.is_idle());
        grants.sort_by(|a, b| a.channel.cmp(&b.channel));
        grants
    }

    /// When [`flush`](Self::flush) has something to hand back.
    pub fn next_flush_ms(&self) -> Option<u64> {
        self.channels
            .values()
            .filter_map(|ch| ch.returnable_since_ms)
            .min()
            .map(|t| t.saturating_add(GRANT_DELAY_MS))
    }

    fn hand_back(channel: &str, ch: &mut MeterChannel) -> Grant {
        let grant = Grant {
            channel: channel.to_string(),
            add_messages: ch.returnable_messages.max(1),
            add_bytes: ch.returnable_bytes.max(1),
        };
        ch.spent_messages -= ch.returnable_messages.min(ch.spent_messages);
        ch.spent_bytes -= ch.returnable_bytes.min(ch.spent_bytes);
        ch.returnable_messages = 0;
        ch.returnable_bytes = 0;
        ch.returnable_since_ms = None;
        grant
    }

    /// Refuses further messages on `channel` (this side sent PAUSE_CHANNEL).
    pub fn pause(&mut self, channel: &str) -> bool {
        if is_exempt(channel)
            || (self.channels.len() >= MAX_CHANNELS && !self.channels.contains_key(channel))
        {
            return false;
        }
        self.channels.entry(channel.to_string()).or_default().paused = true;
        true
    }

    pub fn resume(&mut self, channel: &str) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.paused = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(messages: u64, bytes: u64) -> Credit {
        Credit::new(Some(messages), Some(bytes))
    }

    #[test]
    fn channel_state_is_bounded_and_forgotten_when_idle() {
        let mut meter = ReceiveMeter::new(limited(10, 1000));
        for i in 0..MAX_CHANNELS {
            meter.admit(&format!("c{i}"), 10).expect("room");
        }
        assert_eq!(
            meter.admit("one-too-many", 10),
            Err(FlowRefusal::TooManyChannels)
        );
        // Consumed and handed back, the channels hold nothing and are forgotten.
        for i in 0..MAX_CHANNELS {
            meter.consumed(&format!("c{i}"), 10, 0);
        }
        assert!(!meter.flush(GRANT_DELAY_MS).is_empty());
        assert_eq!(meter.channels(), 0);
        assert_eq!(meter.admit("one-too-many", 10), Ok(()));

        let mut gate: SendGate<u8> = SendGate::new(limited(1, 100));
        for i in 0..MAX_CHANNELS {
            gate.grant(&format!("g{i}"), 1, 1);
        }
        gate.grant("ignored", 1, 1);
        assert!(!gate.pause("ignored-too"));
        assert_eq!(gate.channels(), MAX_CHANNELS);
    }

    #[test]
    fn unlimited_gate_releases_everything_at_once() {
        let mut gate = SendGate::new(Credit::UNLIMITED);
        for i in 0..100 {
            assert_eq!(gate.offer("AGENT", 1_000_000, i), Some(i));
        }
        assert_eq!(gate.held_messages(), 0);
    }

    #[test]
    fn message_credit_holds_then_grant_releases_in_order() {
        let mut gate = SendGate::new(Credit::new(Some(2), None));
        assert_eq!(gate.offer("AGENT", 10, 1), Some(1));
        assert_eq!(gate.offer("AGENT", 10, 2), Some(2));
        assert_eq!(gate.offer("AGENT", 10, 3), None);
        assert_eq!(gate.offer("AGENT", 10, 4), None);
        assert_eq!(gate.held_messages(), 2);
        assert_eq!(gate.held_bytes(), 20);
        assert_eq!(gate.grant("AGENT", 1, 0), vec![3]);
        assert_eq!(gate.grant("AGENT", 5, 0), vec![4]);
        assert_eq!(gate.held_messages(), 0);
        assert_eq!(gate.offer("AGENT", 10, 5), Some(5));
    }

    #[test]
    fn byte_credit_holds_a_message_that_does_not_fit() {
        let mut gate = SendGate::new(Credit::new(None, Some(100)));
        assert_eq!(gate.offer("AGENT", 60, 'a'), Some('a'));
        assert_eq!(gate.offer("AGENT", 60, 'b'), None);
        // A small message may not overtake the held one.
        assert_eq!(gate.offer("AGENT", 1, 'c'), None);
        assert_eq!(gate.grant("AGENT", 0, 19), Vec::<char>::new());
        assert_eq!(gate.grant("AGENT", 0, 1), vec!['b']);
        assert_eq!(gate.grant("AGENT", 0, 1), vec!['c']);
    }

    #[test]
    fn channels_have_separate_credit() {
        let mut gate = SendGate::new(limited(1, 1000));
        assert_eq!(gate.offer("AGENT", 1, 1), Some(1));
        assert_eq!(gate.offer("AGENT", 1, 2), None);
        assert_eq!(gate.offer("AUDIO_OUT", 1, 3), Some(3));
        assert_eq!(gate.credit("AUDIO_OUT"), limited(0, 999));
        assert_eq!(gate.credit("USER"), limited(1, 1000));
    }

    #[test]
    fn system_is_exempt_from_credit_and_pause() {
        let mut gate = SendGate::new(limited(0, 0));
        assert!(!gate.pause(SYSTEM));
        assert_eq!(gate.offer(SYSTEM, 500, 'p'), Some('p'));
        assert_eq!(gate.credit(SYSTEM), Credit::UNLIMITED);
        assert!(gate.grant(SYSTEM, 1, 1).is_empty());
    }

    #[test]
    fn pause_holds_and_resume_releases_in_order() {
        let mut gate = SendGate::new(Credit::UNLIMITED);
        assert!(gate.pause("AGENT"));
        assert!(gate.is_paused("AGENT"));
        assert_eq!(gate.offer("AGENT", 1, 1), None);
        assert_eq!(gate.offer("AGENT", 1, 2), None);
        assert_eq!(gate.offer("USER", 1, 9), Some(9));
        assert!(gate.grant("AGENT", 10, 10).is_empty());
        assert_eq!(gate.resume("AGENT"), vec![1, 2]);
        assert!(!gate.is_paused("AGENT"));
        assert!(gate.resume("NEVER_SEEN").is_empty());
    }

    #[test]
    fn resume_releases_only_what_credit_allows() {
        let mut gate = SendGate::new(Credit::new(Some(1), None));
        gate.pause("AGENT");
        gate.offer("AGENT", 1, 1);
        gate.offer("AGENT", 1, 2);
        assert_eq!(gate.resume("AGENT"), vec![1]);
        assert_eq!(gate.grant("AGENT", 1, 0), vec![2]);
    }

    #[test]
    fn reset_credit_applies_the_handshake_amount_and_releases() {
        let mut gate = SendGate::new(limited(0, 0));
        assert_eq!(gate.offer("AGENT", 5, 1), None);
        assert_eq!(gate.reset_credit(limited(3, 100)), vec![1]);
        assert_eq!(gate.credit("AGENT"), limited(2, 95));
        assert_eq!(gate.credit("OTHER"), limited(3, 100));
    }

    #[test]
    fn meter_refuses_beyond_message_credit() {
        let mut meter = ReceiveMeter::new(limited(2, 1000));
        assert_eq!(meter.admit("USER", 10), Ok(()));
        assert_eq!(meter.admit("USER", 10), Ok(()));
        assert_eq!(
            meter.admit("USER", 10),
            Err(FlowRefusal::InsufficientCredits)
        );
        // Other channels and SYSTEM are unaffected.
        assert_eq!(meter.admit("AUDIO_IN", 10), Ok(()));
        assert_eq!(meter.admit(SYSTEM, 10_000_000), Ok(()));
    }

    #[test]
    fn meter_refuses_beyond_byte_credit() {
        let mut meter = ReceiveMeter::new(limited(100, 100));
        assert_eq!(meter.admit("USER", 60), Ok(()));
        assert_eq!(
            meter.admit("USER", 41),
            Err(FlowRefusal::InsufficientCredits)
        );
        assert_eq!(meter.admit("USER", 40), Ok(()));
    }

    #[test]
    fn meter_refuses_on_paused_channel() {
        let mut meter = ReceiveMeter::new(Credit::UNLIMITED);
        assert!(meter.pause("USER"));
        assert!(!meter.pause(SYSTEM));
        assert_eq!(meter.admit("USER", 1), Err(FlowRefusal::ChannelPaused));
        meter.resume("USER");
        assert_eq!(meter.admit("USER", 1), Ok(()));
    }

    #[test]
    fn meter_hands_credit_back_in_halves() {
        let mut meter = ReceiveMeter::new(limited(4, 1_000_000));
        for _ in 0..4 {
            meter.admit("USER", 10).unwrap();
        }
        assert_eq!(
            meter.admit("USER", 10),
            Err(FlowRefusal::InsufficientCredits)
        );
        assert_eq!(meter.consumed("USER", 10, 0), None);
        let grant = meter.consumed("USER", 10, 0).expect("half consumed");
        assert_eq!(
            grant,
            Grant {
                channel: "USER".into(),
                add_messages: 2,
                add_bytes: 20
            }
        );
        assert_eq!(meter.admit("USER", 10), Ok(()));
        assert_eq!(meter.admit("USER", 10), Ok(()));
        assert_eq!(
            meter.admit("USER", 10),
            Err(FlowRefusal::InsufficientCredits)
        );
    }

    #[test]
    fn small_consumption_is_handed_back_after_the_delay() {
        let mut meter = ReceiveMeter::new(limited(100, 3));
        meter.admit("USER", 1).unwrap();
        assert_eq!(meter.consumed("USER", 1, 1000), None);
        assert_eq!(meter.next_flush_ms(), Some(1000 + GRANT_DELAY_MS));
        assert!(meter.flush(1000 + GRANT_DELAY_MS - 1).is_empty());
        let grants = meter.flush(1000 + GRANT_DELAY_MS);
        assert_eq!(
            grants,
            vec![Grant {
                channel: "USER".into(),
                add_messages: 1,
                add_bytes: 1
            }]
        );
        assert_eq!(meter.next_flush_ms(), None);
        // The whole advertised credit is available again.
        assert_eq!(meter.admit("USER", 3), Ok(()));
    }

    #[test]
    fn unlimited_meter_never_grants() {
        let mut meter = ReceiveMeter::new(Credit::UNLIMITED);
        for _ in 0..10_000 {
            meter.admit("USER", 100).unwrap();
            assert_eq!(meter.consumed("USER", 100, 0), None);
        }
    }

    #[test]
    fn refusal_reasons_use_contract_spelling() {
        assert_eq!(
            FlowRefusal::InsufficientCredits.as_str(),
            "INSUFFICIENT_CREDITS"
        );
        assert_eq!(FlowRefusal::ChannelPaused.as_str(), "CHANNEL_PAUSED");
    }
}
