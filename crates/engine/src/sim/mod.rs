//! The whole-node deterministic simulation: real `Node`s (links, Noise-free open handshake,
//! membership, heartbeats, failure detection, acknowledgements, partial fetch, tombstone collection,
//! expiry) run as turmoil hosts over simulated TCP, in one process, from one seed.
//!
//! - `rng`: splitmix64, so every seed (even and odd alike) is its own schedule, with a sub-seed per
//!   node and per restart;
//! - `clock`: one physical clock per node, read from the simulation's virtual time with an offset
//!   (up to just under `maxClockSkew` apart), a drift, and a new offset at each restart (often an
//!   earlier one: the clock jumps backwards);
//! - `world`: the hosts, the fault schedule (partitions that heal pair by pair, one-way links, held
//!   and released traffic, link resets, crashes and restarts under the same or a new id, from the
//!   node's data directory on a `SimDisk` or without it, EIO and ENOSPC on disk writes and fsyncs,
//!   two nodes with one id, members forgotten and relearned, nodes joining mid-run) and the
//!   operations;
//! - `check`: the history checker run on every event and once the network healed.
//!
//! Invariants kept: a run is a pure function of (seed, profile): the same seed gives the same trace,
//! which `run` returns a fingerprint of; nothing reads the OS clock or OS randomness inside a node
//! (its clock is `clock::SimClock`, its random choices `Config::seed`, its timers tokio's virtual
//! time, its hash maps a fixed seed). Keyed (Noise) links are not simulated: snow draws its
//! ephemeral keys from the OS, so every simulated link is open.

pub mod check;
pub mod clock;
pub mod profile;
pub mod rng;
pub mod world;

pub use profile::{Profile, PROFILES};
pub use world::{run, Report};
