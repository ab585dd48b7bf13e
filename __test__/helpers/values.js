'use strict'
// Values cross the IPC channel tagged, so that Buffers (and undefined) survive JSON serialisation.

function encodeValue(value) {
  if (value === undefined) return { $undefined: true }
  if (Buffer.isBuffer(value)) return { $buffer: value.toString('base64') }
  if (value instanceof Uint8Array) {
    // a plain Uint8Array (not a Buffer): the receiving side rebuilds a plain Uint8Array
    return { $u8: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') }
  }
  return { $json: value }
}

function decodeValue(tagged) {
  if (!tagged || typeof tagged !== 'object') throw new Error(`not a tagged value: ${JSON.stringify(tagged)}`)
  if (tagged.$undefined) return undefined
  if ('$buffer' in tagged) return Buffer.from(tagged.$buffer, 'base64')
  if ('$u8' in tagged) return new Uint8Array(Buffer.from(tagged.$u8, 'base64'))
  return tagged.$json
}

module.exports = { encodeValue, decodeValue }
