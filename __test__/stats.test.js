'use strict'
// Each figure of stats() is declared once, in lib/stats.js; the other places that name figures follow
// it: the addon's PeerStats and LinkStats (src/lib.rs, as native.d.ts types them), index.d.ts, and what
// stats() returns. A figure added to one and not to the table fails here.

const fs = require('node:fs')
const path = require('node:path')
const { FIGURES, LINK_FIGURES, LOOP_FIGURES, OTHER_FIELDS, OTHER_LINK_FIELDS } = require('../lib/stats')
const { createCluster, closeAll } = require('./helpers/peers')

afterEach(async () => {
  await closeAll()
})

const ROOT = path.join(__dirname, '..')
const sorted = (names) => [...names].sort()

/** The field names of `interface name { ... }` in a .d.ts file (top-level fields only). */
function interfaceFields(file, name) {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8')
  const start = text.search(new RegExp(`export interface ${name} (extends [^{]+)?\\{`))
  if (start < 0) throw new Error(`${file} has no interface ${name}`)
  const body = text.slice(text.indexOf('{', start) + 1)
  const fields = []
  let depth = 0
  for (const line of body.split('\n')) {
    if (depth === 0 && /^\s*\}/.test(line)) break
    const m = /^\s*(\w+)\??:/.exec(line)
    if (depth === 0 && m) fields.push(m[1])
    // Comments may hold braces; code lines open and close nested types.
    if (!/^\s*(\/\*\*|\*)/.test(line)) depth += (line.match(/\{/g) || []).length - (line.match(/\}/g) || []).length
  }
  return fields
}

// The addon's; stats() adds LOOP_FIGURES.
const nativeFields = sorted([...OTHER_FIELDS, ...FIGURES.map((f) => f.field)])
const statsFields = sorted([...nativeFields, ...LOOP_FIGURES.map((f) => f.field)])
const linkFields = sorted([...OTHER_LINK_FIELDS, ...LINK_FIGURES.map((f) => f.field)])

test('the figures table is well formed: one entry per field and per metric, counters named *_total', () => {
  for (const table of [FIGURES, LINK_FIGURES, LOOP_FIGURES]) {
    expect(new Set(table.map((f) => f.field)).size).toBe(table.length)
    expect(new Set(table.map((f) => f.metric)).size).toBe(table.length)
    for (const f of table) {
      expect(['gauge', 'counter']).toContain(f.type)
      expect(f.metric.endsWith('_total')).toBe(f.type === 'counter')
      expect(f.help.length).toBeGreaterThan(0)
    }
  }
})

test("the addon's PeerStats and LinkStats (native.d.ts) name exactly the table's fields", () => {
  expect(sorted(interfaceFields('native.d.ts', 'PeerStats'))).toEqual(nativeFields)
  expect(sorted(interfaceFields('native.d.ts', 'LinkStats'))).toEqual(linkFields)
})

test("index.d.ts's PeerStats and LinkStats name exactly the table's fields", () => {
  expect(sorted(interfaceFields('index.d.ts', 'PeerStats'))).toEqual(statsFields)
  expect(sorted(interfaceFields('index.d.ts', 'LinkStats'))).toEqual(linkFields)
})

test("stats() returns exactly the table's fields, every figure a number, per link too", async () => {
  const [a] = await createCluster(2, 'figures')
  const stats = a.stats()
  expect(sorted(Object.keys(stats))).toEqual(statsFields)
  for (const { field } of [...FIGURES, ...LOOP_FIGURES]) expect(typeof stats[field]).toBe('number')
  expect(stats.replication.length).toBe(1)
  expect(sorted(Object.keys(stats.replication[0]))).toEqual(linkFields)
  for (const { field } of LINK_FIGURES) expect(typeof stats.replication[0][field]).toBe('number')
})

test('the event-loop delay figures record a blocked loop: 100 ms of busy JavaScript shows as 50 ms or more', async () => {
  const [a] = await createCluster(1, 'loop-delay')
  const before = a.stats()
  expect(before.eventLoopDelayMaxMs).toBeGreaterThanOrEqual(0)
  expect(before.eventLoopDelayRecentMs).toBeLessThanOrEqual(before.eventLoopDelayMaxMs)
  // The monitor measures each tick of its 10 ms timer against the one before: it needs one tick
  // behind it before a blocked loop can show (the peer was made a moment ago).
  await new Promise((resolve) => setTimeout(resolve, 50))
  const until = Date.now() + 100
  while (Date.now() < until) {
    // the loop is blocked
  }
  // The delay is recorded when the monitor's timer runs again.
  await new Promise((resolve) => setTimeout(resolve, 50))
  const after = a.stats()
  expect(after.eventLoopDelayMaxMs).toBeGreaterThanOrEqual(50)
  expect(after.eventLoopDelayRecentMs).toBeGreaterThanOrEqual(50)
  const text = a.metrics()
  const seconds = Number(/^peer_buckets_event_loop_delay_max_seconds (\S+)$/m.exec(text)[1])
  expect(seconds).toBeGreaterThanOrEqual(0.05)
})
