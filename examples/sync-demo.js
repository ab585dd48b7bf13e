'use strict'
// `npm run demo:sync`: three peers in three processes on loopback share a 'sessions' bucket.
// Each is seeded with the first peer's address only and learns the rest from it. They write at once,
// converge; one is killed, the others carry on; a replacement joins empty and catches up.
// Exits 0 when every step held, 1 otherwise. `npm run demo:sync -- --serve` keeps the peers running.

const { fork } = require('node:child_process')
const path = require('node:path')

const SERVE = process.argv.includes('--serve')
const WRITES = 2000
const children = new Set()

function start(id, seeds) {
  const child = fork(path.join(__dirname, 'demo-peer.js'), [id, seeds.join(',')], { stdio: 'inherit' })
  children.add(child)
  child.peerId = id
  child.pending = []
  child.on('message', (msg) => {
    if (msg.event === 'peer-up' || msg.event === 'peer-down') {
      console.log(`    ${id}: ${msg.event} ${msg.peer}`)
    } else if (msg.reply) {
      const waiter = child.pending.shift()
      if (waiter) waiter(msg)
    }
  })
  child.on('exit', () => children.delete(child))
  return new Promise((resolve, reject) => {
    child.once('message', (msg) => (msg.event === 'ready' ? resolve(Object.assign(child, { address: msg.address })) : reject(new Error(`${id} did not start`))))
    child.once('exit', (code) => reject(new Error(`${id} exited with ${code}`)))
  })
}

function ask(child, msg) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${child.peerId} did not answer ${msg.op}`)), 30000)
    child.pending.push((reply) => {
      clearTimeout(timer)
      resolve(reply)
    })
    child.send(msg)
  })
}

async function converge(peers, expected, label) {
  const deadline = Date.now() + 20000
  let rows
  while (Date.now() < deadline) {
    rows = await Promise.all(peers.map((p) => ask(p, { op: 'summary' })))
    const same = rows.every((r) => r.keys === expected && r.digest === rows[0].digest)
    if (same) break
    await new Promise((r) => setTimeout(r, 100))
  }
  console.log(`  ${label}`)
  peers.forEach((p, i) => console.log(`    ${p.peerId.padEnd(8)} keys=${String(rows[i].keys).padEnd(6)} digest=${rows[i].digest}  linked to [${rows[i].peers.join(', ')}]`))
  const ok = rows.every((r) => r.keys === expected && r.digest === rows[0].digest)
  console.log(ok ? `  ✔ all replicas hold the same ${expected} keys` : `  ✘ replicas differ (expected ${expected} keys each)`)
  return ok
}

function cleanup() {
  for (const c of children) c.kill('SIGKILL')
}
process.on('exit', cleanup)
process.on('SIGINT', () => process.exit(130))

async function main() {
  const started = Date.now()
  console.log('peer-buckets demo: three peers, one shared bucket\n')
  console.log('1. start three peers, each seeded with the first one only')
  const p1 = await start('alpha', [])
  const p2 = await start('bravo', [p1.address])
  const p3 = await start('charlie', [p1.address])
  console.log(`    alpha on ${p1.address}, bravo on ${p2.address}, charlie on ${p3.address}`)

  console.log(`\n2. all three write ${WRITES} sessions each, at the same time`)
  const t0 = Date.now()
  await Promise.all([p1, p2, p3].map((p) => ask(p, { op: 'write', prefix: p.peerId, count: WRITES })))
  let ok = await converge([p1, p2, p3], 3 * WRITES, `converged in ${Date.now() - t0} ms`)

  console.log('\n3. kill bravo (SIGKILL); alpha and charlie carry on')
  p2.kill('SIGKILL')
  await new Promise((r) => setTimeout(r, 300))
  await Promise.all([p1, p3].map((p) => ask(p, { op: 'write', prefix: `${p.peerId}-after`, count: WRITES / 2 })))
  ok = (await converge([p1, p3], 4 * WRITES, 'alpha and charlie after the kill')) && ok

  console.log('\n4. a replacement, delta, joins empty (seeded with charlie) and catches up')
  const t1 = Date.now()
  const p4 = await start('delta', [p3.address])
  ok = (await converge([p1, p3, p4], 4 * WRITES, `delta caught up in ${Date.now() - t1} ms`)) && ok

  console.log(`\n${ok ? 'every step held' : 'a step failed'} (${((Date.now() - started) / 1000).toFixed(1)} s)`)
  if (SERVE) {
    console.log('--serve: peers keep running; Ctrl-C to stop')
    return
  }
  await Promise.all([p1, p3, p4].map((p) => ask(p, { op: 'close' }).catch(() => {})))
  process.exit(ok ? 0 : 1)
}

main().catch((err) => {
  console.error(`demo failed: ${err.message}`)
  process.exit(1)
})
