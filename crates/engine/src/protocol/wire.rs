//! The wire format: one versioned `Message` enum, carried in length-prefixed frames.
//!
//! A frame is `len: u32 (big endian) | version: u8 | bincode(Message)`, where `len` counts the version
//! byte and the payload. The length is checked against `MAX_FRAME` before anything is allocated, and
//! decoding is bounded by the frame, so hostile bytes produce an error, never a panic or a huge
//! allocation.
//!
//! A compressed frame has `COMPRESSED | PROTOCOL_VERSION` for its version byte and a payload of
//! `size: u32 (big endian) | LZ4 block`: the block inflates to exactly `size` bytes of whole plain
//! frames (never compressed ones), and at most `MAX_BLOCK` of them. `size` is checked before anything
//! is allocated, against `MAX_BLOCK`, the reader's frame cap and what the block's length can inflate
//! to at all (LZ4 gives at most 255 bytes per byte), so a frame claiming more than it holds costs its
//! reader nothing, and a member holds a reader to one block per link, however well it compresses; a
//! block that inflates to anything else is a protocol error. Hellos always travel plain.

use std::num::NonZeroU64;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::replication::clock::Hlc;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::ReplicaId;
use crate::replication::store::{Expiry, Op, Write};

/// Version of the message encoding; a frame with another version closes the link. 2: string values
/// travel as themselves (`value::TAG_STRING`), which a version-1 peer would take for malformed. 3: a
/// batch names the keys of the superseded seqs it covers (`OpsBatch::superseded`).
/// 4: the hello carries no contexts; they follow it in `Contexts` parts, so any number of buckets
/// links. 5: a batch carrying a value carries the key's newer touch register among its
/// `superseders`, and a fetch answer sends touch registers first (a receiver relies on it never to
/// show live a value its sender holds expired); `Collected` frames follow the contexts:
/// the collected registers a peer remembers by key, which the receiver remembers too; a held reply comes in parts
/// carrying the registers that superseded what it reports superseded (`Message::HeldReply`).
/// 6: writes travel as `WireWrite`, a type of the wire's own (`WriteOp`: set, delete or touch; a set's
/// expiry an `Option`), not as the storage's `store::Write`.
/// 7: `Horizon` frames follow the digests of a bucket whose horizon holds dots its sender's context
/// does not cover, so a peer resynced past a collection is taken in again by those that refused it.
/// 8: `Forgotten` frames name the members their sender forgot for cause, so peers that knew them
/// only from it forget them too; a write stamped past twice `maxClockSkew` is a protocol error;
/// `HeldKeys` asks, by key, the current registers of the dots a held reply reported superseded
/// without sending what superseded them (a marker compacted); `HeldKeysReply` answers.
/// 9: a bucket's digest goes out only when it changed since the last on the link, or a slow refresh
/// reaches it, numbered; `Digested` ends each round, vouching that the reports sent are current.
/// 10: frames may travel compressed (`COMPRESSED`), several plain frames in one LZ4 block.
/// 11: a digest carries a fingerprint of the registers its sender stores (`Digest::stored`), so two
/// replicas with equal contexts that store different registers find out and repair (anti-entropy).
pub const PROTOCOL_VERSION: u8 = 11;
/// Flag on a frame's version byte: its payload is a size and an LZ4 block of plain frames.
pub const COMPRESSED: u8 = 0x80;
/// A `FetchRequest` whose id carries this bit is a repair's (anti-entropy, `sync::digest`): its
/// sender found the bucket apart and asks the receiver to repair from it in turn. A node's `fetch()`
/// ids count up from 1 and never reach it.
pub const REPAIR_IDS: u64 = 1 << 63;
/// Frames shorter than this, together, travel as they are: LZ4 saves too little on them to pay its
/// cost (a lone small write, a ping, an ack).
pub const COMPRESS_MIN: usize = 512;
/// Most bytes a compressed frame inflates to: a reader holds one block per link while it reads the
/// frames in it (a block of requests held back by their rate limit stays that long). A run of frames
/// longer than this, or one frame, travels in several blocks, or plain.
pub const MAX_BLOCK: usize = 1024 * 1024;
/// Most bytes one byte of an LZ4 block inflates to (a match's length runs on in bytes of 255).
const MAX_INFLATION: usize = 255;
/// Bytes before the block in a compressed frame: length prefix, version byte, inflated size.
const COMPRESSED_HEAD: usize = LEN_BYTES + 1 + 4;
/// Largest frame accepted or produced, version byte and payload included.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Longest bucket name, in bytes.
pub const MAX_BUCKET_NAME: usize = 255;
/// Longest key, in bytes.
pub const MAX_KEY: usize = 64 * 1024;
/// Largest value (JSON text or bytes), in bytes; with the key and headers it fits well in a frame.
pub const MAX_VALUE: usize = 8 * 1024 * 1024;
/// Bytes of contexts per `Contexts` part, roughly (one origin's ranges are never split).
pub const CONTEXT_PART_BYTES: usize = 1024 * 1024;

/// What a replica holds of one bucket: per origin, the seqs it has applied or knows to be covered.
pub type WireContext = Vec<(ReplicaId, SeqRanges)>;

/// Everything peers say to each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message on every link, from both ends: who I am, where I listen and whom I know. What I
    /// hold follows at once in `Contexts` parts.
    Hello(Hello),
    /// Members I know of, sent when I learn new ones.
    Members(Vec<MemberInfo>),
    /// What I hold of one bucket; sent when it changed since my last digest of it on this link (and
    /// in a slow refresh), so the other end can fill lasting gaps.
    Digest {
        bucket: Arc<str>,
        context: WireContext,
        /// Digests I sent on this link so far, this one included: `Digested` adds up the last of
        /// each bucket.
        number: u64,
        /// A fingerprint of the registers I store in `bucket` (`Store::stored_print`): with a
        /// context equal to yours and a fingerprint that stays different, we have diverged.
        stored: u64,
    },
    /// Writes of one origin to one bucket, plus the seqs they stand for (`covered`): seqs in `covered`
    /// with no write here were superseded and need not be sent.
    Ops(OpsBatch),
    /// Liveness probe when nothing else was sent for a while; carries the wall clock for the skew guard.
    Ping { wall_ms: u64 },
    /// I am closing on purpose; do not wait for me.
    Leave,
    /// Send me these seqs of `origin` (a gap that lasted, or writes of a replica that is not linked to
    /// me); answered with `Ops`.
    Pull {
        bucket: Arc<str>,
        origin: ReplicaId,
        ranges: SeqRanges,
    },
    /// I hold every write of yours to `bucket` up to `upto`: acknowledges them, cumulatively.
    Ack { bucket: Arc<str>, upto: Seq },
    /// Send me your entries of `bucket` under `prefix`; answered with `FetchReply` frames.
    FetchRequest {
        id: u64,
        bucket: Arc<str>,
        prefix: String,
    },
    /// Which of these dots of `origin` do you still store? Asked by a replica that was away past a
    /// collection, to drop what was superseded and collected while it was away.
    Held {
        bucket: Arc<str>,
        origin: ReplicaId,
        query: SeqRanges,
    },
    /// Answer to `Held`, in parts (the last has `last` set): of the query, the dots I have seen
    /// (`covered`) and those I still store (`held`). A dot covered but not held was superseded;
    /// `superseders` are the current registers (of any origin) of such dots' keys that I still know,
    /// to be applied before anything is dropped.
    HeldReply {
        bucket: Arc<str>,
        origin: ReplicaId,
        covered: SeqRanges,
        held: SeqRanges,
        superseders: Vec<(ReplicaId, WireWrite)>,
        last: bool,
    },
    /// Entries for a fetch, grouped by origin; the last frame of a reply has `done` set.
    FetchReply {
        id: u64,
        bucket: Arc<str>,
        origin: Option<ReplicaId>,
        writes: Vec<WireWrite>,
        done: bool,
    },
    /// What I hold, right after my hello, in parts bounded by `CONTEXT_PART_BYTES`; the last has
    /// `last` set. Until it arrives the other end sends me none of its writes, since it cannot yet
    /// tell which I lack.
    Contexts(ContextPart),
    /// Collected registers I remember by key in `bucket`, right after my contexts (in frames of at
    /// most `COLLECTED_PER_FRAME`): a dot I cover without its register may be one of them, and the
    /// other end, covering it in turn, must answer a write it beat as I would.
    Collected {
        bucket: Arc<str>,
        keys: Vec<CollectedKey>,
    },
    /// The part of my collection horizon of `bucket` that my context does not cover (dots of a
    /// collection I missed and resynced past, or inherited), with my digests while there is any: a
    /// peer that refuses my writes for a collection I missed takes them again once my context and
    /// this cover the horizon it vouches for.
    Horizon {
        bucket: Arc<str>,
        beyond: WireContext,
    },
    /// Members I forgot for cause: cut off for breaking the protocol, or known to me only through
    /// such a member and never linked to me. I no longer vouch for them; forget those you know only
    /// from peers that no longer do (`Members::disown`), or they hold up your collection until the
    /// member timeout.
    Forgotten(Vec<Arc<str>>),
    /// The keys of dots of `origin` a `HeldReply` reported covered and no longer stored, of which it
    /// sent nothing superseding (a marker it compacted): what do you store for them now?
    HeldKeys {
        bucket: Arc<str>,
        origin: ReplicaId,
        keys: Vec<Arc<str>>,
    },
    /// Answer to `HeldKeys`, in frames each naming the `keys` it answers: every register (of any
    /// origin) I store for them now. A key with none was collected here.
    HeldKeysReply {
        bucket: Arc<str>,
        origin: ReplicaId,
        keys: Vec<Arc<str>>,
        registers: Vec<(ReplicaId, WireWrite)>,
    },
    /// Ends a round of my digests on this link: every bucket whose context (or horizon beyond it)
    /// changed since my last digest of it on this link was digested before this frame. `reports` is
    /// the sum of the `number`s of the last digest of each bucket I sent on this link (see
    /// `sync::digest`): when yours of the last you took of each matches it, the contexts I reported
    /// are what I hold now.
    Digested { reports: u64 },
}

impl Message {
    /// How many writes (or registers) the frame carries for the receiver to apply; 0 for frames
    /// that carry none. Per-link statistics count with it.
    pub fn writes_carried(&self) -> usize {
        match self {
            Message::Ops(b) => b.writes.len() + b.superseders.len(),
            Message::FetchReply { writes, .. } => writes.len(),
            Message::HeldReply { superseders, .. } => superseders.len(),
            Message::HeldKeysReply { registers, .. } => registers.len(),
            _ => 0,
        }
    }
}

/// Collected registers per `Collected` frame at most (about 50 bytes each).
pub const COLLECTED_PER_FRAME: usize = 100_000;

/// A collected register remembered by key (see `store::CollectedRecord`), with its origin when known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectedKey {
    pub fingerprint: u64,
    pub hlc: crate::replication::clock::Hlc,
    pub origin: Option<ReplicaId>,
    /// When (the sender's clock, ms) it was collected: it is forgotten `rememberCollected` later.
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub replica: ReplicaId,
    /// Port I listen on; the host is taken from the connection when `listen_host` is unspecified.
    pub listen_port: u16,
    pub listen_host: Option<String>,
    pub wall_ms: u64,
    pub members: Vec<MemberInfo>,
}

/// Part of what a replica holds: summaries of some buckets (one bucket's summary may be split over
/// several parts, by origin; the receiver takes their union).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextPart {
    pub buckets: Vec<BucketSummary>,
    pub last: bool,
}

impl ContextPart {
    /// Groups `summaries` into parts of about `CONTEXT_PART_BYTES` each (at least one part, the last
    /// marked). A bucket's summary is never split (the receiver judges a bucket's horizon against its
    /// whole context): one larger than a part travels alone, up to `MAX_FRAME`.
    pub fn split(summaries: impl IntoIterator<Item = BucketSummary>) -> Vec<ContextPart> {
        let mut parts = Vec::new();
        let mut current = Vec::new();
        let mut bytes = 0;
        for summary in summaries {
            let size = summary.name.len()
                + 8
                + summary
                    .context
                    .iter()
                    .chain(&summary.collected)
                    .map(|(rid, ranges)| rid.node.len() + 16 + 20 * ranges.ranges().len())
                    .sum::<usize>();
            if bytes + size > CONTEXT_PART_BYTES && !current.is_empty() {
                parts.push(ContextPart {
                    buckets: std::mem::take(&mut current),
                    last: false,
                });
                bytes = 0;
            }
            bytes += size;
            current.push(summary);
        }
        parts.push(ContextPart {
            buckets: current,
            last: true,
        });
        parts
    }
}

/// What a replica holds of one bucket, and what it has collected (tombstones dropped once every
/// member held them): a replica whose context lacks part of `collected` was away past a collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketSummary {
    pub name: Arc<str>,
    pub context: WireContext,
    pub collected: WireContext,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub node: Arc<str>,
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpsBatch {
    pub bucket: Arc<str>,
    pub origin: ReplicaId,
    pub covered: SeqRanges,
    pub writes: Vec<WireWrite>,
    /// Current registers (of any origin) of keys whose writes in `covered` were superseded; applied
    /// before `covered` is claimed, in the same frame, so the claim is never without its backing.
    pub superseders: Vec<(ReplicaId, WireWrite)>,
    /// The seqs in `covered` whose writes were superseded, per key: the receiver keeps them as
    /// markers, so that a batch it sends later covering them carries the key's registers in turn.
    pub superseded: Vec<(Arc<str>, Vec<Seq>)>,
}

/// A register write as it travels between replicas; the origin travels once per batch beside it.
/// The wire's own type: storage converts to and from it here, so a field added to `store::Write`
/// changes no frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireWrite {
    pub key: Arc<str>,
    pub hlc: Hlc,
    pub seq: Seq,
    pub op: WriteOp,
}

/// What a write does to its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// A value (encoded, see `value`) that expires at `expires_ms`, physical milliseconds since the
    /// epoch, or never.
    Set {
        #[serde(with = "serde_bytes")]
        value: Box<[u8]>,
        expires_ms: Option<NonZeroU64>,
    },
    /// A tombstone.
    Delete,
    /// A later expiry for the value stored: writes only the key's touch register.
    Touch { expires_ms: u64 },
}

impl From<Write> for WireWrite {
    fn from(w: Write) -> Self {
        let op = match w.op {
            Op::Set { value, expires } => WriteOp::Set {
                value,
                expires_ms: NonZeroU64::new(expires.encoded()),
            },
            Op::Delete => WriteOp::Delete,
            Op::Touch { expires } => WriteOp::Touch {
                expires_ms: expires.encoded(),
            },
        };
        WireWrite {
            key: w.key,
            hlc: w.hlc,
            seq: w.seq,
            op,
        }
    }
}

impl From<WireWrite> for Write {
    fn from(w: WireWrite) -> Self {
        let op = match w.op {
            WriteOp::Set { value, expires_ms } => Op::Set {
                value,
                expires: Expiry::at_ms(expires_ms.map_or(0, NonZeroU64::get)),
            },
            WriteOp::Delete => Op::Delete,
            WriteOp::Touch { expires_ms } => Op::Touch {
                expires: Expiry::at_ms(expires_ms),
            },
        };
        Write {
            key: w.key,
            hlc: w.hlc,
            seq: w.seq,
            op,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    FrameTooLarge(usize),
    #[error("empty frame")]
    EmptyFrame,
    #[error("unsupported protocol version {0} (this peer speaks {PROTOCOL_VERSION})")]
    Version(u8),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("trailing bytes after message")]
    Trailing,
    #[error("compressed frame: {0}")]
    Compressed(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_BYTES]);
    out.push(PROTOCOL_VERSION);
    bincode::serde::encode_into_std_write(msg, out, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = out.len() - start - LEN_BYTES;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(WireError::FrameTooLarge(len));
    }
    out[start..start + LEN_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Reads the length prefix at the start of `buf`: `Ok(None)` while fewer than 4 bytes are there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(prefix) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge(len));
    }
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    Ok(Some(len))
}

/// Decodes a frame body (version byte and payload, without the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
    let (&version, payload) = body.split_first().ok_or(WireError::EmptyFrame)?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, used): (Message, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(WireError::Trailing);
    }
    Ok(msg)
}

/// Appends `frames` (whole frames, as `encode_frame` writes them) to `out`, packed into compressed
/// frames of at most `MAX_BLOCK` inflated bytes each wherever that makes them shorter; the rest as
/// they are. Returns the bytes appended.
pub fn compress_frames(frames: &[u8], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let mut at = 0;
    while at < frames.len() {
        // The longest run of whole frames from `at` that fits a block (a longer frame goes alone).
        let mut end = at;
        while end < frames.len() {
            let Some(len) = frame_len(&frames[end..]).ok().flatten() else {
                end = frames.len();
                break;
            };
            let next = (end + LEN_BYTES + len).min(frames.len());
            if next - at > MAX_BLOCK && end > at {
                break;
            }
            end = next;
        }
        compress_run(&frames[at..end], out);
        at = end;
    }
    out.len() - start
}

/// Appends one run of whole frames, as one compressed frame if that is shorter.
fn compress_run(run: &[u8], out: &mut Vec<u8>) {
    if run.len() < COMPRESS_MIN || run.len() > MAX_BLOCK {
        out.extend_from_slice(run);
        return;
    }
    let head = out.len();
    let bound = lz4_flex::block::get_maximum_output_size(run.len());
    out.resize(head + COMPRESSED_HEAD + bound, 0);
    let packed = lz4_flex::block::compress_into(run, &mut out[head + COMPRESSED_HEAD..])
        .expect("the output has the room LZ4 asks for");
    if COMPRESSED_HEAD + packed >= run.len() {
        out.truncate(head);
        out.extend_from_slice(run);
        return;
    }
    let len = (COMPRESSED_HEAD - LEN_BYTES + packed) as u32;
    out[head..head + LEN_BYTES].copy_from_slice(&len.to_be_bytes());
    out[head + LEN_BYTES] = COMPRESSED | PROTOCOL_VERSION;
    out[head + LEN_BYTES + 1..head + COMPRESSED_HEAD]
        .copy_from_slice(&(run.len() as u32).to_be_bytes());
    out.truncate(head + COMPRESSED_HEAD + packed);
}

/// Whether a frame body (version byte and payload) is a compressed frame of this version.
pub fn is_compressed(body: &[u8]) -> bool {
    body.first() == Some(&(COMPRESSED | PROTOCOL_VERSION))
}

/// Inflates a compressed frame body into `out` (appended), refusing before allocating anything one
/// that claims more than `max_inflated` bytes, than `MAX_BLOCK`, or than its block can inflate to,
/// and one whose block does not inflate to exactly the size it claims. Returns the bytes appended: whole plain frames, checked by whoever reads them.
pub fn inflate(body: &[u8], max_inflated: usize, out: &mut Vec<u8>) -> Result<usize, WireError> {
    let size = body
        .get(1..5)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| WireError::Compressed("no inflated size".into()))?;
    let block = &body[5..];
    let most = max_inflated
        .min(MAX_BLOCK)
        .min(block.len().saturating_mul(MAX_INFLATION));
    if size == 0 || size > most {
        return Err(WireError::Compressed(format!(
            "claims {size} inflated bytes where its {} bytes of block may give 1 to {most}",
            block.len()
        )));
    }
    let start = out.len();
    out.resize(start + size, 0);
    match lz4_flex::block::decompress_into(block, &mut out[start..]) {
        Ok(n) if n == size => Ok(size),
        Ok(n) => {
            out.truncate(start);
            Err(WireError::Compressed(format!(
                "inflates to {n} bytes where it claims {size}"
            )))
        }
        Err(e) => {
            out.truncate(start);
            Err(WireError::Compressed(e.to_string()))
        }
    }
}

/// Decodes the first complete frame in `buf`: `Ok(None)` if more bytes are needed, else the message
/// and how many bytes it took.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(LEN_BYTES..LEN_BYTES + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, LEN_BYTES + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::clock::Hlc;
    use proptest::prelude::*;

    fn sample() -> Message {
        Message::Ops(OpsBatch {
            bucket: "sessions".into(),
            origin: ReplicaId {
                node: "n1".into(),
                incarnation: 42,
            },
            covered: SeqRanges::from_ranges([(Seq::from(1), Seq::from(3))]),
            writes: vec![WireWrite {
                key: "sess:1".into(),
                hlc: Hlc(7 << 16),
                seq: Seq::from(3),
                op: WriteOp::Set {
                    value: b"\x00{}".to_vec().into(),
                    expires_ms: None,
                },
            }],
            superseders: Vec::new(),
            superseded: Vec::new(),
        })
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf).unwrap();
        encode_frame(&Message::Ping { wall_ms: 9 }, &mut buf).unwrap();
        let (a, used) = decode_frame(&buf).unwrap().unwrap();
        assert_eq!(a, sample());
        let (b, used2) = decode_frame(&buf[used..]).unwrap().unwrap();
        assert_eq!(b, Message::Ping { wall_ms: 9 });
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn a_partial_frame_asks_for_more() {
        let mut buf = Vec::new();
        encode_frame(&sample(), &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(decode_frame(&buf[..cut]), Ok(None));
        }
    }

    #[test]
    fn frames_that_compression_would_not_shorten_travel_as_they_are() {
        let mut small = Vec::new();
        encode_frame(&Message::Ping { wall_ms: 1 }, &mut small).unwrap();
        let mut noise = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let prefix: String = (0..4_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect();
        let fetch = Message::FetchRequest {
            id: 1,
            bucket: "b".into(),
            prefix,
        };
        encode_frame(&fetch, &mut noise).unwrap();
        for frames in [small, noise] {
            let mut out = Vec::new();
            compress_frames(&frames, &mut out);
            assert_eq!(out, frames);
        }
    }

    #[test]
    fn a_frame_larger_than_a_block_travels_alone_and_plain() {
        let fetch = |n: usize| Message::FetchRequest {
            id: 1,
            bucket: "b".into(),
            prefix: "a".repeat(n),
        };
        let mut frames = Vec::new();
        encode_frame(&fetch(1_000), &mut frames).unwrap();
        let first = frames.len();
        // With its prefix, one byte more than a block holds.
        encode_frame(&fetch(MAX_BLOCK - 12), &mut frames).unwrap();
        assert_eq!(frames.len() - first, MAX_BLOCK + 2);
        let mut out = Vec::new();
        compress_frames(&frames, &mut out);
        assert!(is_compressed(&out[LEN_BYTES..]));
        let head = frame_len(&out).unwrap().unwrap() + LEN_BYTES;
        assert!(out[head..] == frames[first..], "the large frame, as it was");
    }

    #[test]
    fn a_huge_length_prefix_is_refused_before_reading_the_body() {
        let buf = [0xff, 0xff, 0xff, 0xff, PROTOCOL_VERSION];
        assert_eq!(
            decode_frame(&buf),
            Err(WireError::FrameTooLarge(u32::MAX as usize))
        );
    }

    fn summary(name: &str, origins: u64) -> BucketSummary {
        BucketSummary {
            name: name.into(),
            context: (0..origins)
                .map(|i| {
                    (
                        ReplicaId {
                            node: format!("node-{i:0>40}").into(),
                            incarnation: i,
                        },
                        SeqRanges::up_to(Seq::from(i + 1)),
                    )
                })
                .collect(),
            collected: vec![(
                ReplicaId {
                    node: "c".into(),
                    incarnation: 1,
                },
                SeqRanges::up_to(Seq::from(3)),
            )],
        }
    }

    /// Contexts of any number of buckets travel in bounded frames and add up to what was split; a
    /// bucket larger than a part travels whole, alone.
    #[test]
    fn contexts_of_any_size_split_into_bounded_parts_that_add_up() {
        let mut summaries: Vec<BucketSummary> = (0..30_000)
            .map(|i| summary(&format!("bucket-{i:0>200}"), 1))
            .collect();
        summaries.push(summary("wide", 60_000));
        let parts = ContextPart::split(summaries.clone());
        assert!(parts.len() > 8, "{} parts", parts.len());
        assert!(parts.iter().rev().skip(1).all(|p| !p.last) && parts.last().unwrap().last);
        let mut rebuilt: std::collections::BTreeMap<Arc<str>, BucketSummary> = Default::default();
        for part in parts {
            let mut buf = Vec::new();
            encode_frame(&Message::Contexts(part.clone()), &mut buf).unwrap();
            let wide = part.buckets.iter().any(|b| &*b.name == "wide");
            assert!(
                buf.len() < 2 * CONTEXT_PART_BYTES || (wide && part.buckets.len() == 1),
                "a part of {} bytes",
                buf.len()
            );
            for s in part.buckets {
                let r = rebuilt.entry(s.name.clone()).or_insert(BucketSummary {
                    name: s.name.clone(),
                    context: Vec::new(),
                    collected: Vec::new(),
                });
                r.context.extend(s.context);
                r.collected.extend(s.collected);
            }
        }
        summaries.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(rebuilt.into_values().collect::<Vec<_>>(), summaries);
        let empty = ContextPart::split(Vec::new());
        assert_eq!(
            empty,
            vec![ContextPart {
                buckets: Vec::new(),
                last: true
            }]
        );
    }

    /// A peer of the previous version (whose hello carried the contexts) is refused at its first
    /// frame, with an error that names both versions.
    #[test]
    fn a_version_3_hello_is_refused_with_a_clear_error() {
        let mut buf = Vec::new();
        encode_frame(&Message::Leave, &mut buf).unwrap();
        buf[LEN_BYTES] = 3;
        let err = decode_frame(&buf).unwrap_err();
        assert_eq!(err, WireError::Version(3));
        assert_eq!(
            err.to_string(),
            format!("unsupported protocol version 3 (this peer speaks {PROTOCOL_VERSION})")
        );
    }

    #[test]
    fn another_protocol_version_is_refused() {
        let mut buf = Vec::new();
        encode_frame(&Message::Leave, &mut buf).unwrap();
        buf[LEN_BYTES] = 99;
        assert_eq!(decode_frame(&buf), Err(WireError::Version(99)));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
            let _ = decode_body(&bytes);
        }

        #[test]
        fn decoding_mutated_frames_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut buf = Vec::new();
            encode_frame(&sample(), &mut buf).unwrap();
            for (at, byte) in flips {
                let i = at % buf.len();
                buf[i] = byte;
            }
            let _ = decode_frame(&buf);
        }
    }
}
