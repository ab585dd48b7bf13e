'use strict'
// The 'warning' event (README: API reference, Warnings): misconfiguration a peer survives is reported
// on the peer itself, counted by code in stats() and metrics(), with the address or peer it concerns.

const { createPeer, closeAll } = require('./helpers/peers')
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
