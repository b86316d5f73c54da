//! Checking a WebSocket's frames as they are read: the frames yawc would accept but the
//! protocol forbids end the input, and the connection then fails with 1002.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client's bytes, checked frame header by frame header for what yawc 0.5 lets
/// through, answers with the wrong code, or reports without closing (RFC 6455 sections
/// 5.2, 5.4, 5.5): a reserved opcode (yawc closes with 1003), a control frame over 125
/// bytes (yawc echoes a long close frame), a continuation with no message to continue and
/// a new message inside a fragmented one. Input ends just before the first such frame, and
/// the connection then fails with 1002.
///
/// Headers are only scanned; the bytes pass through untouched.
pub(super) struct Checked<S> {
    io: S,
    /// The header being read (up to 14 bytes) and how much of it has arrived.
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// A message was started by a frame without FIN.
    in_message: bool,
    /// The first byte of a header that arrived alone, held back until the second one
    /// arrives (a frame is judged on both), so that input never ends inside a header.
    held: Option<u8>,
    violation: Arc<OnceLock<&'static str>>,
}

enum Scan {
    Ok,
    /// The last byte is a header's first byte.
    Hold,
    /// A bad frame starts at this offset.
    Bad(usize, &'static str),
}

impl<S> Checked<S> {
    pub(super) fn new(io: S, violation: Arc<OnceLock<&'static str>>) -> Checked<S> {
        Checked {
            io,
            header: [0; 14],
            have: 0,
            payload_left: 0,
            in_message: false,
            held: None,
            violation,
        }
    }

    /// Judges a frame on its first two bytes.
    fn check(&mut self, b0: u8, b1: u8) -> Option<&'static str> {
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        match opcode {
            0x3..=0x7 | 0xb..=0xf => return Some("reserved opcode"),
            0x8..=0xa if b1 & 0x7f > 125 => return Some("control frame over 125 bytes"),
            0x0 if !self.in_message => return Some("continuation frame with nothing to continue"),
            0x1 | 0x2 if self.in_message => return Some("new message inside a fragmented one"),
            _ => {}
        }
        if opcode <= 0x2 {
            self.in_message = !fin;
        }
        None
    }

    fn scan(&mut self, data: &[u8]) -> Scan {
        let mut i = 0;
        let mut frame_start = 0;
        while i < data.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min((data.len() - i) as u64);
                self.payload_left -= n;
                i += n as usize;
                continue;
            }
            if self.have == 0 {
                frame_start = i;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.have == 2 {
                if let Some(reason) = self.check(self.header[0], self.header[1]) {
                    return Scan::Bad(frame_start, reason);
                }
            }
            if self.have < 2 {
                continue;
            }
            let len_code = self.header[1] & 0x7f;
            let extra = match len_code {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + extra + mask {
                continue;
            }
            self.payload_left = match extra {
                0 => u64::from(len_code),
                _ => self.header[2..2 + extra]
                    .iter()
                    .fold(0, |n, &b| (n << 8) | u64::from(b)),
            };
            self.have = 0;
        }
        if self.have == 1 {
            return Scan::Hold;
        }
        Scan::Ok
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Checked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.violation.get().is_some() {
            return Poll::Ready(Ok(())); // the end of input
        }
        loop {
            let start = buf.filled().len();
            let held = this.held.take();
            if let Some(b) = held {
                if buf.remaining() == 0 {
                    this.held = held;
                    return Poll::Ready(Ok(()));
                }
                buf.put_slice(&[b]);
                if buf.remaining() == 0 {
                    // No room for the byte after it: pass it on; the scan goes on from it.
                    this.header[0] = b;
                    this.have = 1;
                    return Poll::Ready(Ok(()));
                }
            }
            let before = buf.filled().len();
            let res = Pin::new(&mut this.io).poll_read(cx, buf);
            if !matches!(res, Poll::Ready(Ok(()))) || buf.filled().len() == before {
                // Pending, an error or the end of the stream: a held byte stays held
                // unless the stream ended, when it is passed on.
                if !matches!(res, Poll::Ready(Ok(()))) && held.is_some() {
                    buf.set_filled(start);
                    this.held = held;
                }
                return res;
            }
            let end = buf.filled().len();
            match this.scan(&buf.filled()[start..end]) {
                Scan::Ok => return Poll::Ready(Ok(())),
                Scan::Hold => {
                    this.held = Some(buf.filled()[end - 1]);
                    this.have = 0;
                    buf.set_filled(end - 1);
                    if end - 1 > start {
                        return Poll::Ready(Ok(()));
                    }
                    // Nothing to pass yet: read on (returning nothing would mean the end).
                }
                Scan::Bad(at, reason) => {
                    tracing::debug!(reason, "websocket protocol violation");
                    let _ = this.violation.set(reason);
                    buf.set_filled(start + at);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Checked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(chunks: &[&[u8]]) -> Vec<&'static str> {
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        let mut out = Vec::new();
        for chunk in chunks {
            match c.scan(chunk) {
                Scan::Ok => out.push("ok"),
                Scan::Hold => {
                    c.have = 0;
                    out.push("hold")
                }
                Scan::Bad(_, reason) => out.push(reason),
            }
        }
        out
    }

    #[test]
    fn frames_split_anywhere_are_followed() {
        // Masked text "hi" (fin), then a masked ping with 126-byte extended length.
        let text = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        assert_eq!(
            scan_all(&[&text, &text[..3], &text[3..]]),
            ["ok", "ok", "ok"]
        );
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        // A 300-byte binary frame: 16-bit length, then the payload in pieces.
        assert!(matches!(c.scan(&[0x82, 0xfe, 0x01]), Scan::Ok));
        assert!(matches!(c.scan(&[0x2c, 1, 2, 3, 4]), Scan::Ok));
        assert_eq!(c.payload_left, 300);
        assert!(matches!(c.scan(&[0; 299]), Scan::Ok));
        assert!(matches!(c.scan(&[0, 0x81]), Scan::Hold));
    }

    #[test]
    fn bad_frames_are_found_at_their_start() {
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        let data = [0x81, 0x80, 1, 2, 3, 4, 0x83, 0x80, 1, 2, 3, 4];
        assert!(matches!(c.scan(&data), Scan::Bad(6, "reserved opcode")));
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        assert!(matches!(
            c.scan(&[0x88, 0xfe, 0, 126]),
            Scan::Bad(0, "control frame over 125 bytes")
        ));
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        assert!(matches!(c.scan(&[0x80, 0x80]), Scan::Bad(0, _)));
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        // A fragmented text message, then a second text frame inside it.
        let data = [0x01, 0x80, 1, 2, 3, 4, 0x81, 0x80, 1, 2, 3, 4];
        assert!(matches!(c.scan(&data), Scan::Bad(6, _)));
        // A control frame between fragments is fine, and so is the end of the message.
        let mut c = Checked::new((), Arc::new(OnceLock::new()));
        let data = [
            0x01, 0x80, 1, 2, 3, 4, 0x89, 0x80, 1, 2, 3, 4, 0x80, 0x80, 1, 2, 3, 4, 0x81, 0x80, 1,
            2, 3, 4,
        ];
        assert!(matches!(c.scan(&data), Scan::Ok));
    }
}
