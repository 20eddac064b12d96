/**
 * Vitest global setup for the e2e project: ONE control plane for all e2e files.
 *
 * - ensureBinaries() (built from the Go module proxy on first use, then cached),
 * - startControlPlane() in <repo>/.cache/e2e-cluster/run-<pid> (not the CLI's .cache/cluster, so a cluster
 *   a user keeps running with `npm run cluster -- up` is left alone; one dir per run, so concurrent runs
 *   don't stop each other; runs whose owner died are cleaned up first),
 * - installs every CRD in crds/ and the test VMI and VMIM CRDs, waits for them to be Established,
 * - provides kubeconfigPath, kubectlPath, clusterBinDir, clusterPkiDir to the specs (inject()).
 * Teardown stops the control plane; signal/exit handlers and the stale-run cleanup of the next start
 * cover an interrupted run.
 *
 * BLOCKPULL_KUBECONFIG=<file> uses that cluster instead (e.g. kind); kubectl is then
 * $BLOCKPULL_KUBECTL or the built one.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { ensureBinaries } from '../cluster/binaries.ts';
import { installCrds, projectCrdFiles } from '../cluster/crds.ts';
import { cleanupStaleRuns, startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { clusterClient } from '../cluster/client.ts';
import { processesMentioning } from '../support/process.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Admin kubeconfig of the e2e cluster. */
    kubeconfigPath: string;
    /** kubectl matching the cluster's version. */
    kubectlPath: string;
    /** Directory with kube-apiserver, kubectl, kubelet, kube-controller-manager, kube-scheduler ('' if not built). */
    clusterBinDir: string;
    /** The control plane's PKI (ca.crt, ca.key, ...) for signing e.g. kubelet certs; '' for an external cluster. */
    clusterPkiDir: string;
  }
}

/** One state dir per test run (<root>/run-<pid>): engineers and CI jobs sharing a checkout don't collide. */
export const E2E_STATE_ROOT = path.join(REPO_ROOT, '.cache', 'e2e-cluster');

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const stateDir = path.join(E2E_STATE_ROOT, `run-${process.pid}`);
  const log = (m: string): void => {
    process.stderr.write(`[e2e-cluster] ${m}\n`);
  };
  const external = process.env['BLOCKPULL_KUBECONFIG'];
  let cp: ControlPlane | undefined;
  let kubeconfigPath: string;
  let kubectlPath: string;
  let binDir = '';
  let pkiDir = '';
  if (external) {
    kubeconfigPath = path.resolve(external);
    kubectlPath = process.env['BLOCKPULL_KUBECTL'] ?? (await ensureBinaries({ log })).kubectl;
    log(`using the cluster of BLOCKPULL_KUBECONFIG=${kubeconfigPath}`);
  } else {
    await cleanupStaleRuns(E2E_STATE_ROOT, log);
    cp = await startControlPlane({ stateDir: stateDir, log });
    kubeconfigPath = cp.kubeconfigPath;
    kubectlPath = cp.binaries.kubectl;
    binDir = cp.binDir;
    pkiDir = cp.pki.dir;
  }
  try {
    const files = await projectCrdFiles();
    await installCrds(clusterClient(kubeconfigPath, kubectlPath), files);
    log(`installed ${files.length} CRD file(s): ${files.map((f) => path.relative(REPO_ROOT, f)).join(', ')}`);
  } catch (err) {
    await cp?.stop();
    throw err;
  }
  project.provide('kubeconfigPath', kubeconfigPath);
  project.provide('kubectlPath', kubectlPath);
  project.provide('clusterBinDir', binDir);
  project.provide('clusterPkiDir', pkiDir);
  return async () => {
    if (!cp) return;
    await cp.stop();
    // The acceptance criterion, checked on every run: nothing of ours is left behind.
    const left = processesMentioning(stateDir, ['etcd', 'kube-apiserver']);
    if (left.length > 0)
      throw new Error(`etcd/kube-apiserver of the e2e control plane still running after stop: ${left.join(', ')}`);
    await rm(stateDir, { recursive: true, force: true });
  };
}
