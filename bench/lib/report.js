'use strict'
// The readable table, the SVG chart of the ratios, and the --json line.

const { fmtNum } = require('./util')

const JSON_KEYS = [
  'get_obj_ops', 'get_str_ops', 'redis_get_pipelined_ops', 'set_ops', 'redis_set_pipelined_ops',
  'replicated_3w_ops', 'scuttlebutt_3w_ops', 'redis_replicated_ops', 'latency_p50_us', 'latency_p99_us',
  'redis_latency_p50_us', 'redis_latency_p99_us', 'join_1m_ms', 'redis_join_1m_ms',
  'catchup_bytes_per_missed_byte', 'bytes_per_key', 'redis_bytes_per_key',
  // Issue 7: set with a dataDir against Redis with an AOF (added after the 17 keys of issue 6).
  'set_strict_ops', 'set_relaxed_ops', 'set_memory_inflight_ops', 'redis_aof_always_ops', 'redis_aof_everysec_ops',
  'set_strict_seq_ops', 'redis_aof_always_seq_ops',
  // Issue 16: get with reads: 'frozen', and the memory per key with every key read that way.
  'get_obj_frozen_ops', 'bytes_per_key_frozen',
  // Issue 16: bytes on the wire per byte of keys+values, and the same frames uncompressed.
  'join_bytes_per_byte', 'join_bytes_per_byte_uncompressed', 'catchup_bytes_per_missed_byte_uncompressed',
  'live_bytes_per_byte', 'live_bytes_per_byte_uncompressed',
]

/**
 * The comparisons of issue 6 (figures 1–7) and issue 7 (D: durable set). `ratio` is always "times better than the alternative" (ours/theirs when
 * higher is better, theirs/ours when lower is better), so ≥ goal means the goal is met.
 */
function comparisons(f, extra) {
  const rows = [
    { n: '1', short: 'get object vs Redis GET+parse', what: 'get, session object (ops/s)', ours: f.get_obj_ops, alt: 'ioredis GET+JSON.parse, 256 in flight', theirs: f.redis_get_pipelined_ops, better: 'higher', goal: 10 },
    { n: '1', short: "get object, reads 'frozen' vs GET+parse", what: "get, session object, reads 'frozen' (ops/s)", ours: f.get_obj_frozen_ops, alt: 'ioredis GET+JSON.parse, 256 in flight', theirs: f.redis_get_pipelined_ops, better: 'higher', goal: 10 },
    { n: '1', short: 'get string vs Redis GET', what: 'get, short string (ops/s)', ours: f.get_str_ops, alt: 'ioredis GET, 256 in flight', theirs: extra.redis_get_str_ops, better: 'higher', goal: 25 },
    { n: '2', short: 'set vs Redis SET', what: "set, ack 'local' (ops/s)", ours: f.set_ops, alt: 'ioredis SET, 256 in flight', theirs: f.redis_set_pipelined_ops, better: 'higher', goal: 5 },
    { n: '3', short: '3 writers vs scuttlebutt', what: '3 writers until converged (ops/s)', ours: f.replicated_3w_ops, alt: 'scuttlebutt Model ×3, two-way', theirs: f.scuttlebutt_3w_ops, better: 'higher', goal: 10 },
    { n: '3', short: '3 writers vs Redis + 2 replicas', what: '3 writers until converged (ops/s)', ours: f.replicated_3w_ops, alt: 'Redis primary + 2 replicas, one-way', theirs: f.redis_replicated_ops, better: 'higher', goal: 1 },
    { n: '4', short: 'latency p50 vs Redis replica', what: 'write → other process, p50 (µs)', ours: f.latency_p50_us, alt: 'Redis primary → replica', theirs: f.redis_latency_p50_us, better: 'lower', goal: null },
    { n: '4', short: 'latency p99 vs Redis replica', what: 'write → other process, p99 (µs)', ours: f.latency_p99_us, alt: 'Redis primary → replica', theirs: f.redis_latency_p99_us, better: 'lower', goal: 1 },
    { n: '5', short: `join ${fmtNum(extra.join_n)} keys vs Redis full sync`, what: `join, ${fmtNum(extra.join_n)} keys (ms)`, ours: f.join_1m_ms, alt: 'new Redis replica, full sync', theirs: f.redis_join_1m_ms, better: 'lower', goal: 1, strict: true },
    { n: '5', short: 'join: wire bytes per byte, vs uncompressed', what: `join, ${fmtNum(extra.join_n)} keys (bytes on the wire per byte of keys+values)`, ours: f.join_bytes_per_byte, alt: 'the same frames uncompressed', theirs: f.join_bytes_per_byte_uncompressed, better: 'lower', goal: null, absGoal: 0.5, unit: 'bytes per byte', digits: 3 },
    { n: '6', short: 'catch-up: bytes per missed byte', what: 'catch-up (bytes per missed byte)', ours: f.catchup_bytes_per_missed_byte, alt: 'the same frames uncompressed', theirs: f.catchup_bytes_per_missed_byte_uncompressed, better: 'lower', goal: null, absGoal: 0.5, unit: 'bytes per missed byte', digits: 3 },
    { n: '6', short: 'live replication: bytes per byte', what: 'live replication (bytes per byte of keys+values)', ours: f.live_bytes_per_byte, alt: 'the same frames uncompressed', theirs: f.live_bytes_per_byte_uncompressed, better: 'lower', goal: null, digits: 3 },
    { n: '7', short: 'memory per key vs Redis', what: `memory per key, ${fmtNum(extra.mem_n)} keys (bytes)`, ours: f.bytes_per_key, alt: 'Redis used_memory', theirs: f.redis_bytes_per_key, better: 'lower', goal: 1 / 1.5 },
    { n: '7', short: "memory per key, reads 'frozen', vs Redis", what: `memory per key, ${fmtNum(extra.mem_n)} keys, reads 'frozen', all read (bytes)`, ours: f.bytes_per_key_frozen, alt: 'Redis used_memory', theirs: f.redis_bytes_per_key, better: 'lower', goal: 1 / 1.5 },
    { n: 'D', short: "set dataDir 'strict' vs AOF always", what: "set, dataDir 'strict', 256 in flight (ops/s)", ours: f.set_strict_ops, alt: 'Redis appendfsync always, 256 in flight', theirs: f.redis_aof_always_ops, better: 'higher', goal: 1 },
    { n: 'D', short: "set dataDir 'relaxed' vs AOF everysec", what: "set, dataDir 'relaxed', 256 in flight (ops/s)", ours: f.set_relaxed_ops, alt: 'Redis appendfsync everysec, 256 in flight', theirs: f.redis_aof_everysec_ops, better: 'higher', goal: 1 },
    { n: 'D', short: "set 'strict' vs AOF always, 1 at a time", what: "set, dataDir 'strict', one at a time (ops/s)", ours: f.set_strict_seq_ops, alt: 'Redis appendfsync always, one at a time', theirs: f.redis_aof_always_seq_ops, better: 'higher', goal: 1 },
  ]
  for (const r of rows) {
    r.ratio = r.ours != null && r.theirs != null && r.ours > 0 && r.theirs > 0
      ? (r.better === 'higher' ? r.ours / r.theirs : r.theirs / r.ours)
      : null
    if (r.absGoal != null) r.met = r.ours == null ? null : r.ours <= r.absGoal
    else if (r.goal == null || r.ratio == null) r.met = null
    else r.met = r.strict ? r.ratio > r.goal : r.ratio >= r.goal
    r.goalText = r.absGoal != null ? `≤ ${r.absGoal}` : r.goal == null ? '—'
      : r.goal < 1 ? `≥ ${r.goal.toFixed(2)}× (≤ ${(1 / r.goal).toFixed(1)}× the memory)`
        : `${r.strict ? '>' : '≥'} ${r.goal}×`
  }
  return rows
}

function issue2Targets(f) {
  return [
    { what: 'get, object', value: f.get_obj_ops, target: 1e6 },
    { what: 'get, string', value: f.get_str_ops, target: 3e6 },
    { what: 'set', value: f.set_ops, target: 5e5 },
    { what: 'three writers converged', value: f.replicated_3w_ops, target: 1.5e5 },
  ].map((t) => ({ ...t, met: t.value == null ? null : t.value >= t.target }))
}

function pad(s, n, right = false) {
  s = String(s)
  return right ? s.padStart(n) : s.padEnd(n)
}

function table(rows, headers, aligns) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)))
  const line = (cells) => '| ' + cells.map((c, i) => pad(c, widths[i], aligns[i] === 'r')).join(' | ') + ' |'
  const sep = '|' + widths.map((w, i) => (aligns[i] === 'r' ? '-'.repeat(w + 1) + ':' : '-'.repeat(w + 2))).join('|') + '|'
  return [line(headers), sep, ...rows.map(line)].join('\n')
}

const metMark = (m) => (m == null ? '—' : m ? 'yes' : 'NO')

function renderTable(f, extra) {
  const rows = comparisons(f, extra)
  const t1 = table(
    rows.map((r) => [r.n, r.what, fmtNum(r.ours, r.digits ?? (r.better === 'lower' ? 1 : 0)), fmtNum(r.theirs, r.digits ?? (r.better === 'lower' ? 1 : 0)), r.alt,
      r.ratio == null ? '—' : r.ratio.toFixed(2) + '×', r.goalText, metMark(r.met)]),
    ['#', 'figure', 'peer-buckets', 'alternative', 'alternative is', 'ratio (× better)', 'goal', 'met'],
    ['l', 'l', 'r', 'r', 'l', 'r', 'l', 'l'],
  )
  const t2 = table(
    issue2Targets(f).map((t) => [t.what, fmtNum(t.value), '≥ ' + fmtNum(t.target), metMark(t.met)]),
    ['issue 2 target', 'ops/s', 'target', 'met'],
    ['l', 'r', 'r', 'l'],
  )
  return { text: t1 + '\n\n' + t2, rows }
}

function escapeXml(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c])
}

/** A horizontal bar per comparison, log scale from 0.1× to 1000×, with the goal marked. */
function renderSvg(rows, machine, mode) {
  const W = 900
  const left = 290
  const right = 90
  const top = 56
  const rowH = 30
  const H = top + rows.length * rowH + 60
  const lo = Math.log10(0.1)
  const hi = Math.log10(1000)
  const x = (v) => left + ((Math.log10(Math.min(Math.max(v, 0.1), 1000)) - lo) / (hi - lo)) * (W - left - right)
  const out = []
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`)
  out.push(`<rect width="${W}" height="${H}" fill="#fff"/>`)
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">peer-buckets vs Redis (ioredis) and scuttlebutt — times better (log scale)</text>`)
  out.push(`<text x="${W / 2}" y="40" text-anchor="middle" fill="#555">${escapeXml(`${machine.cpu}, ${machine.cores} cores, Node ${machine.node}${mode === 'quick' ? ' — quick run (smaller sizes)' : ''}`)}</text>`)
  for (const t of [0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000]) {
    const tx = x(t)
    out.push(`<line x1="${tx}" y1="${top - 4}" x2="${tx}" y2="${top + rows.length * rowH}" stroke="${t === 1 ? '#333' : '#ddd'}" stroke-width="${t === 1 ? 1.5 : 1}"/>`)
    out.push(`<text x="${tx}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#555">${t}×</text>`)
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH
    const label = `${r.n}. ${r.short}`
    out.push(`<text x="${left - 8}" y="${y + rowH / 2 + 4}" text-anchor="end">${escapeXml(label)}</text>`)
    if (r.ratio == null && r.absGoal != null && r.ours != null) {
      // No alternative: the figure itself against its goal, as text.
      out.push(`<text x="${x(1) + 6}" y="${y + rowH / 2 + 4}" font-weight="bold" fill="${r.met ? '#2a7d45' : '#b0402f'}">` +
        `${r.ours.toFixed(r.digits ?? 2)} ${r.unit} (goal ≤ ${r.absGoal}${r.met ? ', met' : ', missed'})</text>`)
      return
    }
    if (r.ratio == null) {
      out.push(`<text x="${left + 6}" y="${y + rowH / 2 + 4}" fill="#999">not measured</text>`)
      return
    }
    const color = r.met == null ? '#6b8cc7' : r.met ? '#3a9d5d' : '#d0543f'
    const x0 = x(1)
    const x1 = x(r.ratio)
    out.push(`<rect x="${Math.min(x0, x1)}" y="${y + 6}" width="${Math.max(1, Math.abs(x1 - x0))}" height="${rowH - 12}" fill="${color}"/>`)
    let textX = Math.max(x0, x1) + 5
    if (r.goal != null) {
      const gx = x(r.goal)
      out.push(`<line x1="${gx}" y1="${y + 3}" x2="${gx}" y2="${y + rowH - 3}" stroke="#000" stroke-width="2" stroke-dasharray="3,2"/>`)
      if (gx >= textX - 5 && gx < textX + 45) textX = gx + 6
    }
    out.push(`<text x="${textX}" y="${y + rowH / 2 + 4}" font-weight="bold">${r.ratio >= 10 ? r.ratio.toFixed(0) : r.ratio.toFixed(2)}×</text>`)
  })
  const ly = top + rows.length * rowH + 36
  out.push(`<rect x="${left}" y="${ly - 9}" width="10" height="10" fill="#3a9d5d"/><text x="${left + 14}" y="${ly}">goal met</text>`)
  out.push(`<rect x="${left + 90}" y="${ly - 9}" width="10" height="10" fill="#d0543f"/><text x="${left + 104}" y="${ly}">goal missed</text>`)
  out.push(`<rect x="${left + 195}" y="${ly - 9}" width="10" height="10" fill="#6b8cc7"/><text x="${left + 209}" y="${ly}">no goal</text>`)
  out.push(`<line x1="${left + 275}" y1="${ly - 9}" x2="${left + 275}" y2="${ly + 1}" stroke="#000" stroke-width="2" stroke-dasharray="3,2"/><text x="${left + 281}" y="${ly}">goal</text>`)
  out.push(`<text x="${left + 330}" y="${ly}" fill="#555">right of 1×: peer-buckets better</text>`)
  out.push('</svg>')
  return out.join('\n') + '\n'
}

function jsonLine(f) {
  const o = {}
  for (const k of JSON_KEYS) o[k] = f[k] == null ? null : Math.round(f[k] * 100) / 100
  return JSON.stringify(o)
}

module.exports = { JSON_KEYS, comparisons, issue2Targets, renderTable, renderSvg, jsonLine }
