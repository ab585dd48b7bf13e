'use strict'
// The Map-like calls of SharedBucket: count without an array, paged scan with a cursor, a key's time
// left, values and iteration, and the batched writes setMany and deletePrefix that settle once.

const { createPeer, waitConnected, closeAll } = require('./helpers/peers')
const { waitFor } = require('./helpers/wait')

afterEach(async () => {
  await closeAll()
})

test('count(prefix) counts live keys under the prefix, expired and deleted ones not', async () => {
  const p = await createPeer()
  const b = p.bucket('count')
  await b.setMany([['sess:1', 1], ['sess:2', 2], ['sess:3', 3], ['user:1', 'x']])
  await b.set('sess:short', 1, { ttl: 30 })
  await b.delete('sess:3')
  expect(b.count('sess:')).toBe(3)
  await waitFor(() => b.count('sess:') === 2, { message: 'the short key to expire' })
  expect(b.count()).toBe(3)
  expect(b.count('none:')).toBe(0)
  expect(() => b.count(5)).toThrow(TypeError)
  await p.close()
})

test('countAsync(prefix) counts as count() does, a page at a time with turns of the event loop between', async () => {
  const p = await createPeer()
  const b = p.bucket('count-async')
  const n = 25_000
  await b.setMany(Array.from({ length: n }, (_, i) => [`sess:${i}`, i]))
  await b.setMany(Array.from({ length: 5000 }, (_, i) => [`other:${i}`, i]))
  await b.delete('sess:7')
  let turns = 0
  let counting = true
  const tick = () => {
    turns++
    if (counting) setImmediate(tick)
  }
  setImmediate(tick)
  const counted = await b.countAsync('sess:')
  counting = false
  expect(counted).toBe(n - 1)
  expect(counted).toBe(b.count('sess:'))
  expect(turns).toBeGreaterThanOrEqual(2)
  expect(await b.countAsync()).toBe(n + 4999)
  expect(await b.countAsync('none:')).toBe(0)
  const viaCallback = await new Promise((resolve, reject) => b.countAsync('other:', (err, c) => (err ? reject(err) : resolve(c))))
  expect(viaCallback).toBe(5000)
  expect(() => b.countAsync(5)).toThrow(TypeError)
  await p.close()
  await expect(b.countAsync('sess:')).rejects.toMatchObject({ code: 'ECLOSED' })
})

test('scan pages through every live key under a prefix once, each page within its limit', async () => {
  const p = await createPeer()
  const b = p.bucket('scan')
  const want = new Map()
  for (let i = 0; i < 2500; i++) want.set(`sess:${i}`, { i })
  await b.setMany(want)
  await b.setMany(Array.from({ length: 500 }, (_, i) => [`other:${i}`, i]))
  const seen = new Map()
  let cursor = null
  let pages = 0
  do {
    const page = b.scan({ prefix: 'sess:', cursor, limit: 100 })
    expect(page.entries.length).toBeLessThanOrEqual(100)
    for (const [k, v] of page.entries) {
      expect(seen.has(k)).toBe(false)
      seen.set(k, v)
    }
    cursor = page.cursor
    pages++
  } while (cursor !== null)
  expect(pages).toBeGreaterThanOrEqual(25)
  expect(seen).toEqual(want)
  const keys = b.scan({ prefix: 'other:', keysOnly: true, limit: 100000 })
  expect(keys.cursor).toBeNull()
  expect(keys.keys.sort()).toEqual(Array.from({ length: 500 }, (_, i) => `other:${i}`).sort())
  expect(() => b.scan({ cursor: 'nonsense' })).toThrow(TypeError)
  expect(() => b.scan({ limit: 0 })).toThrow(RangeError)
  await p.close()
})

test('ttl(key) is the ms left, Infinity without expiry, undefined when absent', async () => {
  const p = await createPeer()
  const b = p.bucket('ttl')
  await b.set('a', 1, { ttl: 60_000 })
  await b.set('b', 1)
  const left = b.ttl('a')
  expect(left).toBeGreaterThan(55_000)
  expect(left).toBeLessThanOrEqual(60_000)
  expect(b.ttl('b')).toBe(Infinity)
  expect(b.ttl('missing')).toBeUndefined()
  await b.touch('a', 5_000)
  expect(b.ttl('a')).toBeLessThanOrEqual(5_000)
  await b.delete('a')
  expect(b.ttl('a')).toBeUndefined()
  await p.close()
})

test('values() and iteration give the live entries', async () => {
  const p = await createPeer()
  const b = p.bucket('iter')
  await b.setMany([['x:1', 'one'], ['x:2', { two: 2 }], ['y', [3]]])
  expect(b.values('x:').sort((a, c) => JSON.stringify(a).localeCompare(JSON.stringify(c)))).toEqual(['one', { two: 2 }].sort((a, c) => JSON.stringify(a).localeCompare(JSON.stringify(c))))
  expect(new Map(b)).toEqual(new Map([['x:1', 'one'], ['x:2', { two: 2 }], ['y', [3]]]))
  await p.close()
})

test('setMany checks every entry before writing any, and settles once for the ack level', async () => {
  const a = await createPeer()
  const b = await createPeer({ peers: [a.address] })
  await waitConnected([a, b])
  const ba = a.bucket('many')
  expect(() => ba.setMany([['ok', 1], ['bad', undefined]])).toThrow(/entry 1/)
  expect(() => ba.setMany([['ok', 1], ['', 2]])).toThrow(TypeError)
  expect(ba.has('ok')).toBe(false)
  const done = ba.setMany(Array.from({ length: 200 }, (_, i) => [`k${i}`, i]), { ack: 'all', ttl: 60_000 })
  expect(done).toBeInstanceOf(Promise)
  await done
  const bb = b.bucket('many')
  for (let i = 0; i < 200; i++) expect(bb.get(`k${i}`)).toBe(i)
  expect(bb.ttl('k0')).toBeGreaterThan(50_000)
  await new Promise((resolve, reject) => ba.setMany([['cb', 1]], (err) => (err ? reject(err) : resolve())))
  await Promise.all([a.close(), b.close()])
})

test('deletePrefix deletes every key under the prefix on every replica and resolves with how many', async () => {
  const a = await createPeer()
  const b = await createPeer({ peers: [a.address] })
  await waitConnected([a, b])
  const ba = a.bucket('dp')
  await ba.setMany([...Array.from({ length: 300 }, (_, i) => [`user:7:${i}`, i]), ['user:70', 'keep'], ['other', 1]], { ack: 'all' })
  expect(await ba.deletePrefix('user:7:', { ack: 'all' })).toBe(300)
  const bb = b.bucket('dp')
  expect(bb.count('user:7:')).toBe(0)
  expect(bb.get('user:70')).toBe('keep')
  expect(bb.get('other')).toBe(1)
  expect(() => ba.deletePrefix('x', { ttl: 5 })).toThrow(TypeError)
  await Promise.all([a.close(), b.close()])
})
