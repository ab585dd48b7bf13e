#!/usr/bin/env node
'use strict'
// `npm run bench`: peer-buckets side by side with Redis (ioredis) and scuttlebutt, in one run, on one
// machine. `--quick` shrinks every size (both sides alike); `--json` ends the output with one JSON line.
// Figures (issue 6): 1 get, 2 set, 3 three writers until converged, 4 write→event latency, 5 join,
// 6 catch-up, 7 memory per key; (issue 7) set with a dataDir against Redis with an AOF; (issue 14) the
// event loop's longest stalls while a dataDir opens and closes and while a peer joins (bench/lifecycle.js);
// (issue 15) count/scan and SessionStore's whole-store calls, with the longest stall of each. Every process it starts is killed at the end.

const fs = require('node:fs')
const path = require('node:path')
const { machine, withTimeout } = require('./lib/util')
const procs = require('./lib/procs')
const { INSTALL_HINT, redisVersion, startRedis, waitReplicasCaughtUp } = require('./lib/redis')
const report = require('./lib/report')
const local = require('./sections/local')
const replicated = require('./sections/replicated')
const latency = require('./sections/latency')
const join = require('./sections/join')
const catchup = require('./sections/catchup')
const durable = require('./sections/durable')
const lifecycle = require('./lifecycle')
const scan = require('./sections/scan')
const sessions = require('./sections/sessions')

/** Which build of the product was measured: the commit, whether the tree differs, and the addon file. */
function productState() {
  const { spawnSync } = require('node:child_process')
  const crypto = require('node:crypto')
  const root = path.join(__dirname, '..')
  const git = (...a) => {
    const r = spawnSync('git', a, { cwd: root, encoding: 'utf8' })
    return r.status === 0 ? r.stdout.trim() : null
  }
  const dirty = (git('status', '--porcelain') || '').split('\n').filter((l) => l && !l.slice(3).startsWith('bench/'))
  const out = { commit: git('rev-parse', '--short', 'HEAD'), dirty_files_outside_bench: dirty.length, addon: null }
  try {
    const file = fs.readdirSync(root).find((f) => f.endsWith('.node'))
    if (file) {
      const p = path.join(root, file)
      const st = fs.statSync(p)
      out.addon = {
        file,
        built: st.mtime.toISOString(),
        sha256: crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex').slice(0, 12),
      }
    }
  } catch {}
  return out
}

const argv = process.argv.slice(2)
if (argv.includes('--help') || argv.includes('-h')) {
  console.log('usage: npm run bench [-- --quick] [--json] [--only=local,durable,replicated,latency,scuttlebutt,join,memory,catchup,lifecycle,scan,sessions] [--no-redis] [--no-compression]\n  --quick: smaller sizes (under 3 min); --json: last line is one JSON object of the figures;\n  --only: some sections (writes bench/results/partial.json instead of latest.json + ratios.svg)')
  process.exit(0)
}
const QUICK = argv.includes('--quick')
const JSON_OUT = argv.includes('--json')
const NO_REDIS = argv.includes('--no-redis')
// Every peer the bench starts sends plain frames: the throughput and latency compression costs.
const NO_COMPRESSION = argv.includes('--no-compression')
if (NO_COMPRESSION) process.env.BENCH_COMPRESSION = 'off'
const onlyArg = argv.find((a) => a.startsWith('--only='))
const ONLY = onlyArg ? new Set(onlyArg.slice(7).split(',')) : null
const want = (name) => !ONLY || ONLY.has(name)
const ONLY_ = ONLY || new Set()

const CONFIG = {
  full: {
    rounds: 7,
    getObjOps: 1_000_000,
    getStrOps: 3_000_000,
    setOps: 500_000,
    redisOps: 200_000,
    replicatedN: 300_000,
    // scuttlebutt slows down more than linearly with the burst size (300k keys: ~3.5k ops/s, >80 s a
    // round, measured once): it gets the quick size, where it is fastest, which flatters its figure.
    scuttlebuttN: 60_000,
    scuttlebuttRounds: 3,
    convergeTimeoutMs: 60_000,
    scuttlebuttTimeoutMs: 120_000,
    latencySamples: 2000,
    joinN: 1_000_000,
    memN: 1_000_000,
    joinTimeoutMs: 120_000,
    catchupTotal: 200_000,
    catchupMissed: 10_000,
    scanN: 1_000_000,
    sessionsN: 1_000_000,
    durableOps: 100_000,
    durableRedisOps: 50_000,
    durableSeqOps: 1_000,
    durableRounds: 5,
    lifecycleN: 1_000_000,
    budgetMs: 10 * 60_000,
  },
  quick: {
    rounds: 5,
    getObjOps: 500_000,
    getStrOps: 1_500_000,
    setOps: 300_000,
    redisOps: 100_000,
    replicatedN: 60_000,
    scuttlebuttN: 60_000,
    scuttlebuttRounds: 3,
    convergeTimeoutMs: 30_000,
    scuttlebuttTimeoutMs: 30_000,
    latencySamples: 1000,
    joinN: 100_000,
    memN: 100_000,
    joinTimeoutMs: 45_000,
    catchupTotal: 20_000,
    catchupMissed: 1_000,
    scanN: 100_000,
    sessionsN: 100_000,
    durableOps: 30_000,
    durableRedisOps: 20_000,
    durableSeqOps: 300,
    durableRounds: 3,
    lifecycleN: 100_000,
    budgetMs: 170_000,
  },
}

const cfg = CONFIG[QUICK ? 'quick' : 'full']
const started = Date.now()
const log = (...a) => console.log(...a)

const figures = Object.fromEntries(report.JSON_KEYS.map((k) => [k, null]))
const extra = { join_n: cfg.joinN, mem_n: cfg.memN, errors: [], skipped: [] }
const details = {}

// A section that runs past its limit is abandoned (its processes are killed at the end, like all).
const SECTION_LIMIT_MS = QUICK ? 120_000 : 360_000

async function section(name, fn) {
  if (Date.now() - started > cfg.budgetMs) {
    extra.skipped.push(name)
    log(`- ${name}: skipped (time budget of ${cfg.budgetMs / 1000} s used up)`)
    return undefined
  }
  const t0 = Date.now()
  try {
    const r = await withTimeout(fn(), SECTION_LIMIT_MS, name)
    log(`  (${name}: ${((Date.now() - t0) / 1000).toFixed(1)} s)`)
    return r
  } catch (err) {
    extra.errors.push({ section: name, error: String((err && err.message) || err) })
    log(`! ${name} failed: ${(err && err.stack) || err}`)
    return undefined
  }
}

async function main() {
  const stale = procs.reapStale()
  procs.installSignalHandlers()
  const m = machine()
  const rv = NO_REDIS ? null : redisVersion()
  const versions = {
    'peer-buckets': require('../package.json').version,
    ioredis: require('ioredis/package.json').version,
    scuttlebutt: require('scuttlebutt/package.json').version,
    redis: rv,
  }
  log(`peer-buckets bench${QUICK ? ' (--quick)' : ''}${NO_COMPRESSION ? ' (--no-compression)' : ''} — ${new Date().toISOString()}`)
  log(`machine: ${m.cpu}, ${m.cores} cores, ${m.memory_gib} GiB, ${m.os}; node ${m.node}; ` +
    `load average at start ${m.loadavg.map((x) => x.toFixed(2)).join(' ')}${m.loadavg[0] > 0.5 ? ' (other work is running: figures are noisier)' : ''}`)
  const product = productState()
  versions.product = product
  log(`product: commit ${product.commit}${product.dirty_files_outside_bench ? ` + ${product.dirty_files_outside_bench} changed file(s)` : ''}` +
    (product.addon ? `, addon ${product.addon.file} built ${product.addon.built} (sha256 ${product.addon.sha256}…)` : ', addon not built'))
  log(`versions: peer-buckets ${versions['peer-buckets']}, redis-server ${rv || 'not installed'}, ioredis ${versions.ioredis}, scuttlebutt ${versions.scuttlebutt}`)
  log(`workload: express-session records of about ${Buffer.byteLength(require('./lib/workload').SESSION_JSON)} bytes of JSON, each its own (random ids, times and CSRF secret, seeded), keys sess:<32-character id>; median of ${cfg.rounds} rounds`)
  if (stale) log(`(killed ${stale} process(es) left by an earlier run that was killed)`)
  if (!rv && !NO_REDIS) log('\n' + INSTALL_HINT + '\n')

  const ctx = { cfg, log, quick: QUICK, redis: null, mesh: null }
  const servers = []
  try {
    if (rv) {
      try {
        const primary = await startRedis()
        servers.push(primary)
        ctx.redis = { primary, replicas: [] }
      } catch (err) {
        extra.errors.push({ section: 'redis start', error: err.message })
        log(`! could not start redis-server: ${err.message}`)
      }
    }

    // 1, 2: local get and set (against a standalone Redis: no replica load on it yet).
    if (want('local')) {
      log('\n[1, 2] local get and set, one Node process')
      const l = await section('local get/set', () => local.run(ctx))
      if (l) {
        details.local = l.pb
        figures.get_obj_ops = l.pb.get_obj.median
        figures.get_obj_frozen_ops = l.pb.get_obj_frozen.median
        figures.get_str_ops = l.pb.get_str.median
        figures.set_ops = l.pb.set.median
        if (l.redis) {
          details.local_redis = l.redis
          figures.redis_get_pipelined_ops = l.redis.get_obj.median
          extra.redis_get_str_ops = l.redis.get_str.median
          figures.redis_set_pipelined_ops = l.redis.set.median
        }
      }
    }

    // Issue 7: set with a dataDir ('strict', 'relaxed') and the memory store, against Redis with an AOF.
    if (want('durable')) {
      log(`\n[D] durable set: dataDir 'strict' / 'relaxed' and the memory store, against Redis with appendonly yes`)
      const d = await section('durable set', () => durable.run(ctx))
      if (d) {
        details.durable = d
        figures.set_memory_inflight_ops = d.memory.median
        figures.set_strict_ops = d.strict.median
        figures.set_relaxed_ops = d.relaxed.median
        figures.set_strict_seq_ops = d.strict_seq.median
        if (d.redis_always) figures.redis_aof_always_ops = d.redis_always.median
        if (d.redis_everysec) figures.redis_aof_everysec_ops = d.redis_everysec.median
        if (d.redis_always_seq) figures.redis_aof_always_seq_ops = d.redis_always_seq.median
      }
    }

    if (ctx.redis && (want('replicated') || want('latency') || want('join') || want('memory'))) {
      await section('redis replicas start', async () => {
        for (let i = 0; i < 2; i++) {
          const r = await startRedis({ replicaOf: ctx.redis.primary.port })
          servers.push(r)
          ctx.redis.replicas.push(r)
        }
        const p = ctx.redis.primary.client()
        const rs = ctx.redis.replicas.map((r) => r.client())
        try {
          await waitReplicasCaughtUp(p, rs, 20_000)
        } finally {
          p.disconnect()
          rs.forEach((c) => c.disconnect())
        }
      })
      if (ctx.redis.replicas.length < 2) ctx.redis.replicas = null
    }
    const redisReplicated = () => ctx.redis && ctx.redis.replicas

    // 3, 4: three writers; then latency on the same peer mesh.
    if (want('replicated') || want('latency')) {
      try {
        if (want('replicated')) {
          log('\n[3] three processes writing at once until every replica holds everything')
          const pb = await section('replicated peer-buckets', () => replicated.peerBuckets(ctx))
          if (pb) {
            details.replicated = pb
            figures.replicated_3w_ops = pb.median
          }
        }
        if (want('latency')) {
          log('\n[4] write on one process → change event / visible on another')
          if (!ctx.mesh) {
            await section('peer mesh for latency', async () => {
              ctx.mesh = await replicated.startPeerMesh('pblat')
            })
          }
          if (ctx.mesh) {
            const l = await section('latency peer-buckets', () => latency.peerBuckets(ctx))
            if (l) {
              details.latency = l
              figures.latency_p50_us = l.p50
              figures.latency_p99_us = l.p99
            }
          }
          if (redisReplicated()) {
            const l = await section('latency redis', () => latency.redis(ctx))
            if (l) {
              details.latency_redis = l
              figures.redis_latency_p50_us = l.p50
              figures.redis_latency_p99_us = l.p99
            }
            const raw = await section('latency redis (raw sockets)', () => latency.redisRaw(ctx))
            if (raw) details.latency_redis_raw_sockets = raw
          }
        }
      } finally {
        if (ctx.mesh) await procs.killAll(ctx.mesh.workers)
        ctx.mesh = null
      }
      if (want('replicated')) {
        log('\n[3] (alternatives)')
        if (want('scuttlebutt') || ONLY_.has('replicated')) {
          const sb = await section('replicated scuttlebutt', () => replicated.scuttlebutt(ctx))
          if (sb) {
            details.scuttlebutt = sb
            figures.scuttlebutt_3w_ops = sb.median
          }
        }
        if (redisReplicated()) {
          const r = await section('replicated redis', () => replicated.redis(ctx))
          if (r) {
            details.replicated_redis = r
            figures.redis_replicated_ops = r.median
          }
        }
      }
    } else if (want('scuttlebutt')) {
      const sb = await section('replicated scuttlebutt', () => replicated.scuttlebutt(ctx))
      if (sb) figures.scuttlebutt_3w_ops = sb.median
    }

    // 7 and 5: memory per key, then join.
    if (want('memory')) {
      log(`\n[7] memory per key over ${cfg.memN.toLocaleString()} keys`)
      const mem = await section('memory peer-buckets', () => join.peerMemory(ctx))
      if (mem) {
        details.memory = mem
        figures.bytes_per_key = mem.bytes_per_key
      }
      const memFrozen = await section("memory peer-buckets, reads 'frozen'", () => join.peerMemory(ctx, { frozen: true }))
      if (memFrozen) {
        details.memory_frozen = memFrozen
        figures.bytes_per_key_frozen = memFrozen.bytes_per_key
      }
    }
    if (want('join')) {
      log(`\n[5] a peer joining a network holding ${cfg.joinN.toLocaleString()} keys`)
      const j = await section('join peer-buckets', () => join.peerJoin(ctx))
      if (j) {
        details.join = j
        figures.join_1m_ms = j.ms
        figures.join_bytes_per_byte = j.bytes_received_per_data_byte
        figures.join_bytes_per_byte_uncompressed = j.bytes_received_uncompressed_per_data_byte
      }
    }
    if (redisReplicated() && (want('join') || want('memory'))) {
      const r = await section('join + memory redis', () => join.redisMemoryAndJoin(ctx))
      if (r) {
        details.redis_join_memory = r
        if (want('memory')) figures.redis_bytes_per_key = r.bytes_per_key
        if (want('join')) figures.redis_join_1m_ms = r.join_ms
      }
    }

    // 6: catch-up of a peer that comes back on its dataDir.
    if (want('catchup')) {
      const c = await section('catch-up', () => catchup.peerBuckets(ctx))
      if (c) {
        details.catchup = c
        figures.catchup_bytes_per_missed_byte = c.bytes_per_missed_byte
        figures.catchup_bytes_per_missed_byte_uncompressed = c.bytes_per_missed_byte_uncompressed
        figures.live_bytes_per_byte = c.live_bytes_per_byte
        figures.live_bytes_per_byte_uncompressed = c.live_bytes_per_byte_uncompressed
      }
    }

    // Issue 14: the event loop's longest stall while a dataDir opens and closes, and while a peer joins.
    if (want('lifecycle')) {
      log(`\n[L] event-loop stalls: open and close of a dataDir, and a join, of ${cfg.lifecycleN.toLocaleString()} keys (goal ≤ 20 ms each)`)
      const l = await section('lifecycle stalls', () => lifecycle.run({ n: cfg.lifecycleN, log }))
      if (l) {
        details.lifecycle = l
        extra.lifecycle_stalls_ms = { open: l.open_stall_ms, close: l.close_stall_ms, join: l.join_stall_ms }
      }
    }

    // count(prefix) and a full paged scan, with the longest event-loop stall of each.
    if (want('scan')) {
      const sc = await section('count and scan', () => scan.run(ctx))
      if (sc) details.scan = sc
    }

    // SessionStore's all(), length(), ids() and clear(), with the longest event-loop stall of each.
    if (want('sessions')) {
      log(`\n[S] SessionStore length(), ids(), all() and clear() over ${cfg.sessionsN.toLocaleString()} sessions, with the longest event-loop stall of each`)
      const ss = await section('session store', () => sessions.run(ctx))
      if (ss) details.sessions = ss
    }
  } finally {
    await Promise.all(servers.map((s) => s.stop().catch(() => {})))
  }

  const seconds = (Date.now() - started) / 1000
  const { text, rows } = report.renderTable(figures, extra)
  log(`\n=== results (${QUICK ? 'quick' : 'full'} run, ${seconds.toFixed(0)} s; ${m.cpu}, ${m.cores} cores, node ${m.node}) ===`)
  log(text)
  if (extra.errors.length) log(`\nerrors: ${extra.errors.map((e) => `${e.section}: ${e.error}`).join('; ')}`)
  if (extra.skipped.length) log(`skipped: ${extra.skipped.join(', ')}`)

  const dir = path.join(__dirname, 'results')
  fs.mkdirSync(dir, { recursive: true })
  const out = {
    date: new Date().toISOString(),
    mode: QUICK ? 'quick' : 'full',
    compression: !NO_COMPRESSION,
    seconds,
    machine: m,
    versions,
    config: cfg,
    figures,
    extra,
    comparisons: rows.map(({ n, what, ours, theirs, alt, ratio, goalText, met }) => ({ n, what, ours, theirs, alt, ratio, goal: goalText, met })),
    issue2_targets: report.issue2Targets(figures),
    details,
  }
  if (ONLY) {
    // A partial run (--only) does not replace the results of the last whole run.
    out.only = [...ONLY]
    fs.writeFileSync(path.join(dir, 'partial.json'), JSON.stringify(out, null, 2) + '\n')
    log(`\nwrote bench/results/partial.json (an --only run leaves latest.json and ratios.svg alone)`)
  } else if (NO_COMPRESSION) {
    // The run without compression is set beside the last whole run, not in its place.
    fs.writeFileSync(path.join(dir, 'no-compression.json'), JSON.stringify(out, null, 2) + '\n')
    log(`\nwrote bench/results/no-compression.json (a --no-compression run leaves latest.json and ratios.svg alone)`)
  } else {
    fs.writeFileSync(path.join(dir, 'latest.json'), JSON.stringify(out, null, 2) + '\n')
    fs.writeFileSync(path.join(dir, 'ratios.svg'), report.renderSvg(rows, m, out.mode))
    log(`\nwrote bench/results/latest.json and bench/results/ratios.svg`)
  }
  if (JSON_OUT) log(report.jsonLine(figures))
  return extra.errors.length ? 1 : 0
}

main().then(
  (code) => {
    procs.killAllSync()
    process.exit(code)
  },
  (err) => {
    console.error(err)
    procs.killAllSync()
    process.exit(1)
  },
)
