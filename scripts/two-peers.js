'use strict'
// Two peers with a secret in one process: a write acknowledged by 'all' on one is read on the other.
// The least a binary built for another machine must do; run under an emulator with the platform's
// Node (README: Packaging, what was proven by hand). Exits 1 if the write does not arrive in 20 s.

const { Peer } = require('peer-buckets')

async function main() {
  const secret = 'a secret of at least sixteen bytes'
  const a = new Peer({ id: 'a', listen: '127.0.0.1:0', secret })
  await a.ready()
  const b = new Peer({ id: 'b', listen: '127.0.0.1:0', secret, peers: [a.address] })
  await b.ready()
  await a.bucket('s').set('k', { v: 1 }, { ack: 'all', timeout: 20_000 })
  const deadline = Date.now() + 20_000
  while (!b.bucket('s').has('k') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  const got = b.bucket('s').get('k')
  console.log(`${process.platform}-${process.arch}: b read ${JSON.stringify(got)}; b's peers ${b.peers().map((p) => `${p.id}:${p.state}`).join(', ')}`)
  await a.close()
  await b.close()
  if (!got || got.v !== 1) process.exit(1)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
