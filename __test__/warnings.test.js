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
