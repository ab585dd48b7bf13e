'use strict'
// The worker side of bench/lib/procs.js: answers { id, cmd, args } messages with { id, ok, result|error }.
// A worker ends when asked ('exit'), or when its parent goes away (the IPC channel closes).

function serve(handlers, onExit) {
  process.on('message', async (msg) => {
    if (!msg || typeof msg !== 'object') return
    const { id, cmd, args } = msg
    if (cmd === 'exit') {
      try {
        if (onExit) await onExit()
      } finally {
        process.exit(0)
      }
      return
    }
    const h = handlers[cmd]
    try {
      if (!h) throw new Error(`unknown command '${cmd}'`)
      const result = await h(args || {})
      process.send({ id, ok: true, result })
    } catch (err) {
      process.send({ id, ok: false, error: (err && err.stack) || String(err) })
    }
  })
  process.on('disconnect', () => process.exit(0))
}

/** Polls `check()` until it returns true; the pause after each call scales with what the call cost
 *  (so an O(n) probe such as `size` takes at most ~10% of a core), bounded by `timeoutMs`. */
async function pollUntil(check, timeoutMs, minPauseMs = 1) {
  const end = Date.now() + timeoutMs
  for (;;) {
    const t = process.hrtime.bigint()
    if (check()) return true
    const cost = Number(process.hrtime.bigint() - t) / 1e6
    if (Date.now() > end) return false
    await new Promise((r) => setTimeout(r, Math.max(minPauseMs, Math.min(50, cost * 9))))
  }
}

module.exports = { serve, pollUntil }
