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
 * Version: the wrapper module's, or BLOCKPULL_KUBEVIRT_VERSION (its module is then generated in the cache).
 */
import { copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureBuilt, recordedBuildSeconds, runGoBuild } from '../cluster/binaries.ts';
import { downloadModule, runGo } from '../cluster/gen-go-mod.ts';
import { normalizeVersion, requiredVersion } from '../cluster/go-mod.ts';
import { cacheRoot } from '../support/cache.ts';
import { ensureDebianPackages } from '../support/debian.ts';
import { run } from '../support/process.ts';
import { KUBEVIRT_GO_MODULE_DIR, writeKubevirtModule } from './gen-go-mod.ts';
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
  readonly env?: NodeJS.ProcessEnv;
  /** Progress messages (default: stderr). */
  readonly log?: (message: string) => void;
}

/** Build tools: cgo for virt-launcher (libvirt client headers + pkg-config), a static libc for container-disk. */
export const KUBEVIRT_BUILD_PACKAGES = ['gcc', 'libc6-dev', 'pkg-config', 'libvirt-dev'] as const;

const CONTAINER_DISK = 'container-disk';
const ALL_NAMES = [...KUBEVIRT_COMMANDS, CONTAINER_DISK] as const;

/** The KubeVirt version the committed wrapper module pins. */
export function pinnedKubevirtVersion(): string {
  const file = path.join(KUBEVIRT_GO_MODULE_DIR, 'go.mod');
  const v = requiredVersion(readFileSync(file, 'utf8'), KUBEVIRT_MODULE);
  if (!v) throw new Error(`${file} does not require ${KUBEVIRT_MODULE}`);
  return v;
}

export function resolveKubevirtVersion(env: NodeJS.ProcessEnv = process.env): string {
  const override = env['BLOCKPULL_KUBEVIRT_VERSION'];
  return override ? normalizeVersion(override, 'BLOCKPULL_KUBEVIRT_VERSION') : pinnedKubevirtVersion();
}

function seconds(since: number): string {
  return ((Date.now() - since) / 1000).toFixed(1);
}

async function buildInto(outDir: string, root: string, version: string, log: (m: string) => void): Promise<void> {
  await ensureDebianPackages(KUBEVIRT_BUILD_PACKAGES);
  const modDir = path.join(root, 'build', `kubevirt-${version}`);
  await rm(modDir, { recursive: true, force: true });
  await mkdir(modDir, { recursive: true });
  if (version === pinnedKubevirtVersion()) {
    for (const f of ['go.mod', 'go.sum']) await copyFile(path.join(KUBEVIRT_GO_MODULE_DIR, f), path.join(modDir, f));
  } else {
    log(`generating the KubeVirt wrapper module for ${version} in ${modDir}`);
    await writeKubevirtModule(modDir, version);
  }
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
    {
      CGO_ENABLED: '1',
    },
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
  const version = resolveKubevirtVersion(env);
  const root = cacheRoot(env);
  const binDir = await ensureBuilt(
    {
      dir: path.join(root, 'bin', `kubevirt-${version}`),
      version,
      names: ALL_NAMES,
      label: `KubeVirt ${version}`,
      build: (outDir) => buildInto(outDir, root, version, log),
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
