/**
 * BlockPull end to end: the real control plane (kube-apiserver + etcd, CRDs installed by the
 * global setup), the operator as its own process running as a ServiceAccount bound to the chart's
 * RBAC rules, kubectl as the client, and a launcher stand-in (libvirtd session + QEMU) whose
 * disks are real qcow2 chains. Data is checked with qemu-img compare against references made
 * before each pull.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
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
  type BlockPullView,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { sleep, waitFor } from '../../support/wait.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';

const NS = 'bp-e2e';
const VMI = 'vm1';
const MiB = 1024 * 1024;
/** Disks of the stand-in VM: one fresh chain per scenario (a pulled disk is flat afterwards). */
const CHAINED = [
  'basic',
  'partial',
  'bwchange',
  'pause',
  'delete',
  'restart',
  'busy',
  'shutdown',
  'slot-a',
  'slot-b',
  'other-node',
] as const;

describe('BlockPull end to end (operator process, kubectl, launcher stand-in)', () => {
  let kube: ClusterClient;
  let registryDir: string;
  let tmp: string;
  let saKubeconfig: string;
  let launcher: Launcher | undefined;
  /** Stand-ins started by single scenarios (stopped in afterAll). */
  const extraLaunchers: Launcher[] = [];
  let driver: VirshDriver;
  let operator: OperatorProcess | undefined;
  const operators: OperatorProcess[] = [];

  const apply = async (
    name: string,
    disk: string,
    spec: Record<string, unknown> = {},
    vmiName = VMI,
  ): Promise<string> => {
    const file = path.join(tmp, `${name}.yaml`);
    await writeFile(file, blockPullManifest({ namespace: NS, name, vmiName, disk, spec }));
    return kube.kubectl(['apply', '-f', file]);
  };
  const patchSpec = (name: string, spec: Record<string, unknown>): Promise<string> =>
    kube.kubectl(['patch', 'blockpull', name, '-n', NS, '--type=merge', '-p', JSON.stringify({ spec })]);
  const target = (disk: string): string => {
    const d = launcher?.disks.find((x) => x.name === disk);
    if (d === undefined) throw new Error(`no disk ${disk}`);
    return d.target;
  };
  const chainOf = async (disk: string): Promise<string[]> =>
    (await driver.getDisk(launcher!.domain, { name: disk })).chain.map((l) => l.path);
  const pullsStartedFor = (op: OperatorProcess, name: string): number =>
    op.find('block pull started').filter((l) => l['blockpull'] === `${NS}/${name}`).length;
  const runningWithProgress = (name: string): Promise<BlockPullView> =>
    waitFor(`${name} Running with progress`, 60_000, async () => {
      const bp = await getBlockPull(kube, NS, name);
      return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0 ? bp : undefined;
    });

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-e2e-'));
    registryDir = await mkdtemp('/var/tmp/bp-launchers-');
    saKubeconfig = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    launcher = await startLauncher({
      namespace: NS,
      vmiName: VMI,
      registryDir,
      disks: [
        ...CHAINED.map((name) => ({ name, layers: 3, sizeMiB: 64, allocatedMiB: 33 })),
        { name: 'flat', layers: 1, sizeMiB: 16, allocatedMiB: 4 },
      ],
    });
    driver = new VirshDriver(launcher.runner, launcher.uri);
    // "ghost" is in the VMI spec but not in the domain: libvirt reports it missing.
    await createFakeVmi(kube, { namespace: NS, vmiName: VMI, launcher, disks: [...CHAINED, 'flat', 'ghost'] });
    await createFakeVmi(kube, {
      namespace: NS,
      vmiName: 'vm-stopped',
      disks: ['rootdisk'],
      phase: 'Scheduling',
      pod: false,
    });
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-op-1' });
    operators.push(operator);
  });

  afterAll(async () => {
    // Let the operator drop its finalizers, then stop everything this spec started.
    if (kube !== undefined)
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    for (const op of operators) await op.stop();
    for (const l of extraLaunchers) await l.stop();
    await launcher?.stop();
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('kubectl apply -> kubectl wait --for=condition=Complete: flat chain, identical data, progress shown, final status within 1 s', async () => {
    const ref = await launcher!.reference('basic');
    expect(await chainOf('basic')).toHaveLength(3);
    const out = await apply('basic', 'basic', { bandwidth: '8Mi' });
    expect(out).toMatch(/blockpull.blockpull.dev\/basic created/);

    // Watch what a user sees, and when the job really ends on the hypervisor.
    const rows: string[] = [];
    let jobSeen = false;
    let jobEndedAt: number | undefined;
    let stopWatch = false;
    const watcher = (async () => {
      while (!stopWatch) {
        const r = await kube.kubectlResult(['get', 'bp', 'basic', '-n', NS, '--no-headers']);
        if (r.exitCode === 0) rows.push(r.stdout.trim());
        await sleep(250);
      }
    })();
    const jobWatcher = (async () => {
      while (!stopWatch && jobEndedAt === undefined) {
        const job = await driver.getJob(launcher!.domain, target('basic'));
        if (job !== null) jobSeen = true;
        else if (jobSeen) jobEndedAt = Date.now();
        await sleep(50);
      }
    })();
    await kube.kubectl(['wait', '--for=condition=Complete', 'blockpull/basic', '-n', NS, '--timeout=120s'], {
      timeoutMs: 130_000,
    });
    const completedSeenAt = Date.now();
    stopWatch = true;
    await Promise.all([watcher, jobWatcher]);

    // The disk: flat, same data.
    expect(await chainOf('basic')).toEqual([launcher!.disks.find((d) => d.name === 'basic')!.chain[0]]);
    expect(await launcher!.compare('basic', ref)).toBe(true);

    // kubectl get bp showed progress while it ran (columns VMI DISK PHASE PROGRESS AGE).
    const progressRows = rows.filter(
      (r) =>
        /\sRunning\s+(\d+)%/.test(r) &&
        Number(/\sRunning\s+(\d+)%/.exec(r)![1]) > 0 &&
        Number(/\sRunning\s+(\d+)%/.exec(r)![1]) < 100,
    );
    expect(progressRows.length, rows.join('\n')).toBeGreaterThan(0);
    expect(await kube.kubectl(['get', 'bp', 'basic', '-n', NS, '--no-headers'])).toMatch(
      /^basic\s+vm1\s+basic\s+Completed\s+100%/,
    );

    // The final status landed within 1 s of the job's end, as seen by kubectl wait (a watch) and
    // by our 50 ms polling of libvirt (whose own virsh call adds its latency to the margin).
    expect(jobEndedAt).toBeDefined();
    const lagMs = completedSeenAt - jobEndedAt!;
    console.log(`final status seen ${lagMs} ms after the job ended on the hypervisor`);
    expect(lagMs).toBeLessThan(1_000);

    const bp = (await getBlockPull(kube, NS, 'basic'))!;
    expect(bp.metadata.finalizers).toContain('blockpull.dev/abort-on-delete');
    expect(bp.status).toMatchObject({
      phase: 'Completed',
      reason: 'Completed',
      attempts: 1,
      observedGeneration: bp.metadata.generation,
      launcher: {
        pod: launcher!.podName,
        node: 'standin-node',
        container: 'compute',
        domain: `${NS}_${VMI}`,
        target: target('basic'),
      },
      progress: { percent: '100%' },
    });
    expect(bp.status?.backingChain?.before).toHaveLength(3);
    expect(bp.status?.backingChain?.current).toHaveLength(1);
    expect(bp.status?.startTime).toBeDefined();
    expect(bp.status?.completionTime).toBeDefined();
    const conds = Object.fromEntries((bp.status?.conditions ?? []).map((c) => [c.type, c]));
    expect(conds['Complete']).toMatchObject({
      status: 'True',
      reason: 'Completed',
      observedGeneration: bp.metadata.generation,
    });
    expect(conds['Progressing']?.status).toBe('False');
    expect(conds['Failed']?.status).toBe('False');
    expect(pullsStartedFor(operator!, 'basic')).toBe(1);

    // Events on the object.
    const events = await kube.kubectl([
      'get',
      'events',
      '-n',
      NS,
      '--field-selector',
      'involvedObject.name=basic',
      '-o',
      'jsonpath={.items[*].reason}',
    ]);
    expect(events).toContain('PullStarted');
    expect(events).toContain('Completed');

    // Metrics: status writes counted; progress writes throttled.
    const port = operator!.metricsPort();
    expect(port).toBeDefined();
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(/blockpull_status_writes_total\{kind="final"\} [1-9]/);
    expect(metrics).toMatch(/blockpull_pulls_started_total [1-9]/);
  });

  it('applying the same manifest again after Completed starts no new job', async () => {
    const before = (await getBlockPull(kube, NS, 'basic'))!;
    const out = await apply('basic', 'basic', { bandwidth: '8Mi' });
    expect(out).toMatch(/unchanged/);
    await sleep(3_000);
    const after = (await getBlockPull(kube, NS, 'basic'))!;
    expect(after.status?.phase).toBe('Completed');
    expect(after.status?.attempts).toBe(1);
    expect(after.metadata.resourceVersion).toBe(before.metadata.resourceVersion);
    expect(pullsStartedFor(operator!, 'basic')).toBe(1);
    expect(await driver.getJob(launcher!.domain, target('basic'))).toBeNull();
  });

  it('partial pull with base: the base and what is below stay, data identical', async () => {
    const ref = await launcher!.reference('partial');
    const chain = launcher!.disks.find((d) => d.name === 'partial')!.chain;
    await apply('partial', 'partial', { base: { position: 2 } });
    await kube.kubectl(['wait', '--for=condition=Complete', 'blockpull/partial', '-n', NS, '--timeout=120s'], {
      timeoutMs: 130_000,
    });
    expect(await chainOf('partial')).toEqual([chain[0], chain[2]]);
    expect(await launcher!.compare('partial', ref)).toBe(true);
    const bp = (await getBlockPull(kube, NS, 'partial'))!;
    expect(bp.status?.backingChain?.basePath).toBe(chain[2]);
    expect(bp.status?.backingChain?.current?.map((l) => l.path)).toEqual([chain[0], chain[2]]);
  });

  it('a bandwidth change while running takes effect', async () => {
    const ref = await launcher!.reference('bwchange');
    await apply('bwchange', 'bwchange', { bandwidth: '1Mi' });
    await runningWithProgress('bwchange');
    const job = await driver.getJob(launcher!.domain, target('bwchange'));
    expect(job?.bandwidth).toBe(1 * MiB);
    await patchSpec('bwchange', { bandwidth: '64Mi' });
    await waitFor(
      'libvirt job at 64 MiB/s',
      10_000,
      async () => (await driver.getJob(launcher!.domain, target('bwchange')))?.bandwidth === 64 * MiB,
    );
    // At 1 MiB/s the 32 MiB would take ~30 s; at 64 MiB/s it ends within seconds.
    const t0 = Date.now();
    await waitForPhase(kube, NS, 'bwchange', ['Completed'], 20_000);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(await launcher!.compare('bwchange', ref)).toBe(true);
    const events = await kube.kubectl([
      'get',
      'events',
      '-n',
      NS,
      '--field-selector',
      'involvedObject.name=bwchange',
      '-o',
      'jsonpath={.items[*].reason}',
    ]);
    expect(events).toContain('BandwidthChanged');
  });

  it('paused then unpaused finishes correctly', async () => {
    const ref = await launcher!.reference('pause');
    await apply('pause', 'pause', { bandwidth: '4Mi' });
    await runningWithProgress('pause');
    await patchSpec('pause', { paused: true });
    const paused = await waitForPhase(kube, NS, 'pause', ['Paused'], 20_000);
    expect(paused.status?.reason).toBe('Paused');
    await waitFor('job aborted', 10_000, async () => (await driver.getJob(launcher!.domain, target('pause'))) === null);
    await sleep(1_500);
    expect(await driver.getJob(launcher!.domain, target('pause'))).toBeNull();
    expect((await getBlockPull(kube, NS, 'pause'))?.status?.phase).toBe('Paused');
    expect(await chainOf('pause')).toHaveLength(3);
    await patchSpec('pause', { paused: false, bandwidth: '32Mi' });
    const done = await waitForPhase(kube, NS, 'pause', ['Completed'], 60_000);
    expect(done.status?.attempts).toBe(2);
    expect(done.status?.retries ?? 0).toBe(0);
    expect(await chainOf('pause')).toHaveLength(1);
    expect(await launcher!.compare('pause', ref)).toBe(true);
  });

  it('deleting a running BlockPull aborts the job and the object goes away', async () => {
    const ref = await launcher!.reference('delete');
    await apply('delete', 'delete', { bandwidth: '1Mi' });
    await runningWithProgress('delete');
    expect(await driver.getJob(launcher!.domain, target('delete'))).not.toBeNull();
    await kube.kubectl(['delete', 'blockpull', 'delete', '-n', NS, '--wait=true', '--timeout=30s'], {
      timeoutMs: 40_000,
    });
    expect(await getBlockPull(kube, NS, 'delete')).toBeUndefined();
    expect(await driver.getJob(launcher!.domain, target('delete'))).toBeNull();
    // Aborted short of the goal: the chain is intact and the data unchanged.
    expect(await chainOf('delete')).toHaveLength(3);
    expect(await launcher!.compare('delete', ref)).toBe(true);
  });

  it('the VMI gone at once mid-pull, its launcher left running: deleting the BlockPull aborts the job through the recorded pod first', async () => {
    // A VMI of its own (vm1 serves the other scenarios), with a stand-in that outlives it.
    const vmiName = 'vm-orphan';
    const l = await startLauncher({
      namespace: NS,
      vmiName,
      registryDir,
      disks: [{ name: 'd', layers: 3, sizeMiB: 64, allocatedMiB: 33 }],
    });
    extraLaunchers.push(l);
    await createFakeVmi(kube, { namespace: NS, vmiName, launcher: l, disks: ['d'] });
    const d = new VirshDriver(l.runner, l.uri);
    const tgt = l.disks[0]!.target;
    const ref = await l.reference('d');
    const topBefore = await l.topDataBytes('d');
    // ~30 MiB at 1 MiB/s: still running when the BlockPull is deleted.
    await apply('orphan', 'd', { bandwidth: '1Mi' }, vmiName);
    const running = await runningWithProgress('orphan');
    expect(running.status?.launcher?.pod).toBe(l.podName);
    expect(await d.getJob(l.domain, tgt)).not.toBeNull();

    // The VMI removed at once (no finalizer, as when KubeVirt's is removed by hand). This cluster
    // runs no garbage collector, so its launcher pod stays, Running and controlled by the gone VMI,
    // as with --cascade=orphan (which here would wait forever for the absent collector).
    await kube.kubectl(['delete', 'vmi', vmiName, '-n', NS, '--wait=true', '--timeout=20s']);
    expect(
      (await kube.kubectlResult(['get', 'vmi', vmiName, '-n', NS, '--ignore-not-found', '-o', 'name'])).stdout.trim(),
    ).toBe('');
    const pod = JSON.parse(await kube.kubectl(['get', 'pod', l.podName, '-n', NS, '-o', 'json'])) as {
      status?: { phase?: string };
      metadata: { ownerReferences?: { kind: string; name: string; controller?: boolean }[] };
    };
    expect(pod.status?.phase).toBe('Running');
    expect(pod.metadata.ownerReferences).toEqual([
      expect.objectContaining({ kind: 'VirtualMachineInstance', name: vmiName, controller: true }),
    ]);
    expect(await d.getJob(l.domain, tgt)).not.toBeNull();

    await kube.kubectl(['delete', 'blockpull', 'orphan', '-n', NS, '--wait=false']);
    // Polled fast: the first look at the BlockPull gone also looks at the job, which must be gone by then.
    const jobAtGone = await waitFor(
      'the BlockPull orphan gone',
      30_000,
      async () =>
        (await getBlockPull(kube, NS, 'orphan')) === undefined ? { job: await d.getJob(l.domain, tgt) } : undefined,
      100,
    );
    expect(jobAtGone.job).toBeNull();
    // Aborted short of the goal: the chain is intact, the streamed data kept, the data identical.
    const chain = (await d.getDisk(l.domain, { name: 'd' })).chain.map((x) => x.path);
    expect(chain).toEqual(l.disks[0]!.chain);
    expect(await l.topDataBytes('d')).toBeGreaterThan(topBefore);
    expect(await l.compare('d', ref)).toBe(true);
    await kube.kubectl(['delete', 'pod', l.podName, '-n', NS, '--grace-period=0', '--force']);
  }, 120_000);

  it('missing VMI, missing disk, VMI not running, VMI migrating, an already flat disk: documented phase and reason with a useful message', async () => {
    await apply('no-vmi', 'rootdisk', {}, 'nope');
    await apply('no-disk', 'nodisk');
    await apply('ghost-disk', 'ghost');
    await apply('stopped', 'rootdisk', {}, 'vm-stopped');
    await apply('flat', 'flat');
    // A VMI being migrated (status.migrationState without completed/failed).
    await createFakeVmi(kube, {
      namespace: NS,
      vmiName: 'vm-migrating',
      disks: ['rootdisk'],
      podName: 'virt-launcher-vm-migrating-src',
    });
    const migration = {
      migrationState: {
        sourcePod: 'virt-launcher-vm-migrating-src',
        targetPod: 'virt-launcher-vm-migrating-dst',
        completed: false,
      },
    };
    await kube.kubectl([
      'patch',
      'vmi',
      'vm-migrating',
      '-n',
      NS,
      '--type=merge',
      '-p',
      JSON.stringify({ status: migration }),
    ]);
    await apply('migrating', 'rootdisk', {}, 'vm-migrating');
    const expectations: [string, string, string, RegExp][] = [
      [
        'migrating',
        'Pending',
        'MigrationInProgress',
        /migrating \(virt-launcher-vm-migrating-src -> virt-launcher-vm-migrating-dst\)/,
      ],
      ['no-vmi', 'Pending', 'VMINotFound', /VirtualMachineInstance bp-e2e\/nope not found/],
      ['no-disk', 'Failed', 'DiskNotFound', /no disk nodisk/],
      ['ghost-disk', 'Failed', 'DiskNotFound', /ghost/],
      ['stopped', 'Pending', 'VMINotRunning', /Scheduling, not Running/],
      ['flat', 'Completed', 'NothingToDo', /nothing to do/],
    ];
    for (const [name, phase, reason, message] of expectations) {
      const bp = await waitFor(`${name} ${phase}/${reason}`, 30_000, async () => {
        const b = await getBlockPull(kube, NS, name);
        return b?.status?.reason === reason ? b : undefined;
      });
      expect(bp.status?.phase, name).toBe(phase);
      expect(bp.status?.message, name).toMatch(message);
    }
    expect(pullsStartedFor(operator!, 'flat')).toBe(0);
    // The migration ends: the BlockPull moves on (here to LauncherNotFound: no stand-in serves that pod).
    await kube.kubectl([
      'patch',
      'vmi',
      'vm-migrating',
      '-n',
      NS,
      '--type=merge',
      '-p',
      JSON.stringify({ status: { migrationState: { completed: true } } }),
    ]);
    const moved = await waitFor('migrating moves on', 30_000, async () => {
      const b = await getBlockPull(kube, NS, 'migrating');
      return b?.status?.reason === 'LauncherNotFound' ? b : undefined;
    });
    expect(moved.status?.message).toMatch(/no registered launcher stand-in/);
    // Waiting objects are looked at again (every 5 s) but not rewritten while nothing changes.
    const rv = (await getBlockPull(kube, NS, 'no-vmi'))!.metadata.resourceVersion;
    await sleep(6_000);
    expect((await getBlockPull(kube, NS, 'no-vmi'))!.metadata.resourceVersion).toBe(rv);
    expect(operator!.child.exitCode).toBeNull();
  });

  it('a second BlockPull for the same disk waits with DiskBusy and ends after the first', async () => {
    const ref = await launcher!.reference('busy');
    await apply('busy-1', 'busy', { bandwidth: '4Mi' });
    await runningWithProgress('busy-1');
    await apply('busy-2', 'busy');
    const waiting = await waitFor('busy-2 DiskBusy', 20_000, async () => {
      const b = await getBlockPull(kube, NS, 'busy-2');
      return b?.status?.reason === 'DiskBusy' ? b : undefined;
    });
    expect(waiting.status?.phase).toBe('Pending');
    expect(waiting.status?.message).toContain('busy-1');
    await waitForPhase(kube, NS, 'busy-1', ['Completed'], 60_000);
    const second = await waitForPhase(kube, NS, 'busy-2', ['Completed'], 30_000);
    expect(second.status?.reason).toBe('NothingToDo');
    expect(pullsStartedFor(operator!, 'busy-2')).toBe(0);
    expect(await launcher!.compare('busy', ref)).toBe(true);
  });

  it('invalid specs are rejected at apply with the API server message', async () => {
    const bad = async (name: string, spec: Record<string, unknown>, expected: RegExp): Promise<void> => {
      const file = path.join(tmp, `${name}.yaml`);
      await writeFile(
        file,
        `apiVersion: blockpull.dev/v1alpha1\nkind: BlockPull\nmetadata:\n  name: ${name}\n  namespace: ${NS}\nspec: ${JSON.stringify(spec)}\n`,
      );
      const r = await kube.kubectlResult(['apply', '-f', file]);
      expect(r.exitCode, `${name}: ${r.stdout}`).not.toBe(0);
      expect(r.stderr, name).toMatch(expected);
    };
    await bad('bad-name', { vmiName: 'Bad_Name', disk: 'd' }, /spec.vmiName.*should match/);
    await bad(
      'bad-base',
      { vmiName: 'vm1', disk: 'd', base: { position: 1, path: '/x' } },
      /exactly one of position or path/,
    );
    await bad(
      'bad-base-0',
      { vmiName: 'vm1', disk: 'd', base: { position: 0 } },
      /spec.base.position.*greater than or equal to 1/,
    );
    await bad(
      'bad-bw',
      { vmiName: 'vm1', disk: 'd', bandwidth: '5 MB' },
      /bandwidth must be a non-negative integer or a Quantity/,
    );
    await bad(
      'bad-bw-neg',
      { vmiName: 'vm1', disk: 'd', bandwidth: -5 },
      /bandwidth must be a non-negative integer or a Quantity/,
    );
    await bad(
      'bad-retries',
      { vmiName: 'vm1', disk: 'd', maxRetries: 1000 },
      /spec.maxRetries.*less than or equal to 100/,
    );
    await bad('no-disk-field', { vmiName: 'vm1' }, /spec.disk: Required value/);
    // Immutability (CEL transition rules).
    const imm = await kube.kubectlResult([
      'patch',
      'blockpull',
      'basic',
      '-n',
      NS,
      '--type=merge',
      '-p',
      '{"spec":{"vmiName":"other"}}',
    ]);
    expect(imm.exitCode).not.toBe(0);
    expect(imm.stderr).toMatch(/vmiName is immutable/);
    const immBase = await kube.kubectlResult([
      'patch',
      'blockpull',
      'basic',
      '-n',
      NS,
      '--type=merge',
      '-p',
      '{"spec":{"base":{"position":1}}}',
    ]);
    expect(immBase.exitCode).not.toBe(0);
    expect(immBase.stderr).toMatch(/base is immutable/);
    // kubectl explain documents the fields.
    const explain = await kube.kubectl(['explain', 'blockpull.spec.bandwidth']);
    expect(explain).toMatch(/bytes per second/);
  });

  it('the operator killed mid-pull and started again adopts the running job (Event + info log): one job, Completed, data identical', async () => {
    const ref = await launcher!.reference('restart');
    // Slow enough (33 MiB at 1 MiB/s) to be still running when the next operator looks.
    await apply('restart', 'restart', { bandwidth: '1Mi' });
    await runningWithProgress('restart');
    await operator!.kill();
    expect(await driver.getJob(launcher!.domain, target('restart'))).not.toBeNull();
    const first = operator!;
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-op-2' });
    operators.push(operator);
    // The new process says it took the job over (info log line + Event, status reason Adopted);
    // the first one, which started the job, never called it Adopted.
    const next = operator;
    const adoptedBy = (op: OperatorProcess): Record<string, unknown>[] =>
      op
        .find('adopted a running block pull job this process did not start (e.g. after a leader change)')
        .filter((l) => l['blockpull'] === `${NS}/restart`);
    const line = await waitFor('adoption logged', 30_000, () => Promise.resolve(adoptedBy(next)[0]));
    expect(line).toMatchObject({
      level: 'info',
      launcherPod: launcher!.podName,
      target: target('restart'),
      previousPhase: 'Running',
    });
    const adopted = await waitFor('restart Adopted', 10_000, async () => {
      const b = await getBlockPull(kube, NS, 'restart');
      return b?.status?.reason === 'Adopted' ? b : undefined;
    });
    expect(adopted.status?.phase).toBe('Running');
    expect(adopted.status?.message).toMatch(/^adopted the running pull restart/);
    expect(await driver.getJob(launcher!.domain, target('restart'))).not.toBeNull();
    await patchSpec('restart', { bandwidth: '64Mi' });
    const done = await waitForPhase(kube, NS, 'restart', ['Completed'], 90_000);
    expect(done.status?.reason).toBe('Completed');
    expect(done.status?.attempts).toBe(1);
    expect(done.status?.retries ?? 0).toBe(0);
    expect(pullsStartedFor(first, 'restart')).toBe(1);
    expect(pullsStartedFor(operator, 'restart')).toBe(0);
    expect(adoptedBy(operator)).toHaveLength(1);
    expect(adoptedBy(first)).toHaveLength(0);
    const events = await kube.kubectl([
      'get',
      'events',
      '-n',
      NS,
      '--field-selector',
      'involvedObject.name=restart',
      '-o',
      'jsonpath={range .items[*]}{.reason}{"\\n"}{end}',
    ]);
    expect(events.split('\n').filter((r) => r === 'Adopted')).toHaveLength(1);
    expect(await chainOf('restart')).toHaveLength(1);
    expect(await launcher!.compare('restart', ref)).toBe(true);
  });

  it('SIGTERM: the operator exits 0 without aborting the running pull; the next one adopts it', async () => {
    const ref = await launcher!.reference('shutdown');
    await apply('shutdown', 'shutdown', { bandwidth: '4Mi' });
    await runningWithProgress('shutdown');
    const previous = operator!;
    expect(await previous.stop()).toBe(0);
    expect(previous.find(/shutting down/).length).toBe(1);
    expect(await driver.getJob(launcher!.domain, target('shutdown'))).not.toBeNull();
    // The Lease was released: the next operator leads at once. It allows ONE pull cluster-wide.
    operator = await startOperator({
      kubeconfig: saKubeconfig,
      registryDir,
      name: 'e2e-op-3',
      env: { BLOCKPULL_MAX_CONCURRENT_PULLS: '1' },
    });
    operators.push(operator);
    const done = await waitForPhase(kube, NS, 'shutdown', ['Completed'], 60_000);
    expect(done.status?.attempts).toBe(1);
    expect(pullsStartedFor(previous, 'shutdown')).toBe(1);
    expect(pullsStartedFor(operator, 'shutdown')).toBe(0);
    expect(await launcher!.compare('shutdown', ref)).toBe(true);
  });

  it('the cluster-wide limit of concurrent pulls: the second waits with WaitingForSlot, then runs', async () => {
    const refB = await launcher!.reference('slot-b');
    await apply('slot-a', 'slot-a', { bandwidth: '4Mi' });
    await runningWithProgress('slot-a');
    await apply('slot-b', 'slot-b');
    const waiting = await waitFor('slot-b WaitingForSlot', 20_000, async () => {
      const b = await getBlockPull(kube, NS, 'slot-b');
      return b?.status?.reason === 'WaitingForSlot' ? b : undefined;
    });
    expect(waiting.status?.phase).toBe('Pending');
    expect(waiting.status?.message).toMatch(/1 pulls run cluster-wide \(limit 1\)/);
    expect(await driver.getJob(launcher!.domain, target('slot-b'))).toBeNull();
    await waitForPhase(kube, NS, 'slot-a', ['Completed'], 60_000);
    const b = await waitForPhase(kube, NS, 'slot-b', ['Completed'], 60_000);
    expect(b.status?.reason).toBe('Completed');
    expect(b.status?.attempts).toBe(1);
    expect(await launcher!.compare('slot-b', refB)).toBe(true);
    expect(operator!.child.exitCode).toBeNull();
  });

  it('the per-node limit of concurrent pulls: the second VMI on a node waits with WaitingForSlot, then runs; another node is not held back', async () => {
    // One pull per node, several cluster-wide: only the per-node limit can hold a pull back.
    const previous = operator!;
    expect(await previous.stop()).toBe(0);
    operator = await startOperator({
      kubeconfig: saKubeconfig,
      registryDir,
      name: 'e2e-op-4',
      env: { BLOCKPULL_MAX_PULLS_PER_NODE: '1', BLOCKPULL_MAX_CONCURRENT_PULLS: '4' },
    });
    operators.push(operator);
    // Two VMIs on node pn-node (a stand-in each); vm1 stays on standin-node.
    const node = 'pn-node';
    const standins: Record<string, { launcher: Launcher; driver: VirshDriver }> = {};
    for (const vmiName of ['vm-pn-a', 'vm-pn-b']) {
      const l = await startLauncher({
        namespace: NS,
        vmiName,
        registryDir,
        disks: [{ name: 'd', layers: 3, sizeMiB: 32, allocatedMiB: 17 }],
      });
      extraLaunchers.push(l);
      await createFakeVmi(kube, { namespace: NS, vmiName, launcher: l, disks: ['d'], nodeName: node });
      standins[vmiName] = { launcher: l, driver: new VirshDriver(l.runner, l.uri) };
    }
    const { launcher: la, driver: da } = standins['vm-pn-a']!;
    const { launcher: lb, driver: db } = standins['vm-pn-b']!;
    const refA = await la.reference('d');
    const refB = await lb.reference('d');
    const refOther = await launcher!.reference('other-node');

    // node-a runs slowly (15 MiB at 1 MiB/s) and holds pn-node's only slot.
    await apply('node-a', 'd', { bandwidth: '1Mi' }, 'vm-pn-a');
    const a = await runningWithProgress('node-a');
    expect(a.status?.launcher?.node).toBe(node);
    await apply('node-b', 'd', {}, 'vm-pn-b');
    const waiting = await waitFor('node-b WaitingForSlot', 20_000, async () => {
      const b = await getBlockPull(kube, NS, 'node-b');
      return b?.status?.reason === 'WaitingForSlot' ? b : undefined;
    });
    expect(waiting.status?.phase).toBe('Pending');
    expect(waiting.status?.message).toMatch(/1 pulls run on node pn-node \(limit 1\)/);
    expect(await db.getJob(lb.domain, lb.disks[0]!.target)).toBeNull();

    // A VMI on another node is not held back by pn-node's limit: it runs to the end meanwhile.
    await apply('other-node', 'other-node');
    const other = await waitForPhase(kube, NS, 'other-node', ['Completed'], 30_000);
    expect(other.status?.reason).toBe('Completed');
    expect(other.status?.launcher?.node).toBe('standin-node');
    expect(await launcher!.compare('other-node', refOther)).toBe(true);
    expect(await da.getJob(la.domain, la.disks[0]!.target)).not.toBeNull();
    expect((await getBlockPull(kube, NS, 'node-a'))?.status?.phase).toBe('Running');
    const stillWaiting = await getBlockPull(kube, NS, 'node-b');
    expect(stillWaiting?.status?.reason).toBe('WaitingForSlot');
    expect(pullsStartedFor(operator, 'node-b')).toBe(0);

    // node-a ends (sped up), then node-b gets the slot and runs.
    await patchSpec('node-a', { bandwidth: '64Mi' });
    await waitForPhase(kube, NS, 'node-a', ['Completed'], 30_000);
    const b = await waitForPhase(kube, NS, 'node-b', ['Completed'], 30_000);
    expect(b.status?.reason).toBe('Completed');
    expect(b.status?.attempts).toBe(1);
    expect(b.status?.launcher?.node).toBe(node);
    expect(pullsStartedFor(operator, 'node-b')).toBe(1);
    expect(await la.compare('d', refA)).toBe(true);
    expect(await lb.compare('d', refB)).toBe(true);
    expect(operator.child.exitCode).toBeNull();
  });
});
