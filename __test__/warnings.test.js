'use strict'
// The 'warning' event (README: API reference, Warnings): misconfiguration a peer survives is reported
// on the peer itself, counted by code in stats() and metrics(), with the address or peer it concerns.

const net = require('node:net')
const { Peer, createPeer, closeAll, waitConnected } = require('./helpers/peers')
const { waitFor } = require('./helpers/wait')

jest.setTimeout(30_000)

afterEach(async () => {
  await closeAll()
})

/** Collects every 'warning' a peer emits. */
function collect(peer) {
  const seen = []
  peer.on('warning', (w) => seen.push(w))
  return seen
}

test('a peer dialing with another secret gives EAUTH on both ends, naming the address, counted in stats and metrics', async () => {
  const a = await createPeer({ id: 'a', secret: 'correct horse battery staple' })
  const onA = collect(a)
  const b = await createPeer({ id: 'b', secret: 'the secret of another cluster', peers: [a.address] })
  const onB = collect(b)
  await waitFor(() => onA.length > 0 && onB.length > 0, { message: 'a warning on each end' })

  // The dialer names the address it dialed; the other end names the connection it refused.
  expect(onB[0]).toEqual({ code: 'EAUTH', message: expect.stringMatching(/refused this peer's secret/), address: a.address })
  expect(onA[0]).toEqual({ code: 'EAUTH', message: expect.stringMatching(/dialed with another secret/), address: expect.stringMatching(/^127\.0\.0\.1:\d+$/) })
  expect(onA[0].peer).toBeUndefined()

  expect(a.stats().warnings.EAUTH).toBeGreaterThanOrEqual(onA.length)
  expect(a.stats().warnings.EIDCONFLICT).toBe(0)
  expect(a.metrics()).toMatch(/^peer_buckets_warnings_total\{code="EAUTH"\} [1-9]\d*$/m)
  expect(a.peers()).toEqual([])
})

// The first bytes of a connection between peers: "PBKT", the link version (2), the mode (0: no secret).
const preamble = (linkVersion, mode = 0) => Buffer.from([0x50, 0x42, 0x4b, 0x54, linkVersion, mode])
// A frame of the message encoding: a 4-byte length, the version byte (250: a version no release speaks), a payload.
const frameOfVersion = (version) => Buffer.from([0, 0, 0, 3, version, 0, 0])

/** Opens a raw socket to `address`, writes `bytes`; resolves with its local `host:port` once the peer closed it. */
function speak(address, bytes) {
  const i = address.lastIndexOf(':')
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)) })
    let local
    sock.on('connect', () => {
      local = `${sock.localAddress}:${sock.localPort}`
      sock.write(bytes)
    })
    sock.on('data', () => {}) // the peer's own preamble
    sock.on('error', () => {}) // a reset is a close too
    sock.on('close', () => resolve(local))
    setTimeout(() => {
      sock.destroy()
      reject(new Error('the peer did not close a connection of another version'))
    }, 10_000).unref()
  })
}

/** Writes `key` on `from` and waits until `to` holds it. */
async function replicates(from, to, key) {
  await from.bucket('s').set(key, from.id)
  await waitFor(() => to.bucket('s').get(key) === from.id, { message: `${key} from ${from.id} on ${to.id}` })
}

describe('EVERSION: the other end speaks another version', () => {
  const dialers = []
  afterEach(async () => {
    await Promise.all(dialers.splice(0).map((p) => p.close()))
  })

  test.each([
    ['another link version in its preamble', preamble(7), /speaks another protocol version: .*link protocol version 7 \(this peer speaks \d+\)/],
    ['another message version in its first frame', Buffer.concat([preamble(2), frameOfVersion(250)]), /speaks another protocol version: .*unsupported protocol version 250 \(this peer speaks \d+\)/],
  ])('a connection with %s: the accepting peer warns, naming the address, counts it, and goes on linking and replicating', async (label, bytes, message) => {
    const a = await createPeer({ id: 'a' })
    const onA = collect(a)
    const from = await speak(a.address, bytes)
    await waitFor(() => onA.some((w) => w.code === 'EVERSION'), { message: 'EVERSION on a' })

    expect(onA.filter((w) => w.code === 'EVERSION')).toEqual([{ code: 'EVERSION', message: expect.stringMatching(message), address: from }])
    expect(onA[0].message).toContain(from)
    expect(a.stats().warnings.EVERSION).toBe(1)
    expect(a.stats().warnings.EAUTH).toBe(0)
    expect(a.metrics()).toMatch(/^peer_buckets_warnings_total\{code="EVERSION"\} 1$/m)
    expect(a.peers()).toEqual([])

    // The honest peer keeps serving: a peer of this version links to it and writes go both ways.
    const b = await createPeer({ id: 'b', peers: [a.address] })
    await waitConnected([a, b])
    await replicates(a, b, 'from-a')
    await replicates(b, a, 'from-b')
    expect(a.stats().warnings.EVERSION).toBe(1)
  })

  test('a peer dialing one that answers with another version warns, naming the address it dialed, and serves its other links', async () => {
    // Answers every connection with the preamble of link version 7, as a peer of another release would.
    const other = net.createServer((sock) => {
      sock.on('error', () => {})
      sock.on('data', () => {})
      sock.end(preamble(7))
    })
    await new Promise((resolve) => other.listen(0, '127.0.0.1', resolve))
    const otherAddress = `127.0.0.1:${other.address().port}`
    try {
      const b = await createPeer({ id: 'b' })
      // Listened to from the start: the first dial may fail while it opens, its warning handed over with the open.
      const a = new Peer({ id: 'a', listen: '127.0.0.1:0', peers: [otherAddress, b.address] })
      const onA = collect(a)
      dialers.push(a)
      await a.ready()
      // The event comes after the count (events reach JavaScript on a later turn of its loop).
      const versions = () => onA.filter((w) => w.code === 'EVERSION')
      await waitFor(() => versions().length > 0, { message: 'EVERSION on a' })
      await waitConnected([a, b])
      await replicates(a, b, 'while-dialing')

      expect(versions()[0]).toEqual({ code: 'EVERSION', message: expect.stringMatching(/link protocol version 7/), address: otherAddress })
      expect(versions()[0].message).toContain(`the peer at ${otherAddress} speaks another protocol version`)
      // Every one counted, in stats() and the metric alike (it redials meanwhile: the metric is read between two counts).
      const before = a.stats().warnings.EVERSION
      const metric = Number(/^peer_buckets_warnings_total\{code="EVERSION"\} (\d+)$/m.exec(a.metrics())[1])
      const after = a.stats().warnings.EVERSION
      expect(before).toBeGreaterThanOrEqual(versions().length)
      expect(metric).toBeGreaterThanOrEqual(before)
      expect(metric).toBeLessThanOrEqual(after)
      expect(a.peers().map((p) => p.id)).toEqual(['b'])
    } finally {
      await new Promise((resolve) => other.close(resolve))
    }
  })
})

test('two peers with one id: both and a third peer report EIDCONFLICT; the one started last keeps the links', async () => {
  const c = await createPeer({ id: 'c' })
  const onC = collect(c)
  const first = await createPeer({ id: 'x', peers: [c.address] })
  const onFirst = collect(first)
  await waitFor(() => c.peers().some((p) => p.state === 'connected'), { message: 'the first x linked to c' })
  const second = await createPeer({ id: 'x', peers: [c.address] })
  const onSecond = collect(second)
  const conflicts = (seen) => seen.filter((w) => w.code === 'EIDCONFLICT')
  await waitFor(() => [onC, onFirst, onSecond].every((seen) => conflicts(seen).length > 0), { timeout: 10_000, message: 'EIDCONFLICT on all three' })

  expect(conflicts(onC)[0]).toEqual({ code: 'EIDCONFLICT', message: expect.stringContaining(second.address), peer: 'x', address: first.address })
  expect(conflicts(onFirst)[0]).toMatchObject({ peer: 'x', address: second.address, message: expect.stringMatching(/the other process started later/) })
  expect(conflicts(onSecond)[0]).toMatchObject({ peer: 'x', address: first.address, message: expect.stringMatching(/this process started later/) })
  for (const p of [c, first, second]) expect(p.stats().warnings.EIDCONFLICT).toBeGreaterThanOrEqual(1)
  await waitFor(() => c.peers().some((p) => p.id === 'x' && p.address === second.address && p.state === 'connected'), { message: 'c linked to the second x' })
})

// A peer in a child process with stderr piped (not a terminal): prints its address, then runs until
// killed. argv: id secret seed|''
const CHILD = `
const { Peer } = require(${JSON.stringify(require('node:path').join(__dirname, '..'))})
const [id, secret, seed] = process.argv.slice(1)
const peer = new Peer({ id, secret, peers: seed ? [seed] : [] })
peer.ready().then(() => console.log(peer.address))
`

/** Starts a child peer; resolves with { child, address, stderr() }. */
function spawnChild(id, secret, seed = '') {
  const { spawn } = require('node:child_process')
  const child = spawn(process.execPath, ['-e', CHILD, id, secret, seed], { stdio: ['ignore', 'pipe', 'pipe'] })
  children.push(child)
  let err = ''
  child.stderr.on('data', (d) => (err += d))
  return new Promise((resolve, reject) => {
    child.stdout.once('data', (d) => resolve({ child, address: String(d).trim(), stderr: () => err }))
    child.once('exit', (code) => reject(new Error(`child ${id} exited (${code}): ${err}`)))
  })
}

const children = []
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL')
})

test('by default a wrong secret is a warn line on stderr at both ends, plain text (no colour codes) when stderr is not a terminal', async () => {
  const a = await spawnChild('a', 'correct horse battery staple')
  const b = await spawnChild('b', 'the secret of another cluster', a.address)
  await waitFor(() => /EAUTH/.test(a.stderr()) && /EAUTH/.test(b.stderr()), { timeout: 10_000, message: 'an EAUTH line on both stderr' })
  const line = (text) => text.split('\n').find((l) => l.includes('EAUTH'))
  expect(line(a.stderr())).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z {2}WARN peer-buckets\[a\]: a connection from 127\.0\.0\.1:\d+ was refused: it dialed with another secret code=EAUTH address=127\.0\.0\.1:\d+$/)
  expect(line(b.stderr())).toContain(`the peer at ${a.address} refused this peer's secret`)
  for (const c of [a, b]) expect(c.stderr()).not.toMatch(/\x1b\[/)
})

test("options.logger receives the engine's lines instead of stderr, rate-limited per kind", async () => {
  const lines = []
  const logger = { error: (m) => lines.push(['error', m]), warn: (m) => lines.push(['warn', m]), info: (m) => lines.push(['info', m]), debug: (m) => lines.push(['debug', m]) }
  const a = await createPeer({ id: 'a', secret: 'correct horse battery staple', logger })
  const onA = collect(a)
  // Thirty connections that fail the handshake on the secret, at once.
  const peers = []
  for (let i = 0; i < 30; i++) peers.push(await createPeer({ id: `x${i}`, secret: 'the secret of another cluster', peers: [a.address] }))
  await waitFor(() => a.stats().warnings.EAUTH >= 30, { timeout: 15_000, message: '30 EAUTH counted' })
  await new Promise((r) => setTimeout(r, 300))
  const auth = lines.filter(([, m]) => m.includes('code=EAUTH'))
  expect(auth.length).toBeGreaterThanOrEqual(1)
  expect(auth.length).toBeLessThanOrEqual(10)
  expect(auth.every(([level]) => level === 'warn')).toBe(true)
  expect(onA.filter((w) => w.code === 'EAUTH').length).toBeLessThanOrEqual(10)
  for (const p of peers) await p.close()
})

test('options.logger must have error, warn, info and debug methods', () => {
  const { Peer } = require('..')
  expect(() => new Peer({ logger: console.log })).toThrow(TypeError)
  expect(() => new Peer({ logger: { warn() {}, error() {}, info() {} } })).toThrow(/options\.logger\.debug must be a function/)
})
