'use strict'
// The checker of a chaos run: reads the history (every peer run's JSON lines), the harness's fault log
// and the final registers of every live replica, and verifies
//   1 identical   all live replicas hold the same registers (a dead entry may be collected on some);
//   2 acked       every write acknowledged with 'one', 'majority' or 'all' (or that timed out with
//                 acks) is present or superseded by a write with a larger (hlc, origin);
//   3 deletes     no key whose winning write is a delete is present, and no surviving delete is beaten
//                 by an older value;
//   4 winners     for every key the surviving register is the largest (hlc, origin) among the writes
//                 known to have reached a surviving replica, and it is a write someone made, with the
//                 value that write carried;
//   5 crashes     no process exited (or panicked) except those the schedule killed or stopped;
//   6 local       a local write always takes effect on its own replica (it is never beaten by a
//                 register the replica held before it).
// "Reached a surviving replica": the writer's run is alive at the end; or the writer keeps a data
// directory and stopped cleanly, or was killed after a strict write settled (it is on disk); or peers
// acknowledged it and not all of them (that many of them) lost their memory afterwards.
//
// Usage as a program: node chaos/checker.js <run directory>  (re-checks a finished run).

const fs = require('node:fs')
const path = require('node:path')

function cmpStamp(a, b) {
  const ha = BigInt(a.hlc)
  const hb = BigInt(b.hlc)
  if (ha !== hb) return ha < hb ? -1 : 1
  if (a.origin !== b.origin) return Buffer.compare(Buffer.from(a.origin), Buffer.from(b.origin))
  const ia = BigInt('0x' + a.inc)
  const ib = BigInt('0x' + b.inc)
  return ia === ib ? 0 : ia < ib ? -1 : 1
}

const stampKey = (s) => (s ? `${s.hlc}/${s.origin}/${s.inc}` : 'none')

function infoStamp(info) {
  return { hlc: info.hlc, origin: info.origin, inc: info.incarnation }
}

function touchStamp(info) {
  return info.touch ? { hlc: info.touch.hlc, origin: info.touch.origin, inc: info.touch.incarnation } : null
}

/** A register as compared between replicas. */
function registerText(info) {
  if (!info) return 'absent'
  return JSON.stringify([
    info.deleted,
    info.hlc,
    info.origin,
    info.incarnation,
    info.expires,
    info.touch ? [info.touch.hlc, info.touch.origin, info.touch.incarnation, info.touch.expires] : null,
  ])
}

/** The expiry in force: a touch register's (it is newer than the value), else the value's. */
function expiryOf(info) {
  return info.touch ? info.touch.expires : info.expires || 0
}

function readJsonLines(file) {
  const out = []
  const text = fs.readFileSync(file, 'utf8')
  for (const line of text.split('\n')) {
    if (!line) continue
    try {
      out.push(JSON.parse(line))
    } catch {
      // a line cut by a SIGKILL mid-write: only the last line of a file can be
    }
  }
  return out
}

/** Loads a run directory: plan, fault log, history and final state. */
function loadRun(dir) {
  const plan = JSON.parse(fs.readFileSync(path.join(dir, 'plan.json'), 'utf8'))
  const events = readJsonLines(path.join(dir, 'events.jsonl'))
  const history = []
  for (const f of fs.readdirSync(path.join(dir, 'history')).sort()) {
    history.push(...readJsonLines(path.join(dir, 'history', f)))
  }
  const final = JSON.parse(fs.readFileSync(path.join(dir, 'final.json'), 'utf8'))
  return { plan, events, history, final }
}

class Report {
  constructor() {
    this.checks = {}
    for (const [n, name] of [[1, 'identical'], [2, 'acked'], [3, 'deletes'], [4, 'winners'], [5, 'crashes'], [6, 'local']]) {
      this.checks[n] = { name, checked: 0, violations: [] }
    }
  }

  ok(n, count = 1) {
    this.checks[n].checked += count
  }

  fail(n, v) {
    this.checks[n].checked++
    this.checks[n].violations.push(v)
  }

  get passed() {
    return Object.values(this.checks).every((c) => c.violations.length === 0)
  }

  /** The first violation of the lowest-numbered failed check. */
  first() {
    for (const [n, c] of Object.entries(this.checks)) if (c.violations.length) return { check: Number(n), name: c.name, ...c.violations[0] }
    return null
  }
}

function check({ plan, events, history, final }) {
  const report = new Report()
  const config = plan.config
  const durable = new Map(config.peers.map((p) => [p.id, p.durable ? p.durability : null]))
  const window = config.skewRange + 2000

  // --- the history, per operation --------------------------------------------------------------
  const ops = new Map() // op id -> { ...invoke, applied, outcome }
  const runs = new Map() // `${node}.${run}` -> { node, run, inc, ended: { kind, t } | null }
  const runsByInc = new Map() // `${node}/${inc}` -> run records (a dataDir peer stopped cleanly keeps its incarnation)
  const markerKeys = new Set()
  for (const h of history) {
    if (h.type === 'start') {
      runs.set(`${h.node}.${h.run}`, { node: h.node, run: h.run, start: h.t, inc: null, ended: null })
    } else if (h.type === 'ready') {
      const r = runs.get(`${h.node}.${h.run}`)
      if (r) {
        r.inc = h.inc
        const k = `${h.node}/${h.inc}`
        if (!runsByInc.has(k)) runsByInc.set(k, [])
        runsByInc.get(k).push(r)
      }
      markerKeys.add(`inc.${h.node}.${h.run}`)
    } else if (h.type === 'invoke') {
      ops.set(h.id, { ...h, applied: null, outcome: null })
    } else if (h.type === 'applied') {
      const op = ops.get(h.id)
      if (op) op.applied = h
    } else if (h.type === 'ok' || h.type === 'fail') {
      const op = ops.get(h.id)
      if (op) op.outcome = h
    }
  }
  // How each run ended, from the harness's log: kill, stop (clean close) or crash.
  const lossy = [] // { node, t, kind }: a process lost what it held in memory (see lostAt)
  for (const e of events) {
    if (e.kind === 'kill' || e.kind === 'stop' || e.kind === 'crash' || e.kind === 'hang') {
      const r = runs.get(`${e.node}.${e.run}`)
      if (r && !r.ended) r.ended = { kind: e.kind, t: e.t }
      lossy.push({ node: e.node, t: e.t, kind: e.kind })
    }
    // A second process with that id acknowledged under it, and was killed.
    if (e.kind === 'impostor-end') lossy.push({ node: e.node, t: e.t, kind: 'kill' })
  }
  const liveRuns = new Set(final.replicas.map((r) => `${r.node}.${r.run}`))

  /** Whether `node` may have lost, after time `t`, a write it had received from another peer. */
  const lostAfter = (node, t) =>
    lossy.some((e) => e.node === node && e.t > t && (e.kind !== 'stop' || !durable.get(node)))

  /** Whether write `op` is known to have reached a replica that survived to the end. */
  function survives(op) {
    const run = runs.get(`${op.node}.${op.run}`)
    if (liveRuns.has(`${op.node}.${op.run}`)) return true
    const d = durable.get(op.node)
    if (run && run.ended && d) {
      if (run.ended.kind === 'stop') return true
      if (d === 'strict' && op.outcome && op.outcome.type === 'ok' && op.outcome.t < run.ended.t) return true
    }
    const t = op.t
    if (op.outcome && op.outcome.type === 'fail' && Array.isArray(op.outcome.acked) && op.outcome.acked.length) {
      return op.outcome.acked.some((node) => !lostAfter(node, t))
    }
    if (op.outcome && op.outcome.type === 'ok' && op.ack && op.ack !== 'local') {
      // 'all' never needs fewer than 'majority'.
      const need = op.ack === 'one' ? 1 : Math.ceil((op.members || 0) / 2)
      if (need === 0) return false
      const others = config.peers.map((p) => p.id).filter((id) => id !== op.node)
      const lost = others.filter((id) => lostAfter(id, t)).length
      return lost < need
    }
    return false
  }

  const acknowledged = (op) =>
    (op.outcome && op.outcome.type === 'ok' && op.ack && op.ack !== 'local') ||
    (op.outcome && op.outcome.type === 'fail' && Array.isArray(op.outcome.acked) && op.outcome.acked.length > 0)

  // --- (5) crashes ------------------------------------------------------------------------------
  for (const e of events) {
    if (e.kind === 'crash') report.fail(5, { message: `${e.node} (run ${e.run}) exited on its own (code ${e.code}, signal ${e.signal})`, node: e.node, detail: e })
  }
  for (const e of events) {
    if (e.kind === 'hang') report.fail(5, { message: `${e.node} (run ${e.run}) ${e.note}`, node: e.node, detail: e })
  }
  for (const p of final.panics || []) report.fail(5, { message: `${p.node} (run ${p.run}) panicked: ${p.line}`, node: p.node, detail: p })
  for (const f of final.startFailures || []) report.fail(5, { message: `${f.node} failed to start: ${f.message}`, node: f.node, detail: f })
  report.ok(5, 0)
  if (report.checks[5].violations.length === 0) report.checks[5].checked = final.runsStarted || 0

  // --- (6) local writes take effect -------------------------------------------------------------
  let raced = 0
  for (const op of ops.values()) {
    const a = op.applied
    if (!a || op.op === 'touch') continue
    if (a.stamp) {
      report.ok(6)
      continue
    }
    if (a.lostTo && a.before && stampKey(a.lostTo) === stampKey(a.before)) {
      report.fail(6, {
        message: `${op.op} ${op.key} by ${op.id} did not take effect on its own replica: it stayed ${stampKey(a.before)}, a register held before the write`,
        key: op.key,
        op: op.id,
      })
    } else if (!a.lostTo) {
      report.fail(6, { message: `${op.op} ${op.key} by ${op.id}: nothing stored right after the write`, key: op.key, op: op.id })
    } else {
      raced++
      report.ok(6)
    }
  }

  // --- final registers --------------------------------------------------------------------------
  const keys = new Set([...markerKeys])
  for (const op of ops.values()) keys.add(op.key)
  for (const r of final.replicas) {
    for (const k of Object.keys(r.registers)) keys.add(k)
    for (const k of r.live) {
      if (!keys.has(k)) report.fail(4, { message: `${r.node} holds key ${k} that no operation wrote`, key: k })
      keys.add(k)
    }
  }
  const byKey = new Map() // key -> op list
  for (const op of ops.values()) {
    if (!byKey.has(op.key)) byKey.set(op.key, [])
    byKey.get(op.key).push(op)
  }
  const byStamp = new Map()
  for (const op of ops.values()) if (op.applied && op.applied.stamp) byStamp.set(`${op.key}|${stampKey(op.applied.stamp)}`, op)

  let reissued = 0
  let unverified = 0
  for (const key of [...keys].sort()) {
    const seen = final.replicas.map((r) => ({ node: r.node, entry: r.registers[key] || null }))
    // (1) identical
    const present = seen.filter((s) => s.entry && s.entry.info)
    const texts = new Set(present.map((s) => registerText(s.entry.info)))
    let identical = texts.size <= 1
    if (identical && present.length < seen.length && present.length > 0) {
      const info = present[0].entry.info
      const e = expiryOf(info)
      const dead = info.deleted || (e !== 0 && e <= final.now + window)
      if (!dead) identical = false
    }
    const values = new Set(present.filter((s) => s.entry.value !== null).map((s) => s.entry.value))
    if (values.size > 1) identical = false
    if (identical) report.ok(1)
    else {
      report.fail(1, {
        message: `replicas differ on ${key}: ${seen.map((s) => `${s.node}=${s.entry ? registerText(s.entry.info) + (s.entry.value ? ' value ' + s.entry.value : '') : 'absent'}`).join('; ')}`,
        key,
      })
    }
    // The surviving register: the largest any replica holds.
    let R = null
    let value = null
    for (const s of present) {
      if (!R || cmpStamp(infoStamp(s.entry.info), infoStamp(R)) > 0) R = s.entry.info
    }
    for (const s of present) if (R && stampKey(infoStamp(s.entry.info)) === stampKey(infoStamp(R)) && s.entry.value) value = s.entry.value
    // (3) a deleted key is not present anywhere
    if (R && R.deleted) {
      const live = seen.filter((s) => s.entry && s.entry.value !== null)
      if (live.length) report.fail(3, { message: `${key} is deleted (${stampKey(infoStamp(R))}) but ${live.map((s) => s.node).join(', ')} still return a value`, key })
      else report.ok(3)
    }
    if (markerKeys.has(key)) continue

    const writes = (byKey.get(key) || []).filter((op) => op.op !== 'touch')
    // (4) the surviving register is a write someone made, with its value
    if (R && R.hlc !== '0') {
      const rs = infoStamp(R)
      const op = byStamp.get(`${key}|${stampKey(rs)}`)
      if (op) {
        if ((op.op === 'delete') !== R.deleted) {
          report.fail(4, { message: `${key}: the register ${stampKey(rs)} is ${R.deleted ? 'a tombstone' : 'a value'} but ${op.id} was a ${op.op}`, key })
        } else if (!R.deleted && value !== null && value !== op.id) {
          report.fail(4, { message: `${key}: the register ${stampKey(rs)} of ${op.id} holds the value of ${value}`, key })
        } else report.ok(4)
      } else {
        // Not a stamp any write read back: a write whose stamp was never read back (its process was
        // killed, or a remote write raced it), or one of the writer's own writes rewritten with a new
        // stamp in a full resync (same value, newer stamp).
        const runs = runsByInc.get(`${rs.origin}/${rs.inc}`) || []
        const fromWriter = (w) => runs.some((r) => r.node === w.node && r.run === w.run)
        const candidates = writes.filter((w) => fromWriter(w) && (w.op === 'delete') === R.deleted)
        const byValue = value !== null ? ops.get(value) : null
        if (byValue && fromWriter(byValue) && byValue.key === key && !R.deleted) {
          if (byValue.applied && byValue.applied.stamp && cmpStamp(rs, byValue.applied.stamp) <= 0) {
            report.fail(4, { message: `${key}: the register ${stampKey(rs)} holds the value of ${value}, written as ${stampKey(byValue.applied.stamp)}`, key })
          } else {
            if (byValue.applied && byValue.applied.stamp) reissued++
            else unverified++
            report.ok(4)
          }
        } else if (value === null && candidates.some((w) => !w.applied || !w.applied.stamp)) {
          unverified++
          report.ok(4)
        } else if (value === null && candidates.some((w) => w.applied && w.applied.stamp && cmpStamp(w.applied.stamp, rs) < 0)) {
          reissued++ // (a rewritten tombstone, or a rewritten value expired everywhere)
          report.ok(4)
        } else {
          report.fail(4, { message: `${key}: the surviving register ${stampKey(rs)}${R.deleted ? ' (tombstone)' : ''}${value ? ' value ' + value : ''} is no write in the history`, key })
        }
      }
      const ts = touchStamp(R)
      if (ts) {
        const top = byStamp.get(`${key}|${stampKey(ts)}`)
        const runs = runsByInc.get(`${ts.origin}/${ts.inc}`) || []
        const touches = (byKey.get(key) || []).filter((w) => w.op === 'touch' && runs.some((r) => r.node === w.node && r.run === w.run))
        if (top && top.op === 'touch') report.ok(4)
        else if (touches.some((w) => !w.applied || !w.applied.stamp)) {
          unverified++
          report.ok(4)
        } else report.fail(4, { message: `${key}: the touch register ${stampKey(ts)} is no touch in the history`, key })
      }
    }
    // (2), (3), (4): nothing that survived is newer than the surviving register. A key left with a
    // touch register only (hlc '0': its value register was dropped as superseded, and the superseding
    // tombstone collected) holds no value register: as if nothing were left.
    const Rv = R && R.hlc !== '0' ? R : null
    for (const w of writes) {
      if (!w.applied || !w.applied.stamp) continue
      if (!survives(w)) continue
      const s = w.applied.stamp
      const acked = acknowledged(w)
      let violation = null
      if (!Rv) {
        // Nothing is left: the winner was dead (a delete, an expiry) and was collected.
        const mortal = (x) => x.op === 'delete' || (x.op === 'set' && x.ttl > 0) || x.op === 'touch'
        const dead = (byKey.get(key) || []).some((x) => x.applied && x.applied.stamp && mortal(x) && cmpStamp(x.applied.stamp, s) >= 0)
        if (!dead) violation = `${w.op} ${key} by ${w.id} (${stampKey(s)}${acked ? `, acknowledged '${w.ack}'` : ''}) is lost: no replica holds the key and no newer delete or expiry explains it`
      } else if (cmpStamp(infoStamp(Rv), s) < 0) {
        violation = `${w.op} ${key} by ${w.id} (${stampKey(s)}${acked ? `, acknowledged '${w.ack}'` : ''}) is lost: the surviving register is the older ${stampKey(infoStamp(Rv))}${Rv.deleted ? ' (tombstone)' : ''}`
      }
      const n = acked ? 2 : w.op === 'delete' ? 3 : 4
      if (violation) report.fail(n, { message: violation, key, op: w.id })
      else report.ok(n)
    }
  }
  return { report, stats: { ops: ops.size, raced, reissued, unverified, runs: runs.size }, ops, byKey }
}

/** What to print about a violation: the operations on its key and the faults around them. */
function explain(result, run, violation, limit = 40) {
  const lines = []
  if (!violation || !violation.key) {
    if (violation && violation.detail && violation.detail.log) lines.push(`  log: ${violation.detail.log}`)
    return lines
  }
  const ops = (result.byKey.get(violation.key) || []).slice().sort((a, b) => a.t - b.t)
  lines.push(`  history of ${violation.key} (${ops.length} operations${ops.length > limit ? `, the last ${limit}` : ''}):`)
  for (const op of ops.slice(-limit)) {
    const a = op.applied
    const stamp = a ? (a.stamp ? stampKey(a.stamp) : a.touched === false ? 'not touched' : `lost at once to ${stampKey(a.lostTo)} (before: ${stampKey(a.before)})`) : 'no applied record'
    const out = op.outcome ? (op.outcome.type === 'ok' ? 'ok' : `${op.outcome.code || 'error'}${op.outcome.acked ? ` acked by [${op.outcome.acked}]` : ''}`) : 'no outcome'
    lines.push(`    ${new Date(op.t).toISOString().slice(11, 23)} ${op.id} ${op.op}${op.ack ? ` ack=${op.ack}` : ''}${op.ttl ? ` ttl=${op.ttl}` : ''} → ${stamp}; ${out}${op.outcome ? ` at +${op.outcome.t - op.t} ms` : ''}`)
  }
  const t0 = ops.length ? ops[0].t - 1000 : 0
  const faults = run.events.filter((e) => e.t >= t0 && e.kind !== 'note')
  lines.push(`  faults from then on (${faults.length}):`)
  for (const e of faults.slice(0, 60)) {
    const { t, kind, ...rest } = e
    lines.push(`    ${new Date(t).toISOString().slice(11, 23)} ${kind} ${JSON.stringify(rest)}`)
  }
  lines.push('  final registers:')
  for (const r of run.final.replicas) {
    const e = r.registers[violation.key]
    lines.push(`    ${r.node}.${r.run}: ${e ? registerText(e.info) + (e.value ? ` value ${e.value}` : '') : 'absent'}`)
  }
  return lines
}

function summarize(result) {
  return Object.entries(result.report.checks)
    .map(([n, c]) => `${n} ${c.name} ${c.violations.length ? `FAILED (${c.violations.length})` : `ok (${c.checked})`}`)
    .join(', ')
}

module.exports = { check, explain, summarize, loadRun, cmpStamp }

if (require.main === module) {
  const dir = process.argv[2]
  if (!dir) {
    console.error('usage: node chaos/checker.js <run directory>')
    process.exit(2)
  }
  const run = loadRun(dir)
  const result = check(run)
  console.log(`checks: ${summarize(result)}`)
  const first = result.report.first()
  if (first) {
    console.log(`seed ${run.plan.config.seed}: check ${first.check} (${first.name}) failed: ${first.message}`)
    for (const line of explain(result, run, first)) console.log(line)
  }
  process.exit(result.report.passed ? 0 : 1)
}
