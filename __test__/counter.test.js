'use strict'
// SharedCounter (peer.counter()): increments made concurrently on several peers merge exactly, where
// get / +1 / set on a bucket loses them; reset, windows, 'change' events, keys, size and argument
// checks, in one process.

const { createPeer, createCluster, closeAll } = require('./helpers/peers')
const { waitFor, sleep } = require('./helpers/wait')

afterEach(closeAll)

test('concurrent increments on two peers count every one, where get / +1 / set loses them', async () => {
  const [a, b] = await createCluster(2, 'cnt')
  const hits = [a.counter('hits'), b.counter('hits')]
  const naive = [a.bucket('naive'), b.bucket('naive')]
  const rounds = 500
  await Promise.all([0, 1].map(async (i) => {
    for (let n = 0; n < rounds; n++) {
      await hits[i].incr('k')
      await naive[i].set('k', (naive[i].get('k') ?? 0) + 1)
      if (n % 25 === 0) await sleep(1)
    }
  }))
  await waitFor(() => hits.every((h) => h.get('k') === 2 * rounds), { message: 'both counters at 1000' })
  // The same increments written last-writer-wins lose some (the point of a counter).
  await sleep(300)
  expect(naive[0].get('k')).toBeLessThan(2 * rounds)
})

test('incr resolves with the value seen here after it; decr, get of an absent key, callbacks', async () => {
  const peer = await createPeer()
  const c = peer.counter('c')
  expect(c.get('nobody')).toBe(0)
  expect(await c.incr('k')).toBe(1)
  expect(await c.incr('k', 5)).toBe(6)
  expect(await c.decr('k', 2)).toBe(4)
  expect(await c.incr('k', { ttl: 60_000 })).toBe(5)
  const viaCallback = await new Promise((resolve, reject) => c.incr('k', 10, (err, v) => (err ? reject(err) : resolve(v))))
  expect(viaCallback).toBe(15)
  expect(peer.counter('c')).toBe(c)
})

test('reset clears the increments it saw; one made concurrently on another peer survives', async () => {
  const [a, b] = await createCluster(2, 'rst')
  const ca = a.counter('r')
  const cb = b.counter('r')
  await ca.incr('k', 5, { ack: 'all' })
  await waitFor(() => cb.get('k') === 5)
  // b resets having seen the 5 while a adds 3 that b has not seen yet.
  await Promise.all([cb.reset('k'), ca.incr('k', 3)])
  await waitFor(() => ca.get('k') === 3 && cb.get('k') === 3, { message: 'both at 3 after the reset' })
  await ca.reset('k', { ack: 'all' })
  await waitFor(() => cb.get('k') === 0)
  expect(ca.keys()).toEqual([])
  expect(ca.size).toBe(0)
})

test('a window opened by the first increment ends at the same time everywhere, then the count restarts', async () => {
  const [a, b] = await createCluster(2, 'win')
  const ca = a.counter('w', { ttl: 400 })
  const cb = b.counter('w')
  expect(ca.expiresAt('k')).toBeUndefined()
  await ca.incr('k', 1, { ack: 'all' })
  const end = ca.expiresAt('k')
  expect(end).toBeGreaterThan(Date.now())
  expect(end).toBeLessThanOrEqual(Date.now() + 400)
  await waitFor(() => cb.get('k') === 1)
  expect(cb.expiresAt('k')).toBe(end)
  // b joins a's window even with a ttl of its own.
  expect(await cb.incr('k', 1, { ttl: 60_000 })).toBe(2)
  expect(cb.expiresAt('k')).toBe(end)
  await sleep(Math.max(0, end - Date.now()) + 20)
  expect(ca.get('k')).toBe(0)
  expect(cb.get('k')).toBe(0)
  expect(await ca.incr('k')).toBe(1)
  expect(ca.expiresAt('k')).toBeGreaterThan(end)
})

test("'change' carries the key's merged value, for local and remote increments", async () => {
  const [a, b] = await createCluster(2, 'chg')
  const ca = a.counter('e')
  const events = []
  ca.on('change', (e) => events.push(e))
  await ca.incr('k', 2)
  // Events come in batches after the writes; each carries the value held when it is delivered.
  await waitFor(() => events.length === 1)
  await b.counter('e').incr('k', 3)
  await waitFor(() => events.some((e) => e.value === 5), { message: 'a change event with 5' })
  expect(events[0]).toEqual({ key: 'k', value: 2, local: true, origin: 'chg1' })
  expect(events.find((e) => e.value === 5)).toMatchObject({ key: 'k', local: false, origin: 'chg2' })
})

test('keys and size list the keys whose value is not 0, under a prefix', async () => {
  const peer = await createPeer()
  const c = peer.counter('ks')
  await c.incr('ip:1')
  await c.incr('ip:2', 2)
  await c.incr('user:1')
  await c.incr('zero')
  await c.decr('zero')
  expect(c.keys('ip:')).toEqual(['ip:1', 'ip:2'])
  expect(c.keys().sort()).toEqual(['ip:1', 'ip:2', 'user:1'])
  expect(c.size).toBe(3)
  // A counter's registers are not keys of stats() (which counts what users store in buckets).
  expect(peer.stats().keys).toBe(0)
})

test('bad arguments throw, and a bucket name of a counter cannot be opened', async () => {
  const peer = await createPeer()
  const c = peer.counter('args')
  expect(() => peer.counter('')).toThrow(TypeError)
  expect(() => peer.counter('x'.repeat(300))).toThrow(RangeError)
  expect(() => peer.counter('x', { ttl: -1 })).toThrow(RangeError)
  expect(() => c.incr('')).toThrow(TypeError)
  expect(() => c.incr('k', 1.5)).toThrow(RangeError)
  expect(() => c.incr('k', 1, { ack: 'some' })).toThrow(RangeError)
  expect(() => c.get(42)).toThrow(TypeError)
  expect(() => peer.bucket('\u0000counter:args')).toThrow(/reserved for counters/)
  await peer.close()
  await expect(c.incr('k')).rejects.toMatchObject({ code: 'ECLOSED' })
  expect(() => c.get('k')).toThrow(expect.objectContaining({ code: 'ECLOSED' }))
})

test('before ready(): increments and resets are queued in call order, sync reads throw ENOTREADY', async () => {
  const { Peer } = require('..')
  const peer = new Peer({ listen: '127.0.0.1:0' })
  const c = peer.counter('early')
  const changes = []
  c.on('change', (e) => changes.push(e.value))
  expect(() => c.get('k')).toThrow(expect.objectContaining({ code: 'ENOTREADY' }))
  expect(() => c.size).toThrow(expect.objectContaining({ code: 'ENOTREADY' }))
  const first = c.incr('k', 3)
  const reset = c.reset('k')
  const third = c.incr('k')
  const viaCallback = new Promise((resolve, reject) => c.incr('k', 2, (err, v) => (err ? reject(err) : resolve(v))))
  await peer.ready()
  expect(await first).toBe(3)
  await reset
  expect(await third).toBe(1)
  expect(await viaCallback).toBe(3)
  expect(c.get('k')).toBe(3)
  await waitFor(() => changes.length > 0 && changes[changes.length - 1] === 3, { message: "the 'change' listener attached before ready() to hear 3" })
  await peer.close()
})
