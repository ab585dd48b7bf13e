'use strict'
// The figures of peer.stats(), declared once: each numeric field, whether it is a gauge (a level now)
// or a counter (a total since start), its Prometheus name and its help text. lib/metrics.js exports
// them from this table; __test__/stats.test.js fails when the addon's PeerStats (src/lib.rs, typed in
// native.d.ts; all but LOOP_FIGURES), index.d.ts's PeerStats or what stats() returns name a figure
// this table does not, or the other way round.

// [stats() field, metric name (without the 'peer_buckets_' prefix), type, help]
const FIGURES = [
  ['buckets', 'buckets', 'gauge', 'Buckets open on this peer.'],
  ['keys', 'keys', 'gauge', 'Live keys over all buckets of this peer.'],
  ['peers', 'peers_connected', 'gauge', 'Peers linked to this one now.'],
  ['clusterSize', 'cluster_size', 'gauge', "The cluster size ack 'majority' and 'all' count, this peer included."],
  ['opsApplied', 'ops_applied_total', 'counter', 'Writes from other peers applied here.'],
  ['localWrites', 'local_writes_total', 'counter', 'Writes made on this peer since it started (sets, deletes and touches).'],
  ['ackTimeouts', 'ack_timeouts_total', 'counter', 'Writes whose ack level was not met within their timeout (EACKTIMEOUT).'],
  ['bytesSent', 'sent_bytes_total', 'counter', 'Bytes sent to other peers.'],
  ['bytesReceived', 'received_bytes_total', 'counter', 'Bytes received from other peers.'],
  ['clockSkewRefused', 'clock_skew_refused_total', 'counter', 'Links refused because the other clock was too far off.'],
  ['pullsSent', 'pulls_sent_total', 'counter', 'Requests for missing writes sent to other peers.'],
  ['pullsServed', 'pulls_served_total', 'counter', 'Requests for missing writes served for other peers.'],
  ['catchupWritesReceived', 'catchup_writes_received_total', 'counter', 'Writes of third peers received while catching up.'],
  ['protocolErrors', 'protocol_errors_total', 'counter', 'Links closed for breaking the protocol.'],
  ['tombstones', 'tombstones', 'gauge', 'Tombstones (deleted or expired keys not yet collected) held now.'],
  ['tombstonesCollected', 'tombstones_collected_total', 'counter', 'Tombstones dropped once every member held them.'],
  ['fullResyncs', 'full_resyncs_total', 'counter', 'Times this peer found it had missed a collection and resynced in full.'],
  ['collectedRemembered', 'collected_remembered', 'gauge', 'Deleted or expired keys remembered after their tombstones were collected.'],
  ['standInTombstones', 'stand_in_tombstones_total', 'counter', 'Old writes brought back from past a collection that met a stand-in tombstone here.'],
  ['divergences', 'divergences_total', 'counter', 'Buckets found storing other writes than a peer under equal contexts, repaired from it.'],
  ['repairs', 'repairs_total', 'counter', 'Repairs done: a peer\'s writes of a diverged bucket fetched and merged.'],
  ['repairsChanged', 'repairs_changed_total', 'counter', 'Repairs that changed what this peer stores (each an EDIVERGED warning).'],
  ['bucketsRefused', 'buckets_refused_total', 'counter', 'Buckets peers asked this peer to create past maxBuckets, refused.'],
  ['handshakesRejected', 'handshakes_rejected_total', 'counter', 'Connections refused in their handshake (not a peer, another secret or none, malformed, silent).'],
  ['handshakesEvicted', 'handshakes_evicted_total', 'counter', 'Accepted connections closed in their handshake to make room for newer ones.'],
].map(([field, metric, type, help]) => Object.freeze({ field, metric, type, help }))

// Per linked peer, from stats().replication: scale turns the field's unit into the metric's.
const LINK_FIGURES = [
  ['lagOps', 'replication_lag_ops', 'gauge', "This peer's writes the linked peer has not acknowledged yet.", 1],
  ['lagMs', 'replication_lag_seconds', 'gauge', "How long the linked peer has been behind on this peer's writes (0 when caught up).", 1e-3],
  ['bytesSent', 'link_sent_bytes_total', 'counter', 'Bytes sent to the linked peer over its current link.', 1],
  ['bytesReceived', 'link_received_bytes_total', 'counter', 'Bytes received from the linked peer over its current link.', 1],
  ['bytesSentUncompressed', 'link_sent_uncompressed_bytes_total', 'counter', 'The bytes sent to the linked peer over its current link, as they were before compression.', 1],
  ['bytesReceivedUncompressed', 'link_received_uncompressed_bytes_total', 'counter', 'The bytes received from the linked peer over its current link, as they were after inflation.', 1],
  ['sendQueueBytes', 'link_send_queue_bytes', 'gauge', 'Answers (fetch, pull and held replies) queued for the linked peer and not yet sent, in bytes.', 1],
  ['writesReceived', 'link_writes_received_total', 'counter', 'Writes that arrived from the linked peer over its current link, applied or already held.', 1],
  ['applyMs', 'link_apply_seconds_total', 'counter', 'Time spent applying the writes that arrived from the linked peer over its current link.', 1e-3],
].map(([field, metric, type, help, scale]) => Object.freeze({ field, metric, type, help, scale }))

// Families of stats() fields keyed by a label: [stats() field, metric name, type, help, label].
const LABELLED_FIGURES = [
  ['bucketKeys', 'bucket_keys', 'gauge', 'Live keys per bucket.', 'bucket'],
  ['warnings', 'warnings_total', 'counter', "Warnings emitted (the 'warning' event), by code, rate-limited ones included.", 'code'],
].map(([field, metric, type, help, label]) => Object.freeze({ field, metric, type, help, label }))

// stats().ackLatency: per ack level, a histogram of how long writes waited for it (in ms; the metric in
// seconds). Writes with ack 'local' and nothing to wait for (no strict dataDir) are not counted.
const ACK_LATENCY = Object.freeze({
  field: 'ackLatency',
  metric: 'ack_latency_seconds',
  help: 'How long writes waited for their ack level, by level (writes with nothing to wait for not counted).',
  label: 'level',
})

// Figures stats() adds on the JavaScript side, not the addon's: how long the event loop was blocked, as
// this peer observes it (lib/loop-delay.js), in ms; the metric in seconds (scale).
const LOOP_FIGURES = [
  ['eventLoopDelayMaxMs', 'event_loop_delay_max_seconds', 'gauge', 'The longest the event loop was blocked since this peer was made (by any code in the process).', 1e-3],
  ['eventLoopDelayRecentMs', 'event_loop_delay_recent_seconds', 'gauge', 'The longest the event loop was blocked over the last 10 to 20 seconds (by any code in the process).', 1e-3],
].map(([field, metric, type, help, scale]) => Object.freeze({ field, metric, type, help, scale }))

// The fields of stats() that are not figures of FIGURES: its id, the links and the families above.
const OTHER_FIELDS = ['id', 'replication', ...LABELLED_FIGURES.map((f) => f.field), ACK_LATENCY.field]
// The fields of a link in stats().replication that are not figures: who it links to.
const OTHER_LINK_FIELDS = ['id', 'address']

module.exports = { FIGURES, LINK_FIGURES, LABELLED_FIGURES, ACK_LATENCY, LOOP_FIGURES, OTHER_FIELDS, OTHER_LINK_FIELDS }
