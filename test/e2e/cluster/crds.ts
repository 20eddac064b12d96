/** Installs CRD files and waits until the API server serves them (condition Established). */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { ClusterClient } from './client.ts';

export async function installCrds(
  client: Pick<ClusterClient, 'kubectl'>,
  files: readonly string[],
  timeoutSeconds = 60,
): Promise<void> {
  if (files.length === 0) return;
  const fileArgs = files.flatMap((f) => ['-f', f]);
  // One kubectl per step (KubeVirt's 17 CRDs: 2 invocations, not 34).
  // Server-side apply: idempotent, and no last-applied annotation (large CRDs exceed its size limit).
  await client.kubectl(['apply', '--server-side', '--force-conflicts', '--field-manager=blockpull-e2e', ...fileArgs]);
  await client.kubectl(['wait', '--for=condition=Established', `--timeout=${timeoutSeconds}s`, ...fileArgs]);
}

/** The operator's own CRDs: every YAML in <repo>/crds/ (with real KubeVirt, install these alone). */
export async function operatorCrdFiles(
  repoRoot = path.resolve(import.meta.dirname, '..', '..', '..'),
): Promise<string[]> {
  const dir = path.join(repoRoot, 'crds');
  const names = await readdir(dir).catch(() => [] as string[]);
  return names
    .filter((n) => /\.ya?ml$/.test(n))
    .sort()
    .map((n) => path.join(dir, n));
}

/** The project's CRDs (operatorCrdFiles) followed by the test-only KubeVirt VMI and VMIM CRDs. */
export async function projectCrdFiles(
  repoRoot = path.resolve(import.meta.dirname, '..', '..', '..'),
): Promise<string[]> {
  return [...(await operatorCrdFiles(repoRoot)), VMI_CRD_FILE, VMIM_CRD_FILE];
}

export const VMI_CRD_FILE = path.join(import.meta.dirname, 'crds', 'kubevirt-vmi-crd.yaml');
export const VMIM_CRD_FILE = path.join(import.meta.dirname, 'crds', 'kubevirt-vmim-crd.yaml');
/** Test-only VirtualMachineSnapshot and VirtualMachineBackup CRDs: not in projectCrdFiles (the operator must work without them); specs install them. */
export const VMSNAPSHOT_CRD_FILE = path.join(import.meta.dirname, 'crds', 'kubevirt-vmsnapshot-crd.yaml');
export const VMBACKUP_CRD_FILE = path.join(import.meta.dirname, 'crds', 'kubevirt-vmbackup-crd.yaml');
