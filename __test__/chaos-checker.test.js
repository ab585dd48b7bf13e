'use strict'
// The chaos checker on small hand-made runs: it passes a consistent one and catches each kind of
// violation (a checker that cannot fail proves nothing).

const { check } = require('../chaos/checker')

const INC = { n1: 'a1', n2: 'b2' }
const stamp = (hlc, origin) => ({ hlc: String(hlc), origin, inc: INC[origin] })
const info = (hlc, origin, extra = {}) => ({ deleted: false, hlc: String(hlc), time: 0, origin, incarnation: INC[origin], seq: 1, expires: 0, ...extra })

/** A run of two memory peers that both live to the end; `ops` are [id, node, op, key, ack, outcome, stamp]. */
function run({ ops, registers, events = [], durable = {}, restarted = [] }) {
  const history = []
  for (const node of ['n1', 'n2']) {
    history.push({ type: 'start', node, run: 0, t: 1 })
    history.push({ type: 'ready', node, run: 0, inc: INC[node], t: 2 })
  }
  // A restarted peer's second run (a new incarnation) is the one alive at the end.
  for (const node of restarted) {
    history.push({ type: 'start', node, run: 1, t: 500 })
    history.push({ type: 'ready', node, run: 1, inc: 'c3', t: 501 })
  }
  let t = 10
  for (const [id, node, op, key, ack, outcome, s, extra = {}] of ops) {
    history.push({ type: 'invoke', id, node, run: 0, op, key, ack, t: t++, ...extra })
    history.push({ type: 'applied', id, stamp: s, t: t++ })
    history.push({ type: outcome === 'ok' ? 'ok' : 'fail', id, code: outcome === 'ok' ? undefined : outcome, t: t++ })
  }
  // Every replica holds each run's marker key (how a run learns its incarnation).
  const markers = {}
  for (const node of ['n1', 'n2']) markers[`inc.${node}.0`] = { info: info(1, node), value: `${node}.0.marker` }
  for (const node of restarted) markers[`inc.${node}.1`] = { info: { ...info(600, node), incarnation: 'c3' }, value: `${node}.1.marker` }
  const replicas = ['n1', 'n2'].map((node) => ({
    node,
    run: restarted.includes(node) ? 1 : 0,
    inc: restarted.includes(node) ? 'c3' : INC[node],
    registers: { ...markers, ...registers[node] },
    live: [],
    now: 1000,
  }))
  const plan = {
    config: {
      seed: 1,
      skewRange: 0,
      peers: ['n1', 'n2'].map((id) => ({ id, durable: !!durable[id], durability: durable[id] })),
    },
  }
  return check({ plan, events, history, final: { replicas, now: 1000, runsStarted: 2 } })
}

const failed = (result) => Object.fromEntries(Object.entries(result.report.checks).filter(([, c]) => c.violations.length).map(([n, c]) => [n, c.violations[0].message]))

test('a consistent run passes every check', () => {
  const result = run({
    ops: [
      ['n1.0.1', 'n1', 'set', 'k', 'one', 'ok', stamp(100, 'n1')],
      ['n2.0.1', 'n2', 'set', 'k', 'local', 'ok', stamp(200, 'n2')],
      ['n2.0.2', 'n2', 'delete', 'd', 'majority', 'ok', stamp(300, 'n2')],
    ],
    registers: {
      n1: { k: { info: info(200, 'n2'), value: 'n2.0.1' }, d: { info: info(300, 'n2', { deleted: true }), value: null } },
      n2: { k: { info: info(200, 'n2'), value: 'n2.0.1' }, d: { info: info(300, 'n2', { deleted: true }), value: null } },
    },
  })
  expect(failed(result)).toEqual({})
  expect(result.report.passed).toBe(true)
})

test('replicas that differ fail check 1', () => {
  const result = run({
    ops: [['n1.0.1', 'n1', 'set', 'k', 'local', 'ok', stamp(100, 'n1')]],
    registers: { n1: { k: { info: info(100, 'n1'), value: 'n1.0.1' } }, n2: {} },
  })
  expect(Object.keys(failed(result))).toEqual(['1'])
})

test('an acknowledged write beaten by an older register fails check 2', () => {
  const result = run({
    ops: [
      ['n1.0.1', 'n1', 'set', 'k', 'local', 'ok', stamp(100, 'n1')],
      ['n2.0.1', 'n2', 'set', 'k', 'majority', 'ok', stamp(200, 'n2'), { members: 1 }],
    ],
    registers: { n1: { k: { info: info(100, 'n1'), value: 'n1.0.1' } }, n2: { k: { info: info(100, 'n1'), value: 'n1.0.1' } } },
  })
  expect(failed(result)['2']).toMatch(/set k by n2\.0\.1 .*acknowledged 'majority'.* is lost/)
})

test('a deleted key that still has a value fails check 3', () => {
  const result = run({
    ops: [['n1.0.1', 'n1', 'delete', 'k', 'local', 'ok', stamp(100, 'n1')]],
    registers: {
      n1: { k: { info: info(100, 'n1', { deleted: true }), value: 'n1.0.0' } },
      n2: { k: { info: info(100, 'n1', { deleted: true }), value: null } },
    },
  })
  expect(failed(result)['3']).toMatch(/k is deleted .* but n1 still return/)
})

test('a register nobody wrote, or a value that is not its write, fails check 4', () => {
  const forged = run({
    ops: [['n1.0.1', 'n1', 'set', 'k', 'local', 'ok', stamp(100, 'n1')]],
    registers: { n1: { k: { info: info(900, 'n2'), value: 'n2.0.7' } }, n2: { k: { info: info(900, 'n2'), value: 'n2.0.7' } } },
  })
  expect(failed(forged)['4']).toBeDefined()
  const swapped = run({
    ops: [
      ['n1.0.1', 'n1', 'set', 'k', 'local', 'ok', stamp(100, 'n1')],
      ['n1.0.2', 'n1', 'set', 'j', 'local', 'ok', stamp(101, 'n1')],
    ],
    registers: {
      n1: { k: { info: info(100, 'n1'), value: 'n1.0.2' }, j: { info: info(101, 'n1'), value: 'n1.0.2' } },
      n2: { k: { info: info(100, 'n1'), value: 'n1.0.2' }, j: { info: info(101, 'n1'), value: 'n1.0.2' } },
    },
  })
  expect(failed(swapped)['4']).toMatch(/holds the value of n1\.0\.2/)
})

test('a write lost although its writer survived fails check 4; a killed memory peer may lose its own', () => {
  const ops = [['n1.0.1', 'n1', 'set', 'k', 'local', 'ok', stamp(100, 'n1')]]
  const lost = run({ ops, registers: { n1: {}, n2: {} } })
  expect(failed(lost)['4']).toMatch(/is lost: no replica holds the key/)
  // n1's run 0 was killed after the write, and came back empty: nothing says the write survived.
  const registers = { n1: {}, n2: {} }
  const killed = run({ ops, registers, restarted: ['n1'], events: [{ t: 400, kind: 'kill', node: 'n1', run: 0 }] })
  expect(failed(killed)).toEqual({})
  // The same with a dataDir peer in strict mode: the settled write was on disk, so it must survive.
  const durable = run({ ops, registers, restarted: ['n1'], durable: { n1: 'strict' }, events: [{ t: 400, kind: 'kill', node: 'n1', run: 0 }] })
  expect(failed(durable)['4']).toMatch(/is lost/)
})

test('an exit the schedule did not cause fails check 5, a local write that did not take effect check 6', () => {
  const result = run({
    ops: [['n1.0.1', 'n1', 'set', 'k', 'local', 'ok', null]],
    registers: { n1: {}, n2: {} },
    events: [{ t: 50, kind: 'crash', node: 'n2', run: 0, code: 1, signal: null }],
  })
  // the applied record of n1.0.1 says nothing was stored right after the write
  expect(Object.keys(failed(result)).sort()).toEqual(['5', '6'])
})

test('the same seed gives the same schedule, another seed another one', () => {
  const { plan } = require('../chaos/schedule')
  const a = plan({ seed: 42, seconds: 60, nodes: 5 })
  expect(plan({ seed: 42, seconds: 60, nodes: 5 })).toEqual(a)
  expect(plan({ seed: 43, seconds: 60, nodes: 5 })).not.toEqual(a)
  const kinds = new Set(a.events.map((e) => e.kind))
  expect(a.events.length).toBeGreaterThan(20)
  for (const e of a.events) expect(e.t).toBeLessThanOrEqual(60000 + 1000)
  expect([...kinds].some((k) => ['partition', 'bridge', 'asym', 'slow'].includes(k))).toBe(true)
  // The regime can be forced without changing the rest of the draw.
  const tight = plan({ seed: 42, seconds: 60, nodes: 5, regime: 'tight' })
  expect(tight.config.regime).toBe('tight')
  expect(tight.config.peers.map((p) => p.durable)).toEqual(a.config.peers.map((p) => p.durable))
})
