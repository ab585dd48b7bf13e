'use strict'
// peer.metrics(): Prometheus text exposition of stats() and peers(), checked with a strict parser of
// the text format (0.0.4), on figures that move as the peers are used.

const express = require('express')
const request = require('supertest')
const { createPeer, createCluster, closeAll } = require('./helpers/peers')
const { spawnPeer, killAll } = require('./helpers/spawn-peer')
const { waitFor, sleep } = require('./helpers/wait')
const { allStopped } = require('./helpers/stopped')
const { formatMetrics, CONTENT_TYPE } = require('../lib/metrics')

jest.setTimeout(60_000)

afterEach(async () => {
  await closeAll()
  await killAll()
})

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped'])

/**
 * Parses exposition text strictly (throws on anything the format does not allow, or that Prometheus
 * would reject: a sample before its TYPE, a family split in two, a duplicate series, a counter not
 * named *_total, a bad escape). Returns Map(name -> { type, help, samples: [{ labels, value }] }).
 */
function parseExposition(text) {
  if (!text.endsWith('\n')) throw new Error('exposition text must end with a newline')
  const families = new Map()
  const seen = new Set()
  let current = null
  const lines = text.slice(0, -1).split('\n')
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`
    if (line === '') throw new Error(`${where}: empty line`)
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line)
      if (!m) throw new Error(`${where}: a comment that is neither HELP nor TYPE`)
      const [, kind, name, rest] = m
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name`)
      let family = families.get(name)
      if (!family) {
        family = { type: undefined, help: undefined, samples: [] }
        families.set(name, family)
      } else if (current !== name) {
        throw new Error(`${where}: family ${name} appears in two places`)
      }
      current = name
      if (kind === 'HELP') {
        if (family.help !== undefined) throw new Error(`${where}: second HELP`)
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, ''))) throw new Error(`${where}: bad escape in HELP`)
        family.help = rest
      } else {
        if (family.type !== undefined) throw new Error(`${where}: second TYPE`)
        if (family.samples.length) throw new Error(`${where}: TYPE after samples`)
        if (!TYPES.has(rest)) throw new Error(`${where}: unknown type ${rest}`)
        if (rest === 'counter' && !name.endsWith('_total')) throw new Error(`${where}: counter not named *_total`)
        family.type = rest
      }
      return
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)( -?\d+)?$/.exec(line)
    if (!m) throw new Error(`${where}: not a sample line`)
    const [, name, labelText, valueText] = m
    // A histogram's series are named for its family with _bucket, _sum or _count.
    const histogram = /^(.*)_(bucket|sum|count)$/.exec(name)
    const base = families.has(name) || !histogram ? name : histogram[1]
    const family = families.get(base)
    if (!family || current !== base) throw new Error(`${where}: sample of ${name} outside its family`)
    if (base !== name && family.type !== 'histogram') throw new Error(`${where}: ${name} in a family of type ${family.type}`)
    if (family.type === undefined) throw new Error(`${where}: sample before its TYPE`)
    const labels = parseLabels(labelText || '', where)
    const value = valueText === '+Inf' ? Infinity : valueText === '-Inf' ? -Infinity : valueText === 'NaN' ? NaN : Number(valueText)
    if (Number.isNaN(value) && valueText !== 'NaN') throw new Error(`${where}: bad value`)
    if (family.type === 'counter' && !(value >= 0)) throw new Error(`${where}: negative counter`)
    if (base !== name && histogram[2] === 'bucket' && labels.le === undefined) throw new Error(`${where}: a bucket without le`)
    const series = name + JSON.stringify(Object.entries(labels).sort())
    if (seen.has(series)) throw new Error(`${where}: duplicate series`)
    seen.add(series)
    family.samples.push({ labels, value, series: name })
  })
  for (const [name, family] of families) {
    if (family.type === undefined) throw new Error(`family ${name} has no TYPE`)
  }
  return families
}

function parseLabels(text, where) {
  const labels = {}
  if (text === '') return labels
  let rest = text.slice(1, -1)
  while (rest.length) {
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/.exec(rest)
    if (!m || !LABEL_NAME.test(m[1])) throw new Error(`${where}: bad labels at ${JSON.stringify(rest)}`)
    if (m[1] in labels) throw new Error(`${where}: label ${m[1]} twice`)
    labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c))
    rest = rest.slice(m[0].length)
  }
  return labels
}

/**
 * The value of one series (a family name and, optionally, labels to match; a histogram's series by
 * their own name: `x_bucket`, `x_sum`, `x_count`); undefined when absent.
 */
function value(families, name, labels = {}) {
  const histogram = /^(.*)_(bucket|sum|count)$/.exec(name)
  const family = families.get(name) || (histogram && families.get(histogram[1]))
  if (!family) return undefined
  const sample = family.samples.find((s) => s.series === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  return sample && sample.value
}

const scrape = (peer) => parseExposition(peer.metrics())

const EXPECTED = {
  peer_buckets_info: 'gauge',
  peer_buckets_buckets: 'gauge',
  peer_buckets_keys: 'gauge',
  peer_buckets_peers_connected: 'gauge',
  peer_buckets_members: 'gauge',
  peer_buckets_ops_applied_total: 'counter',
  peer_buckets_sent_bytes_total: 'counter',
  peer_buckets_received_bytes_total: 'counter',
  peer_buckets_clock_skew_refused_total: 'counter',
  peer_buckets_pulls_sent_total: 'counter',
  peer_buckets_pulls_served_total: 'counter',
  peer_buckets_catchup_writes_received_total: 'counter',
  peer_buckets_protocol_errors_total: 'counter',
  peer_buckets_tombstones: 'gauge',
  peer_buckets_tombstones_collected_total: 'counter',
  peer_buckets_full_resyncs_total: 'counter',
  peer_buckets_collected_remembered: 'gauge',
  peer_buckets_stand_in_tombstones_total: 'counter',
  peer_buckets_divergences_total: 'counter',
  peer_buckets_repairs_total: 'counter',
  peer_buckets_repairs_changed_total: 'counter',
  peer_buckets_handshakes_rejected_total: 'counter',
  peer_buckets_handshakes_evicted_total: 'counter',
  peer_buckets_peer_connected: 'gauge',
  peer_buckets_replication_lag_ops: 'gauge',
  peer_buckets_replication_lag_seconds: 'gauge',
  peer_buckets_link_sent_bytes_total: 'counter',
  peer_buckets_link_received_bytes_total: 'counter',
  peer_buckets_local_writes_total: 'counter',
  peer_buckets_ack_timeouts_total: 'counter',
  peer_buckets_ack_latency_seconds: 'histogram',
  peer_buckets_bucket_keys: 'gauge',
  peer_buckets_warnings_total: 'counter',
  peer_buckets_event_loop_delay_max_seconds: 'gauge',
  peer_buckets_event_loop_delay_recent_seconds: 'gauge',
}

test('a lone peer: valid exposition text with every expected family, HELP and TYPE', async () => {
  const peer = await createPeer({ id: 'solo' })
  const families = scrape(peer)
  for (const [name, type] of Object.entries(EXPECTED)) {
    expect(families.get(name)).toBeDefined()
    expect(families.get(name).type).toBe(type)
    expect(families.get(name).help.length).toBeGreaterThan(0)
  }
  expect(value(families, 'peer_buckets_info', { id: 'solo' })).toBe(1)
  expect(families.get('peer_buckets_info').samples[0].labels.version).toBe(require('../package.json').version)
  expect(value(families, 'peer_buckets_keys')).toBe(0)
  expect(value(families, 'peer_buckets_members')).toBe(0)
  expect(families.get('peer_buckets_replication_lag_ops').samples).toEqual([])
  // Every figure of stats() is there, under its name.
  const stats = peer.stats()
  expect(value(families, 'peer_buckets_tombstones')).toBe(stats.tombstones)
  expect(value(families, 'peer_buckets_handshakes_rejected_total')).toBe(stats.handshakesRejected)
})

test('the figures move with use: keys, buckets, bytes, ops applied, tombstones, per-peer series', async () => {
  const [a, b] = await createCluster(2, 'm')
  let ma = scrape(a)
  let mb = scrape(b)
  expect(value(ma, 'peer_buckets_peer_connected', { peer: 'm2' })).toBe(1)
  expect(families(ma, 'peer_buckets_peer_connected')[0].labels.address).toBe(b.address)
  expect(value(ma, 'peer_buckets_members')).toBe(1)
  expect(value(ma, 'peer_buckets_peers_connected')).toBe(1)
  const before = { sent: value(ma, 'peer_buckets_sent_bytes_total'), applied: value(mb, 'peer_buckets_ops_applied_total'), keys: value(ma, 'peer_buckets_keys') }

  const bucket = a.bucket('sessions')
  for (let i = 0; i < 50; i++) await bucket.set(`k${i}`, { i, pad: 'x'.repeat(100) })
  await bucket.delete('k0')
  await waitFor(() => b.bucket('sessions').size === 49, { message: 'b to hold the writes' })
  await waitFor(() => value(scrape(a), 'peer_buckets_replication_lag_ops', { peer: 'm2' }) === 0, { message: 'b to acknowledge' })

  ma = scrape(a)
  mb = scrape(b)
  expect(value(ma, 'peer_buckets_keys')).toBe(before.keys + 49)
  expect(value(mb, 'peer_buckets_keys')).toBe(49)
  expect(value(ma, 'peer_buckets_buckets')).toBe(1)
  expect(value(ma, 'peer_buckets_tombstones')).toBeGreaterThanOrEqual(1)
  // More than 5,000 bytes of frames; on the wire, as many or fewer (compressed where they met in a send).
  expect(value(ma, 'peer_buckets_sent_bytes_total')).toBeGreaterThan(before.sent)
  expect(value(mb, 'peer_buckets_received_bytes_total')).toBeGreaterThan(0)
  expect(value(mb, 'peer_buckets_ops_applied_total')).toBeGreaterThanOrEqual(before.applied + 50)
  const sent = value(ma, 'peer_buckets_link_sent_bytes_total', { peer: 'm2' })
  const sentFrames = value(ma, 'peer_buckets_link_sent_uncompressed_bytes_total', { peer: 'm2' })
  const received = value(mb, 'peer_buckets_link_received_bytes_total', { peer: 'm1' })
  const receivedFrames = value(mb, 'peer_buckets_link_received_uncompressed_bytes_total', { peer: 'm1' })
  expect(sentFrames).toBeGreaterThan(50 * 100)
  expect(receivedFrames).toBeGreaterThan(50 * 100)
  expect(sent).toBeGreaterThan(0)
  expect(sent).toBeLessThanOrEqual(sentFrames)
  expect(received).toBeLessThanOrEqual(receivedFrames)
  expect(value(ma, 'peer_buckets_replication_lag_seconds', { peer: 'm2' })).toBe(0)

  // b leaves the network: a drops it from its members (close() is a goodbye) and its link series.
  await b.close()
  await waitFor(() => value(scrape(a), 'peer_buckets_peers_connected') === 0, { timeout: 10_000, message: 'a to see b gone' })
  ma = scrape(a)
  expect(value(ma, 'peer_buckets_peer_connected', { peer: 'm2' }) || 0).toBe(0)
  expect(value(ma, 'peer_buckets_replication_lag_ops', { peer: 'm2' })).toBeUndefined()
})

function families(parsed, name) {
  return parsed.get(name).samples
}

test('per-peer lag rises while a peer is stalled and falls back to 0 once it catches up', async () => {
  const a = await createPeer({ id: 'writer' })
  const stalled = await spawnPeer({ id: 'stalled', seeds: [a.address], bucket: 'sessions', changeEvents: false })
  await waitFor(() => value(scrape(a), 'peer_buckets_peer_connected', { peer: 'stalled' }) === 1, { timeout: 10_000, message: 'the link' })
  expect(value(scrape(a), 'peer_buckets_replication_lag_ops', { peer: 'stalled' })).toBe(0)

  stalled.pause()
  // SIGSTOP lands on each thread of the child in its own time: until all are stopped, it may still ack.
  await waitFor(() => allStopped(stalled.child.pid), { timeout: 5000, message: 'the child to stop' })
  try {
    const bucket = a.bucket('sessions')
    await Promise.all(Array.from({ length: 300 }, (_, i) => bucket.set(`s${i}`, { i })))
    await sleep(300)
    const m = scrape(a)
    expect(value(m, 'peer_buckets_replication_lag_ops', { peer: 'stalled' })).toBeGreaterThan(0)
    expect(value(m, 'peer_buckets_replication_lag_seconds', { peer: 'stalled' })).toBeGreaterThan(0)
  } finally {
    stalled.resume()
  }
  await waitFor(
    () => {
      const m = scrape(a)
      return value(m, 'peer_buckets_peer_connected', { peer: 'stalled' }) === 1 && value(m, 'peer_buckets_replication_lag_ops', { peer: 'stalled' }) === 0
    },
    { timeout: 20_000, message: 'the stalled peer to catch up' },
  )
  expect((await stalled.dump()).size).toBe(300)
})

test('label values are escaped (quotes, backslashes, newlines in a peer id)', async () => {
  const id = 'odd "id" \\ with\na newline'
  const peer = await createPeer({ id })
  const m = scrape(peer)
  expect(families(m, 'peer_buckets_info')[0].labels.id).toBe(id)
  // and figures stats() gains later are still exported (as untyped), under a valid name
  const text = formatMetrics({ id: 'x', keys: 1, replication: [], newFigureMs: 7 }, [], '9.9.9')
  const parsed = parseExposition(text)
  expect(parsed.get('peer_buckets_new_figure_ms')).toMatchObject({ type: 'untyped', samples: [{ labels: {}, value: 7 }] })
})

test('it mounts on /metrics in Express', async () => {
  const peer = await createPeer({ id: 'web' })
  const app = express()
  app.get('/metrics', (req, res) => res.type(CONTENT_TYPE).send(peer.metrics()))
  const res = await request(app).get('/metrics')
  expect(res.status).toBe(200)
  expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8')
  expect(value(parseExposition(res.text), 'peer_buckets_info', { id: 'web' })).toBe(1)
})

test('metrics() after close fails with ECLOSED', async () => {
  const peer = await createPeer()
  await peer.close()
  expect(() => peer.metrics()).toThrow(expect.objectContaining({ code: 'ECLOSED' }))
})

test('local writes, ack latency by level, ack timeouts and keys per bucket', async () => {
  const [a, b] = await createCluster(2, 'h')
  const sessions = a.bucket('sessions')
  const carts = a.bucket('carts')
  for (let i = 0; i < 5; i++) await sessions.set(`s${i}`, i, { ack: 'one' })
  for (let i = 0; i < 3; i++) await carts.set(`c${i}`, i, { ack: 'majority' })
  await sessions.delete('s0')
  await sessions.touch('s1', 60_000)
  let m = scrape(a)
  expect(value(m, 'peer_buckets_local_writes_total')).toBe(10)
  expect(value(scrape(b), 'peer_buckets_local_writes_total')).toBe(0)
  expect(value(m, 'peer_buckets_bucket_keys', { bucket: 'sessions' })).toBe(4)
  expect(value(m, 'peer_buckets_bucket_keys', { bucket: 'carts' })).toBe(3)
  // Histogram by level: every write that waited counted once, buckets cumulative up to +Inf.
  expect(value(m, 'peer_buckets_ack_latency_seconds_count', { level: 'one' })).toBe(5)
  expect(value(m, 'peer_buckets_ack_latency_seconds_count', { level: 'majority' })).toBe(3)
  expect(value(m, 'peer_buckets_ack_latency_seconds_count', { level: 'all' })).toBe(0)
  expect(value(m, 'peer_buckets_ack_latency_seconds_bucket', { level: 'one', le: '+Inf' })).toBe(5)
  expect(value(m, 'peer_buckets_ack_latency_seconds_sum', { level: 'one' })).toBeGreaterThan(0)
  const buckets = families(m, 'peer_buckets_ack_latency_seconds').filter((s) => s.series.endsWith('_bucket') && s.labels.level === 'one')
  const bounds = buckets.map((s) => Number(s.labels.le))
  expect(bounds).toEqual([...bounds].sort((x, y) => x - y))
  expect(bounds[0]).toBe(0.001)
  for (let i = 1; i < buckets.length; i++) expect(buckets[i].value).toBeGreaterThanOrEqual(buckets[i - 1].value)
  expect(value(m, 'peer_buckets_ack_timeouts_total')).toBe(0)

  // b stops answering: a write waiting for it times out, and is counted.
  await b.close()
  await waitFor(() => a.stats().peers === 0, { message: 'a to see b gone' })
  await expect(sessions.set('late', 1, { ack: 'one', timeout: 100 })).rejects.toMatchObject({ code: 'EACKTIMEOUT' })
  m = scrape(a)
  expect(value(m, 'peer_buckets_ack_timeouts_total')).toBe(1)
  expect(value(m, 'peer_buckets_ack_latency_seconds_count', { level: 'one' })).toBe(5)
  expect(value(m, 'peer_buckets_local_writes_total')).toBe(11)
})
