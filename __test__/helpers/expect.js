'use strict'
// Assertions and recorders the API suites share (they use jest's expect, so only test files load them).

const { describeError } = require('./errors')

/** Collects a bucket's 'change' events. */
function recordChanges(bucket) {
  const events = []
  bucket.on('change', (e) => events.push(e))
  return events
}

/** Asserts err is an argument error of class `Ctor` (from the test realm) whose message matches `names`. */
function expectArgError(err, Ctor, names) {
  expect(describeError(err)).not.toBe('no error')
  expect(err).toBeInstanceOf(Error)
  expect(err).toBeInstanceOf(Ctor)
  expect(err.message).toMatch(names)
}

function expectCode(err, code) {
  expect(describeError(err)).not.toBe('no error')
  expect(err).toBeInstanceOf(Error)
  expect(err.code).toBe(code)
}

const sortKeys = (keys) => [...keys].sort()
const sortEntries = (entries) => [...entries].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))

module.exports = { recordChanges, expectArgError, expectCode, sortKeys, sortEntries }
