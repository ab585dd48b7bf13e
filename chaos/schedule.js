'use strict'
// The seeded plan of a chaos run: which peers keep a data directory, their clock skews and options, and
// the timed list of faults. Everything here comes from the seed alone, so the same seed gives the same
// schedule (what the peers and the network then do with it is up to them).

const { Rng } = require('./rng')

// Failure detection: a link silent this long is declared dead (crates/engine/src/node/config.rs, dead_after).
const DEAD_AFTER_MS = 3000

/**
 * Three regimes, chosen by the seed:
 * - 'wide': skews up to ±30 s, the default maxClockSkew (60 s, so no link is refused for its clock) and
 *   the default tombstone age (3 × 60 s: within a short run nothing is collected);
 * - 'tight': skews up to ±0.6 s under a maxClockSkew of 2 s, so tombstones (min age 6 s) are collected
 *   during the run (and a restarted peer that missed a collection resyncs in full); a peer may be
 *   restarted with its clock beyond maxClockSkew for a while ('skew-out': its links are refused) and
 *   back;
 * - 'forget': 'tight' with a memberTimeout of 12 s, so members away that long are forgotten, collected
 *   around, and come back with writes older than what was collected meanwhile.
 */
function planConfig(seed, nodes, only = 'any', security = 'any') {
  const rng = new Rng(seed, 'config')
  // One draw, so forcing a regime leaves the rest of the plan as the seed made it.
  const r = rng.float()
  const drawn = r < 0.5 ? 'wide' : r < 0.75 ? 'tight' : 'forget'
  const regime = only === 'any' ? drawn : only
  const options =
    regime === 'wide' ? { maxClockSkew: 60000 } : { maxClockSkew: 2000, memberTimeout: regime === 'forget' ? 12000 : 60000 }
  const skewRange = regime === 'wide' ? 30000 : 600
  const ids = Array.from({ length: nodes }, (_, i) => `n${i + 1}`)
  // Some peers keep their data on disk (at least one of each kind when there are two or more).
  let durable = ids.map(() => rng.chance(0.5))
  if (nodes >= 2 && durable.every(Boolean)) durable[rng.int(0, nodes - 1)] = false
  if (nodes >= 2 && !durable.some(Boolean)) durable[rng.int(0, nodes - 1)] = true
  const peers = ids.map((id, i) => ({
    id,
    durable: durable[i],
    durability: durable[i] ? (rng.chance(0.75) ? 'strict' : 'relaxed') : undefined,
    skew: rng.int(-skewRange, skewRange),
    // Seeds: the next peer (a ring, so everyone is reachable), sometimes one more; the rest is learned.
    seeds: [ids[(i + 1) % nodes], ...(nodes > 2 && rng.chance(0.5) ? [rng.pick(ids.filter((x) => x !== id))] : [])]
      .filter((x, k, all) => x !== id && all.indexOf(x) === k),
  }))
  // A stream of its own, so the rest of the plan is the same with a secret or without. With one, every
  // link runs the Noise handshake and binds ids to keys: a memory peer restarted before the others
  // saw its old link die is refused (its id still bound to its old key) until they do, and an
  // impostor is refused while the real peer's links are up.
  const secured = security === 'any' ? new Rng(seed, 'secret').chance(0.5) : security === 'secret'
  if (secured) options.secret = `chaos-cluster-secret-${seed}`
  return { seed, nodes, regime, options, skewRange, peers }
}

/**
 * The faults, as a time-ordered list of { t (ms from the start), kind, ... } with their ends as
 * separate events: partition / asym / slow / bridge start with an id and end with { kind: 'heal', fault }.
 * A partial heal is three events: 'isolate' (one peer cut off from all the others), 'reach-one' (it
 * reaches one peer, which still reaches the rest: a bridge, lifting the isolation in the same step),
 * then the bridge's heal; the isolated peer is sometimes killed and restarted meanwhile, so it comes
 * back (empty, for a memory peer) through one peer first. An impostor is a second process with a running
 * peer's id (memory only, no workload) from 'impostor' to 'impostor-end' (a SIGKILL): the one started
 * last keeps the links, so the real one is cut off meanwhile.
 * At most ⌊(n-1)/2⌋ peers are down or paused at once, so a majority can still acknowledge writes.
 */
function planFaults(config, seconds) {
  const rng = new Rng(config.seed, 'faults')
  const ids = config.peers.map((p) => p.id)
  const n = ids.length
  const end = seconds * 1000
  const last = end - 2000 // no fault starts in the last two seconds
  const maxDown = Math.max(0, Math.floor((n - 1) / 2))
  const downUntil = new Map() // id -> ms until which it is killed, paused or restarting
  const events = []
  let faultId = 0
  const weights = {
    partition: 22,
    asym: 10,
    slow: 10,
    bridge: n >= 3 ? 8 : 0,
    'partial-heal': n >= 3 ? 8 : 0,
    impostor: n >= 2 ? 5 : 0,
    kill: 20,
    pause: 12,
    restart: 10,
  }
  let impostorUntil = 0
  if (config.regime !== 'wide') weights['skew-out'] = 6
  if (n < 2) {
    for (const k of ['partition', 'asym', 'slow', 'bridge']) weights[k] = 0
  }
  const skewFor = () => rng.int(-config.skewRange, config.skewRange)
  const until = (t, lo, hi) => Math.min(end, t + rng.int(lo, hi))

  for (let t = 800 + rng.int(0, 700); t < last; t += rng.int(250, 2200)) {
    const kind = rng.weighted(weights)
    const up = ids.filter((id) => !(downUntil.get(id) > t))
    const downNow = n - up.length
    if (kind === 'partition') {
      const shuffled = rng.shuffle(ids)
      const minority = rng.chance(0.3) ? 1 : Math.floor(n / 2)
      const groups = [shuffled.slice(0, minority), shuffled.slice(minority)]
      const id = `f${++faultId}`
      const mode = rng.chance(0.5) ? 'cut' : 'blackhole'
      events.push({ t, kind, fault: id, mode, groups })
      events.push({ t: until(t, 1500, 9000), kind: 'heal', fault: id })
    } else if (kind === 'bridge') {
      // Two sides that cannot reach each other, and one peer that reaches both (non-transitive).
      const shuffled = rng.shuffle(ids)
      const bridge = shuffled[0]
      const rest = shuffled.slice(1)
      const cut = Math.max(1, Math.floor(rest.length / 2))
      const id = `f${++faultId}`
      events.push({ t, kind, fault: id, mode: rng.chance(0.5) ? 'cut' : 'blackhole', bridge, groups: [rest.slice(0, cut), rest.slice(cut)] })
      events.push({ t: until(t, 2000, 8000), kind: 'heal', fault: id })
    } else if (kind === 'partial-heal') {
      const node = rng.pick(ids)
      const others = ids.filter((x) => x !== node)
      const first = rng.pick(others)
      // Long enough, in the 'forget' regime, for the others to forget it and collect meanwhile.
      const isolated = config.regime === 'forget' ? rng.int(6000, 20000) : rng.int(2000, 8000)
      const reach = Math.min(end, t + isolated)
      const isolation = `f${++faultId}`
      const bridge = `f${++faultId}`
      const mode = rng.chance(0.5) ? 'cut' : 'blackhole'
      events.push({ t, kind: 'isolate', fault: isolation, mode, groups: [[node], others] })
      events.push({ t: reach, kind: 'reach-one', fault: bridge, after: isolation, mode, bridge: first, groups: [[node], others.filter((x) => x !== first)] })
      events.push({ t: until(reach, 1500, 6000), kind: 'heal', fault: bridge })
      if (downNow < maxDown && up.includes(node) && reach - t > 1500 && rng.chance(0.4)) {
        events.push({ t: t + rng.int(300, Math.floor((reach - t) / 2)), kind: 'kill', node })
        events.push({ t: reach - 300, kind: 'start', node })
        downUntil.set(node, reach + 500)
      }
    } else if (kind === 'impostor') {
      if (impostorUntil > t) continue
      const node = rng.pick(ids)
      impostorUntil = until(t, 2000, 8000)
      events.push({ t, kind: 'impostor', node })
      events.push({ t: impostorUntil, kind: 'impostor-end', node })
      impostorUntil += 1000
    } else if (kind === 'asym') {
      // Some directions drop everything while their reverse delivers.
      const pairs = []
      for (let k = rng.int(1, Math.max(1, n - 1)); k > 0; k--) {
        const a = rng.pick(ids)
        const b = rng.pick(ids.filter((x) => x !== a))
        pairs.push([a, b])
      }
      const id = `f${++faultId}`
      events.push({ t, kind, fault: id, pairs })
      events.push({ t: until(t, 1000, 7000), kind: 'heal', fault: id })
    } else if (kind === 'slow') {
      const pairs = []
      for (let k = rng.int(1, n); k > 0; k--) {
        const a = rng.pick(ids)
        const b = rng.pick(ids.filter((x) => x !== a))
        pairs.push([a, b], [b, a])
      }
      const id = `f${++faultId}`
      events.push({ t, kind, fault: id, pairs, delayMs: rng.int(20, 700) })
      events.push({ t: until(t, 1000, 7000), kind: 'heal', fault: id })
    } else if (downNow < maxDown && up.length > 0) {
      const node = rng.pick(up)
      if (kind === 'kill') {
        // SIGKILL; a memory peer comes back empty (a new incarnation), a dataDir peer with its data.
        const back = until(t, 300, 6000)
        const skew = rng.chance(0.5) ? skewFor() : undefined
        events.push({ t, kind: 'kill', node })
        events.push({ t: back, kind: 'start', node, skew })
        downUntil.set(node, back + 500)
      } else if (kind === 'pause') {
        // SIGSTOP past failure detection, then SIGCONT.
        const back = until(t, DEAD_AFTER_MS + 500, DEAD_AFTER_MS + 6000)
        events.push({ t, kind: 'pause', node })
        events.push({ t: back, kind: 'resume', node })
        downUntil.set(node, back + 500)
      } else if (kind === 'restart') {
        // A clean stop (close()) and a start, with a new clock skew: the way to change a skew mid-run.
        events.push({ t, kind: 'stop', node })
        events.push({ t: t + 200, kind: 'start', node, skew: skewFor() })
        downUntil.set(node, t + 1200)
      } else if (kind === 'skew-out') {
        // Restarted with its clock beyond maxClockSkew: its links are refused until it is back in range.
        const sign = rng.chance(0.5) ? 1 : -1
        const out = sign * Math.round(config.options.maxClockSkew * (1.3 + rng.float()))
        const back = until(t, 2000, 6000)
        events.push({ t, kind: 'stop', node })
        events.push({ t: t + 200, kind: 'start', node, skew: out })
        events.push({ t: back, kind: 'stop', node })
        events.push({ t: back + 200, kind: 'start', node, skew: skewFor() })
        downUntil.set(node, back + 1200)
      }
    }
  }
  events.sort((a, b) => a.t - b.t)
  return events
}

function plan({ seed, seconds, nodes, regime = 'any', security = 'any' }) {
  const config = planConfig(seed, nodes, regime, security)
  return { config, events: planFaults(config, seconds) }
}

module.exports = { plan, DEAD_AFTER_MS }
