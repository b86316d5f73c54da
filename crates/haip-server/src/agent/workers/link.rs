//! One agent worker's connection as a state machine (contract section 12.2): what the
//! server sends the worker (its HAI, jobs, cancels, PAUSE/RESUME_CHANNEL, errors) and what
//! it does with each envelope the worker sends. No I/O: the socket adapter
//! (`transport/agent.rs`) feeds it text and the clock and writes the frames it returns.
//!
//! The worker's envelopes are ordinary HAIP (sections 1-2): validated, numbered per
//! connection (a repeated or older `seq` is a duplicate and is dropped), acked in every
//! envelope the server sends. Messages carrying the `run_id` of one of the worker's open
//! runs go into the user's session through the run, as the session's own messages. A
//! message for an unknown or finished run gets ERROR RUN_NOT_FOUND. A worker that keeps
//! sending after it was told PAUSE_CHANNEL, or keeps breaking the protocol, is treated as a
//! client would be: FLOW_CONTROL_VIOLATION / PROTOCOL_VIOLATION, then close 1008.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use haip_protocol::flow::Credit;
use haip_protocol::handshake::{accept_peer_hai, hai, Offer, VersionIncompatible};
use haip_protocol::payload::{ChannelRef, ErrorPayload, Nonce, RunCancel, RunStarted, RunStatus};
use haip_protocol::{channel, Envelope, ErrorCode, Payload};
use serde_json::{json, Map};

use crate::agent::reply::{Run, Speaker, Turn};

/// How long a cancelled run may take to finish before the server finishes it.
pub const CANCEL_DEADLINE: Duration = Duration::from_secs(5);
/// Protocol violations tolerated before the worker is disconnected (as for clients).
pub const MAX_PROTOCOL_VIOLATIONS: u32 = 10;
/// Flow-control violations tolerated before the worker is disconnected.
pub const MAX_FLOW_VIOLATIONS: u32 = 20;

/// A user message for a worker to answer: its run, already started in the user's session.
pub struct Job {
    pub run: Run,
    pub text: String,
    pub session: String,
    pub subject: String,
    pub thread_id: Option<String>,
    /// The conversation before the message, when the client keeps it (the AI SDK).
    pub history: Option<Vec<Turn>>,
}

/// What the adapter must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this JSON text frame.
    Frame(String),
    /// Close the connection with this code and reason.
    Close(u16, String),
}

struct OpenRun {
    run: Run,
    /// Set once the user cancelled: the moment the server finishes the run itself.
    deadline: Option<Instant>,
}

pub struct WorkerLink {
    /// The worker connection's own session id (the `session` of its envelopes).
    session: String,
    next_seq: u64,
    /// The highest seq of the worker's processed so far.
    last_in: Option<u64>,
    runs: HashMap<String, OpenRun>,
    /// The seq of the PAUSE_CHANNEL AGENT sent, while the worker is paused.
    paused_at: Option<u64>,
    protocol_violations: u32,
    flow_violations: u32,
}

impl WorkerLink {
    pub fn new(session: String) -> WorkerLink {
        WorkerLink {
            session,
            next_seq: 1,
            last_in: None,
            runs: HashMap::new(),
            paused_at: None,
            protocol_violations: 0,
            flow_violations: 0,
        }
    }

    pub fn open_runs(&self) -> usize {
        self.runs.len()
    }

    /// The server's HAI, the first frame of the connection.
    pub fn hello(&mut self, now_ms: u64) -> Output {
        let offer = Offer {
            binary_frames: false,
            credit: Credit::UNLIMITED,
            max_concurrent_runs: u64::MAX,
            last_rx_seq: None,
        };
        self.frame(channel::SYSTEM, Payload::Hai(hai(&offer)), None, now_ms)
    }

    /// A HAIP PING: the worker shows it is alive by sending anything (its PONG).
    pub fn ping(&mut self, now_ms: u64) -> Output {
        let nonce = format!("worker-{}", self.next_seq);
        let payload = Payload::Ping(Nonce {
            nonce: Some(nonce),
            extra: Map::new(),
        });
        self.frame(channel::SYSTEM, payload, None, now_ms)
    }

    /// Hands the worker a job: RUN_STARTED {run_id, thread_id, metadata} on AGENT.
    pub fn assign(&mut self, job: Job, now_ms: u64) -> Output {
        let run_id = job.run.id().to_string();
        let conversation = job.thread_id.clone().unwrap_or_else(|| job.session.clone());
        let mut metadata = Map::new();
        metadata.insert("session".into(), json!(job.session));
        metadata.insert("subject".into(), json!(job.subject));
        metadata.insert("conversation".into(), json!(conversation));
        metadata.insert("text".into(), json!(job.text));
        if let Some(history) = &job.history {
            let turns: Vec<_> = history
                .iter()
                .map(|t| {
                    let role = match t.speaker {
                        Speaker::User => "user",
                        Speaker::Assistant => "assistant",
                    };
                    json!({"role": role, "text": t.text})
                })
                .collect();
            metadata.insert("history".into(), json!(turns));
        }
        let payload = Payload::RunStarted(RunStarted {
            run_id: Some(run_id.clone()),
            thread_id: job.thread_id.clone(),
            metadata: Some(metadata),
            extra: Map::new(),
        });
        let out = self.frame(channel::AGENT, payload, Some(&run_id), now_ms);
        self.runs.insert(
            run_id,
            OpenRun {
                run: job.run,
                deadline: None,
            },
        );
        out
    }

    /// Runs the users cancelled since the last look: RUN_CANCEL to the worker for each,
    /// and their deadlines start.
    pub fn poll_cancels(&mut self, now: Instant, now_ms: u64) -> Vec<Output> {
        let cancelled: Vec<String> = self
            .runs
            .iter_mut()
            .filter(|(_, r)| r.deadline.is_none() && r.run.is_cancelled())
            .map(|(id, r)| {
                r.deadline = Some(now + CANCEL_DEADLINE);
                id.clone()
            })
            .collect();
        cancelled
            .into_iter()
            .map(|run_id| {
                let payload = Payload::RunCancel(RunCancel {
                    run_id: run_id.clone(),
                    extra: Map::new(),
                });
                self.frame(channel::AGENT, payload, Some(&run_id), now_ms)
            })
            .collect()
    }

    /// The earliest cancel deadline, if any run is being cancelled.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.runs.values().filter_map(|r| r.deadline).min()
    }

    /// Finishes, CANCELLED, the cancelled runs the worker did not finish in time.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<String> = self
            .runs
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            if let Some(open) = self.runs.remove(&id) {
                open.run.finish(RunStatus::Cancelled);
            }
        }
    }

    /// The worker went away: each run it had open ends with RUN_ERROR AGENT_ERROR.
    pub fn gone(&mut self) {
        for (_, open) in self.runs.drain() {
            open.run.fail(
                ErrorCode::AgentError,
                "the agent worker went away before finishing the answer",
            );
        }
    }

    /// PAUSE_CHANNEL AGENT while a user of the worker's runs holds too much output,
    /// RESUME_CHANNEL once none does.
    pub fn check_pressure(&mut self, now_ms: u64) -> Option<Output> {
        let over = self.runs.values().any(|r| r.run.is_over_high_water());
        match (over, self.paused_at) {
            (true, None) => {
                self.paused_at = Some(self.next_seq);
                Some(self.frame(
                    channel::SYSTEM,
                    Payload::PauseChannel(channel_ref()),
                    None,
                    now_ms,
                ))
            }
            (false, Some(_)) => {
                self.paused_at = None;
                Some(self.frame(
                    channel::SYSTEM,
                    Payload::ResumeChannel(channel_ref()),
                    None,
                    now_ms,
                ))
            }
            _ => None,
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// A binary frame from the worker: not used on this connection (audio travels base64).
    pub fn on_binary(&mut self, now_ms: u64) -> Vec<Output> {
        self.violation(
            ErrorCode::BinaryFrameError,
            "binary frames are not used on a worker connection: send audio base64 in data",
            None,
            now_ms,
        )
    }

    /// One text frame from the worker.
    pub fn on_text(&mut self, raw: &[u8], now_ms: u64) -> Vec<Output> {
        let env = match Envelope::parse_bytes(raw) {
            Ok(env) => env,
            Err(e) => {
                let related = e.related_id.clone();
                return self.violation(e.code, &e.to_string(), related, now_ms);
            }
        };
        if self.last_in.is_some_and(|last| env.seq <= last) {
            return Vec::new(); // a duplicate
        }
        self.last_in = Some(env.seq);
        match &env.payload {
            Payload::Hai(h) => match accept_peer_hai(h) {
                Ok(_) => Vec::new(),
                Err(VersionIncompatible { .. }) => {
                    let mut out = vec![self.error(
                        ErrorCode::VersionIncompatible,
                        "accept_major does not include 1",
                        Some(env.id.clone()),
                        now_ms,
                    )];
                    out.push(Output::Close(1002, "version incompatible".into()));
                    out
                }
            },
            Payload::Ping(n) => {
                let pong = Payload::Pong(Nonce {
                    nonce: n.nonce.clone(),
                    extra: Map::new(),
                });
                vec![self.frame(channel::SYSTEM, pong, None, now_ms)]
            }
            Payload::Pong(_) | Payload::FlowUpdate(_) | Payload::Error(_) => Vec::new(),
            Payload::MessageStart(_)
            | Payload::MessagePart(_)
            | Payload::MessageEnd(_)
            | Payload::AudioChunk(_)
            | Payload::ToolCall(_)
            | Payload::ToolUpdate(_)
            | Payload::ToolDone(_)
            | Payload::RunFinished(_)
            | Payload::RunError(_) => self.run_message(env, now_ms),
            _ => self.violation(
                ErrorCode::UnsupportedType,
                &format!(
                    "{} is not something a worker sends: answer jobs with MESSAGE_*, \
                     AUDIO_CHUNK, TOOL_*, RUN_FINISHED or RUN_ERROR",
                    env.payload.event_type().as_str()
                ),
                Some(env.id.clone()),
                now_ms,
            ),
        }
    }

    /// A message of one of the worker's runs.
    fn run_message(&mut self, env: Envelope, now_ms: u64) -> Vec<Output> {
        let run_id = env.run_id.clone().or_else(|| match &env.payload {
            Payload::RunFinished(f) => f.run_id.clone(),
            Payload::RunError(e) => e.run_id.clone(),
            _ => None,
        });
        let Some(run_id) = run_id.filter(|id| self.runs.contains_key(id)) else {
            return vec![self.error(
                ErrorCode::RunNotFound,
                &format!(
                    "no open run {:?} on this worker: it finished, was never given, or its \
                     cancel deadline passed",
                    env.run_id.as_deref().unwrap_or("")
                ),
                Some(env.id.clone()),
                now_ms,
            )];
        };
        // Sent after the worker had seen PAUSE_CHANNEL (its ack says so; a worker that
        // sends no ack is taken to have seen it): refused, as a client's message on a
        // paused channel is.
        if let Some(paused) = self.paused_at {
            if env.ack.is_none_or(|ack| ack >= paused) && !is_run_end(&env.payload) {
                self.flow_violations += 1;
                let mut out = vec![self.error(
                    ErrorCode::FlowControlViolation,
                    "channel AGENT is paused: wait for RESUME_CHANNEL",
                    Some(env.id.clone()),
                    now_ms,
                )];
                if self.flow_violations > MAX_FLOW_VIOLATIONS {
                    out.push(Output::Close(
                        1008,
                        "too many flow-control violations".into(),
                    ));
                }
                return out;
            }
        }
        match env.payload {
            Payload::RunFinished(f) => {
                if let Some(open) = self.runs.remove(&run_id) {
                    open.run.finish(f.status.unwrap_or(RunStatus::Ok));
                }
            }
            Payload::RunError(e) => {
                if let Some(open) = self.runs.remove(&run_id) {
                    let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::AgentError);
                    open.run.fail(code, e.message);
                }
            }
            payload => {
                if let Some(open) = self.runs.get(&run_id) {
                    open.run.send_now(&env.channel, payload);
                }
            }
        }
        Vec::new()
    }

    fn violation(
        &mut self,
        code: ErrorCode,
        message: &str,
        related_id: Option<String>,
        now_ms: u64,
    ) -> Vec<Output> {
        self.protocol_violations += 1;
        let mut out = vec![self.error(code, message, related_id, now_ms)];
        if self.protocol_violations > MAX_PROTOCOL_VIOLATIONS {
            out.push(Output::Close(1008, "too many protocol violations".into()));
        }
        out
    }

    fn error(
        &mut self,
        code: ErrorCode,
        message: &str,
        related_id: Option<String>,
        now_ms: u64,
    ) -> Output {
        let payload = Payload::Error(ErrorPayload {
            code: code.as_str().to_string(),
            message: message.to_string(),
            related_id,
            detail: None,
            run_id: None,
            extra: Map::new(),
        });
        self.frame(channel::SYSTEM, payload, None, now_ms)
    }

    fn frame(
        &mut self,
        channel: &str,
        payload: Payload,
        run_id: Option<&str>,
        now_ms: u64,
    ) -> Output {
        let mut env = Envelope::new(
            uuid::Uuid::new_v4().to_string(),
            self.session.as_str(),
            self.next_seq,
            now_ms,
            channel,
            payload,
        );
        self.next_seq += 1;
        env.ack = self.last_in;
        env.run_id = run_id.map(str::to_string);
        Output::Frame(env.to_json())
    }
}

fn channel_ref() -> ChannelRef {
    ChannelRef {
        channel: channel::AGENT.to_string(),
        extra: Map::new(),
    }
}

fn is_run_end(payload: &Payload) -> bool {
    matches!(payload, Payload::RunFinished(_) | Payload::RunError(_))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::agent::{
        AgentMessage, AgentToolCall, HandleFuture, Reply, RunEnding, SessionHandle,
    };
    use crate::tools::{ToolOutcome, ToolSpec};

    /// A user's session as the link sees it through a run: what it was sent, how the run
    /// ended, whether its user is behind.
    #[derive(Default)]
    struct Session {
        sent: Mutex<Vec<(String, Payload)>>,
        ended: Mutex<Option<RunEnding>>,
        behind: AtomicBool,
        cancel: CancellationToken,
    }

    impl SessionHandle for Session {
        fn session_id(&self) -> &str {
            "user-session"
        }
        fn subject(&self) -> &str {
            "alice"
        }
        fn open_run(&self, _: Option<&str>) -> Option<(String, CancellationToken)> {
            Some(("r1".into(), self.cancel.clone()))
        }
        fn send(&self, m: AgentMessage<'_>) {
            self.sent
                .lock()
                .unwrap()
                .push((m.channel.to_string(), m.payload));
        }
        fn writable(&self) -> HandleFuture<'_, ()> {
            Box::pin(async {})
        }
        fn over_high_water(&self) -> bool {
            self.behind.load(Ordering::Relaxed)
        }
        fn close_run(&self, _: &str, ending: RunEnding) {
            self.ended.lock().unwrap().get_or_insert(ending);
        }
        fn pause_channel(&self, _: &str) {}
        fn resume_channel(&self, _: &str) {}
        fn tools(&self) -> Vec<ToolSpec> {
            Vec::new()
        }
        fn call_tool(&self, _: AgentToolCall) -> HandleFuture<'_, ToolOutcome> {
            Box::pin(async { ToolOutcome::cancelled() })
        }
    }

    fn link_with_job() -> (WorkerLink, Arc<Session>, Value) {
        let session = Arc::new(Session::default());
        let reply = Reply::new(session.clone(), Some("t".into()));
        let run = reply.start_run().expect("a run");
        let mut link = WorkerLink::new("w".into());
        let _ = link.hello(0);
        let job = link.assign(
            Job {
                run,
                text: "hi".into(),
                session: "user-session".into(),
                subject: "alice".into(),
                thread_id: Some("t".into()),
                history: None,
            },
            0,
        );
        (link, session, frame(&job))
    }

    fn frame(out: &Output) -> Value {
        match out {
            Output::Frame(text) => serde_json::from_str(text).unwrap(),
            Output::Close(code, reason) => json!({"close": code, "reason": reason}),
        }
    }

    fn from_worker(
        seq: u64,
        ack: Option<u64>,
        ty: &str,
        payload: Value,
        run: Option<&str>,
    ) -> Vec<u8> {
        let mut env = json!({"id": format!("w{seq}"), "session": "w", "seq": seq.to_string(),
                             "ts": "0", "channel": "AGENT", "type": ty, "payload": payload});
        if let Some(a) = ack {
            env["ack"] = json!(a.to_string());
        }
        if let Some(r) = run {
            env["run_id"] = json!(r);
        }
        env.to_string().into_bytes()
    }

    #[test]
    fn the_job_names_the_run_and_its_user() {
        let (_, _, job) = link_with_job();
        assert_eq!(job["type"], "RUN_STARTED");
        assert_eq!(job["seq"], "2", "after the HAI");
        assert_eq!(job["run_id"], "r1");
        assert_eq!(
            job["payload"]["metadata"],
            json!({"session": "user-session", "subject": "alice", "conversation": "t", "text": "hi"})
        );
    }

    #[test]
    fn run_messages_reach_the_session_and_duplicates_do_not() {
        let (mut link, session, _) = link_with_job();
        let part = json!({"message_id": "m", "text": "a"});
        assert!(link
            .on_text(
                &from_worker(1, None, "MESSAGE_PART", part.clone(), Some("r1")),
                0
            )
            .is_empty());
        assert!(link
            .on_text(&from_worker(1, None, "MESSAGE_PART", part, Some("r1")), 0)
            .is_empty());
        assert_eq!(
            session.sent.lock().unwrap().len(),
            1,
            "the repeated seq is dropped"
        );
        link.on_text(
            &from_worker(2, None, "RUN_FINISHED", json!({"status": "OK"}), Some("r1")),
            0,
        );
        assert_eq!(
            *session.ended.lock().unwrap(),
            Some(RunEnding::Finished(RunStatus::Ok))
        );
        assert_eq!(link.open_runs(), 0);
        // Now a stray: RUN_NOT_FOUND, acking the worker's seq.
        let out = link.on_text(
            &from_worker(
                3,
                None,
                "MESSAGE_PART",
                json!({"message_id": "m", "text": "b"}),
                Some("r1"),
            ),
            0,
        );
        let e = frame(&out[0]);
        assert_eq!(e["payload"]["code"], "RUN_NOT_FOUND");
        assert_eq!(e["payload"]["related_id"], "w3");
        assert_eq!(e["ack"], "3");
    }

    #[test]
    fn a_worker_error_code_is_kept_when_known() {
        let (mut link, session, _) = link_with_job();
        link.on_text(
            &from_worker(
                1,
                None,
                "RUN_ERROR",
                json!({"code": "RATE_LIMITED", "message": "slow down"}),
                Some("r1"),
            ),
            0,
        );
        assert_eq!(
            *session.ended.lock().unwrap(),
            Some(RunEnding::Failed {
                code: ErrorCode::RateLimited,
                message: "slow down".into()
            })
        );
    }

    #[test]
    fn a_cancel_goes_out_once_and_the_deadline_finishes_the_run() {
        let (mut link, session, _) = link_with_job();
        let t0 = Instant::now();
        assert!(link.poll_cancels(t0, 0).is_empty());
        session.cancel.cancel();
        let out = link.poll_cancels(t0, 0);
        assert_eq!(out.len(), 1);
        let c = frame(&out[0]);
        assert_eq!(c["type"], "RUN_CANCEL");
        assert_eq!(c["payload"]["run_id"], "r1");
        assert!(link.poll_cancels(t0, 0).is_empty(), "once");
        assert_eq!(link.next_deadline(), Some(t0 + CANCEL_DEADLINE));
        link.expire(t0 + CANCEL_DEADLINE - Duration::from_millis(1));
        assert_eq!(link.open_runs(), 1);
        link.expire(t0 + CANCEL_DEADLINE);
        assert_eq!(link.open_runs(), 0);
        assert_eq!(
            *session.ended.lock().unwrap(),
            Some(RunEnding::Finished(RunStatus::Cancelled))
        );
    }

    #[test]
    fn a_user_behind_pauses_the_worker_and_messages_sent_after_the_pause_are_refused() {
        let (mut link, session, _) = link_with_job();
        assert!(link.check_pressure(0).is_none());
        session.behind.store(true, Ordering::Relaxed);
        let pause = frame(&link.check_pressure(0).expect("a pause"));
        assert_eq!(pause["type"], "PAUSE_CHANNEL");
        assert_eq!(pause["payload"]["channel"], "AGENT");
        let pause_seq: u64 = pause["seq"].as_str().unwrap().parse().unwrap();
        assert!(link.check_pressure(0).is_none(), "once");
        let part = json!({"message_id": "m", "text": "x"});
        // Sent before the worker saw the pause (its ack is older): taken.
        assert!(link
            .on_text(
                &from_worker(
                    1,
                    Some(pause_seq - 1),
                    "MESSAGE_PART",
                    part.clone(),
                    Some("r1")
                ),
                0
            )
            .is_empty());
        // Sent after: refused.
        let out = link.on_text(
            &from_worker(2, Some(pause_seq), "MESSAGE_PART", part, Some("r1")),
            0,
        );
        assert_eq!(frame(&out[0])["payload"]["code"], "FLOW_CONTROL_VIOLATION");
        assert_eq!(session.sent.lock().unwrap().len(), 1);
        // The run's end always goes through.
        link.on_text(
            &from_worker(3, Some(pause_seq), "RUN_FINISHED", json!({}), Some("r1")),
            0,
        );
        assert!(session.ended.lock().unwrap().is_some());
        session.behind.store(false, Ordering::Relaxed);
        assert_eq!(
            frame(&link.check_pressure(0).expect("a resume"))["type"],
            "RESUME_CHANNEL"
        );
    }

    #[test]
    fn repeated_violations_close_and_a_departure_fails_the_open_runs() {
        let (mut link, session, _) = link_with_job();
        for i in 0..MAX_PROTOCOL_VIOLATIONS {
            let out = link.on_text(b"{}", 0);
            assert_eq!(out.len(), 1, "violation {i}: an error only");
        }
        let out = link.on_text(b"{}", 0);
        assert_eq!(
            out.last(),
            Some(&Output::Close(1008, "too many protocol violations".into()))
        );
        link.gone();
        assert!(matches!(
            *session.ended.lock().unwrap(),
            Some(RunEnding::Failed {
                code: ErrorCode::AgentError,
                ..
            })
        ));
    }

    #[test]
    fn what_a_worker_does_not_send_is_refused_and_a_ping_answered() {
        let (mut link, _, _) = link_with_job();
        let out = link.on_text(
            &from_worker(1, None, "REPLAY_REQUEST", json!({"from_seq": "1"}), None),
            0,
        );
        assert_eq!(frame(&out[0])["payload"]["code"], "UNSUPPORTED_TYPE");
        let out = link.on_text(
            &from_worker(2, None, "PING", json!({"nonce": "n"}), None),
            0,
        );
        let pong = frame(&out[0]);
        assert_eq!(pong["type"], "PONG");
        assert_eq!(pong["payload"]["nonce"], "n");
    }
}
