//! Answers in progress: each chat's answer is a run in an engine session of its own, read
//! by a pump that turns the session's messages into UI message chunks and keeps them, so
//! that any number of readers (the request that asked, a reload's resume, another device,
//! a WebSocket `resume`) get the whole answer from its first chunk and then live.
//!
//! The engine does the work as for any HAIP client: the user's message goes in as
//! MESSAGE_START/MESSAGE_END in the chat's thread (so HAIP clients following the thread
//! see the answer too), the configured agent answers in a run, cancel is RUN_CANCEL. The
//! session's connection is an internal one that ends once everything is answered
//! (`end_when_answered`).
//!
//! An answer stops being in progress (a resume gets 204) the moment its last chunk is
//! kept; its readers still read to the end.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use haip_protocol::payload::{MessageEnd, MessageStart, RunCancel};
use haip_protocol::{channel, Envelope, Payload};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::chunks::Translator;
use super::request::SendRequest;
use crate::engine::budget::BodyGuard;
use crate::engine::connection::{Connection, ConnectionOptions, FrameSink};
use crate::engine::outbound::{Close, Outgoing};
use crate::engine::{now_ms, Engine, Session};

/// The most chunk bytes one answer keeps; past it the answer ends with an error and its
/// run is cancelled. An agent's answer is bounded by the model; this bounds a runaway one.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Answers one user may have in progress at once, over all their chats.
pub const MAX_ANSWERS_PER_SUBJECT: usize = 16;

type ChatKey = (String, String);

/// The answers in progress, by (subject, chat id): a chat belongs to its user.
#[derive(Clone, Default)]
pub struct Chats {
    answers: Arc<Mutex<HashMap<ChatKey, Arc<Answer>>>>,
}

/// Why an answer could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum StartError {
    /// The chat already has an answer in progress.
    Busy,
    /// The user has [`MAX_ANSWERS_PER_SUBJECT`] answers in progress.
    TooMany,
}

impl Chats {
    fn lock(&self) -> MutexGuard<'_, HashMap<ChatKey, Arc<Answer>>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chat's answer in progress, if any.
    pub fn in_progress(&self, subject: &str, chat_id: &str) -> Option<Arc<Answer>> {
        self.lock()
            .get(&(subject.to_string(), chat_id.to_string()))
            .cloned()
    }

    /// Starts answering the request's text in its chat: opens a session for it on the
    /// engine, sends the user's message, and pumps the answer until it ends. `options` are
    /// the internal connection's; `slot` is held as long as it runs.
    pub fn start(
        &self,
        engine: &Arc<Engine>,
        subject: &str,
        request: SendRequest,
        mut options: ConnectionOptions,
        slot: impl Send + 'static,
        shutdown: CancellationToken,
    ) -> Result<Arc<Answer>, StartError> {
        let SendRequest {
            chat_id,
            text,
            history,
        } = request;
        let key = (subject.to_string(), chat_id.clone());
        let mut answers = self.lock();
        if answers.contains_key(&key) {
            return Err(StartError::Busy);
        }
        if answers.keys().filter(|(s, _)| s == subject).count() >= MAX_ANSWERS_PER_SUBJECT {
            return Err(StartError::TooMany);
        }
        options.end_when_answered = true;
        let mut connection = Connection::open(engine.clone(), subject, options, None, None);
        let answer = Arc::new(Answer::new(engine.clone(), connection.session.clone()));
        answers.insert(key.clone(), answer.clone());
        drop(answers);
        engine.set_history(&connection.session.id, history);
        for line in user_message(&connection.session.id, &chat_id, text) {
            connection.on_text(&line);
        }
        engine.take_history(&connection.session.id);
        let sink = AnswerSink {
            answer: answer.clone(),
            translator: Translator::new(),
            chats: self.clone(),
            key,
            buf: BytesMut::new(),
            shutdown: shutdown.clone(),
        };
        let engine = engine.clone();
        let session_id = connection.session.id.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // The sink ends the answer when the connection ends before it did (see its
            // `Drop`).
            connection
                .run(futures_util::stream::empty(), sink, shutdown)
                .await;
            // The answer's readers have all of it: the session is not kept for a resume
            // (it would count among the user's kept sessions and push out real ones).
            engine.remove(&session_id);
        });
        Ok(answer)
    }

    fn remove(&self, key: &ChatKey, answer: &Arc<Answer>) {
        let mut answers = self.lock();
        if answers.get(key).is_some_and(|a| Arc::ptr_eq(a, answer)) {
            answers.remove(key);
        }
    }
}

/// MESSAGE_START (with the whole text) and MESSAGE_END of the user's message, as a client
/// of the session would send them, in the chat's thread.
fn user_message(session: &str, chat_id: &str, text: String) -> [Vec<u8>; 2] {
    let message_id = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    let mut start = Envelope::new(
        uuid::Uuid::new_v4().to_string(),
        session,
        1,
        now,
        channel::USER,
        Payload::MessageStart(MessageStart {
            message_id: message_id.clone(),
            author: None,
            text: Some(text),
            extra: Map::new(),
        }),
    );
    start.thread_id = Some(chat_id.to_string());
    let mut end = Envelope::new(
        uuid::Uuid::new_v4().to_string(),
        session,
        2,
        now,
        channel::USER,
        Payload::MessageEnd(MessageEnd {
            message_id,
            tokens: None,
            extra: Map::new(),
        }),
    );
    end.thread_id = Some(chat_id.to_string());
    [start.to_json().into_bytes(), end.to_json().into_bytes()]
}

/// One answer: its chunks so far (JSON text each), kept for every reader.
pub struct Answer {
    engine: Arc<Engine>,
    session: Arc<Session>,
    log: Mutex<Log>,
    /// Bumped at each change; readers wait on it.
    version: watch::Sender<u64>,
}

struct Log {
    chunks: Vec<Bytes>,
    bytes: usize,
    /// `bytes`, counted in the server's memory budget while the answer is kept.
    counted: BodyGuard,
    ended: bool,
    run_id: Option<String>,
    cancel_requested: bool,
}

impl Answer {
    fn new(engine: Arc<Engine>, session: Arc<Session>) -> Answer {
        Answer {
            session,
            log: Mutex::new(Log {
                chunks: Vec::new(),
                bytes: 0,
                counted: engine.budget.keeping_answer(),
                ended: false,
                run_id: None,
                cancel_requested: false,
            }),
            version: watch::channel(0).0,
            engine,
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reader of the whole answer from its first chunk.
    pub fn reader(self: &Arc<Self>) -> AnswerReader {
        self.reader_after(None)
    }

    /// A reader of the chunks after index `after` (all of them when `None`).
    pub fn reader_after(self: &Arc<Self>, after: Option<usize>) -> AnswerReader {
        AnswerReader {
            answer: self.clone(),
            next: after.map_or(0, |a| a.saturating_add(1)),
            changes: self.version.subscribe(),
        }
    }

    /// Asks the agent to stop (RUN_CANCEL); the answer then ends with `abort`. Asked
    /// before the run started, the cancel goes out as soon as it does.
    pub fn cancel(&self) {
        let run_id = {
            let mut log = self.log();
            if log.ended {
                return;
            }
            log.cancel_requested = true;
            log.run_id.clone()
        };
        if let Some(run_id) = run_id {
            self.send_cancel(run_id);
        }
    }

    fn send_cancel(&self, run_id: String) {
        let seq = self.session.lock().last_client_seq().unwrap_or(0) + 1;
        let env = Envelope::new(
            uuid::Uuid::new_v4().to_string(),
            self.session.id.as_str(),
            seq,
            now_ms(),
            channel::USER,
            Payload::RunCancel(RunCancel {
                run_id,
                extra: Map::new(),
            }),
        );
        let cost = env.to_json().len() as u64;
        self.engine.handle(&self.session, env, cost);
    }

    /// Keeps chunks; the run id once known lets a pending cancel go out.
    fn push(&self, chunks: Vec<Value>, run_id: Option<&str>, ended: bool) {
        let cancel_now = {
            let mut log = self.log();
            if log.ended {
                return;
            }
            for chunk in chunks {
                let json = Bytes::from(chunk.to_string());
                log.bytes += json.len();
                log.chunks.push(json);
            }
            let bytes = log.bytes;
            log.counted.set(bytes);
            log.ended = ended;
            let first_run_id = log.run_id.is_none() && run_id.is_some();
            if first_run_id {
                log.run_id = run_id.map(str::to_string);
            }
            (first_run_id && log.cancel_requested)
                .then(|| log.run_id.clone())
                .flatten()
        };
        self.version.send_modify(|v| *v += 1);
        if let Some(run_id) = cancel_now {
            self.send_cancel(run_id);
        }
    }

    fn bytes(&self) -> usize {
        self.log().bytes
    }
}

/// Reads an answer's chunks in order, waiting for new ones until it ends.
pub struct AnswerReader {
    answer: Arc<Answer>,
    next: usize,
    changes: watch::Receiver<u64>,
}

impl AnswerReader {
    /// The chunks not read yet, with the index of the first; waits while there are none.
    /// `None` once the answer ended and everything was read.
    pub async fn next(&mut self) -> Option<(usize, Vec<Bytes>)> {
        loop {
            self.changes.borrow_and_update();
            {
                let log = self.answer.log();
                if self.next < log.chunks.len() {
                    let first = self.next;
                    let batch = log.chunks[first..].to_vec();
                    self.next = log.chunks.len();
                    return Some((first, batch));
                }
                if log.ended {
                    return None;
                }
            }
            if self.changes.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// The internal connection's sink: translates what the session sends and keeps it.
struct AnswerSink {
    answer: Arc<Answer>,
    translator: Translator,
    chats: Chats,
    key: ChatKey,
    buf: BytesMut,
    /// The server's shutdown, to say why an answer was cut off.
    shutdown: CancellationToken,
}

impl AnswerSink {
    /// Ends the answer: out of the chats first (once a reader has the last chunk, a resume
    /// gets 204), then its last chunks.
    fn end(&mut self, chunks: Vec<Value>) {
        self.chats.remove(&self.key, &self.answer);
        self.answer.push(chunks, self.translator.run_id(), true);
    }
}

/// A connection that ended before the answer did (the server shutting down, the memory
/// budget ending the session): the readers are told, open text closed, rather than left
/// waiting.
impl Drop for AnswerSink {
    fn drop(&mut self) {
        if self.translator.is_ended() {
            return;
        }
        let chunks = self.translator.fail(if self.shutdown.is_cancelled() {
            "the answer was cut off: the server is shutting down"
        } else {
            "the answer was cut off: the server ended its session (its memory budget)"
        });
        self.end(chunks);
    }
}

impl FrameSink for AnswerSink {
    async fn send_batch(&mut self, frames: &[Arc<Outgoing>]) -> io::Result<()> {
        let mut chunks = Vec::new();
        for frame in frames {
            self.buf.clear();
            frame.put_json(&mut self.buf);
            // The engine wrote it; reading it back cannot fail short of a bug, and a
            // message it could not read is one the answer does without.
            if let Ok(env) = Envelope::parse_bytes(&self.buf) {
                chunks.extend(self.translator.translate(&env));
            }
        }
        if !self.translator.is_ended() && self.answer.bytes() > MAX_ANSWER_BYTES {
            chunks.extend(self.translator.fail(&format!(
                "the answer grew past {MAX_ANSWER_BYTES} bytes and was stopped"
            )));
            self.answer.cancel();
        }
        if self.translator.is_ended() {
            self.end(chunks);
        } else if !chunks.is_empty() {
            self.answer.push(chunks, self.translator.run_id(), false);
        }
        Ok(())
    }

    async fn keepalive(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn close(&mut self, _close: &Close) {}
}
