/**
 * The test tooling's cache root, shared by everything that caches builds across runs: Kubernetes and
 * etcd binaries (<root>/bin/k8s-<v>/, etcd-<v>/), helm (<root>/bin/helm-<v>/), OCI images
 * (<root>/images/). $BLOCKPULL_CACHE_DIR (made absolute) when set and non-empty, else
 * ~/.cache/blockpull-operator — the same rule as test/e2e/kind/kind-e2e.sh.
 */
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';

export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  const override = z.string().optional().parse(env['BLOCKPULL_CACHE_DIR']);
  if (override) return path.resolve(override);
  return path.join(os.homedir(), '.cache', 'blockpull-operator');
}
