'use strict'
// Loads the native addon built for this machine and exports it as it is (index.js is its only user).
//
// Where it looks, in this order, and the first place that exists is the one loaded:
//  1. the file named by PEER_BUCKETS_NATIVE_PATH, when set (an addon built from source by hand);
//  2. `peer-buckets.<platform>.node` beside this file: what `napi build --platform` writes in a clone
//     (where nothing else is looked for);
//  3. the package `peer-buckets-<platform>`: one per platform, each an optional dependency of the root
//     package at its exact version, so npm installs only the one whose os, cpu and libc match.
// Invariants: an addon of another version of peer-buckets is never loaded (the JavaScript face and the
// addon change together); an addon that exists but fails to load is reported with its own error, never
// skipped for another; and when none is found the error names this platform, lists the supported ones
// and says how to build from source.

const { existsSync, readFileSync } = require('node:fs')
const { join, resolve } = require('node:path')
const pkg = require('./package.json')
const { platformOf } = require('./lib/platform.js')

// glibc and musl builds of Node differ in what they load; `ldd` names musl on musl systems, and
// Node's report carries the glibc version only when it runs on glibc.
function isMusl() {
  try {
    if (readFileSync('/usr/bin/ldd', 'utf8').includes('musl')) return true
  } catch {
    // no ldd to read: ask Node itself
  }
  try {
    return !process.report.getReport().header.glibcVersionRuntime
  } catch {
    return false
  }
}

function thisPlatform() {
  const { platform, arch } = process
  if (platform === 'linux') return `linux-${arch}-${isMusl() ? 'musl' : 'gnu'}`
  if (platform === 'win32') return `win32-${arch}-msvc`
  return `${platform}-${arch}`
}

function loadError(message, cause) {
  const err = new Error(`peer-buckets: ${message}`, cause ? { cause } : undefined)
  err.code = 'ENATIVE'
  return err
}

function load(platform) {
  const explicit = process.env.PEER_BUCKETS_NATIVE_PATH
  if (explicit) {
    try {
      return require(resolve(explicit))
    } catch (e) {
      throw loadError(`PEER_BUCKETS_NATIVE_PATH=${explicit} could not be loaded: ${e.message}`, e)
    }
  }

  const file = `${pkg.napi.binaryName}.${platform}.node`
  const local = join(__dirname, file)
  if (existsSync(local)) {
    try {
      return require(local)
    } catch (e) {
      throw loadError(`${local} could not be loaded: ${e.message}`, e)
    }
  }

  // A source checkout has the Rust sources beside this file, and its addon is built, not installed.
  if (existsSync(join(__dirname, 'Cargo.toml'))) {
    throw loadError(`${file} is not built yet in this source checkout: run \`npm run build\` (needs cargo).`)
  }
  const supported = pkg.napi.targets.map(platformOf)
  const name = `${pkg.napi.packageName}-${platform}`
  if (!supported.includes(platform)) {
    throw loadError(
      `no prebuilt binary for ${platform} (Node.js ${process.version}).\n` +
        `Prebuilt binaries exist for: ${supported.join(', ')}.\n` +
        buildFromSource(platform),
    )
  }
  let installed
  try {
    installed = require(`${name}/package.json`).version
  } catch {
    throw loadError(
      `the binary for ${platform}, package ${name}@${pkg.version}, is not installed.\n` +
        `It is an optional dependency of peer-buckets: it is left out when optional dependencies are ` +
        `omitted (--omit=optional) or when node_modules or the lockfile was made on another platform. ` +
        `Install it with \`npm install ${name}@${pkg.version}\`, or reinstall peer-buckets on this machine.\n` +
        buildFromSource(platform),
    )
  }
  if (installed !== pkg.version) {
    throw loadError(
      `${name} is version ${installed} but peer-buckets is ${pkg.version}; both must be the same ` +
        `version: \`npm install ${name}@${pkg.version}\`.`,
    )
  }
  try {
    return require(name)
  } catch (e) {
    throw loadError(`${name} could not be loaded on this machine: ${e.message}`, e)
  }
}

function buildFromSource(platform) {
  return (
    `To build it from source (needs Rust 1.88 or later with cargo): clone the peer-buckets source repository, ` +
    `run \`npm ci\` in the clone (it builds ${pkg.napi.binaryName}.${platform}.node there), then either ` +
    '`npm install <path of the clone>` in your project, or set PEER_BUCKETS_NATIVE_PATH to that .node file.'
  )
}

module.exports = load(thisPlatform())
