//! The 22 event types of HAIP 1.1.2 and the set type used to filter them.

use std::fmt;

macro_rules! event_types {
    ($($variant:ident => $wire:literal),+ $(,)?) => {
        /// One of the 22 HAIP event types (the envelope's `type`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum EventType { $($variant),+ }

        impl EventType {
            pub const ALL: [EventType; 22] = [$(EventType::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $wire),+ }
            }

            fn parse_canonical(s: &str) -> Option<EventType> {
                match s { $($wire => Some(EventType::$variant),)+ _ => None }
            }
        }
    };
}

event_types! {
    Hai => "HAI",
    RunStarted => "RUN_STARTED",
    RunFinished => "RUN_FINISHED",
    RunCancel => "RUN_CANCEL",
    RunError => "RUN_ERROR",
    Ping => "PING",
    Pong => "PONG",
    ReplayRequest => "REPLAY_REQUEST",
    MessageStart => "MESSAGE_START",
    MessagePart => "MESSAGE_PART",
    MessageEnd => "MESSAGE_END",
    AudioChunk => "AUDIO_CHUNK",
    ToolCall => "TOOL_CALL",
    ToolUpdate => "TOOL_UPDATE",
    ToolDone => "TOOL_DONE",
    ToolCancel => "TOOL_CANCEL",
    ToolList => "TOOL_LIST",
    ToolSchema => "TOOL_SCHEMA",
    Error => "ERROR",
    FlowUpdate => "FLOW_UPDATE",
    PauseChannel => "PAUSE_CHANNEL",
    ResumeChannel => "RESUME_CHANNEL",
}

impl EventType {
    /// Parses a wire type name. The `TEXT_MESSAGE_*` names of an earlier draft are accepted
    /// as input aliases of the `MESSAGE_*` types, as the contract requires.
    pub fn parse(s: &str) -> Option<EventType> {
        match s {
            "TEXT_MESSAGE_START" => Some(EventType::MessageStart),
            "TEXT_MESSAGE_PART" => Some(EventType::MessagePart),
            "TEXT_MESSAGE_END" => Some(EventType::MessageEnd),
            _ => EventType::parse_canonical(s),
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of event types, stored as a bit mask (22 types fit in a `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventSet(u32);

impl EventSet {
    pub const fn empty() -> Self {
        EventSet(0)
    }

    pub fn all() -> Self {
        EventType::ALL.into_iter().collect()
    }

    pub fn insert(&mut self, t: EventType) {
        self.0 |= t.bit();
    }

    pub fn contains(self, t: EventType) -> bool {
        self.0 & t.bit() != 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = EventType> {
        EventType::ALL
            .into_iter()
            .filter(move |t| self.contains(*t))
    }
}

impl FromIterator<EventType> for EventSet {
    fn from_iter<I: IntoIterator<Item = EventType>>(iter: I) -> Self {
        let mut set = EventSet::empty();
        for t in iter {
            set.insert(t);
        }
        set
    }
}

/// Conventional channel names.
pub mod channel {
    pub const USER: &str = "USER";
    pub const AGENT: &str = "AGENT";
    pub const SYSTEM: &str = "SYSTEM";
    pub const AUDIO_IN: &str = "AUDIO_IN";
    pub const AUDIO_OUT: &str = "AUDIO_OUT";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_wire_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::ALL.len(), 22);
    }

    #[test]
    fn draft_aliases_map_to_message_types() {
        assert_eq!(
            EventType::parse("TEXT_MESSAGE_START"),
            Some(EventType::MessageStart)
        );
        assert_eq!(
            EventType::parse("TEXT_MESSAGE_PART"),
            Some(EventType::MessagePart)
        );
        assert_eq!(
            EventType::parse("TEXT_MESSAGE_END"),
            Some(EventType::MessageEnd)
        );
        assert_eq!(EventType::parse("message_start"), None);
        assert_eq!(EventType::parse("NOPE"), None);
    }

    #[test]
    fn event_set_holds_exactly_what_was_inserted() {
        let set: EventSet = [EventType::Hai, EventType::ResumeChannel]
            .into_iter()
            .collect();
        assert!(set.contains(EventType::Hai));
        assert!(set.contains(EventType::ResumeChannel));
        assert!(!set.contains(EventType::Ping));
        assert_eq!(set.len(), 2);
        assert_eq!(EventSet::all().len(), 22);
        assert!(EventSet::empty().is_empty());
    }
}
