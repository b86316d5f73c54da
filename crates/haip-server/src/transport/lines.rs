//! Splits a byte stream into NDJSON lines with a length limit.

use bytes::{Bytes, BytesMut};

/// One result of feeding bytes in.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Bytes),
    /// A line grew past the limit before its newline.
    TooLong,
}

#[derive(Debug)]
pub struct LineSplitter {
    buf: BytesMut,
    limit: usize,
}

impl LineSplitter {
    pub fn new(limit: usize) -> LineSplitter {
        LineSplitter {
            buf: BytesMut::new(),
            limit,
        }
    }

    /// Adds a chunk and returns the lines it completes (blank lines are skipped).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.buf.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            if self.buf.len() > self.limit {
                out.push(Line::TooLong);
                return out;
            }
            let line = self.buf.split().freeze();
            if let Some(line) = non_blank(line) {
                out.push(Line::Complete(line));
            }
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > self.limit {
            out.push(Line::TooLong);
        }
        out
    }

    /// The last line, when the stream ends without a newline.
    /// Bytes of a line not complete yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(&mut self) -> Option<Line> {
        let line = self.buf.split().freeze();
        non_blank(line).map(Line::Complete)
    }
}

fn non_blank(line: Bytes) -> Option<Bytes> {
    let line = match line.last() {
        Some(b'\r') => line.slice(..line.len() - 1),
        _ => line,
    };
    (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: Vec<Line>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| match l {
                Line::Complete(b) => String::from_utf8_lossy(&b).into_owned(),
                Line::TooLong => "<too long>".into(),
            })
            .collect()
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut s = LineSplitter::new(100);
        assert_eq!(texts(s.push(b"{\"a\"")), Vec::<String>::new());
        assert_eq!(
            texts(s.push(b":1}\n{\"b\":2}\r\n\n  \n{\"c\"")),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
        assert_eq!(
            s.finish(),
            Some(Line::Complete(Bytes::from_static(b"{\"c\"")))
        );
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_line_over_the_limit_is_reported_even_without_newline() {
        let mut s = LineSplitter::new(4);
        assert_eq!(texts(s.push(b"12345")), vec!["<too long>"]);
        let mut s = LineSplitter::new(4);
        assert_eq!(texts(s.push(b"1234\n123456\n")), vec!["1234", "<too long>"]);
    }
}
