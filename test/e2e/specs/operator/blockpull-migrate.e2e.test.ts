/**
 * A pull never blocks a node drain. The operator process (as the chart's ServiceAccount,
 * so VMIM read access comes from files/rbac-rules.yaml) against the real control plane (test-only
 * VMI and VMIM CRDs from the global setup), with launcher stand-ins (libvirtd session + QEMU) on two
 * stand-in nodes. The tests play KubeVirt's part of a live migration:
 * - virt-controller: the VirtualMachineInstanceMigration object and its status.phase, the VMI's
 *   status.migrationState, then status.nodeName / activePods / migrationState.completed;
 * - the target virt-launcher: a second stand-in whose chain is what KubeVirt's incremental block
 *   migration (VIR_MIGRATE_NON_SHARED_INC: only the top of the chain is copied) leaves: copies of
 *   the backing images and a new overlay holding what the source's top held, copied AFTER the
 *   operator's abort (libvirt refuses to migrate while a block job runs), at other paths.
 * Data is checked with qemu-img compare against a reference taken before each pull.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { stringify } from 'yaml';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import {
  blockPullManifest,
  createFakeVmi,
  createLauncherPod,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  watchPhases,
  waitForPhase,
  type BlockPullView,
  type OperatorProcess,
  type PhaseWatch,
} from '../../operator-fixture/fixture.ts';
import { run } from '../../support/process.ts';
import { sleep, waitFor } from '../../support/wait.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';

const NS = 'bp-migrate';
const NODE1 = 'mig-node-1';
const NODE2 = 'mig-node-2';
const DISK = 'd';

describe('BlockPull and live migrations', () => {
  let kube: ClusterClient;
  let registryDir: string;
  let tmp: string;
  let operator: OperatorProcess | undefined;
  const launchers: Launcher[] = [];
  /** Every phase seen per BlockPull (a Failed phase must never show). */
  let phases: PhaseWatch | undefined;

  const apply = async (name: string, vmiName: string, spec: Record<string, unknown> = {}): Promise<void> => {
    const file = path.join(tmp, `${name}.yaml`);
    await writeFile(file, blockPullManifest({ namespace: NS, name, vmiName, disk: DISK, spec }));
    await kube.kubectl(['apply', '-f', file]);
  };
  const patchSpec = (name: string, spec: Record<string, unknown>): Promise<string> =>
    kube.kubectl(['patch', 'blockpull', name, '-n', NS, '--type=merge', '-p', JSON.stringify({ spec })]);
  const patchVmiStatus = (vmiName: string, status: Record<string, unknown>): Promise<string> =>
    kube.kubectl(['patch', 'vmi', vmiName, '-n', NS, '--type=merge', '-p', JSON.stringify({ status })]);
  const createVmim = (name: string, vmiName: string): Promise<string> =>
    kube.kubectl(['apply', '-f', '-'], {
      input: stringify({
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachineInstanceMigration',
        metadata: { name, namespace: NS },
        spec: { vmiName },
      }),
    });
  const setVmimPhase = (name: string, phase: string): Promise<string> =>
    kube.kubectl(['patch', 'vmim', name, '-n', NS, '--type=merge', '-p', JSON.stringify({ status: { phase } })]);
  const vmiUid = async (vmiName: string): Promise<string> =>
    (await kube.kubectl(['get', 'vmi', vmiName, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim();
  const jobOn = (l: Launcher) => new VirshDriver(l.runner, l.uri).getJob(l.domain, l.disks[0]!.target);
  const eventReasons = async (name: string): Promise<string[]> =>
    (
      await kube.kubectl([
        'get',
        'events',
        '-n',
        NS,
        '--field-selector',
        `involvedObject.name=${name}`,
        '-o',
        'jsonpath={.items[*].reason}',
      ])
    ).split(' ');
  const pullsStarted = (name: string): number =>
    operator!.find('block pull started').filter((l) => l['blockpull'] === `${NS}/${name}`).length;

  /** A VMI on NODE1 with its own source stand-in (3-layer chain), and a reference of its disk. */
  const sourceVmi = async (vmiName: string, sizeMiB = 64): Promise<{ source: Launcher; ref: string; uid: string }> => {
    const source = await startLauncher({
      namespace: NS,
      vmiName,
      podName: `virt-launcher-${vmiName}-src`,
      registryDir,
      disks: [{ name: DISK, layers: 3, sizeMiB, allocatedMiB: Math.floor(sizeMiB / 2) + 1 }],
    });
    launchers.push(source);
    await createFakeVmi(kube, { namespace: NS, vmiName, launcher: source, disks: [DISK], nodeName: NODE1 });
    return { source, ref: await source.reference(DISK), uid: await vmiUid(vmiName) };
  };

  /** Running, and the job is on the disk of `l`. */
  const runningOn = (name: string, l: Launcher, timeoutMs = 30_000): Promise<BlockPullView> =>
    waitFor(
      `${name} Running with its job on ${l.podName}`,
      timeoutMs,
      async () => {
        const bp = await getBlockPull(kube, NS, name);
        if (bp?.status?.phase !== 'Running' || bp.status.launcher?.pod !== l.podName || bp.status.job === undefined)
          return undefined;
        return (await jobOn(l)) !== null ? bp : undefined;
      },
      50,
    );

  /**
   * Ask for a migration (by `trigger`: a kubectl write), and measure until the job is gone from the
   * source's disk: `ms` from the moment the write has returned (the request exists in the API
   * server), `withClientMs` from before kubectl was started. Both are upper bounds: the job is seen
   * gone by a `virsh blockjob` poll, itself a process start on a loaded machine.
   */
  const yieldTo = async (
    name: string,
    l: Launcher,
    trigger: () => Promise<unknown>,
  ): Promise<{ ms: number; withClientMs: number; bp: BlockPullView }> => {
    const t0 = performance.now();
    await trigger();
    const t1 = performance.now();
    await waitFor(
      `${name}: job gone from ${l.podName}`,
      10_000,
      async () => ((await jobOn(l)) === null ? true : undefined),
      20,
    );
    const ms = Math.round(performance.now() - t1);
    const withClientMs = Math.round(performance.now() - t0);
    const bp = await waitFor(`${name} Pending/MigrationInProgress`, 10_000, async () => {
      const b = await getBlockPull(kube, NS, name);
      return b?.status?.reason === 'MigrationInProgress' && b.status.job?.state === 'Aborted' ? b : undefined;
    });
    return { ms, withClientMs, bp };
  };

  /**
   * virt-controller's switch-over at the end of a migration: the VMI runs on node 2 in the target
   * pod, the source pod has ended, the migration has succeeded.
   */
  const switchOver = async (vmi: string, uid: string, source: Launcher, targetPod: string, vmim: string) => {
    const targetUid = await createLauncherPod(kube, {
      namespace: NS,
      podName: targetPod,
      vmiName: vmi,
      vmiUid: uid,
      nodeName: NODE2,
    });
    await kube.kubectl([
      'patch',
      'pod',
      source.podName,
      '-n',
      NS,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({ status: { phase: 'Succeeded' } }),
    ]);
    const activePods = {
      [targetUid]: NODE2,
      [(await kube.kubectl(['get', 'pod', source.podName, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim()]: null,
    };
    await patchVmiStatus(vmi, {
      nodeName: NODE2,
      activePods,
      migrationState: { completed: true, endTimestamp: new Date().toISOString() },
    });
    await setVmimPhase(vmim, 'Succeeded');
  };

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-migrate-'));
    registryDir = await mkdtemp('/var/tmp/bp-migrate-launchers-');
    const saKubeconfig = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-migrate-op' });
    phases = watchPhases(kube, NS);
  }, 600_000);

  afterAll(async () => {
    await phases?.stop();
    if (kube !== undefined)
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    await operator?.stop();
    for (const l of launchers) await l.stop().catch(() => undefined);
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('a VMIM mid-pull: the job is aborted within 2 s, the migration completes, the pull resumes on node 2 and ends Completed with identical data', async () => {
    const vmi = 'vm-move';
    const { source, ref, uid } = await sourceVmi(vmi);
    await apply('move', vmi, { bandwidth: '2Mi' });
    await runningOn('move', source);
    await waitFor(
      'move: some data streamed',
      20_000,
      async () => ((await getBlockPull(kube, NS, 'move'))?.status?.progress?.currentBytes ?? 0) > 0 || undefined,
    );

    // virt-controller: a migration is requested.
    const { ms, withClientMs, bp } = await yieldTo('move', source, () => createVmim('mig-move', vmi));
    console.log(
      `[figure] VMIM created -> block job gone from the source's disk: ${ms} ms after the create returned (limit 2000 ms); ${withClientMs} ms including kubectl`,
    );
    expect(ms).toBeLessThanOrEqual(2_000);
    expect(bp.status?.phase).toBe('Pending');
    expect(bp.status?.message).toContain(`VirtualMachineInstanceMigration ${NS}/mig-move`);
    expect(await eventReasons('move')).toContain('MigrationInProgress');

    // The migration runs (target pod scheduled, migrationState set): nothing is started meanwhile.
    const targetPod = `virt-launcher-${vmi}-dst`;
    await setVmimPhase('mig-move', 'Running');
    await patchVmiStatus(vmi, {
      migrationState: {
        sourcePod: source.podName,
        targetPod,
        sourceNode: NODE1,
        targetNode: NODE2,
        migrationUid: 'mig-move-uid',
      },
    });
    // KubeVirt's block migration copies the source's top level into the target's new overlay.
    await source.flush(DISK);
    const target = await startLauncher({
      namespace: NS,
      vmiName: vmi,
      podName: targetPod,
      registryDir,
      disks: [{ name: DISK, layers: 3, sizeMiB: 64, migratedFrom: source.disks[0]!.chain }],
    });
    launchers.push(target);
    expect(target.disks[0]!.chain[0]).not.toBe(source.disks[0]!.chain[0]);
    expect(await jobOn(source)).toBeNull();
    expect((await getBlockPull(kube, NS, 'move'))?.status?.reason).toBe('MigrationInProgress');
    expect(pullsStarted('move')).toBe(1);

    await switchOver(vmi, uid, source, targetPod, 'mig-move');

    const resumed = await runningOn('move', target);
    expect(resumed.status?.launcher?.node).toBe(NODE2);
    expect(resumed.status?.message).toMatch(
      new RegExp(`resumed after the migration on pod ${targetPod} \\(node ${NODE2}\\)`),
    );
    await patchSpec('move', { bandwidth: 0 });
    const done = await waitForPhase(kube, NS, 'move', ['Completed', 'Failed'], 60_000);
    expect(done.status?.phase).toBe('Completed');
    expect(done.status?.reason).toBe('Completed');
    expect(done.status?.launcher?.pod).toBe(targetPod);
    expect(done.status?.attempts).toBe(2);
    expect(done.status?.retries).toBe(0);
    expect(done.status?.backingChain?.current?.map((l) => l.path)).toEqual([target.disks[0]!.chain[0]]);
    expect(done.status?.backingChain?.before?.[0]?.path).toBe(source.disks[0]!.chain[0]);
    expect(await target.compare(DISK, ref)).toBe(true);
    expect(phases!.seen.get('move')?.has('Failed')).toBe(false);
  });

  it('a migration that fails: the pull resumes on the same pod (node 1) and completes', async () => {
    const vmi = 'vm-stay';
    const { source, ref } = await sourceVmi(vmi);
    await apply('stay', vmi, { bandwidth: '2Mi' });
    await runningOn('stay', source);
    const { ms, withClientMs } = await yieldTo('stay', source, () => createVmim('mig-stay', vmi));
    console.log(
      `[figure] (failed migration) VMIM created -> job gone: ${ms} ms after the create returned; ${withClientMs} ms including kubectl`,
    );
    expect(ms).toBeLessThanOrEqual(2_000);
    await patchVmiStatus(vmi, {
      migrationState: { sourcePod: source.podName, targetPod: 'virt-launcher-vm-stay-dst', targetNode: NODE2 },
    });
    await setVmimPhase('mig-stay', 'Running');
    await sleep(500);
    expect(await jobOn(source)).toBeNull();
    // The target failed: virt-controller marks both.
    await patchVmiStatus(vmi, { migrationState: { failed: true, endTimestamp: new Date().toISOString() } });
    await setVmimPhase('mig-stay', 'Failed');

    const resumed = await runningOn('stay', source);
    expect(resumed.status?.launcher?.node).toBe(NODE1);
    expect(resumed.status?.message).toMatch(
      /resumed after the migration on pod virt-launcher-vm-stay-src \(node mig-node-1\)/,
    );
    await patchSpec('stay', { bandwidth: 0 });
    const done = await waitForPhase(kube, NS, 'stay', ['Completed', 'Failed'], 60_000);
    expect(done.status?.phase).toBe('Completed');
    expect(done.status?.attempts).toBe(2);
    expect(done.status?.retries).toBe(0);
    expect(await source.compare(DISK, ref)).toBe(true);
    expect(phases!.seen.get('stay')?.has('Failed')).toBe(false);
  });

  it('migrationPolicy WaitForPull: no abort, the pull completes first while the migration waits', async () => {
    const vmi = 'vm-wait';
    const { source, ref } = await sourceVmi(vmi);
    await apply('wait', vmi, { bandwidth: '2Mi', migrationPolicy: 'WaitForPull' });
    await runningOn('wait', source);
    await createVmim('mig-wait', vmi);
    await patchVmiStatus(vmi, { evacuationNodeName: NODE1 });
    // For 3 s the job keeps running on the source; the status says the migration waits.
    const until = Date.now() + 3_000;
    while (Date.now() < until) {
      expect(await jobOn(source)).not.toBeNull();
      await sleep(250);
    }
    const bp = await getBlockPull(kube, NS, 'wait');
    expect(bp?.status?.phase).toBe('Running');
    expect(bp?.status?.message).toMatch(/waits for the pull to end \(migrationPolicy WaitForPull\)/);
    await patchSpec('wait', { bandwidth: 0 });
    const done = await waitForPhase(kube, NS, 'wait', ['Completed', 'Failed'], 60_000);
    expect(done.status?.phase).toBe('Completed');
    expect(done.status?.attempts).toBe(1);
    expect(pullsStarted('wait')).toBe(1);
    expect(await eventReasons('wait')).not.toContain('MigrationInProgress');
    expect(await source.compare(DISK, ref)).toBe(true);
    // The migration can go now (KubeVirt retries it); nothing of ours is in its way.
    await setVmimPhase('mig-wait', 'Succeeded');
    await patchVmiStatus(vmi, { evacuationNodeName: null });
  });

  it('20 migrations during one pull (failed migrations on one node, by VMIM, migrationState and evacuation in turn): one BlockPull, Completed, never Failed', async () => {
    const vmi = 'vm-many';
    const { source, ref } = await sourceVmi(vmi, 128);
    await apply('many', vmi, { bandwidth: '1Mi' });
    const yields: number[] = [];
    for (let i = 1; i <= 20; i++) {
      await runningOn('many', source);
      const kind = i % 3;
      if (kind === 0) {
        const { ms } = await yieldTo('many', source, () => createVmim(`mig-many-${i}`, vmi));
        yields.push(ms);
        await setVmimPhase(`mig-many-${i}`, 'Failed');
      } else if (kind === 1) {
        const { ms } = await yieldTo('many', source, () =>
          // A new migration replaces the state of the last one (null: the merge patch drops `failed`).
          patchVmiStatus(vmi, {
            migrationState: {
              sourcePod: source.podName,
              targetPod: `virt-launcher-vm-many-t${i}`,
              migrationUid: `u${i}`,
              failed: null,
            },
          }),
        );
        yields.push(ms);
        await patchVmiStatus(vmi, {
          migrationState: {
            sourcePod: source.podName,
            targetPod: `virt-launcher-vm-many-t${i}`,
            migrationUid: `u${i}`,
            failed: true,
          },
        });
      } else {
        const { ms } = await yieldTo('many', source, () => patchVmiStatus(vmi, { evacuationNodeName: NODE1 }));
        yields.push(ms);
        await patchVmiStatus(vmi, { evacuationNodeName: null });
      }
      const bp = await getBlockPull(kube, NS, 'many');
      expect(bp?.status?.phase, `cycle ${i}`).not.toBe('Completed');
    }
    // Printed, not asserted here (the 2 s bound is asserted in the first two tests): this test is about
    // the count and the outcome, and its 20 figures are taken on a machine shared with other runs.
    console.log(
      `[figure] 20 yields, request written -> job gone (ms): ${yields.join(', ')}; max ${Math.max(...yields)}`,
    );
    await runningOn('many', source);
    await patchSpec('many', { bandwidth: 0 });
    const done = await waitForPhase(kube, NS, 'many', ['Completed', 'Failed'], 120_000);
    expect(done.status?.phase).toBe('Completed');
    expect(done.status?.attempts).toBe(21);
    expect(done.status?.retries).toBe(0);
    expect(pullsStarted('many')).toBe(21);
    const all = (
      await kube.kubectl(['get', 'bp', '-n', NS, '-o', 'jsonpath={range .items[*]}{.spec.vmiName}{"\\n"}{end}'])
    )
      .split('\n')
      .filter((v) => v === vmi);
    expect(all).toHaveLength(1);
    expect(phases!.seen.get('many')?.has('Failed')).toBe(false);
    expect(await source.compare(DISK, ref)).toBe(true);
  });

  it('a migration after a Completed flatten: still Completed, and the status shows the backing file the target has again', async () => {
    const vmi = 'vm-after';
    const { source, ref, uid } = await sourceVmi(vmi);
    await apply('after', vmi);
    const done = await waitForPhase(kube, NS, 'after', ['Completed', 'Failed'], 60_000);
    expect(done.status?.phase).toBe('Completed');
    expect(done.status?.launcher?.pod).toBe(source.podName);
    expect(done.status?.backingChain?.current?.map((l) => l.path)).toEqual([source.disks[0]!.chain[0]]);

    // KubeVirt's block migration of the flat disk: the target pod makes its overlay on the container
    // disk again (the bottom of the original chain, copied to the target's paths) and libvirt copies
    // the source's one image (all the data, after the pull) into it.
    const targetPod = `virt-launcher-${vmi}-dst`;
    await createVmim('mig-after', vmi);
    await setVmimPhase('mig-after', 'Running');
    await patchVmiStatus(vmi, {
      migrationState: {
        sourcePod: source.podName,
        targetPod,
        sourceNode: NODE1,
        targetNode: NODE2,
        migrationUid: 'mig-after-uid',
      },
    });
    await source.flush(DISK);
    const sourceChain = source.disks[0]!.chain;
    const target = await startLauncher({
      namespace: NS,
      vmiName: vmi,
      podName: targetPod,
      registryDir,
      disks: [{ name: DISK, layers: 2, sizeMiB: 64, migratedFrom: [sourceChain[0]!, sourceChain.at(-1)!] }],
    });
    launchers.push(target);
    const targetChain = target.disks[0]!.chain;
    expect(targetChain).toHaveLength(2);
    // Nothing is said while the migration runs.
    expect((await getBlockPull(kube, NS, 'after'))?.status?.backingChain?.readOn).toBeUndefined();

    const t0 = performance.now();
    await switchOver(vmi, uid, source, targetPod, 'mig-after');
    // The switch-over is several kubectl calls; the bound runs from the last one.
    const t1 = performance.now();
    const moved = await waitFor(
      'after: ChainAtGoal False on the target pod',
      10_000,
      async () => {
        const b = await getBlockPull(kube, NS, 'after');
        const c = b?.status?.conditions?.find((x) => x.type === 'ChainAtGoal');
        return c?.status === 'False' && b?.status?.backingChain?.readOn?.pod === targetPod ? b : undefined;
      },
      50,
    );
    const ms = Math.round(performance.now() - t1);
    console.log(
      `[figure] migration switch-over written -> Completed BlockPull shows the target's chain: ${ms} ms (${Math.round(performance.now() - t0)} ms including the switch-over's writes)`,
    );
    expect(ms).toBeLessThanOrEqual(5_000);
    const st = moved.status!;
    const chainCondition = st.conditions?.find((x) => x.type === 'ChainAtGoal');
    expect(st.phase).toBe('Completed');
    expect(st.reason).toBe('Completed');
    expect(st.conditions?.find((x) => x.type === 'Ready')?.status).toBe('True');
    expect(chainCondition?.reason).toBe('LauncherChanged');
    for (const part of [`pod ${source.podName} (node ${NODE1})`, `pod ${targetPod} (node ${NODE2}`, 'new BlockPull'])
      expect(chainCondition?.message).toContain(part);
    // Where it completed, and the chain it left there, are kept apart from the chain now.
    expect(st.launcher?.pod).toBe(source.podName);
    expect(st.backingChain?.completed?.map((l) => l.path)).toEqual([sourceChain[0]]);
    expect(st.backingChain?.current?.map((l) => l.path)).toEqual(targetChain);
    expect(st.backingChain?.readOn).toEqual({ pod: targetPod, node: NODE2 });

    // The disk says the same: qemu-img on the target's active image names the backing file the
    // status reports, and the data is whole.
    const info = JSON.parse(
      (await run(['qemu-img', 'info', '-U', '--output=json', '-f', 'qcow2', targetChain[0]!])).stdout,
    ) as { 'backing-filename'?: string };
    expect(info['backing-filename']).toBe(st.backingChain?.current?.[1]?.path);
    expect(await target.compare(DISK, ref)).toBe(true);
    // Nothing was pulled again, and it was said once.
    expect(pullsStarted('after')).toBe(1);
    expect(await jobOn(target)).toBeNull();
    expect(await eventReasons('after')).toContain('LauncherChanged');
    // Read once per pod: a later VMI event writes nothing more.
    await kube.kubectl(['label', 'vmi', vmi, '-n', NS, 'blockpull-e2e/touched=1']);
    await sleep(1_500);
    const later = await getBlockPull(kube, NS, 'after');
    expect(later?.metadata?.resourceVersion).toBe(moved.metadata?.resourceVersion);
    expect(phases!.seen.get('after')?.has('Failed')).toBe(false);
  });
});
