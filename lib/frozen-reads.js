'use strict'
// FrozenReads: what `get` returns in a bucket opened with `{ reads: 'frozen' }`. A JSON value is
// decoded once per write and kept, deeply frozen, per key; every get of the key returns that same
// object until the key changes (set, delete, a remote write, expiry), after which the next get decodes
// the new value. A get therefore costs a native lookup and no JSON.parse.
//
// Invariants:
// - an entry is returned only after the native side confirmed, in the get's own lookup, that the key's
//   live value still has the stamp the entry was decoded under (`Stamp` in the engine: the write's
//   hlc and origin), so a value replaced by any path, local or remote, is never returned stale;
// - a returned object is deeply frozen (objects and arrays all the way down), so no caller can change
//   what another caller will be handed;
// - string values and bytes are not kept: a string is immutable and costs no parse, and a Buffer
//   cannot be frozen, so each get of bytes returns a fresh copy, as without the option;
// - memory: one entry per live key read, holding the value it had when last read, plus entries of
//   keys deleted or expired by another path until their next get or the sweep drops them. Each new
//   entry checks two kept ones, in order, so a pass over the map ends before it has grown by half, and
//   entries of dead keys cannot pile up without bound.

const { hot, VALUE_KIND } = require('./native.js')

// How many kept entries each new entry checks for a key that is no longer live.
const SWEEP_PER_ENTRY = 2

class Kept {
  constructor(value) {
    this.value = value
    this.s0 = VALUE_KIND[1]
    this.s1 = VALUE_KIND[2]
    this.s2 = VALUE_KIND[3]
    this.s3 = VALUE_KIND[4]
  }
}

/** Freezes `root` and every object and array inside it (iteratively: nesting depth is the value's). */
function deepFreeze(root) {
  if (root === null || typeof root !== 'object') return root
  const stack = [root]
  while (stack.length > 0) {
    const o = stack.pop()
    Object.freeze(o)
    for (const k in o) {
      const v = o[k]
      if (v !== null && typeof v === 'object') stack.push(v)
    }
  }
  return root
}

class FrozenReads {
  #kept = new Map()
  #sweep = null

  /** The value of `key` through bucket handle `h`, as get returns it in this mode. */
  get(h, key) {
    const kept = this.#kept.get(key)
    if (kept !== undefined) {
      VALUE_KIND[1] = kept.s0
      VALUE_KIND[2] = kept.s1
      VALUE_KIND[3] = kept.s2
      VALUE_KIND[4] = kept.s3
    } else {
      VALUE_KIND[1] = VALUE_KIND[2] = VALUE_KIND[3] = VALUE_KIND[4] = 0
    }
    const raw = hot.getChanged(h, key)
    if (raw === true) return kept.value
    if (typeof raw !== 'string' || VALUE_KIND[0] !== 1) {
      // Absent, a string value or bytes: nothing is kept for the key.
      if (kept !== undefined) this.#kept.delete(key)
      return raw
    }
    const value = deepFreeze(JSON.parse(raw))
    if (kept !== undefined) {
      // Reassigning in place keeps the key's position, and the sweep's iterator, as they are.
      kept.value = value
      kept.s0 = VALUE_KIND[1]
      kept.s1 = VALUE_KIND[2]
      kept.s2 = VALUE_KIND[3]
      kept.s3 = VALUE_KIND[4]
    } else {
      this.#kept.set(key, new Kept(value))
      this.#sweepSome(h)
    }
    return value
  }

  /** A local delete: the key's entry goes at once. */
  forget(key) {
    this.#kept.delete(key)
  }

  get size() {
    return this.#kept.size
  }

  // Drops entries of keys no longer live (deleted or expired by another path), a few per new entry.
  #sweepSome(h) {
    for (let i = 0; i < SWEEP_PER_ENTRY; i++) {
      if (this.#sweep === null) this.#sweep = this.#kept.keys()
      const next = this.#sweep.next()
      if (next.done) {
        this.#sweep = null
        return
      }
      if (!hot.has(h, next.value)) this.#kept.delete(next.value)
    }
  }
}

module.exports = { FrozenReads, deepFreeze }
