//! Reading an OpenAI-compatible streamed chat completion, without I/O: [`SseEvents`] cuts
//! the response body into the data of its Server-Sent Events, [`Round`] folds each chunk
//! into the text to show, the tool calls (assembled across chunks by `index`), the usage
//! and the finish reason.

use std::collections::BTreeMap;

use serde_json::Value;

/// Why a turn failed. The text is what the client reads in RUN_ERROR.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the model server at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the model server answered {status}: {message}")]
    Status { status: String, message: String },
    #[error("the model server sent a malformed chunk: {0}")]
    Malformed(String),
    #[error("the model server reported an error: {0}")]
    Reported(String),
    #[error("the model server sent nothing for {0} ms (AGENT_TIMEOUT)")]
    Timeout(u128),
    #[error("the model server ended the stream before the answer was complete")]
    Cut,
    #[error("the model asked for tools more than {0} rounds in a row (AGENT_MAX_TOOL_ROUNDS)")]
    TooManyToolRounds(u32),
}

/// Longest line taken from upstream; a longer one is refused rather than buffered.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Cuts a Server-Sent Events body into the data of its events (`data:` lines joined by
/// newlines, up to a blank line). Comments and other fields are skipped.
#[derive(Debug, Default)]
pub struct SseEvents {
    line: Vec<u8>,
    data: Option<String>,
}

impl SseEvents {
    /// Takes the next bytes of the body; complete events are appended to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<String>) -> Result<(), UpstreamError> {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&bytes[..end]);
            bytes = &bytes[end + 1..];
            let line = std::mem::take(&mut self.line);
            self.take_line(&line, out)?;
        }
        self.line.extend_from_slice(bytes);
        if self.line.len() > MAX_LINE_BYTES {
            return Err(UpstreamError::Malformed(format!(
                "a line longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// The body ended: an event not closed by a blank line still counts.
    pub fn finish(&mut self, out: &mut Vec<String>) -> Result<(), UpstreamError> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.take_line(&line, out)?;
        }
        out.extend(self.data.take());
        Ok(())
    }

    fn take_line(&mut self, line: &[u8], out: &mut Vec<String>) -> Result<(), UpstreamError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            out.extend(self.data.take());
            return Ok(());
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            return Ok(()); // a comment (":"), event:, id:, retry:
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let value = std::str::from_utf8(value)
            .map_err(|_| UpstreamError::Malformed("a line that is not UTF-8".into()))?;
        match &mut self.data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => self.data = Some(value.to_string()),
        }
        Ok(())
    }
}

/// A tool call of the model, assembled from its fragments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDraft {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What one streamed completion said.
#[derive(Debug, Default)]
pub struct Round {
    /// Tool calls by their `index`.
    pub tool_calls: BTreeMap<u64, ToolCallDraft>,
    pub completion_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    /// `data: [DONE]` arrived.
    pub done: bool,
}

/// Most tool calls one completion may ask for.
const MAX_TOOL_CALLS: usize = 128;

impl Round {
    /// Folds in one event's data; returns the text to show, if the chunk carries any.
    pub fn apply(&mut self, data: &str) -> Result<Option<String>, UpstreamError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| UpstreamError::Malformed(format!("{e} in {}", clip(data, 200))))?;
        if !chunk.is_object() {
            return Err(UpstreamError::Malformed(format!(
                "a chunk that is not a JSON object: {}",
                clip(data, 200)
            )));
        }
        if let Some(error) = chunk.get("error") {
            return Err(UpstreamError::Reported(error_message(error)));
        }
        if let Some(tokens) = chunk
            .get("usage")
            .and_then(|u| u.get("completion_tokens"))
            .and_then(Value::as_u64)
        {
            self.completion_tokens = Some(tokens);
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return Ok(None); // the usage chunk has no choices
        };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_string());
        }
        let Some(delta) = choice.get("delta") else {
            return Ok(None);
        };
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                self.apply_tool_call(position as u64, call)?;
            }
        }
        Ok(delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string))
    }

    /// One fragment: the id and name come first, the arguments in pieces. A fragment
    /// without an `index` is taken as the one at its place in the array.
    fn apply_tool_call(&mut self, position: u64, call: &Value) -> Result<(), UpstreamError> {
        let index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position);
        if !self.tool_calls.contains_key(&index) && self.tool_calls.len() >= MAX_TOOL_CALLS {
            return Err(UpstreamError::Malformed(format!(
                "more than {MAX_TOOL_CALLS} tool calls in one answer"
            )));
        }
        let draft = self.tool_calls.entry(index).or_default();
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            draft.id = id.to_string();
        }
        let Some(function) = call.get("function") else {
            return Ok(());
        };
        if let Some(name) = function.get("name").and_then(Value::as_str) {
            if !name.is_empty() {
                draft.name = name.to_string();
            }
        }
        if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
            if draft.arguments.len() + arguments.len() > MAX_LINE_BYTES {
                return Err(UpstreamError::Malformed(
                    "tool call arguments longer than 8 MiB".into(),
                ));
            }
            draft.arguments.push_str(arguments);
        }
        Ok(())
    }
}

/// The message of an OpenAI-style error value: `{"message": ...}`, a string, or its JSON.
pub fn error_message(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("message").or_else(|| o.get("error")) {
            Some(inner) => error_message(inner),
            None => clip(&error.to_string(), 300),
        },
        other => clip(&other.to_string(), 300),
    }
}

/// At most `max` bytes of `text` (on a character boundary), marked when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(pieces: &[&str]) -> Vec<String> {
        let mut sse = SseEvents::default();
        let mut out = Vec::new();
        for p in pieces {
            sse.push(p.as_bytes(), &mut out).unwrap();
        }
        sse.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn events_are_cut_at_blank_lines_wherever_the_bytes_split() {
        let body =
            "data: {\"a\":1}\r\n\r\n: keepalive\n\ndata: x\ndata: y\n\nevent: e\ndata: [DONE]\n\n";
        let whole = events(&[body]);
        assert_eq!(whole, ["{\"a\":1}", "x\ny", "[DONE]"]);
        for cut in 0..body.len() {
            assert_eq!(events(&[&body[..cut], &body[cut..]]), whole, "cut at {cut}");
        }
        assert_eq!(
            events(&["data: last"]),
            ["last"],
            "no blank line before the end"
        );
    }

    #[test]
    fn a_line_over_the_limit_is_refused() {
        let mut sse = SseEvents::default();
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        assert!(sse.push(&long, &mut Vec::new()).is_err());
    }

    #[test]
    fn content_usage_and_finish_reason_are_read() {
        let mut r = Round::default();
        let chunk = |c: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{{"content":{c}}},"finish_reason":null}}]}}"#
            )
        };
        assert_eq!(r.apply(&chunk("\"Hel\"")).unwrap().as_deref(), Some("Hel"));
        assert_eq!(
            r.apply(&chunk("\"\"")).unwrap(),
            None,
            "empty content shows nothing"
        );
        assert_eq!(r.apply(&chunk("null")).unwrap(), None);
        r.apply(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#)
            .unwrap();
        r.apply(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#)
            .unwrap();
        r.apply("[DONE]").unwrap();
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        assert_eq!(r.completion_tokens, Some(7));
        assert!(r.done);
    }

    #[test]
    fn tool_calls_are_assembled_by_index_from_fragments() {
        let mut r = Round::default();
        for data in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"add","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_b","function":{"name":"echo","arguments":"{\"mess"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\": 2,"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":" \"b\": 3}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"arguments":"age\": \"hi\"}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ] {
            assert_eq!(r.apply(data).unwrap(), None);
        }
        let calls: Vec<_> = r.tool_calls.values().cloned().collect();
        assert_eq!(
            calls,
            [
                ToolCallDraft {
                    id: "call_a".into(),
                    name: "add".into(),
                    arguments: r#"{"a": 2, "b": 3}"#.into()
                },
                ToolCallDraft {
                    id: "call_b".into(),
                    name: "echo".into(),
                    arguments: r#"{"message": "hi"}"#.into()
                },
            ]
        );
    }

    #[test]
    fn malformed_chunks_and_reported_errors_are_errors() {
        let mut r = Round::default();
        assert!(matches!(
            r.apply("{not json"),
            Err(UpstreamError::Malformed(_))
        ));
        assert!(matches!(r.apply("[1]"), Err(UpstreamError::Malformed(_))));
        match r.apply(r#"{"error":{"message":"model overloaded","type":"server_error"}}"#) {
            Err(UpstreamError::Reported(m)) => assert_eq!(m, "model overloaded"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages_are_found_in_the_usual_shapes() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(error_message(&v(r#"{"message":"bad key"}"#)), "bad key");
        assert_eq!(error_message(&v(r#""plain""#)), "plain");
        assert_eq!(error_message(&v(r#"{"error":"nested"}"#)), "nested");
        assert_eq!(clip("héllo", 2), "h...");
    }
}
