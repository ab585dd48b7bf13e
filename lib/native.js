'use strict'
// The JavaScript side of the contract with the addon (src/contract.rs declares it; native.d.ts types it):
// the loaded binding, its hot calls and value-kind slot, the numbers of the ack levels and the layout
// of a change batch. It is the only module that loads the addon (through the root native.js, which
// finds the binary built for this platform).

const native = require('../native.js')

// After hot.get returns a string, VALUE_KIND[0] says whether it is JSON text to parse (1) or a string
// value as it is (0): strings are stored as themselves, so reading one costs no JSON.parse. Elements
// 1 to 4 carry a value's stamp to and from hot.getChanged (see lib/frozen-reads.js).
const VALUE_KIND = new Int32Array(5)
native.bindValueKind(VALUE_KIND)

// get, getChanged, has, setJson, setString, setBytes and delete: plain Node-API callbacks (src/hot.rs), taking a
// bucket handle first.
const hot = native.hotCalls()

// 'local' -> native.AckLevel.Local, ...: the names users write, the numbers the addon takes.
const ACK_LEVELS = new Map(Object.entries(native.AckLevel).map(([name, code]) => [name.toLowerCase(), code]))

// A change batch is flat: CHANGE_STRIDE slots per change, at these offsets.
const CHANGE = Object.freeze({
  STRIDE: native.CHANGE_STRIDE,
  KEY: native.ChangeSlot.Key,
  VALUE: native.ChangeSlot.Value,
  ORIGIN: native.ChangeSlot.Origin,
  LOCAL: native.ChangeSlot.Local,
  EXPIRED: native.ChangeSlot.Expired,
})

module.exports = { native, hot, VALUE_KIND, ACK_LEVELS, CHANGE }
