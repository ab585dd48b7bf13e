'use strict'
// count(prefix), countAsync(prefix) and a full paged scan over a bucket of `cfg.scanN` session-like keys
// (plus as many other keys, so the prefix selects half the bucket), each with the longest time the event
// loop was held: count is one synchronous call; countAsync and a scan are one call per page, with a turn
// of the loop between (countAsync's stall measured as the sessions section does, with its CPU time).

const { Peer } = require('../..')
const { SESSION } = require('../lib/workload')
const { sleep, stallMonitor } = require('../lib/util')

const PAGE = 1000

async function run({ cfg, log }) {
  const n = cfg.scanN
  const peer = new Peer({ id: 'bench-scan' })
  await peer.ready()
  try {
    const bucket = peer.bucket('scan')
    for (let i = 0; i < n; i += 10_000) {
      const batch = []
      for (let j = i; j < Math.min(n, i + 10_000); j++) batch.push([`sess:${j}`, SESSION], [`other:${j}`, j])
      await bucket.setMany(batch)
    }

    let t0 = performance.now()
    const cpu0 = process.cpuUsage()
    const counted = bucket.count('sess:')
    const countMs = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    if (counted !== n) throw new Error(`count('sess:') gave ${counted}, not ${n}`)

    const stalls = stallMonitor()
    await sleep(50)
    stalls.take()
    t0 = performance.now()
    const countedAsync = await bucket.countAsync('sess:')
    const countAsyncMs = performance.now() - t0
    const countAsyncStall = stalls.takeWithCpu()
    stalls.stop()
    if (countedAsync !== n) throw new Error(`countAsync('sess:') gave ${countedAsync}, not ${n}`)

    let cursor = null
    let pages = 0
    let seen = 0
    let longest = 0
    const start = performance.now()
    do {
      t0 = performance.now()
      const page = bucket.scan({ prefix: 'sess:', cursor, limit: PAGE })
      longest = Math.max(longest, performance.now() - t0)
      seen += page.entries.length
      cursor = page.cursor
      pages++
      await new Promise(setImmediate)
    } while (cursor !== null)
    const scanMs = performance.now() - start
    if (seen !== n) throw new Error(`the scan gave ${seen} entries, not ${n}`)

    const out = {
      keys: 2 * n,
      prefix_keys: n,
      count_ms: round(countMs),
      count_stall_ms: round(countMs),
      count_cpu_ms: round((cpu.user + cpu.system) / 1000),
      count_async_ms: round(countAsyncMs),
      count_async_stall_ms: countAsyncStall.ms,
      count_async_stall_cpu_ms: countAsyncStall.cpuMs,
      scan_ms: round(scanMs),
      scan_pages: pages,
      scan_longest_page_ms: round(longest),
    }
    log(`  count('sess:') over ${2 * n} keys: ${out.count_ms} ms, ${out.count_cpu_ms} ms of CPU (one call: the loop is held that long)`)
    log(`  countAsync('sess:'): ${out.count_async_ms} ms, longest event-loop stall ${out.count_async_stall_ms} ms (${out.count_async_stall_cpu_ms} ms of CPU in it)`)
    log(`  scan 'sess:' in pages of ${PAGE}: ${out.scan_ms} ms in ${pages} pages, longest page ${out.scan_longest_page_ms} ms`)
    return out
  } finally {
    await peer.close()
  }
}

function round(ms) {
  return Math.round(ms * 100) / 100
}

module.exports = { run }
