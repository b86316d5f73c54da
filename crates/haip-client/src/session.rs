//! The client side of one HAIP session, with no I/O: what to write, what to hand to the
//! application, and what to remember so that nothing is lost across reconnects.
//!
//! The async layer feeds it frames and the time and writes what it returns. It
//! - numbers outgoing messages when they leave the flow-control gate (the server's credit),
//!   and keeps them until the server acknowledges them (`ack`), so that after a reconnect
//!   everything after the server's `last_rx_seq` is sent again;
//! - queues what the application sends while disconnected (bounded) and sends it, in order,
//!   once the new connection's handshake is done;
//! - orders incoming messages by seq, drops duplicates, and asks for gaps (REPLAY_REQUEST);
//! - answers PING, grants credit back as the application consumes, and times its own PINGs.

use std::collections::VecDeque;

use bytes::Bytes;

use haip_protocol::flow::{Credit, ReceiveMeter, SendGate};
use haip_protocol::handshake::{self, Offer, PeerTerms};
use haip_protocol::payload::{FlowUpdate, Nonce, ReplayRequest};
use haip_protocol::sequencer::{Arrival, Sequencer};
use haip_protocol::{channel, Envelope, Payload};
use serde_json::Map;

/// Settings of the client side of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Credit the server may use towards this client, per channel.
    pub credit: Credit,
    /// Messages the application may send ahead of the server (queued while disconnected,
    /// held for credit, or waiting for their ack) before `send` refuses.
    pub max_pending: usize,
    /// Out-of-order server messages held while a gap is open.
    pub max_held: usize,
    /// Whether this client takes binary frames (WebSocket only).
    pub binary_frames: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            credit: Credit::new(Some(1000), Some(1024 * 1024)),
            max_pending: 1000,
            max_held: 1000,
            binary_frames: false,
        }
    }
}

/// A message from the server, with the text it came as and what it costs in credit.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub env: Envelope,
    /// The envelope's JSON as received: handed to the application as is, never rebuilt.
    pub raw: Bytes,
    /// What it counts against the credit this client advertised (contract section 6).
    pub cost: u64,
}

impl Incoming {
    /// A message and the exact text it arrived as.
    pub fn new(env: Envelope, raw: Bytes) -> Incoming {
        let cost = env.flow_cost(raw.len());
        Incoming { env, raw, cost }
    }

    /// A message whose text is not at hand (binary data merged into it): serialized once.
    pub fn from_envelope(env: Envelope) -> Incoming {
        let raw = Bytes::from(env.to_json());
        Incoming::new(env, raw)
    }
}

/// What the async layer must do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Write this envelope on the connection.
    Write(Envelope),
    /// Hand this server message to the application, in order.
    Deliver(Incoming),
    /// The server answered a PING of ours after this many ms.
    Latency(u64),
    /// The server started a new session: the old one could not be resumed. Its id.
    SessionReplaced { old: String, new: String },
}

/// Why `send` refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{0} messages are already waiting to be sent or acknowledged")]
    QueueFull(usize),
}

pub struct ClientSession {
    config: SessionConfig,
    /// The server's id for this session, once its HAI arrived.
    session: Option<String>,
    last_seq: u64,
    /// Sent and not yet acknowledged: written again after a reconnect.
    unacked: VecDeque<Envelope>,
    /// Not sent yet: waiting for a connection and its handshake.
    outbox: VecDeque<Envelope>,
    gate: SendGate<Envelope>,
    meter: ReceiveMeter,
    inbound: Sequencer<Incoming>,
    terms: PeerTerms,
    /// A connection is up and the server's HAI for it has arrived.
    ready: bool,
    ping_in_flight: Option<(String, u64)>,
    next_id: u64,
    /// The seq of the HAI that opened the current connection.
    hai_seq: u64,
}

impl ClientSession {
    pub fn new(config: SessionConfig) -> ClientSession {
        ClientSession {
            gate: SendGate::new(Credit::UNLIMITED),
            meter: ReceiveMeter::new(config.credit),
            inbound: Sequencer::new(config.max_held),
            session: None,
            last_seq: 0,
            unacked: VecDeque::new(),
            outbox: VecDeque::new(),
            terms: PeerTerms::defaults(),
            ready: false,
            ping_in_flight: None,
            next_id: 0,
            hai_seq: 0,
            config,
        }
    }

    /// The server's session id, once known.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The highest server seq received in order: the resume point.
    pub fn last_rx_seq(&self) -> Option<u64> {
        self.inbound.last_delivered()
    }

    /// Whether the server accepts binary frames from us (two-frame audio on WebSocket).
    pub fn peer_takes_binary(&self) -> bool {
        self.terms.binary_frames
    }

    /// Messages sent but not acknowledged, plus those not sent yet.
    pub fn pending(&self) -> usize {
        self.unacked.len() + self.outbox.len() + self.gate.held_messages()
    }

    /// Whether the current connection's handshake is done.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    /// A housekeeping message of this client on SYSTEM (PING, PONG, FLOW_UPDATE,
    /// REPLAY_REQUEST); seq and session are filled in when it leaves.
    fn system_envelope(&mut self, payload: Payload, now_ms: u64) -> Envelope {
        Envelope::new(
            self.fresh_id("msg"),
            "-",
            0,
            now_ms,
            channel::SYSTEM,
            payload,
        )
    }

    /// A new connection is open: the HAI to send first (naming the session and resume
    /// point when there is one).
    pub fn connected(&mut self, now_ms: u64) -> Envelope {
        self.ready = false;
        let hai = handshake::hai(&Offer {
            binary_frames: self.config.binary_frames,
            credit: self.meter.advertised(),
            max_concurrent_runs: 10,
            last_rx_seq: self.session.as_ref().and(self.last_rx_seq()),
        });
        let id = self.fresh_id("handshake");
        let mut env = Envelope::new(
            id,
            self.session.clone().unwrap_or_else(|| "-".into()),
            0,
            now_ms,
            channel::SYSTEM,
            Payload::Hai(hai),
        );
        // The HAI is numbered like any message and kept until acknowledged, so that a gap
        // it leaves (written, then the connection broke) can be filled. A HAI that nothing
        // followed gives its seq to the next one instead: failed attempts use no numbers.
        if self
            .unacked
            .back()
            .is_some_and(|m| m.seq == self.last_seq && matches!(m.payload, Payload::Hai(_)))
        {
            self.unacked.pop_back();
            self.last_seq -= 1;
        }
        self.last_seq += 1;
        env.seq = self.last_seq;
        self.hai_seq = env.seq;
        self.unacked.push_back(env.clone());
        env
    }

    /// The connection is gone: what was sent and not acknowledged will be sent again.
    pub fn disconnected(&mut self) {
        self.ready = false;
        self.ping_in_flight = None;
    }

    /// Queues an application message; returns what to write now.
    pub fn send(
        &mut self,
        channel: &str,
        payload: Payload,
        now_ms: u64,
    ) -> Result<Vec<Output>, SendError> {
        if self.pending() >= self.config.max_pending {
            return Err(SendError::QueueFull(self.pending()));
        }
        let env = Envelope::new(String::new(), "-", 0, now_ms, channel, payload);
        self.submit(env, now_ms)
    }

    /// Queues an application envelope (its `run_id`, `thread_id` kept; an empty id gets
    /// one); returns what to write now.
    pub fn submit(&mut self, mut env: Envelope, now_ms: u64) -> Result<Vec<Output>, SendError> {
        if self.pending() >= self.config.max_pending {
            return Err(SendError::QueueFull(self.pending()));
        }
        if env.id.is_empty() {
            env.id = self.fresh_id("msg");
        }
        Ok(self.send_envelope(env, now_ms))
    }

    /// Queues a prepared envelope (run_id, thread_id set by the caller); seq, session and
    /// ts are filled in when it leaves.
    fn send_envelope(&mut self, env: Envelope, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.ready {
            self.outbox.push_back(env);
            return out;
        }
        self.offer(env, now_ms, &mut out);
        out
    }

    fn offer(&mut self, env: Envelope, now_ms: u64, out: &mut Vec<Output>) {
        let cost = env.flow_cost(env.to_json().len());
        let ch = env.channel.clone();
        if let Some(env) = self.gate.offer(&ch, cost, env) {
            self.write_new(env, now_ms, out);
        }
    }

    fn write_new(&mut self, mut env: Envelope, now_ms: u64, out: &mut Vec<Output>) {
        self.last_seq += 1;
        env.seq = self.last_seq;
        env.ts = now_ms;
        if let Some(s) = &self.session {
            env.session = s.clone();
        }
        env.ack = self.last_rx_seq();
        self.unacked.push_back(env.clone());
        out.push(Output::Write(env));
    }

    /// A PING to time the connection (heartbeat latency).
    pub fn ping(&mut self, now_ms: u64) -> Vec<Output> {
        let nonce = self.fresh_id("ping");
        self.ping_in_flight = Some((nonce.clone(), now_ms));
        let payload = Payload::Ping(Nonce {
            nonce: Some(nonce),
            extra: Map::new(),
        });
        let env = self.system_envelope(payload, now_ms);
        self.send_envelope(env, now_ms)
    }

    /// One envelope from the server, serialized again to learn its size: for callers
    /// that do not have its text.
    pub fn received(&mut self, env: Envelope, now_ms: u64) -> Vec<Output> {
        self.receive(Incoming::from_envelope(env), now_ms)
    }

    /// One message from the server.
    pub fn receive(&mut self, msg: Incoming, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(ack) = msg.env.ack {
            while self.unacked.front().is_some_and(|m| m.seq <= ack) {
                self.unacked.pop_front();
            }
        }
        if msg.env.seq == 0 {
            // Outside the session's numbering: the connect-time RESUME_FAILED.
            out.push(Output::Deliver(msg));
            return out;
        }
        if let Payload::Hai(_) = &msg.env.payload {
            if self
                .session
                .as_deref()
                .is_some_and(|s| s != msg.env.session)
            {
                // A fresh session replaced ours: its numbering starts over.
                let old = self.session.take().unwrap_or_default();
                self.inbound = Sequencer::new(self.config.max_held);
                out.push(Output::SessionReplaced {
                    old,
                    new: msg.env.session.clone(),
                });
            }
        }
        // Charged against the credit this client advertised; handed back as the
        // application consumes (see `consumed`), the same measure both ways.
        let channel = msg.env.channel.clone();
        let cost = msg.cost;
        let _ = self.meter.admit(&channel, cost);
        match self.inbound.accept(msg.env.seq, msg, now_ms) {
            Arrival::Deliver(ready) => {
                for msg in ready {
                    self.process(msg, now_ms, &mut out);
                }
            }
            Arrival::Held => {}
            Arrival::Duplicate | Arrival::Overflow(_) => {
                // Never delivered, so never consumed: its credit goes back now.
                out.extend(self.consumed(&channel, cost, now_ms));
            }
        }
        out
    }

    fn process(&mut self, msg: Incoming, now_ms: u64, out: &mut Vec<Output>) {
        let env = &msg.env;
        match &env.payload {
            Payload::Hai(hai) => {
                if let Ok(terms) = handshake::accept_peer_hai(hai) {
                    let resume_from = hai.last_rx_seq;
                    self.session = Some(env.session.clone());
                    // Held messages the new credit releases have passed the gate (and paid
                    // for it): they are written as they are, in order.
                    let released = self.gate.reset_credit(terms.credit);
                    self.terms = terms;
                    self.on_ready(resume_from, released, now_ms, out);
                }
            }
            Payload::Ping(n) => {
                let pong = Payload::Pong(Nonce {
                    nonce: n.nonce.clone(),
                    extra: Map::new(),
                });
                let env = self.system_envelope(pong, now_ms);
                if self.ready {
                    self.write_new(env, now_ms, out);
                }
            }
            Payload::Pong(n) => {
                if let (Some(got), Some((sent, at))) = (&n.nonce, &self.ping_in_flight) {
                    if got == sent {
                        out.push(Output::Latency(now_ms.saturating_sub(*at)));
                        self.ping_in_flight = None;
                    }
                }
            }
            Payload::FlowUpdate(f) => {
                let released = self.gate.grant(
                    &f.channel,
                    f.add_messages.unwrap_or(0),
                    f.add_bytes.unwrap_or(0),
                );
                for env in released {
                    self.write_new(env, now_ms, out);
                }
            }
            Payload::PauseChannel(c) => {
                self.gate.pause(&c.channel);
            }
            Payload::ResumeChannel(c) => {
                for env in self.gate.resume(&c.channel) {
                    self.write_new(env, now_ms, out);
                }
            }
            Payload::ReplayRequest(r) => {
                let to = r.to_seq.unwrap_or(u64::MAX);
                let again: Vec<Envelope> = self
                    .unacked
                    .iter()
                    .filter(|m| m.seq >= r.from_seq && m.seq <= to)
                    .cloned()
                    .collect();
                out.extend(again.into_iter().map(Output::Write));
            }
            _ => {}
        }
        out.push(Output::Deliver(msg));
    }

    /// The server's HAI for this connection arrived: resend what it has not seen, then
    /// what waited for the connection.
    fn on_ready(
        &mut self,
        server_last_rx: Option<u64>,
        released: Vec<Envelope>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        self.ready = true;
        let seen = server_last_rx.unwrap_or(0);
        let session = self.session.clone().unwrap_or_default();
        let hai_seq = self.hai_seq;
        let again: Vec<Envelope> = self
            .unacked
            .iter()
            .filter(|m| m.seq > seen && m.seq != hai_seq)
            .cloned()
            .collect();
        if server_last_rx.is_none() {
            // A fresh session: this connection's HAI set its baseline; what was pending for
            // the old session is numbered after it (old HAIs are dropped).
            self.unacked.retain(|m| m.seq == hai_seq);
            for mut env in again {
                if matches!(env.payload, Payload::Hai(_)) {
                    continue;
                }
                env.session = session.clone();
                self.offer(env, now_ms, out);
            }
        } else {
            for mut env in again {
                env.session = session.clone();
                out.push(Output::Write(env));
            }
        }
        for env in released {
            self.write_new(env, now_ms, out);
        }
        while let Some(env) = self.outbox.pop_front() {
            self.offer(env, now_ms, out);
        }
    }

    /// The application took a message: credit goes back to the server as it consumes.
    pub fn consumed(&mut self, channel: &str, cost: u64, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(grant) = self.meter.consumed(channel, cost, now_ms) {
            self.grant(grant, now_ms, &mut out);
        }
        out
    }

    fn grant(&mut self, grant: haip_protocol::flow::Grant, now_ms: u64, out: &mut Vec<Output>) {
        let payload = Payload::FlowUpdate(FlowUpdate {
            channel: grant.channel,
            add_messages: Some(grant.add_messages),
            add_bytes: Some(grant.add_bytes),
            extra: Map::new(),
        });
        let env = self.system_envelope(payload, now_ms);
        if self.ready {
            self.write_new(env, now_ms, out);
        } else {
            self.outbox.push_back(env); // the server keeps its credit state across connections
        }
    }

    /// Timers: a gap open too long asks for a replay; small credit owed is handed back.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.ready {
            return out;
        }
        if let Some(missing) = self.inbound.poll_gap(now_ms) {
            let payload = Payload::ReplayRequest(ReplayRequest {
                from_seq: missing.from_seq,
                to_seq: Some(missing.to_seq),
                extra: Map::new(),
            });
            let env = self.system_envelope(payload, now_ms);
            self.write_new(env, now_ms, &mut out);
        }
        for grant in self.meter.flush(now_ms) {
            self.grant(grant, now_ms, &mut out);
        }
        out
    }

    /// When [`ClientSession::poll`] next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        match (self.inbound.next_deadline(), self.meter.next_flush_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haip_protocol::payload::{MessagePart, Nonce};
    use serde_json::json;

    fn server(seq: u64, ack: Option<u64>, ty: &str, payload: serde_json::Value) -> Envelope {
        let mut v = json!({"id": format!("s{seq}"), "session": "S", "seq": seq.to_string(),
            "ts": "0", "channel": if ty == "MESSAGE_PART" {"AGENT"} else {"SYSTEM"},
            "type": ty, "payload": payload});
        if let Some(a) = ack {
            v["ack"] = json!(a.to_string());
        }
        Envelope::parse(&v.to_string()).unwrap()
    }

    fn server_hai(seq: u64, last_rx: Option<u64>) -> Envelope {
        let mut p = json!({"haip_version": "1.1.2", "accept_major": [1],
            "accept_events": ["HAI", "ERROR", "PING", "PONG", "MESSAGE_PART", "FLOW_UPDATE",
                "REPLAY_REQUEST"]});
        if let Some(l) = last_rx {
            p["last_rx_seq"] = json!(l.to_string());
        }
        server(seq, None, "HAI", p)
    }

    fn part(seq: u64, text: &str) -> Envelope {
        server(
            seq,
            None,
            "MESSAGE_PART",
            json!({"message_id": "m", "text": text}),
        )
    }

    fn writes(out: &[Output]) -> Vec<(u64, String)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Write(e) => Some((e.seq, e.event_type().as_str().to_string())),
                _ => None,
            })
            .collect()
    }

    fn delivered(out: &[Output]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::Deliver(m) => Some(m.env.seq),
                _ => None,
            })
            .collect()
    }

    fn text(s: &str) -> Payload {
        Payload::MessagePart(MessagePart {
            message_id: "u".into(),
            text: s.into(),
            extra: Map::new(),
        })
    }

    #[test]
    fn messages_sent_before_the_handshake_leave_after_it_in_order() {
        let mut c = ClientSession::new(SessionConfig::default());
        assert!(c.send("USER", text("a"), 0).unwrap().is_empty());
        assert!(c.send("USER", text("b"), 0).unwrap().is_empty());
        let hai = c.connected(1);
        assert_eq!(hai.seq, 1);
        let out = c.received(server_hai(1, None), 2);
        assert_eq!(
            writes(&out),
            [(2, "MESSAGE_PART".into()), (3, "MESSAGE_PART".into())]
        );
        assert_eq!(c.session_id(), Some("S"));
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_wait_for_their_fill() {
        let mut c = ClientSession::new(SessionConfig::default());
        c.connected(0);
        c.received(server_hai(1, None), 0);
        assert_eq!(delivered(&c.received(part(2, "x"), 0)), [2]);
        assert!(delivered(&c.received(part(2, "x"), 0)).is_empty());
        assert!(delivered(&c.received(part(4, "z"), 0)).is_empty());
        // The gap stays open past 500 ms: a REPLAY_REQUEST for seq 3.
        let out = c.poll(600);
        let req = out.iter().find_map(|o| match o {
            Output::Write(e) => match &e.payload {
                Payload::ReplayRequest(r) => Some((r.from_seq, r.to_seq)),
                _ => None,
            },
            _ => None,
        });
        assert_eq!(req, Some((3, Some(3))));
        assert_eq!(delivered(&c.received(part(3, "y"), 700)), [3, 4]);
        assert_eq!(c.last_rx_seq(), Some(4));
    }

    #[test]
    fn after_a_reconnect_only_what_the_server_missed_is_sent_again() {
        let mut c = ClientSession::new(SessionConfig::default());
        c.connected(0);
        c.received(server_hai(1, None), 0);
        for t in ["a", "b", "c"] {
            c.send("USER", text(t), 0).unwrap(); // seqs 2, 3, 4
        }
        // The server acknowledged up to 2 on something it sent.
        c.received(server(2, Some(2), "PONG", json!({})), 0);
        c.disconnected();
        let hai = c.connected(10);
        assert_eq!(hai.session, "S");
        match &hai.payload {
            Payload::Hai(h) => assert_eq!(h.last_rx_seq, Some(2)),
            other => panic!("{other:?}"),
        }
        // The server had processed 3 but its ack never arrived: only 4 goes again.
        let out = c.received(server_hai(3, Some(3)), 11);
        assert_eq!(writes(&out), [(4, "MESSAGE_PART".into())]);
    }

    #[test]
    fn a_replaced_session_starts_numbering_over_and_renumbers_what_was_pending() {
        let mut c = ClientSession::new(SessionConfig::default());
        c.connected(0);
        c.received(server_hai(1, None), 0);
        c.received(part(2, "x"), 0);
        c.send("USER", text("lost?"), 0).unwrap(); // seq 2, never acknowledged
        c.disconnected();
        c.connected(5); // HAI seq 3
        let mut fresh = server_hai(1, None);
        fresh.session = "T".into();
        let out = c.received(fresh, 6);
        assert!(out.contains(&Output::SessionReplaced {
            old: "S".into(),
            new: "T".into()
        }));
        assert_eq!(writes(&out), [(4, "MESSAGE_PART".into())]);
        assert_eq!(c.last_rx_seq(), Some(1));
    }

    #[test]
    fn ping_is_answered_and_our_ping_is_timed() {
        let mut c = ClientSession::new(SessionConfig::default());
        c.connected(0);
        c.received(server_hai(1, None), 0);
        let out = c.received(server(2, None, "PING", json!({"nonce": "n1"})), 5);
        let pong = out.iter().find_map(|o| match o {
            Output::Write(e) => match &e.payload {
                Payload::Pong(Nonce { nonce, .. }) => nonce.clone(),
                _ => None,
            },
            _ => None,
        });
        assert_eq!(pong.as_deref(), Some("n1"));
        let out = c.ping(100);
        let nonce = match &out[0] {
            Output::Write(e) => match &e.payload {
                Payload::Ping(n) => n.nonce.clone().unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let out = c.received(server(3, None, "PONG", json!({"nonce": nonce})), 142);
        assert!(out.contains(&Output::Latency(42)));
    }

    #[test]
    fn the_servers_credit_is_honoured_and_grants_release_in_order() {
        let mut c = ClientSession::new(SessionConfig::default());
        c.connected(0);
        let mut hai = server_hai(1, None);
        if let Payload::Hai(h) = &mut hai.payload {
            h.capabilities = Some(haip_protocol::payload::Capabilities {
                flow_control: Some(haip_protocol::payload::FlowCredits {
                    initial_credit_messages: Some(1),
                    initial_credit_bytes: None,
                }),
                ..Default::default()
            });
        }
        c.received(hai, 0);
        assert_eq!(writes(&c.send("USER", text("a"), 0).unwrap()).len(), 1);
        assert!(writes(&c.send("USER", text("b"), 0).unwrap()).is_empty());
        assert!(writes(&c.send("USER", text("c"), 0).unwrap()).is_empty());
        let grant = server(
            2,
            None,
            "FLOW_UPDATE",
            json!({"channel": "USER", "add_messages": 5}),
        );
        let out = c.received(grant, 1);
        assert_eq!(
            writes(&out),
            [(3, "MESSAGE_PART".into()), (4, "MESSAGE_PART".into())]
        );
    }

    #[test]
    fn the_pending_bound_refuses_with_a_typed_error() {
        let mut c = ClientSession::new(SessionConfig {
            max_pending: 2,
            ..SessionConfig::default()
        });
        c.send("USER", text("a"), 0).unwrap();
        c.send("USER", text("b"), 0).unwrap();
        assert_eq!(c.send("USER", text("c"), 0), Err(SendError::QueueFull(2)));
    }
}

#[cfg(test)]
mod hai_tests {
    use super::*;

    #[test]
    fn failed_attempts_reuse_the_hai_seq_and_a_lost_hai_is_resent() {
        let mut c = ClientSession::new(SessionConfig::default());
        assert_eq!(c.connected(0).seq, 1);
        assert_eq!(c.connected(1).seq, 1, "nothing followed: same seq");
        let hai = Envelope::parse(
            r#"{"id":"s1","session":"S","seq":"1","ts":"0","channel":"SYSTEM","type":"HAI",
            "payload":{"haip_version":"1.1.2","accept_major":[1],"accept_events":["HAI"]}}"#,
        )
        .unwrap();
        c.received(hai, 2);
        c.disconnected();
        // The server never processed our HAI (seq 1): its HAI says last_rx_seq 0.
        assert_eq!(c.connected(3).seq, 1, "still nothing after the first HAI");
    }
}
