'use strict'
// A small seeded generator (xorshift128+ over BigInt-free 32-bit halves would do; splitmix32 is enough
// here): the same seed and stream name give the same numbers on every machine and Node version.

function hashString(text) {
  // FNV-1a, 32 bits
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  return h
}

class Rng {
  /** `seed`: an integer; `stream`: a name, so that independent consumers do not share a sequence. */
  constructor(seed, stream = '') {
    this.state = (hashString(`${seed}/${stream}`) ^ (Number(seed) >>> 0)) >>> 0
  }

  /** A uniform 32-bit unsigned integer (mulberry32). */
  u32() {
    this.state = (this.state + 0x6d2b79f5) >>> 0
    let t = this.state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }

  /** A float in [0, 1). */
  float() {
    return this.u32() / 4294967296
  }

  /** An integer in [lo, hi] (inclusive). */
  int(lo, hi) {
    return lo + Math.floor(this.float() * (hi - lo + 1))
  }

  chance(p) {
    return this.float() < p
  }

  pick(list) {
    return list[Math.floor(this.float() * list.length)]
  }

  /** Picks a key of `weights` ({ name: weight }) with probability proportional to its weight. */
  weighted(weights) {
    const entries = Object.entries(weights)
    let total = 0
    for (const [, w] of entries) total += w
    let x = this.float() * total
    for (const [name, w] of entries) {
      x -= w
      if (x < 0) return name
    }
    return entries[entries.length - 1][0]
  }

  shuffle(list) {
    const out = list.slice()
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.float() * (i + 1))
      ;[out[i], out[j]] = [out[j], out[i]]
    }
    return out
  }
}

module.exports = { Rng, hashString }
