//! A strict reader over one JSON object, field by field.
//!
//! The object is scanned once into borrowed `(key, raw value)` pairs; each field is then
//! parsed on demand into the type the contract requires. This is what lets every refusal
//! name the exact field at fault (`payload.message_id`), and lets the envelope's `id` be
//! recovered for `related_id` even when another field is broken.
//!
//! The scan is [`scan`]'s strict fast path; serde_json takes over whenever that one
//! declines, so serde_json alone decides what is refused and how the refusal is worded.

mod scan;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{ErrorCode, ValidationError};

type Result<T> = std::result::Result<T, ValidationError>;

/// The JSON kind of a raw value, read from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    /// `raw` is the text of one valid JSON value, as a field's raw value or a `RawValue`.
    pub(crate) fn of(raw: &str) -> Kind {
        match raw.as_bytes().first() {
            Some(b'n') => Kind::Null,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'"') => Kind::String,
            Some(b'[') => Kind::Array,
            Some(b'{') => Kind::Object,
            _ => Kind::Number,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }
}

/// The text of a raw JSON string. The scan that produced `raw` has checked its syntax, so a
/// string with no backslash is exactly the bytes between its quotes. `plain` says the scan
/// already knows there is none.
fn unescape(raw: &str, plain: bool) -> serde_json::Result<Cow<'_, str>> {
    match raw.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if plain || !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(raw).map(Cow::Owned),
    }
}

/// One field of an object, not yet interpreted.
struct Entry<'a> {
    key: Cow<'a, str>,
    /// [`key_bit`] of `key`.
    key_bit: u64,
    /// The value's JSON text; `None` once the field has been taken.
    raw: Option<&'a str>,
    /// The value is known to be a string without escapes (its text is then the bytes
    /// between its quotes, with no search for a backslash).
    plain_str: bool,
    /// The value is the object whose fields are [`Fields::inner`].
    holds_inner: bool,
}

impl<'a> Entry<'a> {
    fn new(key: Cow<'a, str>, raw: &'a str, plain_str: bool, holds_inner: bool) -> Entry<'a> {
        Entry {
            key_bit: key_bit(&key),
            key,
            raw: Some(raw),
            plain_str,
            holds_inner,
        }
    }
}

/// A key summed up as one bit of 64, from its length and its first and last bytes: keys
/// with different bits differ, which spares most whole-key comparisons (each field is
/// compared with the others for duplicates, and each field read looks its name up).
fn key_bit(key: &str) -> u64 {
    let bytes = key.as_bytes();
    let first = bytes.first().copied().unwrap_or(0);
    let last = bytes.last().copied().unwrap_or(0);
    let mixed = (bytes.len() as u32) ^ (u32::from(first) << 8) ^ (u32::from(last) << 16);
    1 << (mixed.wrapping_mul(0x9E37_79B9) >> 26)
}

/// The fields of one JSON object, not yet interpreted.
pub(crate) struct Fields<'a> {
    path: Cow<'static, str>,
    entries: Vec<Entry<'a>>,
    /// The fields of the object held by one of `entries` (see [`Fields::parse_with_inner`]),
    /// scanned with this one; empty when there is none.
    inner: Vec<Entry<'a>>,
    /// The union of the entries' [`key_bit`]s: most names that are absent are known to be
    /// without a search.
    key_bits: u64,
}

impl<'a> Fields<'a> {
    /// Scans `raw` as a JSON object. `path` names it in errors (`""` for the envelope).
    pub(crate) fn parse(raw: &'a str, path: Cow<'static, str>) -> Result<Fields<'a>> {
        Fields::parse_with_inner(raw, None, path)
    }

    /// Like [`Fields::parse`], and when the field named `inner` holds an object, its fields
    /// are scanned in the same pass, for [`Fields::take_object`]: the envelope's payload is
    /// then read without a second scan.
    pub(crate) fn parse_with_inner(
        raw: &'a str,
        inner: Option<&str>,
        path: Cow<'static, str>,
    ) -> Result<Fields<'a>> {
        let mut entries = Vec::with_capacity(16);
        let mut inner_entries = Vec::new();
        let scanned = scan::object(raw, inner, |field| {
            let entry = Entry::new(
                Cow::Borrowed(field.key),
                field.raw,
                field.plain_str,
                field.holds_inner,
            );
            if field.inner {
                inner_entries.push(entry);
            } else {
                entries.push(entry);
            }
        });
        if scanned.is_none() {
            // Invalid, or valid but beyond the fast scanner: serde_json decides, and words
            // the error. The inner object is then scanned when it is taken.
            entries = scan_with_serde(raw, &path)?;
            inner_entries = Vec::new();
        }
        let mut fields = Fields::checked(entries, path)?;
        fields.inner = inner_entries;
        Ok(fields)
    }

    /// Refuses a field that appears twice.
    fn checked(entries: Vec<Entry<'a>>, path: Cow<'static, str>) -> Result<Fields<'a>> {
        let mut key_bits = 0;
        for (i, entry) in entries.iter().enumerate() {
            if key_bits & entry.key_bit != 0
                && entries[..i]
                    .iter()
                    .any(|e| e.key_bit == entry.key_bit && e.key == entry.key)
            {
                return Err(ValidationError::violation(
                    join(&path, &entry.key),
                    "field appears twice",
                ));
            }
            key_bits |= entry.key_bit;
        }
        Ok(Fields {
            path,
            entries,
            inner: Vec::new(),
            key_bits,
        })
    }

    pub(crate) fn nested(&mut self, name: &str) -> Result<Option<Fields<'a>>> {
        let path = self.path(name);
        match self.take(name) {
            None => Ok(None),
            Some(raw) => match Kind::of(raw) {
                Kind::Object => Fields::parse(raw, Cow::Owned(path)).map(Some),
                kind => Err(wrong_kind(path, "an object", kind)),
            },
        }
    }

    /// The dotted path of one of this object's fields.
    pub(crate) fn path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Removes a field; JSON `null` counts as absent.
    pub(crate) fn take(&mut self, name: &str) -> Option<&'a str> {
        self.take_entry(name).map(|(raw, _)| raw)
    }

    /// Removes a field, with whether it is known to be a string without escapes.
    fn take_entry(&mut self, name: &str) -> Option<(&'a str, bool)> {
        self.take_full_entry(name)
            .map(|entry| (entry.raw, entry.plain_str))
    }

    /// Removes a field that should hold an object, to be read with [`Taken::fields`].
    pub(crate) fn take_object(&mut self, name: &str) -> Option<Taken<'a>> {
        let entry = self.take_full_entry(name)?;
        let entries = entry.holds_inner.then(|| std::mem::take(&mut self.inner));
        Some(Taken {
            raw: entry.raw,
            entries,
        })
    }

    fn take_full_entry(&mut self, name: &str) -> Option<TakenEntry<'a>> {
        let bit = key_bit(name);
        if self.key_bits & bit == 0 {
            return None;
        }
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.key_bit == bit && e.raw.is_some() && e.key == name)?;
        let raw = entry.raw.take()?;
        (Kind::of(raw) != Kind::Null).then_some(TakenEntry {
            raw,
            plain_str: entry.plain_str,
            holds_inner: entry.holds_inner,
        })
    }

    fn required<T>(&mut self, name: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| ValidationError::violation(self.path(name), "is required"))
    }

    pub(crate) fn opt_str(&mut self, name: &str) -> Result<Option<String>> {
        Ok(self.opt_str_ref(name)?.map(Cow::into_owned))
    }

    /// A string field, borrowed from the input when it has no escapes (the common case,
    /// and the reason this exists: no allocation, no second scan).
    fn opt_str_ref(&mut self, name: &str) -> Result<Option<Cow<'a, str>>> {
        match self.take_entry(name) {
            None => Ok(None),
            Some((raw, plain)) if Kind::of(raw) == Kind::String => unescape(raw, plain)
                .map(Some)
                .map_err(|e| ValidationError::violation(self.path(name), e.to_string())),
            Some((raw, _)) => Err(wrong_kind(self.path(name), "a string", Kind::of(raw))),
        }
    }

    /// A required string, borrowed when it can be (for values only looked at, like `type`).
    pub(crate) fn req_str_ref(&mut self, name: &str) -> Result<Cow<'a, str>> {
        let v = self.opt_str_ref(name)?;
        self.required(name, v)
    }

    pub(crate) fn req_str(&mut self, name: &str) -> Result<String> {
        let v = self.opt_str(name)?;
        self.required(name, v)
    }

    /// A string of 1..=`max` characters.
    pub(crate) fn opt_bounded_str(&mut self, name: &str, max: usize) -> Result<Option<String>> {
        let v = self.opt_str(name)?;
        if let Some(s) = &v {
            check_bounded(s, max)
                .map_err(|reason| ValidationError::violation(self.path(name), reason))?;
        }
        Ok(v)
    }

    /// A required string of 1..=`max` characters, borrowed when it can be.
    pub(crate) fn req_bounded_str_ref(&mut self, name: &str, max: usize) -> Result<Cow<'a, str>> {
        let v = self.opt_str_ref(name)?;
        let v = self.required(name, v)?;
        check_bounded(&v, max)
            .map_err(|reason| ValidationError::violation(self.path(name), reason))?;
        Ok(v)
    }

    pub(crate) fn req_bounded_str(&mut self, name: &str, max: usize) -> Result<String> {
        let v = self.opt_bounded_str(name, max)?;
        self.required(name, v)
    }

    /// A channel name: `^[A-Za-z0-9_-]{1,128}$`.
    pub(crate) fn opt_channel(&mut self, name: &str) -> Result<Option<String>> {
        let v = self.opt_str(name)?;
        if let Some(s) = &v {
            if !is_channel_name(s) {
                return Err(ValidationError::violation(
                    self.path(name),
                    "must match ^[A-Za-z0-9_-]{1,128}$",
                ));
            }
        }
        Ok(v)
    }

    pub(crate) fn req_channel(&mut self, name: &str) -> Result<String> {
        let v = self.opt_channel(name)?;
        self.required(name, v)
    }

    /// A u64 written as a decimal string: `^[0-9]{1,20}$` and within range.
    pub(crate) fn opt_dec_u64(&mut self, name: &str) -> Result<Option<u64>> {
        match self.opt_str_ref(name)? {
            None => Ok(None),
            Some(s) => parse_dec_u64(&s)
                .map(Some)
                .ok_or_else(|| ValidationError::violation(self.path(name), dec_reason(&s))),
        }
    }

    pub(crate) fn req_dec_u64(&mut self, name: &str) -> Result<u64> {
        let v = self.opt_dec_u64(name)?;
        self.required(name, v)
    }

    /// A JSON integer in `min..=max`.
    pub(crate) fn opt_int(&mut self, name: &str, min: u64, max: u64) -> Result<Option<u64>> {
        match self.take(name) {
            None => Ok(None),
            Some(raw) => parse_int(raw, min, max)
                .map(Some)
                .map_err(|reason| ValidationError::violation(self.path(name), reason)),
        }
    }

    pub(crate) fn opt_number(&mut self, name: &str) -> Result<Option<f64>> {
        match self.take(name) {
            None => Ok(None),
            Some(raw) if Kind::of(raw) == Kind::Number => serde_json::from_str(raw)
                .map(Some)
                .map_err(|e| ValidationError::violation(self.path(name), e.to_string())),
            Some(raw) => Err(wrong_kind(self.path(name), "a number", Kind::of(raw))),
        }
    }

    pub(crate) fn opt_bool(&mut self, name: &str) -> Result<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(raw) if Kind::of(raw) == Kind::Bool => Ok(Some(raw == "true")),
            Some(raw) => Err(wrong_kind(self.path(name), "a boolean", Kind::of(raw))),
        }
    }

    pub(crate) fn opt_object(&mut self, name: &str) -> Result<Option<Map<String, Value>>> {
        match self.take(name) {
            None => Ok(None),
            Some(raw) if Kind::of(raw) == Kind::Object => serde_json::from_str(raw)
                .map(Some)
                .map_err(|e| ValidationError::violation(self.path(name), e.to_string())),
            Some(raw) => Err(wrong_kind(self.path(name), "an object", Kind::of(raw))),
        }
    }

    pub(crate) fn req_object(&mut self, name: &str) -> Result<Map<String, Value>> {
        let v = self.opt_object(name)?;
        self.required(name, v)
    }

    /// Any JSON value.
    pub(crate) fn opt_value(&mut self, name: &str) -> Result<Option<Value>> {
        match self.take(name) {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw)
                .map(Some)
                .map_err(|e| ValidationError::violation(self.path(name), e.to_string())),
        }
    }

    /// A JSON array, returned as its raw elements.
    pub(crate) fn opt_array(&mut self, name: &str) -> Result<Option<Vec<&'a RawValue>>> {
        match self.take(name) {
            None => Ok(None),
            Some(raw) if Kind::of(raw) == Kind::Array => serde_json::from_str(raw)
                .map(Some)
                .map_err(|e| ValidationError::violation(self.path(name), e.to_string())),
            Some(raw) => Err(wrong_kind(self.path(name), "an array", Kind::of(raw))),
        }
    }

    pub(crate) fn req_array(&mut self, name: &str) -> Result<Vec<&'a RawValue>> {
        let v = self.opt_array(name)?;
        self.required(name, v)
    }

    /// The fields nobody took. With `crit` they are an error (UNSUPPORTED_TYPE naming the
    /// first one); without it they are kept, so that a message can be passed on unchanged.
    pub(crate) fn finish(self, crit: bool) -> Result<Map<String, Value>> {
        let mut extra = Map::new();
        for Entry { key, raw, .. } in self.entries {
            let Some(raw) = raw else { continue };
            if crit {
                return Err(ValidationError::new(
                    ErrorCode::UnsupportedType,
                    Some(join(&self.path, &key)),
                    "unknown field in a message marked crit",
                ));
            }
            let value = serde_json::from_str(raw)
                .map_err(|e| ValidationError::violation(join(&self.path, &key), e.to_string()))?;
            extra.insert(key.into_owned(), value);
        }
        Ok(extra)
    }
}

pub(crate) fn wrong_kind(path: String, expected: &str, got: Kind) -> ValidationError {
    ValidationError::violation(path, format!("must be {expected}, got {}", got.name()))
}

pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Why `s` is not a string of 1..=`max` characters, if it is not. The field's path is only
/// built on failure: this runs for every id of every message.
fn check_bounded(s: &str, max: usize) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    // Byte length bounds the character count from above, so most strings skip the count.
    if s.len() > max && s.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(())
}

pub(crate) fn is_channel_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses `^[0-9]{1,20}$` into a u64, refusing values past `u64::MAX`.
pub fn parse_dec_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    // One pass that both checks the digits and adds them up (`str::parse` would also
    // accept a leading `+`).
    s.bytes().try_fold(0u64, |n, b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn dec_reason(s: &str) -> String {
    if s.len() <= 20 && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        "is larger than the largest u64".to_string()
    } else {
        "must be a decimal string matching ^[0-9]{1,20}$".to_string()
    }
}

pub(crate) fn parse_int(text: &str, min: u64, max: u64) -> std::result::Result<u64, String> {
    let kind = Kind::of(text);
    if kind != Kind::Number {
        return Err(format!("must be an integer, got {}", kind.name()));
    }
    if text.starts_with('-') {
        return Err(if min == 0 {
            "must not be negative".to_string()
        } else {
            format!("must be at least {min}")
        });
    }
    let n: u64 = text.parse().map_err(|_| "must be an integer".to_string())?;
    if n < min {
        return Err(format!("must be at least {min}"));
    }
    if n > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(n)
}

struct TakenEntry<'a> {
    raw: &'a str,
    plain_str: bool,
    holds_inner: bool,
}

/// A field taken out of its object, holding an object to be read field by field.
pub(crate) struct Taken<'a> {
    raw: &'a str,
    /// Its fields, when they were scanned with the parent.
    entries: Option<Vec<Entry<'a>>>,
}

impl<'a> Taken<'a> {
    pub(crate) fn kind(&self) -> Kind {
        Kind::of(self.raw)
    }

    /// Its fields, as [`Fields::parse`] gives them; `path` names it in errors.
    pub(crate) fn fields(self, path: Cow<'static, str>) -> Result<Fields<'a>> {
        match self.entries {
            Some(entries) => Fields::checked(entries, path),
            None => Fields::parse(self.raw, path),
        }
    }
}

/// The fields of `raw` as serde_json reads them: the fallback of the fast scanner, and the
/// source of the error when `raw` is not a JSON object.
fn scan_with_serde<'a>(raw: &'a str, path: &str) -> Result<Vec<Entry<'a>>> {
    match serde_json::from_str::<ObjectEntries<'a>>(raw) {
        Ok(ObjectEntries(entries)) => Ok(entries
            .into_iter()
            .map(|(key, value)| Entry::new(key, value.get(), false, false))
            .collect()),
        Err(e) => {
            let field = (!path.is_empty()).then(|| path.to_string());
            let reason = match serde_json::from_str::<&RawValue>(raw) {
                Ok(whole) => format!(
                    "must be a JSON object, got {}",
                    Kind::of(whole.get()).name()
                ),
                Err(_) => format!("invalid JSON: {e}"),
            };
            Err(ValidationError::new(
                ErrorCode::ProtocolViolation,
                field,
                reason,
            ))
        }
    }
}

/// A JSON object as borrowed `(key, raw value)` pairs, in document order.
struct ObjectEntries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for ObjectEntries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = ObjectEntries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    entries.push((key.0, map.next_value::<&'de RawValue>()?));
                }
                Ok(ObjectEntries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor)
    }
}

/// An object key, borrowed from the input unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_u64_accepts_exactly_the_contract_pattern() {
        assert_eq!(parse_dec_u64("0"), Some(0));
        assert_eq!(parse_dec_u64("007"), Some(7));
        assert_eq!(parse_dec_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_dec_u64("18446744073709551616"), None);
        assert_eq!(parse_dec_u64("123456789012345678901"), None);
        assert_eq!(parse_dec_u64(""), None);
        assert_eq!(parse_dec_u64("-1"), None);
        assert_eq!(parse_dec_u64("+1"), None);
        assert_eq!(parse_dec_u64("1.0"), None);
        assert_eq!(parse_dec_u64(" 1"), None);
    }

    #[test]
    fn channel_names_follow_the_pattern() {
        assert!(is_channel_name("USER"));
        assert!(is_channel_name("audio-in_2"));
        assert!(is_channel_name(&"a".repeat(128)));
        assert!(!is_channel_name(&"a".repeat(129)));
        assert!(!is_channel_name(""));
        assert!(!is_channel_name("has space"));
        assert!(!is_channel_name("dot.ted"));
        assert!(!is_channel_name("ünï"));
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_name() {
        let err = Fields::parse(r#"{"a":1,"a":2}"#, Cow::Borrowed("payload"))
            .err()
            .map(|e| e.field);
        assert_eq!(err, Some(Some("payload.a".to_string())));
    }

    #[test]
    fn null_counts_as_absent_and_escaped_keys_work() {
        let mut f = Fields::parse(r#"{"x":null,"y\u0041":"v"}"#, Cow::Borrowed("")).unwrap();
        assert_eq!(f.opt_str("x").unwrap(), None);
        assert_eq!(f.req_str("yA").unwrap(), "v");
        assert!(f.finish(true).unwrap().is_empty());
    }

    #[test]
    fn invalid_json_is_worded_by_serde_json() {
        let reason = |text: &str| {
            Fields::parse(text, Cow::Borrowed(""))
                .err()
                .map(|e| e.reason)
        };
        assert_eq!(
            reason(r#"{"a":1,}"#).as_deref(),
            Some("invalid JSON: trailing comma at line 1 column 8")
        );
        assert_eq!(
            reason(r#"{"a":"\x"}"#).as_deref(),
            Some("invalid JSON: invalid escape at line 1 column 8")
        );
        assert_eq!(
            reason(" [1] ").as_deref(),
            Some("must be a JSON object, got an array")
        );
    }

    #[test]
    fn the_inner_object_is_read_the_same_whether_scanned_with_its_parent_or_not() {
        for (text, inner_scanned) in [
            (r#"{"p":{"a":"x","b":[1]},"c":2}"#, true),
            // An escaped key is left to serde_json, for the whole text.
            (r#"{"p":{"\u0061":"x","b":[1]},"c":2}"#, false),
            (r#"{"p":{"a":"x","b":[1]},"\u0063":2}"#, false),
        ] {
            let mut f = Fields::parse_with_inner(text, Some("p"), Cow::Borrowed("")).unwrap();
            assert_eq!(f.inner.is_empty(), !inner_scanned, "{text}");
            let taken = f.take_object("p").unwrap();
            assert_eq!(taken.kind(), Kind::Object);
            let mut p = taken.fields(Cow::Borrowed("p")).unwrap();
            assert_eq!(p.req_str("a").unwrap(), "x");
            assert_eq!(p.opt_value("b").unwrap(), Some(serde_json::json!([1])));
            assert_eq!(f.opt_int("c", 0, 9).unwrap(), Some(2));
        }
        let mut f =
            Fields::parse_with_inner(r#"{"p":{"a":1,"a":2}}"#, Some("p"), Cow::Borrowed(""))
                .unwrap();
        let err = f.take_object("p").unwrap().fields(Cow::Borrowed("p"));
        assert_eq!(err.err().and_then(|e| e.field).as_deref(), Some("p.a"));
    }

    #[test]
    fn absent_and_present_names_are_told_apart() {
        let mut f = Fields::parse(r#"{"ab":1,"ba":2,"abc":3}"#, Cow::Borrowed("")).unwrap();
        for absent in ["", "a", "b", "bb", "aab", "ac", "abd"] {
            assert_eq!(f.take(absent), None, "{absent}");
        }
        assert_eq!(f.take("ba"), Some("2"));
        assert_eq!(f.take("ab"), Some("1"));
        assert_eq!(f.take("abc"), Some("3"));
        assert_eq!(f.take("ab"), None);
    }

    #[test]
    fn integers_are_range_checked() {
        let mut f = Fields::parse(
            r#"{"a":5,"b":-1,"c":1.5,"d":"3","e":300}"#,
            Cow::Borrowed(""),
        )
        .unwrap();
        assert_eq!(f.opt_int("a", 0, 255).unwrap(), Some(5));
        assert!(f.opt_int("b", 0, 255).is_err());
        assert!(f.opt_int("c", 0, 255).is_err());
        assert!(f.opt_int("d", 0, 255).is_err());
        assert!(f.opt_int("e", 0, 255).is_err());
    }
}
