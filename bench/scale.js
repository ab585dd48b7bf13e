#!/usr/bin/env node
'use strict'
// Scale figures: N peer processes on this machine (N = 3, 10, 20, 40; 3, 10, 20 with --quick), each
// given only the first peer's address, forming a full mesh by gossip. For each N:
//   - mesh: from the first `new Peer` to every peer linked to the N−1 others;
//   - reach all: one write (a session object) until the last other peer's 'change' for it, p50/p99
//     over writes made 20 ms apart by each peer in turn (one monotonic clock for every process);
//   - bytes per write: what the whole cluster sent while those writes replicated, less what it sends
//     idle over as long (heartbeats and digests), per write;
//   - converged: every peer writes its share of a burst at once; writes per second until every
//     replica holds all of them;
//   - idle: CPU per peer (share of one core) and RSS per peer, over 5 s with nothing to do.
// No goal yet: the figures say where a full mesh stops paying on one machine (README, "Scale").
//
// `node bench/scale.js [--quick] [--sizes=3,10] [--json]`; writes bench/results/scale.json and
// bench/results/scale.svg (a full run with the default sizes, or any run with --write). Every process it starts is killed at the end.

const fs = require('node:fs')
const path = require('node:path')
const procs = require('./lib/procs')
const { machine, percentile, sleep, fmtNum } = require('./lib/util')

const argv = process.argv.slice(2)
const QUICK = argv.includes('--quick')
const JSON_OUT = argv.includes('--json')
const sizesArg = argv.find((a) => a.startsWith('--sizes='))
const SIZES = sizesArg ? sizesArg.slice(8).split(',').map(Number) : QUICK ? [3, 10, 20] : [3, 10, 20, 40]
const WRITES = QUICK ? 60 : 200
const BURST = QUICK ? 20_000 : 60_000
const WORKER = path.join(__dirname, 'workers', 'scale-peer.js')
const log = (...a) => console.log(...a)

if (SIZES.some((n) => !Number.isInteger(n) || n < 2 || n > 100)) {
  console.error('bench/scale: --sizes takes integers from 2 to 100, e.g. --sizes=3,10')
  process.exit(2)
}

const ms = (a, b) => Number(BigInt(b) - BigInt(a)) / 1e6

async function trafficOf(workers) {
  const all = await Promise.all(workers.map((w) => w.call('traffic')))
  return all.reduce((a, t) => a + t.sent, 0)
}

async function measure(n) {
  const workers = []
  try {
    for (let i = 0; i < n; i++) workers.push(procs.spawnWorker(WORKER, { name: `scale-${n}-${i}` }))
    // Each worker has loaded Node and the addon before the clock starts.
    await Promise.all(workers.map((w) => w.ready.then(() => w.call('loaded', {}, 60_000))))
    // Mesh: the first peer, then every other given only its address, all at once.
    const t0 = process.hrtime.bigint()
    const first = await workers[0].call('open', { id: 'p0', seeds: [] })
    await Promise.all(workers.slice(1).map((w, i) => w.call('open', { id: `p${i + 1}`, seeds: [first.address] })))
    const meshTimeout = 30_000 + n * 1_000
    const linked = await Promise.all(workers.map((w) => w.call('waitLinked', { n: n - 1, timeoutMs: meshTimeout }, meshTimeout + 5_000)))
    if (!linked.every((l) => l.ok)) throw new Error(`no full mesh of ${n} after ${meshTimeout} ms: links per peer ${linked.map((l) => l.linked).join(',')}`)
    const meshMs = Number(process.hrtime.bigint() - t0) / 1e6
    await sleep(1_000)

    // Idle traffic first, over the time the latency writes take, to subtract from theirs.
    const span = WRITES * 20 + 500
    const idle0 = await trafficOf(workers)
    await sleep(span)
    const idleBytes = (await trafficOf(workers)) - idle0

    // Reach all: writes 20 ms apart, each peer in turn, each timed until the last other peer saw it.
    const sent0 = await trafficOf(workers)
    const writes = []
    for (let i = 0; i < WRITES; i++) {
      const writer = i % n
      const key = `lat:${i}`
      writes.push({ key, writer, at: await workers[writer].call('write', { key }) })
      await sleep(20)
    }
    await sleep(500)
    const sentBytes = (await trafficOf(workers)) - sent0
    const keys = writes.map((w) => w.key)
    const seen = await Promise.all(workers.map((w) => w.call('arrivals', { keys })))
    const reach = []
    let missing = 0
    writes.forEach((w, i) => {
      let last = 0
      for (let p = 0; p < n; p++) {
        if (p === w.writer) continue
        const a = seen[p][i]
        if (a == null) {
          missing++
          return
        }
        last = Math.max(last, ms(w.at, a))
      }
      reach.push(last * 1000)
    })
    if (missing > 0) throw new Error(`${missing} deliveries of ${WRITES} writes to ${n - 1} peers each never arrived`)
    const bytesPerWrite = Math.max(0, sentBytes - idleBytes) / WRITES

    // Converged throughput: every peer writes its share of the burst at once.
    const share = Math.ceil(BURST / n)
    const total = share * n + WRITES
    const b0 = process.hrtime.bigint()
    await Promise.all(workers.map((w, i) => w.call('burst', { prefix: `b${i}:`, count: share }, 120_000)))
    const done = await Promise.all(workers.map((w) => w.call('waitSize', { size: total, timeoutMs: 120_000 }, 125_000)))
    if (!done.every((d) => d.ok)) throw new Error(`the burst did not converge: sizes ${done.map((d) => d.size).join(',')} of ${total}`)
    const convergedMs = Math.max(...done.map((d) => ms(String(b0), d.at)))
    const convergedOps = (share * n) / (convergedMs / 1000)

    // Idle CPU and memory.
    await sleep(2_000)
    const u0 = await Promise.all(workers.map((w) => w.call('usage')))
    await sleep(5_000)
    const u1 = await Promise.all(workers.map((w) => w.call('usage')))
    const cpu = u1.map((u, i) => (u.cpuUs - u0[i].cpuUs) / 1000 / ms(u0[i].at, u.at))
    const idleCpuPct = (cpu.reduce((a, c) => a + c, 0) / n) * 100
    const rssMb = u1.reduce((a, u) => a + u.rss, 0) / n / 1e6

    const r = {
      n,
      mesh_ms: Math.round(meshMs),
      reach_p50_us: Math.round(percentile(reach, 50)),
      reach_p99_us: Math.round(percentile(reach, 99)),
      bytes_per_write: Math.round(bytesPerWrite),
      idle_bytes_per_s: Math.round(idleBytes / (span / 1000)),
      converged_ops: Math.round(convergedOps),
      idle_cpu_pct: Math.round(idleCpuPct * 100) / 100,
      rss_mb: Math.round(rssMb * 10) / 10,
    }
    log(`  ${String(n).padStart(3)} peers: mesh ${fmtNum(r.mesh_ms)} ms · write reaches all p50 ${fmtNum(r.reach_p50_us)} µs, p99 ${fmtNum(r.reach_p99_us)} µs · ${fmtNum(r.bytes_per_write)} bytes sent per write (idle ${fmtNum(r.idle_bytes_per_s)} B/s) · converged ${fmtNum(r.converged_ops)} writes/s · idle ${r.idle_cpu_pct}% CPU, ${r.rss_mb} MB RSS per peer`)
    return r
  } finally {
    await procs.killAll(workers)
  }
}

/** A chart of each figure against N: one small panel per figure, N on a linear axis. */
function renderSvg(results, m) {
  const panels = [
    ['mesh_ms', 'time to a full mesh (ms)'],
    ['reach_p99_us', 'one write reaches all, p99 (µs)'],
    ['bytes_per_write', 'bytes the cluster sends per write'],
    ['converged_ops', 'converged writes/s, all writing'],
    ['idle_cpu_pct', 'idle CPU per peer (% of a core)'],
    ['rss_mb', 'RSS per peer (MB)'],
  ]
  const PW = 280
  const PH = 170
  const cols = 3
  const W = PW * cols + 20
  const H = 60 + Math.ceil(panels.length / cols) * (PH + 20)
  const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;')
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="11">`, `<rect width="${W}" height="${H}" fill="#fff"/>`]
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">peer-buckets: N peer processes in a full mesh on one machine</text>`)
  out.push(`<text x="${W / 2}" y="40" text-anchor="middle" fill="#555">${esc(`${m.cpu}, ${m.cores} cores, Node ${m.node}`)}</text>`)
  const maxN = Math.max(...results.map((r) => r.n))
  panels.forEach(([key, title], i) => {
    const ox = 10 + (i % cols) * PW
    const oy = 56 + Math.floor(i / cols) * (PH + 20)
    const left = ox + 50
    const right = ox + PW - 15
    const top = oy + 22
    const bottom = oy + PH - 22
    const maxV = Math.max(...results.map((r) => r[key])) * 1.15 || 1
    const x = (n) => left + (n / maxN) * (right - left)
    const y = (v) => bottom - (v / maxV) * (bottom - top)
    out.push(`<text x="${(left + right) / 2}" y="${oy + 12}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`)
    out.push(`<line x1="${left}" y1="${bottom}" x2="${right}" y2="${bottom}" stroke="#333"/><line x1="${left}" y1="${top}" x2="${left}" y2="${bottom}" stroke="#333"/>`)
    out.push(`<text x="${left - 4}" y="${top + 4}" text-anchor="end" fill="#555">${esc(fmtNum(maxV))}</text><text x="${left - 4}" y="${bottom}" text-anchor="end" fill="#555">0</text>`)
    const pts = results.map((r) => `${x(r.n).toFixed(1)},${y(r[key]).toFixed(1)}`).join(' ')
    out.push(`<polyline points="${pts}" fill="none" stroke="#3a6fc7" stroke-width="2"/>`)
    for (const r of results) {
      out.push(`<circle cx="${x(r.n).toFixed(1)}" cy="${y(r[key]).toFixed(1)}" r="3" fill="#3a6fc7"/>`)
      out.push(`<text x="${x(r.n).toFixed(1)}" y="${bottom + 13}" text-anchor="middle" fill="#555">${r.n}</text>`)
      out.push(`<text x="${x(r.n).toFixed(1)}" y="${(y(r[key]) - 6).toFixed(1)}" text-anchor="middle">${esc(fmtNum(r[key], r[key] < 10 ? 1 : 0))}</text>`)
    }
  })
  out.push('</svg>')
  return out.join('\n') + '\n'
}

async function main() {
  procs.installSignalHandlers()
  procs.reapStale()
  const m = machine()
  log(`bench/scale: N peer processes, full mesh, on ${m.cpu} (${m.cores} cores), load ${m.loadavg[0].toFixed(2)}; sizes ${SIZES.join(', ')}`)
  const results = []
  for (const n of SIZES) results.push(await measure(n))
  log('')
  log('| peers | full mesh | write reaches all p50 / p99 | bytes sent per write | converged writes/s | idle CPU per peer | RSS per peer |')
  log('|---:|---:|---:|---:|---:|---:|---:|')
  for (const r of results) {
    log(`| ${r.n} | ${fmtNum(r.mesh_ms)} ms | ${fmtNum(r.reach_p50_us)} / ${fmtNum(r.reach_p99_us)} µs | ${fmtNum(r.bytes_per_write)} | ${fmtNum(r.converged_ops)} | ${r.idle_cpu_pct}% | ${r.rss_mb} MB |`)
  }
  if ((!QUICK && !sizesArg) || argv.includes('--write')) {
    const dir = path.join(__dirname, 'results')
    fs.mkdirSync(dir, { recursive: true })
    fs.writeFileSync(path.join(dir, 'scale.json'), JSON.stringify({ machine: m, quick: QUICK, results }, null, 1) + '\n')
    fs.writeFileSync(path.join(dir, 'scale.svg'), renderSvg(results, m))
    log('\nwrote bench/results/scale.json and bench/results/scale.svg')
  }
  if (JSON_OUT) log(JSON.stringify({ scale: results }))
  return results
}

if (require.main === module) {
  main().then(
    () => setImmediate(() => process.exit(0)),
    (err) => {
      console.error(`bench/scale: ${err.stack}`)
      procs.killAllSync()
      process.exit(1)
    },
  )
}

module.exports = { main, measure, renderSvg }
