'use strict'
// The 'warning' event (API.md): misconfiguration a peer survives is reported on the peer itself,
// counted by code in stats() and metrics(), with the address or peer it concerns.

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
