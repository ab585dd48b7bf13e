'use strict'
// `npm run package`: builds the addon for this machine and writes, into dist/, the npm packages a
// release publishes: the root package `peer-buckets` (loader, JavaScript face, typings) and one package
// per platform (`peer-buckets-<platform>`, its `.node` alone). Options:
//   --cross       also build the Linux targets this machine cross-builds with zig: x86_64 musl, aarch64
//                 gnu and musl (minutes each; each leaves a target/<triple> build directory);
//   --target T    build the target triple T instead of this machine's (repeatable; the release
//                 workflow builds each platform so, on a runner of that platform);
//   --no-build    build nothing: pack the `.node` files already in npm/<platform>/ (the release
//                 workflow puts every platform's there with `napi artifacts`);
//   --release URL what the release workflow publishes: --no-build, and every platform of `napi.targets`
//                 must be in place (a root package must never name a platform package that is not
//                 published with it); URL is the repository the workflow runs in (https://host/owner/name),
//                 written into every package as `repository`, `homepage` and `bugs`. package.json has
//                 none of the three: the project has no public repository yet, and npm's provenance
//                 check needs `repository` to name the one that built the package;
//   --link-check  CI's check of the cross targets: builds each one with Cargo's dev profile without
//                 debug information (no LTO, no optimization: the link is what is checked, in a few
//                 minutes instead of 12-15 each), runs the checks below on it, then deletes it. Packs
//                 nothing; writes nothing to npm/ or dist/. Alone, it checks all three cross targets;
//                 with --target, only those.
//
// Invariants, each checked on what was built or packed, or the script fails:
// - a Linux glibc addon needs no glibc symbol version newer than GLIBC_FLOOR (read with `objdump -T`),
//   and a musl addon none at all: built for an old glibc, it loads on every newer one;
// - a release packs every platform of `napi.targets`, each package naming the repository it is built from;
// - the root package lists every platform package of `napi.targets` as an optional dependency at exactly
//   its own version, so npm installs the one matching the machine and never a mismatched one;
// - the root tarball holds package.json, README.md, LICENSE and the `files` of package.json, nothing
//   else; a platform tarball holds package.json, README.md, LICENSE and its `.node`.

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const ROOT = path.join(__dirname, '..')
const DIST = path.join(ROOT, 'dist')
const pkg = require('../package.json')
const { platformOf } = require('../lib/platform.js')

/** The newest glibc a Linux gnu addon may need: RHEL/CentOS 7's, what napi-rs's own toolchain targets. */
const GLIBC_FLOOR = [2, 17]
/** What this machine cross-builds with `--cross` (zig links them; Rust's std for each comes from rustup). */
const CROSS = ['x86_64-unknown-linux-musl', 'aarch64-unknown-linux-gnu', 'aarch64-unknown-linux-musl']
/** The `Machine:` that `readelf -h` (which reads every architecture's ELF files) gives each one. */
const ELF_ARCH = { x86_64: 'Advanced Micro Devices X86-64', aarch64: 'AArch64' }

// npm is a .cmd script on Windows, which Node spawns only through a shell.
const SHELL = process.platform === 'win32'

function napi(args, env = {}) {
  const cli = require('@napi-rs/cli/package.json')
  const bin = path.join(path.dirname(require.resolve('@napi-rs/cli/package.json')), cli.bin.napi)
  console.log(`$ napi ${args.join(' ')}`)
  execFileSync(process.execPath, [bin, ...args], { cwd: ROOT, stdio: 'inherit', env: { ...process.env, ...env } })
}

function hostTriple() {
  const out = execFileSync('rustc', ['-vV'], { encoding: 'utf8' })
  return /^host: (\S+)$/m.exec(out)[1]
}

/**
 * Builds `triple` into npm/<platform>/ for a release, or, `light`, beside native.js, and returns that
 * path for the caller to check and delete. Linux targets go through `cargo zigbuild`,
 * which links against zig's copies of glibc (at the floor version, named after the triple's dot) or
 * musl; other hosts build their own platform with the system linker. A light build is the dev profile
 * without debug information: the same code, dependencies, linker and libc as a release, unoptimized.
 */
function build(triple, isHost, light = false) {
  const args = ['build', '--platform', ...(light ? [] : ['--release']), '--no-js', '--dts', 'native.d.ts']
  if (triple.includes('-linux-')) {
    try {
      execFileSync('cargo-zigbuild', ['--version'], { stdio: 'ignore' })
    } catch {
      throw new Error(
        'Linux builds for a release link with zig: `pip install cargo-zigbuild ziglang` (both from PyPI), then run again.',
      )
    }
    const target = triple.endsWith('-gnu') ? `${triple}.${GLIBC_FLOOR.join('.')}` : triple
    args.push('--cross-compile', '--target', target)
  } else {
    args.push('--target', triple)
  }
  napi(args, light ? { CARGO_PROFILE_DEV_DEBUG: '0', CARGO_INCREMENTAL: '0' } : {})
  const file = `${pkg.napi.binaryName}.${platformOf(triple)}.node`
  const built = path.join(ROOT, file)
  if (light) return built
  fs.copyFileSync(built, path.join(ROOT, 'npm', platformOf(triple), file))
  // Only the host's addon stays beside native.js, where the loader finds it (the tests load that one).
  if (!isHost) fs.rmSync(built)
}

/** Fails unless the ELF file at `file` is built for `triple`'s architecture and libc, within the floor. */
function checkLinux(file, triple) {
  const arch = triple.split('-')[0]
  const machine = /Machine:\s*(.*)/.exec(execFileSync('readelf', ['-h', file], { encoding: 'utf8' }))
  if (machine?.[1].trim() !== ELF_ARCH[arch]) throw new Error(`${file} is not a ${arch} ELF file: ${machine?.[1]}`)
  const symbols = execFileSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 64 << 20 })
  const versions = [...symbols.matchAll(/GLIBC_(\d+)\.(\d+)/g)].map((m) => [Number(m[1]), Number(m[2])])
  const newest = versions.reduce((a, b) => (b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]) ? b : a), [0, 0])
  if (triple.endsWith('-musl')) {
    if (versions.length > 0) throw new Error(`${file} is a musl build but needs glibc symbols`)
    // Dynamically linked (Node on Alpine loads addons with dlopen): musl's loader serves `libc.so` itself.
    const needed = execFileSync('objdump', ['-p', file], { encoding: 'utf8' })
    if (!/NEEDED\s+libc\.so\b/.test(needed)) throw new Error(`${file} does not link musl's libc.so dynamically`)
    console.log(`${path.basename(file)}: ${arch}, musl (NEEDED libc.so), no glibc symbol`)
    return
  }
  const [fm, fn] = GLIBC_FLOOR
  if (newest[0] > fm || (newest[0] === fm && newest[1] > fn)) {
    throw new Error(`${file} needs GLIBC_${newest.join('.')}, newer than the floor GLIBC_${GLIBC_FLOOR.join('.')}`)
  }
  console.log(`${path.basename(file)}: ${arch}, newest glibc symbol GLIBC_${newest.join('.')} (floor ${fm}.${fn})`)
}

/** Packs `dir` into dist/ and checks the tarball holds exactly `expected` (paths inside the package). */
function pack(dir, expected) {
  const out = execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', DIST], {
    cwd: dir,
    encoding: 'utf8',
    shell: SHELL,
  })
  const [info] = JSON.parse(out)
  const files = info.files.map((f) => f.path).sort()
  const unexpected = files.filter((f) => !expected(f))
  if (unexpected.length) throw new Error(`${info.filename} holds files it must not: ${unexpected.join(', ')}`)
  console.log(`dist/${info.filename}: ${files.length} files, ${(info.size / 1024).toFixed(0)} KiB packed`)
  return info.filename
}

function stage(name) {
  const dir = path.join(DIST, 'stage', name)
  fs.rmSync(dir, { recursive: true, force: true })
  fs.mkdirSync(dir, { recursive: true })
  return dir
}

/**
 * The package.json fields that name where a package comes from, for the repository at `url`
 * (`https://host/owner/name`), or none when packing is not for a release.
 */
function provenance(url) {
  if (url === undefined) return {}
  if (!/^https:\/\/[^/\s]+\/[^/\s]+\/[^/\s]+$/.test(url) || url.endsWith('.git')) {
    throw new Error(`--release takes the repository's address, https://host/owner/name, not ${url}`)
  }
  return { repository: { type: 'git', url: `git+${url}.git` }, homepage: `${url}#readme`, bugs: { url: `${url}/issues` } }
}

/** The root package as published: no build scripts nor development dependencies, every platform optional. */
function packRoot(origin) {
  const dir = stage(pkg.name)
  const manifest = { ...pkg, ...origin }
  delete manifest.scripts
  delete manifest.devDependencies
  delete manifest.jest
  manifest.optionalDependencies = Object.fromEntries(
    pkg.napi.targets.map((t) => [`${pkg.napi.packageName}-${platformOf(t)}`, pkg.version]),
  )
  fs.writeFileSync(path.join(dir, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`)
  const shipped = [...pkg.files, 'README.md', 'LICENSE']
  for (const f of shipped) fs.cpSync(path.join(ROOT, f), path.join(dir, f), { recursive: true })
  const allowed = (f) =>
    f === 'package.json' || shipped.some((s) => (s.endsWith('/') ? f.startsWith(s) : f === s))
  return pack(dir, allowed)
}

function packPlatform(platform, origin) {
  const file = `${pkg.napi.binaryName}.${platform}.node`
  const src = path.join(ROOT, 'npm', platform)
  const dir = stage(platform)
  const manifest = JSON.parse(fs.readFileSync(path.join(src, 'package.json'), 'utf8'))
  if (manifest.version !== pkg.version) {
    throw new Error(`npm/${platform}/package.json is version ${manifest.version}, the root ${pkg.version}`)
  }
  fs.writeFileSync(path.join(dir, 'package.json'), `${JSON.stringify({ ...manifest, ...origin }, null, 2)}\n`)
  for (const f of ['README.md', file]) fs.copyFileSync(path.join(src, f), path.join(dir, f))
  fs.copyFileSync(path.join(ROOT, 'LICENSE'), path.join(dir, 'LICENSE'))
  return pack(dir, (f) => ['package.json', 'README.md', 'LICENSE', file].includes(f))
}

function options(argv) {
  const opts = { cross: false, build: true, linkCheck: false, targets: [] }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--cross') opts.cross = true
    else if (argv[i] === '--no-build') opts.build = false
    else if (argv[i] === '--link-check') opts.linkCheck = true
    else if (argv[i] === '--release' && argv[i + 1]) {
      opts.release = argv[++i]
      opts.build = false
    } else if (argv[i] === '--target' && argv[i + 1]) opts.targets.push(argv[++i])
    else {
      throw new Error(
        `unknown option ${argv[i]} (known: --cross, --target TRIPLE, --no-build, --release URL, --link-check)`,
      )
    }
  }
  if (opts.release !== undefined && (opts.cross || opts.targets.length)) {
    throw new Error('--release packs every target and builds none: it takes no --cross nor --target')
  }
  if (opts.linkCheck && (opts.cross || !opts.build)) throw new Error('--link-check takes no --cross nor --no-build')
  for (const t of opts.targets) {
    if (!pkg.napi.targets.includes(t)) throw new Error(`${t} is not one of napi.targets: ${pkg.napi.targets.join(', ')}`)
  }
  return opts
}

/** Builds each Linux cross target light, checks its ELF file as a release's, and deletes it. */
function linkCheck(targets) {
  const triples = targets.length ? targets : CROSS
  for (const t of triples) {
    if (!t.includes('-linux-')) throw new Error(`--link-check builds Linux targets only, not ${t}`)
  }
  for (const t of triples) {
    const started = Date.now()
    const file = build(t, false, true)
    try {
      checkLinux(file, t)
    } finally {
      fs.rmSync(file, { force: true })
    }
    console.log(`linked ${t} (dev profile, no debug information) in ${((Date.now() - started) / 1000).toFixed(0)} s`)
  }
}

function main() {
  const opts = options(process.argv.slice(2))
  if (opts.linkCheck) return linkCheck(opts.targets)
  // Packed: what this run built, or with --no-build every platform whose `.node` is in place.
  let triples = pkg.napi.targets
  if (opts.build) {
    const host = hostTriple()
    if (opts.targets.length === 0 && !pkg.napi.targets.includes(host)) {
      throw new Error(`this machine (${host}) is not one of napi.targets: pass --target`)
    }
    triples = opts.targets.length ? opts.targets : [host]
    if (opts.cross) triples = [...new Set([...triples, ...CROSS])]
    for (const t of triples) {
      const started = Date.now()
      build(t, t === host)
      console.log(`built ${t} in ${((Date.now() - started) / 1000).toFixed(0)} s`)
    }
  }

  const binary = (triple) => {
    const platform = platformOf(triple)
    return path.join(ROOT, 'npm', platform, `${pkg.napi.binaryName}.${platform}.node`)
  }
  const origin = provenance(opts.release)
  if (opts.release !== undefined) {
    const missing = triples.filter((t) => !fs.existsSync(binary(t)))
    if (missing.length) throw new Error(`a release needs every platform's binary; missing: ${missing.join(', ')}`)
  }

  fs.mkdirSync(DIST, { recursive: true })
  for (const f of fs.readdirSync(DIST)) if (f.endsWith('.tgz')) fs.rmSync(path.join(DIST, f))
  const tarballs = [packRoot(origin)]
  for (const triple of triples) {
    const file = binary(triple)
    if (!fs.existsSync(file)) continue
    if (triple.includes('-linux-')) checkLinux(file, triple)
    tarballs.push(packPlatform(platformOf(triple), origin))
  }
  fs.rmSync(path.join(DIST, 'stage'), { recursive: true, force: true })
  console.log(`dist/: ${tarballs.join(' ')}`)
}

try {
  main()
} catch (e) {
  console.error(`npm run package: ${e.message}`)
  process.exit(1)
}
