//! Topics and subscriptions: every received message has the topic `<channel>.<type>` in
//! lower case (`agent.message_part`); a pattern matches `*` to one dot-separated segment and
//! `>` (last only) to one or more trailing segments.

/// The topic of a message on `channel` of type `event_type` (`AGENT`, `MESSAGE_PART`).
pub fn topic(channel: &str, event_type: &str) -> String {
    format!("{channel}.{event_type}").to_ascii_lowercase()
}

/// A parsed subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<String>,
}

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

impl Pattern {
    pub fn parse(pattern: &str) -> Result<Pattern, PatternError> {
        let bad = |reason| PatternError {
            pattern: pattern.to_string(),
            reason,
        };
        let segments: Vec<String> = pattern.split('.').map(|s| s.to_ascii_lowercase()).collect();
        if segments.iter().any(String::is_empty) {
            return Err(bad("empty segment"));
        }
        let last = segments.len() - 1;
        for (i, s) in segments.iter().enumerate() {
            if s == ">" && i != last {
                return Err(bad("'>' may only be the last segment"));
            }
            if s.len() > 1 && (s.contains('*') || s.contains('>')) {
                return Err(bad("wildcards stand alone in a segment"));
            }
        }
        Ok(Pattern { segments })
    }

    pub fn matches(&self, topic: &str) -> bool {
        // Walks the topic's segments without collecting them: this runs for every message
        // and every subscriber.
        let mut segments = topic.split('.');
        for seg in &self.segments {
            if seg == ">" {
                return segments.next().is_some(); // one or more segments left
            }
            let Some(t) = segments.next() else {
                return false;
            };
            if seg != "*" && !seg.eq_ignore_ascii_case(t) {
                return false;
            }
        }
        segments.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p).unwrap().matches(t)
    }

    #[test]
    fn topics_are_lower_case_channel_dot_type() {
        assert_eq!(topic("AGENT", "MESSAGE_PART"), "agent.message_part");
    }

    #[test]
    fn exact_and_single_segment_wildcards() {
        assert!(m("agent.message_part", "agent.message_part"));
        assert!(m("AGENT.Message_Part", "agent.message_part"));
        assert!(!m("agent.message_part", "agent.message_end"));
        assert!(m("agent.*", "agent.message_part"));
        assert!(m("*.tool_done", "agent.tool_done"));
        assert!(!m("*.tool_done", "agent.tool_update"));
        assert!(!m("agent.*", "agent"));
        assert!(!m("agent.*", "agent.a.b"));
        assert!(m("*.*", "system.ping"));
    }

    #[test]
    fn tail_wildcard_needs_one_or_more_segments() {
        assert!(m("agent.>", "agent.message_part"));
        assert!(m("agent.>", "agent.a.b"));
        assert!(!m("agent.>", "agent"));
        assert!(!m("agent.>", "user.message_part"));
        assert!(m(">", "system.ping"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for p in ["", "agent.", ".x", "a.>.b", "ag*", "a.b>"] {
            assert!(Pattern::parse(p).is_err(), "{p:?}");
        }
    }
}
