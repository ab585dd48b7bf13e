'use strict'
// One peer of bench/scale.js in its own process, driven over IPC: it opens a Peer on loopback, records
// when each write of the scale bucket arrives (process.hrtime.bigint(), CLOCK_MONOTONIC, one clock for
// every process on the machine), writes on command, and reports its traffic, CPU time and memory.

const { Peer } = require('../..')
const { serve, pollUntil } = require('./rpc')
const { SESSION } = require('../lib/workload')

const now = () => process.hrtime.bigint()
let peer = null
let bucket = null
// key -> arrival time (hrtime, ns) of writes made elsewhere, for keys under the latency prefix.
const arrivals = new Map()

function connected() {
  return peer.peers().filter((p) => p.state === 'connected').length
}

serve(
  {
    loaded() {
      return true
    },

    async open({ id, seeds }) {
      peer = new Peer({ id, listen: '127.0.0.1:0', peers: seeds })
      await peer.ready()
      bucket = peer.bucket('scale')
      bucket.on('change', (e) => {
        if (!e.local && e.key.startsWith('lat:')) arrivals.set(e.key, now())
      })
      return { address: peer.address }
    },

    async waitLinked({ n, timeoutMs }) {
      const t0 = now()
      const ok = await pollUntil(() => connected() >= n, timeoutMs, 5)
      return { ok, linked: connected(), ms: Number(now() - t0) / 1e6 }
    },

    linked() {
      return connected()
    },

    /** Sets `key` (a session object); the time it was called, as a string of hrtime ns. */
    write({ key }) {
      const t = now()
      bucket.set(key, SESSION)
      return String(t)
    },

    /** Arrival times of the latency keys, as strings of hrtime ns. */
    arrivals({ keys }) {
      return keys.map((k) => (arrivals.has(k) ? String(arrivals.get(k)) : null))
    },

    traffic() {
      const s = peer.stats()
      return { sent: s.bytesSent, received: s.bytesReceived }
    },

    /** Writes `count` keys as fast as set() returns (ack 'local'). */
    burst({ prefix, count }) {
      for (let i = 0; i < count; i++) bucket.set(`${prefix}${i}`, SESSION)
      return true
    },

    /** Waits until this replica holds `size` keys; the time it did, as a string of hrtime ns. */
    async waitSize({ size, timeoutMs }) {
      const ok = await pollUntil(() => bucket.size >= size, timeoutMs, 2)
      return { ok, size: bucket.size, at: String(now()) }
    },

    usage() {
      const cpu = process.cpuUsage()
      return { cpuUs: cpu.user + cpu.system, rss: process.memoryUsage().rss, at: String(now()) }
    },
  },
  async () => {
    if (peer) await peer.close()
  },
)
