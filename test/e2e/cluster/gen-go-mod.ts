/**
 * Generates the wrapper Go modules (go.mod + go.sum) that build the control-plane binaries.
 *
 *   node test/e2e/cluster/gen-go-mod.ts --k8s v1.34.5            # etcd: the version that release is tested with
 *   node test/e2e/cluster/gen-go-mod.ts --k8s v1.34.5 --etcd v3.6.6
 *
 * Without --out it rewrites the committed modules in test/e2e/cluster/go/{k8s,etcd}/, which pin the
 * default versions (versions.ts reads them). binaries.ts uses the same functions to build other
 * versions (BLOCKPULL_K8S_VERSION / BLOCKPULL_ETCD_VERSION) in the cache without touching the repo.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { goBinary } from '../support/paths.ts';
import { run, RunError } from '../support/process.ts';
import {
  ETCD_SERVER_MODULE,
  K8S_MODULE,
  etcdVersionFromDependencies,
  localReplacedModules,
  normalizeVersion,
  renderEtcdGoMod,
  renderK8sGoMod,
} from './go-mod.ts';

export const GO_MODULES_DIR = path.join(import.meta.dirname, 'go');

export async function runGo(args: readonly string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await run([goBinary(), ...args], { cwd, env: { ...process.env, GOFLAGS: '-buildvcs=false' } });
    return stdout;
  } catch (err) {
    const detail = err instanceof RunError ? err.result.stderr.trim() : '';
    throw new Error(`go ${args.join(' ')} failed in ${cwd}: ${detail || (err as Error).message}`, { cause: err });
  }
}

const modDownload = z.object({
  Path: z.string(),
  Version: z.string(),
  GoMod: z.string(),
  Dir: z.string().optional(),
  Error: z.string().optional(),
});

export async function downloadModule(mod: string, version: string, cwd: string): Promise<z.infer<typeof modDownload>> {
  const info = modDownload.parse(JSON.parse(await runGo(['mod', 'download', '-json', `${mod}@${version}`], cwd)));
  if (info.Error) throw new Error(`go mod download ${mod}@${version}: ${info.Error}`);
  return info;
}

export interface K8sModuleOptions {
  /**
   * `go mod tidy -e`: keep going when a module that only some packages import cannot be downloaded.
   * For older releases built in the cache only: v1.29's kubelet and controller-manager import
   * k8s.io/legacy-cloud-providers, which the module proxy does not serve, while kube-apiserver and
   * kubectl built with the `providerless` tag do not need it. The build that follows is the check:
   * a package it needs without a go.sum entry fails it. The committed modules are always tidied strictly.
   */
  readonly tolerateUnservedModules?: boolean;
}

/** Writes <dir>/go.mod for Kubernetes `k8sVersion` and runs `go mod tidy` (which writes go.sum). */
export async function writeK8sModule(dir: string, k8sVersion: string, options: K8sModuleOptions = {}): Promise<void> {
  await mkdir(dir, { recursive: true });
  const info = await downloadModule(K8S_MODULE, normalizeVersion(k8sVersion, 'Kubernetes'), dir);
  const staging = localReplacedModules(await readFile(info.GoMod, 'utf8'));
  if (staging.length === 0)
    throw new Error(`${K8S_MODULE}@${k8sVersion}: its go.mod replaces no staging module; unexpected layout`);
  await writeFile(path.join(dir, 'go.mod'), renderK8sGoMod(k8sVersion, staging));
  await runGo(options.tolerateUnservedModules ? ['mod', 'tidy', '-e'] : ['mod', 'tidy'], dir);
}

/** Writes <dir>/go.mod for etcd `etcdVersion` and runs `go mod tidy`. */
export async function writeEtcdModule(dir: string, etcdVersion: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const info = await downloadModule(ETCD_SERVER_MODULE, normalizeVersion(etcdVersion, 'etcd'), dir);
  const local = localReplacedModules(await readFile(info.GoMod, 'utf8'));
  await writeFile(path.join(dir, 'go.mod'), renderEtcdGoMod(etcdVersion, local));
  await runGo(['mod', 'tidy'], dir);
}

/** The etcd version Kubernetes `k8sVersion` is tested with (its build/dependencies.yaml). */
export async function etcdVersionFor(k8sVersion: string, cwd: string): Promise<string> {
  const info = await downloadModule(K8S_MODULE, normalizeVersion(k8sVersion, 'Kubernetes'), cwd);
  if (!info.Dir) throw new Error(`go mod download did not report a directory for ${K8S_MODULE}@${k8sVersion}`);
  return etcdVersionFromDependencies(await readFile(path.join(info.Dir, 'build', 'dependencies.yaml'), 'utf8'));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { k8s: { type: 'string' }, etcd: { type: 'string' }, out: { type: 'string' } },
  });
  if (!values.k8s) throw new Error('usage: gen-go-mod.ts --k8s vX.Y.Z [--etcd vX.Y.Z] [--out dir]');
  const out = values.out ?? GO_MODULES_DIR;
  await mkdir(out, { recursive: true });
  const k8s = normalizeVersion(values.k8s, 'Kubernetes');
  const etcd = values.etcd ? normalizeVersion(values.etcd, 'etcd') : await etcdVersionFor(k8s, out);
  await writeK8sModule(path.join(out, 'k8s'), k8s);
  await writeEtcdModule(path.join(out, 'etcd'), etcd);
  process.stdout.write(
    `wrote ${path.join(out, 'k8s')} (Kubernetes ${k8s}) and ${path.join(out, 'etcd')} (etcd ${etcd})\n`,
  );
}

if (import.meta.main) {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
