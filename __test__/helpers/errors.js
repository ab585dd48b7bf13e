'use strict'
// Captures what a call fails with, whether it throws synchronously or returns a rejected promise.

const NO_ERROR = Symbol('no error')

async function captureError(fn) {
  let result
  try {
    result = fn()
  } catch (err) {
    return err
  }
  if (result && typeof result.then === 'function') {
    try {
      await result
    } catch (err) {
      return err
    }
  }
  return NO_ERROR
}

/** Calls fn(cb) and resolves with the error given to the callback (or what fn threw synchronously). */
function callbackError(fn, timeout = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('callback was not called')), timeout)
    try {
      fn((err) => {
        clearTimeout(timer)
        resolve(err === undefined ? null : err)
      })
    } catch (err) {
      clearTimeout(timer)
      resolve(err)
    }
  })
}

function describeError(err) {
  if (err === NO_ERROR) return 'no error'
  return `${err && err.constructor && err.constructor.name}: ${err && err.message} (code ${err && err.code})`
}

module.exports = { captureError, callbackError, describeError, NO_ERROR }
