'use strict'
// The errors peer-buckets gives its callers: Errors of this realm with a `code` (ECLOSED, ENOTREADY,
// EACKTIMEOUT, EDISK, EFETCH, ENOTCONN, and the codes the addon gives its own errors). Argument errors are plain
// TypeErrors and RangeErrors (lib/validation.js).

function codedError(code, message) {
  const err = new Error(message)
  err.code = code
  return err
}

function closedError(what) {
  return codedError('ECLOSED', `${what}: the peer is closed`)
}

// A synchronous read before the peer opened: its replica (and data directory) is not loaded yet.
function notReadyError(what) {
  return codedError('ENOTREADY', `${what}: the peer is not open yet (await peer.ready())`)
}

// Native errors come from another realm (and fail instanceof Error under jest): re-create them here,
// keeping the code the addon gave them (src/contract.rs, Code).
function fromNative(err) {
  if (err instanceof Error) return err
  return codedError(err && err.code, String((err && err.message) || err))
}

module.exports = { codedError, closedError, notReadyError, fromNative }
