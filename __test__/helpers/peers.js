'use strict'
// In-process Peers for the API suite, tracked so afterEach can close every one of them.

const path = require('node:path')
const { Peer } = require(path.join(__dirname, '..', '..'))
const { waitFor } = require('./wait')

const open = new Set()

/** A Peer on an ephemeral loopback port (unless options say otherwise), ready. */
async function createPeer(options = {}) {
  const peer = new Peer({ listen: '127.0.0.1:0', ...options })
  open.add(peer)
  await peer.ready()
  return peer
}

function isConnected(peer, otherId) {
  return peer.peers().some((p) => p.id === otherId && p.state === 'connected')
}

/** Waits until every peer in `peers` sees every other one as connected. */
async function waitConnected(peers, timeout = 5000) {
  try {
    await waitFor(
      () => peers.every((p) => peers.every((q) => p === q || isConnected(p, q.id))),
      { timeout, message: `peers ${peers.map((p) => p.id).join(', ')} to connect to each other` },
    )
  } catch (e) {
    // What each one saw, so that a failure says which link is missing and why.
    const views = peers.map((p) => {
      const s = p.stats()
      return `${p.id} at ${p.address}: peers ${JSON.stringify(p.peers())}; warnings ${JSON.stringify(s.warnings)}; handshakesRejected ${s.handshakesRejected}`
    })
    e.message += `\n${views.join('\n')}`
    throw e
  }
}

/** Two (or more) peers, each later one seeded with the first, all connected. */
async function createCluster(n = 2, prefix = 'p') {
  const first = await createPeer({ id: `${prefix}1` })
  const peers = [first]
  for (let i = 2; i <= n; i++) peers.push(await createPeer({ id: `${prefix}${i}`, peers: [first.address] }))
  await waitConnected(peers)
  return peers
}

async function closeAll() {
  const peers = [...open]
  open.clear()
  await Promise.all(peers.map((p) => Promise.resolve().then(() => p.close()).catch(() => {})))
}

module.exports = { Peer, createPeer, createCluster, waitConnected, isConnected, closeAll }
