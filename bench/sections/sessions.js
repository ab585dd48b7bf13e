'use strict'
// SessionStore's whole-store calls, length(), ids(), all() and clear(), over a bucket of `cfg.sessionsN`
// sessions: how long each call takes and the longest the event loop was held while it ran (the longest
// gap between the ticks of a 1 ms interval, so a figure is at least about 1 ms) with the CPU time the
// process used in that gap (the work that held it, where the rest is waiting for a core on a loaded
// machine), beside the longest gap of the same process doing nothing for a second (the machine's share).
// The calls walk the bucket a page at a time and yield between pages: the stall is one page's work,
// not the store's; length() counts in the addon (bucket.countAsync, no key crosses to JavaScript);
// clear() deletes a page, waits for those deletes to settle, then reads the next.

const { Peer, SessionStore } = require('../..')
const { SESSION } = require('../lib/workload')
const { sleep, stallMonitor } = require('../lib/util')

const FILL = 10_000
const TTL_MS = 60 * 60_000

async function run({ cfg, log }) {
  const n = cfg.sessionsN
  const peer = new Peer({ id: 'bench-sessions' })
  await peer.ready()
  const stalls = stallMonitor()
  try {
    const bucket = peer.bucket('sessions')
    const store = new SessionStore({ bucket })
    let t0 = performance.now()
    for (let i = 0; i < n; i += FILL) {
      const batch = []
      for (let j = i; j < Math.min(n, i + FILL); j++) batch.push([`sess:${j}`, SESSION])
      await bucket.setMany(batch, { ttl: TTL_MS })
    }
    log(`  ${n.toLocaleString()} sessions written in ${((performance.now() - t0) / 1000).toFixed(1)} s`)

    const out = { sessions: n }
    const measure = async (name, call, check) => {
      // The control first: the longest gap of this process doing nothing for a second.
      await sleep(50)
      stalls.take()
      await sleep(1000)
      const idle = stalls.take()
      t0 = performance.now()
      const result = await call()
      const ms = performance.now() - t0
      const stall = stalls.takeWithCpu()
      check(result)
      out[`${name}_ms`] = round(ms)
      out[`${name}_stall_ms`] = stall.ms
      out[`${name}_stall_cpu_ms`] = stall.cpuMs
      out[`${name}_idle_stall_ms`] = idle
      log(`  ${name}(): ${round(ms)} ms, longest event-loop stall ${stall.ms} ms (${stall.cpuMs} ms of CPU in it; idle control: ${idle} ms)`)
    }
    const expect = (what, got, want) => {
      if (got !== want) throw new Error(`${what} gave ${got}, not ${want}`)
    }
    await measure('length', () => store.length(), (count) => expect('length()', count, n))
    await measure('ids', () => store.ids(), (ids) => expect('ids()', ids.length, n))
    await measure('all', () => store.all(), (all) => expect('all()', all.length, n))
    await measure('clear', () => store.clear(), () => expect("count('sess:') after clear()", bucket.count('sess:'), 0))
    return out
  } finally {
    stalls.stop()
    await peer.close()
  }
}

function round(ms) {
  return Math.round(ms * 100) / 100
}

module.exports = { run }
