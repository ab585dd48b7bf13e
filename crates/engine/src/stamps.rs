//! Latency stamps (feature `stamps`, off in every shipped build): the instant a write passes each
//! stage between `set` on one process and `'change'` on another, read on `CLOCK_MONOTONIC`, the clock
//! `process.hrtime` reads too, which every process on one machine shares. The bench's latency section
//! joins the stamps of both processes into the breakdown the README prints.
//!
//! Invariants: without the feature every function here is empty and inlined away, and no argument
//! needs work to build (a key is hashed inside, only with the feature on), so a stamp costs nothing
//! in a shipped build; with it, stamps are kept in order of their taking, per process, until taken.

/// The stages stamped, in the order a write passes them. A key's stages carry a hash of the key
/// (`key`), a link's carry a hash of the other end's id, the others the bytes they moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// `Bucket::write` entered: the JavaScript call reached the engine (key).
    WriteEntered = 1,
    /// The write is in the store, before the link writers are woken (key).
    WriteStored = 2,
    /// A link writer woke on its signal (link).
    WriterWoke = 3,
    /// It took its frames from the session (link).
    WriterFilled = 4,
    /// The frames were compressed where that pays, about to be written (bytes sent).
    WriterPacked = 5,
    /// A link reader's read returned (bytes read). On loopback it may come before the sender's write
    /// returns: the write hands the bytes to the reader's socket and wakes it.
    ReaderRead = 6,
    /// A frame carrying writes was decoded, inflated first if compressed (link).
    ReaderDecoded = 7,
    /// A change was handed to the bucket's subscriber, under the store's lock (key).
    ChangeQueued = 8,
    /// The session handled the frame, its merge done (link).
    ReaderHandled = 9,
    /// The event pump took the change from its channel (key).
    PumpTook = 10,
    /// The JavaScript thread began the threadsafe function's callback (key).
    CallbackBegan = 11,
    /// The callback built the batch handed to JavaScript (key).
    CallbackBuilt = 12,
}

/// A 32-bit FNV-1a hash of `s`: exact in a JavaScript number, so the bench computes it alike.
#[cfg(feature = "stamps")]
fn tag_of(s: &str) -> u64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    u64::from(h)
}

#[cfg(feature = "stamps")]
mod taken {
    use parking_lot::Mutex;

    pub(super) static STAMPS: Mutex<Vec<(u8, u64, u64)>> = Mutex::new(Vec::new());

    pub(super) fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write into; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    pub(super) fn push(stage: super::Stage, tag: u64) {
        let at = now_ns();
        STAMPS.lock().push((stage as u8, at, tag));
    }
}

/// Stamps `stage` now with `tag` (bytes moved, or 0).
#[inline(always)]
pub fn stamp(stage: Stage, tag: usize) {
    #[cfg(feature = "stamps")]
    taken::push(stage, tag as u64);
    #[cfg(not(feature = "stamps"))]
    let _ = (stage, tag);
}

/// Stamps `stage` now for a key, or for the link to the peer of that id.
#[inline(always)]
pub fn stamp_named(stage: Stage, name: &str) {
    #[cfg(feature = "stamps")]
    taken::push(stage, tag_of(name));
    #[cfg(not(feature = "stamps"))]
    let _ = (stage, name);
}

/// The stamps taken since the last call, as (stage, monotonic nanoseconds, tag), in order; always
/// empty without the feature.
pub fn take() -> Vec<(u8, u64, u64)> {
    #[cfg(feature = "stamps")]
    return std::mem::take(&mut *taken::STAMPS.lock());
    #[cfg(not(feature = "stamps"))]
    Vec::new()
}
