//! HAIP messages to the AI SDK's UI message chunks (contract section 14): a pure
//! translation, fed the messages of one answer in order. The HTTP stream, the WebSocket
//! frames and every replay are made of what it returns.
//!
//! | HAIP message (of the answer's run) | chunks |
//! |---|---|
//! | RUN_STARTED | `start` {messageId: run id}, `start-step` |
//! | MESSAGE_START (AGENT) | `text-start` {id: message id} (a new step first, after tool outputs) |
//! | MESSAGE_PART | `text-delta` {id, delta} |
//! | MESSAGE_END | `text-end` {id} |
//! | TOOL_CALL | `tool-input-available` {toolCallId, toolName, input} |
//! | TOOL_DONE OK / ERROR / CANCELLED | `tool-output-available` {toolCallId, output} / `tool-output-error` {toolCallId, errorText} |
//! | RUN_FINISHED OK | `finish-step`, `finish` {finishReason: stop} |
//! | RUN_FINISHED CANCELLED | `abort` |
//! | RUN_FINISHED ERROR, RUN_ERROR, an ERROR before the run started | `error` {errorText} |
//!
//! Text parts still open when the answer ends are closed first, so that every stream the
//! SDK reads is well formed. Everything else (PING, FLOW_UPDATE, TOOL_UPDATE, other runs)
//! gives no chunk.

use haip_protocol::payload::RunStatus;
use haip_protocol::{Envelope, Payload};
use serde_json::{json, Value};

/// The state of one answer's translation.
#[derive(Debug, Default)]
pub struct Translator {
    /// The answer's run, once RUN_STARTED came.
    run_id: Option<String>,
    /// Text parts started and not yet ended, by message id.
    open_texts: Vec<String>,
    /// A tool output came in the current step: the next text starts a new step (the model
    /// is asked again with the tools' results).
    step_has_tool_output: bool,
    ended: bool,
}

impl Translator {
    pub fn new() -> Translator {
        Translator::default()
    }

    /// True once the answer's last chunk was produced.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The answer's run id, once it started.
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// The chunks one message of the session gives, in order.
    pub fn translate(&mut self, env: &Envelope) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        match &env.payload {
            Payload::RunStarted(started) if self.run_id.is_none() => {
                let id = env.run_id.clone().or_else(|| started.run_id.clone());
                let id = id.unwrap_or_default();
                out.push(json!({"type": "start", "messageId": id}));
                out.push(json!({"type": "start-step"}));
                self.run_id = Some(id);
            }
            // An ERROR before the run started: the agent could not start one (e.g. the
            // run limit), so this is the answer.
            Payload::Error(e) if self.run_id.is_none() => {
                out.push(json!({"type": "error", "errorText": e.message}));
                self.ended = true;
            }
            _ if !self.in_run(env) => {}
            Payload::MessageStart(m) if env.channel == haip_protocol::channel::AGENT => {
                if self.step_has_tool_output {
                    out.push(json!({"type": "finish-step"}));
                    out.push(json!({"type": "start-step"}));
                    self.step_has_tool_output = false;
                }
                out.push(json!({"type": "text-start", "id": m.message_id}));
                self.open_texts.push(m.message_id.clone());
            }
            Payload::MessagePart(p) if self.open_texts.contains(&p.message_id) => {
                out.push(json!({"type": "text-delta", "id": p.message_id, "delta": p.text}));
            }
            Payload::MessageEnd(m) if self.open_texts.contains(&m.message_id) => {
                self.open_texts.retain(|id| id != &m.message_id);
                out.push(json!({"type": "text-end", "id": m.message_id}));
            }
            Payload::ToolCall(call) => {
                out.push(json!({
                    "type": "tool-input-available",
                    "toolCallId": call.call_id,
                    "toolName": call.tool,
                    "input": call.params.clone().map(Value::Object).unwrap_or_else(|| json!({})),
                }));
            }
            Payload::ToolDone(done) => {
                self.step_has_tool_output = true;
                out.push(match done.status {
                    RunStatus::Ok => json!({
                        "type": "tool-output-available",
                        "toolCallId": done.call_id,
                        "output": done.result.clone().unwrap_or(Value::Null),
                    }),
                    RunStatus::Error => json!({
                        "type": "tool-output-error",
                        "toolCallId": done.call_id,
                        "errorText": tool_error_text(done.result.as_ref()),
                    }),
                    RunStatus::Cancelled => json!({
                        "type": "tool-output-error",
                        "toolCallId": done.call_id,
                        "errorText": "cancelled",
                    }),
                });
            }
            Payload::RunFinished(finished) => {
                self.close_texts(&mut out);
                match finished.status.unwrap_or(RunStatus::Ok) {
                    RunStatus::Ok => {
                        out.push(json!({"type": "finish-step"}));
                        out.push(json!({"type": "finish", "finishReason": "stop"}));
                    }
                    RunStatus::Cancelled => out.push(json!({"type": "abort"})),
                    RunStatus::Error => out.push(json!({"type": "error",
                        "errorText": "the agent ended the answer with an error"})),
                }
                self.ended = true;
            }
            Payload::RunError(e) => {
                self.close_texts(&mut out);
                out.push(json!({"type": "error", "errorText": e.message}));
                self.ended = true;
            }
            _ => {}
        }
        out
    }

    /// Ends the answer for a reason outside HAIP (the server shutting down, the answer
    /// growing past its bound): open texts closed, then an `error` chunk.
    pub fn fail(&mut self, reason: &str) -> Vec<Value> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        self.close_texts(&mut out);
        out.push(json!({"type": "error", "errorText": reason}));
        self.ended = true;
        out
    }

    fn in_run(&self, env: &Envelope) -> bool {
        self.run_id.is_some() && env.run_id.as_deref() == self.run_id.as_deref()
    }

    fn close_texts(&mut self, out: &mut Vec<Value>) {
        for id in self.open_texts.drain(..) {
            out.push(json!({"type": "text-end", "id": id}));
        }
    }
}

/// A failed tool's error in words: its `message` when the result has one.
fn tool_error_text(result: Option<&Value>) -> String {
    match result {
        Some(Value::Object(o)) => match o.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => Value::Object(o.clone()).to_string(),
        },
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "the tool failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haip_protocol::channel;
    use haip_protocol::payload::{
        ErrorPayload, MessageEnd, MessagePart, MessageStart, Nonce, RunFinished, RunStarted,
        ToolCall, ToolDone,
    };
    use serde_json::Map;

    fn env(payload: Payload, run: Option<&str>) -> Envelope {
        let channel = match &payload {
            Payload::Error(_) | Payload::Ping(_) => channel::SYSTEM,
            _ => channel::AGENT,
        };
        let mut e = Envelope::new("id", "s", 1, 0, channel, payload);
        e.run_id = run.map(str::to_string);
        e
    }

    fn started(t: &mut Translator) -> Vec<Value> {
        t.translate(&env(
            Payload::RunStarted(RunStarted {
                run_id: Some("r1".into()),
                ..Default::default()
            }),
            Some("r1"),
        ))
    }

    fn text(kind: &str, id: &str, text: &str) -> Payload {
        match kind {
            "start" => Payload::MessageStart(MessageStart {
                message_id: id.into(),
                author: Some("echo".into()),
                text: None,
                extra: Map::new(),
            }),
            "part" => Payload::MessagePart(MessagePart {
                message_id: id.into(),
                text: text.into(),
                extra: Map::new(),
            }),
            _ => Payload::MessageEnd(MessageEnd {
                message_id: id.into(),
                tokens: Some(1),
                extra: Map::new(),
            }),
        }
    }

    fn finished(status: RunStatus) -> Payload {
        Payload::RunFinished(RunFinished {
            run_id: Some("r1".into()),
            status: Some(status),
            ..Default::default()
        })
    }

    fn error(message: &str) -> ErrorPayload {
        ErrorPayload {
            code: "AGENT_ERROR".into(),
            message: message.into(),
            related_id: None,
            detail: None,
            run_id: Some("r1".into()),
            extra: Map::new(),
        }
    }

    #[test]
    fn a_text_answer_is_start_step_text_finish() {
        let mut t = Translator::new();
        let mut all = started(&mut t);
        for p in [
            text("start", "m", ""),
            text("part", "m", "hello "),
            text("part", "m", "there"),
            text("end", "m", ""),
            finished(RunStatus::Ok),
        ] {
            all.extend(t.translate(&env(p, Some("r1"))));
        }
        assert_eq!(
            all,
            vec![
                json!({"type": "start", "messageId": "r1"}),
                json!({"type": "start-step"}),
                json!({"type": "text-start", "id": "m"}),
                json!({"type": "text-delta", "id": "m", "delta": "hello "}),
                json!({"type": "text-delta", "id": "m", "delta": "there"}),
                json!({"type": "text-end", "id": "m"}),
                json!({"type": "finish-step"}),
                json!({"type": "finish", "finishReason": "stop"}),
            ]
        );
        assert!(t.is_ended());
        assert!(t
            .translate(&env(text("part", "m", "late"), Some("r1")))
            .is_empty());
    }

    #[test]
    fn tool_calls_and_their_outputs_then_a_new_step() {
        let mut t = Translator::new();
        started(&mut t);
        let mut params = Map::new();
        params.insert("a".into(), json!(2));
        let call = t.translate(&env(
            Payload::ToolCall(ToolCall {
                call_id: "c1".into(),
                tool: "add".into(),
                params: Some(params),
                extra: Map::new(),
            }),
            Some("r1"),
        ));
        assert_eq!(
            call,
            vec![json!({"type": "tool-input-available", "toolCallId": "c1",
                        "toolName": "add", "input": {"a": 2}})]
        );
        let done = |status, result| {
            Payload::ToolDone(ToolDone {
                call_id: "c1".into(),
                status,
                result,
                extra: Map::new(),
            })
        };
        assert_eq!(
            t.translate(&env(
                done(RunStatus::Ok, Some(json!({"result": 5}))),
                Some("r1")
            )),
            vec![json!({"type": "tool-output-available", "toolCallId": "c1",
                        "output": {"result": 5}})]
        );
        assert_eq!(
            t.translate(&env(
                done(
                    RunStatus::Error,
                    Some(json!({"code": "TOOL_EXECUTION_ERROR", "message": "bad a"}))
                ),
                Some("r1")
            )),
            vec![json!({"type": "tool-output-error", "toolCallId": "c1", "errorText": "bad a"})]
        );
        assert_eq!(
            t.translate(&env(done(RunStatus::Cancelled, None), Some("r1"))),
            vec![
                json!({"type": "tool-output-error", "toolCallId": "c1", "errorText": "cancelled"})
            ]
        );
        // The model's answer after the tools is a step of its own.
        assert_eq!(
            t.translate(&env(text("start", "m2", ""), Some("r1"))),
            vec![
                json!({"type": "finish-step"}),
                json!({"type": "start-step"}),
                json!({"type": "text-start", "id": "m2"}),
            ]
        );
    }

    #[test]
    fn a_cancelled_run_ends_with_abort_after_closing_its_text() {
        let mut t = Translator::new();
        started(&mut t);
        t.translate(&env(text("start", "m", ""), Some("r1")));
        assert_eq!(
            t.translate(&env(finished(RunStatus::Cancelled), Some("r1"))),
            vec![
                json!({"type": "text-end", "id": "m"}),
                json!({"type": "abort"})
            ]
        );
        assert!(t.is_ended());
    }

    #[test]
    fn failures_are_error_chunks() {
        let mut t = Translator::new();
        started(&mut t);
        t.translate(&env(text("start", "m", ""), Some("r1")));
        assert_eq!(
            t.translate(&env(
                Payload::RunError(error("upstream said 500")),
                Some("r1")
            )),
            vec![
                json!({"type": "text-end", "id": "m"}),
                json!({"type": "error", "errorText": "upstream said 500"}),
            ]
        );
        let mut t = Translator::new();
        started(&mut t);
        assert_eq!(
            t.translate(&env(finished(RunStatus::Error), Some("r1"))),
            vec![json!({"type": "error", "errorText": "the agent ended the answer with an error"})]
        );
        // Before any run: the ERROR is the answer (e.g. too many runs).
        let mut t = Translator::new();
        let mut e = error("run limit reached");
        e.code = "RUN_LIMIT_EXCEEDED".into();
        assert_eq!(
            t.translate(&env(Payload::Error(e), None)),
            vec![json!({"type": "error", "errorText": "run limit reached"})]
        );
        assert!(t.is_ended());
        // For reasons outside HAIP.
        let mut t = Translator::new();
        started(&mut t);
        t.translate(&env(text("start", "m", ""), Some("r1")));
        assert_eq!(
            t.fail("the server is shutting down"),
            vec![
                json!({"type": "text-end", "id": "m"}),
                json!({"type": "error", "errorText": "the server is shutting down"}),
            ]
        );
        assert!(t.fail("again").is_empty());
    }

    #[test]
    fn other_messages_give_no_chunk() {
        let mut t = Translator::new();
        assert!(t
            .translate(&env(
                Payload::Ping(Nonce {
                    nonce: Some("n".into()),
                    ..Default::default()
                }),
                None
            ))
            .is_empty());
        // Messages of the run before it started, and of other runs, are not the answer's.
        assert!(t
            .translate(&env(text("part", "m", "x"), Some("r1")))
            .is_empty());
        started(&mut t);
        assert!(t
            .translate(&env(text("start", "m", ""), Some("r9")))
            .is_empty());
        // A part of a message that never started is dropped, not made up.
        assert!(t
            .translate(&env(text("part", "zz", "x"), Some("r1")))
            .is_empty());
        // The USER channel is not the answer's text.
        let mut user = env(text("start", "u", ""), Some("r1"));
        user.channel = channel::USER.into();
        assert!(t.translate(&user).is_empty());
    }
}
