//! The peer-buckets sync engine, with no Node.js in it: `cargo test` covers all of it.
//!
//! Layout, one concern per module:
//! - `clock`: the hybrid logical clock every write is stamped with;
//! - `replica`: who wrote a value (node id and incarnation), interned as `Origin`;
//! - `ranges`: sets of sequence numbers, the causal context of a replica;
//! - `seq_index`: the compact per-origin index seq -> key hash;
//! - `store`: the `Store` trait and the in-memory backend, with the last-writer-wins merge;
//! - `value`: how values are tagged (JSON text or raw bytes);
//! - `wire`: the versioned message enum and its length-prefixed frames;
//! - `secure`: the preamble, the Noise handshake bound to the cluster key, and encrypted records;
//! - `transport`: the seam under links: real TCP, or simulated TCP for the whole-node simulation;
//! - `hash`: the engine's hash maps (a fixed seed under the simulation, for replays);
//! - `connection`: frames over a stream;
//! - `disk`: the durable backend for a data directory (redb, the write-ahead log, group commit, the
//!   clean-stop marker) over a file-system seam, with a simulated disk for tests;
//! - `guard`: defences against hostile connections: the cap on handshakes, rejection counts and logs;
//! - `bucket`: a named bucket replica with its change subscribers;
//! - `sync`: the replication protocol without I/O: push of own writes, pulls of gaps, digests, acks;
//! - `acks`: write acknowledgement levels and their timeouts;
//! - `collect`: when tombstones may be dropped;
//! - `config`: how a node is started, with its defaults;
//! - `membership`: members, one link per pair, dialers with backoff, peer-up/down events; its dialers
//!   open links through the `Dialing` seam, so it imports neither links nor the node;
//! - `shared`: what every task of a running node shares (configuration, replica, members, links);
//! - `link`: one connection to one peer: handshake, then the session's frames both ways;
//! - `node`: a peer: listener, bucket registry, stats and clean shutdown;
//! - `warning`: the node-wide warning sink: counted by code, logged and handed to JavaScript;
//! - `sim` (feature `sim`): the whole-node deterministic simulation and its history checker.
//!
//! Locks (`parking_lot`; none is held across an `.await`, which the compiler enforces in spawned
//! tasks since their guards are not `Send`). Where several are held at once they are taken in this
//! order, never the reverse:
//! 1. a link's `Session` (the housekeeping task locks every link's at once, always in the order of
//!    the node's link list, which is itself only cloned under its lock, never held);
//! 2. the replica's bucket registry and its stale set (`sync::Local`);
//! 3. one bucket's store state (`MemoryStore`'s single `RwLock`), never two stores at once;
//! 4. leaves, which call out to no other lock: acknowledgement waiters (`acks`), the membership
//!    table (then its event sink), the replica table, pending fetches, the warning sink, a bucket's
//!    subscriber and the link writers' wake-ups.

pub mod acks;
pub mod bucket;
pub mod clock;
pub mod collect;
pub mod config;
pub mod connection;
pub mod disk;
pub mod error;
pub mod guard;
pub mod hash;
pub mod link;
pub mod membership;
pub mod node;
pub mod ranges;
pub mod replica;
pub mod resolve;
pub mod secure;
pub mod seq_index;
pub mod shared;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
pub mod sync;
pub mod transport;
pub mod value;
pub mod warning;
pub mod wire;
