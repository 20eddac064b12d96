/**
 * ensureBinaries(): kube-apiserver, kubectl, kubelet, kube-controller-manager, kube-scheduler and etcd,
 * built from the Go module proxy on first use and cached outside the repo, keyed by version:
 *   <cache>/bin/k8s-<version>/{kube-apiserver,kubectl,kubelet,kube-controller-manager,kube-scheduler}
 *   <cache>/bin/etcd-<version>/etcd
 * (<cache> = $BLOCKPULL_CACHE_DIR or ~/.cache/blockpull-operator; versions: see versions.ts.)
 * The five Kubernetes binaries are built by ONE `go build -o <dir>` so they share compilation.
 * A lock file per directory makes concurrent callers build once.
 * ensureApiserverBinaries(v): kube-apiserver and kubectl only, of an older release (the compat spec).
 */
import { constants } from 'node:fs';
import { access, copyFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import {
  ETCD_SERVER_MODULE,
  K8S_COMMANDS,
  K8S_MODULE,
  k8sLdflags,
  normalizeVersion,
  type K8sCommand,
} from './go-mod.ts';
import { GO_MODULES_DIR, writeEtcdModule, writeK8sModule, type K8sModuleOptions } from './gen-go-mod.ts';
import { goBinary } from '../support/paths.ts';
import { run } from '../support/process.ts';
import { withLock } from '../support/lock.ts';
import { cacheRoot } from '../support/cache.ts';
import { pinnedVersions, resolveVersions, type Versions } from './versions.ts';

export interface ClusterBinaries {
  readonly versions: Versions;
  /** Directory with the five Kubernetes binaries. */
  readonly k8sBinDir: string;
  readonly etcdBinDir: string;
  readonly etcd: string;
  readonly kubeApiserver: string;
  readonly kubectl: string;
  readonly kubelet: string;
  readonly kubeControllerManager: string;
  readonly kubeScheduler: string;
}

export interface EnsureBinariesOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** Progress messages (default: stderr). */
  readonly log?: (message: string) => void;
}

const stamp = z.object({
  version: z.string(),
  binaries: z.array(z.string()),
  buildSeconds: z.number(),
  builtAt: z.string(),
});
const STAMP = '.complete.json';

/** Whether `dir` holds a finished build of `version` (its stamp) with every binary in `names` executable. */
export async function isComplete(dir: string, version: string, names: readonly string[]): Promise<boolean> {
  try {
    const s = stamp.parse(JSON.parse(await readFile(path.join(dir, STAMP), 'utf8')));
    if (s.version !== version) return false;
    for (const n of names) await access(path.join(dir, n), constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** `go <args>` in `cwd`; on failure the last 20 kB of its output are logged and in the error. */
export async function runGoBuild(
  args: readonly string[],
  cwd: string,
  log: (m: string) => void,
  extraEnv: NodeJS.ProcessEnv = {},
): Promise<void> {
  const r = await run([goBinary(), ...args], {
    cwd,
    env: { ...process.env, GOFLAGS: '-buildvcs=false', ...extraEnv },
    timeoutMs: 3 * 60 * 60_000,
    allowExit: true,
  });
  if (r.exitCode === 0) return;
  const output = (r.stdout + r.stderr).slice(-20_000);
  log(output);
  throw new Error(`go ${args.join(' ')} failed (exit ${r.exitCode}) in ${cwd}:\n${output.trim()}`);
}

interface Target {
  readonly kind: 'k8s' | 'etcd';
  readonly version: string;
  readonly names: readonly string[];
  readonly packages: readonly string[];
  readonly ldflags: string;
  /** `go build -tags` (none by default). */
  readonly tags?: readonly string[];
  /** For a generated (not the committed) Kubernetes module: see K8sModuleOptions. */
  readonly module?: K8sModuleOptions;
}

export interface CachedBuild {
  /** The cache directory of the result, e.g. <cache>/bin/k8s-v1.34.4. */
  readonly dir: string;
  readonly version: string;
  /** Files the build leaves in the directory (checked executable before a cached result is used). */
  readonly names: readonly string[];
  /** For messages, e.g. "k8s v1.34.4". */
  readonly label: string;
  /** Writes every file of `names` into `outDir` (a fresh temporary directory, renamed to `dir` on success). */
  readonly build: (outDir: string) => Promise<void>;
}

/**
 * The cache discipline of every built tool: a finished directory (stamp written last) is used as it is;
 * otherwise one process builds under `<dir>.lock` while concurrent callers wait and then use its result.
 * The build writes into a temporary directory that replaces `dir` only when complete; the build time is
 * printed and recorded in the stamp. Returns `dir`.
 */
export async function ensureBuilt(b: CachedBuild, log: (m: string) => void): Promise<string> {
  const { dir, version, names } = b;
  if (await isComplete(dir, version, names)) return dir;
  await mkdir(path.dirname(dir), { recursive: true });
  return withLock(
    `${dir}.lock`,
    async () => {
      if (await isComplete(dir, version, names)) return dir; // built by the process we waited for
      const started = Date.now();
      const tmp = `${dir}.tmp-${process.pid}`;
      await rm(tmp, { recursive: true, force: true });
      await mkdir(tmp, { recursive: true });
      try {
        await b.build(tmp);
        const buildSeconds = Math.round((Date.now() - started) / 100) / 10;
        await writeFile(
          path.join(tmp, STAMP),
          JSON.stringify({ version, binaries: names, buildSeconds, builtAt: new Date().toISOString() }, null, 2),
        );
        await rm(dir, { recursive: true, force: true });
        await rename(tmp, dir);
        log(`built ${b.label} in ${buildSeconds} s -> ${dir}`);
      } catch (err) {
        await rm(tmp, { recursive: true, force: true });
        throw err;
      }
      return dir;
    },
    { onWait: (p) => log(`waiting for another process building ${b.label} (lock ${p})`) },
  );
}

/** The build time recorded in a finished directory's stamp (undefined when absent). */
export async function recordedBuildSeconds(dir: string): Promise<number | undefined> {
  try {
    return stamp.parse(JSON.parse(await readFile(path.join(dir, STAMP), 'utf8'))).buildSeconds;
  } catch {
    return undefined;
  }
}

async function ensureTarget(root: string, t: Target, pinned: string, log: (m: string) => void): Promise<string> {
  return ensureBuilt(
    {
      dir: path.join(root, 'bin', `${t.kind}-${t.version}`),
      version: t.version,
      names: t.names,
      label: `${t.kind} ${t.version}`,
      build: async (tmp) => {
        // The module to build from: the committed one for the pinned version, else generated in the cache.
        const modDir = path.join(root, 'build', `${t.kind}-${t.version}`);
        await rm(modDir, { recursive: true, force: true });
        await mkdir(modDir, { recursive: true });
        if (t.version === pinned) {
          for (const f of ['go.mod', 'go.sum'])
            await copyFile(path.join(GO_MODULES_DIR, t.kind, f), path.join(modDir, f));
        } else {
          log(`generating the ${t.kind} wrapper module for ${t.version} in ${modDir}`);
          if (t.kind === 'k8s') await writeK8sModule(modDir, t.version, t.module);
          else await writeEtcdModule(modDir, t.version);
        }
        log(
          `building ${t.names.join(', ')} ${t.version} from the Go module proxy (first run only; minutes on 2 cores)...`,
        );
        await runGoBuild(
          [
            'build',
            '-trimpath',
            ...(t.tags && t.tags.length > 0 ? [`-tags=${t.tags.join(',')}`] : []),
            `-ldflags=${t.ldflags}`,
            '-o',
            t.packages.length > 1 ? `${tmp}/` : path.join(tmp, t.names[0] ?? 'out'),
            ...t.packages,
          ],
          modDir,
          log,
        );
      },
    },
    log,
  );
}

/** Builds (first time) or finds the cached control-plane binaries. */
export async function ensureBinaries(options: EnsureBinariesOptions = {}): Promise<ClusterBinaries> {
  const env = options.env ?? process.env;
  const log = options.log ?? ((m: string) => process.stderr.write(`[cluster] ${m}\n`));
  const versions = resolveVersions(env);
  const pinned = pinnedVersions();
  const root = cacheRoot(env);
  const etcdBinDir = await ensureTarget(
    root,
    { kind: 'etcd', version: versions.etcd, names: ['etcd'], packages: [ETCD_SERVER_MODULE], ldflags: '-s -w' },
    pinned.etcd,
    log,
  );
  const k8sBinDir = await ensureTarget(
    root,
    {
      kind: 'k8s',
      version: versions.k8s,
      names: K8S_COMMANDS,
      packages: K8S_COMMANDS.map((c) => `${K8S_MODULE}/cmd/${c}`),
      ldflags: k8sLdflags(versions.k8s),
    },
    pinned.k8s,
    log,
  );
  const k = (name: string): string => path.join(k8sBinDir, name);
  return {
    versions,
    k8sBinDir,
    etcdBinDir,
    etcd: path.join(etcdBinDir, 'etcd'),
    kubeApiserver: k('kube-apiserver'),
    kubectl: k('kubectl'),
    kubelet: k('kubelet'),
    kubeControllerManager: k('kube-controller-manager'),
    kubeScheduler: k('kube-scheduler'),
  };
}

/** What a control plane needs and nothing more: etcd, kube-apiserver and a kubectl of the same version. */
export type ApiserverBinaries = Pick<
  ClusterBinaries,
  'versions' | 'k8sBinDir' | 'etcdBinDir' | 'etcd' | 'kubeApiserver' | 'kubectl'
>;

/** The commands an API-server-only build makes (the compatibility spec's older releases). */
export const APISERVER_COMMANDS = ['kube-apiserver', 'kubectl'] as const satisfies readonly K8sCommand[];

/**
 * kube-apiserver and kubectl of Kubernetes `k8sVersion` (an older release, for the compatibility
 * spec), with the pinned etcd. Only these two are built, a cold build well below a full one (figures
 * in README.md); they land in the same cache directory as a full build of that version
 * (<cache>/bin/k8s-<v>/), and a full build found there is used as it is. Built with the `providerless` tag, so releases whose in-tree cloud
 * providers need modules the proxy does not serve (v1.29) build too; the strict `go mod tidy` is
 * relaxed to `-e` for the same reason, the build itself being the check (see K8sModuleOptions).
 * etcd is the pinned one: the API server talks etcd's v3 API, which etcd 3.6 serves to 3.5 clients.
 */
export async function ensureApiserverBinaries(
  k8sVersion: string,
  options: EnsureBinariesOptions = {},
): Promise<ApiserverBinaries> {
  const env = options.env ?? process.env;
  const log = options.log ?? ((m: string) => process.stderr.write(`[cluster] ${m}\n`));
  const pinned = pinnedVersions();
  const version = normalizeVersion(k8sVersion, 'Kubernetes');
  const root = cacheRoot(env);
  const etcdBinDir = await ensureTarget(
    root,
    { kind: 'etcd', version: pinned.etcd, names: ['etcd'], packages: [ETCD_SERVER_MODULE], ldflags: '-s -w' },
    pinned.etcd,
    log,
  );
  const k8sBinDir = await ensureTarget(
    root,
    {
      kind: 'k8s',
      version,
      names: APISERVER_COMMANDS,
      packages: APISERVER_COMMANDS.map((c) => `${K8S_MODULE}/cmd/${c}`),
      ldflags: k8sLdflags(version),
      tags: ['providerless'],
      module: { tolerateUnservedModules: true },
    },
    pinned.k8s,
    log,
  );
  return {
    versions: { k8s: version, etcd: pinned.etcd },
    k8sBinDir,
    etcdBinDir,
    etcd: path.join(etcdBinDir, 'etcd'),
    kubeApiserver: path.join(k8sBinDir, 'kube-apiserver'),
    kubectl: path.join(k8sBinDir, 'kubectl'),
  };
}
