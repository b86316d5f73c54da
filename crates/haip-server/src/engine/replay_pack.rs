//! The compact replay log: how a session keeps its sent messages for REPLAY_REQUEST and
//! resume in a few dozen bytes each instead of their whole JSON.
//!
//! The replay window ([`haip_protocol::replay::ReplayWindow`]) keeps the rules of what
//! stays and hands each full segment of 64 messages to [`OutgoingPacker`]. The packer
//! writes one record per message into a buffer and compresses the buffer with LZ4. A
//! record keeps only what the packer cannot put back itself: of the envelope's head
//! (`{"id":…,"session":…,"seq":…,"ack":…,"ts":…,`) the session and seq are known, the id
//! is re-derived from the seq when the session made it ([`MessageIds`]) or kept as 16
//! bytes, ack is a number and ts a difference to the message before; the rest of the JSON
//! is kept as it was written. A streamed token's rest differs from the one before only in
//! its text, so LZ4 reduces it to that text and a reference. Unpacking writes the head
//! again with the writer that wrote it first ([`Envelope::write_json_head`]), and a head is
//! only cut when writing it again gives the same bytes: a replay returns each envelope byte
//! for byte as it was first sent (same id, seq, ts). Anything else is kept as its whole
//! JSON, and messages also kept in their two-frame form (an AUDIO_CHUNK for a client taking
//! binary frames) stay whole beside the packed bytes.

use std::cell::RefCell;
use std::hash::Hasher;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use haip_protocol::replay::Packer;
use haip_protocol::{Envelope, EventType};
use siphasher::sip128::{Hasher128, SipHasher13};

use super::outbound::Outgoing;

/// A record's flags.
const KEPT_WHOLE: u8 = 1;
/// The head was cut: the record has the id (unless derived), ack and ts.
const HEAD_CUT: u8 = 2;
/// The id is the session's own for this seq ([`MessageIds`]).
const ID_DERIVED: u8 = 4;
const HAS_ACK: u8 = 8;

/// The ids a session gives its own messages: a UUIDv4 made from a key of the session and
/// the message's seq, so that the replay log can write an id again instead of keeping it.
/// The key is random, so the ids are as unpredictable as drawn ones.
#[derive(Debug, Clone, Copy)]
pub struct MessageIds {
    key: [u8; 16],
}

impl MessageIds {
    pub fn random() -> MessageIds {
        MessageIds {
            key: rand::random(),
        }
    }

    /// The id of the session's message with this seq.
    pub fn id(&self, seq: u64) -> uuid::Uuid {
        let mut hasher = SipHasher13::new_with_key(&self.key);
        hasher.write_u64(seq);
        let bytes = hasher.finish128().as_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Packs one session's segments; it knows the session's id and its [`MessageIds`].
pub struct OutgoingPacker {
    session: Arc<str>,
    ids: MessageIds,
}

impl OutgoingPacker {
    pub fn new(session: Arc<str>, ids: MessageIds) -> OutgoingPacker {
        OutgoingPacker { session, ids }
    }
}

/// A packed segment: the records compressed, and the messages kept whole.
pub struct PackedOutgoing {
    /// The length of the records before compression (4 bytes, little endian), then the
    /// LZ4 block.
    blob: Box<[u8]>,
    kept: Box<[Arc<Outgoing>]>,
}

/// Scratch buffers of a packing thread, reused: a session keeps only what it packed.
#[derive(Default)]
struct Scratch {
    json: BytesMut,
    head: String,
    records: Vec<u8>,
    compressed: Vec<u8>,
}

/// Scratch kept between packs; a segment with a larger message grows it only for a while.
const SCRATCH_KEPT: usize = 256 * 1024;

impl Scratch {
    /// Gives back what one large segment made the buffers grow to.
    fn trim(&mut self) {
        if self.records.capacity() > SCRATCH_KEPT || self.compressed.capacity() > SCRATCH_KEPT {
            *self = Scratch::default();
        }
        if self.json.capacity() > SCRATCH_KEPT {
            self.json = BytesMut::new();
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl Packer<Arc<Outgoing>> for OutgoingPacker {
    type Packed = PackedOutgoing;

    fn pack(&mut self, items: &[Arc<Outgoing>]) -> Option<PackedOutgoing> {
        if items.iter().all(|o| o.two_frame.is_some()) {
            return None;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.records.clear();
            let mut kept = Vec::new();
            let mut last_ts = 0;
            for out in items {
                if out.two_frame.is_some() {
                    scratch
                        .records
                        .extend_from_slice(&[out.event_type as u8, KEPT_WHOLE]);
                    kept.push(out.clone());
                    continue;
                }
                scratch.json.clear();
                out.put_json(&mut scratch.json);
                self.write_record(scratch, out, &mut last_ts);
            }
            let records = &scratch.records;
            let raw_len = u32::try_from(records.len()).ok()?;
            let compressed = &mut scratch.compressed;
            compressed.clear();
            compressed.resize(
                4 + lz4_flex::block::get_maximum_output_size(records.len()),
                0,
            );
            compressed[..4].copy_from_slice(&raw_len.to_le_bytes());
            let n = lz4_flex::block::compress_into(records, &mut compressed[4..]).ok()?;
            let packed = PackedOutgoing {
                blob: compressed[..4 + n].into(),
                kept: kept.into_boxed_slice(),
            };
            scratch.trim();
            Some(packed)
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
            last_ts: 0,
        };
        let mut kept = packed.kept.iter();
        let mut seq = first_seq;
        while !reader.rest.is_empty() {
            let Some((event_type, flags)) = reader.kind() else {
                break;
            };
            if flags & KEPT_WHOLE != 0 {
                let Some(whole) = kept.next() else { break };
                out.push(whole.clone());
            } else {
                let Some(json) = reader.json(flags, seq, self) else {
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

/// An envelope's head as the server writes it.
struct Head {
    id: uuid::Uuid,
    seq: u64,
    ack: Option<u64>,
    ts: u64,
    /// Its length in the JSON.
    len: usize,
}

impl OutgoingPacker {
    /// Appends one message's record: type and flags, then either the cut head (the id
    /// unless derived, ack, ts as a difference), the length of the rest and the rest, or
    /// the length of the whole JSON and the JSON.
    fn write_record(&self, scratch: &mut Scratch, out: &Outgoing, last_ts: &mut u64) {
        let json = &scratch.json[..];
        let records = &mut scratch.records;
        let head = read_head(json).filter(|h| {
            h.seq == out.seq && writes_again(h, &self.session, json, &mut scratch.head)
        });
        let Some(head) = head else {
            records.extend_from_slice(&[out.event_type as u8, 0]);
            write_varint(records, json.len() as u64);
            records.extend_from_slice(json);
            return;
        };
        let derived = head.id == self.ids.id(head.seq);
        let mut flags = HEAD_CUT;
        if derived {
            flags |= ID_DERIVED;
        }
        if head.ack.is_some() {
            flags |= HAS_ACK;
        }
        records.extend_from_slice(&[out.event_type as u8, flags]);
        if !derived {
            records.extend_from_slice(head.id.as_bytes());
        }
        if let Some(ack) = head.ack {
            write_varint(records, ack);
        }
        write_varint(records, zigzag(head.ts.wrapping_sub(*last_ts)));
        *last_ts = head.ts;
        let rest = &json[head.len..];
        write_varint(records, rest.len() as u64);
        records.extend_from_slice(rest);
    }
}

/// Reads `{"id":"<uuid>","session":"…","seq":"N",["ack":"N",]"ts":"N"` (the session is
/// checked by [`writes_again`]).
fn read_head(json: &[u8]) -> Option<Head> {
    let mut at = Cursor { json, pos: 0 };
    at.expect(b"{\"id\":\"")?;
    let id = uuid::Uuid::try_parse_ascii(at.take(36)?).ok()?;
    at.expect(b"\",\"session\":\"")?;
    at.skip_to(b'"')?;
    at.expect(b"\",\"seq\":\"")?;
    let seq = at.number()?;
    let ack = if at.expect(b",\"ack\":\"").is_some() {
        Some(at.number()?)
    } else {
        None
    };
    at.expect(b",\"ts\":\"")?;
    let ts = at.number()?;
    Some(Head {
        id,
        seq,
        ack,
        ts,
        len: at.pos,
    })
}

/// Whether writing `head` again gives exactly the first `head.len` bytes of `json`.
fn writes_again(head: &Head, session: &str, json: &[u8], buf: &mut String) -> bool {
    buf.clear();
    let mut id = [0u8; 36];
    let id = head.id.hyphenated().encode_lower(&mut id);
    Envelope::write_json_head(buf, id, session, head.seq, head.ack, head.ts).is_ok()
        && buf.as_bytes() == &json[..head.len]
}

struct Cursor<'a> {
    json: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn expect(&mut self, text: &[u8]) -> Option<()> {
        self.json[self.pos..]
            .starts_with(text)
            .then(|| self.pos += text.len())
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.json.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(taken)
    }

    /// Moves to the next `byte`.
    fn skip_to(&mut self, byte: u8) -> Option<()> {
        let at = self.json[self.pos..].iter().position(|&b| b == byte)?;
        self.pos += at;
        Some(())
    }

    /// Reads `N"` (a quoted number's digits and closing quote).
    fn number(&mut self) -> Option<u64> {
        let digits = self.json[self.pos..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = std::str::from_utf8(self.take(digits)?).ok()?;
        let n = text.parse().ok()?;
        self.expect(b"\"")?;
        Some(n)
    }
}

struct Reader<'a> {
    rest: &'a [u8],
    last_ts: u64,
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

    fn kind(&mut self) -> Option<(EventType, u8)> {
        let kind = self.take(2)?;
        let (event_type, flags) = (kind[0], kind[1]);
        Some((*EventType::ALL.get(event_type as usize)?, flags))
    }

    /// The JSON of a record, as it was first written.
    fn json(&mut self, flags: u8, seq: u64, packer: &OutgoingPacker) -> Option<Bytes> {
        if flags & HEAD_CUT == 0 {
            let len = read_varint(&mut self.rest)? as usize;
            return Some(Bytes::copy_from_slice(self.take(len)?));
        }
        let id = if flags & ID_DERIVED != 0 {
            packer.ids.id(seq)
        } else {
            uuid::Uuid::from_slice(self.take(16)?).ok()?
        };
        let ack = if flags & HAS_ACK != 0 {
            Some(read_varint(&mut self.rest)?)
        } else {
            None
        };
        let ts = self
            .last_ts
            .wrapping_add(unzigzag(read_varint(&mut self.rest)?));
        self.last_ts = ts;
        let len = read_varint(&mut self.rest)? as usize;
        let rest = self.take(len)?;
        let mut json = String::with_capacity(len + 160);
        let mut text = [0u8; 36];
        let id = id.hyphenated().encode_lower(&mut text);
        Envelope::write_json_head(&mut json, id, &packer.session, seq, ack, ts).ok()?;
        let mut json = json.into_bytes();
        json.extend_from_slice(rest);
        Some(Bytes::from(json))
    }
}

/// A signed difference as an unsigned number that stays small when the difference is.
fn zigzag(diff: u64) -> u64 {
    let diff = diff as i64;
    ((diff << 1) ^ (diff >> 63)) as u64
}

fn unzigzag(value: u64) -> u64 {
    ((value >> 1) as i64 ^ -((value & 1) as i64)) as u64
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
    const IDS: MessageIds = MessageIds { key: [7; 16] };

    fn packer() -> OutgoingPacker {
        OutgoingPacker::new(Arc::from(SESSION), IDS)
    }

    fn own(seq: u64) -> String {
        IDS.id(seq).to_string()
    }

    fn part(seq: u64, id: &str, text: &str) -> Arc<Outgoing> {
        part_at(seq, id, text, 1_796_419_126_147 + seq)
    }

    fn part_at(seq: u64, id: &str, text: &str, ts: u64) -> Arc<Outgoing> {
        let json = format!(
            r#"{{"id":"{id}","session":"{SESSION}","seq":"{seq}","ack":"4","ts":"{ts}","channel":"AGENT","type":"MESSAGE_PART","payload":{{"message_id":"73740d0a-5032-40e1-82b6-fa26a3317804","text":"{text}"}},"run_id":"41317e19-814a-4885-b3a2-d104a614e0ab"}}"#
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
        let whole = |seq: u64, event_type: EventType, json: String| {
            Arc::new(Outgoing::new(Arc::from(SESSION), seq, event_type, json))
        };
        let wrong_seq = part(3, &own(3), "x").json();
        let wrong_seq = String::from_utf8_lossy(&wrong_seq).replace(r#""seq":"3""#, r#""seq":"9""#);
        let items: Vec<Arc<Outgoing>> = vec![
            part(1, "dc7e1b82-3ab0-4fc9-9687-8fcc4c3e08d1", "word "),
            // The session's own id for the seq: not kept at all.
            part(2, &own(2), "own"),
            // The seq in the JSON is not the message's: kept whole.
            whole(3, EventType::MessagePart, wrong_seq),
            // Without ack, and with a leading zero in ts that writing again would lose.
            whole(
                4,
                EventType::Pong,
                format!(
                    r#"{{"id":"{}","session":"{SESSION}","seq":"4","ts":"0123","channel":"SYSTEM"}}"#,
                    own(4)
                ),
            ),
            // Not canonical (uppercase): kept as text.
            part(5, "DC7E1B82-3AB0-4FC9-9687-8FCC4C3E08D1", "é \\\"x\\\""),
            // Not a UUID at all.
            part(6, "client-chosen-id", ""),
            audio(7),
            whole(8, EventType::Ping, r#"{"odd":true}"#.into()),
            Arc::new(Outgoing::shared(
                Arc::from(SESSION),
                9,
                EventType::MessagePart,
                Arc::from("adfc26ba-1750-4f1e-b958-e9fd84060ecf"),
                Some(9),
                1_796_419_126_999,
                Bytes::from_static(br#","channel":"AGENT","type":"MESSAGE_PART","payload":{}}"#),
            )),
            // Time going backwards between two messages.
            part_at(10, &own(10), "late", 1),
        ];
        let mut packer = packer();
        let packed = packer.pack(&items).expect("packed");
        assert_eq!(packed.kept.len(), 1);
        let back = packer.unpack(&packed, 1);
        assert_eq!(back.len(), items.len());
        for (a, b) in items.iter().zip(&back) {
            same(a, b);
        }
        assert!(
            Arc::ptr_eq(&items[6], &back[6]),
            "two-frame audio is kept whole"
        );
    }

    #[test]
    fn a_segment_of_streamed_tokens_packs_to_a_few_dozen_bytes_a_message() {
        // Ids of the session's own (re-derived) and drawn ids (kept as 16 bytes).
        for (own_ids, at_most) in [(true, 16), (false, 32)] {
            let items: Vec<Arc<Outgoing>> = (1..=SEGMENT_MESSAGES as u64)
                .map(|seq| {
                    let id = if own_ids {
                        own(seq)
                    } else {
                        uuid::Uuid::new_v4().to_string()
                    };
                    part(seq, &id, &format!("word{seq} "))
                })
                .collect();
            let mut packer = packer();
            let packed = packer.pack(&items).expect("packed");
            let per_message = packer.packed_bytes(&packed) / SEGMENT_MESSAGES as u64;
            let whole = items[0].json_len();
            assert!(
                per_message <= at_most,
                "{per_message} bytes a message packed ({whole} as JSON), own ids: {own_ids}"
            );
            for (a, b) in items.iter().zip(&packer.unpack(&packed, 1)) {
                same(a, b);
            }
        }
    }

    #[test]
    fn a_segment_only_of_two_frame_audio_stays_as_it_is() {
        let mut packer = packer();
        assert!(packer.pack(&[audio(1), audio(2)]).is_none());
    }

    #[test]
    fn a_window_replays_packed_and_open_segments_alike() {
        let mut window = ReplayWindow::with_packer(ReplayConfig::default(), packer());
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
        let mut packer = packer();
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
