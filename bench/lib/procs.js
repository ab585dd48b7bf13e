'use strict'
// Every process the bench starts (Node workers and redis-server instances) is registered here and killed
// at the end, on error and on SIGINT/SIGTERM. The pids are also written to bench/results/.running-pids.json so that a
// run that was itself SIGKILLed leaves nothing behind: the next run kills what is listed there (after
// checking the pid still runs the same program).

const fs = require('node:fs')
const path = require('node:path')
const { fork } = require('node:child_process')
const { Channel } = require('../../support/ipc')

const PIDFILE = path.join(__dirname, '..', 'results', '.running-pids.json')
const live = new Map() // pid -> { child, cmd, cleanup }
let installed = false

function cmdlineOf(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')
  } catch {
    return null
  }
}

function writePidfile() {
  try {
    const list = [...live.entries()].map(([pid, e]) => ({ pid, cmd: e.cmd }))
    if (list.length === 0) fs.rmSync(PIDFILE, { force: true })
    else fs.writeFileSync(PIDFILE, JSON.stringify(list))
  } catch {}
}

/** Kills what a previous, killed run left behind (only pids whose command line still matches). */
function reapStale() {
  let list
  try {
    list = JSON.parse(fs.readFileSync(PIDFILE, 'utf8'))
  } catch {
    return 0
  }
  let n = 0
  for (const { pid, cmd } of list) {
    const now = cmdlineOf(pid)
    if (now && cmd && now.startsWith(cmd.slice(0, 60))) {
      try {
        process.kill(pid, 'SIGKILL')
        n++
      } catch {}
    }
  }
  fs.rmSync(PIDFILE, { force: true })
  return n
}

function register(child, cleanup) {
  installSignalHandlers()
  const pid = child.pid
  if (!pid) return
  live.set(pid, { child, cmd: cmdlineOf(pid) || '', cleanup })
  writePidfile()
  child.once('exit', () => {
    const e = live.get(pid)
    live.delete(pid)
    writePidfile()
    if (e && e.cleanup) e.cleanup()
  })
}

/** Synchronous: SIGKILL everything still running (used from 'exit' handlers). */
function killAllSync() {
  for (const [pid, e] of live) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
    if (e.cleanup) {
      try {
        e.cleanup()
      } catch {}
    }
  }
  live.clear()
  writePidfile()
}

function installSignalHandlers() {
  if (installed) return
  installed = true
  process.on('exit', killAllSync)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}: stopping every process it started\n`)
      const children = [...live.values()].map((e) => e.child)
      const gone = Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null)
        ? null : new Promise((r) => c.once('exit', r))))
      killAllSync()
      // Wait (briefly) for the exits to be reaped, so no zombie is left behind.
      const t = setTimeout(() => process.exit(sig === 'SIGINT' ? 130 : 143), 2000)
      gone.then(() => {
        clearTimeout(t)
        process.exit(sig === 'SIGINT' ? 130 : 143)
      })
    })
  }
}

/**
 * Starts a worker (a Node script in bench/workers) and returns an RPC handle:
 * `call(cmd, args, timeoutMs)` resolves with the worker's result; `kill()` ends it.
 */
function spawnWorker(file, { name = path.basename(file, '.js'), execArgv = [] } = {}) {
  const child = fork(file, [], {
    execArgv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, BENCH_WORKER_NAME: name },
  })
  register(child)
  const channel = new Channel(child, { name })
  const ready = new Promise((resolve, reject) => {
    child.once('spawn', resolve)
    child.once('error', reject)
  })
  return {
    name,
    child,
    pid: child.pid,
    ready,
    call(cmd, args = {}, timeoutMs = 60_000) {
      return channel.request(cmd, args, timeoutMs)
    },
    async kill(graceMs = 2000) {
      if (channel.exited) return
      const gone = new Promise((r) => child.once('exit', r))
      channel.request('exit', {}, graceMs).catch(() => {})
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs)
      await gone
      clearTimeout(t)
    },
  }
}

async function killAll(workers) {
  await Promise.all(workers.filter(Boolean).map((w) => w.kill().catch(() => {})))
}

module.exports = { spawnWorker, register, killAll, killAllSync, reapStale, installSignalHandlers }
