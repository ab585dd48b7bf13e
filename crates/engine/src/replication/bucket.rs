//! A named bucket replica: its store, the subscriber that receives its changes (writes and expiries),
//! and the hook that wakes the links when a local write needs sending.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::replication::clock::{Clock, TooFarAhead};
use crate::replication::ranges::SeqRanges;
use crate::replication::replica::Origin;
use crate::replication::store::Incoming;
use crate::replication::store::{
    Change, CollectedRecord, Lifetime, Merged, ScanCursor, Shown, Stamp, Store, Write,
};
use crate::stamps::{stamp_named, Stage};

/// Told about changes: every local write (link writers must send it, a durable store persist it) and
/// every merged remote change (a durable store must persist it).
pub trait WriteSignal: Send + Sync + 'static {
    fn local_write(&self);
    fn remote_change(&self) {}
}

/// Hears, under the store's lock and in the order they applied, each key that starts or stops
/// showing a value or shows a new one: local writes, merges, expiries, dropped registers and
/// stand-in tombstones, whether or not anyone subscribed. Liveness is judged as listeners' changes
/// are (at the store's last sweep), so a key last heard live may have expired since, unswept.
pub trait KeyWatch: Any + Send + Sync {
    fn shown(&self, key: &Arc<str>, live: bool);
}

pub struct Bucket {
    name: Arc<str>,
    store: Box<dyn Store>,
    me: Origin,
    clock: Arc<Clock>,
    signal: Arc<dyn WriteSignal>,
    has_subscriber: AtomicBool,
    subscriber: Mutex<Option<mpsc::UnboundedSender<Change>>>,
    /// Set once, by the first party that watches; told of every change (see `KeyWatch`).
    watch: OnceLock<Arc<dyn KeyWatch>>,
    /// Dots of tombstones this replica has collected: a replica whose context lacks some of them was
    /// away past a collection and must resync in full.
    collected: Mutex<BTreeMap<Origin, SeqRanges>>,
}

impl Bucket {
    pub fn new(
        name: Arc<str>,
        me: Origin,
        clock: Arc<Clock>,
        signal: Arc<dyn WriteSignal>,
        store: Box<dyn Store>,
    ) -> Self {
        let bucket = Bucket {
            name,
            store,
            me,
            clock,
            signal,
            has_subscriber: AtomicBool::new(false),
            subscriber: Mutex::new(None),
            watch: OnceLock::new(),
            collected: Mutex::new(BTreeMap::new()),
        };
        // A restored store judges expiry from time zero: sweeping it now, before anyone can listen,
        // counts a value that died before the restart as dead without announcing it (this process
        // never showed it).
        bucket.expire(bucket.now_ms());
        bucket
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().physical_ms()
    }

    /// Calls `f` with the live stored value of `key`; returns whether there was one.
    pub fn read(&self, key: &str, f: &mut dyn FnMut(&[u8])) -> bool {
        self.store.read(key, &|| self.now_ms(), f)
    }

    /// `read`, with the stamp of the write the value came from (see `Stamp`).
    pub fn read_stamped(&self, key: &str, f: &mut dyn FnMut(&[u8], Stamp)) -> bool {
        self.store.read_stamped(key, &|| self.now_ms(), f)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.store.read(key, &|| self.now_ms(), &mut |_| {})
    }

    /// Live keys: expiries due by now are swept first, so the count never includes an expired key.
    pub fn len(&self) -> usize {
        self.sweep();
        self.store.live_len()
    }

    /// Reports the keys whose time is up (a 'change' with no value) and queues them for collection.
    pub fn sweep(&self) {
        // The clock is read only when something can be due: every local write sweeps first, and most
        // buckets hold nothing that expires.
        let Some(at) = self.store.next_expiry() else {
            return;
        };
        let now = self.now_ms();
        if at > now {
            return;
        }
        self.expire(now);
    }

    /// Sweeps up to `now_ms` even when nothing is due, so the store judges what arrives next at
    /// `now_ms`.
    fn expire(&self, now_ms: u64) {
        let listening = self.has_subscriber.load(Ordering::Acquire);
        self.store.expire(now_ms, &mut |key| {
            self.watched(key, false);
            if listening {
                self.send(Change {
                    key: key.clone(),
                    value: None,
                    origin: self.me.clone(),
                    local: true,
                    expired: true,
                });
            }
        });
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn scan(&self, prefix: &str, f: &mut dyn FnMut(&str, &[u8])) {
        self.store.scan(prefix, self.now_ms(), f)
    }

    /// How many live keys are under `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.store.count(prefix, self.now_ms())
    }

    /// One page of a scan of the live keys under `prefix` (see `Store::scan_page`).
    pub fn scan_page(
        &self,
        prefix: &str,
        from: ScanCursor,
        limit: usize,
        f: &mut dyn FnMut(&str, &[u8]),
    ) -> Option<ScanCursor> {
        self.store.scan_page(prefix, self.now_ms(), from, limit, f)
    }

    /// Milliseconds until `key`'s live value expires: `Some(None)` when it never does, `None` when the
    /// key has no live value.
    pub fn ttl_left(&self, key: &str) -> Option<Option<u64>> {
        let now = self.now_ms();
        let expiry = self.store.expiry_of(key, now)?;
        Some(expiry.ms().map(|at| at.saturating_sub(now).max(1)))
    }

    /// The registers stored for `key`, live or not (a tombstone, an expired value), with their
    /// origins: the value register (`touch == false`; `value` is `None` for a tombstone) and, if a
    /// touch is newer, the touch register. Empty when nothing is stored for the key.
    pub fn inspect(&self, key: &str) -> Vec<(Origin, Write)> {
        self.store.registers(key)
    }

    /// Writes locally (a value, or a tombstone when `value` is `None`) and queues it for every link.
    pub fn write(
        &self,
        key: impl AsRef<str>,
        value: Option<Box<[u8]>>,
        lifetime: Lifetime,
    ) -> Write {
        // Expiries due by now are reported first, as for a merge: a key that expired and is written
        // over before the periodic sweep ran still showed its expiry to readers. An expiry given as
        // an instant may be past already: then the store is swept up to now even with nothing due,
        // so such a value is never shown live (a time to live counts from now and cannot be).
        stamp_named(Stage::WriteEntered, key.as_ref());
        if matches!(lifetime, Lifetime::Until(_)) {
            self.expire(self.now_ms());
        } else {
            self.sweep();
        }
        let listening = self.has_subscriber.load(Ordering::Acquire);
        // Changes are emitted under the store's lock, so listeners see them in the order they applied.
        let write = self.store.write_local(
            &self.me,
            &self.clock,
            key.as_ref(),
            value,
            lifetime,
            &mut |shown| {
                self.watched(shown.key, shown.value.is_some());
                if listening {
                    self.emit(shown, &self.me, true)
                }
            },
        );
        stamp_named(Stage::WriteStored, key.as_ref());
        self.signal.local_write();
        write
    }

    /// Extends a live key's expiry to `ttl_ms` from now and queues the touch for every link; `None`
    /// when the key is absent or expired (a touch never brings a key back).
    pub fn touch(&self, key: Arc<str>, ttl_ms: u64) -> Option<Write> {
        let write = self.store.touch_local(&self.me, &self.clock, key, ttl_ms)?;
        self.signal.local_write();
        Some(write)
    }

    /// Merges writes from another replica (see `Store::merge`); refused whole, touching nothing, when
    /// one is stamped further ahead than the clock allows (see `Clock::observe`).
    pub fn merge(
        &self,
        origin: &Origin,
        writes: Vec<Write>,
        covered: &SeqRanges,
    ) -> Result<Merged, TooFarAhead> {
        self.merge_chunk(origin, Incoming::writes(writes, covered))
    }

    /// Merges a chunk from another replica in one step, with the superseded seqs it covered and the
    /// registers it carries for them (see `Store::merge_chunk`); refused whole like `merge`.
    pub fn merge_chunk(&self, origin: &Origin, chunk: Incoming<'_>) -> Result<Merged, TooFarAhead> {
        let registers = chunk.superseders.iter().map(|(_, w)| w);
        let stamps = chunk.writes.iter().chain(registers);
        if let Some(max) = stamps.map(|w| w.hlc).max() {
            self.clock.observe(max)?;
        }
        // Expiries are swept up to now first: a value whose expiry is past when it arrives is then
        // never shown live, and one that hides a live value is reported as its expiry.
        self.expire(self.now_ms());
        let listening = self.has_subscriber.load(Ordering::Acquire);
        let merged = self
            .store
            .merge_chunk(&self.me, origin, chunk, &mut |shown| {
                self.watched(shown.key, shown.value.is_some());
                if listening {
                    self.emit(shown, origin, false)
                }
            });
        if merged.stand_ins > 0 {
            tracing::debug!(bucket = %self.name, count = merged.stand_ins, "stand-in tombstones for writes older than collected ones");
            self.signal.local_write();
        } else {
            self.signal.remote_change();
        }
        Ok(merged)
    }

    /// Drops this replica's registers of `origin` with seqs in `dots`, known superseded elsewhere (a
    /// full resync); a key that stops showing a value is reported (see `Store::drop_dots`).
    pub fn drop_dots(&self, origin: &Origin, dots: &SeqRanges) -> usize {
        // Judged at now, as a merge is: a key whose expiry is due is heard expired first.
        self.expire(self.now_ms());
        let listening = self.has_subscriber.load(Ordering::Acquire);
        self.store.drop_dots(origin, dots, &mut |shown| {
            self.watched(shown.key, shown.value.is_some());
            if listening {
                self.emit(shown, origin, false)
            }
        })
    }

    /// Restores registers of `origin` a peer stores under dots this replica covers, to repair a
    /// divergence (see `Store::restore_registers`); each key whose value changes is reported.
    /// Returns how many registers changed.
    pub fn restore_registers(&self, origin: &Origin, writes: Vec<Write>) -> usize {
        self.expire(self.now_ms());
        let listening = self.has_subscriber.load(Ordering::Acquire);
        self.store.restore_registers(origin, writes, &mut |shown| {
            self.watched(shown.key, shown.value.is_some());
            if listening {
                self.emit(shown, origin, false)
            }
        })
    }

    /// Remembers collected registers a peer reported (see `Store::learn_collected`); a stand-in it
    /// writes is a local write, heard and sent like one. Returns the stand-ins written.
    pub fn learn_collected(&self, records: Vec<(CollectedRecord, Option<Origin>)>) -> usize {
        let listening = self.has_subscriber.load(Ordering::Acquire);
        let stand_ins = self.store.learn_collected(&self.me, records, &mut |shown| {
            self.watched(shown.key, shown.value.is_some());
            if listening {
                self.emit(shown, &self.me, true)
            }
        });
        if stand_ins > 0 {
            self.signal.local_write();
        } else {
            self.signal.remote_change();
        }
        stand_ins
    }

    /// The watch of this bucket (see `KeyWatch`): the one `make` builds if none is set, else the one
    /// set, if it is a `W`. Changes reach it from the moment it is set: what the bucket held before,
    /// its builder reads afterwards (a scan), so nothing falls between the two.
    pub fn watch<W: KeyWatch>(&self, make: impl FnOnce() -> W) -> Option<Arc<W>> {
        let any: Arc<dyn Any + Send + Sync> = self.watch.get_or_init(|| Arc::new(make())).clone();
        any.downcast().ok()
    }

    fn watched(&self, key: &Arc<str>, live: bool) {
        if let Some(w) = self.watch.get() {
            w.shown(key, live);
        }
    }

    fn emit(&self, shown: Shown<'_>, origin: &Origin, local: bool) {
        self.send(Change {
            key: shown.key.clone(),
            value: shown.value.map(Box::from),
            origin: origin.clone(),
            local,
            expired: shown.expired,
        });
    }

    fn send(&self, change: Change) {
        stamp_named(Stage::ChangeQueued, &change.key);
        if let Some(tx) = &*self.subscriber.lock() {
            let _ = tx.send(change);
        }
    }

    /// Records that tombstones with dots in `dots` may have been collected here.
    pub fn note_collected(&self, dots: &BTreeMap<Origin, SeqRanges>) {
        let mut collected = self.collected.lock();
        for (o, r) in dots {
            collected.entry(o.clone()).or_default().union_with(r);
        }
    }

    pub fn collected(&self) -> Vec<(Origin, SeqRanges)> {
        self.collected
            .lock()
            .iter()
            .map(|(o, r)| (o.clone(), r.clone()))
            .collect()
    }

    /// Starts delivering every applied change to the returned receiver, replacing any earlier one.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.subscriber.lock() = Some(tx);
        self.has_subscriber.store(true, Ordering::Release);
        rx
    }

    pub fn unsubscribe(&self) {
        self.has_subscriber.store(false, Ordering::Release);
        *self.subscriber.lock() = None;
    }
}
