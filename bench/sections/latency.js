'use strict'
// Figure 4: time from a write on one process to its arrival on another, writes spaced ~1 ms apart.
//  - peer-buckets: process A sets sess:lat<i> with process.hrtime.bigint() stamped in the value; process
//    B's 'change' listener subtracts it from its own hrtime on arrival (one monotonic clock per machine).
//  - Redis: SET on the primary until the replica announces it: a keyspace notification
//    (notify-keyspace-events K$) from the replica to a subscriber, timed in the writing process. The
//    figure compared is with ioredis (what a Node user gets); the same with raw RESP over net sockets
//    (no client library) is measured too, as context: it shows Redis's own share.
//  - With an addon built with the `stamps` feature (`npx napi build --platform --release --no-js
//    --features stamps`), the peer-buckets figure is followed by where its time goes, stage by stage
//    (crates/engine/src/stamps.rs); in any other build the figure alone.

const net = require('node:net')
const { percentile, sleep, now } = require('../lib/util')
const { SESSION } = require('../lib/workload')

function summary(samples) {
  return {
    n: samples.length,
    p50: percentile(samples, 50),
    p90: percentile(samples, 90),
    p99: percentile(samples, 99),
    max: samples.length ? Math.max(...samples) : null,
  }
}

async function peerBuckets(ctx) {
  const { cfg, log, mesh } = ctx
  const [writer, listener] = mesh.workers
  const prefix = 'sess:lat'
  const warm = 100
  await listener.call('latencyListen', { prefix, n: warm + cfg.latencySamples })
  await writer.call('latencyWrite', { prefix, n: warm + cfg.latencySamples, intervalMs: 1 }, 120_000)
  const samples = (await listener.call('latencyCollect', { timeoutMs: 5_000 }, 20_000)).slice(warm)
  if (samples.length < cfg.latencySamples * 0.99) throw new Error(`only ${samples.length} of ${cfg.latencySamples} changes arrived`)
  const s = summary(samples)
  log(`  peer-buckets write → 'change' on another process: p50 ${s.p50.toFixed(0)} µs, p99 ${s.p99.toFixed(0)} µs (${s.n} samples)`)
  const [sent, heard] = await Promise.all([writer.call('latencyTrace'), listener.call('latencyTrace')])
  if (sent.stamps && heard.stamps) {
    s.stages = breakdown(sent.stamps, heard, `${mesh.prefix}-0`, `${mesh.prefix}-1`, warm)
    log('  where the time goes (addon built with the stamps feature; µs):')
    const us = (x) => (x === null ? '—' : x.toFixed(1)).padStart(7)
    for (const st of s.stages) log(`    ${st.stage.padEnd(48)} p50 ${us(st.p50)}  p99 ${us(st.p99)}  (${st.n})`)
  }
  return s
}

// The stages of crates/engine/src/stamps.rs, by number.
const STAGE = {
  WriteEntered: 1, WriteStored: 2, WriterWoke: 3, WriterFilled: 4, WriterPacked: 5, ReaderRead: 6,
  ReaderDecoded: 7, ChangeQueued: 8, ReaderHandled: 9, PumpTook: 10, CallbackBegan: 11, CallbackBuilt: 12,
}

/** The 32-bit FNV-1a hash the stamps tag keys and peer ids with. */
function tagOf(s) {
  let h = 0x811c9dc5
  for (const b of Buffer.from(s)) h = Math.imul(h ^ b, 0x01000193) >>> 0
  return h
}

/**
 * Each write's way from `set` on the writer to the listener's 'change', cut at the stamps both
 * processes took (one CLOCK_MONOTONIC for both): a key's own stamps are found by its hash; the link
 * stages (the writer's on its link to the listener, the listener's reader's on the link from the
 * writer) are the first ones after the key's previous stage, or the last before its next one.
 * Returns, per stage, the median and p99 in µs over the writes past `warm`.
 */
function breakdown(sentFlat, heard, writerId, listenerId, warm) {
  const split = (flat) => {
    const byStage = new Map()
    for (let i = 0; i < flat.length; i += 3) {
      const stage = flat[i]
      if (!byStage.has(stage)) byStage.set(stage, { at: [], tag: [] })
      byStage.get(stage).at.push(flat[i + 1])
      byStage.get(stage).tag.push(flat[i + 2])
    }
    return byStage
  }
  const w = split(sentFlat)
  const l = split(heard.stamps)
  const byKey = (m, stage) => {
    const out = new Map()
    const s = m.get(stage)
    if (s) s.tag.forEach((t, i) => out.set(t, s.at[i]))
    return out
  }
  // The first stamp of `stage` (with `tag`, when given) at or after `from`, or the last at or before.
  const first = (m, stage, from, tag) => {
    const s = m.get(stage)
    if (!s) return undefined
    for (let i = 0; i < s.at.length; i++) if (s.at[i] >= from && (tag === undefined || s.tag[i] === tag)) return s.at[i]
  }
  const last = (m, stage, upTo, tag) => {
    const s = m.get(stage)
    if (!s) return undefined
    for (let i = s.at.length - 1; i >= 0; i--) if (s.at[i] <= upTo && (tag === undefined || s.tag[i] === tag)) return s.at[i]
  }
  const toListener = tagOf(listenerId)
  const fromWriter = tagOf(writerId)
  const entered = byKey(w, STAGE.WriteEntered)
  const stored = byKey(w, STAGE.WriteStored)
  const queued = byKey(l, STAGE.ChangeQueued)
  const took = byKey(l, STAGE.PumpTook)
  const began = byKey(l, STAGE.CallbackBegan)
  const built = byKey(l, STAGE.CallbackBuilt)
  const names = [
    'JS set() → engine (checks, JSON.stringify, call)',
    'store write',
    "wake the link's writer (JS thread → tokio)",
    'writer takes the frames from the session',
    'compress (frames of 512 bytes or more)',
    "send over loopback until the reader's read returns",
    'read → frame decoded (inflate, decode)',
    'decoded → change queued (merge, under locks)',
    'change queued → frame handled',
    'handled → pump takes the change',
    'pump → JS thread runs the callback (TSFN)',
    'callback builds the batch',
    "JS dispatch to the 'change' listener",
  ]
  const rows = names.map(() => [])
  const total = []
  for (const [key, t0s, heardAt] of heard.arrivals.slice(warm)) {
    const k = tagOf(key)
    const t0 = Number(BigInt(t0s))
    const tj = Number(BigInt(heardAt))
    const st = stored.get(k)
    const filled = st === undefined ? undefined : first(w, STAGE.WriterFilled, st, toListener)
    if (filled === undefined) continue
    const woke = last(w, STAGE.WriterWoke, filled, toListener)
    const packed = first(w, STAGE.WriterPacked, filled)
    const q = queued.get(k)
    const decoded = q === undefined ? undefined : last(l, STAGE.ReaderDecoded, q, fromWriter)
    const read = decoded === undefined ? undefined : last(l, STAGE.ReaderRead, decoded)
    const handled = q === undefined ? undefined : first(l, STAGE.ReaderHandled, q, fromWriter)
    // A writer already awake when the write was stored took it without a wake-up.
    const awake = woke !== undefined && woke >= st ? woke : st
    const points = [
      t0, entered.get(k), st, awake, filled, packed, read, decoded, q, handled, took.get(k), began.get(k), built.get(k), tj,
    ]
    if (points.some((p) => p === undefined)) continue
    for (let i = 0; i < rows.length; i++) rows[i].push((points[i + 1] - points[i]) / 1e3)
    total.push((tj - t0) / 1e3)
  }
  const row = (stage, xs) => ({ stage, n: xs.length, p50: percentile(xs, 50), p99: percentile(xs, 99) })
  return [...names.map((n, i) => row(n, rows[i])), row('total (write → listener)', total)]
}

async function redis(ctx) {
  const { cfg, log } = ctx
  const replica = ctx.redis.replicas[0]
  const admin = replica.client()
  const sub = replica.client()
  const pub = ctx.redis.primary.client()
  try {
    await admin.config('SET', 'notify-keyspace-events', 'K$')
    const sent = new Map()
    const samples = []
    const warm = 100
    const total = warm + cfg.latencySamples
    let seen = 0
    let resolveAll
    const all = new Promise((r) => (resolveAll = r))
    sub.on('pmessage', (_pattern, channel) => {
      const t = now()
      const key = channel.slice(channel.indexOf(':') + 1)
      const t0 = sent.get(key)
      if (t0 === undefined) return
      sent.delete(key)
      if (seen++ >= warm) samples.push(Number(t - t0) / 1e3)
      if (seen >= total) resolveAll()
    })
    await sub.psubscribe('__keyspace@0__:sess:rlat*')
    for (let i = 0; i < total; i++) {
      const key = 'sess:rlat' + i
      sent.set(key, now())
      pub.set(key, JSON.stringify(SESSION)).catch(() => {})
      await sleep(1)
    }
    await Promise.race([all, sleep(5_000)])
    if (samples.length < cfg.latencySamples * 0.99) throw new Error(`only ${samples.length} of ${cfg.latencySamples} notifications arrived`)
    const s = summary(samples)
    log(`  redis SET on primary → visible on replica: p50 ${s.p50.toFixed(0)} µs, p99 ${s.p99.toFixed(0)} µs (${s.n} samples)`)
    await admin.config('SET', 'notify-keyspace-events', '')
    return s
  } finally {
    sub.disconnect()
    pub.disconnect()
    admin.disconnect()
  }
}

/** The Redis measurement again without ioredis: raw RESP over two net sockets (context only). */
async function redisRaw(ctx) {
  const { cfg, log } = ctx
  const replica = ctx.redis.replicas[0]
  const admin = replica.client()
  const sub = net.connect(replica.port, '127.0.0.1')
  const pub = net.connect(ctx.redis.primary.port, '127.0.0.1')
  const connected = Promise.all([sub, pub].map((s) => new Promise((resolve, reject) => {
    s.once('connect', resolve)
    s.once('error', reject)
  })))
  connected.catch(() => {})
  try {
    sub.setNoDelay(true)
    pub.setNoDelay(true)
    await admin.config('SET', 'notify-keyspace-events', 'K$')
    await connected
    pub.on('data', () => {}) // +OK replies
    const warm = 100
    const total = warm + cfg.latencySamples
    const sent = new Array(total).fill(0n)
    const samples = []
    let pending = ''
    sub.on('data', (d) => {
      const t = now()
      pending += d.toString('latin1')
      const re = /sess:xlat(\d+)\r\n/g
      let m
      let last = 0
      while ((m = re.exec(pending))) {
        const i = Number(m[1])
        if (sent[i]) {
          if (i >= warm) samples.push(Number(t - sent[i]) / 1e3)
          sent[i] = 0n
        }
        last = re.lastIndex
      }
      pending = pending.slice(last)
    })
    sub.write('PSUBSCRIBE __keyspace@0__:sess:xlat*\r\n')
    await sleep(50)
    const value = JSON.stringify(SESSION)
    const frame = (k) => `*3\r\n$3\r\nSET\r\n$${k.length}\r\n${k}\r\n$${Buffer.byteLength(value)}\r\n${value}\r\n`
    for (let i = 0; i < total; i++) {
      sent[i] = now()
      pub.write(frame('sess:xlat' + i))
      await sleep(1)
    }
    await sleep(200)
    const s = summary(samples)
    log(`  (redis, raw sockets without ioredis: p50 ${s.p50.toFixed(0)} µs, p99 ${s.p99.toFixed(0)} µs — context, not compared)`)
    await admin.config('SET', 'notify-keyspace-events', '')
    return s
  } finally {
    sub.destroy()
    pub.destroy()
    admin.disconnect()
  }
}

module.exports = { peerBuckets, redis, redisRaw }
