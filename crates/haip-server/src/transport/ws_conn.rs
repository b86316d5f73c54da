//! One WebSocket connection's frames: `WsInbound` turns what the client sends into
//! [`Inbound`] items, `WsSink` writes what the connection sends, and the closing
//! handshake is completed here.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use yawc::close::CloseCode;
use yawc::{Frame, OpCode, WebSocket, WebSocketError};

use super::ws_frames::Checked;
use crate::engine::connection::{FrameSink, Inbound};
use crate::engine::outbound::{Close, Outgoing};

/// How long a connection waits for the client's close frame after sending its own.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// One WebSocket, shared by its reading and writing halves. Both are driven by the same
/// task and never at the same moment, so the lock is never contended; it is only held
/// within a poll.
#[derive(Clone)]
pub(crate) struct WsConn(Arc<Mutex<WsState>>);

struct WsState {
    ws: WebSocket<Checked<TokioIo<Upgraded>>>,
    /// A close frame has been sent or queued, by this module or by yawc (answering the
    /// client's close, or failing the connection): nothing may follow it.
    close_sent: bool,
    /// yawc reads nothing more: the client's close came, the stream ended, or a protocol
    /// error failed the connection.
    read_closed: bool,
    /// The close this module owes the client, for errors that yawc reports without
    /// closing.
    owed_close: Option<(CloseCode, &'static str)>,
    /// A frame over the size limit was read: reported once yawc's 1009 close is out.
    too_large: bool,
    /// Set by [`Checked`] when it ended the input at a bad frame.
    violation: Arc<OnceLock<&'static str>>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "websocket closing")
}

impl WsConn {
    pub(super) fn new(
        ws: WebSocket<Checked<TokioIo<Upgraded>>>,
        violation: Arc<OnceLock<&'static str>>,
    ) -> WsConn {
        WsConn(Arc::new(Mutex::new(WsState {
            ws,
            close_sent: false,
            read_closed: false,
            owed_close: None,
            too_large: false,
            violation,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, WsState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `frames` in order, then flushes once. Refuses once a close frame is out.
    pub(crate) async fn send(&self, frames: impl IntoIterator<Item = Frame>) -> io::Result<()> {
        for frame in frames {
            poll_fn(|cx| {
                let mut s = self.lock();
                if s.close_sent {
                    return Poll::Ready(Err(closed()));
                }
                Pin::new(&mut s.ws).poll_ready(cx).map_err(io::Error::other)
            })
            .await?;
            let mut s = self.lock();
            if frame.opcode() == OpCode::Close {
                s.close_sent = true;
            }
            Pin::new(&mut s.ws)
                .start_send(frame)
                .map_err(io::Error::other)?;
        }
        poll_fn(|cx| Pin::new(&mut self.lock().ws).poll_flush(cx))
            .await
            .map_err(io::Error::other)
    }

    /// Sends a close frame, unless one was already sent.
    pub(crate) async fn send_close(&self, code: CloseCode, reason: &str) {
        if !self.lock().close_sent {
            let _ = self.send([Frame::close(code, reason)]).await;
        }
    }

    /// Completes the closing handshake once the connection is done with the socket: sends
    /// the close still owed, ends the sending side, and waits a little for the client's
    /// close frame, so that the server closes the TCP connection first (RFC 6455 7.1.1).
    pub(crate) async fn finish(&self) {
        let owed = self.lock().owed_close.take();
        if let Some((code, reason)) = owed {
            self.send_close(code, reason).await;
        }
        if !self.lock().close_sent {
            // The client went away (or a write failed): nothing to complete.
            return;
        }
        let closing = async {
            // Writes what yawc still has queued (its close frame), flushes, and shuts down
            // the sending side.
            let _ = poll_fn(|cx| {
                let mut s = self.lock();
                ready!(Pin::new(&mut s.ws).poll_ready(cx))?;
                Pin::new(&mut s.ws).poll_close(cx)
            })
            .await;
            // Reads until the client's close frame, or the end of the stream.
            while !self.lock().read_closed {
                let read = poll_fn(|cx| self.lock().ws.poll_next_frame(cx)).await;
                match read {
                    Ok(f) if f.opcode() == OpCode::Close => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, closing).await;
    }
}

/// What the client sends, as [`Inbound`] items. Ping, pong and close frames are handled
/// by yawc (pongs and the answering close are queued and written by the next read or
/// write); the stream ends when the connection is closed.
pub(crate) struct WsInbound(pub(crate) WsConn);

impl Stream for WsInbound {
    type Item = Inbound;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let mut s = self.0.lock();
        loop {
            if s.read_closed || s.owed_close.is_some() {
                return Poll::Ready(None);
            }
            match ready!(s.ws.poll_next_frame(cx)) {
                Ok(frame) => match frame.opcode() {
                    OpCode::Text => {
                        let text = frame.into_payload();
                        if std::str::from_utf8(&text).is_err() {
                            s.owed_close = Some((CloseCode::Invalid, "invalid UTF-8"));
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Inbound::Text(text)));
                    }
                    OpCode::Binary => {
                        return Poll::Ready(Some(Inbound::Binary(frame.into_payload())))
                    }
                    // yawc queued the answering close; the next read writes it and ends.
                    OpCode::Close => s.close_sent = true,
                    _ => {}
                },
                Err(WebSocketError::ConnectionClosed) => {
                    s.read_closed = true;
                    if let Some(reason) = s.violation.get().copied() {
                        s.owed_close = Some((CloseCode::Protocol, reason));
                    }
                    if std::mem::take(&mut s.too_large) {
                        return Poll::Ready(Some(Inbound::TooLarge));
                    }
                    return Poll::Ready(None);
                }
                Err(e) => {
                    // Everything else yawc reports after queuing a close (1009 for a frame
                    // over the limit, 1002 for a framing error, 1007 for a close reason
                    // that is not UTF-8); reading on writes it, then reports the end.
                    // ([`Checked`] stops the frames yawc would report without closing.)
                    tracing::debug!(error = %e, "websocket read failed");
                    if s.close_sent {
                        // A second failure: the connection is gone.
                        s.read_closed = true;
                        return Poll::Ready(None);
                    }
                    s.close_sent = true;
                    s.too_large = matches!(e, WebSocketError::FrameTooLarge);
                }
            }
        }
    }
}

/// Where the connection writes: text frames, pings and the close frame.
pub(super) struct WsSink(pub(super) WsConn);

impl FrameSink for WsSink {
    async fn send_batch(&mut self, frames: &[Arc<Outgoing>]) -> io::Result<()> {
        // Frames are valid UTF-8 JSON produced by serde_json. Audio for a client that takes
        // binary frames goes as two frames: the envelope with bin_len, then the bytes.
        let mut batch: Vec<Frame> = Vec::with_capacity(frames.len());
        for f in frames {
            match f.two_frame.as_deref() {
                Some((header, data)) => {
                    batch.push(Frame::text(header.clone()));
                    batch.push(Frame::binary(data.clone()));
                }
                None => batch.push(Frame::text(f.json())),
            }
        }
        self.0.send(batch).await
    }

    async fn keepalive(&mut self) -> io::Result<()> {
        self.0.send([Frame::ping(bytes::Bytes::new())]).await
    }

    async fn close(&mut self, close: &Close) {
        self.0
            .send_close(CloseCode::from(close.code), &close.reason)
            .await;
    }
}
