//! Typed payloads of the 22 event types and their strict parsing (contract section 2).

use std::borrow::Cow;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ValidationError;
use crate::event::EventType;
use crate::json::{self, Fields, Kind, Taken};

type Result<T> = std::result::Result<T, ValidationError>;

/// Serializes u64 values as the decimal strings the wire uses.
pub(crate) mod dec {
    use serde::Serializer;

    pub fn ser<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }
}

fn b64_opt<S: serde::Serializer>(
    v: &Option<Vec<u8>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(bytes) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes)),
        None => s.serialize_none(),
    }
}

/// Unknown fields a message carried (kept unless the message was marked `crit`).
pub type Extra = Map<String, Value>;

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FlowCredits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_credit_messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_credit_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Capabilities {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary_frames: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_control: Option<FlowCredits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_runs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_envelopes: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hai {
    pub haip_version: String,
    pub accept_major: Vec<u64>,
    /// Kept as sent: names this receiver does not know are ignored when negotiating.
    pub accept_events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "dec::opt")]
    pub last_rx_seq: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RunStarted {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// RUN_STARTED allows any extra field, even under `crit`.
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RunStatus {
    Ok,
    Cancelled,
    Error,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RunFinished {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunCancel {
    pub run_id: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The payload of ERROR, and of RUN_ERROR (which adds `run_id`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorPayload {
    /// Kept as a string: a peer may send codes this version does not know.
    /// [`crate::ErrorCode::parse`] reads the known ones.
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub related_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The payload of PING and PONG.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Nonce {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayRequest {
    #[serde(serialize_with = "dec::ser")]
    pub from_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "dec::opt")]
    pub to_seq: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageStart {
    pub message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessagePart {
    pub message_id: String,
    pub text: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageEnd {
    pub message_id: String,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "dec::opt")]
    pub tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioChunk {
    pub message_id: String,
    pub mime: String,
    /// The decoded bytes of `data`; absent when they travel in a binary frame.
    #[serde(
        rename = "data",
        skip_serializing_if = "Option::is_none",
        serialize_with = "b64_opt"
    )]
    pub data: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "dec::opt")]
    pub duration_ms: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub call_id: String,
    pub tool: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ToolProgress {
    Queued,
    Running,
    Cancelling,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolUpdate {
    pub call_id: String,
    pub status: ToolProgress,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolDone {
    pub call_id: String,
    /// OK when the sender left it out.
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCancel {
    pub call_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ToolList {
    pub tools: Vec<ToolInfo>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSchema {
    pub tool: String,
    pub schema: Map<String, Value>,
    #[serde(rename = "inputSchema", skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(rename = "outputSchema", skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowUpdate {
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_bytes: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The payload of PAUSE_CHANNEL and RESUME_CHANNEL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelRef {
    pub channel: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A payload together with its event type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Payload {
    Hai(Hai),
    RunStarted(RunStarted),
    RunFinished(RunFinished),
    RunCancel(RunCancel),
    RunError(ErrorPayload),
    Ping(Nonce),
    Pong(Nonce),
    ReplayRequest(ReplayRequest),
    MessageStart(MessageStart),
    MessagePart(MessagePart),
    MessageEnd(MessageEnd),
    AudioChunk(AudioChunk),
    ToolCall(ToolCall),
    ToolUpdate(ToolUpdate),
    ToolDone(ToolDone),
    ToolCancel(ToolCancel),
    ToolList(ToolList),
    ToolSchema(ToolSchema),
    Error(ErrorPayload),
    FlowUpdate(FlowUpdate),
    PauseChannel(ChannelRef),
    ResumeChannel(ChannelRef),
}

/// Longest id-like string (message_id, call_id, run_id...) the core accepts.
pub const MAX_ID_CHARS: usize = 128;

impl Payload {
    /// MESSAGE_START of a streamed text message by `author`.
    pub fn message_start(message_id: impl Into<String>, author: Option<&str>) -> Payload {
        Payload::MessageStart(MessageStart {
            message_id: message_id.into(),
            author: author.map(str::to_string),
            text: None,
            extra: Extra::new(),
        })
    }

    /// MESSAGE_PART: the next piece of a text message.
    pub fn message_part(message_id: impl Into<String>, text: impl Into<String>) -> Payload {
        Payload::MessagePart(MessagePart {
            message_id: message_id.into(),
            text: text.into(),
            extra: Extra::new(),
        })
    }

    /// MESSAGE_END, with the count of tokens (parts) when the sender knows it.
    pub fn message_end(message_id: impl Into<String>, tokens: Option<u64>) -> Payload {
        Payload::MessageEnd(MessageEnd {
            message_id: message_id.into(),
            tokens,
            extra: Extra::new(),
        })
    }

    pub fn event_type(&self) -> EventType {
        match self {
            Payload::Hai(_) => EventType::Hai,
            Payload::RunStarted(_) => EventType::RunStarted,
            Payload::RunFinished(_) => EventType::RunFinished,
            Payload::RunCancel(_) => EventType::RunCancel,
            Payload::RunError(_) => EventType::RunError,
            Payload::Ping(_) => EventType::Ping,
            Payload::Pong(_) => EventType::Pong,
            Payload::ReplayRequest(_) => EventType::ReplayRequest,
            Payload::MessageStart(_) => EventType::MessageStart,
            Payload::MessagePart(_) => EventType::MessagePart,
            Payload::MessageEnd(_) => EventType::MessageEnd,
            Payload::AudioChunk(_) => EventType::AudioChunk,
            Payload::ToolCall(_) => EventType::ToolCall,
            Payload::ToolUpdate(_) => EventType::ToolUpdate,
            Payload::ToolDone(_) => EventType::ToolDone,
            Payload::ToolCancel(_) => EventType::ToolCancel,
            Payload::ToolList(_) => EventType::ToolList,
            Payload::ToolSchema(_) => EventType::ToolSchema,
            Payload::Error(_) => EventType::Error,
            Payload::FlowUpdate(_) => EventType::FlowUpdate,
            Payload::PauseChannel(_) => EventType::PauseChannel,
            Payload::ResumeChannel(_) => EventType::ResumeChannel,
        }
    }

    /// Parses the `payload` object of a message of type `t`.
    pub(crate) fn parse(t: EventType, payload: Taken<'_>, crit: bool) -> Result<Payload> {
        if payload.kind() != Kind::Object {
            return Err(json::wrong_kind(
                "payload".into(),
                "an object",
                payload.kind(),
            ));
        }
        let mut fields = payload.fields(Cow::Borrowed("payload"))?;
        let f = &mut fields;
        let id = |f: &mut Fields, name: &str| f.req_bounded_str(name, MAX_ID_CHARS);
        let opt_id = |f: &mut Fields, name: &str| f.opt_bounded_str(name, MAX_ID_CHARS);
        let payload = match t {
            EventType::Hai => Payload::Hai(parse_hai(f)?),
            EventType::RunStarted => Payload::RunStarted(RunStarted {
                run_id: opt_id(f, "run_id")?,
                thread_id: opt_id(f, "thread_id")?,
                metadata: f.opt_object("metadata")?,
                extra: Extra::new(),
            }),
            EventType::RunFinished => Payload::RunFinished(RunFinished {
                run_id: opt_id(f, "run_id")?,
                status: parse_run_status(f, "status")?,
                summary: f.opt_value("summary")?,
                extra: Extra::new(),
            }),
            EventType::RunCancel => Payload::RunCancel(RunCancel {
                run_id: id(f, "run_id")?,
                extra: Extra::new(),
            }),
            EventType::RunError | EventType::Error => {
                let p = ErrorPayload {
                    code: f.req_str("code")?,
                    message: f.req_str("message")?,
                    related_id: f.opt_str("related_id")?,
                    detail: f.opt_object("detail")?,
                    run_id: None,
                    extra: Extra::new(),
                };
                if t == EventType::RunError {
                    Payload::RunError(ErrorPayload {
                        run_id: opt_id(f, "run_id")?,
                        ..p
                    })
                } else {
                    Payload::Error(p)
                }
            }
            EventType::Ping | EventType::Pong => {
                let p = Nonce {
                    nonce: f.opt_str("nonce")?,
                    extra: Extra::new(),
                };
                if t == EventType::Ping {
                    Payload::Ping(p)
                } else {
                    Payload::Pong(p)
                }
            }
            EventType::ReplayRequest => {
                let from_seq = f.req_dec_u64("from_seq")?;
                let to_seq = f.opt_dec_u64("to_seq")?;
                if to_seq.is_some_and(|to| to < from_seq) {
                    return Err(ValidationError::violation(
                        "payload.to_seq",
                        "must not be below from_seq",
                    ));
                }
                Payload::ReplayRequest(ReplayRequest {
                    from_seq,
                    to_seq,
                    extra: Extra::new(),
                })
            }
            EventType::MessageStart => Payload::MessageStart(MessageStart {
                message_id: id(f, "message_id")?,
                author: f.opt_str("author")?,
                text: f.opt_str("text")?,
                extra: Extra::new(),
            }),
            EventType::MessagePart => Payload::MessagePart(MessagePart {
                message_id: id(f, "message_id")?,
                text: f.req_str("text")?,
                extra: Extra::new(),
            }),
            EventType::MessageEnd => Payload::MessageEnd(MessageEnd {
                message_id: id(f, "message_id")?,
                tokens: f.opt_dec_u64("tokens")?,
                extra: Extra::new(),
            }),
            EventType::AudioChunk => Payload::AudioChunk(AudioChunk {
                message_id: id(f, "message_id")?,
                mime: f.req_str("mime")?,
                data: parse_base64(f, "data")?,
                duration_ms: f.opt_dec_u64("duration_ms")?,
                extra: Extra::new(),
            }),
            EventType::ToolCall => Payload::ToolCall(ToolCall {
                call_id: id(f, "call_id")?,
                tool: f.req_str("tool")?,
                params: f.opt_object("params")?,
                extra: Extra::new(),
            }),
            EventType::ToolUpdate => {
                let call_id = id(f, "call_id")?;
                let status = match f.req_str("status")?.as_str() {
                    "QUEUED" => ToolProgress::Queued,
                    "RUNNING" => ToolProgress::Running,
                    "CANCELLING" => ToolProgress::Cancelling,
                    _ => {
                        return Err(ValidationError::violation(
                            "payload.status",
                            "must be QUEUED, RUNNING or CANCELLING",
                        ))
                    }
                };
                let progress = f.opt_number("progress")?;
                if progress.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                    return Err(ValidationError::violation(
                        "payload.progress",
                        "must be between 0 and 100",
                    ));
                }
                Payload::ToolUpdate(ToolUpdate {
                    call_id,
                    status,
                    progress,
                    partial: f.opt_value("partial")?,
                    extra: Extra::new(),
                })
            }
            EventType::ToolDone => Payload::ToolDone(ToolDone {
                call_id: id(f, "call_id")?,
                status: parse_run_status(f, "status")?.unwrap_or(RunStatus::Ok),
                result: f.opt_value("result")?,
                extra: Extra::new(),
            }),
            EventType::ToolCancel => Payload::ToolCancel(ToolCancel {
                call_id: id(f, "call_id")?,
                reason: f.opt_str("reason")?,
                extra: Extra::new(),
            }),
            EventType::ToolList => Payload::ToolList(parse_tool_list(f)?),
            EventType::ToolSchema => Payload::ToolSchema(ToolSchema {
                tool: f.req_str("tool")?,
                schema: f.req_object("schema")?,
                input_schema: f.opt_value("inputSchema")?,
                output_schema: f.opt_value("outputSchema")?,
                extra: Extra::new(),
            }),
            EventType::FlowUpdate => Payload::FlowUpdate(FlowUpdate {
                channel: f.req_channel("channel")?,
                add_messages: f.opt_int("add_messages", 1, u64::MAX)?,
                add_bytes: f.opt_int("add_bytes", 1, u64::MAX)?,
                extra: Extra::new(),
            }),
            EventType::PauseChannel | EventType::ResumeChannel => {
                let p = ChannelRef {
                    channel: f.req_channel("channel")?,
                    extra: Extra::new(),
                };
                if t == EventType::PauseChannel {
                    Payload::PauseChannel(p)
                } else {
                    Payload::ResumeChannel(p)
                }
            }
        };
        let mut payload = payload;
        // RUN_STARTED allows any extra field by definition, so `crit` does not apply to it.
        *payload.extra_mut() = fields.finish(crit && t != EventType::RunStarted)?;
        Ok(payload)
    }

    /// The unknown fields kept from the wire.
    pub fn extra_mut(&mut self) -> &mut Extra {
        match self {
            Payload::Hai(p) => &mut p.extra,
            Payload::RunStarted(p) => &mut p.extra,
            Payload::RunFinished(p) => &mut p.extra,
            Payload::RunCancel(p) => &mut p.extra,
            Payload::RunError(p) | Payload::Error(p) => &mut p.extra,
            Payload::Ping(p) | Payload::Pong(p) => &mut p.extra,
            Payload::ReplayRequest(p) => &mut p.extra,
            Payload::MessageStart(p) => &mut p.extra,
            Payload::MessagePart(p) => &mut p.extra,
            Payload::MessageEnd(p) => &mut p.extra,
            Payload::AudioChunk(p) => &mut p.extra,
            Payload::ToolCall(p) => &mut p.extra,
            Payload::ToolUpdate(p) => &mut p.extra,
            Payload::ToolDone(p) => &mut p.extra,
            Payload::ToolCancel(p) => &mut p.extra,
            Payload::ToolList(p) => &mut p.extra,
            Payload::ToolSchema(p) => &mut p.extra,
            Payload::FlowUpdate(p) => &mut p.extra,
            Payload::PauseChannel(p) | Payload::ResumeChannel(p) => &mut p.extra,
        }
    }

    /// Bytes the payload's base64 `data` decodes to (flow control counts them).
    pub fn decoded_data_len(&self) -> u64 {
        match self {
            Payload::AudioChunk(AudioChunk { data: Some(d), .. }) => d.len() as u64,
            _ => 0,
        }
    }
}

fn parse_run_status(f: &mut Fields, name: &str) -> Result<Option<RunStatus>> {
    Ok(match f.opt_str(name)?.as_deref() {
        None => None,
        Some("OK") => Some(RunStatus::Ok),
        Some("CANCELLED") => Some(RunStatus::Cancelled),
        Some("ERROR") => Some(RunStatus::Error),
        Some(_) => {
            return Err(ValidationError::violation(
                f.path(name),
                "must be OK, CANCELLED or ERROR",
            ))
        }
    })
}

fn parse_base64(f: &mut Fields, name: &str) -> Result<Option<Vec<u8>>> {
    match f.opt_str(name)? {
        None => Ok(None),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Some)
            .map_err(|e| ValidationError::violation(f.path(name), format!("invalid base64: {e}"))),
    }
}

fn is_semver(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_hai(f: &mut Fields) -> Result<Hai> {
    let haip_version = f.req_str("haip_version")?;
    if !is_semver(&haip_version) {
        return Err(ValidationError::violation(
            "payload.haip_version",
            "must be MAJOR.MINOR.PATCH",
        ));
    }
    let mut accept_major = Vec::new();
    for (i, raw) in f.req_array("accept_major")?.into_iter().enumerate() {
        let n = json::parse_int(raw.get(), 0, 255).map_err(|reason| {
            ValidationError::violation(format!("payload.accept_major[{i}]"), reason)
        })?;
        accept_major.push(n);
    }
    let mut accept_events = Vec::new();
    for (i, raw) in f.req_array("accept_events")?.into_iter().enumerate() {
        let name: String = match Kind::of(raw.get()) {
            Kind::String => serde_json::from_str(raw.get()).map_err(|e| {
                ValidationError::violation(format!("payload.accept_events[{i}]"), e.to_string())
            })?,
            kind => {
                return Err(json::wrong_kind(
                    format!("payload.accept_events[{i}]"),
                    "a string",
                    kind,
                ))
            }
        };
        accept_events.push(name);
    }
    let capabilities = match f.nested("capabilities")? {
        None => None,
        Some(mut c) => {
            let flow_control = match c.nested("flow_control")? {
                None => None,
                Some(mut fc) => {
                    let credits = FlowCredits {
                        initial_credit_messages: fc.opt_int(
                            "initial_credit_messages",
                            0,
                            u64::MAX,
                        )?,
                        initial_credit_bytes: fc.opt_int("initial_credit_bytes", 0, u64::MAX)?,
                    };
                    fc.finish(false)?;
                    Some(credits)
                }
            };
            let caps = Capabilities {
                binary_frames: c.opt_bool("binary_frames")?,
                flow_control,
                max_concurrent_runs: c.opt_int("max_concurrent_runs", 1, u64::MAX)?,
                signed_envelopes: c.opt_bool("signed_envelopes")?,
                extra: Extra::new(),
            };
            // Capabilities are open-ended by nature: unknown ones are kept, never refused.
            Some(Capabilities {
                extra: c.finish(false)?,
                ..caps
            })
        }
    };
    Ok(Hai {
        haip_version,
        accept_major,
        accept_events,
        capabilities,
        last_rx_seq: f.opt_dec_u64("last_rx_seq")?,
        extra: Extra::new(),
    })
}

fn parse_tool_list(f: &mut Fields) -> Result<ToolList> {
    let mut tools = Vec::new();
    for (i, raw) in f.req_array("tools")?.into_iter().enumerate() {
        let path = format!("payload.tools[{i}]");
        if Kind::of(raw.get()) != Kind::Object {
            return Err(json::wrong_kind(path, "an object", Kind::of(raw.get())));
        }
        let mut t = Fields::parse(raw.get(), Cow::Owned(path))?;
        let name = t.req_str("name")?;
        let description = t.opt_str("description")?;
        tools.push(ToolInfo {
            name,
            description,
            extra: t.finish(false)?,
        });
    }
    Ok(ToolList {
        tools,
        extra: Extra::new(),
    })
}
