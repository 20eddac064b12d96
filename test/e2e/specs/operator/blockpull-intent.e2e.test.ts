/**
 * Persisted intent and bandwidth bounds, end to end: the real control plane, the operator process (as the
 * chart's ServiceAccount), kubectl as the user's client, a launcher stand-in.
 *
 * - Pause races: 20 rapid spec.paused toggles on a pull with maxRetries 0 end Completed, and
 *   status.attempts equals the block jobs QEMU itself started. The jobs are counted
 *   independently of the operator: `virsh qemu-monitor-event` (QEMU's JOB_STATUS_CHANGE
 *   "created", one per job) and `virsh event` (libvirt's block-job-2 end events).
 * - Bandwidth: the CRD refuses what the operator cannot represent (more than 1024Ti); the
 *   maximum reaches QEMU exactly; "0.5" is 1 byte/s, not 0 = unlimited; a bad value that slipped past an older CRD never
 *   leaves a job running under a terminal phase; deleting a BlockPull aborts the job it started,
 *   whatever the phase.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { MAX_BANDWIDTH } from '../../../../operator/src/api/quantity.ts';
import type { StreamHandle } from '../../../../operator/src/hypervisor/runner.ts';
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
import { REPO_ROOT } from '../../support/paths.ts';
import { sleep, waitFor } from '../../support/wait.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';

const NS = 'bp-intent';
const VMI = 'vm-intent';
const TOGGLE_RUNS = 3;
const TOGGLES = 20;
const TOGGLE_DISKS = Array.from({ length: TOGGLE_RUNS }, (_, i) => `toggle-${i + 1}`);
const OTHER_DISKS = ['maxbw', 'badbw', 'half', 'halfbad', 'delfailed', 'dellegacy'] as const;
const CRD_FILE = path.join(REPO_ROOT, 'crds', 'blockpull.dev_blockpulls.yaml');
const BANDWIDTH_RULES =
  '/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/bandwidth/x-kubernetes-validations';

type Status = NonNullable<BlockPullView['status']>;

/** Block jobs seen by QEMU and libvirt on one domain, independently of the operator. */
class JobCounter {
  readonly lines: string[] = [];
  readonly #streams: StreamHandle[];
  constructor(launcher: Launcher) {
    const virsh = ['virsh', '-q', '-c', launcher.uri];
    this.#streams = [
      launcher.runner.stream([...virsh, 'qemu-monitor-event', '--domain', launcher.domain, '--loop']),
      launcher.runner.stream([...virsh, 'event', '--domain', launcher.domain, '--event', 'block-job-2', '--loop']),
    ];
    for (const s of this.#streams) {
      void (async () => {
        for await (const line of s.lines) this.lines.push(line);
      })();
    }
  }
  /** QEMU block jobs created on the disk (libvirt names them pull-<target>-...). */
  created(target: string): number {
    return this.lines.filter(
      (l) => l.includes('JOB_STATUS_CHANGE') && l.includes('"status":"created"') && l.includes(`"pull-${target}-`),
    ).length;
  }
  /** The speed QEMU reported when the disk's stream jobs ended (BLOCK_JOB_COMPLETED/CANCELLED). */
  speeds(target: string): number[] {
    return this.lines
      .filter((l) => /BLOCK_JOB_(COMPLETED|CANCELLED)/.test(l) && l.includes(`"pull-${target}-`))
      .map((l) => Number(/"speed":(\d+)/.exec(l)?.[1] ?? NaN));
  }
  /** libvirt's block-job-2 events for the disk: completed, failed or canceled. */
  ended(target: string): { completed: number; failed: number; canceled: number } {
    const of = (what: string): number =>
      this.lines.filter((l) => l.includes('block-job-2') && l.includes(`Block Pull for ${target} ${what}`)).length;
    return { completed: of('completed'), failed: of('failed'), canceled: of('canceled') };
  }
  stop(): Promise<unknown> {
    for (const s of this.#streams) s.stop();
    return Promise.all(this.#streams.map((s) => s.done));
  }
}

describe('BlockPull intent and bandwidth bounds', () => {
  let kube: ClusterClient;
  let registryDir: string;
  let tmp: string;
  let launcher: Launcher;
  let driver: VirshDriver;
  let counter: JobCounter | undefined;
  let operator: OperatorProcess | undefined;
  let crdLoosened = false;

  const manifest = async (name: string, disk: string, spec: Record<string, unknown>): Promise<string> => {
    const file = path.join(tmp, `${name}.yaml`);
    await writeFile(file, blockPullManifest({ namespace: NS, name, vmiName: VMI, disk, spec }));
    return file;
  };
  const apply = async (name: string, disk: string, spec: Record<string, unknown> = {}): Promise<string> =>
    kube.kubectl(['apply', '-f', await manifest(name, disk, spec)]);
  const patchSpec = (name: string, spec: Record<string, unknown>): Promise<string> =>
    kube.kubectl(['patch', 'blockpull', name, '-n', NS, '--type=merge', '-p', JSON.stringify({ spec })]);
  const target = (disk: string): string => launcher.disks.find((d) => d.name === disk)!.target;
  const jobOf = (disk: string) => driver.getJob(launcher.domain, target(disk));
  const status = async (name: string): Promise<Status | undefined> => {
    return (await getBlockPull(kube, NS, name))?.status;
  };
  const runningWithProgress = (name: string): Promise<BlockPullView> =>
    waitFor(`${name} Running with progress`, 60_000, async () => {
      const bp = await getBlockPull(kube, NS, name);
      return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0 ? bp : undefined;
    });
  /** Server-side dry run of a BlockPull with this bandwidth: the API server's answer. */
  const dryRun = async (bandwidth: unknown) => {
    const file = await manifest('probe', 'maxbw', { bandwidth });
    return kube.kubectlResult(['apply', '--dry-run=server', '-f', file]);
  };
  /** The CRD as shipped (the bandwidth rules back), once the API server enforces it again. */
  const restoreCrd = async (): Promise<void> => {
    await kube.kubectl(['replace', '-f', CRD_FILE]);
    await waitFor(
      'CRD bandwidth rules enforced again',
      30_000,
      async () => (await dryRun('1025Ti')).exitCode !== 0,
      300,
    );
    crdLoosened = false;
  };

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-intent-'));
    registryDir = await mkdtemp('/var/tmp/bp-intent-launchers-');
    const saKubeconfig = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    launcher = await startLauncher({
      namespace: NS,
      vmiName: VMI,
      registryDir,
      disks: [...TOGGLE_DISKS, ...OTHER_DISKS].map((name) => ({ name, layers: 3, sizeMiB: 64, allocatedMiB: 33 })),
    });
    driver = new VirshDriver(launcher.runner, launcher.uri);
    counter = new JobCounter(launcher);
    await createFakeVmi(kube, { namespace: NS, vmiName: VMI, launcher, disks: [...TOGGLE_DISKS, ...OTHER_DISKS] });
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-intent-op' });
    await sleep(500); // the event streams are connected
  });

  afterAll(async () => {
    if (kube !== undefined) {
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
      if (crdLoosened) await restoreCrd();
    }
    await operator?.stop();
    await counter?.stop();
    await launcher?.stop();
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it(`${TOGGLES} rapid spec.paused toggles (0-400 ms apart) with maxRetries 0 end Completed; attempts = jobs QEMU started`, async () => {
    const figures: string[] = [];
    for (const disk of TOGGLE_DISKS) {
      const name = disk;
      const ref = await launcher.reference(disk);
      await apply(name, disk, { bandwidth: '2Mi', maxRetries: 0 });
      await runningWithProgress(name);
      const delays: number[] = [];
      let paused = false;
      for (let i = 0; i < TOGGLES; i++) {
        paused = !paused;
        await patchSpec(name, { paused });
        const delay = Math.floor(Math.random() * 401);
        delays.push(delay);
        await sleep(delay);
      }
      expect(paused).toBe(false);
      const done = await waitForPhase(kube, NS, name, ['Completed', 'Failed'], 120_000);
      // Let the last end event arrive, then compare with what QEMU and libvirt saw.
      await waitFor(`${disk}: every started job ended`, 10_000, () => {
        const e = counter!.ended(target(disk));
        return Promise.resolve(counter!.created(target(disk)) === e.completed + e.failed + e.canceled);
      });
      const created = counter!.created(target(disk));
      const ended = counter!.ended(target(disk));
      const st = done.status as Status;
      const events = await kube.kubectl([
        'get',
        'events',
        '-n',
        NS,
        '--field-selector',
        `involvedObject.name=${name}`,
        '-o',
        'jsonpath={.items[*].reason}',
      ]);
      const line = `${name}: ${st.phase}/${st.reason} attempts=${st.attempts} retries=${st.retries} | QEMU jobs created=${created}, libvirt ended: completed=${ended.completed} canceled=${ended.canceled} failed=${ended.failed} | delays ms ${delays.join(',')}`;
      figures.push(line);
      console.log(line);
      expect(st.phase, line).toBe('Completed');
      expect(st.reason, line).toBe('Completed');
      expect(st.attempts, line).toBe(created);
      expect(ended.completed, line).toBe(1);
      expect(ended.failed, line).toBe(0);
      expect(ended.canceled, line).toBe(created - 1);
      expect(st.retries ?? 0, line).toBe(0);
      expect(st.job?.state).toBe('Ended');
      expect(events.split(' '), line).not.toContain('Adopted');
      expect(events.split(' '), line).not.toContain('RetryLimitExceeded');
      expect(await launcher.compare(disk, ref)).toBe(true);
    }
    console.log(`pause races, ${TOGGLE_RUNS} runs:\n${figures.join('\n')}`);
  });

  it('the CRD refuses bandwidths above 1024Ti, with the reason; accepts the maximum', async () => {
    const refused: [unknown, RegExp][] = [
      ['99999999999999999999Ti', /at most 1024Ti \(1125899906842624 bytes per second\)/],
      ['1025Ti', /at most 1024Ti/],
      ['1126T', /at most 1024Ti/],
      [MAX_BANDWIDTH + 1, /at most 1024Ti/],
      ['5 MB', /non-negative integer or a Quantity/],
    ];
    for (const [bw, message] of refused) {
      const r = await dryRun(bw);
      expect(r.exitCode, `${JSON.stringify(bw)}: ${r.stdout}`).not.toBe(0);
      expect(r.stderr, JSON.stringify(bw)).toMatch(message);
    }
    for (const bw of [
      '1024Ti',
      MAX_BANDWIDTH,
      '1.5Ki',
      '0',
      '0.5',
      '50Mi',
      '1125899906842624',
      '1023.99999999999999999Ti',
    ]) {
      const r = await dryRun(bw);
      expect(r.exitCode, `${JSON.stringify(bw)}: ${r.stderr}`).toBe(0);
    }
  });

  it('the maximum, 1024Ti, reaches QEMU exactly as 1125899906842624 bytes/s', async () => {
    await apply('maxbw', 'maxbw', { bandwidth: '1024Ti' });
    const done = await waitForPhase(kube, NS, 'maxbw', ['Completed', 'Failed'], 60_000);
    expect(done.status?.phase).toBe('Completed');
    expect(done.status?.attempts).toBe(1);
    expect(counter!.created(target('maxbw'))).toBe(1);
    await waitFor('BLOCK_JOB_COMPLETED of maxbw', 10_000, () =>
      Promise.resolve(counter!.speeds(target('maxbw')).length === 1),
    );
    expect(counter!.speeds(target('maxbw'))).toEqual([MAX_BANDWIDTH]);
  });

  it('a bandwidth the operator cannot represent (past an older CRD) never leaves a job running under a terminal phase', async () => {
    // An older CRD (or one helm did not upgrade) lets bad values through: drop the bandwidth rules.
    await kube.kubectl([
      'patch',
      'crd',
      'blockpulls.blockpull.dev',
      '--type=json',
      '-p',
      JSON.stringify([{ op: 'remove', path: BANDWIDTH_RULES }]),
    ]);
    crdLoosened = true;
    await waitFor(
      'CRD without bandwidth rules',
      30_000,
      async () => (await dryRun('99999999999999999999Ti')).exitCode === 0,
      300,
    );

    // Not representable and no job yet: Failed at once, nothing started.
    await apply('halfbad', 'halfbad', { bandwidth: '1025Ti' });
    const halfbad = await waitForPhase(kube, NS, 'halfbad', ['Failed', 'Completed', 'Running'], 30_000);
    expect(halfbad.status).toMatchObject({ phase: 'Failed', reason: 'InvalidBandwidth' });
    expect(halfbad.status?.attempts ?? 0).toBe(0);
    expect(counter!.created(target('halfbad'))).toBe(0);

    // A running pull gets an unrepresentable bandwidth: its job is aborted before Failed is written.
    await apply('badbw', 'badbw', { bandwidth: '1Mi' });
    await runningWithProgress('badbw');
    await patchSpec('badbw', { bandwidth: '99999999999999999999Ti' });
    const jobWhenFailed = await waitFor(
      'badbw Failed',
      30_000,
      async () => {
        const st = await status('badbw');
        if (st?.phase !== 'Failed') return undefined;
        return { st, job: await jobOf('badbw') };
      },
      50,
    );
    expect(jobWhenFailed.st.reason).toBe('InvalidBandwidth');
    expect(jobWhenFailed.st.message).toMatch(/at most 1024Ti/);
    expect(jobWhenFailed.job).toBeNull();
    expect(jobWhenFailed.st.job?.state).toBe('Aborted');
    expect(counter!.ended(target('badbw'))).toMatchObject({ canceled: 1, completed: 0 });
    await sleep(1_500);
    expect(await jobOf('badbw')).toBeNull();
    const events = await kube.kubectl([
      'get',
      'events',
      '-n',
      NS,
      '--field-selector',
      'involvedObject.name=badbw',
      '-o',
      'jsonpath={.items[*].reason}',
    ]);
    expect(events).toContain('InvalidBandwidth');

    await kube.kubectl(['delete', 'blockpull', 'halfbad', 'badbw', '-n', NS, '--wait=true', '--timeout=30s'], {
      timeoutMs: 40_000,
    });
    await restoreCrd();
  });

  it('"0.5" is rounded up to 1 byte/s, not down to 0 = unlimited', async () => {
    await apply('half', 'half', { bandwidth: '0.5' });
    const job = await waitFor('half: a job at 1 byte/s', 30_000, async () => (await jobOf('half')) ?? undefined);
    expect(job.bandwidth).toBe(1);
    expect((await status('half'))?.phase).toBe('Running');
    await kube.kubectl(['delete', 'blockpull', 'half', '-n', NS, '--wait=true', '--timeout=30s'], {
      timeoutMs: 40_000,
    });
    expect(await jobOf('half')).toBeNull();
  });

  it.each([
    ['delfailed', { phase: 'Completed', reason: 'Completed', message: 'written by an admin' }],
    // What an operator from before status.job left after an unparsable bandwidth: no job record.
    ['dellegacy', { phase: 'Failed', reason: 'InvalidBandwidth', message: 'left by an older operator', job: null }],
  ] as const)('deleting a BlockPull aborts the job it started, whatever the phase (%s)', async (disk, terminal) => {
    const ref = await launcher.reference(disk);
    await apply(disk, disk, { bandwidth: '1Mi' });
    await runningWithProgress(disk);
    expect(await jobOf(disk)).not.toBeNull();
    // A terminal phase over the running job, written through the status subresource.
    await kube.kubectl([
      'patch',
      'blockpull',
      disk,
      '-n',
      NS,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({ status: terminal }),
    ]);
    await sleep(1_000);
    expect(await jobOf(disk)).not.toBeNull();
    expect((await status(disk))?.phase).toBe(terminal.phase);
    await kube.kubectl(['delete', 'blockpull', disk, '-n', NS, '--wait=true', '--timeout=30s'], { timeoutMs: 40_000 });
    expect(await getBlockPull(kube, NS, disk)).toBeUndefined();
    expect(await jobOf(disk)).toBeNull();
    expect(counter!.ended(target(disk))).toMatchObject({ canceled: 1, completed: 0 });
    expect(await launcher.compare(disk, ref)).toBe(true);
  });
});
