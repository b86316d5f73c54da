//! Everything that can go wrong, as types a caller can match on.

use std::time::Duration;

use crate::session::SendError;
use crate::topic::PatternError;
use crate::url::UrlError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Not connected within the time given; `last` is why the last attempt failed.
    #[error("not connected within {waited:?}: {last}")]
    NotConnected {
        waited: Duration,
        last: Box<ClientError>,
    },
    /// The socket or HTTP exchange failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// The server answered an HTTP request with an error (401 AUTHENTICATION_FAILED, 503...).
    #[error("HTTP {status}: {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
    },
    /// The connection closed (WebSocket close code, when there was one).
    #[error("the server closed the connection{}: {}", close_code(*.0), .1)]
    Closed(Option<u16>, String),
    /// The server sent ERROR about what we asked.
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error(transparent)]
    Send(#[from] SendError),
    /// The server sent something that is not a valid HAIP message; it was skipped.
    #[error("malformed message from the server ({code} {field:?}): {reason}")]
    Malformed {
        code: String,
        field: Option<String>,
        reason: String,
    },
    /// The TLS settings cannot be used (an unreadable `--ca-cert` file...).
    #[error("TLS: {0}")]
    Tls(String),
    /// The client was shut down or gave up reconnecting.
    #[error("the client is stopped")]
    Stopped,
}

/// An error with its chain of causes ("error sending request: connection refused").
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn close_code(code: Option<u16>) -> String {
    code.map(|c| format!(" with code {c}")).unwrap_or_default()
}

impl ClientError {
    /// A transport error with its chain of causes ("error sending request: connection
    /// refused"), which is where the useful part usually is.
    pub(crate) fn transport(e: impl std::error::Error) -> ClientError {
        ClientError::Transport(with_causes(&e))
    }

    /// Whether trying again cannot help: a bad URL, a token the server refuses, a path with
    /// nothing HAIP behind it, a request the server says is wrong. Connection failures,
    /// timeouts, 408, 429 and 5xx are transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Url(_) | ClientError::Pattern(_) | ClientError::Tls(_) => true,
            ClientError::Http { status, .. } => {
                (400..500).contains(status) && !matches!(status, 408 | 429)
            }
            ClientError::Closed(Some(1008), reason) => reason.contains("authentication"),
            ClientError::Server { code, .. } => code == "AUTHENTICATION_FAILED",
            // A certificate the client does not trust stays untrusted.
            ClientError::Transport(text) => text.contains("invalid peer certificate"),
            ClientError::NotConnected { last, .. } => last.is_permanent(),
            _ => false,
        }
    }

    /// Whether the server's certificate was not trusted.
    pub fn is_certificate_failure(&self) -> bool {
        match self {
            ClientError::Transport(text) => text.contains("invalid peer certificate"),
            ClientError::Tls(_) => true,
            ClientError::NotConnected { last, .. } => last.is_certificate_failure(),
            _ => false,
        }
    }

    /// Whether the server refused the token.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            ClientError::Http { status: 401, .. } => true,
            ClientError::Http { code, .. } | ClientError::Server { code, .. } => {
                code == "AUTHENTICATION_FAILED"
            }
            ClientError::Closed(Some(1008), reason) => reason.contains("authentication"),
            ClientError::NotConnected { last, .. } => last.is_auth_failure(),
            _ => false,
        }
    }

    /// The HAIP error code, when the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Http { code, .. } | ClientError::Server { code, .. } => Some(code),
            ClientError::NotConnected { last, .. } => last.code(),
            e @ ClientError::Closed(..) if e.is_auth_failure() => Some("AUTHENTICATION_FAILED"),
            _ => None,
        }
    }
}
