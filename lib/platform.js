'use strict'
// The names of the platform packages: which `peer-buckets-<platform>` package (and which
// `peer-buckets.<platform>.node` file) a Rust target triple builds. The loader (native.js) finds the
// addon by it and the packaging script (scripts/package.js) writes the packages by it, so the two never
// disagree on a name.

const ARCH = { x86_64: 'x64', aarch64: 'arm64', i686: 'ia32', armv7: 'arm' }

// 'x86_64-unknown-linux-gnu' -> 'linux-x64-gnu', 'aarch64-apple-darwin' -> 'darwin-arm64',
// 'x86_64-pc-windows-msvc' -> 'win32-x64-msvc': the names napi-rs gives the platform packages.
function platformOf(triple) {
  const [arch, , os, abi] = triple.split('-')
  const cpu = ARCH[arch] || arch
  if (os === 'darwin') return `darwin-${cpu}`
  if (os === 'windows') return `win32-${cpu}-${abi}`
  return `${os}-${cpu}${abi ? `-${abi}` : ''}`
}

module.exports = { platformOf }
