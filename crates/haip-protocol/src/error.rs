//! Error codes of the wire contract (section 8) and the typed validation error.

use std::fmt;

/// Every error code the contract defines. `as_str` gives the wire spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ProtocolViolation,
    SeqViolation,
    FlowControlViolation,
    VersionIncompatible,
    UnsupportedType,
    RunLimitExceeded,
    RunNotFound,
    ReplayTooOld,
    ResumeFailed,
    AuthenticationFailed,
    SessionNotFound,
    ToolNotFound,
    ToolExecutionError,
    BinaryFrameError,
    RateLimited,
    InternalError,
    /// The agent behind the server failed (contract section 12): its upstream model server
    /// refused or broke off, or no agent worker was there to answer.
    AgentError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::ProtocolViolation,
        ErrorCode::SeqViolation,
        ErrorCode::FlowControlViolation,
        ErrorCode::VersionIncompatible,
        ErrorCode::UnsupportedType,
        ErrorCode::RunLimitExceeded,
        ErrorCode::RunNotFound,
        ErrorCode::ReplayTooOld,
        ErrorCode::ResumeFailed,
        ErrorCode::AuthenticationFailed,
        ErrorCode::SessionNotFound,
        ErrorCode::ToolNotFound,
        ErrorCode::ToolExecutionError,
        ErrorCode::BinaryFrameError,
        ErrorCode::RateLimited,
        ErrorCode::InternalError,
        ErrorCode::AgentError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ProtocolViolation => "PROTOCOL_VIOLATION",
            ErrorCode::SeqViolation => "SEQ_VIOLATION",
            ErrorCode::FlowControlViolation => "FLOW_CONTROL_VIOLATION",
            ErrorCode::VersionIncompatible => "VERSION_INCOMPATIBLE",
            ErrorCode::UnsupportedType => "UNSUPPORTED_TYPE",
            ErrorCode::RunLimitExceeded => "RUN_LIMIT_EXCEEDED",
            ErrorCode::RunNotFound => "RUN_NOT_FOUND",
            ErrorCode::ReplayTooOld => "REPLAY_TOO_OLD",
            ErrorCode::ResumeFailed => "RESUME_FAILED",
            ErrorCode::AuthenticationFailed => "AUTHENTICATION_FAILED",
            ErrorCode::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorCode::ToolNotFound => "TOOL_NOT_FOUND",
            ErrorCode::ToolExecutionError => "TOOL_EXECUTION_ERROR",
            ErrorCode::BinaryFrameError => "BINARY_FRAME_ERROR",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::AgentError => "AGENT_ERROR",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an inbound message was refused. It carries everything the receiver needs to answer
/// with an ERROR envelope: the code, the field at fault (a dotted path such as
/// `payload.message_id`, or `None` when the message as a whole is at fault), a human reason,
/// and the offending message's id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {}: {reason}", field.as_deref().unwrap_or("-"))]
pub struct ValidationError {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub reason: String,
    pub related_id: Option<String>,
}

impl ValidationError {
    pub fn new(code: ErrorCode, field: Option<String>, reason: impl Into<String>) -> Self {
        ValidationError {
            code,
            field,
            reason: reason.into(),
            related_id: None,
        }
    }

    pub fn violation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorCode::ProtocolViolation, Some(field.into()), reason)
    }

    pub fn with_related_id(mut self, id: Option<String>) -> Self {
        self.related_id = id;
        self
    }

    /// The `detail` object of the ERROR payload answering this failure.
    pub fn detail(&self) -> serde_json::Value {
        let mut detail = serde_json::Map::new();
        if let Some(field) = &self.field {
            detail.insert("field".into(), field.clone().into());
        }
        detail.insert("reason".into(), self.reason.clone().into());
        serde_json::Value::Object(detail)
    }
}
