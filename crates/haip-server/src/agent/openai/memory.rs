//! Conversation memory: the messages of each conversation, as the model server is sent
//! them, bounded per conversation (AGENT_HISTORY) and in the number of conversations.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

/// Conversations kept at most; the one used longest ago is forgotten first.
pub const MAX_CONVERSATIONS: usize = 10_000;

#[derive(Debug)]
pub struct Conversations {
    /// Messages kept per conversation.
    limit: usize,
    max_conversations: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_key: HashMap<String, Conversation>,
    clock: u64,
}

#[derive(Debug, Default)]
struct Conversation {
    messages: VecDeque<Value>,
    last_used: u64,
}

impl Conversations {
    pub fn new(limit: usize) -> Conversations {
        Conversations::with_capacity(limit, MAX_CONVERSATIONS)
    }

    pub fn with_capacity(limit: usize, max_conversations: usize) -> Conversations {
        Conversations {
            limit,
            max_conversations: max_conversations.max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The conversation's messages, oldest first.
    pub fn history(&self, key: &str) -> Vec<Value> {
        self.lock()
            .by_key
            .get(key)
            .map(|c| c.messages.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Appends a turn's messages; the oldest are dropped past the limit. A conversation
    /// never starts with a tool result whose call was dropped: the model server would
    /// refuse it.
    pub fn record(&self, key: &str, messages: Vec<Value>) {
        if self.limit == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if !inner.by_key.contains_key(key) && inner.by_key.len() >= self.max_conversations {
            let oldest = inner
                .by_key
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.by_key.remove(&oldest);
            }
        }
        let conversation = inner.by_key.entry(key.to_string()).or_default();
        conversation.last_used = now;
        conversation.messages.extend(messages);
        while conversation.messages.len() > self.limit {
            conversation.messages.pop_front();
        }
        while conversation
            .messages
            .front()
            .is_some_and(|m| m["role"] == "tool")
        {
            conversation.messages.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(n: u32) -> Value {
        json!({"role": "user", "content": n.to_string()})
    }

    #[test]
    fn the_oldest_messages_go_first() {
        let c = Conversations::new(3);
        c.record("a", vec![user(1), user(2)]);
        c.record("a", vec![user(3), user(4)]);
        assert_eq!(c.history("a"), [user(2), user(3), user(4)]);
        assert!(c.history("b").is_empty());
    }

    #[test]
    fn a_tool_result_without_its_call_is_dropped_too() {
        let c = Conversations::new(2);
        let call = json!({"role": "assistant", "tool_calls": []});
        let result = json!({"role": "tool", "tool_call_id": "x", "content": "1"});
        c.record("a", vec![user(1), call, result, user(2)]);
        assert_eq!(c.history("a"), [user(2)]);
    }

    #[test]
    fn conversations_are_bounded_in_number() {
        let c = Conversations::with_capacity(10, 2);
        c.record("a", vec![user(1)]);
        c.record("b", vec![user(2)]);
        c.record("a", vec![user(3)]);
        c.record("c", vec![user(4)]);
        assert_eq!(c.len(), 2);
        assert!(
            c.history("b").is_empty(),
            "the least recently used one went"
        );
        assert_eq!(c.history("a"), [user(1), user(3)]);
    }

    #[test]
    fn a_zero_limit_keeps_nothing() {
        let c = Conversations::new(0);
        c.record("a", vec![user(1)]);
        assert!(c.is_empty());
    }
}
