'use strict'
// A peer-buckets Peer in its own process, driven by the bench over IPC.

const { Peer } = require('../..')
const { native } = require('../../lib/native.js')
const { serve, pollUntil } = require('./rpc')
const { keys: makeKeys, session, sessions } = require('../lib/workload')

const now = () => process.hrtime.bigint()
// `npm run bench -- --no-compression` measures every peer with compression off.
const COMPRESSION = process.env.BENCH_COMPRESSION !== 'off'
let peer = null
let bucket = null
let latency = null
let arrivals = []
// Stamps of each stage of a write's way, in an addon built with the `stamps` feature (see
// crates/engine/src/stamps.rs): a flat array of stage, CLOCK_MONOTONIC ns, tag; null in other builds.
const takeStamps = () => (native.latencyStamps ? native.latencyStamps() : null)

function gcRss() {
  if (global.gc) {
    global.gc()
    global.gc()
  }
  return process.memoryUsage().rss
}

/**
 * What `stats.bytesReceived` would have been with every frame sent uncompressed: the frames are the
 * same either way (batching is decided before compression), so it is the wire count plus what
 * compression saved on each link.
 */
function uncompressedReceived(stats) {
  return stats.bytesReceived + stats.replication.reduce((n, l) => n + l.bytesReceivedUncompressed - l.bytesReceived, 0)
}

function writeRange(start, count) {
  const keys = makeKeys(start, count)
  const values = sessions(start, count)
  for (let i = 0; i < count; i++) bucket.set(keys[i], values[i])
}

serve(
  {
    async open({ id, seeds = [], bucketName = 'sessions', dataDir, durability, compression }) {
      const t0 = now()
      const opts = { id, listen: '127.0.0.1:0', peers: seeds, compression: compression ?? COMPRESSION }
      if (dataDir) opts.dataDir = dataDir
      if (durability) opts.durability = durability
      peer = new Peer(opts)
      await peer.ready()
      bucket = peer.bucket(bucketName)
      return { address: peer.address, id: peer.id, openMs: Number(now() - t0) / 1e6, size: bucket.size }
    },

    /** Waits until peer `id` is no longer connected (it left, or was declared down). */
    async waitGone({ id, timeoutMs = 10_000 }) {
      const t0 = now()
      const gone = () => !peer.peers().some((p) => p.id === id && p.state === 'connected')
      const ok = await pollUntil(gone, timeoutMs, 5)
      if (!ok) throw new Error(`peer ${id} still connected after ${timeoutMs} ms: ${JSON.stringify(peer.peers())}`)
      return { ms: Number(now() - t0) / 1e6 }
    },

    async waitPeers({ n, timeoutMs = 10_000 }) {
      const ok = await pollUntil(() => peer.peers().filter((p) => p.state === 'connected').length >= n, timeoutMs, 5)
      if (!ok) throw new Error(`only ${JSON.stringify(peer.peers())} after ${timeoutMs} ms (wanted ${n} connected)`)
      return true
    },

    /** Writes sessions start… then waits until the local replica holds `target` keys. Times are
     *  process.hrtime.bigint() (CLOCK_MONOTONIC, shared by every process on the machine), as strings. */
    async writeAndWait({ start, count, target, timeoutMs = 60_000, bucketName }) {
      if (bucketName) bucket = peer.bucket(bucketName)
      const keys = makeKeys(start, count)
      const values = sessions(start, count)
      const t0 = now()
      for (let i = 0; i < count; i++) bucket.set(keys[i], values[i])
      const tWrote = now()
      let polls = 0
      const ok = await pollUntil(() => (polls++, bucket.size >= target), timeoutMs)
      const tDone = now()
      return { ok, t0: String(t0), tWrote: String(tWrote), tDone: String(tDone), size: bucket.size, polls }
    },

    /** Writes `count` keys from `start` (in slices, so the event loop keeps turning). */
    async fill({ start = 0, count, slice = 50_000 }) {
      const t0 = now()
      for (let s = 0; s < count; s += slice) {
        writeRange(start + s, Math.min(slice, count - s))
        await new Promise(setImmediate)
      }
      return { ms: Number(now() - t0) / 1e6 }
    },

    /** Waits until the bucket holds `target` keys; `stats` adds peer.stats() taken the moment it does. */
    async waitSize({ target, timeoutMs = 60_000, stats = false }) {
      const t0 = now()
      const ok = await pollUntil(() => bucket.size >= target, timeoutMs)
      const out = { ok, ms: Number(now() - t0) / 1e6, size: bucket.size }
      if (stats) {
        out.stats = peer.stats()
        out.uncompressed = uncompressedReceived(out.stats)
      }
      return out
    },

    /** Opens a Peer seeded with `seeds` and times it until it holds `target` keys. */
    async join({ id, seeds, target, timeoutMs = 120_000, compression }) {
      const rss0 = gcRss()
      const t0 = now()
      peer = new Peer({ id, listen: '127.0.0.1:0', peers: seeds, compression: compression ?? COMPRESSION })
      await peer.ready()
      bucket = peer.bucket('sessions')
      const ok = await pollUntil(() => bucket.size >= target, timeoutMs)
      const ms = Number(now() - t0) / 1e6
      const stats = peer.stats()
      return { ok, ms, size: bucket.size, bytesReceived: stats.bytesReceived, uncompressed: uncompressedReceived(stats), rssGrowth: gcRss() - rss0 }
    },

    size() {
      return bucket.size
    },

    stats() {
      return peer.stats()
    },

    rss() {
      return gcRss()
    },

    /**
     * Standalone memory figure: RSS growth of this process over `count` keys. With `frozen`, the bucket
     * has reads: 'frozen' and every key is read once, so the decoded objects it keeps are counted too.
     */
    async memory({ count, slice = 50_000, settleMs = 300, frozen = false }) {
      peer = new Peer({ id: 'mem', listen: '127.0.0.1:0', compression: COMPRESSION })
      await peer.ready()
      bucket = frozen ? peer.bucket('sessions', { reads: 'frozen' }) : peer.bucket('sessions')
      await new Promise((r) => setTimeout(r, 100))
      const before = gcRss()
      const heapBefore = process.memoryUsage().heapUsed
      const heapTotalBefore = process.memoryUsage().heapTotal
      for (let s = 0; s < count; s += slice) {
        writeRange(s, Math.min(slice, count - s))
        await new Promise(setImmediate)
      }
      if (frozen) {
        for (let s = 0; s < count; s += slice) {
          for (const key of makeKeys(s, Math.min(slice, count - s))) {
            if (bucket.get(key).user === undefined) throw new Error(`memory: ${key} read wrong`)
          }
          await new Promise(setImmediate)
        }
      }
      await new Promise((r) => setTimeout(r, settleMs))
      const after = gcRss()
      const heapAfter = process.memoryUsage().heapUsed
      const heapTotalAfter = process.memoryUsage().heapTotal
      return { before, after, heapGrowth: heapAfter - heapBefore, heapTotalGrowth: heapTotalAfter - heapTotalBefore, size: bucket.size }
    },

    /** Latency, receiving side: records (arrival - stamp) for change events of keys under `prefix`. */
    latencyListen({ prefix, n }) {
      const samples = []
      arrivals = []
      takeStamps()
      let resolveDone
      const done = new Promise((r) => (resolveDone = r))
      const onChange = (e) => {
        const t = now()
        if (e.local || !e.key.startsWith(prefix) || !e.value || !e.value.t) return
        samples.push(Number(t - BigInt(e.value.t)) / 1e3)
        arrivals.push([e.key, e.value.t, String(t)])
        if (samples.length >= n) resolveDone()
      }
      bucket.on('change', onChange)
      latency = { samples, done, onChange }
      return true
    },

    async latencyCollect({ timeoutMs = 30_000 }) {
      const { samples, done, onChange } = latency
      await Promise.race([done, new Promise((r) => setTimeout(r, timeoutMs))])
      bucket.off('change', onChange)
      latency = null
      return samples
    },

    /**
     * What an addon built with the `stamps` feature stamped since the latency run began (null
     * otherwise), and the listener's arrivals: [key, written at, heard at], hrtime ns as strings.
     */
    latencyTrace() {
      return { stamps: takeStamps(), arrivals }
    },

    /** Latency, writing side: `n` writes spaced by `intervalMs`, each stamped with hrtime in the value. */
    async latencyWrite({ prefix, n, intervalMs = 1 }) {
      takeStamps()
      for (let i = 0; i < n; i++) {
        bucket.set(prefix + i, { ...session(i), t: String(now()) })
        await new Promise((r) => setTimeout(r, intervalMs))
      }
      return true
    },
  },
  async () => {
    if (peer) await peer.close()
  },
)
