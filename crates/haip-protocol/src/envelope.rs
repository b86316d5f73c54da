//! The HAIP envelope (contract section 1): strict parsing and wire serialization.

use std::borrow::Cow;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::error::{ErrorCode, ValidationError};
use crate::event::EventType;
use crate::json::Fields;
use crate::payload::Payload;

/// Longest `id`, `session` and `thread_id` accepted, in characters.
pub const MAX_ENVELOPE_ID_CHARS: usize = 128;

/// One HAIP message. Decimal-string fields of the wire (`seq`, `ack`, `ts`) are numbers here.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: String,
    pub session: String,
    pub seq: u64,
    pub ack: Option<u64>,
    pub ts: u64,
    pub channel: String,
    pub payload: Payload,
    pub pv: Option<u8>,
    pub crit: Option<bool>,
    pub bin_len: Option<u64>,
    pub bin_mime: Option<String>,
    pub run_id: Option<String>,
    pub thread_id: Option<String>,
    /// Envelope fields this version does not know, kept because the sender did not mark
    /// the message `crit`.
    pub extra: Map<String, Value>,
}

impl Envelope {
    /// A message with every optional field absent.
    pub fn new(
        id: impl Into<String>,
        session: impl Into<String>,
        seq: u64,
        ts: u64,
        channel: impl Into<String>,
        payload: Payload,
    ) -> Envelope {
        Envelope {
            id: id.into(),
            session: session.into(),
            seq,
            ack: None,
            ts,
            channel: channel.into(),
            payload,
            pv: None,
            crit: None,
            bin_len: None,
            bin_mime: None,
            run_id: None,
            thread_id: None,
            extra: Map::new(),
        }
    }

    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    /// Parses and validates one envelope from a text frame or NDJSON line.
    pub fn parse(text: &str) -> Result<Envelope, ValidationError> {
        let mut f = Fields::parse_with_inner(text, Some("payload"), Cow::Borrowed(""))?;
        let id = f.req_bounded_str_ref("id", MAX_ENVELOPE_ID_CHARS)?;
        // The id is copied once, into whichever of the envelope or the error gets it.
        match parse_rest(f) {
            Ok(mut env) => {
                env.id = id.into_owned();
                Ok(env)
            }
            Err(e) => Err(e.with_related_id(Some(id.into_owned()))),
        }
    }

    /// Like [`Envelope::parse`], for bytes that may not be UTF-8.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Envelope, ValidationError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Envelope::parse(text),
            Err(e) => Err(ValidationError::new(
                ErrorCode::ProtocolViolation,
                None,
                format!("not UTF-8: {e}"),
            )),
        }
    }

    /// The wire form: one JSON object, no trailing newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .expect("an envelope always serializes: every map key is a string")
    }

    /// Bytes this message counts against flow-control credit: the serialized envelope plus
    /// its binary frame (`bin_len`) or its decoded base64 data (contract section 6).
    pub fn flow_cost(&self, serialized_len: usize) -> u64 {
        serialized_len as u64 + self.bin_len.unwrap_or(0) + self.payload.decoded_data_len()
    }
}

/// Every field but `id`, which the caller fills in.
fn parse_rest(mut f: Fields) -> Result<Envelope, ValidationError> {
    let session = f.req_bounded_str("session", MAX_ENVELOPE_ID_CHARS)?;
    let seq = f.req_dec_u64("seq")?;
    let ack = f.opt_dec_u64("ack")?;
    let ts = f.req_dec_u64("ts")?;
    let channel = f.req_channel("channel")?;
    let type_name = f.req_str_ref("type")?;
    let payload_field = f.take_object("payload");
    let pv = f.opt_int("pv", 0, 255)?.map(|v| v as u8);
    let crit = f.opt_bool("crit")?;
    let bin_len = f.opt_int("bin_len", 0, u64::MAX)?;
    let bin_mime = f.opt_str("bin_mime")?;
    let run_id = f.opt_bounded_str("run_id", MAX_ENVELOPE_ID_CHARS)?;
    let thread_id = f.opt_bounded_str("thread_id", MAX_ENVELOPE_ID_CHARS)?;
    let Some(payload_field) = payload_field else {
        return Err(ValidationError::violation("payload", "is required"));
    };
    let Some(event_type) = EventType::parse(&type_name) else {
        return Err(ValidationError::new(
            ErrorCode::UnsupportedType,
            Some("type".into()),
            format!("unknown event type {type_name:?}"),
        ));
    };
    let payload = Payload::parse(event_type, payload_field, crit == Some(true))?;
    let extra = f.finish(crit == Some(true))?;
    Ok(Envelope {
        id: String::new(),
        session,
        seq,
        ack,
        ts,
        channel,
        payload,
        pv,
        crit,
        bin_len,
        bin_mime,
        run_id,
        thread_id,
        extra,
    })
}

/// A decimal-string field of the wire (`seq`, `ack`, `ts`).
struct Dec(u64);

impl Serialize for Dec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl Envelope {
    /// The fields that differ between sessions sent the same message.
    fn serialize_head<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("session", &self.session)?;
        m.serialize_entry("seq", &Dec(self.seq))?;
        if let Some(ack) = self.ack {
            m.serialize_entry("ack", &Dec(ack))?;
        }
        m.serialize_entry("ts", &Dec(self.ts))
    }

    /// Every field from `channel` on: the same for every session sent the message.
    fn serialize_rest<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("channel", &self.channel)?;
        m.serialize_entry("type", self.event_type().as_str())?;
        m.serialize_entry("payload", &self.payload)?;
        if let Some(pv) = self.pv {
            m.serialize_entry("pv", &pv)?;
        }
        if let Some(crit) = self.crit {
            m.serialize_entry("crit", &crit)?;
        }
        if let Some(bin_len) = self.bin_len {
            m.serialize_entry("bin_len", &bin_len)?;
        }
        if let Some(bin_mime) = &self.bin_mime {
            m.serialize_entry("bin_mime", bin_mime)?;
        }
        if let Some(run_id) = &self.run_id {
            m.serialize_entry("run_id", run_id)?;
        }
        if let Some(thread_id) = &self.thread_id {
            m.serialize_entry("thread_id", thread_id)?;
        }
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        Ok(())
    }

    /// The wire form's tail from `channel` on (`,"channel":...}`), for a message sent to
    /// many sessions: serialized once, then completed for each session by
    /// [`Envelope::json_head`] (or [`Envelope::write_json_head`]) before it.
    pub fn shared_json(&self) -> String {
        struct Rest<'a>(&'a Envelope);
        impl Serialize for Rest<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                self.0.serialize_rest(&mut m)?;
                m.end()
            }
        }
        let mut json = serde_json::to_string(&Rest(self))
            .expect("an envelope always serializes: every map key is a string");
        json.replace_range(..1, ","); // `{"channel"` -> `,"channel"`
        json
    }

    /// The start of the wire form, up to `ts`: what [`Envelope::shared_json`] completes.
    pub fn json_head(id: &str, session: &str, seq: u64, ack: Option<u64>, ts: u64) -> String {
        let mut json = String::with_capacity(id.len() + session.len() + 80);
        let _ = Envelope::write_json_head(&mut json, id, session, seq, ack, ts);
        json
    }

    /// Writes what [`Envelope::json_head`] returns, to any text sink (a connection's write
    /// buffer: a message shared by many sessions need not keep its head rendered).
    pub fn write_json_head<W: std::fmt::Write>(
        out: &mut W,
        id: &str,
        session: &str,
        seq: u64,
        ack: Option<u64>,
        ts: u64,
    ) -> std::fmt::Result {
        out.write_str("{\"id\":")?;
        write_json_str(out, id)?;
        out.write_str(",\"session\":")?;
        write_json_str(out, session)?;
        write!(out, ",\"seq\":\"{seq}\"")?;
        if let Some(ack) = ack {
            write!(out, ",\"ack\":\"{ack}\"")?;
        }
        write!(out, ",\"ts\":\"{ts}\"")
    }

    /// The length of what [`Envelope::json_head`] returns, without writing it.
    pub fn json_head_len(id: &str, session: &str, seq: u64, ack: Option<u64>, ts: u64) -> usize {
        let digits = |n: u64| n.checked_ilog10().map_or(1, |d| d as usize + 1);
        // {"id": ,"session": ,"seq":"" ,"ts":""  and ,"ack":"" when present
        let fixed = 6 + 11 + 9 + 8 + ack.map_or(0, |a| 9 + digits(a));
        fixed + json_str_len(id) + json_str_len(session) + digits(seq) + digits(ts)
    }
}

fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Writes `s` as a JSON string, escaped exactly as serde_json escapes it.
fn write_json_str<W: std::fmt::Write>(out: &mut W, s: &str) -> std::fmt::Result {
    if needs_escape(s) {
        out.write_str(&serde_json::to_string(s).expect("a string always serializes"))
    } else {
        out.write_char('"')?;
        out.write_str(s)?;
        out.write_char('"')
    }
}

/// The length of `s` written by [`write_json_str`].
fn json_str_len(s: &str) -> usize {
    if needs_escape(s) {
        serde_json::to_string(s).map_or(0, |j| j.len())
    } else {
        s.len() + 2
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        self.serialize_head(&mut m)?;
        self.serialize_rest(&mut m)?;
        m.end()
    }
}
