//! What a `useChat` front-end sends: the body of `DefaultChatTransport`'s POST and of
//! `WebSocketChatTransport`'s `send` frame. Only what the answer needs is read: the chat id
//! and the text of the last user message (regenerate asks for the same answer again).

use serde::Deserialize;
use serde_json::Value;

use crate::agent::{Speaker, Turn};
use crate::engine::threads::{valid_thread_id, MAX_THREAD_ID};

/// The longest user message taken, in bytes (the same bound as an HTTP-streaming line).
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
struct SendBody {
    id: Option<Value>,
    messages: Option<Vec<Value>>,
    trigger: Option<String>,
}

/// Earlier messages taken as the conversation's history, at most (the newest kept).
pub const MAX_HISTORY_TURNS: usize = 200;

/// A request to answer a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    pub chat_id: String,
    /// The last user message's text parts, joined.
    pub text: String,
    /// The messages before it with text, oldest first: the conversation's history.
    pub history: Vec<Turn>,
}

/// A UI message's text parts, joined by newlines.
fn text_of(message: &Value) -> String {
    message
        .get("parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Reads a send request; the error says in plain words what is wrong with it.
pub fn parse_send(body: &Value) -> Result<SendRequest, String> {
    let body: SendBody = serde_json::from_value(body.clone())
        .map_err(|e| format!("the body is not a chat request: {e}"))?;
    let chat_id = match body.id {
        Some(Value::String(id)) => check_chat_id(&id)?,
        Some(_) => return Err("id must be a string".into()),
        None => return Err("id (the chat id) is missing".into()),
    };
    match body.trigger.as_deref() {
        None | Some("submit-message") | Some("regenerate-message") => {}
        Some(other) => {
            return Err(format!(
                "trigger {other:?} is not submit-message or regenerate-message"
            ))
        }
    }
    let messages = body.messages.ok_or("messages is missing")?;
    let role = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_string);
    let last_user = messages
        .iter()
        .rposition(|m| role(m).as_deref() == Some("user"))
        .ok_or("messages holds no user message to answer")?;
    let text = text_of(&messages[last_user]);
    if text.trim().is_empty() {
        return Err("the last user message has no text".into());
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "the user message is longer than {MAX_TEXT_BYTES} bytes"
        ));
    }
    let mut history: Vec<Turn> = messages[..last_user]
        .iter()
        .filter_map(|m| {
            let speaker = match role(m).as_deref() {
                Some("user") => Speaker::User,
                Some("assistant") => Speaker::Assistant,
                _ => return None,
            };
            let text = text_of(m);
            (!text.trim().is_empty()).then_some(Turn { speaker, text })
        })
        .collect();
    if history.len() > MAX_HISTORY_TURNS {
        history.drain(..history.len() - MAX_HISTORY_TURNS);
    }
    Ok(SendRequest {
        chat_id,
        text,
        history,
    })
}

/// A chat id is the id of its conversation (a thread): what the contract allows there.
pub fn check_chat_id(id: &str) -> Result<String, String> {
    if valid_thread_id(id) {
        Ok(id.to_string())
    } else {
        Err(format!(
            "the chat id must be 1 to {MAX_THREAD_ID} characters"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(text: &str) -> Value {
        json!({"id": "u", "role": "user", "parts": [{"type": "text", "text": text}]})
    }

    #[test]
    fn takes_the_last_user_message() {
        let body = json!({
            "id": "chat-1",
            "trigger": "submit-message",
            "messageId": null,
            "messages": [
                user("first"),
                {"id": "a", "role": "assistant", "parts": [{"type": "text", "text": "answer"}]},
                {"id": "u2", "role": "user", "parts": [
                    {"type": "text", "text": "second"},
                    {"type": "file", "url": "data:,x", "mediaType": "text/plain"},
                    {"type": "text", "text": "line"}
                ]},
            ],
        });
        assert_eq!(
            parse_send(&body),
            Ok(SendRequest {
                chat_id: "chat-1".into(),
                text: "second\nline".into(),
                history: vec![
                    Turn {
                        speaker: Speaker::User,
                        text: "first".into()
                    },
                    Turn {
                        speaker: Speaker::Assistant,
                        text: "answer".into()
                    },
                ],
            })
        );
        let regenerate = json!({"id": "c", "trigger": "regenerate-message",
                                "messages": [user("again")]});
        assert_eq!(parse_send(&regenerate).unwrap().text, "again");
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        let cases = [
            (json!({"messages": [user("x")]}), "id"),
            (
                json!({"id": 5, "messages": [user("x")]}),
                "id must be a string",
            ),
            (json!({"id": "", "messages": [user("x")]}), "chat id"),
            (
                json!({"id": "x".repeat(200), "messages": [user("x")]}),
                "chat id",
            ),
            (json!({"id": "c"}), "messages is missing"),
            (
                json!({"id": "c", "messages": [{"role": "assistant", "parts": []}]}),
                "no user message",
            ),
            (json!({"id": "c", "messages": [user("  ")]}), "no text"),
            (
                json!({"id": "c", "trigger": "resume", "messages": [user("x")]}),
                "trigger",
            ),
            (json!([1, 2]), "not a chat request"),
        ];
        for (body, wanted) in cases {
            let e = parse_send(&body).expect_err(&body.to_string());
            assert!(e.contains(wanted), "{body}: {e}");
        }
    }
}
