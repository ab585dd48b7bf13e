'use strict'
// Security (README: API reference, Security): peers with a secret accept only peers with the same
// secret; hostile bytes, silent sockets and a flood of idle ones are dropped while the real peers go on
// replicating; ids are bound to keys (peerKeys pins them), and a peer restarted without dataDir, with a
// new key, gets back in.

const net = require('node:net')
const { randomBytes } = require('node:crypto')
const { Peer } = require('..')
const { createPeer, waitConnected, isConnected, closeAll } = require('./helpers/peers')
const { waitFor, sleep } = require('./helpers/wait')
const { captureError } = require('./helpers/errors')
const { spawnPeer, killAll } = require('./helpers/spawn-peer')

jest.setTimeout(60_000)

afterEach(async () => {
  await closeAll()
  await killAll()
})

const SECRET = 'correct horse battery staple'

/** Writes key on `from` and waits until `to` has it. */
async function replicates(from, to, key, timeout = 5000) {
  await from.bucket('s').set(key, { from: from.id })
  await waitFor(() => to.bucket('s').has(key), { timeout, message: `${key} from ${from.id} to reach ${to.id}` })
}

/** Connects a raw socket to `address` and sends `bytes`; resolves once the peer has closed it. */
function rawSocket(address, bytes, { end = false } = {}) {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))]
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port })
    const opened = Date.now()
    sock.on('connect', () => {
      if (bytes.length) sock.write(bytes)
      if (end) sock.end()
    })
    sock.on('data', () => {}) // the peer's preamble
    sock.on('error', () => {}) // a reset is a close too
    sock.on('close', () => resolve(Date.now() - opened))
    setTimeout(() => {
      sock.destroy()
      reject(new Error(`socket sending ${bytes.length} bytes was not closed by the peer`))
    }, 15_000).unref()
  })
}

/** The 6-byte preamble a peer opens with: "PBKT", link version 2, mode (1: with a secret). */
const preamble = (keyed) => Buffer.from([0x50, 0x42, 0x4b, 0x54, 2, keyed ? 1 : 0])

describe('options.secret', () => {
  test.each([
    ['a string', SECRET],
    ['a Buffer', randomBytes(32)],
    ['two during a rotation', [SECRET, 'the secret of last year']],
  ])('accepts %s', async (label, secret) => {
    const peer = await createPeer({ secret })
    expect(peer.stats().handshakesRejected).toBe(0)
  })

  test.each([
    ['shorter than 16 bytes', 'fifteen bytes!!', RangeError, /options\.secret must be at least 16 bytes/],
    ['an empty Buffer', Buffer.alloc(0), RangeError, /at least 16 bytes/],
    ['a number', 1234567890123456789, TypeError, /options\.secret must be a string or a Buffer/],
    ['three secrets', [SECRET, SECRET, SECRET], RangeError, /options\.secret must be a secret, or an array/],
    ['an empty array', [], RangeError, /options\.secret/],
    ['a short second secret', [SECRET, 'short'], RangeError, /options\.secret\[1\] must be at least 16 bytes/],
  ])('refuses %s', async (label, secret, Ctor, message) => {
    const err = await captureError(() => new Peer({ secret }))
    expect(err).toBeInstanceOf(Ctor)
    expect(err.message).toMatch(message)
  })
})

describe('peers with a secret', () => {
  test('two peers with the same secret replicate; one with another secret and one with none get nothing, and the two go on', async () => {
    const a = await createPeer({ id: 'a', secret: SECRET })
    const b = await createPeer({ id: 'b', secret: SECRET, peers: [a.address] })
    await waitConnected([a, b])
    await replicates(a, b, 'before')

    const other = await createPeer({ id: 'other', secret: 'the secret of another cluster', peers: [a.address, b.address] })
    const open = await createPeer({ id: 'open', peers: [a.address, b.address] })
    await other.bucket('s').set('from-other', 1)
    await open.bucket('s').set('from-open', 1)
    await waitFor(() => a.stats().handshakesRejected >= 2 && b.stats().handshakesRejected >= 2, {
      message: 'both outsiders to be refused by a and b',
    })
    // Let the outsiders redial a few times.
    await sleep(1500)
    await replicates(b, a, 'after')

    for (const p of [a, b]) {
      expect(p.bucket('s').has('from-other')).toBe(false)
      expect(p.bucket('s').has('from-open')).toBe(false)
      expect(p.peers().map((x) => x.id)).toEqual([p === a ? 'b' : 'a'])
      expect(p.stats().peers).toBe(1)
    }
    for (const p of [other, open]) {
      expect(p.bucket('s').keys().sort()).toEqual([`from-${p.id}`])
      expect(p.peers()).toEqual([])
      expect(p.stats().bytesReceived).toBe(0)
    }
    expect(isConnected(a, 'b') && isConnected(b, 'a')).toBe(true)
  })

  test('during a rotation a peer with [new, old] links with peers holding either', async () => {
    const oldSecret = 'the secret of last year'
    const newSecret = 'the secret of this year'
    const b = await createPeer({ id: 'b', secret: [oldSecret, newSecret] })
    const c = await createPeer({ id: 'c', secret: [newSecret, oldSecret], peers: [b.address] })
    // a holds the old secret only and dials both: b and c accept it as their second.
    const a = await createPeer({ id: 'a', secret: oldSecret, peers: [b.address, c.address] })
    await waitConnected([a, b, c], 10_000)
    await replicates(c, a, 'rotated')
  })
})

describe('hostile connections', () => {
  test.each([
    ['with a secret', true],
    ['without a secret', false],
  ])('HTTP, random bytes, a 4 GiB length prefix and half a frame are dropped, and the peer %s still replicates', async (label, keyed) => {
    const secret = keyed ? { secret: SECRET } : {}
    const a = await createPeer({ id: 'a', ...secret })
    // Half of the first thing a peer expects: the Noise message with a secret, the hello without one.
    const half = keyed ? Buffer.concat([Buffer.from([0, 48]), randomBytes(20)]) : Buffer.from([0, 0, 0, 40, 1, 0])
    const attempts = [
      rawSocket(a.address, Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')),
      rawSocket(a.address, randomBytes(4096)),
      rawSocket(a.address, Buffer.concat([preamble(keyed), Buffer.from([0xff, 0xff, 0xff, 0xff, 1])])),
      rawSocket(a.address, Buffer.from([0xff, 0xff, 0xff, 0xff, 1])),
      rawSocket(a.address, preamble(!keyed)),
      rawSocket(a.address, Buffer.concat([preamble(keyed), half]), { end: true }),
    ]
    const silent = rawSocket(a.address, Buffer.concat([preamble(keyed), half]))
    const quick = await Promise.all(attempts)
    for (const ms of quick) expect(ms).toBeLessThan(1000)
    // Silence in the handshake costs the handshake timeout (5 s), no more.
    const waited = await silent
    expect(waited).toBeGreaterThan(4000)
    expect(waited).toBeLessThan(8000)

    const b = await createPeer({ id: 'b', ...secret, peers: [a.address] })
    await waitConnected([a, b])
    await replicates(a, b, 'after-hostile')
    await replicates(b, a, 'back')
    const stats = a.stats()
    expect(stats.handshakesRejected).toBeGreaterThanOrEqual(6)
    expect(a.peers().map((p) => p.id)).toEqual(['b'])
  })

  test('500 idle sockets opened at once do not stop two real peers from connecting and replicating', async () => {
    const a = await createPeer({ id: 'a', secret: SECRET })
    const [host, port] = a.address.split(':')
    const idle = []
    try {
      await Promise.all(
        Array.from({ length: 500 }, () =>
          new Promise((resolve) => {
            const sock = net.connect({ host, port: Number(port) })
            sock.on('error', () => {})
            sock.on('data', () => {})
            sock.on('connect', resolve)
            sock.on('close', resolve)
            idle.push(sock)
          }),
        ),
      )
      const started = Date.now()
      const b = await createPeer({ id: 'b', secret: SECRET, peers: [a.address] })
      await waitConnected([a, b])
      await replicates(b, a, 'through-the-flood')
      await replicates(a, b, 'and-back')
      // Sooner than the handshake timeout (5 s), when the idle sockets would have been dropped: b
      // got in by evicting them (counted below), not by waiting for them to time out.
      expect(Date.now() - started).toBeLessThan(5000)
      const stats = a.stats()
      expect(stats.handshakesEvicted).toBeGreaterThanOrEqual(400)
    } finally {
      for (const sock of idle) sock.destroy()
    }
  })
})

describe('ids bound to keys', () => {
  const HEX64 = /^[0-9a-f]{64}$/

  test('peer.publicKey is 64 hex digits with a secret, kept in dataDir, null without a secret', async () => {
    const open = await createPeer()
    expect(open.publicKey).toBeNull()
    const fs = require('node:fs')
    const dir = fs.mkdtempSync(require('node:path').join(require('node:os').tmpdir(), 'pb-key-'))
    try {
      const first = await createPeer({ secret: SECRET, dataDir: dir })
      expect(first.publicKey).toMatch(HEX64)
      const key = first.publicKey
      await first.close()
      const again = await createPeer({ secret: SECRET, dataDir: dir })
      expect(again.publicKey).toBe(key)
      await again.close()
      const memory = await createPeer({ secret: SECRET })
      expect(memory.publicKey).toMatch(HEX64)
      expect(memory.publicKey).not.toBe(key)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  test.each([
    ['not an object', 'abc', TypeError, /options\.peerKeys must be an object/],
    ['an array', [], TypeError, /options\.peerKeys must be an object/],
    ['null', null, TypeError, /options\.peerKeys must be an object/],
    ['a key that is not a string', { a: 7 }, TypeError, /options\.peerKeys\["a"\] must be a string/],
    ['a key too short', { a: 'ab' }, RangeError, /options\.peerKeys\["a"\] must be 64 hex digits.*got 2 characters/],
    ['a key with a non-hex digit', { a: 'g'.repeat(64) }, RangeError, /must be 64 hex digits/],
    ['an empty id', { '': 'a'.repeat(64) }, RangeError, /empty id/],
    ['an id over 255 bytes', { ['x'.repeat(256)]: 'a'.repeat(64) }, RangeError, /longer than 255 bytes/],
  ])('peerKeys: %s throws', async (label, peerKeys, Type, message) => {
    const err = await captureError(() => new Peer({ secret: SECRET, peerKeys }))
    expect(err).toBeInstanceOf(Type)
    expect(err.message).toMatch(message)
  })

  test('peerKeys without a secret throws a TypeError', async () => {
    const err = await captureError(() => new Peer({ peerKeys: {} }))
    expect(err).toBeInstanceOf(TypeError)
    expect(err.message).toMatch(/peerKeys needs options\.secret/)
  })

  test('a pinned id links only with its key: another is refused with EAUTH naming it', async () => {
    const g = await createPeer({ id: 'g', secret: SECRET })
    const wrong = await createPeer({ id: 'v', secret: SECRET, peers: [g.address], peerKeys: { g: 'ab'.repeat(32) } })
    const seen = []
    wrong.on('warning', (w) => seen.push(w))
    await waitFor(() => seen.some((w) => w.code === 'EAUTH' && /impersonating g/.test(w.message)), {
      timeout: 10_000,
      message: 'EAUTH naming g on the peer that pinned another key',
    })
    expect(isConnected(wrong, 'g')).toBe(false)
    await wrong.close()
    const right = await createPeer({ id: 'w', secret: SECRET, peers: [g.address], peerKeys: { g: g.publicKey.toUpperCase() } })
    await waitConnected([g, right])
    await replicates(g, right, 'pinned')
  })

  // The demo's case: auth servers without a data directory, in three processes; one is killed (no
  // goodbye) and started again under its id on its port, drawing a new key. Both others take it back
  // as soon as they see its old links down, with an EIDKEY warning each, and writes flow both ways.
  test('a peer without dataDir killed with SIGKILL and restarted with a new key links to both others again within 5 s and replicates', async () => {
    const options = { secret: SECRET }
    const a = await spawnPeer({ id: 'auth-1', options })
    const b = await spawnPeer({ id: 'auth-2', seeds: [a.address], options })
    const c = await spawnPeer({ id: 'auth-3', seeds: [a.address], options })
    const linked = async (p, id) => (await p.peers()).some((q) => q.id === id && q.state === 'connected')
    const bothSee = async (want) => (await linked(a, 'auth-2')) === want && (await linked(c, 'auth-2')) === want
    await waitFor(async () => (await bothSee(true)) && (await linked(a, 'auth-3')), {
      timeout: 10_000,
      message: 'the three linked',
    })
    const oldKey = b.publicKey
    expect(oldKey).toMatch(HEX64)
    await b.kill('SIGKILL')
    await waitFor(() => bothSee(false), { timeout: 10_000, message: 'auth-1 and auth-3 to see auth-2 down' })
    const b2 = await spawnPeer({ id: 'auth-2', seeds: [a.address], listen: b.address, options })
    expect(b2.publicKey).toMatch(HEX64)
    expect(b2.publicKey).not.toBe(oldKey)
    await waitFor(() => bothSee(true), { timeout: 5000, message: 'auth-1 and auth-3 to link with the restarted auth-2' })
    await b2.set('after-restart', 'from the new auth-2')
    await waitFor(async () => (await a.has('after-restart')) && (await c.has('after-restart')), {
      timeout: 5000,
      message: "the restarted auth-2's write to reach both",
    })
    await a.set('to-the-new-one', 1)
    await waitFor(() => b2.has('to-the-new-one'), { timeout: 5000, message: "auth-1's write to reach the restarted auth-2" })
    for (const p of [a, c]) {
      const warnings = p.events.filter((e) => e.name === 'warning').map((e) => e.data)
      expect(warnings.filter((w) => w.code === 'EAUTH')).toEqual([])
      expect(warnings).toContainEqual(
        expect.objectContaining({ code: 'EIDKEY', peer: 'auth-2', message: expect.stringContaining(oldKey) }),
      )
      expect((await p.stats()).warnings.EIDKEY).toBeGreaterThanOrEqual(1)
    }
  })
})
