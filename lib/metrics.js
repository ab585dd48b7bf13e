'use strict'
// peer.metrics(): the figures of peer.stats() and peer.peers() as Prometheus text exposition
// (format 0.0.4), for a `/metrics` route. Built here in JS from stats(): one native call per scrape.
//
// Counters end in _total; byte counts are in bytes and lag in seconds, as Prometheus names them.
// A numeric field that stats() gains later and this table does not know yet is still exported, as
// `peer_buckets_<snake_case>` of type untyped, so nothing stats() says is missing here.

const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'
const PREFIX = 'peer_buckets_'

// [stats() field, metric name (without the prefix), type, help]
const FIGURES = [
  ['buckets', 'buckets', 'gauge', 'Buckets open on this peer.'],
  ['keys', 'keys', 'gauge', 'Live keys over all buckets of this peer.'],
  ['peers', 'peers_connected', 'gauge', 'Peers linked to this one now.'],
  ['clusterSize', 'cluster_size', 'gauge', "The cluster size ack 'majority' and 'all' count, this peer included."],
  ['opsApplied', 'ops_applied_total', 'counter', 'Writes from other peers applied here.'],
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
  ['handshakesRejected', 'handshakes_rejected_total', 'counter', 'Connections refused in their handshake (not a peer, another secret or none, malformed, silent).'],
  ['handshakesEvicted', 'handshakes_evicted_total', 'counter', 'Accepted connections closed in their handshake to make room for newer ones.'],
]
const KNOWN = new Set(['id', 'replication', 'warnings', ...FIGURES.map((f) => f[0])])

// Per linked peer, from stats().replication: [field, metric name, type, help, scale]
const LINK_FIGURES = [
  ['lagOps', 'replication_lag_ops', 'gauge', "This peer's writes the linked peer has not acknowledged yet.", 1],
  ['lagMs', 'replication_lag_seconds', 'gauge', 'How long the linked peer has been behind on this peer\'s writes (0 when caught up).', 1e-3],
  ['bytesSent', 'link_sent_bytes_total', 'counter', 'Bytes sent to the linked peer over its current link.', 1],
  ['bytesReceived', 'link_received_bytes_total', 'counter', 'Bytes received from the linked peer over its current link.', 1],
]

function escapeLabel(value) {
  return String(value).replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

function escapeHelp(text) {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')
}

function labels(pairs) {
  const parts = Object.entries(pairs).map(([k, v]) => `${k}="${escapeLabel(v)}"`)
  return parts.length ? `{${parts.join(',')}}` : ''
}

function number(value) {
  if (value === Infinity) return '+Inf'
  if (value === -Infinity) return '-Inf'
  if (Number.isNaN(value)) return 'NaN'
  return String(value)
}

function snake(name) {
  return name
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[^a-zA-Z0-9_]/g, '_')
    .toLowerCase()
}

/**
 * The exposition text for one peer.
 * @param {object} stats peer.stats()
 * @param {Array<{id: string, address: string, state: string}>} members peer.peers()
 * @param {string} version this package's version
 */
function formatMetrics(stats, members, version) {
  const out = []
  const family = (name, type, help, samples) => {
    out.push(`# HELP ${PREFIX}${name} ${escapeHelp(help)}`)
    out.push(`# TYPE ${PREFIX}${name} ${type}`)
    for (const [labelPairs, value] of samples) out.push(`${PREFIX}${name}${labels(labelPairs)} ${number(value)}`)
  }

  family('info', 'gauge', 'Always 1; its labels name this peer and the peer-buckets version.', [[{ id: stats.id, version }, 1]])
  for (const [field, name, type, help] of FIGURES) {
    if (typeof stats[field] === 'number') family(name, type, help, [[{}, stats[field]]])
  }
  for (const field of Object.keys(stats)) {
    if (!KNOWN.has(field) && typeof stats[field] === 'number') {
      family(snake(field), 'untyped', `stats().${field}`, [[{}, stats[field]]])
    }
  }

  const warnings = stats.warnings && typeof stats.warnings === 'object' ? stats.warnings : {}
  family(
    'warnings_total',
    'counter',
    "Warnings emitted (the 'warning' event), by code, rate-limited ones included.",
    Object.entries(warnings).map(([code, n]) => [{ code }, n]),
  )
  family(
    'members',
    'gauge',
    'Peers known as members of the network (linked or not), this one excluded.',
    [[{}, members.length]],
  )
  family(
    'peer_connected',
    'gauge',
    '1 when the member is linked to this peer now, 0 when it is not.',
    members.map((m) => [{ peer: m.id, address: m.address }, m.state === 'connected' ? 1 : 0]),
  )
  const links = Array.isArray(stats.replication) ? stats.replication : []
  for (const [field, name, type, help, scale] of LINK_FIGURES) {
    const samples = links.filter((l) => typeof l[field] === 'number').map((l) => [{ peer: l.id }, l[field] * scale])
    family(name, type, help, samples)
  }
  return out.join('\n') + '\n'
}

module.exports = { formatMetrics, CONTENT_TYPE }
