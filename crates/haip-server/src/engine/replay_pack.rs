//! The compact replay log: how a session keeps its sent messages for REPLAY_REQUEST and
//! resume in a few dozen bytes each instead of their whole JSON.
//!
//! The replay window ([`haip_protocol::replay::ReplayWindow`]) keeps the rules of what
//! stays and hands each full segment of 64 messages to [`OutgoingPacker`]. The packer
//! writes every message's exact JSON into one buffer, cuts out what it can put back
//! itself (the envelope id as 16 bytes instead of 36 characters, the session id, which
//! every message of the session repeats), and compresses the buffer with LZ4: a streamed
//! token's envelope differs from the one before in a few bytes (its id, seq, ts and text),
//! so a segment compresses to a small fraction. Unpacking writes the same bytes back, so a
//! replay returns each envelope byte for byte as it was first sent (same id, seq, ts).
//!
//! Messages also kept in their two-frame form (an AUDIO_CHUNK for a client taking binary
//! frames) stay whole beside the packed bytes.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use haip_protocol::replay::Packer;
use haip_protocol::EventType;

use super::outbound::Outgoing;

/// A record's flags.
const KEPT_WHOLE: u8 = 1;
const ID_CUT: u8 = 2;
const SESSION_CUT: u8 = 4;

/// Every envelope the server writes starts with its id (see `Envelope::write_json_head`).
const ID_PREFIX: &[u8] = b"{\"id\":\"";
const ID_TEXT_LEN: usize = 36;
const SESSION_PREFIX: &[u8] = b",\"session\":\"";

/// Packs one session's segments; it knows the session's id, which it cuts out of every
/// message and puts back.
pub struct OutgoingPacker {
    session: Arc<str>,
}

impl OutgoingPacker {
    pub fn new(session: Arc<str>) -> OutgoingPacker {
        OutgoingPacker { session }
    }
}

/// A packed segment: the records compressed, and the messages kept whole.
pub struct PackedOutgoing {
    /// The length of the records before compression (4 bytes, little endian), then the
    /// LZ4 block.
    blob: Box<[u8]>,
    kept: Box<[Arc<Outgoing>]>,
}

thread_local! {
    /// Scratch buffers of the packing thread, reused: a session keeps only what it packed.
    static SCRATCH: RefCell<(BytesMut, Vec<u8>, Vec<u8>)> = RefCell::default();
}

impl Packer<Arc<Outgoing>> for OutgoingPacker {
    type Packed = PackedOutgoing;

    fn pack(&mut self, items: &[Arc<Outgoing>]) -> Option<PackedOutgoing> {
        if items.iter().all(|o| o.two_frame.is_some()) {
            return None;
        }
        SCRATCH.with_borrow_mut(|(json, records, compressed)| {
            records.clear();
            let mut kept = Vec::new();
            for out in items {
                if out.two_frame.is_some() {
                    records.extend_from_slice(&[out.event_type as u8, KEPT_WHOLE]);
                    kept.push(out.clone());
                    continue;
                }
                json.clear();
                out.put_json(json);
                write_record(records, out.event_type, json, &self.session);
            }
            let raw_len = u32::try_from(records.len()).ok()?;
            compressed.clear();
            compressed.resize(
                4 + lz4_flex::block::get_maximum_output_size(records.len()),
                0,
            );
            compressed[..4].copy_from_slice(&raw_len.to_le_bytes());
            let n = lz4_flex::block::compress_into(records, &mut compressed[4..]).ok()?;
            Some(PackedOutgoing {
                blob: compressed[..4 + n].into(),
                kept: kept.into_boxed_slice(),
            })
        })
    }

    fn unpack(&self, packed: &PackedOutgoing, first_seq: u64) -> Vec<Arc<Outgoing>> {
        let mut out = Vec::new();
        let Some((len, block)) = packed.blob.split_first_chunk::<4>() else {
            return out;
        };
        let Ok(records) = lz4_flex::block::decompress(block, u32::from_le_bytes(*len) as usize)
        else {
            return out;
        };
        let mut reader = Reader {
            rest: &records,
            session: &self.session,
        };
        let mut kept = packed.kept.iter();
        let mut seq = first_seq;
        while !reader.rest.is_empty() {
            let Some((event_type, flags)) = reader.head() else {
                break;
            };
            if flags & KEPT_WHOLE != 0 {
                let Some(whole) = kept.next() else { break };
                out.push(whole.clone());
            } else {
                let Some(json) = reader.json(flags) else {
                    break;
                };
                out.push(Arc::new(Outgoing::whole(
                    self.session.clone(),
                    seq,
                    event_type,
                    json,
                )));
            }
            seq += 1;
        }
        out
    }

    fn packed_bytes(&self, packed: &PackedOutgoing) -> u64 {
        let kept: usize = packed.kept.iter().map(|o| o.held_bytes()).sum();
        (std::mem::size_of::<PackedOutgoing>() + packed.blob.len() + kept) as u64
    }
}

/// Appends one message's record: type, flags, the id as 16 bytes when it was cut, the
/// length of the rest and the rest of the JSON.
fn write_record(records: &mut Vec<u8>, event_type: EventType, json: &[u8], session: &str) {
    let mut flags = 0;
    let mut id = None;
    let mut rest = json;
    if let Some(uuid) = canonical_id(json) {
        flags |= ID_CUT;
        id = Some(uuid);
        rest = &json[ID_PREFIX.len() + ID_TEXT_LEN + 1..];
        if let Some(after) = rest
            .strip_prefix(SESSION_PREFIX)
            .and_then(|r| r.strip_prefix(session.as_bytes()))
            .and_then(|r| r.strip_prefix(b"\""))
        {
            flags |= SESSION_CUT;
            rest = after;
        }
    }
    records.extend_from_slice(&[event_type as u8, flags]);
    if let Some(uuid) = id {
        records.extend_from_slice(uuid.as_bytes());
    }
    write_varint(records, rest.len() as u64);
    records.extend_from_slice(rest);
}

/// The envelope's id when the JSON starts with it in the canonical form (lowercase,
/// hyphenated) that writing it back from 16 bytes gives again.
fn canonical_id(json: &[u8]) -> Option<uuid::Uuid> {
    let text = json.strip_prefix(ID_PREFIX)?.get(..ID_TEXT_LEN + 1)?;
    if text[ID_TEXT_LEN] != b'"' {
        return None;
    }
    let text = &text[..ID_TEXT_LEN];
    let id = uuid::Uuid::try_parse_ascii(text).ok()?;
    let mut again = [0u8; ID_TEXT_LEN];
    (id.hyphenated().encode_lower(&mut again).as_bytes() == text).then_some(id)
}

struct Reader<'a> {
    rest: &'a [u8],
    session: &'a str,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    fn head(&mut self) -> Option<(EventType, u8)> {
        let head = self.take(2)?;
        let (event_type, flags) = (head[0], head[1]);
        Some((*EventType::ALL.get(event_type as usize)?, flags))
    }

    /// The JSON of a record, as it was first written.
    fn json(&mut self, flags: u8) -> Option<Bytes> {
        let id = if flags & ID_CUT != 0 {
            Some(uuid::Uuid::from_slice(self.take(16)?).ok()?)
        } else {
            None
        };
        let len = read_varint(&mut self.rest)? as usize;
        let session = self.session;
        let rest = self.take(len)?;
        let mut json = Vec::with_capacity(len + 100);
        if let Some(id) = id {
            json.extend_from_slice(ID_PREFIX);
            let mut text = [0u8; ID_TEXT_LEN];
            json.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
            json.push(b'"');
            if flags & SESSION_CUT != 0 {
                json.extend_from_slice(SESSION_PREFIX);
                json.extend_from_slice(session.as_bytes());
                json.push(b'"');
            }
        }
        json.extend_from_slice(rest);
        Some(Bytes::from(json))
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use haip_protocol::replay::{ReplayConfig, ReplayWindow, SEGMENT_MESSAGES};

    const SESSION: &str = "c0dba1a9-4c6a-41f6-81ac-38a6f581cd74";

    fn part(seq: u64, id: &str, text: &str) -> Arc<Outgoing> {
        let json = format!(
            r#"{{"id":"{id}","session":"{SESSION}","seq":"{seq}","ack":"4","ts":"{}","channel":"AGENT","type":"MESSAGE_PART","payload":{{"message_id":"73740d0a-5032-40e1-82b6-fa26a3317804","text":"{text}"}},"run_id":"41317e19-814a-4885-b3a2-d104a614e0ab"}}"#,
            1_796_419_126_147 + seq
        );
        Arc::new(Outgoing::new(
            Arc::from(SESSION),
            seq,
            EventType::MessagePart,
            json,
        ))
    }

    fn audio(seq: u64) -> Arc<Outgoing> {
        let mut out = Outgoing::new(
            Arc::from(SESSION),
            seq,
            EventType::AudioChunk,
            format!(r#"{{"id":"x{seq}","seq":"{seq}"}}"#),
        );
        out.two_frame = Some(Box::new((
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"\x00\x01"),
        )));
        Arc::new(out)
    }

    fn same(a: &Outgoing, b: &Outgoing) {
        assert_eq!(a.json(), b.json());
        assert_eq!((a.seq, a.event_type), (b.seq, b.event_type));
        assert_eq!(&*a.session, &*b.session);
    }

    #[test]
    fn every_shape_of_message_comes_back_byte_for_byte() {
        let items: Vec<Arc<Outgoing>> = vec![
            part(1, "dc7e1b82-3ab0-4fc9-9687-8fcc4c3e08d1", "word "),
            // Not canonical (uppercase): kept as text.
            part(2, "DC7E1B82-3AB0-4FC9-9687-8FCC4C3E08D1", "é \\\"x\\\""),
            // Not a UUID at all.
            part(3, "client-chosen-id", ""),
            audio(4),
            Arc::new(Outgoing::new(
                Arc::from(SESSION),
                5,
                EventType::Ping,
                r#"{"odd":true}"#.into(),
            )),
            Arc::new(Outgoing::shared(
                Arc::from(SESSION),
                6,
                EventType::MessagePart,
                Arc::from("adfc26ba-1750-4f1e-b958-e9fd84060ecf"),
                Some(9),
                1_796_419_126_999,
                Bytes::from_static(br#","channel":"AGENT","type":"MESSAGE_PART","payload":{}}"#),
            )),
        ];
        let mut packer = OutgoingPacker::new(Arc::from(SESSION));
        let packed = packer.pack(&items).expect("packed");
        assert_eq!(packed.kept.len(), 1);
        let back = packer.unpack(&packed, 1);
        assert_eq!(back.len(), items.len());
        for (a, b) in items.iter().zip(&back) {
            same(a, b);
        }
        assert!(
            Arc::ptr_eq(&items[3], &back[3]),
            "two-frame audio is kept whole"
        );
    }

    #[test]
    fn a_segment_of_streamed_tokens_packs_to_a_few_dozen_bytes_a_message() {
        let items: Vec<Arc<Outgoing>> = (1..=SEGMENT_MESSAGES as u64)
            .map(|seq| {
                part(
                    seq,
                    &uuid::Uuid::new_v4().to_string(),
                    &format!("word{seq} "),
                )
            })
            .collect();
        let mut packer = OutgoingPacker::new(Arc::from(SESSION));
        let packed = packer.pack(&items).expect("packed");
        let per_message = packer.packed_bytes(&packed) / SEGMENT_MESSAGES as u64;
        let whole = items[0].json_len() as u64;
        assert!(
            per_message * 5 < whole,
            "{per_message} bytes a message packed, {whole} as JSON"
        );
        for (a, b) in items.iter().zip(&packer.unpack(&packed, 1)) {
            same(a, b);
        }
    }

    #[test]
    fn a_segment_only_of_two_frame_audio_stays_as_it_is() {
        let mut packer = OutgoingPacker::new(Arc::from(SESSION));
        assert!(packer.pack(&[audio(1), audio(2)]).is_none());
    }

    #[test]
    fn a_window_replays_packed_and_open_segments_alike() {
        let mut window =
            ReplayWindow::with_packer(ReplayConfig::default(), OutgoingPacker::new(SESSION.into()));
        let sent: Vec<Arc<Outgoing>> = (1..=200)
            .map(|seq| part(seq, &uuid::Uuid::new_v4().to_string(), "token "))
            .collect();
        for out in &sent {
            let bytes = out.json_len() as u64;
            window
                .push(out.seq, 0, bytes, out.clone())
                .expect("in order");
        }
        assert_eq!(window.packed_len(), 192);
        let replayed: Vec<_> = window.after(0).expect("kept").collect();
        assert_eq!(replayed.len(), sent.len());
        for (a, b) in sent.iter().zip(&replayed) {
            same(a, b);
        }
    }

    #[test]
    fn a_damaged_blob_gives_fewer_messages_not_wrong_ones() {
        let items: Vec<_> = (1..=3)
            .map(|seq| part(seq, &uuid::Uuid::new_v4().to_string(), "a"))
            .collect();
        let mut packer = OutgoingPacker::new(Arc::from(SESSION));
        let mut packed = packer.pack(&items).expect("packed");
        let mut blob = packed.blob.to_vec();
        blob.truncate(blob.len() / 2);
        packed.blob = blob.into();
        assert!(packer.unpack(&packed, 1).len() < 3);
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            write_varint(&mut buf, value);
            let mut input = &buf[..];
            assert_eq!(read_varint(&mut input), Some(value));
            assert!(input.is_empty());
        }
    }
}
