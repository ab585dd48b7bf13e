'use strict'
// TTL and touch: expiry is an absolute time replicated with the value, so every replica hides a key at
// the same moment; touch extends a live key without rewriting it and never brings one back.

const { Peer } = require('..')

const peers = []

async function open(options = {}) {
  const p = new Peer(options)
  await p.ready()
  peers.push(p)
  return p
}

async function pair(options = {}) {
  const a = await open(options)
  const b = await open({ ...options, peers: [a.address] })
  await until(() => a.peers().some((p) => p.state === 'connected') && b.peers().some((p) => p.state === 'connected'))
  return [a, b]
}

async function until(check, ms = 5000) {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (check()) return
    await new Promise((r) => setTimeout(r, 20))
  }
  throw new Error('condition not met in time')
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

afterEach(async () => {
  await Promise.all(peers.splice(0).map((p) => p.close()))
})

test('a key set with a ttl expires at the same moment on every replica, with a change event on each', async () => {
  const [a, b] = await pair()
  const ba = a.bucket('s')
  const bb = b.bucket('s')
  const events = { a: [], b: [] }
  ba.on('change', (e) => e.deleted && events.a.push(e))
  bb.on('change', (e) => e.deleted && events.b.push(e))
  await ba.set('sess:1', { user: 'ada' }, { ttl: 400 })
  await until(() => bb.has('sess:1'))
  expect(bb.get('sess:1')).toEqual({ user: 'ada' })
  await until(() => !ba.has('sess:1') && !bb.has('sess:1'), 2000)
  // Invisible everywhere at once: get/has/keys/size agree.
  for (const bucket of [ba, bb]) {
    expect(bucket.get('sess:1')).toBeUndefined()
    expect(bucket.keys()).toEqual([])
    expect(bucket.size).toBe(0)
  }
  await until(() => events.a.length === 1 && events.b.length === 1)
  for (const e of [...events.a, ...events.b]) {
    expect(e).toMatchObject({ key: 'sess:1', deleted: true, value: undefined, expired: true })
  }
})

test("a bucket's ttl applies to every write without one; a write's ttl overrides it", async () => {
  const a = await open()
  const b = a.bucket('short', { ttl: 300 })
  expect(a.bucket('short')).toBe(b)
  expect(b.defaultTtl).toBe(300)
  await b.set('default', 1)
  await b.set('longer', 2, { ttl: 60_000 })
  await sleep(500)
  expect(b.has('default')).toBe(false)
  expect(b.get('longer')).toBe(2)
})

test('touch extends a live key on every replica without rewriting its value', async () => {
  const [a, b] = await pair()
  const ba = a.bucket('s')
  const bb = b.bucket('s')
  await ba.set('k', 'v', { ttl: 500 })
  await until(() => bb.has('k'))
  const changes = []
  bb.on('change', (e) => changes.push(e))
  expect(await ba.touch('k', 3000)).toBe(true)
  await sleep(800)
  expect(ba.get('k')).toBe('v')
  expect(bb.get('k')).toBe('v')
  expect(changes).toEqual([]) // a touch is not a change of value
  // The callback form reports the same.
  const touched = await new Promise((resolve, reject) => ba.touch('k', 3000, (err, t) => (err ? reject(err) : resolve(t))))
  expect(touched).toBe(true)
})

test('touch returns false for an absent, deleted or expired key and never brings it back', async () => {
  const [a, b] = await pair()
  const ba = a.bucket('s')
  const bb = b.bucket('s')
  expect(await ba.touch('never', 1000)).toBe(false)
  await ba.set('gone', 1)
  await ba.delete('gone')
  expect(await ba.touch('gone', 1000)).toBe(false)
  await ba.set('brief', 1, { ttl: 200 })
  await sleep(350)
  expect(await ba.touch('brief', 60_000)).toBe(false)
  await sleep(200)
  expect(ba.has('brief')).toBe(false)
  expect(bb.has('brief')).toBe(false)
  expect(bb.has('gone')).toBe(false)
})

test('a delete racing a touch of the same key on another peer: the key ends deleted or alive alike on both', async () => {
  const [a, b] = await pair()
  const ba = a.bucket('s')
  const bb = b.bucket('s')
  await ba.set('sess', { user: 'ada' }, { ttl: 60_000 })
  await until(() => bb.has('sess'))
  await Promise.all([ba.delete('sess'), bb.touch('sess', 60_000)])
  await sleep(300)
  expect(ba.has('sess')).toBe(bb.has('sess'))
  expect(ba.has('sess')).toBe(false) // a touch never revives a deleted key
})

test('bad ttls are refused with a RangeError naming them, and nothing is stored', async () => {
  const a = await open()
  const b = a.bucket('s')
  for (const ttl of [0, -5, NaN, Infinity, '100']) {
    expect(() => b.set('k', 1, { ttl })).toThrow(RangeError)
    expect(() => b.touch('k', ttl)).toThrow(/ttl/)
    expect(() => a.bucket('other', { ttl })).toThrow(/ttl/)
  }
  expect(() => b.delete('k', { ttl: 100 })).toThrow(TypeError)
  expect(b.size).toBe(0)
})

test('memory stays bounded under a steady load of short-lived keys', async () => {
  const [a, b] = await pair({ tombstoneMinAge: 300 })
  const ba = a.bucket('sessions', { ttl: 100 })
  let written = 0
  let peakDead = 0
  const deadline = Date.now() + 6000
  while (Date.now() < deadline) {
    for (let i = 0; i < 500; i++) ba.set(`sess:${written++}`, { n: written })
    await sleep(10)
    peakDead = Math.max(peakDead, a.stats().tombstones, b.stats().tombstones)
  }
  expect(written).toBeGreaterThan(20_000)
  // Expired entries are swept and collected as the load goes on, not kept until it stops.
  expect(peakDead).toBeLessThan(written / 2)
  await until(() => a.stats().tombstones === 0 && b.stats().tombstones === 0 && ba.size === 0, 10_000)
  expect(a.stats().tombstonesCollected).toBeGreaterThan(0)
  expect(b.bucket('sessions').size).toBe(0)
})
