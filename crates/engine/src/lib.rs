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
//! - `keys`: which static key may speak for which peer id, and this node's own key;
//! - `transport`: the seams under links: real TCP, or simulated TCP for the whole-node simulation,
//!   and the resolver of seed names (the system's, or one a test injects);
//! - `hash`: the engine's hash maps (a fixed seed under the simulation, for replays);
//! - `connection`: frames over a stream;
//! - `disk`: the durable backend for a data directory (redb, the write-ahead log, group commit, the
//!   clean-stop marker) over a file-system seam, with a simulated disk for tests;
//! - `guard`: defences against hostile connections: the cap on handshakes, rejection counts and logs;
//! - `bucket`: a named bucket replica with its change subscribers;
//! - `counter`: counters that merge (a CRDT of single-writer registers carried by a hidden bucket);
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
//! - `report`: reporting outward without a flood: log lines within a budget per window, and events
//!   held for a subscriber that has not come yet;
//! - `stamps`: the latency stamps of a write's stages (feature `stamps`; empty without it);
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
//!    subscriber, a counter's index of registers (told of changes under the store's lock) and the
//!    link writers' wake-ups.

mod acks;
mod bucket;
mod clock;
mod collect;
mod config;
pub mod connection;
pub mod counter;
mod disk;
mod error;
mod guard;
mod hash;
mod keys;
mod link;
mod membership;
mod node;
mod ranges;
mod replica;
mod report;
mod resolve;
mod secure;
mod seq_index;
mod shared;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stamps;
mod store;
mod sync;
mod transport;
pub mod value;
mod warning;
pub mod wire;

// The public surface. Modules are private; what follows is what the N-API binding, the simulation
// binary, the tests and the fuzz targets reach. Four stay public modules, whose functions read best
// qualified: `value` (how values are tagged across the JS boundary), `wire` (the protocol's
// messages and frames), `connection` (frames over a stream, as a scripted peer speaks them) and
// `counter` (a counter's registers and the hidden bucket that carries them).

// A node, as the N-API binding starts and drives it.
pub use acks::{AckEnd, AckLevel, AckOutcome, Registered, LATENCY_BOUNDS_MS};
pub use bucket::Bucket;
pub use clock::{Clock, Hlc, ManualClock, PhysicalClock};
pub use config::Config;
pub use disk::Durability;
pub use error::{Error, LinkError};
pub use membership::{PeerEvent, PeerEventKind, PeerInfo};
pub use node::{LinkStats, Node, Stats};
pub use replica::{Origin, ReplicaId, ReplicaTable};
pub use report::Throttle;
pub use store::{Change, Lifetime, Stamp, Write};
pub use transport::{BoxFuture, Resolver, SystemResolver};
pub use warning::{Warning, WarningCode};

// The protocol's parts without I/O and the seams under a node, as the tests drive them.
pub use collect::Collector;
pub use disk::sim::{FaultKind, Faults, SimDisk};
pub use ranges::SeqRanges;
pub use secure::{key_from_hex, key_to_hex, Handshake, PublicKey, Security, LINK_VERSION, MAGIC};
pub use shared::Shared;
pub use store::{key_fingerprint, ChunkLimits, Entry, MemoryStore, ScanCursor, Store};
pub use sync::{Inbound, Local, PullPlanner, Session, OWED_LIMIT};
#[cfg(feature = "sim")]
pub use transport::SimTcp;
