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
    #[error("HTTP {status} {code}: {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
    },
    /// The connection closed (WebSocket close code, when there was one).
    #[error("connection closed ({0:?}): {1}")]
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
    /// The client was shut down or gave up reconnecting.
    #[error("the client is stopped")]
    Stopped,
}

impl ClientError {
    /// A transport error with its chain of causes ("error sending request: connection
    /// refused"), which is where the useful part usually is.
    pub(crate) fn transport(e: impl std::error::Error) -> ClientError {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        ClientError::Transport(text)
    }

    /// The HAIP error code, when the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Http { code, .. } | ClientError::Server { code, .. } => Some(code),
            ClientError::NotConnected { last, .. } => last.code(),
            _ => None,
        }
    }
}
