//! The cutting client: the session as the client assembles it, what it sends (and sends
//! again), how it opens, cuts and resumes connections, and the checks made on every message
//! it reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::live::{dec, kind_name, ts_of, Live, Method};
use super::raw::{Got, RawConn};
use super::rng::Rng;
use crate::common::{
    envelope, hai_payload, ms, next_id, now_ms, seq, ty, Kind, Server, ALL_EVENTS, WAIT,
};

/// Wall-clock bound of one test.
pub(super) const BUDGET: Duration = Duration::from_secs(45);

pub(super) struct Client<'a> {
    /// The nodes serving the session: one, or several sharing a Redis (cluster mode).
    pub(super) nodes: &'a [Server],
    /// The node of the live connection.
    pub(super) node: usize,
    pub(super) name: &'static str,
    pub(super) seed: u64,
    pub(super) rng: Rng,
    pub(super) started: Instant,
    /// The session; empty until the server's first HAI.
    pub(super) session: String,
    /// Every message of the session received, by seq (de-duplicated).
    pub(super) got: BTreeMap<u64, Value>,
    pub(super) highest: u64,
    /// Every client message; `outbox[i]` has seq i + 1.
    pub(super) outbox: Vec<Value>,
    /// The highest client seq the server is known to have processed.
    pub(super) acked: u64,
    pub(super) pings: Vec<String>,
    pub(super) pongs: HashMap<String, usize>,
    /// Run ids in the order their RUN_STARTED arrived.
    pub(super) runs: Vec<String>,
    pub(super) finished: HashSet<String>,
    pub(super) cuts: BTreeMap<&'static str, usize>,
    pub(super) resumes: BTreeMap<String, usize>,
    /// Messages received again because a lower last_rx_seq was reported (identical copies).
    pub(super) allowed_repeats: usize,
    pub(super) retransmits: usize,
    /// Cuts before the confirming HAI was read (in the middle of a replay or before it).
    pub(super) cuts_unconfirmed: usize,
    pub(super) longest_replay: usize,
    pub(super) away_pauses: usize,
    pub(super) trace: Vec<String>,
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.context());
        }
    }
}

impl<'a> Client<'a> {
    pub(super) fn new(nodes: &'a [Server], name: &'static str, seed: u64) -> Client<'a> {
        Client {
            nodes,
            node: 0,
            name,
            seed,
            rng: Rng::new(seed),
            started: Instant::now(),
            session: String::new(),
            got: BTreeMap::new(),
            highest: 0,
            outbox: Vec::new(),
            acked: 0,
            pings: Vec::new(),
            pongs: HashMap::new(),
            runs: Vec::new(),
            finished: HashSet::new(),
            cuts: BTreeMap::new(),
            resumes: BTreeMap::new(),
            allowed_repeats: 0,
            retransmits: 0,
            cuts_unconfirmed: 0,
            longest_replay: 0,
            away_pauses: 0,
            trace: Vec::new(),
        }
    }

    pub(super) fn context(&self) -> String {
        let tail: Vec<&String> = self.trace.iter().rev().take(25).rev().collect();
        let tail: Vec<&str> = tail.iter().map(|s| s.as_str()).collect();
        format!(
            "resume_cuts::{} failed with seed {:#x} (rerun with HAIP_CUTS_SEED={:#x}); \
             session {}, highest seq {}, client seq {}, acked {}, cuts {:?}\nlast events:\n  {}",
            self.name,
            self.seed,
            self.seed,
            self.session,
            self.highest,
            self.outbox.len(),
            self.acked,
            self.cuts,
            tail.join("\n  ")
        )
    }

    pub(super) fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{msg}\n(seed {:#x})", self.seed)
    }

    pub(super) fn note(&mut self, s: String) {
        self.trace.push(s);
    }

    pub(super) fn total_cuts(&self) -> usize {
        self.cuts.values().sum()
    }

    pub(super) fn run_done(&self, run: usize) -> bool {
        self.runs
            .get(run)
            .is_some_and(|r| self.finished.contains(r))
    }

    pub(super) fn check_budget(&self) {
        if self.started.elapsed() > BUDGET {
            self.fail(format!(
                "time budget of {BUDGET:?} exceeded after {} cuts",
                self.total_cuts()
            ));
        }
    }

    // --- sending ------------------------------------------------------------------------

    /// Builds the next client envelope and keeps it for retransmission.
    pub(super) fn new_msg(&mut self, channel: &str, ty: &str, payload: Value) -> Value {
        let seq = self.outbox.len() as u64 + 1;
        let session = if self.session.is_empty() {
            "pending"
        } else {
            self.session.as_str()
        };
        let v = envelope(&next_id("cut"), session, seq, channel, ty, payload);
        self.outbox.push(v.clone());
        v
    }

    pub(super) async fn send(&mut self, live: &mut Live, v: &Value) {
        if let Some(reply) = live.conn.send(v, &self.session).await {
            if reply.status != 200 {
                self.fail(format!("POST /haip/messages refused {v}: {reply:?}"));
            }
            if let Some(a) = dec(&reply.body["ack"]) {
                self.acked = self.acked.max(a);
            }
        }
    }

    pub(super) async fn ping(&mut self, live: &mut Live) {
        let nonce = format!("p{}", self.pings.len());
        self.pings.push(nonce.clone());
        let v = self.new_msg("SYSTEM", "PING", json!({ "nonce": nonce }));
        self.send(live, &v).await;
    }

    /// The user's text as MESSAGE_START (first piece), two MESSAGE_PARTs, MESSAGE_END.
    pub(super) async fn say(&mut self, live: &mut Live, text: &str) {
        let message_id = next_id("user-msg");
        let len = text.len() as u64;
        let mut cut_a = 1 + self.rng.below(len - 2) as usize;
        let mut cut_b = 1 + self.rng.below(len - 2) as usize;
        if cut_a > cut_b {
            std::mem::swap(&mut cut_a, &mut cut_b);
        }
        let pieces = [&text[..cut_a], &text[cut_a..cut_b], &text[cut_b..]];
        let start = self.new_msg(
            "USER",
            "MESSAGE_START",
            json!({"message_id": message_id, "text": pieces[0]}),
        );
        self.send(live, &start).await;
        for p in &pieces[1..] {
            let part = self.new_msg(
                "USER",
                "MESSAGE_PART",
                json!({"message_id": message_id, "text": p}),
            );
            self.send(live, &part).await;
        }
        let end = self.new_msg("USER", "MESSAGE_END", json!({ "message_id": message_id }));
        self.send(live, &end).await;
    }

    /// Sends again every client message after `processed`, in order.
    pub(super) async fn retransmit_after(&mut self, live: &mut Live, processed: u64) {
        let again: Vec<Value> = self.outbox[processed as usize..].to_vec();
        self.retransmits += again.len();
        for v in &again {
            self.send(live, v).await;
        }
    }

    // --- connections --------------------------------------------------------------------

    /// The node of the live connection.
    pub(super) fn srv(&self) -> &'a Server {
        &self.nodes[self.node]
    }

    pub(super) async fn open_first(&mut self, kind: Kind) -> Live {
        let conn = RawConn::open(self.srv(), kind, Vec::new(), None).await;
        let mut live = Live {
            conn,
            kind,
            method: Method::Fresh,
            reported: 0,
            next: 1,
            t0: now_ms(),
            confirmed: true,
            replay_max_ts: 0,
            fresh: None,
            read: 0,
            acked_at_connect: 0,
        };
        if kind == Kind::Sse {
            // Posts need the session: wait for the server's HAI.
            self.read_one(&mut live).await;
        }
        let hai = self.new_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS));
        self.send(&mut live, &hai).await;
        self.note(format!("open {kind:?}"));
        live
    }

    /// Drops the connection abruptly: no close frame, no end of the request body.
    pub(super) fn cut(&mut self, live: Live) {
        let reset = self.rng.percent(50);
        *self.cuts.entry(kind_name(live.kind)).or_default() += 1;
        if !live.confirmed {
            self.cuts_unconfirmed += 1;
        }
        self.note(format!(
            "cut {:?}/{:?} after {} messages (confirmed: {}, highest {}, {})",
            live.kind,
            live.method,
            live.read,
            live.confirmed,
            self.highest,
            if reset { "RST" } else { "FIN" }
        ));
        live.conn.cut(reset);
    }

    pub(super) async fn reconnect(&mut self, kind: Kind) -> Live {
        // Whatever an earlier connection caused the server to send is stamped before this.
        let t_cut = now_ms();
        while now_ms() <= t_cut {
            tokio::time::sleep(ms(1)).await;
        }
        let method = match kind {
            Kind::Sse if self.rng.percent(50) => Method::LastEventId,
            Kind::Sse => Method::Query,
            _ if self.rng.percent(50) => Method::Hai,
            _ => Method::Query,
        };
        let reported = if self.highest > 0 && self.rng.percent(20) {
            self.highest - self.rng.below(self.highest.min(6) + 1)
        } else {
            self.highest
        };
        if self.nodes.len() > 1 && self.rng.percent(50) {
            // Cluster mode: the client lands on another node.
            self.node = (self.node + 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize)
                % self.nodes.len();
            self.note(format!("to node {}", self.node));
        }
        let t0 = now_ms();
        let s = self.session.clone();
        let conn = match method {
            Method::Query => {
                let params = vec![
                    ("session".to_string(), s.clone()),
                    ("last_rx_seq".to_string(), reported.to_string()),
                ];
                RawConn::open(self.srv(), kind, params, None).await
            }
            Method::LastEventId => {
                RawConn::open(
                    self.srv(),
                    kind,
                    Vec::new(),
                    Some(format!("{s}:{reported}")),
                )
                .await
            }
            Method::Hai | Method::Fresh => RawConn::open(self.srv(), kind, Vec::new(), None).await,
        };
        let mut live = Live {
            conn,
            kind,
            method,
            reported,
            next: reported + 1,
            t0,
            confirmed: false,
            replay_max_ts: 0,
            fresh: None,
            read: 0,
            acked_at_connect: self.acked,
        };
        *self
            .resumes
            .entry(format!("{}/{method:?}", kind_name(kind)))
            .or_default() += 1;
        self.note(format!(
            "resume {kind:?}/{method:?} last_rx_seq={reported} (highest {}, client seq {}, acked {})",
            self.highest,
            self.outbox.len(),
            self.acked
        ));
        match method {
            Method::Hai => {
                let mut p = hai_payload(&ALL_EVENTS);
                p["last_rx_seq"] = json!(reported.to_string());
                let hai = self.new_msg("SYSTEM", "HAI", p);
                self.send(&mut live, &hai).await;
            }
            Method::Query if kind == Kind::Stream => {
                // The NDJSON response starts once a first request line is in: the oldest
                // message not known to be processed, else a new PING.
                if (self.acked as usize) < self.outbox.len() {
                    let v = self.outbox[self.acked as usize].clone();
                    self.retransmits += 1;
                    self.send(&mut live, &v).await;
                } else {
                    self.ping(&mut live).await;
                }
            }
            _ => {}
        }
        live
    }

    // --- receiving ----------------------------------------------------------------------

    pub(super) async fn read_one(&mut self, live: &mut Live) {
        match live.conn.next_within(WAIT).await {
            Some(Got::Msg(v, id)) => {
                if live.kind == Kind::Sse {
                    let expected = format!("{}:{}", v["session"].as_str().unwrap_or(""), seq(&v));
                    if id.as_deref() != Some(expected.as_str()) {
                        self.fail(format!("SSE event id {id:?}, expected {expected:?}: {v}"));
                    }
                }
                self.on_msg(live, v).await
            }
            other => {
                let what = match other {
                    None => format!("nothing within {WAIT:?}"),
                    Some(Got::Garbage(t)) => format!("a frame that is not JSON: {t:?}"),
                    Some(Got::End(code)) => format!("the end of the connection (close {code:?})"),
                    Some(Got::Msg(..)) => unreachable!(),
                };
                self.fail(format!(
                    "{:?}/{:?} connection: expected a message, got {what} \
                     (read {} of the session on it, confirmed: {})",
                    live.kind, live.method, live.read, live.confirmed
                ))
            }
        }
    }

    pub(super) async fn read_until_confirmed(&mut self, live: &mut Live) {
        while !live.confirmed {
            self.read_one(live).await;
        }
    }

    pub(super) async fn on_msg(&mut self, live: &mut Live, m: Value) {
        let t = ty(&m).to_string();
        if t == "ERROR" {
            self.fail(format!(
                "{:?}/{:?}: unexpected ERROR {m}",
                live.kind, live.method
            ));
        }
        let s = seq(&m);
        let sess = m["session"].as_str().unwrap_or_default().to_string();
        if self.session.is_empty() {
            if t != "HAI" || s != 1 {
                self.fail(format!("the first message must be the server's HAI: {m}"));
            }
            self.session = sess.clone();
        }
        if sess != self.session {
            // Only a resume by HAI sees another session: the fresh one announced first.
            let ok = live.method == Method::Hai
                && !live.confirmed
                && match (s, t.as_str()) {
                    (1, "HAI") => {
                        live.fresh = Some(sess.clone());
                        true
                    }
                    (2, "TOOL_LIST") => live.fresh.as_deref() == Some(sess.as_str()),
                    _ => false,
                };
            if !ok {
                self.fail(format!(
                    "{:?}/{:?}: a message of another session (confirmed: {}): {m}",
                    live.kind, live.method, live.confirmed
                ));
            }
            return;
        }
        if s != live.next {
            self.fail(format!(
                "{:?}/{:?} resumed from {}: expected seq {}, got {s} (gap, reorder or \
                 duplicate; highest held {}): {m}",
                live.kind, live.method, live.reported, live.next, self.highest
            ));
        }
        live.next += 1;
        live.read += 1;
        let new = s > self.highest;
        if new {
            self.got.insert(s, m.clone());
            self.highest = s;
        } else {
            // Allowed only because this connection reported a lower last_rx_seq.
            debug_assert!(s > live.reported);
            if self.got.get(&s) != Some(&m) {
                self.fail(format!(
                    "seq {s} came again but differs: first {}, now {m}",
                    self.got[&s]
                ));
            }
            self.allowed_repeats += 1;
        }
        if let Some(a) = dec(&m["ack"]) {
            if a > self.outbox.len() as u64 {
                self.fail(format!(
                    "ack {a} beyond the last client seq {}: {m}",
                    self.outbox.len()
                ));
            }
            self.acked = self.acked.max(a);
        }

        if !live.confirmed {
            if t == "HAI" && ts_of(&m) >= live.t0 {
                self.confirm(live, &m).await;
            } else {
                // Replayed: sent before the resume was attached.
                live.replay_max_ts = live.replay_max_ts.max(ts_of(&m));
            }
        } else if t == "HAI" && new && live.method != Method::Fresh {
            self.fail(format!(
                "a second confirming HAI on one connection (t0 {}, read {}): {m}",
                live.t0, live.read
            ));
        }

        if !new {
            return;
        }
        match t.as_str() {
            "RUN_STARTED" => {
                let rid = m["run_id"].as_str().unwrap_or_else(|| {
                    self.fail(format!("RUN_STARTED without run_id: {m}"));
                });
                self.runs.push(rid.to_string());
            }
            "RUN_FINISHED" => {
                let rid = m["run_id"].as_str().unwrap_or_default().to_string();
                self.finished.insert(rid);
            }
            "PONG" => {
                let nonce = m["payload"]["nonce"].as_str().unwrap_or_default();
                *self.pongs.entry(nonce.to_string()).or_default() += 1;
            }
            "REPLAY_REQUEST" => {
                // The server misses client messages: send them again (contract section 5).
                let from = dec(&m["payload"]["from_seq"]).unwrap_or(1).max(1);
                let to = dec(&m["payload"]["to_seq"])
                    .unwrap_or(self.outbox.len() as u64)
                    .min(self.outbox.len() as u64);
                self.note(format!("server asked for client seqs {from}..={to}"));
                let again: Vec<Value> = self.outbox[(from - 1) as usize..to as usize].to_vec();
                for v in &again {
                    self.send(live, v).await;
                }
            }
            _ => {}
        }
    }

    /// The HAI that confirms this connection's resume.
    pub(super) async fn confirm(&mut self, live: &mut Live, hai: &Value) {
        let s = seq(hai);
        if s != live.reported + live.read as u64 {
            self.fail(format!(
                "the confirming HAI must follow the replay directly: {hai}"
            ));
        }
        if ts_of(hai) < live.replay_max_ts {
            self.fail(format!(
                "a replayed message is newer ({}) than the confirming HAI: {hai}",
                live.replay_max_ts
            ));
        }
        let p = &hai["payload"];
        if p["haip_version"] != "1.1.2" {
            self.fail(format!("confirming HAI: {hai}"));
        }
        if p["capabilities"]["binary_frames"] != json!(live.kind.is_ws()) {
            self.fail(format!(
                "binary_frames must follow the new transport {:?}: {hai}",
                live.kind
            ));
        }
        let Some(processed) = dec(&p["last_rx_seq"]) else {
            self.fail(format!("the confirming HAI has no last_rx_seq: {hai}"));
        };
        if processed < live.acked_at_connect || processed > self.outbox.len() as u64 {
            self.fail(format!(
                "last_rx_seq {processed} of the confirming HAI: the server had acknowledged \
                 {} and the client sent {}: {hai}",
                live.acked_at_connect,
                self.outbox.len()
            ));
        }
        if let Some(fresh) = &live.fresh {
            if self.srv().state.engine.get(fresh).is_some() {
                self.fail(format!(
                    "the fresh session {fresh} announced before the resume by HAI is kept"
                ));
            }
        }
        live.confirmed = true;
        self.longest_replay = self.longest_replay.max(live.read - 1);
        self.acked = self.acked.max(processed);
        self.note(format!(
            "confirmed seq {s} after {} replayed, last_rx_seq {processed}",
            live.read - 1
        ));
        self.retransmit_after(live, processed).await;
        if live.kind != Kind::Stream || live.method != Method::Query {
            if self.rng.percent(30) {
                self.ping(live).await;
            }
        } else if self.rng.percent(15) {
            self.ping(live).await;
        }
    }
}
