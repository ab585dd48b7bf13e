'use strict'
// Small timing helpers shared by the suites: everything is bounded by an explicit deadline.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Polls `fn` (sync or async) until it returns a truthy value, and resolves with that value.
 * Rejects after `timeout` ms with `message` and the last value / error seen, so a failure says why.
 */
async function waitFor(fn, { timeout = 5000, interval = 25, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout
  let last
  let lastError
  for (;;) {
    try {
      last = await fn()
      lastError = undefined
      if (last) return last
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= deadline) {
      const detail = lastError ? `last error: ${lastError && lastError.stack}` : `last value: ${safe(last)}`
      throw new Error(`timed out after ${timeout} ms waiting for ${message}; ${detail}`)
    }
    await sleep(interval)
  }
}

/** Rejects with a clear message if `promise` has not settled within `ms`. */
function withTimeout(promise, ms, what = 'operation') {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function safe(value) {
  try {
    const text = JSON.stringify(value)
    return text && text.length > 500 ? text.slice(0, 500) + '…' : text
  } catch {
    return String(value)
  }
}

module.exports = { sleep, waitFor, withTimeout }
