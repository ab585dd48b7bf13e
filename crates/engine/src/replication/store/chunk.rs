//! What travels between a store and the sync protocol: a chunk of one origin's writes (with the
//! superseders that back any coverage it claims) and the result of merging one.
//!
//! A chunk never claims a dot it cannot back: covered superseded seqs come with the registers that
//! superseded them, so a replica taking the coverage holds something at least as new.

use super::Write;
use crate::replication::ranges::{Seq, SeqRanges};
use crate::replication::replica::Origin;
use std::sync::Arc;

/// How much one chunk may hold; at least one write is always returned.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    pub max_writes: usize,
    /// Keys and values, roughly.
    pub max_bytes: usize,
}

impl ChunkLimits {
    pub const UNLIMITED: ChunkLimits = ChunkLimits {
        max_writes: usize::MAX,
        max_bytes: usize::MAX,
    };

    pub fn writes(max_writes: usize) -> ChunkLimits {
        ChunkLimits {
            max_writes,
            max_bytes: usize::MAX,
        }
    }
}

/// What `Store::chunk` returns.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Stored writes of the origin in the range.
    pub writes: Vec<Write>,
    /// The seqs they stand for.
    pub covered: SeqRanges,
    /// Current registers of keys whose writes in the range were superseded, and the touch registers
    /// of keys whose value registers are among `writes`, with their origins; merged with the writes
    /// in one step (`Store::merge_chunk`).
    pub superseders: Vec<(Origin, Write)>,
    /// The superseded seqs of the range, per key, so the receiver can relay them with their
    /// superseders in turn.
    pub superseded: Vec<(Arc<str>, Vec<Seq>)>,
}

/// A chunk as it is merged (`Store::merge_chunk`): writes of one origin, the seqs of that origin
/// they stand for, and what backs coverage claimed without its writes: per key, the superseded seqs
/// covered, and the registers (of any origin, each covering its own dot) that superseded them. A
/// fetch's or a resync's answer claims no coverage: registers alone.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub writes: Vec<Write>,
    pub covered: &'a SeqRanges,
    pub superseded: &'a [(Arc<str>, Vec<Seq>)],
    pub superseders: Vec<(Origin, Write)>,
}

/// The empty set, for chunks that claim no coverage.
static NOTHING_COVERED: SeqRanges = SeqRanges::new();

impl<'a> Incoming<'a> {
    /// Writes that stand for `covered`, nothing superseded among them.
    pub fn writes(writes: Vec<Write>, covered: &'a SeqRanges) -> Incoming<'a> {
        Incoming {
            writes,
            covered,
            superseded: &[],
            superseders: Vec::new(),
        }
    }

    /// Registers that claim only their own dots: `writes` of the chunk's origin and `registers` of
    /// any origin.
    pub fn registers(writes: Vec<Write>, registers: Vec<(Origin, Write)>) -> Incoming<'a> {
        Incoming {
            writes,
            covered: &NOTHING_COVERED,
            superseded: &[],
            superseders: registers,
        }
    }
}

/// What `Store::merge` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Writes whose dot was new here.
    pub fresh: usize,
    /// Stand-in tombstones written (local writes: the links must send them).
    pub stand_ins: usize,
}
