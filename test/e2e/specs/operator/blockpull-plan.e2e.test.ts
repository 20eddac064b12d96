/**
 * spec.dryRun end to end: the real control plane with the CRD from crds/, the operator as its own
 * process under the chart's RBAC, kubectl as the client, a launcher stand-in with real qcow2
 * chains. A plan starts no job and changes no byte of the disk; its figures bound what the pull
 * of the same disk then does; the CRD keeps dryRun immutable; kubectl wait reads it Ready.
 */
import { stat, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseBlockPull, type BlockPull } from '../../../../operator/src/api/types.ts';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';

const NS = 'bp-plan';
const VMI = 'vm1';
const MiB = 1024 * 1024;

describe('spec.dryRun: a plan, never a pull (operator process, kubectl, launcher stand-in)', () => {
  let kube: ClusterClient;
  let registryDir: string;
  let tmp: string;
  let launcher: Launcher | undefined;
  let driver: VirshDriver;
  let operator: OperatorProcess | undefined;

  const apply = async (name: string, disk: string, spec: Record<string, unknown> = {}): Promise<string> => {
    const file = path.join(tmp, `${name}.yaml`);
    await writeFile(file, blockPullManifest({ namespace: NS, name, vmiName: VMI, disk, spec }));
    return kube.kubectl(['apply', '-f', file]);
  };
  const chainOf = async (disk: string): Promise<string[]> =>
    (await driver.getDisk(launcher!.domain, { name: disk })).chain.map((l) => l.path);
  /** Bytes allocated to a file on the host (the stand-in's images are host files). */
  const allocated = async (file: string): Promise<number> => (await stat(file)).blocks * 512;
  const stored = async (name: string): Promise<BlockPull> => parseBlockPull(await getBlockPull(kube, NS, name));
  const startsFor = (name: string): number =>
    operator!.find('block pull started').filter((l) => l['blockpull'] === `${NS}/${name}`).length;

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-plan-'));
    registryDir = await mkdtemp('/var/tmp/bp-launchers-');
    const saKubeconfig = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    launcher = await startLauncher({
      namespace: NS,
      vmiName: VMI,
      registryDir,
      disks: [
        { name: 'planned', layers: 3, sizeMiB: 64, allocatedMiB: 33 },
        { name: 'flat', layers: 1, sizeMiB: 16, allocatedMiB: 4 },
      ],
    });
    driver = new VirshDriver(launcher.runner, launcher.uri);
    await createFakeVmi(kube, { namespace: NS, vmiName: VMI, launcher, disks: ['planned', 'flat'] });
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-plan' });
  });

  afterAll(async () => {
    if (kube !== undefined)
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    await operator?.stop();
    await launcher?.stop();
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('plans with the figures of the disk, starts nothing, and the pull that follows stays within them', async () => {
    const chainBefore = await chainOf('planned');
    expect(chainBefore).toHaveLength(3);
    const top = chainBefore[0]!;
    const topBefore = await allocated(top);
    const ref = await launcher!.reference('planned');

    await apply('plan', 'planned', { dryRun: true, bandwidth: '8Mi' });
    // kubectl wait on Ready, as a GitOps tool waiting on the kstatus convention would.
    await kube.kubectl(['wait', '--for=condition=Ready', `blockpull/plan`, '-n', NS, '--timeout=60s']);
    const plan = await stored('plan');
    expect(plan.status).toMatchObject({ phase: 'Planned', reason: 'Planned', plan: { space: 'Fits' } });
    const figures = plan.status!.plan!;
    console.log(`plan: ${JSON.stringify(figures)}; message: ${plan.status?.message ?? ''}`);
    // The data to pull: the two backing images hold 33 MiB each at most, of a 64 MiB disk.
    expect(figures.bytesToWrite).toBeGreaterThan(0);
    expect(figures.bytesToWrite!).toBeLessThanOrEqual(64 * MiB);
    expect(figures.availableBytes).toBeGreaterThan(figures.bytesToWrite!);
    expect(figures.etaSeconds).toBe(Math.ceil(figures.bytesToWrite! / (8 * MiB)));
    expect(plan.status?.backingChain?.current?.map((l) => l.path)).toEqual(chainBefore);
    // No job, no byte written: the chain and the top image are as they were.
    expect(startsFor('plan')).toBe(0);
    expect(
      await driver.getJob(launcher!.domain, (await driver.getDisk(launcher!.domain, { name: 'planned' })).target),
    ).toBeNull();
    expect(await chainOf('planned')).toEqual(chainBefore);
    expect(await allocated(top)).toBe(topBefore);

    // The CRD keeps a plan a plan.
    const flip = await kube.kubectlResult([
      'patch',
      'blockpull',
      'plan',
      '-n',
      NS,
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { dryRun: false } }),
    ]);
    expect(flip.exitCode).not.toBe(0);
    expect(flip.stderr).toContain('dryRun is immutable');

    // The pull of the same disk, with the plan still there (a plan holds no disk): within the figures.
    await apply('pull', 'planned');
    const done = await waitForPhase(kube, NS, 'pull', ['Completed', 'Failed'], 120_000);
    expect(done.status?.phase).toBe('Completed');
    expect(await chainOf('planned')).toEqual([top]);
    const written = (await allocated(top)) - topBefore;
    console.log(
      `pull after the plan: ${written} bytes written into the top image, plan said at most ${figures.bytesToWrite}`,
    );
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThanOrEqual(figures.bytesToWrite!);
    expect(await launcher!.compare('planned', ref)).toBe(true);
    // The plan stays the look it took.
    expect((await stored('plan')).status?.phase).toBe('Planned');
  });

  it('a disk already at its goal: nothing to do, no job', async () => {
    await apply('plan-flat', 'flat', { dryRun: true });
    const bp = await waitForPhase(kube, NS, 'plan-flat', ['Completed', 'Planned', 'Failed']);
    expect(bp.status).toMatchObject({ phase: 'Completed', reason: 'NothingToDo' });
    expect(startsFor('plan-flat')).toBe(0);
  });
});
