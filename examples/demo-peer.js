'use strict'
// One peer of the demo, in its own process. The parent drives it over IPC:
//   { op: 'write', prefix, count }        -> { done: n }
//   { op: 'summary' }                      -> { keys, digest, peers }
// and it reports 'peer-up' / 'peer-down' as they happen.

const { createHash } = require('node:crypto')
const { Peer } = require('..')

const [id, seeds] = [process.argv[2], process.argv[3] ? process.argv[3].split(',') : []]
const peer = new Peer({ id, peers: seeds })
const sessions = peer.bucket('sessions')

peer.on('peer-up', (p) => process.send({ event: 'peer-up', peer: p.id }))
peer.on('peer-down', (p) => process.send({ event: 'peer-down', peer: p.id }))

function summary() {
  const entries = sessions.entries().sort((a, b) => (a[0] < b[0] ? -1 : 1))
  const digest = createHash('sha256').update(JSON.stringify(entries)).digest('hex').slice(0, 16)
  const linked = peer.peers().filter((p) => p.state === 'connected').map((p) => p.id)
  return { keys: entries.length, digest, peers: linked }
}

process.on('message', async (msg) => {
  if (msg.op === 'write') {
    for (let i = 0; i < msg.count; i++) {
      await sessions.set(`${msg.prefix}:${i}`, { user: `user-${i}`, by: id, at: Date.now() })
    }
    process.send({ reply: msg.op, done: msg.count })
  } else if (msg.op === 'summary') {
    process.send({ reply: msg.op, ...summary() })
  } else if (msg.op === 'close') {
    await peer.close()
    process.send({ reply: msg.op }, () => process.exit(0))
  }
})

peer.ready().then(
  () => process.send({ event: 'ready', address: peer.address }),
  (err) => {
    console.error(err.message)
    process.exit(1)
  },
)
