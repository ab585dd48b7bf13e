'use strict'
const os = require('node:os')

const now = () => process.hrtime.bigint()
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const nsToMs = (ns) => Number(ns) / 1e6

function median(xs) {
  const s = xs.filter((x) => x != null && Number.isFinite(x)).sort((a, b) => a - b)
  if (s.length === 0) return null
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Runs `fn(i)` for i in 0..count-1 (async), at most `inflight` of them at a time. */
async function inFlight(count, inflight, fn) {
  let next = 0
  const worker = async () => {
    for (;;) {
      const i = next++
      if (i >= count) return
      await fn(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(inflight, count) }, worker))
}

/** Nearest-rank percentile of an array of numbers (p in 0..100). */
function percentile(xs, p) {
  if (xs.length === 0) return null
  const s = Float64Array.from(xs).sort()
  const rank = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))
  return s[rank]
}

/** Polls `check` (which may be async and returns truthy when done) until it holds or `timeoutMs` passes. */
async function waitFor(what, check, { timeoutMs = 10_000, intervalMs = 5 } = {}) {
  const end = Date.now() + timeoutMs
  for (;;) {
    const v = await check()
    if (v) return v
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
      timer.unref()
    }),
  ]).finally(() => clearTimeout(timer))
}

function fmtNum(x, digits = 0) {
  if (x == null) return '—'
  if (typeof x !== 'number') return String(x)
  if (Math.abs(x) >= 1e6) return (x / 1e6).toFixed(2) + 'M'
  if (Math.abs(x) >= 1e4) return (x / 1e3).toFixed(1) + 'k'
  return x.toFixed(digits)
}

function machine() {
  const cpus = os.cpus()
  return {
    cpu: cpus.length ? cpus[0].model.trim() : 'unknown',
    cores: cpus.length,
    memory_gib: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    loadavg: os.loadavg(),
  }
}

module.exports = { now, sleep, nsToMs, median, percentile, inFlight, waitFor, withTimeout, fmtNum, machine }
