//! Reading Redis replies.

use bytes::Bytes;
use redis::Value;

use crate::engine::store::{StoreError, StoredMessage};

pub(super) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The elements of an array reply (nothing for anything else).
pub(super) fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

/// A bulk or simple string reply as text ("" for nil and anything else).
pub(super) fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(n)) => n.to_string(),
        Some(Value::Okay) => "OK".into(),
        _ => String::new(),
    }
}

/// One stream entry, `[id, [t, ts, j, json]]`, as a stored message.
pub(super) fn stream_entry(entry: Value) -> Option<StoredMessage> {
    let mut parts = array(entry).into_iter();
    let id = text(parts.next().as_ref());
    let seq = id.split('-').next()?.parse().ok()?;
    let fields = array(parts.next()?);
    let mut ts = 0;
    let mut json = None;
    for pair in fields.chunks(2) {
        match (text(pair.first()).as_str(), pair.get(1)) {
            ("t", v) => ts = text(v).parse().unwrap_or(0),
            ("j", Some(Value::BulkString(bytes))) => json = Some(Bytes::from(bytes.clone())),
            _ => {}
        }
    }
    Some(StoredMessage {
        seq,
        ts,
        json: json?,
    })
}
