//! The history checker. Every write is logged with the value id it carries (values are unique per
//! write: `[op, padding]`), its `(hlc, origin)`, its ack level and how the ack ended. Checked:
//!
//! - while running, per replica run (a memory-only restart is a new run): every `'change'` names a
//!   value that was written, with that write's `(hlc, origin)`; a replica never announces a write
//!   older in `(hlc, origin)` order than one it already announced or a tombstone it already applied for
//!   the key (no resurrection, no going back); an expiry event names a key the replica's listener sees
//!   live (no duplicate or phantom expiry); a value is never announced live once expired, by its own
//!   expiry or by a newer touch, unless the touch reached neither the replica nor whoever sent it
//!   the value: the replica did not hold the touch before, and another replica held the value
//!   without the touch recently enough for a frame of it to be arriving (`may_lack_touch`), or an
//!   older touch that keeps the value live, the newest the replica holds, came from a replica that
//!   lacked the newer one as recently (`may_lack_touch_for_older`); a
//!   replica holds a touch with its register or one that beat it, not by covering its dot alone
//!   (a writer covers an own write it overwrote before sending it without either);
//! - when a node comes back from its data directory: every strict write it settled (on disk, by
//!   its contract) since the directory was made and before the crash is there or superseded, so a
//!   flush that could not store a write must have failed it with EDISK (honest acks);
//! - once the network healed and the replicas settled: every replica holds the same registers and
//!   contexts; `len()` equals the live keys; the value each listener was last told matches what the
//!   replica holds (no missing or extra event); on every replica, every write acknowledged with
//!   `'one'` or more, and every settled strict write, is present or superseded by a newer write in
//!   `(hlc, origin)` order (a collected key: superseded by a newer delete or expiring write), unless
//!   none of its holders kept it (the writer crashed since without coming back from its directory,
//!   or with a write only in memory, and every peer that acknowledged it crashed since); writes
//!   whose ack timed out, failed with EDISK or never settled may be lost; replicas that hold the same
//!   registers have the same fingerprint of them (`Store::stored_print`, which digests carry);
//! - while running: no node repairs a divergence that changed what it stores (`EDIVERGED`): every
//!   peer of the simulation is honest, and honest replicas with equal contexts store alike.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use crate::replication::acks::AckLevel;
use crate::replication::clock::Hlc;
use crate::replication::ranges::Seq;
use crate::replication::replica::ReplicaId;
use crate::replication::store::{Change, Write};
use crate::replication::value::{self, ValueRef};

/// How a write's acknowledgement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `'local'`: nothing waited for.
    Local,
    /// Still waiting (or its writer crashed before it settled): maybe replicated, maybe not.
    Pending,
    Acked,
    TimedOut,
    /// A strict write whose flush failed (EDISK): maybe stored, maybe not.
    DiskFailed,
}

#[derive(Debug, Clone)]
pub struct WriteRec {
    pub at_ms: u64,
    /// The writer's node id.
    pub node: Arc<str>,
    pub replica: ReplicaId,
    pub bucket: Arc<str>,
    pub key: Arc<str>,
    pub hlc: Hlc,
    pub deleted: bool,
    pub expires_ms: u64,
    /// The write's seq at its writer: with `replica` and `bucket`, its dot.
    pub seq: Seq,
    pub level: AckLevel,
    /// The writer ran with a data directory in strict durability: an `Acked` write was on its disk.
    pub strict: bool,
    pub status: Status,
    /// Node ids that acknowledged it (with `Status::Acked`).
    pub ackers: Vec<String>,
}

/// Every write of a run, indexed by op id (its position), and what the checker found.
#[derive(Default)]
pub struct History {
    pub writes: Vec<WriteRec>,
    /// The newest touch made on each key: a value older than the touch lives until the touch's
    /// expiry instead of its own.
    pub touched: BTreeMap<(Arc<str>, Arc<str>), Touch>,
    /// Every touch made, in order.
    pub touches: Vec<Touch>,
    /// Every run of every replica, with what it held and since when (see `Model::poll`).
    pub runs: Vec<Run>,
    /// Traffic held between two hosts (names) from one time to another: frames sent meanwhile arrive
    /// up to the release.
    pub holds: Vec<(String, String, u64, u64)>,
    /// Every key written, per bucket.
    pub keys: BTreeMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Crashes per node id: (virtual ms, whether the node came back from its data directory).
    pub crashes: BTreeMap<String, Vec<(u64, bool)>>,
    /// `[time] kind: what`, at most 50.
    pub violations: Vec<String>,
}

/// The longest a frame takes from its sender's step to its receiver's when its link's traffic is
/// not held: the simulated network's largest latency (20 ms) and a step.
pub const FLIGHT_MS: u64 = 21;

/// A write's dot: its bucket, origin replica and seq.
pub type Dot = (Arc<str>, ReplicaId, Seq);

/// A touch as the checks need it.
#[derive(Debug, Clone)]
pub struct Touch {
    pub key: Arc<str>,
    pub hlc: Hlc,
    /// The expiry it set.
    pub until: u64,
    pub dot: Dot,
}

impl Touch {
    /// Whether it is newer than a write at `(hlc, replica)` in the last-writer-wins order (a touch
    /// and a set stamped alike on two replicas are ordinary: the origin decides).
    pub fn beats(&self, hlc: Hlc, replica: &ReplicaId) -> bool {
        order(self.hlc, &self.dot.1) > order(hlc, replica)
    }
}

/// One run of one replica (a memory-only restart is a new run): which dots of the history it held,
/// first seen at the end of which step.
pub struct Run {
    host: String,
    /// The last step it was seen running.
    last_ms: u64,
    held: BTreeMap<Dot, u64>,
    /// Writes and touches of the history not held yet, and how far into each they were listed.
    pending: Vec<Dot>,
    pending_touches: Vec<Touch>,
    writes_listed: usize,
    touches_listed: usize,
}

impl Run {
    /// Whether this run held `value` without `touch` at a step from which a frame could reach `host`
    /// at `at_ms`: frames travel `FLIGHT_MS` at most, or until the release of a hold on their link.
    fn may_have_sent_without(
        &self,
        value: &Dot,
        touch: &Dot,
        to_host: &str,
        at_ms: u64,
        holds: &[(String, String, u64, u64)],
    ) -> bool {
        let Some(&first) = self.held.get(value) else {
            return false;
        };
        // It lacked the touch before the step that first saw it (and maybe in that step).
        let lacked = self.held.get(touch).copied().unwrap_or(u64::MAX);
        let last = lacked.min(self.last_ms).min(at_ms.saturating_sub(1));
        if first > last {
            return false;
        }
        if last + FLIGHT_MS >= at_ms {
            return true;
        }
        holds.iter().any(|(a, b, from, until)| {
            let pair = (a == &self.host && b == to_host) || (b == &self.host && a == to_host);
            pair && *from <= last && *until >= first && until + FLIGHT_MS >= at_ms
        })
    }
}

/// The text of the value a write carries: `[op,"padding"]`.
pub fn value_text(op: u64, pad: usize) -> String {
    format!("[{op},\"{}\"]", "x".repeat(pad))
}

/// The op id a stored value carries.
pub fn op_of(stored: &[u8]) -> Option<u64> {
    let ValueRef::Json(text) = value::decode(stored)? else {
        return None;
    };
    text.strip_prefix('[')?.split(',').next()?.parse().ok()
}

fn order(hlc: Hlc, replica: &ReplicaId) -> (Hlc, ReplicaId) {
    (hlc, replica.clone())
}

impl History {
    /// Records a touch made at `replica`.
    pub fn touch(&mut self, bucket: &Arc<str>, replica: &ReplicaId, t: &Write) {
        let touch = Touch {
            key: t.key.clone(),
            hlc: t.hlc,
            until: t.expires().encoded(),
            dot: (bucket.clone(), replica.clone(), t.seq),
        };
        self.touches.push(touch.clone());
        let newest = self
            .touched
            .entry((bucket.clone(), t.key.clone()))
            .or_insert(touch.clone());
        if touch.beats(newest.hlc, &newest.dot.1) {
            *newest = touch;
        }
    }

    pub fn record(&mut self, w: WriteRec) -> u64 {
        self.keys
            .entry(w.bucket.clone())
            .or_default()
            .insert(w.key.clone());
        self.writes.push(w);
        self.writes.len() as u64 - 1
    }

    /// Records a violation of `kind`.
    pub fn violation(&mut self, at_ms: u64, kind: &'static str, what: String) {
        if self.violations.len() < 50 {
            self.violations.push(format!("[{at_ms} ms] {kind}: {what}"));
        }
    }

    /// True when a holder of an acknowledged write still holds it: its writer, if it has not crashed
    /// since or (a strict write, on its disk) came back from its data directory after every crash
    /// since; or a peer that acknowledged it and has not crashed since (a peer acknowledges what it
    /// applied, not what it synced). Then the write must survive.
    fn must_survive(&self, w: &WriteRec) -> bool {
        if w.status != Status::Acked || (w.level == AckLevel::Local && !w.strict) {
            return false;
        }
        let crashes_since = |id: &str| {
            self.crashes
                .get(id)
                .into_iter()
                .flatten()
                .filter(|(t, _)| *t >= w.at_ms)
                .map(|(_, from_dir)| *from_dir)
                .collect::<Vec<bool>>()
        };
        let writer = crashes_since(&w.node);
        writer.is_empty()
            || (w.strict && writer.iter().all(|&from_dir| from_dir))
            || w.ackers.iter().any(|a| crashes_since(a).is_empty())
    }

    /// A node restarted from its data directory must hold every strict write it settled while the
    /// directory existed and before the crash (`made`), or what superseded it: a settled strict
    /// write is on the disk, whatever failed (a flush that could not store it must have failed the
    /// write with EDISK instead).
    pub fn check_restored(
        &mut self,
        who: &str,
        id: &str,
        made: std::ops::Range<u64>,
        restored: &Restored,
        at_ms: u64,
    ) {
        let lost: Vec<(usize, WriteRec)> = self
            .writes
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                &*w.node == id
                    && w.strict
                    && w.status == Status::Acked
                    && made.contains(&w.at_ms)
                    && !self.keeps(
                        w,
                        restored
                            .registers
                            .get(&(w.bucket.clone(), w.key.clone()))
                            .map(|(hlc, origin)| (*hlc, origin)),
                    )
            })
            .map(|(op, w)| (op, w.clone()))
            .collect();
        for (op, w) in lost {
            self.violation(at_ms, "unsynced-ack", format!(
                "{who} came back from its directory without strict write op {op} {}/'{}' ({:?} at {} ms, level {:?}) it had settled",
                w.bucket, short(&w.key), w.hlc, w.at_ms, w.level
            ));
        }
    }

    /// Whether a replica whose value register for `w`'s key is `held` keeps `w`: it holds `w` or a
    /// newer write in `(hlc, origin)` order, or (no register: collected) a newer delete, expiring
    /// write or touch that set an expiry removed it.
    pub fn keeps(&self, w: &WriteRec, held: Option<(Hlc, &ReplicaId)>) -> bool {
        match held {
            Some((hlc, origin)) => order(hlc, origin) >= order(w.hlc, &w.replica),
            None => {
                self.writes.iter().any(|x| {
                    x.bucket == w.bucket
                        && x.key == w.key
                        && (x.deleted || x.expires_ms != 0)
                        && order(x.hlc, &x.replica) >= order(w.hlc, &w.replica)
                }) || self
                    .touched
                    .get(&(w.bucket.clone(), w.key.clone()))
                    .is_some_and(|t| t.beats(w.hlc, &w.replica))
            }
        }
    }
}

/// What one run of one replica told its listeners, per bucket and key.
#[derive(Default)]
pub struct Model {
    /// The op id of the value each key was last announced with (absent: deleted or expired).
    pub visible: BTreeMap<(Arc<str>, Arc<str>), u64>,
    /// The newest `(hlc, origin)` this replica applied per key (values and tombstones).
    newest: BTreeMap<(Arc<str>, Arc<str>), (Hlc, ReplicaId)>,
    /// Keys last announced with a value that was already expired (a violation).
    pub born_expired: std::collections::BTreeSet<(Arc<str>, Arc<str>)>,
    /// This run in `History::runs`, once polled.
    run: Option<usize>,
}

/// What a replica held when it started (loaded from its data directory; nothing when memory only),
/// read before its listeners were subscribed.
#[derive(Default)]
pub struct Restored {
    /// (bucket, key) -> op id of each live value.
    pub live: BTreeMap<(Arc<str>, Arc<str>), u64>,
    /// (bucket, key) -> the value register (value or tombstone).
    pub registers: BTreeMap<(Arc<str>, Arc<str>), (Hlc, ReplicaId)>,
}

impl Model {
    /// Notes, at the end of a step, which dots of the history this run of `host` holds now
    /// (`holds`: its context covers the dot; for a touch, `backs` too: it stores the touch or a
    /// register of its key that beats it).
    pub fn poll(
        &mut self,
        history: &mut History,
        host: &str,
        now_ms: u64,
        holds: &mut dyn FnMut(&Dot) -> bool,
        backs: &mut dyn FnMut(&Touch) -> bool,
    ) {
        let History {
            runs,
            writes,
            touches,
            ..
        } = history;
        let run = *self.run.get_or_insert_with(|| {
            runs.push(Run {
                host: host.to_string(),
                last_ms: now_ms,
                held: BTreeMap::new(),
                pending: Vec::new(),
                pending_touches: Vec::new(),
                writes_listed: 0,
                touches_listed: 0,
            });
            runs.len() - 1
        });
        let r = &mut runs[run];
        for w in &writes[r.writes_listed..] {
            r.pending.push((w.bucket.clone(), w.replica.clone(), w.seq));
        }
        r.writes_listed = writes.len();
        r.pending_touches
            .extend(touches[r.touches_listed..].iter().cloned());
        r.touches_listed = touches.len();
        r.last_ms = now_ms;
        let held = &mut r.held;
        r.pending.retain(|dot| {
            let now = holds(dot);
            if now {
                held.insert(dot.clone(), now_ms);
            }
            !now
        });
        // A touch is held with its register or one that beat it: a writer covers an own write it
        // overwrote before any frame carried it without either (no other replica can hold it), so
        // a peer covering that dot does not know of the touch.
        r.pending_touches.retain(|t| {
            let now = holds(&t.dot) && backs(t);
            if now {
                held.insert(t.dot.clone(), now_ms);
            }
            !now
        });
    }

    /// Whether the touch that expired `value` may have reached neither this run, before the step
    /// ending at `at_ms`, nor the replica that sent it the value: then showing the value live was
    /// ordinary eventual consistency (as for a set that arrives before a newer delete).
    fn may_lack_touch(&self, history: &History, value: &Dot, touch: &Dot, at_ms: u64) -> bool {
        let Some(me) = self.run.map(|r| &history.runs[r]) else {
            return true;
        };
        if me.held.get(touch).is_some_and(|&t| t < at_ms) {
            return false;
        }
        history.runs.iter().any(|r| {
            r.host != me.host
                && r.may_have_sent_without(value, touch, &me.host, at_ms, &history.holds)
        })
    }

    /// Whether an older touch that keeps the value live reached this run, by the step ending at
    /// `at_ms`, from a replica that lacked the newer `touch` (which this run did not hold before
    /// that step either): then the run showed what every touch it held said, as a replica without
    /// the newer touch must. The older touch must be the newest of the key this run holds that
    /// beats the value (a newer one it held would have ended the value too), and must keep the
    /// value live at the run's clock `now_ms`.
    fn may_lack_touch_for_older(
        &self,
        history: &History,
        value: (Hlc, &ReplicaId),
        touch: &Touch,
        at_ms: u64,
        now_ms: u64,
    ) -> bool {
        let Some(me) = self.run.map(|r| &history.runs[r]) else {
            return false;
        };
        if me.held.get(&touch.dot).is_some_and(|&t| t < at_ms) {
            return false;
        }
        let older = history
            .touches
            .iter()
            .filter(|t| {
                t.dot != touch.dot
                    && t.dot.0 == touch.dot.0
                    && t.key == touch.key
                    && t.beats(value.0, value.1)
                    && me.held.get(&t.dot).is_some_and(|&held| held <= at_ms)
            })
            .max_by(|a, b| order(a.hlc, &a.dot.1).cmp(&order(b.hlc, &b.dot.1)));
        older.is_some_and(|t| {
            (t.until == 0 || t.until + 1 >= now_ms)
                && history.runs.iter().any(|r| {
                    r.host != me.host
                        && r.may_have_sent_without(
                            &t.dot,
                            &touch.dot,
                            &me.host,
                            at_ms,
                            &history.holds,
                        )
                })
        })
    }

    /// The model of a run that starts with what `restored` holds: its listeners saw those values
    /// live, and a write older than a restored register would be going back.
    pub fn restored(restored: &Restored) -> Model {
        Model {
            visible: restored.live.clone(),
            newest: restored.registers.clone(),
            ..Model::default()
        }
    }

    /// Checks one change event. `tombstone` is the key's value register when the event removed it
    /// (read right after the step that applied it, so only for the key's last event of the step:
    /// an earlier one may be of an older delete); `now_ms` is the replica's wall clock then (a step
    /// after the one that applied the change).
    #[allow(clippy::too_many_arguments)]
    pub fn on_change(
        &mut self,
        history: &mut History,
        who: &str,
        at_ms: u64,
        now_ms: u64,
        bucket: &Arc<str>,
        change: &Change,
        tombstone: Option<&Write>,
        tombstone_origin: Option<&ReplicaId>,
    ) {
        let slot = (bucket.clone(), change.key.clone());
        match &change.value {
            Some(v) => {
                let Some(op) = op_of(v).filter(|&op| (op as usize) < history.writes.len()) else {
                    history.violation(
                        at_ms,
                        "never-written",
                        format!("{who}: '{}' announced a value never written", change.key),
                    );
                    return;
                };
                let w = history.writes[op as usize].clone();
                if w.key != change.key || w.bucket != *bucket || w.deleted {
                    history.violation(
                        at_ms,
                        "never-written",
                        format!(
                            "{who}: '{}' announced op {op}, written to another key",
                            change.key
                        ),
                    );
                    return;
                }
                let at = order(w.hlc, &w.replica);
                if let Some(seen) = self.newest.get(&slot) {
                    if at < *seen {
                        history.violation(at_ms, "went-back", format!(
                            "{who}: {bucket}/'{}' went back: announced op {op} ({:?} {}) after applying {:?} {}",
                            change.key, w.hlc, w.replica, seen.0, seen.1
                        ));
                    }
                }
                let touch = history
                    .touched
                    .get(&slot)
                    .filter(|t| t.beats(w.hlc, &w.replica));
                let expires_ms = touch.map_or(w.expires_ms, |t| t.until);
                let value_dot = (bucket.clone(), w.replica.clone(), w.seq);
                let expired = expires_ms != 0
                    && expires_ms + 1 < now_ms
                    && !touch.is_some_and(|t| {
                        self.may_lack_touch(history, &value_dot, &t.dot, at_ms)
                            || self.may_lack_touch_for_older(
                                history,
                                (w.hlc, &w.replica),
                                t,
                                at_ms,
                                now_ms,
                            )
                    });
                let newest = self.newest.entry(slot.clone()).or_insert(at.clone());
                if at > *newest {
                    *newest = at;
                }
                if expired {
                    let line = format!(
                        "{who}: {bucket}/'{}' announced op {op}, expired at {} (clock {now_ms})",
                        short(&change.key),
                        expires_ms
                    );
                    history.violation(at_ms, "announced-expired", line);
                    self.born_expired.insert(slot.clone());
                } else {
                    self.born_expired.remove(&slot);
                }
                self.visible.insert(slot, op);
            }
            None if change.expired => {
                self.born_expired.remove(&slot);
                if self.visible.remove(&slot).is_none() {
                    history.violation(at_ms, "phantom-expiry", format!(
                        "{who}: {bucket}/'{}' expired while its listener saw no live value (a duplicate or phantom expiry)",
                        change.key
                    ));
                }
            }
            None => {
                if let (Some(t), Some(origin)) = (tombstone, tombstone_origin) {
                    let at = order(t.hlc, origin);
                    let newest = self.newest.entry(slot.clone()).or_insert(at.clone());
                    if at > *newest {
                        *newest = at;
                    }
                }
                self.born_expired.remove(&slot);
                self.visible.remove(&slot);
            }
        }
    }
}

/// A replica's state, as compared once the network healed: per bucket, every register (sorted lines)
/// and the context, the live values (key -> op id), and `len()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketView {
    pub registers: Vec<String>,
    pub context: String,
    pub live: BTreeMap<Arc<str>, u64>,
    pub len: usize,
    /// The fingerprint of the registers stored (`Store::stored_print`).
    pub stored: u64,
    /// Keys a scan yields.
    pub scanned: usize,
    /// The replica's clock when the view was taken.
    pub now_ms: u64,
    /// Value registers per key: `(hlc, origin, value op or None for a tombstone, expires_ms)`.
    pub values: BTreeMap<Arc<str>, (Hlc, ReplicaId, Option<u64>, u64)>,
}

/// Every bucket of one replica.
pub type Buckets = BTreeMap<Arc<str>, BucketView>;

/// One settled replica as the final checks see it.
pub struct Settled<'a> {
    pub name: String,
    pub buckets: Buckets,
    pub model: &'a Model,
}

/// The final checks over settled replicas.
pub fn check_final(history: &mut History, at_ms: u64, views: &[Settled]) {
    let Some(Settled {
        name: first,
        buckets: reference,
        ..
    }) = views.first()
    else {
        return;
    };
    for Settled {
        name,
        buckets,
        model,
    } in views
    {
        for (b, view) in buckets {
            let same = reference
                .get(b)
                .is_some_and(|r| r.registers == view.registers && r.context == view.context);
            if !same {
                let r = reference.get(b);
                let diff: Vec<&String> = view
                    .registers
                    .iter()
                    .filter(|l| r.is_none_or(|r| !r.registers.contains(l)))
                    .take(3)
                    .collect();
                history.violation(at_ms, "diverged", format!(
                    "{name} differs from {first} in bucket {b} (registers {} vs {}, first extra: {diff:?}; contexts equal: {})",
                    view.registers.len(),
                    r.map_or(0, |r| r.registers.len()),
                    r.is_some_and(|r| r.context == view.context)
                ));
            }
            if same && reference.get(b).is_some_and(|r| r.stored != view.stored) {
                history.violation(
                    at_ms,
                    "fingerprint",
                    format!(
                        "{name} stores the registers {first} stores in bucket {b} under another fingerprint"
                    ),
                );
            }
            if view.len != view.live.len() || view.scanned != view.live.len() {
                history.violation(
                    at_ms,
                    "size",
                    format!(
                        "{name}: bucket {b} len() is {} with {} live keys (a scan yields {})",
                        view.len,
                        view.live.len(),
                        view.scanned
                    ),
                );
            }
            for (key, op) in &view.live {
                let told = model.visible.get(&(b.clone(), key.clone()));
                if told != Some(op) {
                    history.violation(
                        at_ms,
                        "events",
                        format!(
                        "{name}: {b}/'{}' holds op {op} but its listener was last told {told:?}",
                        short(key)
                    ),
                    );
                }
                let w = history.writes.get(*op as usize).cloned();
                let genuine = w.as_ref().is_some_and(|w| {
                    w.key == *key
                        && !w.deleted
                        && view
                            .values
                            .get(key)
                            .is_some_and(|v| v.0 == w.hlc && v.1 == w.replica)
                });
                if !genuine {
                    history.violation(
                        at_ms,
                        "never-written",
                        format!("{name}: {b}/'{}' holds op {op}, not that write", short(key)),
                    );
                }
            }
            for ((mb, key), op) in &model.visible {
                let slot = (mb.clone(), key.clone());
                if mb != b || view.live.contains_key(key) || model.born_expired.contains(&slot) {
                    continue;
                }
                // Removed by a newer touch whose expiry had passed when it arrived, without an
                // expiry event: a value shown live under a touch that expired it, seen from the
                // touch's side.
                let stale_touch = history.touched.get(&slot).is_some_and(|t| {
                    history
                        .writes
                        .get(*op as usize)
                        .is_some_and(|w| t.beats(w.hlc, &w.replica))
                        && t.until <= view.now_ms
                });
                let (kind, what) = if stale_touch {
                    (
                        "announced-expired",
                        "removed without an event by a newer touch, expired on arrival",
                    )
                } else {
                    ("events", "is not live (a missing delete or expiry event)")
                };
                history.violation(
                    at_ms,
                    kind,
                    format!(
                        "{name}: {b}/'{}' was last announced as op {op} but {what}",
                        short(key)
                    ),
                );
            }
        }
    }
    // Acknowledged writes, on every replica (those that came back from their directory too).
    let writes = history.writes.clone();
    for (op, w) in writes.iter().enumerate() {
        if !history.must_survive(w) {
            continue;
        }
        for Settled { name, buckets, .. } in views {
            let held = buckets.get(&w.bucket).and_then(|v| v.values.get(&w.key));
            if !history.keeps(w, held.map(|(hlc, origin, _, _)| (*hlc, origin))) {
                history.violation(at_ms, "lost-ack", format!(
                    "acknowledged write lost on {name}: op {op} {}/'{}' ({:?} by {} at {} ms, level {:?}, strict {}, acked by {:?}); held: {held:?}",
                    w.bucket, short(&w.key), w.hlc, w.replica, w.at_ms, w.level, w.strict, w.ackers
                ));
                break;
            }
        }
    }
}

/// A key as printed: long keys cut.
pub fn short(key: &str) -> String {
    if key.len() > 24 {
        format!("{}…({} bytes)", &key[..16], key.len())
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::replica::ReplicaTable;
    use crate::replication::store::{Expiry, Op};

    fn replica(node: &str) -> ReplicaId {
        ReplicaId {
            node: node.into(),
            incarnation: 1,
        }
    }

    /// n1 writes op 0 (b/k, live until 10,000); n2 touches it to expire at 1,000. `b` covers the
    /// touch's dot at 100 (`backed`: with the touch register, or else with nothing: its writer
    /// overwrote it before sending it); n1, which never has the touch, holds the value and covers
    /// the touch's dot at 190 without it. At 200 `b` announces op 0 live, its clock at 2,000.
    fn announced_after_covering_the_touch(backed: bool) -> Vec<String> {
        let mut history = History::default();
        let (bucket, key): (Arc<str>, Arc<str>) = ("b".into(), "k".into());
        let (n1, n2) = (replica("n1"), replica("n2"));
        history.record(WriteRec {
            at_ms: 0,
            node: "n1".into(),
            replica: n1.clone(),
            bucket: bucket.clone(),
            key: key.clone(),
            hlc: Hlc::from_parts(10, 0),
            deleted: false,
            expires_ms: 10_000,
            seq: Seq::FIRST,
            level: AckLevel::One,
            strict: false,
            status: Status::Local,
            ackers: Vec::new(),
        });
        let touch = Write {
            key: key.clone(),
            hlc: Hlc::from_parts(20, 0),
            seq: Seq::FIRST,
            op: Op::Touch {
                expires: Expiry::at_ms(1_000),
            },
        };
        history.touch(&bucket, &n2, &touch);
        let value_dot: Dot = (bucket.clone(), n1.clone(), Seq::FIRST);
        let touch_dot: Dot = (bucket.clone(), n2.clone(), Seq::FIRST);
        let (mut writer, mut receiver) = (Model::default(), Model::default());
        writer.poll(&mut history, "n1", 1, &mut |d| *d == value_dot, &mut |_| {
            false
        });
        receiver.poll(
            &mut history,
            "b",
            100,
            &mut |d| *d == touch_dot,
            &mut |_| backed,
        );
        writer.poll(&mut history, "n1", 190, &mut |_| true, &mut |_| false);
        let change = Change {
            key: key.clone(),
            value: Some(value::encode_json(&value_text(0, 0))),
            origin: ReplicaTable::new().intern(&n1),
            local: false,
            expired: false,
        };
        receiver.on_change(&mut history, "b", 200, 2_000, &bucket, &change, None, None);
        history.violations
    }

    /// Who held the newer touch, in `announced_under_an_older_touch`.
    #[derive(Clone, Copy)]
    enum Newer {
        /// Only its writer, n1.
        Nowhere,
        /// The receiver n3, since 100.
        Receiver,
        /// n0, which sends the older touch, since 60.
        Sender,
    }

    /// n3 writes op 0 (b/k, live until 1,000); n0 touches the key to expire at 5,000 (hlc 20), n1
    /// later to expire at 2,000 (hlc 30, the newest touch). n3 holds its value from 1; n0 holds
    /// its touch from 50; n3 gets n0's touch at 200 and announces op 0 live, its clock at `clock`
    /// (seed 92746 of `membership`: n3 showed its expired value live under n0's touch).
    fn announced_under_an_older_touch(newer: Newer, clock: u64) -> Vec<String> {
        let mut history = History::default();
        let (bucket, key): (Arc<str>, Arc<str>) = ("b".into(), "k".into());
        let (n0, n1, n3) = (replica("n0"), replica("n1"), replica("n3"));
        history.record(WriteRec {
            at_ms: 0,
            node: "n3".into(),
            replica: n3.clone(),
            bucket: bucket.clone(),
            key: key.clone(),
            hlc: Hlc::from_parts(10, 0),
            deleted: false,
            expires_ms: 1_000,
            seq: Seq::FIRST,
            level: AckLevel::Local,
            strict: false,
            status: Status::Local,
            ackers: Vec::new(),
        });
        let touch = |hlc: u64, until: u64| Write {
            key: key.clone(),
            hlc: Hlc::from_parts(hlc, 0),
            seq: Seq::FIRST,
            op: Op::Touch {
                expires: Expiry::at_ms(until),
            },
        };
        history.touch(&bucket, &n0, &touch(20, 5_000));
        history.touch(&bucket, &n1, &touch(30, 2_000));
        let value_dot: Dot = (bucket.clone(), n3.clone(), Seq::FIRST);
        let older: Dot = (bucket.clone(), n0.clone(), Seq::FIRST);
        let newest: Dot = (bucket.clone(), n1.clone(), Seq::FIRST);
        let (mut sender, mut receiver, mut writer) =
            (Model::default(), Model::default(), Model::default());
        receiver.poll(&mut history, "n3", 1, &mut |d| *d == value_dot, &mut |_| {
            true
        });
        writer.poll(&mut history, "n1", 1, &mut |d| *d == newest, &mut |_| true);
        sender.poll(&mut history, "n0", 50, &mut |d| *d == older, &mut |_| true);
        if let Newer::Sender = newer {
            sender.poll(
                &mut history,
                "n0",
                60,
                &mut |d| *d != value_dot,
                &mut |_| true,
            );
        }
        if let Newer::Receiver = newer {
            receiver.poll(&mut history, "n3", 100, &mut |d| *d == newest, &mut |_| {
                true
            });
        }
        sender.poll(&mut history, "n0", 190, &mut |_| false, &mut |_| false);
        receiver.poll(&mut history, "n3", 200, &mut |d| *d == older, &mut |_| true);
        let change = Change {
            key: key.clone(),
            value: Some(value::encode_json(&value_text(0, 0))),
            origin: ReplicaTable::new().intern(&n3),
            local: false,
            expired: false,
        };
        receiver.on_change(&mut history, "n3", 200, clock, &bucket, &change, None, None);
        history.violations
    }

    #[test]
    fn an_older_touch_from_a_replica_without_the_newer_one_may_show_a_value_live() {
        let found = announced_under_an_older_touch(Newer::Nowhere, 3_000);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_replica_holding_the_newer_touch_never_shows_live_what_it_expired() {
        let found = announced_under_an_older_touch(Newer::Receiver, 3_000);
        assert!(
            found.iter().any(|v| v.contains("announced-expired")),
            "{found:?}"
        );
    }

    #[test]
    fn an_older_touch_from_a_replica_holding_the_newer_one_excuses_nothing() {
        let found = announced_under_an_older_touch(Newer::Sender, 3_000);
        assert!(
            found.iter().any(|v| v.contains("announced-expired")),
            "{found:?}"
        );
    }

    #[test]
    fn an_older_touch_that_expired_the_value_too_excuses_nothing() {
        let found = announced_under_an_older_touch(Newer::Nowhere, 6_000);
        assert!(
            found.iter().any(|v| v.contains("announced-expired")),
            "{found:?}"
        );
    }

    #[test]
    fn a_value_announced_by_a_replica_holding_the_touch_that_expired_it_is_a_violation() {
        let found = announced_after_covering_the_touch(true);
        assert!(
            found.iter().any(|v| v.contains("announced-expired")),
            "{found:?}"
        );
    }

    #[test]
    fn covering_a_touch_its_writer_overwrote_before_sending_it_is_not_holding_the_touch() {
        let found = announced_after_covering_the_touch(false);
        assert!(found.is_empty(), "{found:?}");
    }
}
