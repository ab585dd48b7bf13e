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

// The longest gap between the ticks of a 1 ms interval: how long the event loop could not run anything.
// (perf_hooks.monitorEventLoopDelay was tried first: it missed whole synchronous blocks of 900 ms.)
// With it, the CPU time the process used during that gap: on a loaded machine a gap is mostly time
// the thread waited for a core, and its CPU time is the work that held the loop.
function stallMonitor() {
  let last = process.hrtime.bigint()
  let lastCpu = process.cpuUsage()
  let max = 0n
  let maxCpu = 0
  const note = () => {
    const now = process.hrtime.bigint()
    const cpu = process.cpuUsage()
    if (now - last > max) {
      max = now - last
      maxCpu = cpu.user - lastCpu.user + (cpu.system - lastCpu.system)
    }
    last = now
    lastCpu = cpu
  }
  const ticker = setInterval(note, 1)
  ticker.unref()
  const round = (ms) => Math.round(ms * 10) / 10
  return {
    /** The longest stall since the last call, in ms. */
    take() {
      return this.takeWithCpu().ms
    },
    /** The longest stall since the last call and the CPU time used during it: `{ ms, cpuMs }`. */
    takeWithCpu() {
      note()
      const out = { ms: round(Number(max) / 1e6), cpuMs: round(maxCpu / 1000) }
      max = 0n
      maxCpu = 0
      return out
    },
    stop() {
      clearInterval(ticker)
    },
  }
}

module.exports = { now, sleep, nsToMs, median, percentile, inFlight, waitFor, withTimeout, fmtNum, machine, stallMonitor }
