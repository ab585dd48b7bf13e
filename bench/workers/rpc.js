'use strict'
// The worker side of bench/lib/procs.js: serves its commands over support/ipc.js, plus 'exit', which
// runs the worker's cleanup, answers, and ends the process. A worker also ends when its parent goes away.

const ipc = require('../../support/ipc')

function serve(handlers, onExit) {
  ipc.serve({
    ...handlers,
    async exit() {
      try {
        if (onExit) await onExit()
      } finally {
        setImmediate(() => process.exit(0))
      }
      return true
    },
  })
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
