//! The checks at the end of a run and of a test: the run exact and complete, and the
//! server's own record equal to what the client assembled.

use serde_json::{json, Value};

use super::client::Client;
use super::live::{ts_of, Live};
use super::raw::Got;
use crate::common::{assert_contiguous, chan, echo_run_types, seq, ty, WAIT};

impl Client<'_> {
    /// Run `run` is complete, exact and in order in what the client assembled.
    pub(super) fn check_run(&self, run: usize, text: &str) {
        if self.runs.len() != run + 1 {
            self.fail(format!(
                "{} runs started, expected {}",
                self.runs.len(),
                run + 1
            ));
        }
        let rid = self.runs[run].as_str();
        let msgs: Vec<&Value> = self.got.values().filter(|v| v["run_id"] == rid).collect();
        let words = text.split(' ').count();
        let expected = echo_run_types(words);
        let got: Vec<&str> = msgs.iter().map(|v| ty(v)).collect();
        if got != expected {
            let each: Vec<String> = msgs
                .iter()
                .map(|v| format!("{}:{}:{}", seq(v), ty(v), v["payload"]["text"]))
                .collect();
            self.fail(format!(
                "run {run} ({rid}) is not the exact echo run: {} messages, types {got:?}; each (seq:type:text): {each:?}",
                msgs.len()
            ));
        }
        for m in &msgs {
            assert_eq!(chan(m), "AGENT", "{m}");
        }
        assert_eq!(msgs[0]["payload"]["run_id"], rid);
        let mid = msgs[1]["payload"]["message_id"].clone();
        assert_eq!(msgs[1]["payload"]["author"], "echo");
        let echoed: String = msgs[2..2 + words]
            .iter()
            .map(|p| {
                assert_eq!(p["payload"]["message_id"], mid, "{p}");
                p["payload"]["text"].as_str().unwrap()
            })
            .collect();
        if echoed != text {
            self.fail(format!(
                "run {run}: the parts do not rebuild the text\n sent: {text}\n got:  {echoed}"
            ));
        }
        let end = msgs[2 + words];
        assert_eq!(end["payload"]["message_id"], mid);
        assert_eq!(end["payload"]["tokens"], words.to_string());
        let fin = msgs.last().unwrap();
        assert_eq!(fin["payload"]["status"], "OK", "{fin}");
        assert_eq!(fin["payload"]["run_id"], rid);
    }

    /// Everything acknowledged, every PING answered once, and the server's record (a
    /// REPLAY_REQUEST from seq 1) equal to what the client assembled.
    pub(super) async fn finish(&mut self, live: &mut Live) {
        self.read_until_confirmed(live).await;
        let nonce = "final".to_string();
        self.pings.push(nonce.clone());
        let v = self.new_msg("SYSTEM", "PING", json!({ "nonce": nonce }));
        self.send(live, &v).await;
        while !self.pongs.contains_key("final") {
            self.read_one(live).await;
        }
        assert_eq!(
            self.acked,
            self.outbox.len() as u64,
            "every client message processed"
        );
        for p in &self.pings {
            assert_eq!(
                self.pongs.get(p).copied().unwrap_or(0),
                1,
                "PING {p} must be answered exactly once (retransmitted copies are duplicates)"
            );
        }
        assert_eq!(assert_contiguous(self.got.values()), self.highest);
        let mut last_ts = 0;
        for m in self.got.values() {
            assert!(ts_of(m) >= last_ts, "ts goes back at {m}");
            last_ts = ts_of(m);
        }

        let h = self.highest;
        let rr = self.new_msg(
            "SYSTEM",
            "REPLAY_REQUEST",
            json!({"from_seq": "1", "to_seq": h.to_string()}),
        );
        self.send(live, &rr).await;
        let mut expect = 1;
        while expect <= h {
            let m = match live.conn.next_within(WAIT).await {
                Some(Got::Msg(m, _)) => m,
                other => self.fail(format!("replay of 1..={h} stopped at {expect}: {other:?}")),
            };
            if m["session"] == self.session.as_str() && seq(&m) <= h {
                assert_eq!(seq(&m), expect, "the replay is in order");
                if self.got.get(&expect) != Some(&m) {
                    self.fail(format!(
                        "the server's record of seq {expect} differs from what the client got:\n \
                         server {m}\n client {}",
                        self.got[&expect]
                    ));
                }
                expect += 1;
            } else {
                self.on_msg(live, m).await;
            }
        }
    }
}
