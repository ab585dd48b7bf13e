'use strict'
// Protected mode (README, Security): a peer without a secret that listens beyond loopback accepts
// peers from loopback addresses only, unless options.insecure says the network is trusted. The
// network address used is this machine's own, so nothing leaves it; the connections still come from
// an address that is not a loopback one.

const net = require('node:net')
const os = require('node:os')
const { Peer } = require('..')
const { createPeer, isConnected, closeAll } = require('./helpers/peers')
const { waitFor, sleep } = require('./helpers/wait')

jest.setTimeout(30_000)

afterEach(async () => {
  await closeAll()
})

/** This machine's first IPv4 address beyond loopback. */
function networkAddress() {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list) if (a.family === 'IPv4' && !a.internal) return a.address
  }
  throw new Error('this suite needs a network interface with an IPv4 address beyond loopback')
}

const portOf = (address) => Number(address.slice(address.lastIndexOf(':') + 1))

/**
 * Bytes the peer sends a raw connection from `localAddress` before closing it (null: not closed
 * within 3 s); with `hangUp`, this end closes at the first bytes.
 */
function firstBytes(host, port, localAddress, { hangUp = false } = {}) {
  return new Promise((resolve) => {
    const chunks = []
    const sock = net.connect({ host, port, localAddress })
    sock.on('data', (b) => {
      chunks.push(b)
      if (hangUp) sock.destroy()
    })
    sock.on('error', () => {})
    sock.on('close', () => resolve(Buffer.concat(chunks)))
    setTimeout(() => {
      sock.destroy()
      resolve(null)
    }, 3000).unref()
  })
}

describe('options.insecure', () => {
  test.each([['a string', 'yes'], ['a number', 1], ['null', null]])('must be a boolean, not %s', (label, insecure) => {
    expect(() => new Peer({ insecure })).toThrow(TypeError)
    expect(() => new Peer({ insecure })).toThrow(/options\.insecure must be a boolean/)
  })

  test('a peer without a secret listening beyond loopback refuses peers from the network', async () => {
    const lan = networkAddress()
    const a = await createPeer({ id: 'a', listen: '0.0.0.0:0' })
    const warnings = []
    a.on('warning', (w) => warnings.push(w))
    const port = portOf(a.address)
    const fromLan = await createPeer({ id: 'from-lan', listen: `${lan}:0`, peers: [`${lan}:${port}`] })
    const fromLo = await createPeer({ id: 'from-lo', peers: [`127.0.0.1:${port}`] })
    await waitFor(() => isConnected(a, 'from-lo'), { message: 'the loopback peer to join' })
    await waitFor(() => a.stats().handshakesRejected >= 1, { message: 'the network peer to be refused' })
    await sleep(500)
    expect(isConnected(a, 'from-lan')).toBe(false)
    expect(isConnected(fromLan, 'a')).toBe(false)
    expect(fromLo.peers().map((p) => p.id)).toContain('a')
    expect(warnings.length).toBeGreaterThanOrEqual(1)
    expect(warnings[0]).toMatchObject({ code: 'EINSECURE', address: expect.stringContaining(`${lan}:`) })
    expect(warnings[0].message).toMatch(/give every peer the same `secret`.*insecure: true/)
    // Every refusal was a warning (the peer from the network keeps redialing meanwhile).
    const insecure = a.stats().warnings.EINSECURE
    expect(insecure).toBeGreaterThanOrEqual(1)
    expect(insecure).toBeLessThanOrEqual(a.stats().handshakesRejected)
    // Closed before a byte: not even a preamble.
    expect(await firstBytes(lan, port, lan)).toEqual(Buffer.alloc(0))
    // From loopback, the same port answers with its preamble.
    const fromLoopback = await firstBytes('127.0.0.1', port, '127.0.0.1', { hangUp: true })
    expect(fromLoopback.subarray(0, 4).toString()).toBe('PBKT')
  })

  test('insecure: true lets peers from the network in', async () => {
    const lan = networkAddress()
    const a = await createPeer({ id: 'a', listen: '0.0.0.0:0', insecure: true })
    const b = await createPeer({ id: 'b', listen: `${lan}:0`, insecure: true, peers: [`${lan}:${portOf(a.address)}`] })
    await waitFor(() => isConnected(a, 'b') && isConnected(b, 'a'), { message: 'a and b to link over the network address' })
    expect(a.stats().handshakesRejected).toBe(0)
    expect(a.stats().warnings.EINSECURE).toBe(0)
  })
})
