//! Rules of contract sections 5 (sequencing, acks, replay, runs) and 6 (flow control), and
//! the resume failures of section 3, that the other test files do not check in a way that
//! would fail if the rule were broken. Each check is one async function run once per
//! transport where it applies, as in protocol.rs.
//!
//! HTTP streaming answers only once the first request line has arrived, so on that transport
//! the first thing a check sends also opens the response.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

/// Runs `check(kind)` as one test per transport.
macro_rules! on_transports {
    ($module:ident, $check:ident, [$($test:ident => $kind:expr),+ $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() {
                    $check($kind).await
                }
            )+
        }
    };
    ($module:ident, $check:ident) => {
        on_transports!($module, $check, [
            websocket => Kind::Ws,
            sse => Kind::Sse,
            stream => Kind::Stream,
        ]);
    };
}

async fn expect_error(c: &mut Conn, code: &str) -> Value {
    let e = c.recv_type("ERROR").await;
    assert_eq!(e["payload"]["code"], code, "{e}");
    assert_eq!(chan(&e), "SYSTEM", "{e}");
    e
}

fn call_of<'a>(id: &'a str, t: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| ty(v) == t && v["payload"]["call_id"] == id
}

fn agent_msgs(msgs: &[Value]) -> Vec<Value> {
    msgs.iter()
        .filter(|v| chan(v) == "AGENT")
        .cloned()
        .collect()
}

fn count(c: &Conn, pred: impl Fn(&Value) -> bool) -> usize {
    c.log.iter().filter(|v| pred(v)).count()
}

fn errors(c: &Conn) -> Vec<&Value> {
    c.log.iter().filter(|v| ty(v) == "ERROR").collect()
}

fn dec(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
}

/// Reads until `c.log` holds at least `n` messages matching `pred` (within [`WAIT`]).
async fn until_logged(c: &mut Conn, what: &str, n: usize, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    while count(c, &pred) < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.frame_within(left).await {
            Some(Frame::Json(_)) | Some(Frame::Binary(_)) => {}
            other => panic!(
                "{:?}: {} of {n} {what} when reading stopped ({other:?}); log: {:?}",
                c.kind,
                count(c, &pred),
                c.log
            ),
        }
    }
}

/// PING "open" (which also opens an HTTP streaming response) and the server's HAI.
async fn open(c: &mut Conn) -> Value {
    c.ping("open").await;
    let hai = c.recv_type("HAI").await;
    c.recv_where(|v| ty(v) == "PONG" && v["payload"]["nonce"] == "open")
        .await;
    hai
}

fn session_of(c: &Conn) -> String {
    c.session.clone().expect("a HAI named the session")
}

// =======================================================================================
// Section 5: sequencing and acks
// =======================================================================================

/// "The first seq a client sends on a fresh session sets the baseline": 7 works as well as
/// 0 or 1, and a seq below it counts as already processed.
async fn seq_baseline_seven(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.seq = 6;
    c.ping("seven").await;
    let pong = c.recv_type("PONG").await;
    assert_eq!(pong["payload"]["nonce"], "seven");
    assert_eq!(pong["ack"], "7");
    c.ping("eight").await;
    assert_eq!(c.recv_type("PONG").await["ack"], "8");
    c.send(&envelope(
        "below",
        "test-session",
        5,
        "SYSTEM",
        "PING",
        json!({"nonce": "five"}),
    ))
    .await;
    c.ping("nine").await;
    let pong = c.recv_type("PONG").await;
    assert_eq!(
        pong["payload"]["nonce"], "nine",
        "seq 5 is dropped silently"
    );
    assert_eq!(pong["ack"], "9");
    assert!(errors(&c).is_empty(), "{:?}", c.log);
}

on_transports!(seq_baseline_is_the_first_seq, seq_baseline_seven);

/// "The server sets ack on what it sends to the highest client seq it has processed in
/// order": on every kind of message (PONG, TOOL_*, ERROR, TOOL_LIST, the run, FLOW_UPDATE),
/// never decreasing, never beyond what the client sent, and covering the request each answer
/// answers. A replayed copy keeps its original ack.
async fn ack_on_everything(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.send_msg("SYSTEM", "HAI", hai_payload(&ALL_EVENTS)).await; // 1
    c.ping("p").await; // 2
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "call-add", "tool": "add", "params": {"a": 1, "b": 2}}),
    )
    .await; // 3
    c.recv_where(call_of("call-add", "TOOL_DONE")).await;
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "call-nope", "tool": "nope", "params": {}}),
    )
    .await; // 4
    expect_error(&mut c, "TOOL_NOT_FOUND").await;
    c.send_msg("SYSTEM", "TOOL_LIST", json!({"tools": []}))
        .await; // 5
    c.recv_where(|v| ty(v) == "TOOL_LIST" && seq(v) > 2).await;
    c.say("a b").await; // 6, 7
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    // Credit for the USER messages comes back (delayed grant), then a replay.
    c.collect_for(ms(200)).await;
    c.send_msg(
        "SYSTEM",
        "REPLAY_REQUEST",
        json!({"from_seq": "3", "to_seq": "4"}),
    )
    .await; // 8
    c.collect_for(ms(200)).await;

    let mut newest = 0;
    let mut last_ack = 0;
    let mut first_copy = std::collections::HashMap::new();
    for m in &c.log {
        let s = seq(m);
        if s <= newest {
            assert_eq!(first_copy.get(&s), Some(&m), "a replay is identical");
            continue;
        }
        newest = s;
        first_copy.insert(s, m);
        if s <= 2 {
            assert!(
                m.get("ack").is_none(),
                "sent before anything was processed: {m}"
            );
            continue;
        }
        let a = dec(&m["ack"]);
        assert!(a >= last_ack, "ack went back from {last_ack}: {m}");
        assert!(a <= 8, "ack beyond the last client seq: {m}");
        last_ack = a;
    }
    let ack_of = |pred: &dyn Fn(&Value) -> bool| {
        let m = c
            .log
            .iter()
            .find(|v| pred(v))
            .unwrap_or_else(|| panic!("missing in {:?}", c.log));
        dec(&m["ack"])
    };
    assert!(ack_of(&|v| ty(v) == "PONG") >= 2);
    assert!(ack_of(&call_of("call-add", "TOOL_UPDATE")) >= 3);
    assert!(ack_of(&call_of("call-add", "TOOL_DONE")) >= 3);
    assert!(ack_of(&|v| ty(v) == "ERROR") >= 4);
    assert!(ack_of(&|v| ty(v) == "TOOL_LIST" && seq(v) > 2) >= 5);
    assert!(ack_of(&|v| ty(v) == "RUN_STARTED") >= 7);
    assert!(ack_of(&|v| ty(v) == "RUN_FINISHED") >= 7);
    let grant = c
        .log
        .iter()
        .find(|v| ty(v) == "FLOW_UPDATE")
        .unwrap_or_else(|| panic!("credit is handed back as it is consumed: {:?}", c.log));
    assert_eq!(chan(grant), "SYSTEM");
    assert_eq!(grant["payload"]["channel"], "USER", "{grant}");
    assert!(dec(&grant["ack"]) >= 3, "{grant}");
    assert_contiguous(&c.log);
}

on_transports!(ack_on_every_message, ack_on_everything);

// =======================================================================================
// Section 5: gaps and duplicates
// =======================================================================================

/// A gap of three messages arriving in reverse order (and one of them twice): all are held,
/// REPLAY_REQUEST asks for the first missing seq after ~500 ms while ack stays at the last
/// seq processed in order, and once the gap fills they are processed in seq order, once.
async fn gap_held_then_processed_in_order(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let part = |c: &mut Conn, text: &str| {
        c.msg(
            "USER",
            "MESSAGE_PART",
            json!({"message_id": "gap", "text": text}),
        )
    };
    let start = c.msg(
        "USER",
        "MESSAGE_START",
        json!({"message_id": "gap", "text": "alpha "}),
    ); // 1
    let beta = part(&mut c, "beta "); // 2
    let gamma = part(&mut c, "gamma "); // 3
    let delta = part(&mut c, "delta"); // 4
    let end = c.msg("USER", "MESSAGE_END", json!({"message_id": "gap"})); // 5
    let after = c.msg("SYSTEM", "PING", json!({"nonce": "after"})); // 6
    c.send(&start).await;
    let t0 = Instant::now();
    for m in [&end, &delta, &gamma, &delta] {
        c.send(m).await;
    }
    let msgs = c.collect_until(|v| ty(v) == "REPLAY_REQUEST").await;
    let waited = t0.elapsed();
    assert!(
        waited >= ms(400) && waited <= ms(1500),
        "asked after {waited:?}"
    );
    assert!(
        !msgs.iter().any(|v| chan(v) == "AGENT"),
        "the held messages wait for seq 2: {msgs:?}"
    );
    let rr = msgs.last().unwrap();
    assert_eq!(chan(rr), "SYSTEM");
    assert_eq!(rr["payload"]["from_seq"], "2", "{rr}");
    if let Some(to) = rr["payload"].get("to_seq") {
        assert_eq!(to, "2", "{rr}");
    }
    assert_eq!(
        rr["ack"], "1",
        "held messages are not processed in order yet: {rr}"
    );
    c.send(&beta).await;
    c.send(&after).await;
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let parts: Vec<&str> = run
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(parts, ["alpha ", "beta ", "gamma ", "delta"], "seq order");
    c.collect_for(ms(150)).await;
    let pong = c
        .log
        .iter()
        .find(|v| ty(v) == "PONG")
        .expect("PONG for seq 6");
    assert_eq!(pong["ack"], "6");
    assert_eq!(count(&c, |v| ty(v) == "RUN_STARTED"), 1, "{:?}", c.log);
    assert!(errors(&c).is_empty(), "{:?}", c.log);
    assert_contiguous(&c.log);
}

on_transports!(gap_in_order_once_filled, gap_held_then_processed_in_order);

/// "The server holds later messages (up to the replay window)": with a window of 4, four
/// messages beyond a gap are held without complaint and processed once it fills.
async fn gap_holds_up_to_the_window(kind: Kind) {
    let srv = Server::start_with(|c| c.replay_window_size = 4).await;
    let mut c = srv.connect(kind).await;
    let pings: Vec<Value> = (1..=6)
        .map(|i| c.msg("SYSTEM", "PING", json!({"nonce": format!("n{i}")})))
        .collect();
    c.send(&pings[0]).await;
    c.recv_type("PONG").await;
    for p in &pings[2..] {
        c.send(p).await;
    }
    let held = c.collect_for(ms(150)).await;
    assert!(
        !held.iter().any(|v| matches!(ty(v), "PONG" | "ERROR")),
        "{held:?}"
    );
    c.send(&pings[1]).await;
    let mut nonces = Vec::new();
    while nonces.len() < 5 {
        let pong = c.recv_type("PONG").await;
        nonces.push(pong["payload"]["nonce"].as_str().unwrap().to_string());
    }
    assert_eq!(nonces, ["n2", "n3", "n4", "n5", "n6"]);
    assert!(errors(&c).is_empty(), "{:?}", c.log);
}

on_transports!(gap_held_within_window, gap_holds_up_to_the_window);

/// Client-side flow control towards the server, as the contract asks of a client: the
/// credit of the server's HAI plus every FLOW_UPDATE for USER; a message is sent only when it
/// fits, else the client waits for credit to come back.
struct UserCredit {
    messages: u64,
    bytes: u64,
    seen: usize,
}

impl UserCredit {
    fn from_hai(hai: &Value) -> UserCredit {
        let fc = &hai["payload"]["capabilities"]["flow_control"];
        UserCredit {
            messages: fc["initial_credit_messages"].as_u64().expect("credit"),
            bytes: fc["initial_credit_bytes"].as_u64().expect("credit"),
            seen: 0,
        }
    }

    fn absorb(&mut self, c: &Conn) {
        for m in &c.log[self.seen..] {
            if ty(m) == "FLOW_UPDATE" && m["payload"]["channel"] == "USER" {
                self.messages += m["payload"]["add_messages"].as_u64().unwrap_or(0);
                self.bytes += m["payload"]["add_bytes"].as_u64().unwrap_or(0);
            }
        }
        self.seen = c.log.len();
    }

    /// Sends `v` once it fits in the credit; panics if no credit comes back within 1.5 s.
    async fn send(&mut self, c: &mut Conn, v: &Value) {
        let cost = v.to_string().len() as u64;
        let deadline = Instant::now() + ms(1500);
        loop {
            self.absorb(c);
            if self.messages >= 1 && self.bytes >= cost {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{:?}: no credit handed back within 1.5 s (have {} messages, {} bytes; need \
                 1 and {cost}); log: {:?}",
                c.kind,
                self.messages,
                self.bytes,
                c.log
            );
            c.frame_within(left.min(ms(100))).await;
        }
        self.messages -= 1;
        self.bytes -= cost;
        let reply = c.send(v).await;
        if let Some(r) = reply {
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
}

/// Duplicates are dropped silently however many there are: the credit a client spent on
/// them must come back, or a client that honours its credit stalls after a few
/// retransmissions (and one that does not is refused with FLOW_CONTROL_VIOLATION).
async fn duplicates_give_credit_back(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_initial_credit_messages = 4).await;
    let mut c = srv.connect(kind).await;
    let hai = open(&mut c).await;
    let mut credit = UserCredit::from_hai(&hai);
    assert_eq!(credit.messages, 4);
    let first = c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "once", "tool": "add", "params": {"a": 1, "b": 1}}),
    );
    credit.send(&mut c, &first).await;
    until_logged(&mut c, "TOOL_DONE", 1, call_of("once", "TOOL_DONE")).await;
    // The same message again, as a client resending after a lost connection would.
    for _ in 0..8 {
        credit.send(&mut c, &first).await;
    }
    let next = c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "next", "tool": "add", "params": {"a": 2, "b": 2}}),
    );
    credit.send(&mut c, &next).await;
    until_logged(&mut c, "TOOL_DONE", 1, call_of("next", "TOOL_DONE")).await;
    c.collect_for(ms(100)).await;
    assert_eq!(count(&c, call_of("once", "TOOL_DONE")), 1, "processed once");
    assert!(errors(&c).is_empty(), "dropped silently: {:?}", errors(&c));
}

on_transports!(
    duplicates_dropped_silently_and_credited,
    duplicates_give_credit_back
);

// =======================================================================================
// Section 5: the replay window and REPLAY_REQUEST
// =======================================================================================

/// Re-sent copies of `from..=to` (messages with those seqs arriving after `after` log
/// entries), in order, each identical to its first copy.
async fn resent(c: &mut Conn, after: usize, from: u64, to: u64) -> Vec<Value> {
    let n = (to - from + 1) as usize;
    let pick = |c: &Conn| -> Vec<Value> {
        c.log[after..]
            .iter()
            .filter(|v| (from..=to).contains(&seq(v)))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while pick(c).len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.frame_within(left).await {
            Some(Frame::Json(v)) => assert_ne!(ty(&v), "ERROR", "{v}"),
            other => panic!(
                "{:?}: only {} of seqs {from}..={to} re-sent ({other:?}); log: {:?}",
                c.kind,
                pick(c).len(),
                c.log
            ),
        }
    }
    let copies = pick(c);
    for (i, m) in copies.iter().enumerate() {
        assert_eq!(seq(m), from + i as u64, "in order");
        let first = c.log[..after]
            .iter()
            .find(|v| seq(v) == seq(m))
            .expect("first copy");
        assert_eq!(m, first, "original id, seq, ts and payload");
    }
    copies
}

/// "A sent message is kept until it is both beyond the newest replay_window_size and older
/// than replay_window_time": a small size alone, or a zero time alone, evicts nothing, for
/// REPLAY_REQUEST as for a resume from 0.
async fn replay_window_needs_both_limits(kind: Kind) {
    for (size, time) in [(2, 300_000), (1000, 0)] {
        let srv = Server::start_with(|c| {
            c.replay_window_size = size;
            c.replay_window_time = ms(time);
        })
        .await;
        let mut c = srv.connect(kind).await;
        c.say("a b c").await;
        c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
        c.collect_for(ms(100)).await;
        tokio::time::sleep(ms(20)).await;
        let before = c.log.len();
        c.send_msg(
            "SYSTEM",
            "REPLAY_REQUEST",
            json!({"from_seq": "1", "to_seq": "5"}),
        )
        .await;
        resent(&mut c, before, 1, 5).await;

        let session = session_of(&c);
        let last = c.log.iter().map(seq).max().unwrap();
        let log1 = c.log.clone();
        let next_seq = c.seq;
        drop(c);
        let mut c2 = srv.connect_with(kind, Opts::resume(&session, 0)).await;
        c2.seq = next_seq;
        if kind == Kind::Stream {
            c2.ping("resumed").await;
        }
        let mut replay = c2.collect_until(|v| ty(v) == "HAI" && seq(v) > last).await;
        let confirm = replay.pop().unwrap();
        assert_eq!(
            confirm["session"], session,
            "size {size}, time {time}: {confirm}"
        );
        let seqs: Vec<u64> = replay.iter().map(seq).collect();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "size {size}, time {time}: everything is replayed"
        );
        for m in &replay {
            let first = log1.iter().find(|v| seq(v) == seq(m)).unwrap();
            assert_eq!(m, first);
        }
    }
}

on_transports!(
    replay_window_keeps_until_both,
    replay_window_needs_both_limits
);

/// REPLAY_REQUEST without to_seq re-sends from from_seq through the newest message.
async fn replay_request_open_ended(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    c.say("replay the tail").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    c.collect_for(ms(150)).await;
    let last = c.log.iter().map(seq).max().unwrap();
    let before = c.log.len();
    c.send_msg("SYSTEM", "REPLAY_REQUEST", json!({"from_seq": "3"}))
        .await;
    let copies = resent(&mut c, before, 3, last).await;
    assert_eq!(copies.len() as u64, last - 2);
}

on_transports!(replay_request_without_to_seq, replay_request_open_ended);

/// REPLAY_TOO_OLD, and nothing of the range is re-sent (replays are all or nothing).
async fn replay_too_old_resends_nothing(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.replay_window_size = 2;
        c.replay_window_time = ms(0);
    })
    .await;
    let mut c = srv.connect(kind).await;
    c.say("a b c d").await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    c.collect_for(ms(100)).await;
    tokio::time::sleep(ms(10)).await;
    let last = c.log.iter().map(seq).max().unwrap();
    let before = c.log.len();
    let req = c
        .send_msg(
            "SYSTEM",
            "REPLAY_REQUEST",
            json!({"from_seq": "1", "to_seq": last.to_string()}),
        )
        .await;
    let e = expect_error(&mut c, "REPLAY_TOO_OLD").await;
    assert_eq!(e["payload"]["related_id"], req["id"]);
    c.collect_for(ms(200)).await;
    let resent: Vec<&Value> = c.log[before..].iter().filter(|v| seq(v) <= last).collect();
    assert!(
        resent.is_empty(),
        "nothing of 1..={last} is re-sent (the newest ones are still in the window): {resent:?}"
    );
}

on_transports!(
    replay_too_old_is_all_or_nothing,
    replay_too_old_resends_nothing
);

// =======================================================================================
// Section 5: runs
// =======================================================================================

/// The run limit is min(server max_concurrent_runs, client's): server 2, client 5 -> 2.
async fn run_limit_is_the_smaller(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.max_concurrent_runs = 2;
        c.echo_word_delay = ms(40);
    })
    .await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"max_concurrent_runs": 5});
    c.send_msg("SYSTEM", "HAI", hai).await;
    let server_hai = c.recv_type("HAI").await;
    assert_eq!(
        server_hai["payload"]["capabilities"]["max_concurrent_runs"],
        2
    );
    c.say("first run of several words").await;
    c.say("second run of several words").await;
    c.say("third").await;
    c.collect_until(|v| ty(v) == "ERROR" && v["payload"]["code"] == "RUN_LIMIT_EXCEEDED")
        .await;
    until_logged(&mut c, "RUN_FINISHED", 2, |v| ty(v) == "RUN_FINISHED").await;
    c.collect_for(ms(150)).await;
    assert_eq!(count(&c, |v| ty(v) == "RUN_STARTED"), 2, "{:?}", c.log);
    for fin in c.log.iter().filter(|v| ty(v) == "RUN_FINISHED") {
        assert_eq!(fin["payload"]["status"], "OK");
    }
    assert_eq!(errors(&c).len(), 1, "{:?}", errors(&c));
}

on_transports!(run_limit_min_of_both, run_limit_is_the_smaller);

/// Runs the client opens count towards the limit; RUN_FINISHED from the client closes one.
async fn client_runs_count(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"max_concurrent_runs": 1});
    c.send_msg("SYSTEM", "HAI", hai).await;
    let run_msg = |c: &mut Conn, t: &str, run: &str, payload: Value| {
        let mut v = c.msg("USER", t, payload);
        v["run_id"] = json!(run);
        v
    };
    let r1 = run_msg(&mut c, "RUN_STARTED", "r1", json!({"run_id": "r1"}));
    c.send(&r1).await;
    let r2 = run_msg(&mut c, "RUN_STARTED", "r2", json!({"run_id": "r2"}));
    c.send(&r2).await;
    let e = expect_error(&mut c, "RUN_LIMIT_EXCEEDED").await;
    assert_eq!(e["payload"]["related_id"], r2["id"]);
    // The agent cannot open a run either while r1 is open.
    c.say("blocked").await;
    expect_error(&mut c, "RUN_LIMIT_EXCEEDED").await;
    let fin = run_msg(
        &mut c,
        "RUN_FINISHED",
        "r1",
        json!({"run_id": "r1", "status": "OK"}),
    );
    c.send(&fin).await;
    c.say("now it may run").await;
    let run = c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(run.last().unwrap()["payload"]["status"], "OK");
    assert_eq!(errors(&c).len(), 2, "{:?}", errors(&c));
}

on_transports!(client_opened_runs_count, client_runs_count);

/// RUN_CANCEL twice in a row stops the echo once (one RUN_FINISHED CANCELLED); cancelling a
/// run that is over is RUN_NOT_FOUND and sends no second RUN_FINISHED.
async fn run_cancel_once(kind: Kind) {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(30)).await;
    let mut c = srv.connect(kind).await;
    let words: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
    c.say(&words.join(" ")).await;
    let run_id = c.recv_type("RUN_STARTED").await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.recv_type("MESSAGE_PART").await;
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    let fin = c.recv_type("RUN_FINISHED").await;
    assert_eq!(fin["payload"]["status"], "CANCELLED");
    c.collect_for(ms(300)).await;
    let late = c
        .send_msg("USER", "RUN_CANCEL", json!({"run_id": run_id}))
        .await;
    let e = c
        .recv_where(|v| ty(v) == "ERROR" && v["payload"]["related_id"] == late["id"])
        .await;
    assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND", "{e}");
    assert!(count(&c, |v| ty(v) == "MESSAGE_PART") < words.len());

    // A run that finished normally.
    c.say("x y").await;
    let done = c.recv_type("RUN_FINISHED").await;
    assert_eq!(done["payload"]["status"], "OK");
    let ok_run = done["run_id"].as_str().unwrap().to_string();
    let late = c
        .send_msg("USER", "RUN_CANCEL", json!({"run_id": ok_run}))
        .await;
    let e = c
        .recv_where(|v| ty(v) == "ERROR" && v["payload"]["related_id"] == late["id"])
        .await;
    assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND", "{e}");
    c.collect_for(ms(150)).await;
    for rid in [&run_id, &ok_run] {
        assert_eq!(
            count(&c, |v| ty(v) == "RUN_FINISHED"
                && v["run_id"] == rid.as_str()),
            1,
            "one RUN_FINISHED per run: {:?}",
            c.log
        );
    }
    // The second RUN_CANCEL of the first run may have been accepted or refused, nothing else.
    for e in errors(&c) {
        assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND", "{e}");
    }
}

on_transports!(run_cancel_finishes_once, run_cancel_once);

/// RUN_CANCEL stops a running sleep tool call of the run (TOOL_DONE CANCELLED well before the
/// sleep would end) and RUN_FINISHED CANCELLED closes the run last. protocol.rs checks this
/// on WebSocket only.
async fn run_cancel_stops_sleep(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut start = c.msg("USER", "RUN_STARTED", json!({"run_id": "nap-run"}));
    start["run_id"] = json!("nap-run");
    c.send(&start).await;
    let mut call = c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "nap", "tool": "sleep", "params": {"ms": 20000}}),
    );
    call["run_id"] = json!("nap-run");
    c.send(&call).await;
    c.recv_where(call_of("nap", "TOOL_UPDATE")).await;
    tokio::time::sleep(ms(100)).await;
    let t0 = Instant::now();
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": "nap-run"}))
        .await;
    let done = c.recv_where(call_of("nap", "TOOL_DONE")).await;
    assert!(t0.elapsed() < ms(1000), "stopped mid-way");
    assert_eq!(done["payload"]["status"], "CANCELLED");
    c.collect_for(ms(200)).await;
    let of_run: Vec<&Value> = c.log.iter().filter(|v| v["run_id"] == "nap-run").collect();
    let last = of_run.last().unwrap();
    assert_eq!(ty(last), "RUN_FINISHED", "{of_run:?}");
    assert_eq!(last["payload"]["status"], "CANCELLED");
    assert_eq!(count(&c, |v| ty(v) == "RUN_FINISHED"), 1, "{:?}", c.log);
}

on_transports!(run_cancel_stops_a_sleep_call, run_cancel_stops_sleep, [
    sse => Kind::Sse,
    stream => Kind::Stream,
]);

// =======================================================================================
// Section 6: flow control, server to client
// =======================================================================================

async fn agent_count(c: &mut Conn, n: usize) {
    until_logged(c, "AGENT messages", n, |v| chan(v) == "AGENT").await
}

/// SYSTEM messages never consume credit (PONG, TOOL_LIST, ERROR go out while AGENT is out
/// of credit), and SYSTEM cannot be paused.
async fn system_needs_no_credit_outbound(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] =
        json!({"flow_control": {"initial_credit_messages": 1, "initial_credit_bytes": 1000000}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    c.say("a b c").await;
    agent_count(&mut c, 1).await;
    for i in 0..5 {
        c.ping(&format!("n{i}")).await;
    }
    until_logged(&mut c, "PONG", 5, |v| ty(v) == "PONG").await;
    c.send_msg("SYSTEM", "TOOL_LIST", json!({"tools": []}))
        .await;
    c.recv_where(|v| ty(v) == "TOOL_LIST" && seq(v) > 2).await;
    c.send_msg("USER", "RUN_CANCEL", json!({"run_id": "none"}))
        .await;
    expect_error(&mut c, "RUN_NOT_FOUND").await;
    c.send_msg("SYSTEM", "PAUSE_CHANNEL", json!({"channel": "SYSTEM"}))
        .await;
    c.ping("unpausable").await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "unpausable");
    assert_eq!(
        agent_msgs(&c.log).len(),
        1,
        "AGENT still holds: {:?}",
        c.log
    );
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 100}),
    )
    .await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    assert_eq!(agent_msgs(&c.log).len(), 7);
    assert_contiguous(&c.log);
}

on_transports!(
    system_channel_outside_credit,
    system_needs_no_credit_outbound
);

/// Byte credit: what is released never exceeds the bytes granted (each message counted as
/// its serialized envelope); add_bytes alone releases more, in order, nothing lost.
async fn byte_credit_outbound(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_bytes": 700}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    let text = "w1 w2 w3 w4 w5 w6 w7 w8";
    c.say(text).await;
    agent_count(&mut c, 1).await;
    c.collect_for(ms(300)).await;
    let size = |msgs: &[Value]| -> usize { msgs.iter().map(|m| m.to_string().len()).sum() };
    let first = agent_msgs(&c.log);
    assert!(
        first.len() < 12,
        "700 bytes cannot carry the whole run: {first:?}"
    );
    assert!(
        size(&first) <= 700,
        "{} bytes released on a credit of 700: {first:?}",
        size(&first)
    );
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_bytes": 600}),
    )
    .await;
    agent_count(&mut c, first.len() + 1).await;
    c.collect_for(ms(300)).await;
    let second = agent_msgs(&c.log);
    assert!(second.len() < 12);
    assert!(
        size(&second) <= 1300,
        "{} bytes released on a credit of 1300",
        size(&second)
    );
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_bytes": 1000000}),
    )
    .await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let all = agent_msgs(&c.log);
    assert_eq!(all.len(), 12, "nothing dropped");
    let echoed: String = all
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART")
        .map(|v| v["payload"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(echoed, text, "in order");
    assert_contiguous(&c.log);
}

on_transports!(byte_credit_server_to_client, byte_credit_outbound);

/// PAUSE_CHANNEL holds a channel even when credit arrives; RESUME_CHANNEL releases in order.
async fn pause_beats_credit(kind: Kind) {
    let srv = Server::start().await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_messages": 1}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    c.send_msg("SYSTEM", "PAUSE_CHANNEL", json!({"channel": "AGENT"}))
        .await;
    c.say("x y z").await;
    c.collect_for(ms(200)).await;
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 20}),
    )
    .await;
    c.collect_for(ms(250)).await;
    assert!(
        agent_msgs(&c.log).is_empty(),
        "paused despite credit: {:?}",
        c.log
    );
    c.send_msg("SYSTEM", "RESUME_CHANNEL", json!({"channel": "AGENT"}))
        .await;
    c.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    let agent = agent_msgs(&c.log);
    assert_eq!(
        types(&agent),
        [
            "RUN_STARTED",
            "MESSAGE_START",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_PART",
            "MESSAGE_END",
            "RUN_FINISHED"
        ]
    );
    assert_contiguous(&c.log);
}

on_transports!(pause_holds_despite_credit, pause_beats_credit);

/// Held output is bounded (`flow_control_max_held_messages`) for what a client causes: a
/// client that grants no more credit while making the server answer it (its own tool
/// calls) gets ERROR FLOW_CONTROL_VIOLATION with reason HELD_OUTPUT_LIMIT, its connection
/// closes, and the session cannot be resumed.
async fn held_output_bound(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_max_held_messages = 20).await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_messages": 2}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    for i in 0..40 {
        let call = c.msg(
            "USER",
            "TOOL_CALL",
            json!({"call_id": format!("c{i}"), "tool": "echo", "params": {"message": "hi"}}),
        );
        if c.send(&call).await.is_some_and(|r| r.status != 200) {
            break; // the session already ended
        }
    }
    let error = expect_error(&mut c, "FLOW_CONTROL_VIOLATION").await;
    assert_eq!(error["payload"]["detail"]["reason"], "HELD_OUTPUT_LIMIT");
    let (code, _) = c.expect_close().await;
    if kind.is_ws() {
        assert_eq!(code, Some(1008));
    }
    assert!(
        agent_msgs(&c.log).len() <= 2,
        "nothing beyond the credit was sent: {:?}",
        agent_msgs(&c.log)
    );
    let session = session_of(&c);
    let last = seq(c.log.last().expect("messages"));
    let mut again = srv.connect_with(kind, Opts::resume(&session, last)).await;
    expect_resume_failed(&mut again, &session).await;
}

on_transports!(held_output_is_bounded, held_output_bound);

/// An agent is not a client: while the client grants no credit, the agent's answer waits
/// (it never reaches the bound), and once FLOW_UPDATE grants credit every word arrives.
async fn agent_waits_for_credit(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.flow_control_max_held_messages = 20;
        c.echo_word_delay = ms(0);
    })
    .await;
    let mut c = srv.connect(kind).await;
    let mut hai = hai_payload(&ALL_EVENTS);
    hai["capabilities"] = json!({"flow_control": {"initial_credit_messages": 2}});
    c.send_msg("SYSTEM", "HAI", hai).await;
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    c.say(&words.join(" ")).await;
    // Long enough for 100 words to pass the bound many times over without back-pressure.
    let early = c.collect_for(ms(300)).await;
    assert!(
        !early.iter().any(|v| ty(v) == "ERROR"),
        "the agent's output ended the session: {early:?}"
    );
    c.send_msg(
        "SYSTEM",
        "FLOW_UPDATE",
        json!({"channel": "AGENT", "add_messages": 1000}),
    )
    .await;
    c.recv_where(|v| ty(v) == "RUN_FINISHED").await;
    let parts: String = c
        .log
        .iter()
        .filter(|v| ty(v) == "MESSAGE_PART" && chan(v) == "AGENT")
        .map(|v| v["payload"]["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(parts, words.join(" "));
    assert!(errors(&c).is_empty(), "{:?}", errors(&c));
}

on_transports!(agent_output_waits_for_credit, agent_waits_for_credit);

// =======================================================================================
// Section 6: flow control, client to server
// =======================================================================================

/// A client that honours the advertised credit (4 messages, 1200 bytes) can send 16 USER
/// messages: the server hands credit back with FLOW_UPDATE (SYSTEM, per channel) as it
/// consumes, and nothing is refused.
async fn credit_comes_back(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.flow_control_initial_credit_messages = 4;
        c.flow_control_initial_credit_bytes = 1200;
    })
    .await;
    let mut c = srv.connect(kind).await;
    let hai = open(&mut c).await;
    let mut credit = UserCredit::from_hai(&hai);
    assert_eq!((credit.messages, credit.bytes), (4, 1200));
    for i in 0..16 {
        let v = c.msg(
            "USER",
            "TOOL_CALL",
            json!({"call_id": format!("c{i}"), "tool": "echo",
                   "params": {"message": "m".repeat(120)}}),
        );
        credit.send(&mut c, &v).await;
    }
    until_logged(&mut c, "TOOL_DONE", 16, |v| ty(v) == "TOOL_DONE").await;
    assert!(errors(&c).is_empty(), "{:?}", errors(&c));
    let grants: Vec<&Value> = c.log.iter().filter(|v| ty(v) == "FLOW_UPDATE").collect();
    assert!(!grants.is_empty());
    for g in grants {
        assert_eq!(chan(g), "SYSTEM", "{g}");
        assert_eq!(g["payload"]["channel"], "USER", "{g}");
        assert!(
            g["payload"]["add_messages"].as_u64().unwrap_or(0) >= 1,
            "{g}"
        );
        assert!(g["payload"]["add_bytes"].as_u64().unwrap_or(0) >= 1, "{g}");
    }
}

on_transports!(credit_handed_back, credit_comes_back);

fn oversized_call(c: &mut Conn, id: &str) -> Value {
    c.msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": id, "tool": "echo", "params": {"message": "x".repeat(1000)}}),
    )
}

/// A message beyond the byte credit gets FLOW_CONTROL_VIOLATION {INSUFFICIENT_CREDITS,
/// channel} and is not processed (its seq is free for the next message).
async fn beyond_credit_not_processed(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_initial_credit_bytes = 400).await;
    let mut c = srv.connect(kind).await;
    open(&mut c).await;
    let big = oversized_call(&mut c, "big");
    c.send(&big).await;
    let e = expect_error(&mut c, "FLOW_CONTROL_VIOLATION").await;
    assert_eq!(e["payload"]["related_id"], big["id"]);
    assert_eq!(
        e["payload"]["detail"],
        json!({"reason": "INSUFFICIENT_CREDITS", "channel": "USER"})
    );
    c.collect_for(ms(300)).await;
    assert_eq!(
        count(&c, |v| v["payload"]["call_id"] == "big"),
        0,
        "{:?}",
        c.log
    );
    c.seq -= 1;
    c.send_msg(
        "USER",
        "TOOL_CALL",
        json!({"call_id": "small", "tool": "echo", "params": {"message": "hi"}}),
    )
    .await;
    let done = c.recv_where(call_of("small", "TOOL_DONE")).await;
    assert_eq!(done["payload"]["status"], "OK");
}

on_transports!(beyond_credit_refused, beyond_credit_not_processed);

/// Twenty flow-control violations are tolerated, the 21st closes the connection (contract
/// section 2; WebSocket 1008, streams end).
async fn flow_violations_close(kind: Kind) {
    let srv = Server::start_with(|c| c.flow_control_initial_credit_bytes = 400).await;
    let mut c = srv.connect(kind).await;
    open(&mut c).await;
    for i in 0..20 {
        let big = oversized_call(&mut c, &format!("big{i}"));
        c.seq -= 1;
        c.send(&big).await;
        expect_error(&mut c, "FLOW_CONTROL_VIOLATION").await;
    }
    c.ping("still-open").await;
    assert_eq!(c.recv_type("PONG").await["payload"]["nonce"], "still-open");
    let big = oversized_call(&mut c, "big-last");
    c.send(&big).await;
    expect_error(&mut c, "FLOW_CONTROL_VIOLATION").await;
    let (code, _) = c.expect_close().await;
    if kind.is_ws() {
        assert_eq!(code, Some(1008));
    } else {
        assert_eq!(code, None, "the stream ends");
    }
}

on_transports!(twenty_flow_violations_then_close, flow_violations_close);

/// SYSTEM messages from the client never consume credit: ten PINGs of 600-byte nonces go
/// through a credit of 2 messages and 1000 bytes.
async fn system_needs_no_credit_inbound(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.flow_control_initial_credit_messages = 2;
        c.flow_control_initial_credit_bytes = 1000;
    })
    .await;
    let mut c = srv.connect(kind).await;
    for i in 0..10 {
        c.ping(&format!("{i}{}", "n".repeat(600))).await;
    }
    until_logged(&mut c, "PONG", 10, |v| ty(v) == "PONG").await;
    assert!(errors(&c).is_empty(), "{:?}", errors(&c));
}

on_transports!(
    system_channel_outside_credit_inbound,
    system_needs_no_credit_inbound
);

fn audio_msg(seq: u64, data_len: usize) -> Value {
    let bytes: Vec<u8> = (0..data_len).map(|i| (i % 251) as u8).collect();
    envelope(
        "audio-1",
        "test-session",
        seq,
        "USER",
        "AUDIO_CHUNK",
        json!({"message_id": "aud", "mime": "audio/pcm", "data": b64(&bytes)}),
    )
}

/// Bytes count the serialized envelope plus the decoded base64 length: a chunk whose
/// envelope fits the credit but not with its decoded bytes added is refused; one that fits
/// with them is accepted.
async fn base64_counts_decoded(kind: Kind) {
    const DATA: usize = 1500;
    let msg = audio_msg(1, DATA);
    let serialized = msg.to_string().len() as u64;
    let cost = serialized + DATA as u64;
    for (credit, accepted) in [(cost + 16, true), (serialized + DATA as u64 / 2, false)] {
        let srv = Server::start_with(|c| c.flow_control_initial_credit_bytes = credit).await;
        let mut c = srv.connect(kind).await;
        c.send(&msg).await;
        c.seq = 1;
        c.ping("after").await;
        let mut got = c
            .collect_until(|v| ty(v) == "PONG" && v["payload"]["nonce"] == "after")
            .await;
        got.extend(c.collect_for(ms(150)).await);
        let echoed = got.iter().any(|v| ty(v) == "AUDIO_CHUNK");
        let refused = got.iter().any(|v| {
            ty(v) == "ERROR"
                && v["payload"]["code"] == "FLOW_CONTROL_VIOLATION"
                && v["payload"]["detail"]["reason"] == "INSUFFICIENT_CREDITS"
        });
        assert_eq!(
            (echoed, refused),
            (accepted, !accepted),
            "credit {credit} for {serialized} serialized + {DATA} decoded bytes: {got:?}"
        );
    }
}

on_transports!(base64_data_counts_decoded_bytes, base64_counts_decoded);

/// WebSocket two-frame messages count the text frame plus bin_len (contract section 6).
#[tokio::test]
async fn binary_frame_counts_bin_len_once() {
    const N: usize = 3000;
    let text_frame = |seq: u64| {
        let mut env = envelope(
            "bin-1",
            "test-session",
            seq,
            "USER",
            "AUDIO_CHUNK",
            json!({"message_id": "aud-bin", "mime": "audio/opus"}),
        );
        env["bin_len"] = json!(N);
        env["bin_mime"] = json!("audio/opus");
        env
    };
    let text_len = text_frame(1).to_string().len() as u64;
    let bytes: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
    for (credit, accepted) in [
        (text_len + N as u64 + 16, true),
        (text_len + N as u64 / 2, false),
    ] {
        let srv = Server::start_with(|c| c.flow_control_initial_credit_bytes = credit).await;
        let mut c = srv.connect(Kind::Ws).await;
        c.send(&text_frame(1)).await;
        c.send_binary(bytes.clone()).await;
        c.seq = 1;
        c.ping("after").await;
        let mut got = c
            .collect_until(|v| ty(v) == "PONG" && v["payload"]["nonce"] == "after")
            .await;
        got.extend(c.collect_for(ms(150)).await);
        let echoed = got.iter().any(|v| ty(v) == "AUDIO_CHUNK");
        let refused = got.iter().any(|v| {
            ty(v) == "ERROR" && v["payload"]["detail"]["reason"] == "INSUFFICIENT_CREDITS"
        });
        assert_eq!(
            (echoed, refused),
            (accepted, !accepted),
            "credit {credit} for a {text_len}-byte text frame + {N} binary bytes: {got:?}"
        );
    }
}

// =======================================================================================
// Section 3: resume failures on every transport
// =======================================================================================

/// A failed connect-time resume: ERROR RESUME_FAILED first, then the HAI of a fresh session
/// (seq 1), and nothing of the asked session.
async fn expect_resume_failed(c: &mut Conn, session: &str) {
    if c.kind == Kind::Stream {
        c.ping("opening").await;
    }
    let e = c.recv().await;
    assert_eq!(ty(&e), "ERROR", "{e}");
    assert_eq!(e["payload"]["code"], "RESUME_FAILED", "{e}");
    let hai = c.recv().await;
    assert_eq!(ty(&hai), "HAI", "{hai}");
    assert_eq!(hai["seq"], "1");
    assert_ne!(hai["session"], session);
    c.collect_for(ms(150)).await;
    // The unsequenced RESUME_FAILED itself names the session that was asked for.
    assert!(
        !c.log.iter().any(|v| v["session"] == session && seq(v) > 0),
        "nothing of {session} is sent: {:?}",
        c.log
    );
}

/// Past the replay window and another subject's session: both refused at connect time
/// (protocol.rs and cross_transport.rs check these on WebSocket only).
async fn resume_failures(kind: Kind) {
    let srv = Server::start_with(|c| {
        c.replay_window_size = 2;
        c.replay_window_time = ms(0);
    })
    .await;
    let mut c1 = srv.connect(kind).await;
    c1.say("one two three").await;
    c1.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    c1.collect_for(ms(100)).await;
    let session = session_of(&c1);
    let last = c1.log.iter().map(seq).max().unwrap();
    drop(c1);
    tokio::time::sleep(ms(20)).await;

    let mut past = srv.connect_with(kind, Opts::resume(&session, 1)).await;
    expect_resume_failed(&mut past, &session).await;
    if kind == Kind::Sse {
        let opts = Opts {
            last_event_id: Some(format!("{session}:1")),
            ..Opts::default()
        };
        let mut past = srv.connect_with(kind, opts).await;
        expect_resume_failed(&mut past, &session).await;
        let opts = Opts {
            last_event_id: Some("no-such-session:3".into()),
            ..Opts::default()
        };
        let mut unknown = srv.connect_with(kind, opts).await;
        expect_resume_failed(&mut unknown, "no-such-session").await;
    }
    let bob = srv.token_for("bob");
    let mut other = srv
        .connect_with(kind, Opts::resume(&session, last).with_token(bob))
        .await;
    expect_resume_failed(&mut other, &session).await;

    // The session itself is intact for its owner.
    let mut again = srv.connect_with(kind, Opts::resume(&session, last)).await;
    if kind == Kind::Stream {
        again.seq = 2;
        again.ping("mine").await;
    }
    let confirm = again.recv().await;
    assert_eq!(ty(&confirm), "HAI", "{confirm}");
    assert_eq!(confirm["session"], session.as_str());
    assert_eq!(seq(&confirm), last + 1);
}

on_transports!(resume_refused, resume_failures);

/// A resume request that cannot be read (a last_rx_seq that is not a u64, an SSE
/// Last-Event-ID of another shape) fails with RESUME_FAILED before the fresh session's HAI,
/// as any failed resume does, instead of quietly giving a fresh session (contract
/// section 3); and another user's session is refused in the same words as one that does
/// not exist.
async fn unreadable_resume(kind: Kind) {
    let srv = Server::start().await;
    let mut owner = srv.connect(kind).await;
    if kind == Kind::Stream {
        owner.ping("open").await;
    }
    owner.recv_type("HAI").await;
    let session = session_of(&owner);
    for last in ["abc", "-1", "18446744073709551616", "", "1.5", "+3"] {
        let opts = Opts {
            query: vec![
                ("session".into(), session.clone()),
                ("last_rx_seq".into(), last.into()),
            ],
            ..Opts::default()
        };
        let mut c = srv.connect_with(kind, opts).await;
        let e = expect_resume_failed_msg(&mut c, &session).await;
        assert!(e.contains("last_rx_seq"), "{last:?}: {e}");
    }
    if kind == Kind::Sse {
        for id in ["garbage", &format!("{session}:abc"), ":5", ""] {
            let opts = Opts {
                last_event_id: Some(id.to_string()),
                ..Opts::default()
            };
            let mut c = srv.connect_with(kind, opts).await;
            let e = expect_resume_failed_msg(&mut c, &session).await;
            assert!(e.contains("Last-Event-ID"), "{id:?}: {e}");
        }
    }
    let unknown = expect_resume_failed_msg(
        &mut srv
            .connect_with(kind, Opts::resume("no-such-session", 1))
            .await,
        "no-such-session",
    )
    .await;
    let bob = srv.token_for("bob");
    let foreign = expect_resume_failed_msg(
        &mut srv
            .connect_with(kind, Opts::resume(&session, 1).with_token(bob))
            .await,
        &session,
    )
    .await;
    assert_eq!(
        foreign.replace(&session, "ID"),
        unknown.replace("no-such-session", "ID"),
        "another user's session is refused as an unknown one"
    );
}

/// [`expect_resume_failed`], returning the error's message.
async fn expect_resume_failed_msg(c: &mut Conn, session: &str) -> String {
    expect_resume_failed(c, session).await;
    let e = c
        .log
        .iter()
        .find(|v| ty(v) == "ERROR")
        .expect("the RESUME_FAILED");
    e["payload"]["message"].as_str().unwrap_or("").to_string()
}

on_transports!(unreadable_resume_fails, unreadable_resume);

/// Resume by a client HAI posted to `POST /haip/messages` next to a fresh SSE stream: the
/// HAI names the kept session with last_rx_seq, so the stream must carry the replay and the
/// confirming HAI (contract section 3: "a client HAI whose envelope session names a kept
/// session ... resumes it"; the connect-time forms are an addition, not the only way).
#[tokio::test]
async fn sse_resume_by_posted_hai() {
    let srv = Server::start_with(|c| c.echo_word_delay = ms(20)).await;
    let mut c1 = srv.connect(Kind::Sse).await;
    c1.say("alpha beta gamma delta").await;
    c1.recv_type("MESSAGE_PART").await;
    let session = session_of(&c1);
    let log1 = c1.log.clone();
    let last = log1.iter().map(seq).max().unwrap();
    drop(c1);

    let mut c2 = srv.connect(Kind::Sse).await;
    let fresh = c2.recv_type("HAI").await["session"]
        .as_str()
        .unwrap()
        .to_string();
    c2.recv_type("TOOL_LIST").await;
    let mut p = hai_payload(&ALL_EVENTS);
    p["last_rx_seq"] = json!((last - 1).to_string());
    let hai = envelope(&next_id("resume"), &session, 3, "SYSTEM", "HAI", p);
    let reply = c2.send(&hai).await.expect("posted");
    assert_eq!(reply.status, 200, "{reply:?}");
    let msgs = c2.collect_for(ms(500)).await;
    let Some(at) = msgs
        .iter()
        .position(|v| ty(v) == "HAI" && v["session"] == session.as_str())
    else {
        panic!("no replay and no confirming HAI of {session} after the posted HAI: {msgs:?}");
    };
    let msgs = &msgs[..=at];
    let confirm = msgs.last().unwrap();
    let replay: Vec<&Value> = msgs
        .iter()
        .filter(|v| v["session"] == session.as_str() && ty(v) != "HAI")
        .collect();
    assert_eq!(seq(replay[0]), last, "the replay starts after last_rx_seq");
    assert_eq!(replay[0], log1.iter().find(|v| seq(v) == last).unwrap());
    assert_eq!(seq(confirm), seq(replay.last().unwrap()) + 1);
    if !c2.log.iter().any(|v| ty(v) == "RUN_FINISHED") {
        c2.collect_until(|v| ty(v) == "RUN_FINISHED").await;
    }
    assert!(
        srv.state.engine.get(&fresh).is_none(),
        "the fresh session is dropped"
    );
}
