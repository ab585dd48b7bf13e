'use strict'
// peer.metrics(): the figures of peer.stats() and peer.peers() as Prometheus text exposition
// (format 0.0.4), for a `/metrics` route. Built here in JS from stats(): one native call per scrape. The
// figures, their types and help texts are declared in lib/stats.js.
//
// Counters end in _total; byte counts are in bytes and lag in seconds, as Prometheus names them.
// A numeric field that stats() gains later and this table does not know yet is still exported, as
// `peer_buckets_<snake_case>` of type untyped, so nothing stats() says is missing here.

const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'
const PREFIX = 'peer_buckets_'

const { FIGURES, LINK_FIGURES, LABELLED_FIGURES, ACK_LATENCY, LOOP_FIGURES, OTHER_FIELDS } = require('./stats.js')

const KNOWN = new Set([...OTHER_FIELDS, ...FIGURES.map((f) => f.field), ...LOOP_FIGURES.map((f) => f.field)])

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
  // samples: [labels, value] or, for a histogram's series, [labels, value, suffix].
  const family = (name, type, help, samples) => {
    out.push(`# HELP ${PREFIX}${name} ${escapeHelp(help)}`)
    out.push(`# TYPE ${PREFIX}${name} ${type}`)
    for (const [labelPairs, value, suffix = ''] of samples) out.push(`${PREFIX}${name}${suffix}${labels(labelPairs)} ${number(value)}`)
  }

  family('info', 'gauge', 'Always 1; its labels name this peer and the peer-buckets version.', [[{ id: stats.id, version }, 1]])
  for (const { field, metric, type, help } of FIGURES) {
    if (typeof stats[field] === 'number') family(metric, type, help, [[{}, stats[field]]])
  }
  for (const { field, metric, type, help, scale } of LOOP_FIGURES) {
    if (typeof stats[field] === 'number') family(metric, type, help, [[{}, stats[field] * scale]])
  }
  for (const field of Object.keys(stats)) {
    if (!KNOWN.has(field) && typeof stats[field] === 'number') {
      family(snake(field), 'untyped', `stats().${field}`, [[{}, stats[field]]])
    }
  }

  for (const { field, metric, type, help, label } of LABELLED_FIGURES) {
    const byLabel = stats[field] && typeof stats[field] === 'object' ? stats[field] : {}
    family(metric, type, help, Object.entries(byLabel).map(([name, n]) => [{ [label]: name }, n]))
  }
  const latency = stats[ACK_LATENCY.field] && typeof stats[ACK_LATENCY.field] === 'object' ? stats[ACK_LATENCY.field] : {}
  const histogram = []
  for (const [level, h] of Object.entries(latency)) {
    const at = { [ACK_LATENCY.label]: level }
    h.leMs.forEach((le, i) => histogram.push([{ ...at, le: number(le / 1000) }, h.counts[i], '_bucket']))
    histogram.push([{ ...at, le: '+Inf' }, h.count, '_bucket'], [at, h.sumMs / 1000, '_sum'], [at, h.count, '_count'])
  }
  family(ACK_LATENCY.metric, 'histogram', ACK_LATENCY.help, histogram)
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
  for (const { field, metric, type, help, scale } of LINK_FIGURES) {
    const samples = links.filter((l) => typeof l[field] === 'number').map((l) => [{ peer: l.id }, l[field] * scale])
    family(metric, type, help, samples)
  }
  return out.join('\n') + '\n'
}

module.exports = { formatMetrics, CONTENT_TYPE }
