//! `Session`: the protocol state of one link, both ways: what the other end holds per bucket, what to
//! push next, and how each arriving message is checked and applied.
//!
//! Files: this one (the state kept per link and per bucket), `handle` (each arriving message
//! dispatched), `ops` (batches of writes taken in), `resync` (contexts, horizons and the `Held`
//! questions of a resync), `send` (what goes out).
//!
//! Invariants: every frame that carries writes passes the clock-skew guard before any of them is
//! applied; coverage sent on a link is always backed by the writes or markers it stands for.

mod handle;
mod ops;
mod resync;
mod send;

use super::digest::{Digests, Divergence, ReportedContext};
use super::{Context, Local};
use crate::error::LinkError;
use crate::protocol::wire::{Hello, MemberInfo, Message, WireContext};
use crate::replication::clock::TooFarAhead;
use crate::replication::ranges::SeqRanges;
use crate::replication::replica::{Origin, ReplicaId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// What a link knows about the other end's hold of one bucket.
#[derive(Default)]
pub(super) struct BucketSession {
    /// Seqs per origin the other end holds: what it said, plus what went either way on this link.
    pub(super) remote_has: BTreeMap<Origin, SeqRanges>,
    /// Seqs per origin the other end asked for (and that we hold), not yet sent.
    pub(super) requested: BTreeMap<Origin, SeqRanges>,
    /// The other end's context as it reported it (hello and digests only): what it surely holds.
    pub(super) reported: BTreeMap<Origin, SeqRanges>,
    /// Per origin, the `Held` query we asked and await (the rest of) a reply for: a reply answers
    /// within it or is a protocol error.
    pub(super) held_asked: BTreeMap<Origin, SeqRanges>,
    /// Origins whose `Held` reply came whole: a second copy of one (the simulated network duplicates
    /// frames) changes nothing.
    pub(super) held_answered: BTreeSet<Origin>,
    /// Per origin, the keys asked in `HeldKeys`: their registers of that origin a held reply reported
    /// superseded without sending what superseded them, with the dots to drop once the key's answer
    /// is in; `None` once it is.
    pub(super) held_keys: BTreeMap<Origin, BTreeMap<Arc<str>, Option<SeqRanges>>>,
    /// Per origin other than the other end's, the seqs we pulled from it: writes of another origin
    /// arrive only as answers to a pull, and cover only what was pulled.
    pub(super) pulled: BTreeMap<ReplicaId, SeqRanges>,
    /// The other end's collection horizon, from its hello.
    pub(super) horizon: Context,
    /// The part of the other end's horizon its context does not cover, as it said since
    /// (`Message::Horizon`): it knows of the collections behind those dots.
    pub(super) beyond: Context,
    /// The other end missed a collection this replica knows of: its writes are not taken in until
    /// its context covers this replica's horizon (it resynced and caught up).
    pub(super) refused: bool,
    /// A resync of this replica against the other end is under way.
    pub(super) resyncing: bool,
    /// A part of the resync's answer was dropped for skew: once the rest has come, the resync is
    /// asked again (at the next review), until this clock is within the skew of what it carries.
    pub(super) held_skewed: bool,
    /// When (this replica's clock, ms) the other end last reported its context (hello or digest).
    pub(super) reported_at_ms: u64,
    /// The other end's last digest of the bucket, as it was (not a union): its context and the
    /// fingerprint of the registers it stores (`sync::digest`, anti-entropy).
    pub(super) reported_stored: Option<(ReportedContext, u64)>,
    /// The two ends store different registers under equal contexts, since then.
    pub(super) diverged: Option<Divergence>,
    /// When (this replica's clock, ms) this link last repaired the bucket.
    pub(super) repaired_at_ms: Option<u64>,
}

/// What the node must do about a message the session handled.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    Nothing,
    Members(Vec<MemberInfo>),
    /// The other end forgot these members for cause (`Message::Forgotten`).
    Forgotten(Vec<Arc<str>>),
    Leave,
    /// Entries of fetch `id` arrived (`count` of them); `done` on its last frame.
    Fetched {
        id: u64,
        count: usize,
        done: bool,
    },
}

/// The protocol state of one link.
pub struct Session {
    /// The replica at the other end.
    pub peer: Origin,
    pub(super) buckets: BTreeMap<Arc<str>, BucketSession>,
    /// Buckets where the other end's own writes arrived since our last ack.
    pub(super) ack_due: BTreeSet<Arc<str>>,
    /// Messages queued for the writer (our contexts, pull requests, fetch requests and replies), each
    /// with the bytes it counts in `owed`.
    pub(super) outbox: VecDeque<(Message, usize)>,
    /// Bytes of answers to the other end's requests (`FetchReply`, `HeldReply`) queued and not yet
    /// sent, roughly: the link stops reading requests past `OWED_LIMIT`, so what one peer can make
    /// this replica hold for it is bounded whether or not it reads.
    pub(super) owed: usize,
    /// The other end's contexts have not all arrived: until they have, we cannot tell which of our
    /// writes it lacks, and push none.
    pub(super) awaiting_contexts: bool,
    /// The bucket where the last pass ran out of send budget; the next one starts there.
    pub(super) resume_at: Option<Arc<str>>,
    /// `Signals::local_writes` as read before the last pass over the buckets, when it walked them
    /// all with nothing left to send; `None` once anything but another batch of the other end's
    /// writes or an ack arrived. While it holds, the next pass would find nothing either and is
    /// skipped: a writer woken for each batch it acknowledges does not walk every bucket each time.
    pub(super) walked_at: Option<u64>,
    /// How far ahead (ms) of this clock the furthest write of a frame dropped for skew was stamped,
    /// since the link last reported it (`take_skewed`).
    pub(super) skewed: Option<u64>,
    /// Fetches asked on this link and not yet answered to the end: a fetch reply names one of them.
    pub(super) fetches_asked: BTreeSet<u64>,
    /// Fetches asked on this link of which a reply frame was dropped for skew: the rest of their
    /// answer is dropped too, since the frame of touch registers dropped may have expired the values
    /// that follow (they come with their touches through the sync instead).
    pub(super) skewed_fetches: BTreeSet<u64>,
    /// Touch registers of fetch answers, held until their keys' values arrive (`merge_fetched`).
    pub(super) fetch_touches: super::fetch::FetchTouches,
    /// The digests sent and received on this link (`digest`).
    pub(super) digests: Digests,
    /// Buckets found apart from the other end and not repaired yet: compared at every round.
    pub(super) diverging: BTreeSet<Arc<str>>,
    /// Repairs asked on this link (fetch id -> bucket, and the registers they changed so far).
    pub(super) repairs: BTreeMap<u64, (Arc<str>, usize)>,
    /// Repairs asked on this link so far: the next one's id, below `wire::REPAIR_IDS`.
    pub(super) next_repair: u64,
    /// Repairs that changed what this replica stores, since `take_repaired`: the bucket and how
    /// many registers.
    pub(super) repaired: Vec<(Arc<str>, usize)>,
}

impl Session {
    /// Starts a session from the other end's hello, and queues this replica's contexts to follow its
    /// own hello; the other end's contexts, with its horizon, arrive as `Contexts` parts
    /// (`absorb_part`), each bucket's whole in one part.
    ///
    /// Each side's contexts carry its collection horizon H: every dot any member held at a collection
    /// it made or inherited, as far as its own context covers it (`vouched`: a horizon inherited from
    /// a peer that did not cover it all may name dots no replica covers any more, and nobody could
    /// answer for those). If the other end's H is beyond this replica's context and H, this replica
    /// missed a collection. Empty (it joined or restarted empty), it inherits that H at once, so it
    /// can tell a returning replica in turn. Holding data, it is stale: it takes no writes in until it
    /// has asked a peer (the one that showed it, first) which of its registers that peer covers and
    /// no longer stores (superseded, or collected), and dropped them; a peer covers every dot of the
    /// H it sends, so it knows their fate, and no returning replica waits for a peer that may never
    /// come back. The collected registers each side remembers by key follow its
    /// contexts (`Message::Collected`), and the receiver remembers them too: a dot covered without
    /// its register may be a collected one, and whoever covers it must answer a write it beat. So
    /// the writes a stale replica keeps travel as they are: where one is older than a register
    /// collected for its key, the receiver answers it with a stand-in tombstone (see
    /// `store::CollectedKeys`), and a register the replica itself holds that a record it learns
    /// beats gets one at once. Symmetrically, writes from a peer that missed a collection this
    /// replica knows of are refused until that peer's context covers this replica's vouched horizon.
    pub fn new(local: &Local, theirs: &Hello) -> Result<Session, LinkError> {
        local.check_clock(theirs.wall_ms)?;
        let peer = local.replicas.intern(&theirs.replica);
        for per_peer in local.bare.lock().values_mut() {
            per_peer.retain(|p, _| p.node() != peer.node());
        }
        Ok(Session {
            peer,
            buckets: BTreeMap::new(),
            ack_due: BTreeSet::new(),
            outbox: local
                .context_parts()
                .into_iter()
                .map(Message::Contexts)
                .chain(local.collected_frames())
                .map(|msg| (msg, 0))
                .collect(),
            owed: 0,
            awaiting_contexts: true,
            resume_at: None,
            walked_at: None,
            skewed: None,
            fetches_asked: BTreeSet::new(),
            skewed_fetches: BTreeSet::new(),
            fetch_touches: Default::default(),
            digests: Digests::default(),
            diverging: BTreeSet::new(),
            repairs: BTreeMap::new(),
            next_repair: 0,
            repaired: Vec::new(),
        })
    }

    /// Whether writes arriving on this link for `bucket` are left out: this replica is stale there,
    /// or the other end is.
    pub(super) fn refuses(&self, local: &Local, bucket: &str) -> bool {
        local.is_stale(bucket) || self.buckets.get(bucket).is_some_and(|s| s.refused)
    }

    pub(super) fn absorb_context(&mut self, local: &Local, bucket: Arc<str>, ctx: &WireContext) {
        let state = self.buckets.entry(bucket.clone()).or_default();
        state.reported_at_ms = local.clock.now().physical_ms();
        for (rid, ranges) in ctx {
            let origin = local.replicas.intern(rid);
            if origin == local.me {
                local
                    .acks
                    .on_ack(&bucket, &self.peer.id().node, ranges.contiguous());
            }
            state
                .remote_has
                .entry(origin.clone())
                .or_default()
                .union_with(ranges);
            state.reported.entry(origin).or_default().union_with(ranges);
        }
    }

    /// The other end's reported context of `bucket` (hello and digests), per origin.
    pub fn reported(&self, bucket: &str) -> Option<&BTreeMap<Origin, SeqRanges>> {
        self.buckets.get(bucket).map(|b| &b.reported)
    }

    /// When (this replica's clock, ms) the other end's report of its context of `bucket` was last
    /// known current: its last digest of it, or a later round of digests that vouched for it
    /// (`Message::Digested`); 0 never.
    pub fn reported_at(&self, bucket: &str) -> u64 {
        self.buckets
            .get(bucket)
            .map_or(0, |b| match b.reported_at_ms {
                0 => 0,
                at => at.max(self.digests.current_at()),
            })
    }

    /// How far ahead of this clock (ms) writes this link brought were stamped, if a frame of them was
    /// dropped for skew since the last call: the link reports it (`ESKEW`).
    pub fn take_skewed(&mut self) -> Option<u64> {
        self.skewed.take()
    }

    /// The buckets a repair on this link changed since the last call, with how many registers it
    /// changed in each: the link reports them (`EDIVERGED`).
    pub fn take_repaired(&mut self) -> Vec<(Arc<str>, usize)> {
        std::mem::take(&mut self.repaired)
    }

    pub(super) fn dropped_for_skew(&mut self, e: TooFarAhead) {
        self.skewed = Some(self.skewed.unwrap_or(0).max(e.ahead_ms));
    }

    /// Queues a message for the writer, remembering the requests among them: only their replies are
    /// taken.
    pub fn queue(&mut self, msg: Message) {
        match &msg {
            Message::Pull {
                bucket,
                origin,
                ranges,
            } => {
                self.buckets
                    .entry(bucket.clone())
                    .or_default()
                    .pulled
                    .entry(origin.clone())
                    .or_default()
                    .union_with(ranges);
            }
            Message::FetchRequest { id, .. } => {
                self.fetches_asked.insert(*id);
            }
            _ => {}
        }
        self.outbox.push_back((msg, 0));
    }

    /// Queues an answer to the other end's request, of about `bytes`.
    pub(super) fn answer(&mut self, msg: Message, bytes: usize) {
        self.owed += bytes;
        self.outbox.push_back((msg, bytes));
    }

    /// Bytes of answers to the other end queued and not yet sent (see `OWED_LIMIT`).
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// Seqs of `origin` in `bucket` the other end holds, as far as this session knows.
    pub fn remote_has(&self, bucket: &str, origin: &Origin) -> Option<&SeqRanges> {
        self.buckets.get(bucket)?.remote_has.get(origin)
    }

    /// What the other end holds, per bucket and origin, in the buckets whose writes this link takes.
    pub(super) fn remote_contexts(&self) -> impl Iterator<Item = (&Arc<str>, &Origin, &SeqRanges)> {
        self.buckets
            .iter()
            .filter(|(_, s)| !s.refused)
            .flat_map(|(b, s)| s.remote_has.iter().map(move |(o, r)| (b, o, r)))
    }
}
