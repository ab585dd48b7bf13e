'use strict'
// The sync protocol with real processes on loopback (issue 3): join under load, exact catch-up after a
// pause, ack levels with a stalled peer, the clock skew guard, tombstone collection (and a peer away
// during it), restart under the same id, and partial fetch. Each test starts its own processes and
// kills them all afterwards, whatever happened.

const { spawnPeer, killAll } = require('./helpers/spawn-peer')
const { waitFor, sleep } = require('./helpers/wait')

jest.setTimeout(40_000)

const BUCKET = 'sync'

afterEach(async () => {
  await killAll()
})

/** A peer process on the sync bucket; `changeEvents` off by default (load tests). */
function start(id, { seeds = [], options, env, changeEvents = false } = {}) {
  return spawnPeer({ id, seeds, bucket: BUCKET, options, env, changeEvents })
}

/** Waits until every process reports the same digest (and `until(first)` holds); resolves with them. */
async function converge(procs, { timeout = 15_000, until = () => true, message = 'replicas to converge' } = {}) {
  return waitFor(
    async () => {
      const ds = await Promise.all(procs.map((p) => p.digest(10_000)))
      return ds.every((d) => d.digest === ds[0].digest) && until(ds[0]) ? ds : false
    },
    { timeout, interval: 150, message: `${message} (${procs.map((p) => p.id).join(', ')})` },
  )
}

/** Waits until every process sees every other one as connected. */
async function connectedAll(procs, timeout = 10_000) {
  await waitFor(
    async () => {
      const lists = await Promise.all(procs.map((p) => p.peers()))
      return lists.every((list, i) =>
        procs.every((q) => q === procs[i] || list.some((x) => x.id === q.id && x.state === 'connected')),
      )
    },
    { timeout, interval: 50, message: `${procs.map((p) => p.id).join(', ')} to connect to each other` },
  )
}

async function isConnected(proc, otherId) {
  return (await proc.peers()).some((x) => x.id === otherId && x.state === 'connected')
}

/** The forwarded 'peer-down' for `id` seen by `proc` at or after `since`. */
function peerDown(proc, id, since, timeout = 6000) {
  return proc.waitForEvent(
    (e) => e.name === 'peer-down' && e.data.id === id && e.at >= since,
    timeout,
    `${proc.id} 'peer-down' for ${id}`,
  )
}

async function rejection(promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected a rejection, the call resolved')
}

// ---------------------------------------------------------------------------------------------------

test('a peer joining while two others write continuously ends identical, with every write', async () => {
  const w1 = await start('w1')
  const w2 = await start('w2', { seeds: [w1.address] })
  await connectedAll([w1, w2])

  // Each writes fresh keys non-stop, awaiting each batch of 100 sets. A timer turn between batches keeps
  // the volume to some 250k keys in all (a mere event-loop turn gives over a million in 2 s, too many to
  // compare quickly on a small machine).
  const writer = { batch: 100, pauseMs: 0 }
  await Promise.all([
    w1.request('startWriter', { prefix: 'w1:', ...writer }),
    w2.request('startWriter', { prefix: 'w2:', ...writer }),
  ])
  await sleep(1000)
  const joiner = await start('j', { seeds: [w1.address] })
  await sleep(1000)
  const [c1, c2] = await Promise.all([w1.request('stopWriter', {}, 10_000), w2.request('stopWriter', {}, 10_000)])
  const written = c1 + c2
  console.log(`join under load: w1 wrote ${c1}, w2 wrote ${c2} keys in ~2 s; the joiner came in after ~1 s`)
  expect(c1).toBeGreaterThan(1000)
  expect(c2).toBeGreaterThan(1000)

  const ds = await converge([w1, w2, joiner], {
    timeout: 20_000,
    until: (d) => d.size === written,
    message: `all three to hold the ${written} written keys`,
  })
  for (const d of ds) expect(d).toEqual({ digest: ds[0].digest, size: written, entries: written })
  // and the joiner's keys are exactly the ones written: w1:0..c1-1 and w2:0..c2-1
  const keys = await joiner.request('keys', { prefix: '' }, 10_000)
  expect(keys.length).toBe(written)
  const expected = new Set()
  for (let i = 0; i < c1; i++) expected.add(`w1:${i}`)
  for (let i = 0; i < c2; i++) expected.add(`w2:${i}`)
  expect(keys.filter((k) => !expected.has(k))).toEqual([])
})

test('a paused peer (20k keys of 1 KB) catches up with the 200 writes it missed, not a full resync', async () => {
  const a = await start('a')
  const b = await start('b', { seeds: [a.address] })
  await connectedAll([a, b])
  await a.request('fill', { prefix: 'base:', count: 20_000, size: 1024 }, 30_000)
  await converge([a, b], { timeout: 20_000, until: (d) => d.size === 20_000, message: '20k keys on both' })

  const before = await b.stats()
  const t0 = Date.now()
  b.pause()
  await peerDown(a, 'b', t0)
  const MISSED = 200
  const missedBytes = MISSED * 1024
  await a.request('fill', { prefix: 'missed:', count: MISSED, size: 1024 })
  b.resume()

  await converge([a, b], { timeout: 20_000, until: (d) => d.size === 20_000 + MISSED, message: 'b to catch up' })
  // the delta is taken once converged: everything that arrived while paused and catching up
  const after = await b.stats()
  const received = after.bytesReceived - before.bytesReceived
  const ratio = received / missedBytes
  console.log(
    `catch-up: b received ${received} bytes for ${MISSED} missed values of 1 KB (${missedBytes} bytes): ` +
      `${ratio.toFixed(2)}x; full resyncs on b ${before.fullResyncs} -> ${after.fullResyncs}; ` +
      `pulls sent ${after.pullsSent - before.pullsSent}`,
  )
  expect(received).toBeGreaterThanOrEqual(missedBytes)
  expect(ratio).toBeLessThan(10)
  expect(await isConnected(a, 'b')).toBe(true)
})

test("ack 'all' with one of three peers stalled: EACKTIMEOUT acked by the live one; a down peer no longer counts", async () => {
  const a = await start('a')
  const b = await start('b', { seeds: [a.address] })
  const c = await start('c', { seeds: [a.address] })
  await connectedAll([a, b, c])
  // all three acknowledge while everyone is up
  await a.request('setWith', { key: 'warm', value: { $json: 0 }, options: { ack: 'all', timeout: 3000 } })

  const t0 = Date.now()
  c.pause()
  // let the stop take effect (a loaded machine may run c a little longer) before writing
  await new Promise((r) => setTimeout(r, 100))
  // made before c is declared down: c never acknowledges within 1 s
  const short = a.request('setWith', { key: 'k1', value: { $json: 'v1' }, options: { ack: 'all', timeout: 1000 } })
  // made before c is declared down with a long timeout: settles once c is declared down and stops counting
  const long = a.request('setWith', { key: 'k2', value: { $json: 'v2' }, options: { ack: 'all', timeout: 15_000 } })
  const err = await rejection(short)
  const tShort = Date.now() - t0
  expect(err.code).toBe('EACKTIMEOUT')
  expect(err.acked).toEqual(['b'])
  expect(tShort).toBeLessThan(2500)
  // the write stays applied locally and on b
  expect(await a.get('k1')).toBe('v1')
  await waitFor(async () => (await b.get('k1')) === 'v1', { message: 'k1 on b' })

  await peerDown(a, 'c', t0)
  const tDown = Date.now() - t0
  await long
  const tLong = Date.now() - t0
  console.log(`ack all: short write rejected after ${tShort} ms; c declared down after ${tDown} ms; long write resolved after ${tLong} ms`)
  expect(tLong).toBeLessThan(10_000)
  // a new 'all' write after c is down: c does not count any more
  await a.request('setWith', { key: 'k3', value: { $json: 'v3' }, options: { ack: 'all', timeout: 2000 } })

  c.resume()
  await waitFor(
    async () => (await c.get('k1')) === 'v1' && (await c.get('k2')) === 'v2' && (await c.get('k3')) === 'v3',
    { timeout: 10_000, message: 'the writes made while c was stalled to reach c' },
  )
  await converge([a, b, c])
  await connectedAll([a, b, c])
  // and once c is back, 'all' includes it again
  await a.request('setWith', { key: 'k4', value: { $json: 'v4' }, options: { ack: 'all', timeout: 5000 } })
  expect(await c.get('k4')).toBe('v4')
})

describe('clock skew guard', () => {
  test('a peer 5 minutes ahead is refused: no replication either way, counted in clockSkewRefused', async () => {
    const n = await start('normal', { options: { maxClockSkew: 60_000 } })
    const fast = await start('fast', {
      seeds: [n.address],
      env: { PEER_BUCKETS_TEST_CLOCK_OFFSET_MS: String(5 * 60_000) },
    })
    await n.set('from-normal', 1)
    await fast.set('from-fast', 2)
    await waitFor(async () => (await n.stats()).clockSkewRefused > 0, {
      timeout: 8000,
      message: 'the normal peer to refuse the fast one',
    })
    await sleep(2500) // several redials of the fast peer
    expect(await n.has('from-fast')).toBe(false)
    expect(await fast.has('from-normal')).toBe(false)
    expect(await isConnected(n, 'fast')).toBe(false)
    expect(await isConnected(fast, 'normal')).toBe(false)
    const s = await n.stats()
    console.log(`clock skew: the normal peer refused the fast one ${s.clockSkewRefused} times`)
    expect(s.clockSkewRefused).toBeGreaterThan(0)
  })

  test('a peer 2 minutes behind is accepted, replicates both ways, and its writes converge deterministically', async () => {
    const n = await start('normal', { options: { maxClockSkew: 60_000 } })
    // The slow peer sees the normal one 2 minutes ahead of it, so it needs a wider window to accept it.
    const slow = await start('slow', {
      seeds: [n.address],
      options: { maxClockSkew: 180_000 },
      env: { PEER_BUCKETS_TEST_CLOCK_OFFSET_MS: String(-2 * 60_000) },
    })
    await connectedAll([n, slow])
    await n.set('n:1', 'n')
    await slow.set('s:1', 's')
    await converge([n, slow], { until: (d) => d.size === 2, message: 'both keys on both' })

    // a write the slow peer makes after seeing the normal one's wins, its wall clock notwithstanding
    await n.set('seq', 'from-normal')
    await waitFor(async () => (await slow.get('seq')) === 'from-normal', { message: 'seq on slow' })
    await slow.set('seq', 'from-slow')
    await waitFor(async () => (await n.get('seq')) === 'from-slow', { message: "slow's later write of seq to win on normal" })

    // concurrent writes of the same keys from both: one winner per key, the same on both
    const N = 200
    const entries = (who) => Array.from({ length: N }, (_, i) => [`clash:${i}`, `${who}:${i}`])
    await Promise.all([n.setMany(entries('n')), slow.setMany(entries('s'))])
    const ds = await converge([n, slow], { until: (d) => d.size === N + 3, message: 'the clashing writes' })
    expect(ds[1].digest).toBe(ds[0].digest)
    expect(await slow.get('seq')).toBe('from-slow')
    expect((await n.stats()).clockSkewRefused).toBe(0)
    expect((await slow.stats()).clockSkewRefused).toBe(0)
  })
})

describe('tombstones', () => {
  const options = { tombstoneMinAge: 1000 }

  test('deletes on a 3-peer network are collected everywhere within seconds, and stay bounded under set/delete load', async () => {
    const a = await start('a', { options })
    const b = await start('b', { seeds: [a.address], options })
    const c = await start('c', { seeds: [a.address], options })
    const all = [a, b, c]
    await connectedAll(all)
    const entries = Array.from({ length: 300 }, (_, i) => [`t:${i}`, i])
    await a.setMany(entries.slice(0, 100))
    await b.setMany(entries.slice(100, 200))
    await c.setMany(entries.slice(200))
    await converge(all, { until: (d) => d.size === 300 })
    // each deletes the keys another one wrote
    await a.deleteMany(entries.slice(100, 200).map(([k]) => k))
    await b.deleteMany(entries.slice(200).map(([k]) => k))
    await c.deleteMany(entries.slice(0, 100).map(([k]) => k))
    await converge(all, { until: (d) => d.size === 0, message: 'the deletes to replicate' })
    const tDeleted = Date.now()
    expect((await a.stats()).tombstones).toBeGreaterThan(0)
    const stats = await waitFor(
      async () => {
        const ss = await Promise.all(all.map((p) => p.stats()))
        return ss.every((s) => s.tombstones === 0 && s.tombstonesCollected > 0) && ss
      },
      { timeout: 12_000, interval: 100, message: 'every peer to collect its tombstones' },
    )
    console.log(
      `tombstones: collected on every peer ${Date.now() - tDeleted} ms after the deletes replicated ` +
        `(${stats.map((s) => `${s.id}: ${s.tombstonesCollected}`).join(', ')})`,
    )
    for (const s of stats) expect(s.tombstonesCollected).toBeGreaterThanOrEqual(300)

    // A steady set-then-delete load of fresh keys on one peer (5000 a second for 10 s); all three are
    // sampled meanwhile. A tombstone lives about min age (1 s) + two collection rounds (2 s apart) +
    // the reports they wait on: some 5 s. Without collection the count would reach the total, 50k.
    const LOAD_MS = 10_000
    const RATE = 5000
    const samples = { b: [], c: [] }
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        for (const p of [b, c]) samples[p.id].push((await p.stats()).tombstones)
        await sleep(200)
      }
    })()
    const load = await a.request('churn', { prefix: 'churn:', ms: LOAD_MS, rate: RATE }, LOAD_MS + 10_000)
    sampling = false
    await sampler
    const rate = load.deletes / (load.ms / 1000)
    const peakA = Math.max(...load.samples.map((s) => s.tombstones))
    const peakOthers = Math.max(...samples.b, ...samples.c)
    const tail = load.samples[load.samples.length - 1]
    console.log(
      `tombstones under load: ${load.deletes} set+delete in ${load.ms} ms (${Math.round(rate)}/s); ` +
        `peak tombstones on the writer ${peakA} (${(peakA / rate).toFixed(1)} s of deletes), on the others ${peakOthers}; ` +
        `at the end ${tail.tombstones}; collected on the writer during the load ${tail.collected - stats[0].tombstonesCollected}`,
    )
    expect(rate).toBeGreaterThan(RATE * 0.8)
    // bounded by the deletes of ~7 s, whatever the total
    const bound = rate * 7
    expect(peakA).toBeLessThan(bound)
    expect(peakOthers).toBeLessThan(bound)
    expect(tail.tombstones).toBeLessThan(bound)
    expect(tail.collected - stats[0].tombstonesCollected).toBeGreaterThan(load.deletes - bound)
    // and once the load stops, they all go
    await waitFor(
      async () => (await Promise.all(all.map((p) => p.stats()))).every((s) => s.tombstones === 0),
      { timeout: 12_000, interval: 200, message: 'the tombstones of the load to be collected' },
    )
    const ds = await converge(all)
    expect(ds[0].size).toBe(0)
  })

  test('a peer away while a key is deleted and its tombstone collected does not bring the key back', async () => {
    const opts = { tombstoneMinAge: 1000, memberTimeout: 2000 }
    const a = await start('a', { options: opts })
    const b = await start('b', { seeds: [a.address], options: opts })
    const c = await start('c', { seeds: [a.address], options: opts })
    const all = [a, b, c]
    await connectedAll(all)
    await c.set('k', 'written by c') // c holds the key's write itself: the worst case for a revival
    await a.set('k2', 'written by a')
    await b.set('keep', 'kept')
    await converge(all, { until: (d) => d.size === 3 })

    const t0 = Date.now()
    c.pause()
    await Promise.all([peerDown(a, 'c', t0), peerDown(b, 'c', t0)])
    await a.delete('k')
    await b.delete('k2')
    // a and b forget c (member timeout), then collect the tombstones of k and k2
    const before = await Promise.all([a.stats(), b.stats()])
    await waitFor(
      async () => {
        const ss = await Promise.all([a.stats(), b.stats()])
        return ss.every((s, i) => s.tombstones === 0 && s.tombstonesCollected >= before[i].tombstonesCollected + 2)
      },
      { timeout: 15_000, interval: 100, message: 'a and b to collect the tombstones of k and k2 while c is away' },
    )
    for (const p of [a, b]) expect((await p.peers()).map((x) => x.id)).not.toContain('c')
    const tCollected = Date.now() - t0

    c.resume()
    const ds = await converge(all, { timeout: 15_000, until: (d) => d.size === 1, message: 'c to rejoin and converge' })
    console.log(`away during collection: collected ${tCollected} ms after c stopped; c back and converged ${Date.now() - t0} ms`)
    for (const p of all) {
      expect(await p.has('k')).toBe(false)
      expect(await p.has('k2')).toBe(false)
      expect(await p.get('keep')).toBe('kept')
    }
    // a while later still: nothing revives
    await sleep(2500)
    const again = await converge(all)
    expect(again[0].digest).toBe(ds[0].digest)
    for (const p of all) expect(await p.has('k')).toBe(false)
    // and c is a full member again: its new writes replicate
    await c.set('after', 'c is back')
    await waitFor(async () => (await a.get('after')) === 'c is back' && (await b.get('after')) === 'c is back', {
      message: "c's new write on a and b",
    })
  })
})

test('a peer restarted empty under the same id gets everything back, and its new writes are accepted', async () => {
  const a = await start('a')
  let b = await start('b', { seeds: [a.address] })
  await connectedAll([a, b])
  await b.setMany(Array.from({ length: 50 }, (_, i) => [`b:${i}`, { gen: 1, i }]))
  await a.setMany(Array.from({ length: 50 }, (_, i) => [`a:${i}`, i]))
  await converge([a, b], { until: (d) => d.size === 100 })

  await b.kill('SIGKILL')
  b = await start('b', { seeds: [a.address] }) // at once, memory empty, same id
  const ds = await converge([a, b], { until: (d) => d.size === 100, message: 'the restarted b to get everything back' })
  expect(ds[1]).toEqual(ds[0])

  // new writes of the new run: fresh keys, and overwrites of keys the old run wrote
  await b.setMany(Array.from({ length: 20 }, (_, i) => [`b:new:${i}`, { gen: 2, i }]))
  await b.setMany(Array.from({ length: 10 }, (_, i) => [`b:${i}`, { gen: 2, i }]))
  await b.delete('b:49')
  const after = await converge([a, b], {
    until: (d) => d.size === 119,
    message: "the restarted b's new writes to reach a",
  })
  expect(after[0].digest).toBe(after[1].digest)
  expect(await a.get('b:new:19')).toEqual({ gen: 2, i: 19 })
  expect(await a.get('b:3')).toEqual({ gen: 2, i: 3 })
  expect(await a.get('b:30')).toEqual({ gen: 1, i: 30 })
  expect(await a.has('b:49')).toBe(false)
})

describe('partial fetch', () => {
  test('fetch from a named peer brings its keys under the prefix, with the count', async () => {
    // p holds keys before q exists; q fetches from p the moment they connect
    const p = await start('p')
    await p.setMany(Array.from({ length: 300 }, (_, i) => [`part:p:${i}`, { i }]))
    await p.setMany(Array.from({ length: 50 }, (_, i) => [`other:${i}`, i]))
    const q = await start('q', { seeds: [p.address] })
    await q.setMany(Array.from({ length: 20 }, (_, i) => [`part:q:${i}`, { q: i }]))
    const r = await q.request('fetchWhenUp', { from: 'p', prefix: 'part:p:' }, 15_000)
    console.log(`fetch: q held ${r.before} of p's 300 part:p: keys when it asked; fetch resolved with ${r.count}`)
    expect(r.count).toBe(300)
    expect(r.keys.sort()).toEqual(Array.from({ length: 300 }, (_, i) => `part:p:${i}`).sort())
    expect(await q.get('part:p:123')).toEqual({ i: 123 })

    // both sides' keys under 'part:', once q's own have reached p too
    await converge([p, q], { until: (d) => d.size === 370 })
    const r2 = await q.request('fetch', { from: 'p', prefix: 'part:' })
    expect(r2.count).toBe(320)
    expect(r2.keys.length).toBe(320)
    const none = await q.request('fetch', { from: 'p', prefix: 'nothing-here:' })
    expect(none).toEqual({ count: 0, keys: [] })
  })

  test('keys written while the link was down arrive by a fetch from the peer that wrote them', async () => {
    const p = await start('p')
    const q = await start('q', { seeds: [p.address] })
    await connectedAll([p, q])
    const t0 = Date.now()
    q.pause()
    await peerDown(p, 'q', t0)
    await p.setMany(Array.from({ length: 200 }, (_, i) => [`gap:${i}`, i]))
    q.resume()
    const r = await q.request('fetchWhenUp', { from: 'p', prefix: 'gap:' }, 15_000)
    console.log(`fetch after a gap: q held ${r.before} of the 200 gap: keys when it asked; fetch resolved with ${r.count}`)
    expect(r.count).toBe(200)
    expect(r.keys.length).toBe(200)
  })

  test("fetch from an unknown or disconnected peer rejects with 'ENOTCONN'", async () => {
    const p = await start('p')
    const q = await start('q', { seeds: [p.address] })
    await connectedAll([p, q])
    const unknown = await rejection(q.request('fetch', { from: 'nobody', prefix: '' }))
    expect(unknown.code).toBe('ENOTCONN')
    expect(unknown.message).toMatch(/nobody/)

    const t0 = Date.now()
    await p.kill('SIGKILL')
    await peerDown(q, 'p', t0)
    const gone = await rejection(q.request('fetch', { from: 'p', prefix: '' }))
    expect(gone.code).toBe('ENOTCONN')
  })
})
