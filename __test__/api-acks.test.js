'use strict'
// The public API of peer-buckets (README: API reference), one concern per api-*.test.js suite.
// Ack levels, fetch() and the options that bound them (rememberCollected, maxClockSkew, maxBuckets).

const { Peer } = require('..')
const { createPeer, createCluster, closeAll } = require('./helpers/peers')
const { waitFor, withTimeout } = require('./helpers/wait')
const { captureError, callbackError, describeError } = require('./helpers/errors')
const { expectArgError, expectCode } = require('./helpers/expect')

afterEach(async () => {
  await closeAll()
})

// ---------------------------------------------------------------------------------------------------

describe('ack levels, fetch() and maxClockSkew', () => {
  test("set/delete with ack 'one' / 'majority' / 'all' settle once other peers have applied the write", async () => {
    const [a, b, c] = await createCluster(3, 'ack')
    const ba = a.bucket('acks')
    await ba.set('one', 1, { ack: 'one' })
    expect([b, c].filter((p) => p.bucket('acks').get('one') === 1).length).toBeGreaterThanOrEqual(1)
    await ba.set('majority', 2, { ack: 'majority' })
    expect([b, c].filter((p) => p.bucket('acks').get('majority') === 2).length).toBeGreaterThanOrEqual(1)
    await ba.set('all', { v: 3 }, { ack: 'all', timeout: 3000 })
    expect(b.bucket('acks').get('all')).toEqual({ v: 3 })
    expect(c.bucket('acks').get('all')).toEqual({ v: 3 })
    expect(await callbackError((cb) => ba.set('cb', Buffer.from('x'), { ack: 'all' }, cb))).toBeFalsy()
    expect(b.bucket('acks').get('cb').toString()).toBe('x')
    expect(c.bucket('acks').get('cb').toString()).toBe('x')
    await ba.delete('all', { ack: 'all' })
    expect(b.bucket('acks').has('all')).toBe(false)
    expect(c.bucket('acks').has('all')).toBe(false)
    expect(await callbackError((cb) => ba.delete('cb', { ack: 'one' }, cb))).toBeFalsy()
    expect([b, c].some((p) => !p.bucket('acks').has('cb'))).toBe(true)
  })

  test("an ack that cannot be met fails with EACKTIMEOUT and acked: [] past the timeout; the write stays applied", async () => {
    const peer = await createPeer({ id: 'lonely' })
    const bucket = peer.bucket('acks')
    const t0 = Date.now()
    const err = await captureError(() => bucket.set('k', 'v', { ack: 'one', timeout: 300 }))
    expectCode(err, 'EACKTIMEOUT')
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250)
    expect(err.acked).toEqual([])
    expect(bucket.get('k')).toBe('v')
    const cbErr = await callbackError((cb) => bucket.delete('k', { ack: 'one', timeout: 200 }, cb))
    expectCode(cbErr, 'EACKTIMEOUT')
    expect(cbErr.acked).toEqual([])
    expect(bucket.has('k')).toBe(false)
  })

  test('acks pending at close() fail with ECLOSED', async () => {
    const peer = await createPeer({ id: 'closing-acks' })
    const bucket = peer.bucket('acks')
    const pending = bucket.set('k', 1, { ack: 'one', timeout: 10_000 })
    const cbPending = callbackError((cb) => bucket.set('k2', 2, { ack: 'one', timeout: 10_000 }, cb), 5000)
    await peer.close()
    expectCode(await withTimeout(captureError(() => pending), 2000, 'pending ack after close'), 'ECLOSED')
    expectCode(await cbPending, 'ECLOSED')
  })

  test('fetch({ from, prefix }) resolves with how many entries arrived; unknown peers and bad options fail', async () => {
    const [a, b] = await createCluster(2, 'fetch')
    const bb = b.bucket('f')
    await bb.set('p:1', 1)
    await bb.set('p:2', { two: 2 })
    await bb.set('q:1', 3)
    const fa = a.bucket('f')
    const n = await fetchWithin(fa.fetch({ from: 'fetch2', prefix: 'p:' }))
    expect(n).toBe(2)
    expect(fa.get('p:1')).toBe(1)
    expect(fa.get('p:2')).toEqual({ two: 2 })
    expect(await fetchWithin(fa.fetch({ from: 'fetch2' }))).toBe(3)
    expect(fa.get('q:1')).toBe(3)

    const unknown = await captureError(() => fa.fetch({ from: 'nobody' }))
    expect(unknown).toBeInstanceOf(Error)
    expect(unknown.code).toBeDefined()
    for (const [label, call, re] of [
      ['no options', () => fa.fetch(), /options/],
      ['from missing', () => fa.fetch({ prefix: 'p:' }), /from/],
      ['prefix number', () => fa.fetch({ from: 'fetch2', prefix: 5 }), /prefix/],
    ]) {
      const err = await captureError(call)
      try {
        expectArgError(err, TypeError, re)
      } catch (e) {
        e.message = `fetch ${label}: ${describeError(err)}\n${e.message}`
        throw e
      }
    }
  })

  test('rememberCollected bounds how long the keys of collected tombstones are remembered; a bad one throws RangeError naming it', async () => {
    const peer = await createPeer({ tombstoneMinAge: 200, rememberCollected: 1500 })
    const b = peer.bucket('remember')
    for (let i = 0; i < 10; i++) await b.set(`k${i}`, i)
    for (let i = 0; i < 10; i++) await b.delete(`k${i}`)
    await waitFor(() => peer.stats().collectedRemembered === 10, { timeout: 8000, message: '10 collected keys remembered' })
    expect(peer.stats().tombstones).toBe(0)
    await waitFor(() => peer.stats().collectedRemembered === 0, { timeout: 8000, message: 'forgotten after rememberCollected' })
    for (const bad of [-1, 0, NaN, 'long']) {
      let made
      const err = await captureError(() => {
        made = new Peer({ rememberCollected: bad })
        return made.ready()
      })
      if (made) await made.close().catch(() => {})
      expect(err).toBeInstanceOf(RangeError)
      expect(err.message).toMatch(/rememberCollected/)
    }
  })

  test('maxBuckets is accepted; a bad one throws TypeError/RangeError naming it', async () => {
    const peer = await createPeer({ maxBuckets: 5 })
    expect(peer.address).toMatch(/^127\.0\.0\.1:\d+$/)
    for (const [bad, Kind] of [
      ['10', TypeError],
      [null, TypeError],
      [0, RangeError],
      [-1, RangeError],
      [1.5, RangeError],
      [NaN, RangeError],
      [Infinity, RangeError],
      [2 ** 32, RangeError],
    ]) {
      const err = await captureError(() => new Peer({ maxBuckets: bad }))
      expect(err).toBeInstanceOf(Kind)
      expect(err.message).toMatch(/maxBuckets/)
    }
  })

  test('maxClockSkew is accepted; a bad one throws RangeError naming it', async () => {
    const peer = await createPeer({ maxClockSkew: 1000 })
    expect(peer.address).toMatch(/^127\.0\.0\.1:\d+$/)
    for (const bad of [-1, 0, NaN, Infinity, 'soon']) {
      let made
      const err = await captureError(() => {
        made = new Peer({ maxClockSkew: bad })
        return made.ready()
      })
      if (made) await made.close().catch(() => {})
      expect(err).toBeInstanceOf(Error)
      expect([TypeError, RangeError].some((C) => err instanceof C)).toBe(true)
      expect(err.message).toMatch(/maxClockSkew/)
    }
  })
})

function fetchWithin(promise) {
  return withTimeout(promise, 5000, 'fetch()')
}
