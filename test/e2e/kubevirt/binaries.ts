/**
 * ensureKubevirtBinaries(): KubeVirt's own binaries, built from the Go module proxy on first use and
 * cached outside the repo like the Kubernetes ones (../cluster/binaries.ts: same lock, stamp and
 * printed build time), keyed by version:
 *   <cache>/bin/kubevirt-<version>/{virt-controller,virt-handler,virt-launcher,virt-launcher-monitor,
 *                                   virt-operator,virt-probe,virt-freezer,virt-tail,virt-chroot,resource-generator,container-disk}
 * The Go commands come from the committed wrapper module test/e2e/kubevirt/go/ (go-mod.ts explains
 * its shape) in ONE `go build`; virt-launcher is cgo (libvirt's client library: Debian's libvirt-dev +
 * pkg-config). container-disk is C: KubeVirt's cmd/container-disk-v2alpha/main.c from the same
 * module, `gcc -static` (it runs in the containerDisk image, which has no libc).
 * Versions: every committed wrapper module pins one (go/ the default, v1.7.0; go-v<major.minor>/ the
 * others: pinnedKubevirtVersions()). Which one is built: the `version` option, else
 * BLOCKPULL_KUBEVIRT_VERSION, else the default; a version no committed module pins gets its module
 * generated in the cache. Each version has its own cache directory, lock and stamp (bin/kubevirt-<v>).
 * From 1.8 on, virt-launcher links libnbd: the module replaces it with Debian's bindings (libnbd.ts,
 * placeLibnbd in gen-go-mod.ts), built statically into virt-launcher.
 */
import { copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureBuilt, recordedBuildSeconds, runGoBuild } from '../cluster/binaries.ts';
import { downloadModule, runGo } from '../cluster/gen-go-mod.ts';
import { normalizeVersion, requiredVersion } from '../cluster/go-mod.ts';
import { cacheRoot } from '../support/cache.ts';
import { ensureDebianPackages } from '../support/debian.ts';
import { run } from '../support/process.ts';
import { KUBEVIRT_GO_MODULE_DIR, placeLibnbd, writeKubevirtModule } from './gen-go-mod.ts';
import {
  CONTAINER_DISK_SOURCE,
  KUBEVIRT_COMMANDS,
  KUBEVIRT_MODULE,
  kubevirtLdflags,
  kubevirtPackage,
} from './go-mod.ts';

export interface KubevirtBinaries {
  readonly version: string;
  readonly binDir: string;
  readonly virtController: string;
  readonly virtHandler: string;
  readonly virtLauncher: string;
  readonly virtLauncherMonitor: string;
  readonly virtOperator: string;
  readonly virtProbe: string;
  readonly virtFreezer: string;
  readonly virtTail: string;
  readonly virtChroot: string;
  /** Upstream's tools/resource-generator (prints the KubeVirt CRD). */
  readonly resourceGenerator: string;
  readonly containerDisk: string;
  /** Seconds the build took when these binaries were built (from the cache's stamp). */
  readonly buildSeconds: number | undefined;
}

export interface EnsureKubevirtBinariesOptions {
  /** The KubeVirt version to build (default: BLOCKPULL_KUBEVIRT_VERSION, else the default pinned one). */
  readonly version?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Progress messages (default: stderr). */
  readonly log?: (message: string) => void;
}

/** Build tools: cgo for virt-launcher (libvirt client headers + pkg-config), a static libc for container-disk. */
export const KUBEVIRT_BUILD_PACKAGES = ['gcc', 'libc6-dev', 'pkg-config', 'libvirt-dev'] as const;

const CONTAINER_DISK = 'container-disk';
const ALL_NAMES = [...KUBEVIRT_COMMANDS, CONTAINER_DISK] as const;

function moduleVersion(dir: string): string {
  const file = path.join(dir, 'go.mod');
  const v = requiredVersion(readFileSync(file, 'utf8'), KUBEVIRT_MODULE);
  if (!v) throw new Error(`${file} does not require ${KUBEVIRT_MODULE}`);
  return v;
}

/** The KubeVirt version of the default committed wrapper module (go/). */
export function pinnedKubevirtVersion(): string {
  return moduleVersion(KUBEVIRT_GO_MODULE_DIR);
}

/** A committed wrapper module: go/ (the default) or go-v<major.minor>/. */
const MODULE_DIR_NAME = /^go(?:-v\d+\.\d+)?$/;

/** Every committed wrapper module, the default first, then by directory name: version -> directory. */
export function pinnedKubevirtModules(): ReadonlyMap<string, string> {
  const root = path.dirname(KUBEVIRT_GO_MODULE_DIR);
  const dirs = readdirSync(root)
    .filter((d) => MODULE_DIR_NAME.test(d) && existsSync(path.join(root, d, 'go.mod')))
    .sort((a, b) => (a === 'go' ? -1 : b === 'go' ? 1 : a.localeCompare(b, 'en', { numeric: true })));
  const out = new Map<string, string>();
  for (const d of dirs) {
    const dir = path.join(root, d);
    const v = moduleVersion(dir);
    if (out.has(v)) throw new Error(`${dir} pins ${v}, as ${out.get(v) ?? ''} does`);
    out.set(v, dir);
  }
  return out;
}

/** The versions the committed modules pin, the default first (the real-KubeVirt specs run on each). */
export function pinnedKubevirtVersions(): string[] {
  return [...pinnedKubevirtModules().keys()];
}

export function resolveKubevirtVersion(env: NodeJS.ProcessEnv = process.env, version?: string): string {
  if (version) return normalizeVersion(version, 'KubeVirt');
  const override = env['BLOCKPULL_KUBEVIRT_VERSION'];
  return override ? normalizeVersion(override, 'BLOCKPULL_KUBEVIRT_VERSION') : pinnedKubevirtVersion();
}

function seconds(since: number): string {
  return ((Date.now() - since) / 1000).toFixed(1);
}

async function buildInto(
  outDir: string,
  root: string,
  version: string,
  log: (m: string) => void,
  env: NodeJS.ProcessEnv,
): Promise<void> {
  await ensureDebianPackages(KUBEVIRT_BUILD_PACKAGES);
  const modDir = path.join(root, 'build', `kubevirt-${version}`);
  await rm(modDir, { recursive: true, force: true });
  await mkdir(modDir, { recursive: true });
  const pinned = pinnedKubevirtModules().get(version);
  if (pinned) {
    for (const f of ['go.mod', 'go.sum']) await copyFile(path.join(pinned, f), path.join(modDir, f));
  } else {
    log(`generating the KubeVirt wrapper module for ${version} in ${modDir}`);
    await writeKubevirtModule(modDir, version);
  }
  const libnbdEnv = await placeLibnbd(modDir, log, env);
  log(
    `building KubeVirt ${version} (${KUBEVIRT_COMMANDS.join(', ')}) from the Go module proxy (first run only; cold: ~15-20 min on 2 cores)...`,
  );
  const goStarted = Date.now();
  // No -trimpath: these binaries serve the local test bed only, and without it the compile actions
  // are those of a plain `go build` of the same module versions, so a warm Go build cache is reused.
  await runGoBuild(
    ['build', `-ldflags=${kubevirtLdflags(version)}`, '-o', `${outDir}/`, ...KUBEVIRT_COMMANDS.map(kubevirtPackage)],
    modDir,
    log,
    { CGO_ENABLED: '1', ...libnbdEnv },
  );
  log(`go build of KubeVirt ${version}: ${seconds(goStarted)} s`);
  const ccStarted = Date.now();
  const moduleDir = (await runGo(['list', '-m', '-f', '{{.Dir}}', KUBEVIRT_MODULE], modDir)).trim();
  if (!moduleDir) throw new Error(`go list -m ${KUBEVIRT_MODULE} reported no directory in ${modDir}`);
  const source = path.join(moduleDir, CONTAINER_DISK_SOURCE);
  await readFile(source); // a clear error when the layout changed
  await run(['gcc', '-static', '-O2', '-o', path.join(outDir, CONTAINER_DISK), source]);
  log(`gcc -static container-disk: ${seconds(ccStarted)} s`);
}

/** The kubevirt.io/kubevirt source of `version` in Go's module cache (read-only files), downloaded if needed. */
export async function kubevirtSourceDir(version: string): Promise<string> {
  const info = await downloadModule(KUBEVIRT_MODULE, normalizeVersion(version, 'KubeVirt'), os.tmpdir());
  if (!info.Dir) throw new Error(`go mod download did not report a directory for ${KUBEVIRT_MODULE}@${version}`);
  return info.Dir;
}

/** Builds (first time) or finds the cached KubeVirt binaries. */
export async function ensureKubevirtBinaries(options: EnsureKubevirtBinariesOptions = {}): Promise<KubevirtBinaries> {
  const env = options.env ?? process.env;
  const log = options.log ?? ((m: string) => process.stderr.write(`[kubevirt] ${m}\n`));
  const version = resolveKubevirtVersion(env, options.version);
  const root = cacheRoot(env);
  const binDir = await ensureBuilt(
    {
      dir: path.join(root, 'bin', `kubevirt-${version}`),
      version,
      names: ALL_NAMES,
      label: `KubeVirt ${version}`,
      build: (outDir) => buildInto(outDir, root, version, log, env),
    },
    log,
  );
  const b = (name: (typeof ALL_NAMES)[number]): string => path.join(binDir, name);
  return {
    version,
    binDir,
    virtController: b('virt-controller'),
    virtHandler: b('virt-handler'),
    virtLauncher: b('virt-launcher'),
    virtLauncherMonitor: b('virt-launcher-monitor'),
    virtOperator: b('virt-operator'),
    virtProbe: b('virt-probe'),
    virtFreezer: b('virt-freezer'),
    virtTail: b('virt-tail'),
    virtChroot: b('virt-chroot'),
    resourceGenerator: b('resource-generator'),
    containerDisk: b(CONTAINER_DISK),
    buildSeconds: await recordedBuildSeconds(binDir),
  };
}

if (import.meta.main) {
  const bins = await ensureKubevirtBinaries();
  process.stdout.write(`${JSON.stringify(bins, null, 2)}\n`);
}
