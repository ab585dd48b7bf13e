//! The peer-buckets sync engine, with no Node.js in it: `cargo test` covers all of it.
//!
//! Layout: five layers, each a folder, each importing only the layers listed before it, and a few
//! crate-wide modules beside them.
//! - `replication/`, the replicated data without I/O: `clock` (the hybrid logical clock every write
//!   is stamped with), `replica` (who wrote a value, interned as `Origin`), `ranges` (`Seq`, the
//!   sequence number of a replica's writes, and sets of them, a causal context), `seq_index` (the
//!   per-origin index seq -> key hash), `value` (how values are tagged), `store` (the `Store` trait
//!   and the in-memory backend with the last-writer-wins merge), `bucket` (a named replica with its
//!   change subscribers), `counter` (counters that merge, carried by a hidden bucket), `acks`
//!   (acknowledgement levels and timeouts);
//! - `protocol/`, what replicas say to each other, still without I/O: `wire` (the versioned message
//!   enum and its frames), `sync` (push, pulls of gaps, digests, anti-entropy, fetches, acks, per
//!   link), `collect` (when tombstones may be dropped);
//! - `storage/`, the durable backend for a data directory (redb, the write-ahead log, group commit,
//!   the clean-stop marker) over a file-system seam, with a simulated disk for tests;
//! - `net/`, bytes between peers: `transport` (the seams under links: real TCP or simulated TCP, and
//!   the resolver of seed names), `connection` (frames over a stream), `secure` (the preamble, the
//!   Noise handshake bound to the cluster key, encrypted records), `keys` (which static key may speak
//!   for which peer id, and this node's own key), `guard` (defences against hostile connections),
//!   `membership` (members, one link per pair, dialers with backoff, peer events; its dialers open
//!   links through the `Dialing` seam, so it imports no link);
//! - `node/`, a running peer: the `Node` itself (listener, bucket registry, stats, clean shutdown),
//!   `config` (how a node is started), `shared` (what every task of a node shares), `link` (one
//!   connection to one peer: handshake, then the session's frames both ways), `resolve` (seed names
//!   looked up again as the cluster changes);
//! - crate-wide: `error` (the one module that imports upward: a link's closing causes are types of
//!   `net::secure` and `protocol::wire`), `hash` (the engine's hash maps, with a fixed seed under
//!   the simulation), `warning` (the node-wide warning sink), `report` (log lines and events
//!   without a flood), `stamps` (latency stamps of a write's stages, feature `stamps`), and `sim`
//!   (feature `sim`: the whole-node deterministic simulation and its history checker).
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

mod error;
mod hash;
mod net;
mod node;
mod protocol;
mod replication;
mod report;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stamps;
mod storage;
mod warning;

// The public surface. Modules are private; what follows is what the N-API binding, the simulation
// binary, the tests and the fuzz targets reach. Four modules are public under the root, whose
// functions read best qualified: `value` (how values are tagged across the JS boundary), `wire` (the protocol's
// messages and frames), `connection` (frames over a stream, as a scripted peer speaks them) and
// `counter` (a counter's registers and the hidden bucket that carries them).
pub use net::connection;
pub use protocol::wire;
pub use replication::{counter, value};

// A node, as the N-API binding starts and drives it.
pub use error::{Error, LinkError};
pub use net::membership::{PeerEvent, PeerEventKind, PeerInfo};
pub use net::transport::{BoxFuture, Resolver, SystemResolver};
pub use node::config::Config;
pub use node::{LinkStats, Node, Stats};
pub use replication::acks::{AckEnd, AckLevel, AckOutcome, Registered, LATENCY_BOUNDS_MS};
pub use replication::bucket::Bucket;
pub use replication::clock::{Clock, Hlc, ManualClock, PhysicalClock};
pub use replication::replica::{Origin, ReplicaId, ReplicaTable};
pub use replication::store::{Change, Expiry, Lifetime, Op, Stamp, Write};
pub use report::Throttle;
pub use storage::Durability;
pub use warning::{Warning, WarningCode};

// The protocol's parts without I/O and the seams under a node, as the tests drive them.
pub use net::secure::{
    key_from_hex, key_to_hex, Handshake, PublicKey, Security, LINK_VERSION, MAGIC,
};
#[cfg(feature = "sim")]
pub use net::transport::SimTcp;
pub use node::shared::Shared;
pub use protocol::collect::Collector;
pub use protocol::sync::{Inbound, Local, PullPlanner, Session, OWED_LIMIT};
pub use replication::ranges::{Seq, SeqRanges};
pub use replication::store::{
    key_fingerprint, ChunkLimits, Entry, Incoming, MemoryStore, ScanCursor, Store,
};
pub use storage::sim::{FaultKind, Faults, SimDisk};
