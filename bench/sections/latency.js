'use strict'
// Figure 4: time from a write on one process to its arrival on another, writes spaced ~1 ms apart.
//  - peer-buckets: process A sets sess:lat<i> with process.hrtime.bigint() stamped in the value; process
//    B's 'change' listener subtracts it from its own hrtime on arrival (one monotonic clock per machine).
//  - Redis: SET on the primary until the replica announces it: a keyspace notification
//    (notify-keyspace-events K$) from the replica to a subscriber, timed in the writing process. The
//    figure compared is with ioredis (what a Node user gets); the same with raw RESP over net sockets
//    (no client library) is measured too, as context: it shows Redis's own share.

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
  return s
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
