'use strict'
// The public API of peer-buckets (README: API reference), one concern per api-*.test.js suite.
// A Peer's life in the jest process: ready(), ids and addresses, buckets by name, close(), listen
// errors, peers() and stats().

const net = require('node:net')
const { Peer, SharedBucket } = require('..')
const { createPeer, createCluster, waitConnected, isConnected, closeAll } = require('./helpers/peers')
const { waitFor, withTimeout } = require('./helpers/wait')
const { captureError, callbackError, describeError, NO_ERROR } = require('./helpers/errors')
const { expectCode } = require('./helpers/expect')

afterEach(async () => {
  await closeAll()
})

// ---------------------------------------------------------------------------------------------------

describe('Peer basics', () => {
  test('ready() resolves; id and address are set; address is the bound loopback port', async () => {
    const peer = await createPeer({ id: 'basic-1' })
    expect(peer.id).toBe('basic-1')
    expect(typeof peer.address).toBe('string')
    const m = /^127\.0\.0\.1:(\d+)$/.exec(peer.address)
    expect(m).not.toBeNull()
    expect(Number(m[1])).toBeGreaterThan(0)

    // something really listens there
    await new Promise((resolve, reject) => {
      const s = net.connect(Number(m[1]), '127.0.0.1', () => {
        s.destroy()
        resolve()
      })
      s.on('error', reject)
    })
  })

  test('default id is a random non-empty string; listen may be a port number', async () => {
    const a = await createPeer({ listen: 0 })
    const b = await createPeer({ listen: 0 })
    expect(typeof a.id).toBe('string')
    expect(a.id.length).toBeGreaterThan(0)
    expect(a.id).not.toBe(b.id)
    expect(a.address).toMatch(/^127\.0\.0\.1:[1-9]\d*$/)
  })

  test('bucket(name) returns the same SharedBucket object per name, distinct ones per name', async () => {
    const peer = await createPeer()
    const b1 = peer.bucket('one')
    expect(b1).toBeInstanceOf(SharedBucket)
    expect(peer.bucket('one')).toBe(b1)
    const b2 = peer.bucket('two')
    expect(b2).not.toBe(b1)
    await b1.set('k', 1)
    expect(b2.has('k')).toBe(false)
    expect(b1.get('k')).toBe(1)
  })

  test('bucket names of exactly 255 bytes are accepted', async () => {
    const peer = await createPeer()
    const b = peer.bucket('n'.repeat(255))
    await b.set('k', true)
    expect(b.get('k')).toBe(true)
    expect(peer.bucket('é'.repeat(127) + 'x').size).toBe(0) // 255 bytes of UTF-8
  })
})

// ---------------------------------------------------------------------------------------------------

describe('close()', () => {
  test('after close(): sync calls throw ECLOSED; set/delete reject or call back with ECLOSED', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('closing')
    await bucket.set('k', 1)
    const closing = peer.close()
    expect(closing).toBeInstanceOf(Promise)
    await withTimeout(closing, 3000, 'close()')

    const sync = [
      ['get', () => bucket.get('k')],
      ['has', () => bucket.has('k')],
      ['keys', () => bucket.keys()],
      ['entries', () => bucket.entries('')],
      ['size', () => bucket.size],
      ['bucket (existing name)', () => peer.bucket('closing')],
      ['bucket (new name)', () => peer.bucket('another')],
      ['peers', () => peer.peers()],
      ['stats', () => peer.stats()],
    ]
    for (const [label, call] of sync) {
      let err
      try {
        call()
      } catch (e) {
        err = e
      }
      try {
        expect(err).toBeDefined()
        expectCode(err, 'ECLOSED')
      } catch (e) {
        e.message = `${label}: threw ${err && describeError(err)}\n${e.message}`
        throw e
      }
    }

    const setP = bucket.set('k', 2)
    expect(setP).toBeInstanceOf(Promise)
    const setErr = await captureError(() => setP)
    expectCode(setErr, 'ECLOSED')
    expectCode(await captureError(() => bucket.delete('k')), 'ECLOSED')
    expectCode(await callbackError((cb) => bucket.set('k', 3, cb)), 'ECLOSED')
    expectCode(await callbackError((cb) => bucket.delete('k', cb)), 'ECLOSED')

    // close() again is harmless
    await expect(withTimeout(peer.close(), 3000, 'second close()')).resolves.toEqual({ unacknowledged: {}, flushed: true })
  })

  test('close() frees the port: a new Peer can listen on the same address', async () => {
    const a = await createPeer()
    const address = a.address
    await a.close()
    const b = await createPeer({ listen: address })
    expect(b.address).toBe(address)
  })

  test("closing a peer fires 'peer-down' on the other side promptly and it stops being connected", async () => {
    const [a, b] = await createCluster(2, 'leave')
    const down = []
    a.on('peer-down', (e) => down.push({ ...e, at: Date.now() }))
    const t0 = Date.now()
    const bAddress = b.address
    await b.close()
    await waitFor(() => down.length >= 1, { timeout: 5000, message: "'peer-down' on the remaining peer" })
    expect(down[0].id).toBe('leave2')
    expect(down[0].address).toBe(bAddress)
    expect(down[0].at - t0).toBeLessThan(5000)
    expect(isConnected(a, 'leave2')).toBe(false)
  })
})

// ---------------------------------------------------------------------------------------------------

describe('errors and EADDRINUSE', () => {
  test("ready() rejects with code 'EADDRINUSE' when the port is taken by a net.Server", async () => {
    const server = net.createServer()
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    try {
      const port = server.address().port
      const peer = new Peer({ listen: `127.0.0.1:${port}` })
      const ready = peer.ready()
      expect(ready).toBeInstanceOf(Promise)
      const err = await captureError(() => ready)
      await peer.close().catch(() => {})
      expectCode(err, 'EADDRINUSE')
      expect(err.message).toMatch(String(port))
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  })

  test("ready() rejects with code 'EADDRINUSE' when the port is taken by another Peer", async () => {
    const a = await createPeer()
    const b = new Peer({ listen: a.address })
    const err = await captureError(() => b.ready())
    await b.close().catch(() => {})
    expectCode(err, 'EADDRINUSE')
    // the first peer still works
    await a.bucket('x').set('k', 1)
    expect(a.bucket('x').get('k')).toBe(1)
  })

  test('errors are instanceof Error in the test realm', async () => {
    const peer = await createPeer()
    const bucket = peer.bucket('realm')
    const errs = [
      await captureError(() => bucket.set('', 1)),
      await captureError(() => bucket.set('k', undefined)),
      await captureError(() => bucket.set('k', 1, { ack: 'bogus' })),
      await captureError(() => bucket.touch('k', -1)),
      await captureError(() => bucket.fetch({ from: 'x' })),
      await captureError(() => peer.bucket('')),
    ]
    await peer.close()
    errs.push(await captureError(() => bucket.get('k')))
    errs.push(await captureError(() => bucket.set('k', 1)))
    for (const err of errs) {
      expect(err).not.toBe(NO_ERROR)
      expect(err).toBeInstanceOf(Error)
      expect(Object.prototype.toString.call(err)).toBe('[object Error]')
      expect(typeof err.stack).toBe('string')
    }
  })
})

// ---------------------------------------------------------------------------------------------------

describe('peers() and stats()', () => {
  test("peers() lists the others as { id, address, state: 'connected' } with their listen addresses", async () => {
    const a = await createPeer({ id: 'shape-a' })
    const upA = []
    a.on('peer-up', (e) => upA.push(e))
    expect(a.peers()).toEqual([])
    const b = await createPeer({ id: 'shape-b', peers: [a.address] })
    const upB = []
    b.on('peer-up', (e) => upB.push(e))
    await waitConnected([a, b])
    expect(a.peers()).toEqual([{ id: 'shape-b', address: b.address, state: 'connected' }])
    expect(b.peers()).toEqual([{ id: 'shape-a', address: a.address, state: 'connected' }])

    await waitFor(() => upA.length >= 1 && upB.length >= 1, { message: "'peer-up' on both" })
    expect(upA[0]).toEqual({ id: 'shape-b', address: b.address })
    expect(upB[0]).toEqual({ id: 'shape-a', address: a.address })

    // a third peer seeded only with b is learned by a too
    const c = await createPeer({ id: 'shape-c', peers: [b.address] })
    await waitConnected([a, b, c])
    for (const p of [a, b, c]) {
      const list = p.peers()
      expect(list).toHaveLength(2)
      for (const info of list) {
        expect(Object.keys(info).sort()).toEqual(['address', 'id', 'state'])
        expect(['connected', 'disconnected']).toContain(info.state)
      }
    }
    expect(a.peers().find((p) => p.id === 'shape-c')).toEqual({ id: 'shape-c', address: c.address, state: 'connected' })
  })

  test('stats() has the documented shape and its counts change with use', async () => {
    const [a, b] = await createCluster(2, 'stats')
    const s0a = a.stats()
    const s0b = b.stats()
    for (const [s, id] of [
      [s0a, 'stats1'],
      [s0b, 'stats2'],
    ]) {
      expect(s).toEqual(
        expect.objectContaining({
          id,
          buckets: expect.any(Number),
          keys: expect.any(Number),
          peers: expect.any(Number),
          opsApplied: expect.any(Number),
          bytesSent: expect.any(Number),
          bytesReceived: expect.any(Number),
        }),
      )
    }
    expect(s0a.peers).toBe(1)
    expect(s0a.buckets).toBe(0)
    expect(s0a.keys).toBe(0)

    const ba = a.bucket('s1')
    a.bucket('s2')
    for (let i = 0; i < 10; i++) await ba.set(`k${i}`, { i, pad: 'x'.repeat(100) })
    await ba.delete('k0')
    await waitFor(() => b.bucket('s1').size === 9, { message: 'writes to replicate' })

    const s1a = a.stats()
    const s1b = b.stats()
    expect(s1a.buckets).toBe(2)
    expect(s1a.keys).toBe(9)
    expect(s1b.keys).toBe(9)
    expect(s1b.buckets).toBeGreaterThanOrEqual(1)
    expect(s1a.bytesSent).toBeGreaterThan(s0a.bytesSent)
    expect(s1b.bytesReceived).toBeGreaterThan(s0b.bytesReceived)
    expect(s1b.opsApplied).toBeGreaterThan(s0b.opsApplied)
    expect(s1b.opsApplied).toBeGreaterThanOrEqual(9)
    expect(s1a.opsApplied).toBeGreaterThanOrEqual(s0a.opsApplied)
    // Per link: b took a's writes over its link to a (ten sets and the delete, the set of k0 possibly
    // sent as superseded), spent time applying them, and owes a nothing once all is quiet.
    const fromA = s1b.replication.find((l) => l.id === 'stats1')
    expect(fromA.writesReceived).toBeGreaterThanOrEqual(10)
    expect(fromA.applyMs).toBeGreaterThan(0)
    expect(fromA.sendQueueBytes).toBe(0)
    for (const k of ['bytesSent', 'bytesReceived']) {
      expect(Number.isInteger(s1a[k])).toBe(true)
      expect(s1a[k]).toBeGreaterThanOrEqual(0)
    }
  })

  test('alike writes travel compressed, and the link says how much; compression: false sends them as they are', async () => {
    const [a, b] = await createCluster(2, 'zip')
    const c = await createPeer({ id: 'plain1', compression: false })
    const d = await createPeer({ id: 'plain2', peers: [c.address] })
    await waitConnected([c, d])
    for (const p of [a, c]) {
      const bucket = p.bucket('s')
      // Each write's frame is past the size worth compressing on its own, so the figure holds however
      // the link happens to batch them.
      for (let i = 0; i < 300; i++) bucket.set(`k${i}`, { i, pad: 'x'.repeat(1000) })
    }
    await waitFor(() => b.bucket('s').size === 300 && d.bucket('s').size === 300, { message: 'writes to replicate' })
    const link = (p, id) => p.stats().replication.find((l) => l.id === id)
    const aToB = link(a, 'zip2')
    const bFromA = link(b, 'zip1')
    expect(aToB.bytesSent * 2).toBeLessThan(aToB.bytesSentUncompressed)
    expect(bFromA.bytesReceived * 2).toBeLessThan(bFromA.bytesReceivedUncompressed)
    const cToD = link(c, 'plain2')
    const dFromC = link(d, 'plain1')
    expect(cToD.bytesSentUncompressed).toBeGreaterThan(300 * 1000)
    expect(cToD.bytesSent).toBe(cToD.bytesSentUncompressed)
    expect(dFromC.bytesReceived).toBe(dFromC.bytesReceivedUncompressed)
    for (const bad of ['yes', 1, null]) {
      const err = await captureError(() => new Peer({ compression: bad }))
      expect(err).toBeInstanceOf(TypeError)
      expect(err.message).toMatch(/options\.compression must be a boolean/)
    }
  })

  test('unref() and ref() return the peer', async () => {
    const peer = await createPeer()
    expect(peer.unref()).toBe(peer)
    expect(peer.ref()).toBe(peer)
  })
})
