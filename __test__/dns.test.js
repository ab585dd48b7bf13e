'use strict'
// Seeds given by host name (README: Peers found by DNS): 'localhost:port' resolves, off the JS thread,
// to the peer listening there, and the peer links to it without delaying ready().

const { Peer } = require('..')
const { createPeer, closeAll } = require('./helpers/peers')
const { waitFor } = require('./helpers/wait')

jest.setTimeout(30_000)

afterEach(async () => {
  await closeAll()
})

test('a seed given as localhost:port links, and ready() does not wait for the lookup', async () => {
  const a = await createPeer({ id: 'a' })
  const port = a.address.split(':').pop()
  const t0 = Date.now()
  const b = await createPeer({ id: 'b', peers: [`localhost:${port}`], resolveInterval: 200 })
  expect(Date.now() - t0).toBeLessThan(2000)
  await waitFor(() => b.peers().some((p) => p.id === 'a' && p.state === 'connected'), { message: 'b linked to a by name' })
  // The name stands for a, once: a cluster of two.
  expect(b.stats().clusterSize).toBe(2)
})

test('a seed name that resolves to nothing does not fail the peer; it counts as one seed', async () => {
  const b = await createPeer({ id: 'b', peers: ['no-such-host.invalid:7070'] })
  await new Promise((resolve) => setTimeout(resolve, 300))
  expect(b.stats().clusterSize).toBe(2)
  expect(b.peers()).toEqual([])
})

test('resolveInterval must be a positive number of ms', () => {
  expect(() => new Peer({ resolveInterval: 0 })).toThrow(RangeError)
  expect(() => new Peer({ resolveInterval: 'soon' })).toThrow(/options\.resolveInterval/)
})
