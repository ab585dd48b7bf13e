//! The profiles a simulation runs under: how many nodes, how long, how often operations and faults
//! come, and which fault kinds are on. `calm` has none; `heavy` has them all.

/// What a run exercises. Every fault kind is one flag; `heavy` sets them all.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub nodes: usize,
    /// Virtual milliseconds of operations and faults before the heal.
    pub chaos_ms: u64,
    /// Mean virtual milliseconds between operations.
    pub op_every_ms: u64,
    /// Mean virtual milliseconds between faults (of the kinds enabled).
    pub fault_every_ms: u64,
    pub buckets: usize,
    /// Partitions of the cluster in two that heal pair by pair.
    pub partitions: bool,
    pub one_way: bool,
    /// Traffic held on a link, then released at once.
    pub holds: bool,
    /// Links cut for a few milliseconds: segments in flight are lost and the stream stalls.
    pub resets: bool,
    /// SIGKILL-equivalent crashes, restarts under the same id (empty, new incarnation).
    pub crashes: bool,
    /// Restarts under a new id.
    pub new_ids: bool,
    /// A second process with an existing node's id, for a while.
    pub dup_ids: bool,
    /// `memberTimeout` short enough that long partitions forget members.
    pub forget: bool,
    /// Nodes joining during the run.
    pub joins: bool,
    /// Clock offsets up to just under `maxClockSkew` apart, drift, backward jumps on restart.
    pub clocks: bool,
    /// Keys and values at their size limits, now and then.
    pub big: bool,
    /// Percent of the nodes that keep a data directory on a simulated disk (strict or relaxed, drawn
    /// per node); a crash cuts its power (unsynced writes lost or torn) and the node comes back from
    /// the directory, or without it (lost with the machine).
    pub disks: u64,
    /// Episodes of EIO and ENOSPC on a node's disk writes and fsyncs, and of a full disk.
    pub disk_faults: bool,
}

const BASE: Profile = Profile {
    name: "calm",
    nodes: 4,
    chaos_ms: 8_000,
    op_every_ms: 25,
    fault_every_ms: 700,
    buckets: 2,
    partitions: false,
    one_way: false,
    holds: false,
    resets: false,
    crashes: false,
    new_ids: false,
    dup_ids: false,
    forget: false,
    joins: false,
    clocks: false,
    big: false,
    disks: 0,
    disk_faults: false,
};

pub const PROFILES: &[Profile] = &[
    BASE,
    Profile {
        name: "partitions",
        partitions: true,
        one_way: true,
        holds: true,
        resets: true,
        ..BASE
    },
    Profile {
        name: "crashes",
        crashes: true,
        new_ids: true,
        joins: true,
        disks: 50,
        disk_faults: true,
        ..BASE
    },
    Profile {
        name: "clocks",
        clocks: true,
        crashes: true,
        ..BASE
    },
    Profile {
        name: "membership",
        forget: true,
        partitions: true,
        dup_ids: true,
        joins: true,
        buckets: 4,
        ..BASE
    },
    Profile {
        name: "heavy",
        nodes: 5,
        chaos_ms: 12_000,
        op_every_ms: 15,
        fault_every_ms: 400,
        buckets: 4,
        partitions: true,
        one_way: true,
        holds: true,
        resets: true,
        crashes: true,
        new_ids: true,
        dup_ids: true,
        forget: true,
        joins: true,
        clocks: true,
        big: true,
        disks: 60,
        disk_faults: true,
    },
    Profile {
        name: "disk",
        crashes: true,
        disks: 100,
        disk_faults: true,
        fault_every_ms: 500,
        ..BASE
    },
];

impl Profile {
    pub fn named(name: &str) -> Option<Profile> {
        PROFILES.iter().find(|p| p.name == name).copied()
    }
}
