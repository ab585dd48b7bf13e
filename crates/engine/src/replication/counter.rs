//! Counters that merge: a state-based CRDT (a PN-counter with resets and time windows) carried by an
//! ordinary bucket, so a counter replicates, catches up, persists and is collected exactly as a
//! bucket is, with no message of its own.
//!
//! A counter named `n` lives in the hidden bucket `"\0counter:n"` (a name users cannot open). For a
//! counter key `k` the bucket holds *registers*, each under the key `k + "\0" + suffix`:
//! - a writer register `w<token>:<end>`: the increments and decrements (two monotone totals) one
//!   process made to `k` in the window ending at `end` (ms since the epoch; 0: no window, forever);
//! - a reset register `r<token>`: for each writer register its writer saw when it last reset `k`,
//!   the totals it saw then (its *floors*).
//!
//! `token` is drawn at random per process (per `Counter`), never reused: a process restarted on its
//! data directory, which may have lost its latest register to a crash while peers hold it, starts
//! new registers rather than overwriting a larger total with a smaller one.
//!
//! Invariants, each relied on by the proofs below and kept here:
//! - **Single writer.** Only the process holding `token` writes a register with it, and each write
//!   carries totals at least those of the write before. Last-writer-wins between writes of one
//!   origin keeps the newest, so a register only grows and merging registers is taking the newest:
//!   no concurrent increment is ever dropped (two processes never write one register).
//! - **Value.** At time `t` a replica shows `Σ over writer registers w live at t (end = 0 or
//!   end > t) of (inc_w − F_inc(w)) − (dec_w − F_dec(w))`, where `F(w)` is the component-wise
//!   maximum of the floors for `w` over the reset registers it holds (0 when none). It depends only
//!   on the set of registers held, so replicas holding the same registers show the same value,
//!   whatever order and duplicates the registers arrived in.
//! - **Exactly once.** An increment made by process `p` at `t0` adds 1 to exactly one register
//!   `(p, end)`; it is counted at every replica holding that register's newest version, during
//!   `[t0, end)` (forever without a window), and never after `end`: once per replica, in one window.
//! - **Reset.** A reset records floors equal to the totals the resetter holds, which are at most the
//!   registers' real totals (registers only grow), so it cancels exactly the increments it had seen;
//!   increments it had not seen (concurrent ones) stay above the floor and keep counting. Two resets
//!   merge by the maximum of their floors: the union of what they had seen.
//! - **Windows.** A window's end is fixed when it opens, at the first increment that finds no live
//!   window for the key: `end = now + ttl`, an absolute time carried in every register's key, so it
//!   ends at the same instant everywhere. An increment joins the live window that ends first.
//!   Two processes that open a window concurrently (neither had seen the other's) each count in
//!   their own: both windows stand, every increment counts in the one it was made in until that
//!   window's end, and from the moment a process sees both it joins the earlier one. The rule "the
//!   losing window's increments move into the winner" is not used: it would have to be applied by
//!   replicas that never saw the winner's registers (they expire and are collected at its end), and
//!   such replicas would count those increments a second time after the winner's end.
//! - **Bounds.** A writer register expires with its window (the bucket's TTL), so a rate-limit key
//!   holds at most one register per process that counted in a window still live, and a reset register
//!   expires with the last window it floors. Without a window a key keeps one register per process
//!   that ever changed it: folding a departed process's register into another is unsafe without
//!   agreement (two replicas folding it concurrently would count it twice), so it is not done; a
//!   reset keeps its floors only for registers still held.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::replication::bucket::Bucket;
use crate::replication::clock::Clock;
use crate::replication::store::Lifetime;
use crate::replication::value;

mod index;
use index::Index;

/// The hidden bucket prefix: a bucket name starting with NUL is refused to users.
pub const BUCKET_PREFIX: &str = "\u{0}counter:";

/// Separates a counter key from a register's suffix; the last one in a stored key does.
const SEP: char = '\u{0}';

/// The name of the hidden bucket that carries counter `name`.
pub fn bucket_name(name: &str) -> String {
    format!("{BUCKET_PREFIX}{name}")
}

/// A token for a new `Counter`: random, so no two processes (nor two runs of one) share one.
pub fn fresh_token() -> u64 {
    rand::random()
}

/// Splits a stored register key into the counter key and the register suffix; `None` for a key no
/// counter wrote (a malformed one from a broken peer is ignored, never counted).
pub fn split_key(stored: &str) -> Option<(&str, &str)> {
    let at = stored.rfind(SEP)?;
    let (key, suffix) = (&stored[..at], &stored[at + 1..]);
    (!key.is_empty() && parse_suffix(suffix).is_some()).then_some((key, suffix))
}

/// A writer register's identity: the process's token and the window's end (0: none).
pub type WriterId = (u64, u64);

/// Increments and decrements, each a monotone total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub inc: u64,
    pub dec: u64,
}

impl Tally {
    fn max(self, other: Tally) -> Tally {
        Tally {
            inc: self.inc.max(other.inc),
            dec: self.dec.max(other.dec),
        }
    }

    /// What counts above `floor`. A floor above the total (a reset seen before the register it
    /// floors arrived here) counts nothing, never below zero, until the register catches up.
    fn above(self, floor: Tally) -> i128 {
        self.inc.saturating_sub(floor.inc) as i128 - self.dec.saturating_sub(floor.dec) as i128
    }
}

enum Suffix {
    Writer(WriterId),
    Reset,
}

fn parse_suffix(suffix: &str) -> Option<Suffix> {
    let hex = |s: &str| {
        (!s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    if let Some(rest) = suffix.strip_prefix('w') {
        let (token, end) = rest.split_once(':')?;
        Some(Suffix::Writer((hex(token)?, hex(end)?)))
    } else {
        suffix
            .strip_prefix('r')
            .and_then(hex)
            .map(|_| Suffix::Reset)
    }
}

fn writer_suffix((token, end): WriterId) -> String {
    format!("w{token:x}:{end:x}")
}

fn reset_suffix(token: u64) -> String {
    format!("r{token:x}")
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn encode_tally(t: Tally) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&t.inc.to_le_bytes());
    out.extend_from_slice(&t.dec.to_le_bytes());
    out
}

fn decode_tally(bytes: &[u8]) -> Option<Tally> {
    (bytes.len() == 16).then(|| Tally {
        inc: u64_at(bytes, 0).unwrap_or(0),
        dec: u64_at(bytes, 8).unwrap_or(0),
    })
}

fn encode_floors(floors: &BTreeMap<WriterId, Tally>) -> Vec<u8> {
    let mut out = Vec::with_capacity(floors.len() * 32);
    for (&(token, end), t) in floors {
        for n in [token, end, t.inc, t.dec] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out
}

fn decode_floors(bytes: &[u8]) -> Option<Vec<(WriterId, Tally)>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    let n = |c: &[u8], i: usize| u64_at(c, i * 8).unwrap_or(0);
    Some(
        bytes
            .chunks_exact(32)
            .map(|c| {
                (
                    (n(c, 0), n(c, 1)),
                    Tally {
                        inc: n(c, 2),
                        dec: n(c, 3),
                    },
                )
            })
            .collect(),
    )
}

/// The registers of one counter key as a replica holds them, and what they add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyState {
    writers: BTreeMap<WriterId, Tally>,
    /// Per writer register, the maximum of the floors every reset register held sets for it.
    floors: BTreeMap<WriterId, Tally>,
}

impl KeyState {
    /// Adds one register (its suffix and its raw bytes, without the value tag); a malformed one
    /// is ignored.
    pub fn add(&mut self, suffix: &str, raw: &[u8]) {
        match parse_suffix(suffix) {
            Some(Suffix::Writer(id)) => {
                if let Some(t) = decode_tally(raw) {
                    let slot = self.writers.entry(id).or_default();
                    *slot = slot.max(t);
                }
            }
            Some(Suffix::Reset) => {
                for (id, floor) in decode_floors(raw).unwrap_or_default() {
                    let slot = self.floors.entry(id).or_default();
                    *slot = slot.max(floor);
                }
            }
            None => {}
        }
    }

    fn live(end: u64, now: u64) -> bool {
        end == 0 || end > now
    }

    /// The counter's value at `now` (see the module's invariants), saturated to the i64 range.
    pub fn value(&self, now: u64) -> i64 {
        let sum: i128 = self
            .writers
            .iter()
            .filter(|((_, end), _)| Self::live(*end, now))
            .map(|(id, t)| t.above(self.floors.get(id).copied().unwrap_or_default()))
            .sum();
        sum.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    /// The end of the window an increment at `now` joins: the live window that ends first.
    pub fn window(&self, now: u64) -> Option<u64> {
        self.writers
            .keys()
            .map(|&(_, end)| end)
            .filter(|&end| end != 0 && end > now)
            .min()
    }

    /// True when some register is live at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        self.writers.keys().any(|&(_, end)| Self::live(end, now))
    }

    pub fn tally(&self, id: WriterId) -> Tally {
        self.writers.get(&id).copied().unwrap_or_default()
    }

    /// The register an increment by `by` (negative: a decrement) made at `now` by process `token`
    /// writes, and its new totals: the live window that ends first, or a new one ending `ttl_ms` from
    /// now (`ttl_ms == 0`: no window).
    pub fn plan_add(&self, token: u64, by: i64, ttl_ms: u64, now: u64) -> (WriterId, Tally) {
        let end = if ttl_ms == 0 {
            0
        } else {
            self.window(now)
                .unwrap_or_else(|| now.saturating_add(ttl_ms))
        };
        let id = (token, end);
        let mut tally = self.tally(id);
        if by >= 0 {
            tally.inc = tally.inc.saturating_add(by.unsigned_abs());
        } else {
            tally.dec = tally.dec.saturating_add(by.unsigned_abs());
        }
        (id, tally)
    }

    /// The floors a reset at `now` records: every live writer register's totals as held here.
    pub fn plan_reset(&self, now: u64) -> BTreeMap<WriterId, Tally> {
        self.writers
            .iter()
            .filter(|((_, end), _)| Self::live(*end, now))
            .map(|(id, t)| (*id, *t))
            .collect()
    }
}

/// A register as stored: its suffix, its raw bytes (untagged) and its lifetime.
pub struct Planned {
    pub suffix: String,
    pub raw: Vec<u8>,
    pub lifetime: Lifetime,
}

fn until(end: u64) -> Lifetime {
    if end == 0 {
        Lifetime::Forever
    } else {
        Lifetime::Until(end)
    }
}

/// The writer register `id` holding `tally`; it expires with its window.
pub fn writer_register(id: WriterId, tally: Tally) -> Planned {
    Planned {
        suffix: writer_suffix(id),
        raw: encode_tally(tally),
        lifetime: until(id.1),
    }
}

/// Process `token`'s reset register holding `floors`; it expires with the last window it floors
/// (never, when one has none). `None` when there is nothing to floor.
pub fn reset_register(token: u64, floors: &BTreeMap<WriterId, Tally>) -> Option<Planned> {
    let lifetime = if floors.keys().any(|&(_, end)| end == 0) {
        Lifetime::Forever
    } else {
        until(floors.keys().map(|&(_, end)| end).max()?)
    };
    Some(Planned {
        suffix: reset_suffix(token),
        raw: encode_floors(floors),
        lifetime,
    })
}

/// One register write a counter operation asks for: the stored key, the stored value (tagged) and
/// its lifetime. The caller writes it (plainly, or waiting for an ack level).
pub struct RegisterWrite {
    pub key: Arc<str>,
    pub value: Box<[u8]>,
    pub lifetime: Lifetime,
}

/// A counter replica: its hidden bucket and this process's token.
pub struct Counter {
    bucket: Arc<Bucket>,
    /// The bucket's registers by counter key: what `state` reads.
    index: Arc<Index>,
    clock: Arc<Clock>,
    token: u64,
    /// Serialises the read-modify-write of this process's registers.
    writing: Mutex<()>,
}

impl Counter {
    pub fn new(bucket: Arc<Bucket>, clock: Arc<Clock>, token: u64) -> Self {
        Counter {
            index: Index::of(&bucket),
            bucket,
            clock,
            token,
            writing: Mutex::new(()),
        }
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now().physical_ms()
    }

    /// The registers held for `key`: read through the index, at a cost that does not grow with the
    /// keys of the counter.
    pub fn state(&self, key: &str) -> KeyState {
        let state = std::cell::RefCell::new(KeyState::default());
        self.index.read(
            key,
            &mut || *state.borrow_mut() = KeyState::default(),
            &mut |register| {
                self.bucket.read(register, &mut |stored| {
                    if let (Some((_, suffix)), Some((value::Kind::Bytes, raw))) =
                        (split_key(register), value::split(stored))
                    {
                        state.borrow_mut().add(suffix, raw);
                    }
                });
            },
        );
        state.into_inner()
    }

    /// Checks the index against a scan of the bucket swept to now: the same register keys.
    #[cfg(any(test, feature = "sim"))]
    pub fn check_index(&self) -> Result<(), String> {
        self.bucket.sweep();
        let mut scanned = Vec::new();
        self.bucket.scan("", &mut |k, _| {
            if split_key(k).is_some() {
                scanned.push(k.to_string());
            }
        });
        scanned.sort();
        let indexed = self.index.all();
        if indexed == scanned {
            Ok(())
        } else {
            Err(format!(
                "index holds {indexed:?}, the bucket shows {scanned:?}"
            ))
        }
    }

    pub fn value(&self, key: &str) -> i64 {
        self.state(key).value(self.now_ms())
    }

    /// When the window new increments of `key` join ends (ms since the epoch), if one is live.
    pub fn expires_at(&self, key: &str) -> Option<u64> {
        self.state(key).window(self.now_ms())
    }

    /// Adds `by` (negative: a decrement) to `key` (see `KeyState::plan_add`). `write` stores the
    /// register; the result is what `write` returned and the value seen here at the write: the
    /// registers held when it was planned with this one's new totals, never increments applied after.
    pub fn add<W>(
        &self,
        key: &str,
        by: i64,
        ttl_ms: u64,
        write: impl FnOnce(RegisterWrite) -> W,
    ) -> (W, i64) {
        let _held = self.writing.lock();
        let now = self.now_ms();
        let mut state = self.state(key);
        let (id, tally) = state.plan_add(self.token, by, ttl_ms, now);
        let done = write(self.stored(key, writer_register(id, tally)));
        // The count at this write: what was held when it was planned, plus itself. Reading the store
        // again would count increments applied after it (a rate limiter would charge them to it).
        state.writers.insert(id, tally);
        (done, state.value(now))
    }

    /// Clears the increments of `key` seen here: records this process's floors for every live writer
    /// register. `None` (nothing written) when no register is live.
    pub fn reset<W>(&self, key: &str, write: impl FnOnce(RegisterWrite) -> W) -> Option<W> {
        let _held = self.writing.lock();
        let floors = self.state(key).plan_reset(self.now_ms());
        let planned = reset_register(self.token, &floors)?;
        Some(write(self.stored(key, planned)))
    }

    fn stored(&self, key: &str, planned: Planned) -> RegisterWrite {
        RegisterWrite {
            key: format!("{key}{SEP}{}", planned.suffix).into(),
            value: value::encode_bytes(&planned.raw),
            lifetime: planned.lifetime,
        }
    }

    /// Counter keys starting with `prefix` whose value is not 0, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let now = self.now_ms();
        let mut states: BTreeMap<String, KeyState> = BTreeMap::new();
        self.bucket.scan(prefix, &mut |stored_key, stored| {
            if let (Some((k, suffix)), Some((value::Kind::Bytes, raw))) =
                (split_key(stored_key), value::split(stored))
            {
                if k.starts_with(prefix) {
                    states.entry(k.to_string()).or_default().add(suffix, raw);
                }
            }
        });
        states
            .into_iter()
            .filter(|(_, s)| s.value(now) != 0)
            .map(|(k, _)| k)
            .collect()
    }
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod tests;
