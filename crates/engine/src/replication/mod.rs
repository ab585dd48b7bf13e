//! The replicated data, without I/O: what a replica holds and how writes merge. Nothing here knows
//! of links, frames or disks; the layers above (`protocol`, `storage`, `net`, `node`) build on it.
//!
//! Invariant: every register a replica stores is named by its dot (origin, seq) and ordered by
//! `(hlc, origin)`; a merge keeps the greatest, whatever the order writes arrive in.

pub mod acks;
pub mod bucket;
pub mod clock;
pub mod counter;
pub mod ranges;
pub mod replica;
pub mod seq_index;
pub mod store;
pub mod value;
