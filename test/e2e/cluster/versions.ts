/**
 * Which Kubernetes and etcd versions the tests use, and where built binaries are cached.
 *
 * Defaults: the versions pinned by the committed wrapper modules (test/e2e/cluster/go/{k8s,etcd}/go.mod),
 * so a bump is one command (gen-go-mod.ts). Overrides:
 *   BLOCKPULL_K8S_VERSION   e.g. v1.34.5 (builds kube-apiserver, kubectl, kubelet, ... of that release)
 *   BLOCKPULL_ETCD_VERSION  e.g. v3.6.6
 *   BLOCKPULL_CACHE_DIR     cache root (default ~/.cache/blockpull-operator; ../support/cache.ts); binaries in <root>/bin/k8s-<v>/, etcd-<v>/
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ETCD_SERVER_MODULE, K8S_MODULE, normalizeVersion, requiredVersion } from './go-mod.ts';
import { GO_MODULES_DIR } from './gen-go-mod.ts';

export interface Versions {
  readonly k8s: string;
  readonly etcd: string;
}

function pinned(module: string, dir: string): string {
  const file = path.join(GO_MODULES_DIR, dir, 'go.mod');
  const v = requiredVersion(readFileSync(file, 'utf8'), module);
  if (!v) throw new Error(`${file} does not require ${module}`);
  return v;
}

/** The versions the committed wrapper modules pin. */
export function pinnedVersions(): Versions {
  return { k8s: pinned(K8S_MODULE, 'k8s'), etcd: pinned(ETCD_SERVER_MODULE, 'etcd') };
}

export function resolveVersions(env: NodeJS.ProcessEnv = process.env): Versions {
  const p = pinnedVersions();
  const k8s = env['BLOCKPULL_K8S_VERSION']
    ? normalizeVersion(env['BLOCKPULL_K8S_VERSION'], 'BLOCKPULL_K8S_VERSION')
    : p.k8s;
  const etcd = env['BLOCKPULL_ETCD_VERSION']
    ? normalizeVersion(env['BLOCKPULL_ETCD_VERSION'], 'BLOCKPULL_ETCD_VERSION')
    : p.etcd;
  return { k8s, etcd };
}

/**
 * The older Kubernetes release the compatibility spec (specs/compat/) runs its API server of: the
 * oldest release proven here (docs/kubevirt.md#compatibility). BLOCKPULL_COMPAT_K8S_VERSION
 * overrides it, to try another release by hand.
 */
export const COMPAT_K8S_VERSION = 'v1.29.6';

export function compatK8sVersion(env: NodeJS.ProcessEnv = process.env): string {
  const v = env['BLOCKPULL_COMPAT_K8S_VERSION'];
  return v ? normalizeVersion(v, 'BLOCKPULL_COMPAT_K8S_VERSION') : COMPAT_K8S_VERSION;
}
