'use strict'
// The hostile member of a chaos run: while the faults run, every couple of seconds a member named
// `mallory` dials one running peer directly (it is a member, not a peer behind a proxy) and sends one
// frame the protocol forbids (the engine's `mallory` example: claims on the victim's own future, acks
// of writes never sent, replies nobody asked for, garbage, a write stamped an hour ahead). The victim
// must close the link at once on every one, and, as the checker proves at the end, lose nothing of
// the honest peers' writes.
//
// The attacks cycle through every kind from a seeded start; the victims are drawn from the seed too,
// among the peers running and not paused. An attack whose victim was paused, killed or restarted
// while it ran proves nothing either way and is only counted.

const fs = require('node:fs')
const path = require('node:path')
const { spawn, spawnSync } = require('node:child_process')
const { Rng } = require('./rng')

const ATTACKS = ['own-future', 'ack-beyond', 'unasked-fetch', 'unasked-held', 'unasked-pull', 'garbage', 'future-stamp']
const ROOT = path.join(__dirname, '..')
const BUILD = ['build', '-q', '-p', 'peer-buckets-engine', '--profile', 'checked', '--example', 'mallory']

/**
 * The mallory binary: $PEER_BUCKETS_MALLORY, else built now from this checkout (a no-op when it is up
 * to date). A binary left under target/ by an older checkout would speak an older protocol, and every
 * attack would end in the handshake, proving nothing.
 */
function malloryBinary(log) {
  if (process.env.PEER_BUCKETS_MALLORY) return process.env.PEER_BUCKETS_MALLORY
  log(`  building the hostile member: cargo ${BUILD.join(' ')}`)
  const r = spawnSync('cargo', BUILD, { cwd: ROOT, stdio: 'inherit' })
  const out = path.join(ROOT, 'target', 'checked', 'examples', 'mallory')
  if (r.status !== 0 || !fs.existsSync(out)) throw new Error(`could not build the hostile member (cargo ${BUILD.join(' ')})`)
  return out
}

class Mallory {
  /**
   * `cluster`: the running peers; `bucket`: the bucket the workload writes (attacks aim at it);
   * `note`: the run's event log.
   */
  constructor({ dir, seed, cluster, bucket, secret, note, log }) {
    this.binary = malloryBinary(log)
    this.cluster = cluster
    this.bucket = bucket
    // With the cluster's secret it is a member that passed the handshake, as a compromised server is.
    this.secret = secret
    this.note = note
    this.rng = new Rng(seed, 'mallory')
    this.next = this.rng.int(0, ATTACKS.length - 1)
    this.results = []
    this.file = path.join(dir, 'mallory.jsonl')
    this.stopped = false
    this.running = new Set()
  }

  start() {
    this.loop = this.run()
  }

  async run() {
    while (!this.stopped) {
      await new Promise((resolve) => {
        this.wake = resolve
        this.timer = setTimeout(resolve, this.rng.int(1500, 3000))
      })
      if (this.stopped) break
      const victims = this.cluster.live().filter((r) => !r.paused && r.address)
      if (victims.length === 0) continue
      const victim = this.rng.pick(victims)
      const attack = ATTACKS[this.next++ % ATTACKS.length]
      await this.attack(victim, attack)
    }
  }

  attack(victim, attack) {
    const startedRun = victim.run
    const seed = this.rng.u32()
    return new Promise((resolve) => {
      const args = ['--address', victim.address, '--attack', attack, '--bucket', this.bucket, '--seed', String(seed)]
      if (this.secret) args.push('--secret', this.secret)
      const child = spawn(this.binary, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      this.running.add(child)
      let out = ''
      child.stdout.on('data', (d) => (out += d))
      child.stderr.on('data', (d) => (out += d))
      const pausedAtStart = victim.paused
      child.once('exit', () => {
        this.running.delete(child)
        let result
        try {
          result = JSON.parse(out.trim().split('\n').pop())
        } catch {
          result = { attack, address: victim.address, error: `no result: ${out.slice(0, 200)}` }
        }
        const current = this.cluster.running(victim.id)
        result.node = victim.id
        result.run = startedRun
        result.t = Date.now()
        result.disturbed = pausedAtStart || victim.paused || victim.exited || !current || current.run !== startedRun
        this.results.push(result)
        fs.appendFileSync(this.file, JSON.stringify(result) + '\n')
        this.note({ kind: 'hostile', attack, node: victim.id, closed: result.closed, error: result.error })
        resolve()
      })
    })
  }

  async stop() {
    this.stopped = true
    clearTimeout(this.timer)
    if (this.wake) this.wake()
    await this.loop
    for (const child of this.running) child.kill('SIGKILL')
  }

  /** What the attacks proved: counts, and the attacks a victim did not answer as it must. */
  verdict() {
    const violations = []
    const byKind = {}
    for (const r of this.results) {
      const k = (byKind[r.attack] ??= { sent: 0, closed: 0, kept: 0, disturbed: 0, failed: 0 })
      k.sent++
      if (r.error) {
        k.failed++
        continue
      }
      if (r.disturbed) {
        k.disturbed++
        continue
      }
      if (r.closed) k.closed++
      else k.kept++
      if (r.expectClose && !r.closed) violations.push(`${r.node}.${r.run} kept the link after ${r.attack} (at ${r.t})`)
      if (!r.expectClose && r.closed) violations.push(`${r.node}.${r.run} closed the link after ${r.attack}, which is no protocol error (at ${r.t})`)
    }
    // A few attacks miss a victim that was killed or paused as they dialed; all of them missing says the
    // member never got past the handshake (a wrong secret, an older protocol): the run proved nothing.
    const missed = this.results.filter((r) => r.error)
    if (this.results.length >= 5 && missed.length === this.results.length) {
      violations.push(`no attack reached a victim (${missed.length} tried; first: ${missed[0].error})`)
    }
    const summary = ATTACKS.filter((a) => byKind[a]).map((a) => {
      const k = byKind[a]
      return `${a} ${k.closed}/${k.kept}${k.disturbed ? ` (+${k.disturbed} disturbed)` : ''}${k.failed ? ` (+${k.failed} not delivered)` : ''}`
    }).join(', ')
    return { violations, summary, attacks: this.results.length }
  }
}

module.exports = { Mallory, ATTACKS }
