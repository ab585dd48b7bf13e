'use strict'
// LoopDelay: how long the event loop was kept from running, as a peer observes it, for stats() and
// metrics(). It owns a perf_hooks event-loop delay histogram (a libuv timer every RESOLUTION_MS that
// records how late it fires: a loop blocked 100 ms records about 100 ms) and the windows that give the
// recent figure.
//
// Invariants: `maxMs` never falls while the peer lives (the longest delay since it was made);
// `recentMs` is the longest delay over the current window and the one before it, so a stall stays
// visible for WINDOW_MS at least and at most twice that. The timers never hold the process open.
// The loop is the process's: a delay any code causes is counted, the package's own and the app's.

const { monitorEventLoopDelay } = require('node:perf_hooks')

const RESOLUTION_MS = 10
const WINDOW_MS = 10_000

class LoopDelay {
  #histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS })
  #rotate
  #longestNs = 0
  #previousNs = 0

  constructor() {
    this.#histogram.enable()
    this.#rotate = setInterval(() => {
      this.#previousNs = this.#histogram.max
      this.#longestNs = Math.max(this.#longestNs, this.#previousNs)
      this.#histogram.reset()
    }, WINDOW_MS)
    this.#rotate.unref()
  }

  /** `{ maxMs, recentMs }`, in ms with a tenth of a ms. */
  read() {
    // An empty histogram reports its max as 0.
    const now = this.#histogram.max
    const ms = (ns) => Math.round(ns / 1e5) / 10
    return { maxMs: ms(Math.max(this.#longestNs, now)), recentMs: ms(Math.max(this.#previousNs, now)) }
  }

  stop() {
    clearInterval(this.#rotate)
    this.#histogram.disable()
  }
}

module.exports = { LoopDelay }
