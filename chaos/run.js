#!/usr/bin/env node
'use strict'
// Chaos testing, the way Jepsen does it for databases: real peer processes on loopback, every link
// through a fault-injecting proxy, faults on a seeded schedule (partitions, blackholes, slow and
// one-way links, partial heals, SIGKILL and restart, SIGSTOP pauses past failure detection, clock skew,
// a second process with a running peer's id, a member that sends forbidden frames: hostile.js), a workload on
// hot and unique keys from every peer with every ack level, a history of every operation, and at the
// end a checker that proves nothing acknowledged was lost and every replica agrees.
//
//   npm run chaos -- --seconds 60 --seed 42 [--nodes 5] [--rate 40] [--hot 200] [--dir DIR] [--quiet]
//
// The same seed gives the same schedule (which peers keep a data directory, the skews, the faults and
// each peer's sequence of operations). The run directory (default: a fresh one under the system temp
// directory, printed) keeps plan.json, events.jsonl (faults as applied), history/<peer>.<run>.jsonl
// (written as the run goes) merged into history.jsonl at the end, final.json (every replica's
// registers at the end) and logs/. Exit status: 0 when every check holds,
// 1 when one fails (the seed and the first violation with its history are printed), 2 on bad usage or
// when the harness itself fails. Linux only (the proxies identify the dialing peer through /proc).

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { plan } = require('./schedule')
const { Network } = require('./proxy')
const { Cluster } = require('./cluster')
const { check, explain, summarize, loadRun } = require('./checker')

function parseArgs(argv) {
  const args = { seconds: 30, nodes: 5, rate: 40, hot: 200, concurrency: 8, quiet: false, regime: 'any', security: 'any', hostile: true }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '--seconds') args.seconds = Number(next())
    else if (a === '--seed') args.seed = Number(next())
    else if (a === '--nodes') args.nodes = Number(next())
    else if (a === '--rate') args.rate = Number(next())
    else if (a === '--hot') args.hot = Number(next())
    else if (a === '--concurrency') args.concurrency = Number(next())
    else if (a === '--dir') args.dir = next()
    else if (a === '--regime') {
      args.regime = next()
      if (!['any', 'wide', 'tight', 'forget'].includes(args.regime)) usage('--regime must be any, wide, tight or forget')
    }
    else if (a === '--security') {
      args.security = next()
      if (!['any', 'secret', 'open'].includes(args.security)) usage('--security must be any, secret or open')
    }
    else if (a === '--quiet') args.quiet = true
    else if (a === '--no-hostile') args.hostile = false
    else if (a === '--help' || a === '-h') usage()
    else usage(`unknown argument ${a}`)
  }
  if (args.seed === undefined) args.seed = Math.floor(Math.random() * 2 ** 31)
  for (const k of ['seconds', 'nodes', 'rate', 'hot', 'concurrency', 'seed']) {
    if (!Number.isFinite(args[k]) || args[k] < (k === 'seed' ? 0 : 1) || (k !== 'seconds' && k !== 'rate' && !Number.isInteger(args[k]))) {
      usage(`--${k} must be a ${k === 'seed' ? 'non-negative' : 'positive'} ${k === 'seconds' || k === 'rate' ? 'number' : 'integer'}`)
    }
  }
  return args
}

function usage(error) {
  if (error) console.error(`chaos: ${error}`)
  console.error('usage: npm run chaos -- --seconds S --seed N [--nodes 5] [--regime any|wide|tight|forget] [--security any|secret|open] [--rate ops/s per peer] [--hot keys] [--dir DIR] [--no-hostile] [--quiet]')
  process.exit(2)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const { IMPOSTOR } = require('./cluster')
const { Mallory } = require('./hostile')

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const { config, events: schedule } = plan({ seed: args.seed, seconds: args.seconds, nodes: args.nodes, regime: args.regime, security: args.security })
  const dir = args.dir || fs.mkdtempSync(path.join(os.tmpdir(), `peer-buckets-chaos-${args.seed}-`))
  fs.mkdirSync(dir, { recursive: true })
  const log = (line) => {
    if (!args.quiet) console.log(line)
  }
  console.log(`chaos: seed ${args.seed}, ${args.seconds} s, ${args.nodes} nodes, regime ${config.regime}, ${config.options.secret ? 'with a secret' : 'open'}; run directory ${dir}`)
  fs.writeFileSync(path.join(dir, 'plan.json'), JSON.stringify({ args, config, schedule }, null, 1))
  log(`  peers: ${config.peers.map((p) => `${p.id}${p.durable ? `(dataDir ${p.durability})` : '(memory)'} skew ${p.skew} ms`).join(', ')}`)

  const eventsFd = fs.openSync(path.join(dir, 'events.jsonl'), 'a')
  const events = []
  const note = (e) => {
    e = { t: Date.now(), ...e }
    events.push(e)
    fs.writeSync(eventsFd, JSON.stringify(e) + '\n')
    return e
  }

  // An impostor (a second process with a peer's id) gets a proxy of its own, so it is identified.
  const network = new Network([...config.peers.map((p) => p.id), ...(schedule.some((e) => e.kind === 'impostor') ? [IMPOSTOR] : [])])
  await network.listen()
  const cluster = new Cluster({
    dir,
    seed: args.seed,
    specs: config.peers,
    options: config.options,
    workload: { rate: args.rate, concurrency: args.concurrency, hotKeys: args.hot },
    network,
    onEvent: note,
  })
  const startFailures = []
  let harnessError
  // Built (when it is not up to date) before any peer starts, so the build takes nothing from the run.
  const mallory = args.hostile ? new Mallory({ dir, seed: args.seed, cluster, bucket: 'chaos', secret: config.options.secret, note, log }) : null

  const startPeer = async (id, skew) => {
    try {
      const r = await cluster.start(id, skew)
      note({ kind: 'started', node: id, run: r.run, skew: r.skew, inc: r.inc })
      return r
    } catch (err) {
      startFailures.push({ node: id, message: err.message })
      note({ kind: 'start-failed', node: id, message: err.message })
      return null
    }
  }

  try {
    await Promise.all(config.peers.map((p) => startPeer(p.id)))
    for (const r of cluster.live()) await r.request('go')
    const t0 = Date.now()
    note({ kind: 'go' })
    if (mallory) mallory.start()
    const counts = {}
    const apply = async (e) => {
      const { t, ...rest } = e
      counts[e.kind] = (counts[e.kind] || 0) + 1
      const base = { at: t, ...rest }
      switch (e.kind) {
        case 'partition':
        case 'bridge':
        case 'asym':
        case 'slow':
          network.apply(e)
          note(base)
          break
        case 'heal':
          network.heal(e.fault)
          note(base)
          break
        case 'isolate':
          network.apply({ ...e, kind: 'partition' })
          note(base)
          break
        case 'reach-one':
          // The bridge first, then the isolation lifted: no moment where everything is healed.
          network.apply({ ...e, kind: 'bridge' })
          network.heal(e.after)
          note(base)
          break
        case 'impostor': {
          if (cluster.impostor && !cluster.impostor.exited) break
          const r = await cluster.startImpostor(e.node).catch((err) => {
            note({ kind: 'note', note: `impostor of ${e.node} did not start: ${err.message}` })
            return null
          })
          if (r) note({ ...base, pid: r.pid })
          break
        }
        case 'impostor-end':
          if (!cluster.impostor || cluster.impostor.exited) break
          // Whatever it held in memory is gone: the checker counts it as a loss of that id's acks.
          note(base)
          await cluster.killImpostor()
          break
        case 'kill':
        case 'stop': {
          const r = cluster.running(e.node)
          if (!r) break
          note({ ...base, run: r.run })
          await (e.kind === 'kill' ? cluster.kill(e.node) : cluster.stop(e.node))
          break
        }
        case 'start': {
          if (cluster.running(e.node)) break
          const r = await startPeer(e.node, e.skew)
          if (r) await r.request('go').catch(() => {})
          break
        }
        case 'pause':
          if (!cluster.running(e.node)) break
          note({ ...base, run: cluster.running(e.node).run })
          cluster.pause(e.node)
          break
        case 'resume':
          if (!cluster.running(e.node)) break
          note({ ...base, run: cluster.running(e.node).run })
          cluster.resume(e.node)
          break
        default:
          throw new Error(`unknown fault ${e.kind}`)
      }
    }
    // Faults run in schedule order; one that takes time (a stop, a start) delays the next ones.
    const progress = setInterval(() => {
      const s = network.stats
      log(`  +${((Date.now() - t0) / 1000).toFixed(0)} s: ${cluster.live().length} running, faults active ${network.faults.size}, proxy ${s.accepted} conns (${s.refused} refused), ${(s.deliveredBytes / 1e6).toFixed(1)} MB delivered, ${(s.droppedBytes / 1e6).toFixed(1)} MB dropped`)
    }, 10000)
    const end = t0 + args.seconds * 1000
    for (const e of schedule) {
      if (t0 + e.t > end) break
      const wait = t0 + e.t - Date.now()
      if (wait > 0) await sleep(wait)
      await apply(e)
    }
    if (end > Date.now()) await sleep(end - Date.now())
    clearInterval(progress)

    // --- heal everything, let it settle, read every replica ---------------------------------------
    if (mallory) await mallory.stop()
    note({ kind: 'final-heal' })
    if (cluster.impostor && !cluster.impostor.exited) {
      note({ kind: 'impostor-end', node: cluster.impostor.id })
      await cluster.killImpostor()
    }
    network.healAll()
    for (const id of cluster.current.keys()) cluster.resume(id)
    // What the schedule still had for after the end: peers coming back (with a skew back in range).
    for (const e of schedule) {
      if (t0 + e.t <= end) continue
      if (e.kind === 'start' || e.kind === 'resume' || e.kind === 'stop') await apply(e)
    }
    for (const p of config.peers) {
      if (!cluster.running(p.id)) await startPeer(p.id)
    }
    const live = cluster.live()
    const quiesced = await Promise.allSettled(live.map((r) => r.request('quiesce', {}, 30000)))
    for (const [i, q] of quiesced.entries()) if (q.status === 'rejected') note({ kind: 'note', note: `${live[i].id} quiesce: ${q.reason.message}` })
    note({ kind: 'quiesced' })
    const settledIn = await waitForConvergence(cluster, config, 120000, log)
    note({ kind: 'converged', ms: settledIn.ms, converged: settledIn.converged })
    log(`  ${settledIn.converged ? 'converged' : 'did NOT converge'} ${(settledIn.ms / 1000).toFixed(1)} s after the final heal`)

    const keyList = historyKeys(dir)
    const replicas = []
    for (const r of cluster.live()) {
      const registers = {}
      let liveKeys = []
      let now = Date.now()
      for (let i = 0; i < keyList.length; i += 2000) {
        const part = await r.request('state', { keys: keyList.slice(i, i + 2000) }, 60000)
        Object.assign(registers, part.registers)
        liveKeys = part.live
        now = part.now
      }
      replicas.push({ node: r.id, run: r.run, inc: r.inc, registers, live: liveKeys, now })
    }
    const stats = {}
    for (const r of cluster.live()) stats[r.id] = await r.request('stats').catch((e) => ({ error: e.message }))
    // Every link must have gone through a proxy: every member address a peer knows is a proxy's.
    const proxies = new Set(network.ingress.values())
    const bypass = []
    for (const r of cluster.live()) {
      const peers = await r.request('peers').catch(() => [])
      for (const p of peers) if (p.id !== 'mallory' && !proxies.has(p.address)) bypass.push(`${r.id} knows ${p.id} at ${p.address}`)
    }

    // Shut down cleanly: from here on no exit is a crash.
    for (const r of cluster.live()) r.expectedExit = true
    await Promise.all(cluster.live().map((r) => cluster.stop(r.id)))
    clearTimeout(progress)

    const panics = []
    for (const r of cluster.all) {
      const text = fs.existsSync(r.log) ? fs.readFileSync(r.log, 'utf8') : ''
      for (const line of text.split('\n')) if (/panicked at|RUST_BACKTRACE|FATAL ERROR|Segmentation fault/.test(line)) panics.push({ node: r.id, run: r.run, line: line.slice(0, 300), log: r.log })
    }
    const final = { replicas, now: Date.now(), panics, startFailures, runsStarted: cluster.all.length, converged: settledIn, stats, proxy: network.stats, faultCounts: counts, bypass }
    fs.writeFileSync(path.join(dir, 'final.json'), JSON.stringify(final))
    fs.closeSync(eventsFd)
    await network.close()

    // --- check ------------------------------------------------------------------------------------
    const run = loadRun(dir)
    // One history file for the whole run, in time order (the per-run files are what was written live).
    const merged = run.history.slice().sort((a, b) => a.t - b.t)
    fs.writeFileSync(path.join(dir, 'history.jsonl'), merged.map((h) => JSON.stringify(h)).join('\n') + '\n')
    const result = check(run)
    const s = result.stats
    const opCounts = { set: 0, delete: 0, touch: 0 }
    let acked = 0
    let timeouts = 0
    for (const op of result.ops.values()) {
      opCounts[op.op]++
      if (op.outcome && op.outcome.type === 'ok' && op.ack && op.ack !== 'local') acked++
      if (op.outcome && op.outcome.code === 'EACKTIMEOUT') timeouts++
    }
    const faultTotal = Object.entries(counts).filter(([k]) => k !== 'heal' && k !== 'resume' && k !== 'start').reduce((a, [, n]) => a + n, 0)
    const faultText = Object.entries(counts).filter(([k]) => k !== 'heal' && k !== 'resume' && k !== 'start').map(([k, n]) => `${k} ${n}`).join(', ')
    const refused = Object.values(stats).reduce((a, st) => a + (st.clockSkewRefused || 0), 0)
    const collected = Object.values(stats).reduce((a, st) => a + (st.tombstonesCollected || 0), 0)
    const hostile = mallory ? mallory.verdict() : null
    const passed = result.report.passed && settledIn.converged && bypass.length === 0 && (!hostile || hostile.violations.length === 0)
    console.log(
      `chaos seed ${args.seed} (${args.seconds} s, ${args.nodes} nodes, ${config.regime}, ${config.options.secret ? 'secret' : 'open'}): ` +
        `operations ${s.ops} (set ${opCounts.set}, delete ${opCounts.delete}, touch ${opCounts.touch}; ${acked} acknowledged, ${timeouts} ack timeouts, ${s.raced} raced) · ` +
        `faults ${faultTotal} (${faultText || 'none'}; ${refused} links refused for skew, ${collected} tombstones collected, ${(network.stats.deliveredBytes / 1e6).toFixed(1)} MB through the proxies) · ` +
        (hostile ? `hostile member: ${hostile.attacks} attacks (closed/kept: ${hostile.summary}) · ` : '') +
        `checks: ${summarize(result)}${settledIn.converged ? '' : ', convergence FAILED'}${bypass.length ? ', proxy bypassed' : ''}${hostile && hostile.violations.length ? ', hostile member not refused' : ''} → ${passed ? 'PASS' : 'FAIL'}`,
    )
    if (!passed) {
      const first = result.report.first()
      console.log(`FAILED with seed ${args.seed} (replay: npm run chaos -- --seconds ${args.seconds} --seed ${args.seed} --nodes ${args.nodes}${args.regime === 'any' ? '' : ` --regime ${args.regime}`}${args.security === 'any' ? '' : ` --security ${args.security}`}); run directory ${dir}`)
      if (!settledIn.converged) console.log(`  replicas did not converge within 120 s of the final heal: ${settledIn.detail}`)
      if (bypass.length) console.log(`  links that bypassed the proxies: ${bypass.join('; ')}`)
      if (hostile && hostile.violations.length) console.log(`  hostile member: ${hostile.violations.slice(0, 5).join('; ')}`)
      if (first) {
        console.log(`  first violation, check ${first.check} (${first.name}): ${first.message}`)
        for (const line of explain(result, run, first)) console.log(line)
      }
      fs.writeFileSync(path.join(dir, 'violations.json'), JSON.stringify(result.report.checks, null, 1))
    }
    process.exitCode = passed ? 0 : 1
  } catch (err) {
    harnessError = err
  } finally {
    if (mallory) await mallory.stop().catch(() => {})
    for (const r of cluster.all) {
      if (!r.exited) {
        r.expectedExit = true
        r.signal_('SIGCONT')
        r.signal_('SIGKILL')
      }
    }
  }
  if (harnessError) {
    console.error(`chaos: the harness failed (seed ${args.seed}, run directory ${dir}): ${harnessError.stack}`)
    process.exitCode = 2
  }
  // Children are gone; do not wait on stray timers.
  setImmediate(() => process.exit(process.exitCode))
}

/** Every key the history names: written keys and each run's marker key. */
function historyKeys(dir) {
  const keys = new Set()
  for (const f of fs.readdirSync(path.join(dir, 'history'))) {
    for (const line of fs.readFileSync(path.join(dir, 'history', f), 'utf8').split('\n')) {
      if (!line) continue
      try {
        const h = JSON.parse(line)
        if (h.type === 'invoke') keys.add(h.key)
        else if (h.type === 'ready') keys.add(`inc.${h.node}.${h.run}`)
      } catch {}
    }
  }
  return [...keys]
}

/** The keys whose digest entries differ between replicas (at most a few), for the progress log. */
async function differences(live, window) {
  const answers = await Promise.all(live.map((r) => r.request('digest', { window, detail: true }, 60000).catch(() => null)))
  if (answers.some((a) => !a)) return '    (a replica did not answer)'
  const maps = answers.map((a) => new Map(a.parts.map((p) => [p[0], JSON.stringify(p.slice(1))])))
  const keys = new Set(maps.flatMap((m) => [...m.keys()]))
  const lines = []
  let count = 0
  for (const key of keys) {
    const texts = maps.map((m) => m.get(key) || 'absent')
    if (new Set(texts).size > 1) {
      count++
      if (lines.length < 5) lines.push(`    ${key}: ${texts.map((t, i) => `${live[i].id}: ${t}`).join(' | ')}`)
    }
  }
  return `    ${count} keys differ (now ${Date.now()}, window ${window} ms)${lines.length ? '\n' + lines.join('\n') : ''}`
}

/**
 * Waits until every replica is linked to every other and their digests (of the registers no clock
 * could soon call dead) agree on two polls in a row. Resolves { converged, ms, detail }.
 */
async function waitForConvergence(cluster, config, timeout, log) {
  const t0 = Date.now()
  const window = config.skewRange + 5000
  let previous = null
  let detail = ''
  let lastLog = Date.now()
  while (Date.now() - t0 < timeout) {
    const live = cluster.live()
    const answers = await Promise.allSettled(live.map((r) => r.request('digest', { window }, 20000)))
    const ok = answers.every((a) => a.status === 'fulfilled')
    if (ok) {
      const digests = answers.map((a) => a.value.digest)
      const linked = answers.every((a, i) => {
        const others = live.filter((_, j) => j !== i).map((r) => r.id)
        return others.every((id) => a.value.peers.some((p) => p.id === id && p.state === 'connected'))
      })
      const same = digests.every((d) => d === digests[0])
      const key = digests[0]
      if (linked && same && previous === key) return { converged: true, ms: Date.now() - t0 }
      previous = linked && same ? key : null
      detail = `${linked ? 'all linked' : 'not all linked: ' + answers.map((a, i) => `${live[i].id}→[${a.value.peers.filter((p) => p.state === 'connected').map((p) => p.id)}]`).join(' ')}; ` +
        answers.map((a, i) => `${live[i].id} ${a.value.digest.slice(0, 8)} (${a.value.count} keys)`).join(', ')
    } else {
      detail = answers.map((a, i) => (a.status === 'rejected' ? `${live[i].id}: ${a.reason.message}` : '')).filter(Boolean).join('; ')
    }
    if (log && Date.now() - lastLog >= 5000) {
      lastLog = Date.now()
      log(`  converging (${((Date.now() - t0) / 1000).toFixed(0)} s): ${detail}`)
      if (ok) log(await differences(live, window))
    }
    await sleep(1000)
  }
  if (log) log(`  convergence: ${detail}`)
  return { converged: false, ms: Date.now() - t0, detail }
}

main().catch((err) => {
  console.error(`chaos: ${err.stack}`)
  process.exit(2)
})
