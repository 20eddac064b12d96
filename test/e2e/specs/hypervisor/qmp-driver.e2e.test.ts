/**
 * The QMP driver against a real standalone QEMU (no libvirt): full pull, partial pull, pause and
 * resume, abort then a new pull, speed change, typed errors. Data checked with qemu-img compare.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { computeGoal } from '../../../../operator/src/hypervisor/chain.ts';
import { isPullComplete } from '../../../../operator/src/hypervisor/completion.ts';
import { waitForPullCompletion } from '../../blockjob/wait-for-pull.ts';
import { HypervisorError, type HypervisorErrorCode } from '../../../../operator/src/hypervisor/errors.ts';
import { QmpDriver } from '../../blockjob/qmp-driver.ts';
import type { BlockJobEvent, BlockJobInfo } from '../../../../operator/src/hypervisor/types.ts';
import type { LauncherDisk } from '../../launcher/launcher.ts';
import { sleep, waitFor } from '../../support/wait.ts';
import { flushCommand, startStandaloneQemu, type StandaloneQemu } from '../../launcher/qemu.ts';

const MiB = 1024 * 1024;
const DOMAIN = 'qmp-vm';

async function expectCode(p: Promise<unknown>, code: HypervisorErrorCode): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(HypervisorError);
  expect((err as HypervisorError).code, (err as Error).message).toBe(code);
}

describe('QMP driver on a standalone QEMU', () => {
  let q: StandaloneQemu;
  let driver: QmpDriver;
  const disk = (name: string): LauncherDisk => {
    const d = q.disks.find((x) => x.name === name);
    if (d === undefined) throw new Error(`no disk ${name}`);
    return d;
  };
  /** QEMU caches qcow2 metadata: flush before qemu-img reads the file. */
  const compare = async (name: string, ref: string): Promise<boolean> => {
    const out = await driver.execute('human-monitor-command', { 'command-line': flushCommand(disk(name).target) });
    expect(out).toBe('');
    return q.compare(name, ref);
  };

  beforeAll(async () => {
    q = await startStandaloneQemu({
      disks: [
        { name: 'full', layers: 3, sizeMiB: 64, allocatedMiB: 48 },
        { name: 'partial', layers: 3, sizeMiB: 64, allocatedMiB: 48 },
        { name: 'pause', layers: 3, sizeMiB: 64, allocatedMiB: 48 },
        { name: 'speed', layers: 2, sizeMiB: 32, allocatedMiB: 32 },
      ],
    });
    driver = new QmpDriver(q.socketPath);
  });

  afterAll(async () => {
    await driver?.close();
    await q?.stop();
  });

  it('reads the chain from query-block and finds disks by name (ua-<name>) or target', async () => {
    const d = disk('full');
    const info = await driver.getDisk(DOMAIN, { name: 'full' });
    expect(info).toEqual({
      target: d.target,
      alias: 'ua-full',
      chain: d.chain.map((path, position) => ({ position, path, format: 'qcow2' })),
    });
    expect(await driver.getDisk(DOMAIN, { target: d.target })).toEqual(info);
    expect(await driver.getJob(DOMAIN, d.target)).toBeNull();
    await expectCode(driver.getDisk(DOMAIN, { name: 'missing' }), 'DiskNotFound');
    await expectCode(driver.startPull(DOMAIN, 'vdz', {}), 'DiskNotFound');
    await expectCode(new QmpDriver('/nonexistent/qmp.sock').getJob(DOMAIN, 'vda'), 'Unreachable');
  });

  it('full pull: progress rises, BLOCK_JOB_COMPLETED arrives, one layer remains, data identical', async () => {
    const d = disk('full');
    const ref = await q.reference('full');
    const goal = computeGoal(await driver.getDisk(DOMAIN, { name: 'full' }));
    const events: BlockJobEvent[] = [];
    const sub = driver.watchEvents(DOMAIN, (e) => events.push(e));
    const progress: BlockJobInfo[] = [];
    try {
      await driver.startPull(DOMAIN, d.target, { bandwidth: 24 * MiB });
      await expectCode(driver.startPull(DOMAIN, d.target, {}), 'DiskBusy');
      const result = await waitForPullCompletion(driver, DOMAIN, goal, {
        pollIntervalMs: 200,
        timeoutMs: 60_000,
        onProgress: (j) => progress.push(j),
      });
      expect(result.disk.chain.map((c) => c.path)).toEqual([d.chain[0]]);
      await waitFor('completion event', 5000, () => Promise.resolve(events.some((e) => e.kind === 'completed')), 50);
    } finally {
      sub.stop();
    }
    expect(events.find((e) => e.kind === 'completed')).toEqual({
      domain: DOMAIN,
      target: d.target,
      kind: 'completed',
      jobType: 'Block Pull',
    });
    const curs = progress.map((p) => p.cur);
    expect(curs.length).toBeGreaterThanOrEqual(3);
    expect(curs.at(-1) ?? 0).toBeGreaterThan(curs[0] ?? 0);
    expect(progress.every((p) => p.type === 'Block Pull' && p.end === d.sizeBytes && p.bandwidth === 24 * MiB)).toBe(
      true,
    );
    expect(await compare('full', ref)).toBe(true);
  });

  it('partial pull to the bottom image via base-node: two layers remain, data identical', async () => {
    const d = disk('partial');
    const ref = await q.reference('partial');
    const before = await driver.getDisk(DOMAIN, { name: 'partial' });
    const goal = computeGoal(before, { path: d.chain[2] ?? '' });
    await driver.startPull(DOMAIN, d.target, { base: { path: d.chain[2] ?? '' } });
    const result = await waitForPullCompletion(driver, DOMAIN, goal, { pollIntervalMs: 100, timeoutMs: 60_000 });
    expect(result.disk.chain.map((c) => c.path)).toEqual([d.chain[0], d.chain[2]]);
    expect(await compare('partial', ref)).toBe(true);
  });

  it('pause and resume; abort keeps the copied data; a new pull finishes; data identical', async () => {
    const d = disk('pause');
    const ref = await q.reference('pause');
    const goal = computeGoal(await driver.getDisk(DOMAIN, { name: 'pause' }));
    await driver.startPull(DOMAIN, d.target, { bandwidth: 8 * MiB });
    await waitFor(
      '2 MiB streamed',
      20_000,
      async () => ((await driver.getJob(DOMAIN, d.target))?.cur ?? 0) >= 2 * MiB,
      50,
    );

    await driver.pause(DOMAIN, d.target);
    await waitFor('job paused', 5000, async () => (await driver.getJob(DOMAIN, d.target))?.paused === true, 50);
    const p1 = await driver.getJob(DOMAIN, d.target);
    await sleep(1000);
    const p2 = await driver.getJob(DOMAIN, d.target);
    expect(p2?.cur).toBe(p1?.cur); // no progress while paused
    await driver.resume(DOMAIN, d.target);
    await waitFor(
      'progress after resume',
      10_000,
      async () => ((await driver.getJob(DOMAIN, d.target))?.cur ?? 0) > (p2?.cur ?? 0),
      50,
    );
    expect((await driver.getJob(DOMAIN, d.target))?.paused).toBe(false);

    const events: BlockJobEvent[] = [];
    const sub = driver.watchEvents(DOMAIN, (e) => events.push(e));
    try {
      await driver.abort(DOMAIN, d.target);
      await waitFor('job gone after cancel', 20_000, async () => (await driver.getJob(DOMAIN, d.target)) === null, 50);
      await waitFor(
        'cancel event',
        5000,
        () => Promise.resolve(events.some((e) => e.kind === 'canceled' && e.target === d.target)),
        50,
      );
    } finally {
      sub.stop();
    }
    const afterAbort = await driver.getDisk(DOMAIN, { name: 'pause' });
    expect(afterAbort.chain.map((c) => c.path)).toEqual(d.chain);
    expect(isPullComplete(null, afterAbort, goal)).toBe(false);
    expect(await compare('pause', ref)).toBe(true);

    await driver.startPull(DOMAIN, d.target, {});
    const result = await waitForPullCompletion(driver, DOMAIN, goal, { pollIntervalMs: 100, timeoutMs: 60_000 });
    expect(result.disk.chain).toHaveLength(1);
    expect(await compare('pause', ref)).toBe(true);
  });

  it('speed change while the job runs (block-job-set-speed) takes effect', async () => {
    const d = disk('speed');
    const ref = await q.reference('speed');
    const slow = 4 * MiB;
    const goal = computeGoal(await driver.getDisk(DOMAIN, { name: 'speed' }));
    const t0 = performance.now();
    await driver.startPull(DOMAIN, d.target, { bandwidth: slow });
    await sleep(1000);
    const j1 = await driver.getJob(DOMAIN, d.target);
    const t1 = performance.now();
    expect(j1?.bandwidth).toBe(slow);
    expect(j1?.cur ?? 0).toBeLessThanOrEqual(slow * ((t1 - t0) / 1000 + 0.1) + 1.5 * MiB);
    await driver.setBandwidth(DOMAIN, d.target, 0);
    expect((await driver.getJob(DOMAIN, d.target))?.bandwidth).toBe(0);
    await waitForPullCompletion(driver, DOMAIN, goal, { pollIntervalMs: 50, timeoutMs: 60_000 });
    const restS = (performance.now() - t1) / 1000;
    const remainingAtSlowS = (d.sizeBytes - (j1?.cur ?? 0)) / slow;
    expect(restS).toBeLessThan(remainingAtSlowS / 2);
    expect(await compare('speed', ref)).toBe(true);
  });
});
