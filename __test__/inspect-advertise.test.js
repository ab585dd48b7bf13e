'use strict'
// bucket.inspect(key) (the registers a replica stores for a key) and the `advertise` option (the
// address other peers are told to dial): what the chaos harness stands on.

const net = require('node:net')
const { Peer, createPeer, createCluster, closeAll } = require('./helpers/peers')
const { waitFor } = require('./helpers/wait')

afterEach(closeAll)

describe('bucket.inspect()', () => {
  test('reports the winning register: hlc, origin, incarnation, seq, expiry, tombstones and touches', async () => {
    const peer = await createPeer({ id: 'ins-1' })
    const b = peer.bucket('inspect')
    expect(b.inspect('none')).toBeUndefined()
    await b.set('k', { v: 1 }, { ttl: 60000 })
    const set = b.inspect('k')
    expect(set).toMatchObject({ deleted: false, origin: 'ins-1', seq: 1 })
    expect(typeof set.hlc).toBe('string')
    expect(typeof set.incarnation).toBe('string')
    expect(BigInt(set.hlc) >> 16n).toBe(BigInt(set.time))
    expect(set.expires).toBe(set.time + 60000)
    expect(set.touch).toBeUndefined()

    expect(await b.touch('k', 120000)).toBe(true)
    const touched = b.inspect('k')
    expect(touched.hlc).toBe(set.hlc)
    expect(touched.touch).toMatchObject({ origin: 'ins-1', seq: 2, incarnation: set.incarnation })
    expect(BigInt(touched.touch.hlc) > BigInt(set.hlc)).toBe(true)

    await b.delete('k')
    const deleted = b.inspect('k')
    expect(deleted).toMatchObject({ deleted: true, origin: 'ins-1', seq: 3, expires: 0 })
    expect(deleted.touch).toBeUndefined()
    expect(BigInt(deleted.hlc) > BigInt(touched.touch.hlc)).toBe(true)
    expect(b.get('k')).toBeUndefined()
  })

  test('a replicated write shows the same register everywhere', async () => {
    const [a, b] = await createCluster(2, 'ins-c')
    await a.bucket('x').set('k', 'v', { ack: 'all' })
    await waitFor(() => b.bucket('x').inspect('k'))
    expect(b.bucket('x').inspect('k')).toEqual(a.bucket('x').inspect('k'))
  })

  test('checks its key and fails after close()', async () => {
    const peer = await createPeer()
    const b = peer.bucket('x')
    expect(() => b.inspect('')).toThrow(TypeError)
    expect(() => b.inspect(1)).toThrow(/inspect\(\): key must be a non-empty string/)
    await peer.close()
    expect(() => b.inspect('k')).toThrow(expect.objectContaining({ code: 'ECLOSED' }))
  })
})

describe('the advertise option', () => {
  test('other peers dial the advertised address, learned through gossip', async () => {
    // A plain TCP relay in front of peer A, which advertises it.
    let relayed = 0
    let target
    const sockets = new Set()
    const relay = net.createServer((client) => {
      relayed++
      const up = net.connect(target)
      for (const s of [client, up]) {
        sockets.add(s)
        s.on('close', () => sockets.delete(s))
      }
      client.pipe(up).pipe(client)
      client.on('error', () => up.destroy())
      up.on('error', () => client.destroy())
    })
    await new Promise((resolve) => relay.listen(0, '127.0.0.1', resolve))
    try {
      const port = relay.address().port
      const a = await createPeer({ id: 'adv-a', advertise: `127.0.0.1:${port}` })
      const [, p] = a.address.split(':')
      target = { host: '127.0.0.1', port: Number(p) }
      // B is given A's real address; C only B's. C learns A from B, at the advertised address.
      const b = await createPeer({ id: 'adv-b', peers: [a.address] })
      await waitFor(() => b.peers().some((x) => x.id === 'adv-a' && x.state === 'connected'))
      expect(b.peers().find((x) => x.id === 'adv-a').address).toBe(`127.0.0.1:${port}`)
      // C advertises a closed port, so A cannot reach it first: the link must be C's dial.
      const c = await createPeer({ id: 'adv-c', peers: [b.address], advertise: '127.0.0.1:1' })
      await waitFor(() => c.peers().some((x) => x.id === 'adv-a' && x.state === 'connected'), { timeout: 10000 })
      expect(relayed).toBeGreaterThan(0)
      await a.bucket('x').set('k', 1)
      await waitFor(() => c.bucket('x').get('k') === 1)
    } finally {
      await closeAll()
      // close() waits for every connection the relay holds: a pair whose far end went away without
      // a FIN (a peer's dial cut short by its close) would hold it open for good.
      for (const s of sockets) s.destroy()
      await new Promise((resolve) => relay.close(resolve))
    }
  })

  test('must be an IP address and a port', () => {
    expect(() => new Peer({ advertise: 'localhost:7000' })).toThrow(RangeError)
    expect(() => new Peer({ advertise: 'nope' })).toThrow(RangeError)
    expect(() => new Peer({ advertise: {} })).toThrow(TypeError)
  })
})
