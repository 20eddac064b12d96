/**
 * ensureLibnbd(): libnbd's Go bindings and a static libnbd for KubeVirt 1.8+'s virt-launcher.
 *
 * From 1.8 on, virt-launcher imports libguestfs.org/libnbd (its backup code reads NBD exports:
 * pkg/virt-launcher/virtwrap/storage/nbd_client.go), and the Go module proxy refuses that module.
 * libnbd ships its Go bindings in its source tarball (golang/, module libguestfs.org/libnbd), and
 * Debian's source package is reachable: the wrapper module replaces the module with that directory
 * (go-mod.ts LIBNBD_REPLACE_DIR). The bindings are cgo against libnbd.h of the same release.
 *
 * Why trixie's 1.22 and a static library: KubeVirt uses BlockStatus64 and LibnbdExtent (64-bit
 * extents, libnbd 1.18+); bookworm has 1.14. Trixie's libnbd0 binary package needs trixie's glibc,
 * so it cannot be installed here, nor run in our bookworm launcher image. So the C library is
 * built from the same source package, static and without TLS/URI support (gnutls, libxml2), and
 * linked into virt-launcher: the launcher image needs no libnbd at all.
 *
 * One change to the bindings (renameCallbackExport): they export a cgo function `freeCallbackId`, and
 * so do libvirt's Go bindings (libvirt.org/go/libvirt callbacks.go), which virt-launcher links too:
 * the link fails with `multiple definition of 'freeCallbackId'`. libnbd's copy is renamed.
 *
 * Cached in <cache>/build/libnbd-<debian version>-p<BINDINGS_PATCH>/ (ensureBuilt: lock, stamp, printed build time):
 *   golang/         the Go bindings (the replace target, copied next to the wrapper go.mod)
 *   lib/libnbd.a, include/libnbd.h, lib/pkgconfig/libnbd.pc (what `#cgo pkg-config: libnbd` reads)
 */
import { cp, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ensureBuilt } from '../cluster/binaries.ts';
import { hostDebianSource } from '../images/rootfs.ts';
import { cacheRoot } from '../support/cache.ts';
import { downloadDebianSource, ensureDebianPackages } from '../support/debian.ts';
import { run } from '../support/process.ts';

/** The Debian source package the bindings come from (pinned: a point release may replace it). */
export const LIBNBD_SOURCE = { pkg: 'libnbd', version: '1.22.2-1', suite: 'trixie' } as const;

/** Bumped when what is done to the bindings changes (a new cache directory). */
const BINDINGS_PATCH = 1;

/** libnbd's exported cgo callback-freeing function, whose name libvirt's Go bindings export too. */
const CLASHING_EXPORT = 'freeCallbackId';
export const RENAMED_EXPORT = 'libnbdFreeCallbackId';

/**
 * A Go file of libnbd's bindings with the clashing export renamed: the `//export` line, the Go
 * function and the C declarations and calls in the cgo preambles (whole words only).
 */
export function renameCallbackExport(source: string): string {
  return source.replace(new RegExp(`\\b${CLASHING_EXPORT}\\b`, 'g'), RENAMED_EXPORT);
}

/** What the static build needs beyond KubeVirt's own build tools (dpkg-source unpacks and patches). */
export const LIBNBD_BUILD_PACKAGES = ['gcc', 'make', 'pkg-config', 'dpkg-dev'] as const;

/** configure: the C library only, static, no optional dependency (nothing of it needs to be in the image). */
export const LIBNBD_CONFIGURE_ARGS = [
  '--disable-shared',
  '--enable-static',
  '--with-pic',
  '--without-gnutls',
  '--without-libxml2',
  '--disable-fuse',
  '--disable-ublk',
  '--disable-ocaml',
  '--disable-python',
  '--disable-golang',
  '--disable-rust',
  '--without-bash-completions',
] as const;

export interface Libnbd {
  /** Debian version of the source package. */
  readonly version: string;
  /** The Go bindings' module directory (module libguestfs.org/libnbd). */
  readonly goBindings: string;
  /** For PKG_CONFIG_PATH: holds libnbd.pc pointing at the static library and header. */
  readonly pkgConfigDir: string;
}

/** The pkg-config file for the static library in `root` (static: no other library to link). */
export function libnbdPkgConfig(root: string, upstreamVersion: string): string {
  return [
    `prefix=${root}`,
    'libdir=${prefix}/lib',
    'includedir=${prefix}/include',
    '',
    'Name: libnbd',
    `Version: ${upstreamVersion}`,
    "Description: NBD client library (static, built from Debian's source package for KubeVirt's virt-launcher)",
    'Cflags: -I${includedir}',
    'Libs: -L${libdir} -lnbd',
    '',
  ].join('\n');
}

/** `1.22.2-1` -> `1.22.2` (a Debian version without epoch or revision). */
export function upstreamVersion(debianVersion: string): string {
  const m = /^(?:\d+:)?([0-9][0-9A-Za-z.+~]*?)(?:-[0-9A-Za-z.+~]+)?$/.exec(debianVersion);
  if (!m?.[1]) throw new Error(`not a Debian version: ${debianVersion}`);
  return m[1];
}

async function buildInto(out: string, finalDir: string, aptState: string, log: (m: string) => void): Promise<void> {
  const { pkg, version, suite } = LIBNBD_SOURCE;
  await ensureDebianPackages(LIBNBD_BUILD_PACKAGES);
  const work = path.join(out, 'work');
  const dsc = await downloadDebianSource(pkg, version, {
    suite,
    mirror: hostDebianSource().mirror,
    stateDir: aptState,
    dir: path.join(work, 'dl'),
  });
  const src = path.join(work, 'src');
  // --no-check: the .dsc's signature is the uploader's, whose key is not on the machine; the files'
  // checksums are still verified, and apt checked the archive's signed index they come from.
  await run(['dpkg-source', '--no-check', '-x', dsc, src], { timeoutMs: 300_000 });
  const started = Date.now();
  await run(['./configure', `--prefix=${finalDir}`, ...LIBNBD_CONFIGURE_ARGS], {
    cwd: src,
    timeoutMs: 900_000,
    maxOutput: 16 * 1024 * 1024,
  });
  const jobs = String(Math.max(1, Math.min(2, os.availableParallelism())));
  for (const dir of ['common/include', 'common/utils', 'lib'])
    await run(['make', '-j', jobs, '-C', dir], { cwd: src, timeoutMs: 900_000, maxOutput: 16 * 1024 * 1024 });
  log(`libnbd ${version}: configure + make (static) ${((Date.now() - started) / 1000).toFixed(1)} s`);
  await mkdir(path.join(out, 'lib', 'pkgconfig'), { recursive: true });
  await mkdir(path.join(out, 'include'), { recursive: true });
  await cp(path.join(src, 'lib', '.libs', 'libnbd.a'), path.join(out, 'lib', 'libnbd.a'));
  await cp(path.join(src, 'include', 'libnbd.h'), path.join(out, 'include', 'libnbd.h'));
  await writeFile(path.join(out, 'lib', 'pkgconfig', 'libnbd.pc'), libnbdPkgConfig(finalDir, upstreamVersion(version)));
  // The bindings without their tests and examples (they are not built, and the tests need nbdkit).
  await mkdir(path.join(out, 'golang'));
  for (const f of await readdir(path.join(src, 'golang'))) {
    if (f.endsWith('.go') && !f.endsWith('_test.go')) {
      const text = await readFile(path.join(src, 'golang', f), 'utf8');
      await writeFile(path.join(out, 'golang', f), renameCallbackExport(text));
    } else if (f === 'go.mod' || f === 'LICENSE' || f.endsWith('.h')) {
      await cp(path.join(src, 'golang', f), path.join(out, 'golang', f));
    }
  }
  await rm(work, { recursive: true, force: true });
}

export async function ensureLibnbd(
  options: { readonly env?: NodeJS.ProcessEnv; readonly log?: (m: string) => void } = {},
): Promise<Libnbd> {
  const log = options.log ?? ((m: string) => process.stderr.write(`[kubevirt] ${m}\n`));
  const root = cacheRoot(options.env);
  const dir = path.join(root, 'build', `libnbd-${LIBNBD_SOURCE.version}-p${BINDINGS_PATCH}`);
  await ensureBuilt(
    {
      dir,
      version: LIBNBD_SOURCE.version,
      // Directories (ensureBuilt checks its names with X_OK).
      names: ['golang', 'include', 'lib', path.join('lib', 'pkgconfig')],
      label: `libnbd ${LIBNBD_SOURCE.version} (Debian ${LIBNBD_SOURCE.suite} source, static)`,
      build: (out) => buildInto(out, dir, path.join(root, 'apt', LIBNBD_SOURCE.suite), log),
    },
    log,
  );
  return {
    version: LIBNBD_SOURCE.version,
    goBindings: path.join(dir, 'golang'),
    pkgConfigDir: path.join(dir, 'lib', 'pkgconfig'),
  };
}

if (import.meta.main) {
  process.stdout.write(`${JSON.stringify(await ensureLibnbd(), null, 2)}\n`);
}
