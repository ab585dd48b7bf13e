//! How a node is started: every knob of a peer, with the defaults a `new Peer()` gets.

use std::sync::Arc;
use std::time::Duration;

use crate::net::transport::{Tcp, Transport};
use crate::replication::clock::Clock;
use crate::storage::fs::{FileSystem, RealFs};
use crate::storage::Durability;

/// How a node is started.
#[derive(Clone)]
pub struct Config {
    /// Node id; random when `None`.
    pub id: Option<String>,
    /// `host:port` to listen on (port 0 for an ephemeral one).
    pub listen: String,
    /// Addresses to dial first, or host names each resolving to some (`resolve`); the rest of the
    /// network is learned from them.
    pub seeds: Vec<String>,
    /// How seed names are resolved: the system resolver, or one a test injects.
    pub resolver: Arc<dyn crate::net::transport::Resolver>,
    /// How often seed names are resolved again.
    pub resolve_every: Duration,
    /// A seed without a link (or a seed name without an answer) this long is reported (`EUNREACHABLE`).
    pub unreachable_after: Duration,
    /// `ip:port` other peers are told to dial (in hellos, hence in every member list) instead of the
    /// bound address: for a peer behind NAT or a port forward, or a proxy in front of it (the chaos
    /// harness routes every link through its fault-injecting proxies this way). `None`: the bound one.
    pub advertise: Option<String>,
    /// The clock to stamp writes with (tests inject a manual or skewed one).
    pub clock: Arc<Clock>,
    /// How often an idle link sends a ping.
    pub heartbeat: Duration,
    /// A link that receives nothing for this long is declared dead.
    pub dead_after: Duration,
    /// Reconnect backoff: first delay and cap (jittered).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often each link sends a round of digests (of the buckets that changed, and a few refreshed).
    pub digest_every: Duration,
    /// How often missing writes of other origins are planned and pulled.
    pub pull_every: Duration,
    /// Remote clocks further ahead than this are refused.
    pub max_clock_skew: Duration,
    /// Tombstones younger than this are kept; default three times `max_clock_skew`.
    pub tombstone_min_age: Option<Duration>,
    /// How long collected registers are remembered by key (see `store::CollectedKeys`); default
    /// `sync::REMEMBER_COLLECTED_MS`.
    pub remember_collected: Option<Duration>,
    /// How often a tombstone collection round runs.
    pub collect_every: Duration,
    /// A member unreachable for this long is forgotten (it stops holding up collection); if it comes
    /// back it resyncs in full.
    pub member_timeout: Duration,
    /// Persist everything in this directory (and reload it at start); memory only when `None`.
    pub data_dir: Option<std::path::PathBuf>,
    /// With `data_dir`: strict (a write settles once on disk) or relaxed (flushed every `flush_every`).
    pub durability: Durability,
    pub flush_every: Duration,
    /// Where `data_dir` lives: the real disk, or a simulated one (`disk::sim::SimDisk`).
    pub file_system: Arc<dyn FileSystem>,
    /// Cluster secrets: none for open, plaintext links; else the first is dialed with and each is
    /// accepted (two during a rotation). Each at least `secure::MIN_SECRET_LEN` bytes.
    pub secrets: Vec<Vec<u8>>,
    /// How long a connection may take from its first byte to both hellos; past it, it is closed.
    pub handshake_timeout: Duration,
    /// Accepted connections in the handshake at once; past it a newcomer takes the slot of another
    /// (`guard`).
    pub max_handshakes: usize,
    /// How links listen and dial: real TCP, or simulated TCP in the whole-node simulation.
    pub transport: Arc<dyn Transport>,
    /// Seeds the node's random choices (a random id, the incarnation's low bits, redial jitter) so a
    /// simulation replays; `None` draws them from the operating system.
    pub seed: Option<u64>,
    /// Past this many buckets, a bucket a peer names is not created and what it sends for it is
    /// ignored, with a warning (`sync::Local::remote_bucket`).
    pub max_buckets: usize,
    /// Without secrets: the network is trusted, so accept peers from any address. Otherwise a node
    /// without secrets listening beyond loopback accepts peers from loopback only (`guard::admits`).
    pub insecure: bool,
    /// With secrets: ids whose links only these static keys may speak for (`keys::KeyBook`); other
    /// ids are bound to the first key they prove.
    pub peer_keys: Vec<(String, crate::net::secure::PublicKey)>,
    /// Send frames compressed where that makes them shorter (`wire::compress_frames`); off, this
    /// node sends every frame plain (it reads compressed ones either way).
    pub compression: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: None,
            listen: "127.0.0.1:0".into(),
            seeds: Vec::new(),
            resolver: Arc::new(crate::net::transport::SystemResolver),
            resolve_every: Duration::from_secs(30),
            unreachable_after: Duration::from_secs(60),
            advertise: None,
            clock: Arc::new(Clock::default()),
            heartbeat: Duration::from_millis(500),
            dead_after: Duration::from_millis(3_000),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(3_000),
            digest_every: Duration::from_millis(1_000),
            pull_every: Duration::from_millis(500),
            max_clock_skew: Duration::from_secs(60),
            tombstone_min_age: None,
            remember_collected: None,
            collect_every: Duration::from_secs(2),
            member_timeout: Duration::from_secs(300),
            data_dir: None,
            durability: Durability::Strict,
            flush_every: Duration::from_secs(1),
            file_system: Arc::new(RealFs),
            secrets: Vec::new(),
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            transport: Arc::new(Tcp),
            seed: None,
            insecure: false,
            peer_keys: Vec::new(),
            compression: true,
            max_buckets: crate::protocol::sync::DEFAULT_MAX_BUCKETS,
        }
    }
}
