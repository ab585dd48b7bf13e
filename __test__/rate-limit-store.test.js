'use strict'
// RateLimitStore's whole store interface (express-rate-limit v7 and later: get, increment, decrement,
// resetKey, resetAll, shutdown) on two linked peers, against what express-rate-limit's own MemoryStore
// does: get gives a client's hits and the end of its window, undefined once it has none (or the window
// ended); decrement takes back one hit and never goes below zero; resetKey forgets a client, resetAll
// every client of the store's prefix;
// shutdown leaves the peer to the application. Each effect is checked on the other peer too, since the
// counts are shared.

const request = require('supertest')
const express = require('express')
const { rateLimit } = require('express-rate-limit')
const { RateLimitStore } = require('..')
const { createPeer, waitConnected, closeAll } = require('./helpers/peers')
const { waitFor, sleep } = require('./helpers/wait')

jest.setTimeout(30_000)

afterEach(async () => {
  await closeAll()
})

const WINDOW = 60_000

/** Two linked peers, each with a RateLimitStore (`options`) initialised as express-rate-limit does. */
async function twoStores(options = {}, windowMs = WINDOW) {
  const a = await createPeer({ id: 'a' })
  const b = await createPeer({ id: 'b', peers: [a.address] })
  await waitConnected([a, b])
  const stores = [a, b].map((peer) => {
    const store = new RateLimitStore({ peer, ...options })
    store.init({ windowMs })
    return store
  })
  return { a, b, stores }
}

/** Waits until `store.get(key)` on every store gives `hits` (undefined: no hits). */
async function everywhere(stores, key, hits) {
  await waitFor(async () => {
    const seen = await Promise.all(stores.map((s) => s.get(key)))
    return seen.every((info) => (hits === undefined ? info === undefined : info !== undefined && info.totalHits === hits))
  }, { message: `${key} at ${hits} hits on every store` })
}

describe('get', () => {
  test('is undefined for a client never counted, else its hits and the end of its window, the same on both peers', async () => {
    const { stores: [sa, sb] } = await twoStores()
    expect(await sa.get('never')).toBeUndefined()
    const t0 = Date.now()
    const first = await sa.increment('c')
    expect(first.totalHits).toBe(1)
    expect(first.resetTime).toBeInstanceOf(Date)
    expect(first.resetTime.getTime()).toBeGreaterThanOrEqual(t0 + WINDOW - 50)
    expect(first.resetTime.getTime()).toBeLessThanOrEqual(Date.now() + WINDOW)
    await sb.increment('c')
    await everywhere([sa, sb], 'c', 2)
    for (const s of [sa, sb]) expect(await s.get('c')).toEqual({ totalHits: 2, resetTime: first.resetTime })
  })

  test('is undefined once the window has ended, on both peers; the next hit opens a new window at 1', async () => {
    const { stores: [sa, sb] } = await twoStores({}, 400)
    const first = await sa.increment('c')
    await sa.increment('c')
    await everywhere([sa, sb], 'c', 2)
    await sleep(first.resetTime.getTime() - Date.now() + 50)
    for (const s of [sa, sb]) expect(await s.get('c')).toBeUndefined()
    const next = await sb.increment('c')
    expect(next.totalHits).toBe(1)
    expect(next.resetTime.getTime()).toBeGreaterThan(first.resetTime.getTime())
  })
})

describe('decrement', () => {
  test('takes back one hit, on both peers, and keeps the window', async () => {
    const { stores: [sa, sb] } = await twoStores()
    for (let i = 0; i < 3; i++) await sa.increment('c')
    const { resetTime } = await sa.get('c')
    await sa.decrement('c')
    expect((await sa.get('c')).totalHits).toBe(2)
    await everywhere([sa, sb], 'c', 2)
    await sb.decrement('c')
    await everywhere([sa, sb], 'c', 1)
    expect((await sa.get('c')).resetTime).toEqual(resetTime)
    expect((await sa.increment('c')).totalHits).toBe(2)
  })

  test('of a client with no hits does nothing: never below zero, the next hit counts 1', async () => {
    const { stores: [sa, sb] } = await twoStores()
    await sa.decrement('never')
    expect(await sa.get('never')).toBeUndefined()
    expect((await sa.increment('never')).totalHits).toBe(1)

    // Counted, then taken back to zero, then once more: still zero, on both peers.
    await sa.increment('c')
    await sa.decrement('c')
    await sa.decrement('c')
    await everywhere([sa, sb], 'c', undefined)
    await sb.decrement('c')
    await sleep(200)
    for (const s of [sa, sb]) expect(await s.get('c')).toBeUndefined()
    expect((await sb.increment('c')).totalHits).toBe(1)
    await everywhere([sa, sb], 'c', 1)
  })

  test('after resetKey does nothing: the next hit counts 1 on both peers', async () => {
    const { stores: [sa, sb] } = await twoStores()
    for (let i = 0; i < 3; i++) await sa.increment('c')
    await everywhere([sa, sb], 'c', 3)
    await sa.resetKey('c')
    await everywhere([sa, sb], 'c', undefined)
    await sa.decrement('c')
    await sb.decrement('c')
    await sleep(200)
    for (const s of [sa, sb]) expect(await s.get('c')).toBeUndefined()
    expect((await sa.increment('c')).totalHits).toBe(1)
    await everywhere([sa, sb], 'c', 1)
  })
})

describe('resetKey and resetAll', () => {
  test('resetKey forgets one client on both peers and leaves the others counted', async () => {
    const { stores: [sa, sb] } = await twoStores()
    for (let i = 0; i < 5; i++) await sa.increment('c')
    await sb.increment('d')
    await sb.increment('d')
    await everywhere([sa, sb], 'c', 5)
    await sb.resetKey('c')
    expect(await sb.get('c')).toBeUndefined()
    await everywhere([sa, sb], 'c', undefined)
    await everywhere([sa, sb], 'd', 2)
    expect((await sa.increment('c')).totalHits).toBe(1)
  })

  test('resetAll forgets every client of its prefix on both peers, and no client of another prefix', async () => {
    const { a, b, stores: [sa, sb] } = await twoStores({ prefix: 'login:' })
    // Another store on the same counter, another prefix: what resetAll must leave alone.
    const [oa, ob] = [a, b].map((peer) => {
      const s = new RateLimitStore({ peer, prefix: 'api:' })
      s.init({ windowMs: WINDOW })
      return s
    })
    await sa.increment('x')
    await sa.increment('x')
    await sb.increment('y')
    await oa.increment('x')
    await everywhere([sa, sb], 'x', 2)
    await everywhere([sa, sb], 'y', 1)
    await everywhere([oa, ob], 'x', 1)
    await sb.resetAll()
    for (const key of ['x', 'y']) await everywhere([sa, sb], key, undefined)
    await sleep(200)
    for (const s of [oa, ob]) expect((await s.get('x')).totalHits).toBe(1)
    expect((await sa.increment('x')).totalHits).toBe(1)
  })

  test('resetAll resets thousands of clients a page of resets at a time, and a hit counted after its client was reset stays', async () => {
    const peer = await createPeer({ id: 'solo' })
    const store = new RateLimitStore({ peer, ack: 'local' })
    store.init({ windowMs: WINDOW })
    const n = 3000
    await Promise.all(Array.from({ length: n }, (_, i) => store.increment(`c${i}`)))
    const reset = store.counter.reset.bind(store.counter)
    let inFlight = 0
    let most = 0
    let calls = 0
    const later = []
    store.counter.reset = (key, ...rest) => {
      calls++
      // The first page's resets have settled once a later one starts: c0 is counted again after its reset.
      if (key === `rl:c${n - 1}`) later.push(store.increment('c0'), store.increment('late'))
      inFlight++
      most = Math.max(most, inFlight)
      return reset(key, ...rest).finally(() => inFlight--)
    }
    await store.resetAll()
    await Promise.all(later)
    expect(calls).toBe(n)
    expect(most).toBeLessThanOrEqual(1000)
    expect((await store.get('c0')).totalHits).toBe(1)
    expect((await store.get('late')).totalHits).toBe(1)
    for (let i = 1; i < n; i++) expect(await store.get(`c${i}`)).toBeUndefined()
  })
})

test('shutdown resolves and leaves the peer open: counts still replicate, and the application closes the peer', async () => {
  const { a, stores: [sa, sb] } = await twoStores()
  await sa.increment('c')
  await expect(sa.shutdown()).resolves.toBeUndefined()
  expect(a.closed).toBe(false)
  await sb.increment('c')
  await everywhere([sa, sb], 'c', 2)
  await a.close()
  expect(a.closed).toBe(true)
})

describe('under express-rate-limit', () => {
  /** An app on `store`, limit 3, whose /fail answers 500 (not counted with skipFailedRequests). */
  function app(store) {
    const limiter = rateLimit({ windowMs: WINDOW, limit: 3, store, skipFailedRequests: true, keyGenerator: (req) => req.get('x-client'), validate: false })
    const server = express()
    server.use(limiter)
    server.get('/ok', (req, res) => res.send('ok'))
    server.get('/fail', (req, res) => res.status(500).send('failed'))
    return { server, limiter }
  }

  test('failed requests are taken back with decrement, and limiter.resetKey and getKey reach every server', async () => {
    const { a, b } = await twoStores()
    const [one, two] = [a, b].map((peer) => app(new RateLimitStore({ peer })))
    const get = (s, path) => request(s.server).get(path).set('x-client', 'ada')

    // Failed requests count while they run and are taken back once they fail: never limited.
    for (let i = 0; i < 6; i++) expect((await get(i % 2 ? two : one, '/fail')).status).toBe(500)
    await waitFor(async () => (await one.limiter.getKey('ada')) === undefined && (await two.limiter.getKey('ada')) === undefined, { message: 'no hits left for ada' })

    expect((await get(one, '/ok')).status).toBe(200)
    expect((await get(two, '/ok')).status).toBe(200)
    expect((await get(one, '/ok')).status).toBe(200)
    // Replication is asynchronous: the limit is shared once both servers count the three hits.
    const hits = async (s) => (await s.limiter.getKey('ada'))?.totalHits
    await waitFor(async () => (await hits(one)) === 3 && (await hits(two)) === 3, { message: 'three hits on both servers' })
    // Refused: a 429 is a failed request too. express-rate-limit takes it back when the response
    // finishes, which can be after the client has it, so the count settles back to 3 on both servers.
    expect((await get(two, '/ok')).status).toBe(429)
    expect((await get(one, '/ok')).status).toBe(429)
    await waitFor(async () => (await hits(one)) === 3 && (await hits(two)) === 3, { message: 'the refused requests taken back on both servers' })

    // An administrator lifts the limit on one server: the other lets the client through too.
    await one.limiter.resetKey('ada')
    await waitFor(async () => (await two.limiter.getKey('ada')) === undefined, { message: 'the reset to reach the other server' })
    expect((await get(two, '/ok')).status).toBe(200)
  })
})
