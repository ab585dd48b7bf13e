'use strict'
// Floods from anyone who can reach a peer's port, against a peer in its own process: the peer's RSS
// (from /proc) stays flat through 100,000 connections that open and close, or that fail the secret,
// and a second flood of as many grows it no further: nothing is kept per finished connection.
// PB_FLOOD sets another number of connections per flood (a debug build takes a few ms per wrong-secret
// handshake, so 2 x 100,000 of them take minutes).

const fs = require('node:fs')
const net = require('node:net')
const { spawnPeer, killAll } = require('./helpers/spawn-peer')
const { sleep } = require('./helpers/wait')

jest.setTimeout(900_000)

afterEach(async () => {
  await killAll()
})

const SECRET = 'correct horse battery staple'
const MB = 1024 * 1024
const FLOOD = Number(process.env.PB_FLOOD) || 100_000

/** Resident memory of process `pid`, in bytes. */
function rss(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) * 1024
}

function hostPort(address) {
  const at = address.lastIndexOf(':')
  return { host: address.slice(0, at), port: Number(address.slice(at + 1)) }
}

/**
 * Opens `count` connections to `address`, `parallel` at a time; each sends `bytes` (if any) and is
 * closed at once. Resolves with the connections per second achieved.
 */
async function connectAndClose(address, count, bytes, parallel = 64) {
  const { host, port } = hostPort(address)
  let started = 0
  const one = () =>
    new Promise((resolve) => {
      const sock = net.connect({ host, port })
      sock.on('connect', () => {
        if (bytes.length) sock.write(bytes)
        sock.destroy()
      })
      sock.on('error', () => {}) // a reset is a close too
      sock.on('close', resolve)
    })
  const worker = async () => {
    while (started < count) {
      started += 1
      await one()
    }
  }
  const t0 = Date.now()
  await Promise.all(Array.from({ length: parallel }, worker))
  return count / ((Date.now() - t0) / 1000)
}

/** RSS once it has settled: the lowest of a few readings over a second. */
async function settledRss(pid) {
  let low = Infinity
  for (let i = 0; i < 5; i++) {
    await sleep(200)
    low = Math.min(low, rss(pid))
  }
  return low
}

/** A preamble with a secret and a first Noise message whose tag fails under any key. */
const wrongSecret = Buffer.concat([Buffer.from([0x50, 0x42, 0x4b, 0x54, 2, 1, 0, 48]), Buffer.alloc(48, 7)])

test.each([
  ['connect-and-close', {}, Buffer.alloc(0)],
  ['wrong-secret handshakes', { secret: SECRET }, wrongSecret],
])('a flood of %s leaves RSS flat', async (label, options, bytes) => {
  const peer = await spawnPeer({ id: 'target', options, changeEvents: false })
  const pid = peer.child.pid
  // Warm up: the allocator's and the runtime's first allocations are not what is measured.
  await connectAndClose(peer.address, 2_000, bytes)
  const before = await settledRss(pid)
  const rate = await connectAndClose(peer.address, FLOOD, bytes)
  const afterFirst = await settledRss(pid)
  await connectAndClose(peer.address, FLOOD, bytes)
  const afterSecond = await settledRss(pid)
  const fmt = (n) => `${(n / MB).toFixed(1)} MB`
  console.log(
    `${label}: ${FLOOD} connections at ${Math.round(rate)}/s: RSS ${fmt(before)} -> ${fmt(afterFirst)}, ` +
      `after ${FLOOD} more ${fmt(afterSecond)}`,
  )
  // 30 MB per 100,000 connections.
  expect(afterFirst - before).toBeLessThanOrEqual((30 * MB * FLOOD) / 100_000)
  // What the first flood took was handed back: the second one reuses it.
  expect(afterSecond - afterFirst).toBeLessThanOrEqual(5 * MB)
  const stats = await peer.stats()
  // The floods sent 2 x FLOOD wrong-secret openings; one the client closes before the peer reads it
  // ends without a verdict (a CI run counted 96,239 rejected of 202,000), so at least half of one flood.
  if (options.secret) expect(stats.handshakesRejected).toBeGreaterThanOrEqual(FLOOD / 2)
  expect(stats.peers).toBe(0)
})

/**
 * Connects to `address` as a peer without a secret and sends a first frame announcing `size` bytes,
 * then as much of it as the peer reads; resolves once the peer has closed the connection.
 */
function announceFrame(address, size) {
  const { host, port } = hostPort(address)
  return new Promise((resolve) => {
    const sock = net.connect({ host, port })
    const chunk = Buffer.alloc(1024 * 1024, 0x5a)
    let sent = 0
    const pump = () => {
      while (sent < size && !sock.destroyed) {
        sent += chunk.length
        if (!sock.write(chunk)) return sock.once('drain', pump)
      }
    }
    sock.on('connect', () => {
      const prefix = Buffer.alloc(4)
      prefix.writeUInt32BE(size)
      sock.write(Buffer.concat([Buffer.from([0x50, 0x42, 0x4b, 0x54, 2, 0]), prefix]))
      pump()
    })
    sock.on('data', () => {})
    sock.on('error', () => {})
    sock.on('close', resolve)
  })
}

test('64 connections announcing 16 MiB first frames leave an open peer flat', async () => {
  const peer = await spawnPeer({ id: 'target', changeEvents: false })
  const pid = peer.child.pid
  const before = await settledRss(pid)
  let peak = before
  const sampler = setInterval(() => {
    peak = Math.max(peak, rss(pid))
  }, 10)
  const t0 = Date.now()
  await Promise.all(Array.from({ length: 64 }, () => announceFrame(peer.address, 16 * MB)))
  clearInterval(sampler)
  console.log(
    `64 x 16 MiB first frames: refused within ${Date.now() - t0} ms; ` +
      `RSS ${(before / MB).toFixed(1)} MB, at most ${(peak / MB).toFixed(1)} MB meanwhile`,
  )
  expect(peak - before).toBeLessThanOrEqual(30 * MB)
  expect((await peer.stats()).handshakesRejected).toBe(64)
})
