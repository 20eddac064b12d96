/**
 * The virsh driver against a real libvirt session daemon (run as the non-root QEMU user) and a
 * real QEMU (TCG, CPUs paused). Data is checked with qemu-img compare against references made
 * before each pull. No Kubernetes control plane is needed.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { computeGoal } from '../../../../operator/src/hypervisor/chain.ts';
import { isPullComplete } from '../../../../operator/src/hypervisor/completion.ts';
import { waitForPullCompletion } from '../../blockjob/wait-for-pull.ts';
import { HypervisorError, type HypervisorErrorCode } from '../../../../operator/src/hypervisor/errors.ts';
import { LocalRunner } from '../../../../operator/src/hypervisor/local-runner.ts';
import type { BlockJobEvent, BlockJobInfo } from '../../../../operator/src/hypervisor/types.ts';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { referenceWithWrites, startLauncher, type Launcher, type LauncherDisk } from '../../launcher/launcher.ts';
import { sleep, waitFor } from '../../support/wait.ts';

const MiB = 1024 * 1024;

/** Running; a zombie (this machine's init reaps late) counts as gone. */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}
/** QEMU's rate limiter lets one 100 ms slice through before it throttles. */
const RATELIMIT_SLICE_S = 0.1;

async function expectCode(p: Promise<unknown>, code: HypervisorErrorCode): Promise<HypervisorError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(HypervisorError);
  expect((err as HypervisorError).code, (err as Error).message).toBe(code);
  return err as HypervisorError;
}

describe('virsh driver on a real libvirt session daemon', () => {
  let l: Launcher;
  let driver: VirshDriver;
  const disk = (name: string): LauncherDisk => {
    const d = l.disks.find((x) => x.name === name);
    if (d === undefined) throw new Error(`no disk ${name}`);
    return d;
  };

  beforeAll(async () => {
    l = await startLauncher({
      namespace: 'hv',
      vmiName: 'vm-a',
      disks: [
        { name: 'full', layers: 3, sizeMiB: 64, allocatedMiB: 48 },
        { name: 'partial', layers: 3, sizeMiB: 64, allocatedMiB: 48 },
        { name: 'bw', layers: 2, sizeMiB: 32, allocatedMiB: 32 },
        { name: 'bwchange', layers: 2, sizeMiB: 32, allocatedMiB: 32 },
        { name: 'abort', layers: 3, sizeMiB: 64, allocatedMiB: 48 },
        { name: 'guest', layers: 3, sizeMiB: 64, allocatedMiB: 48 },
        { name: 'busy', layers: 2, sizeMiB: 32, allocatedMiB: 32 },
      ],
    });
    driver = new VirshDriver(l.runner, l.uri);
  });

  afterAll(async () => {
    await l?.stop();
  });

  it('runs the daemon and QEMU as the non-root launcher user and reads each chain from the domain XML', async () => {
    expect(l.uid).not.toBe(0);
    expect(l.domain).toBe('hv_vm-a');
    const info = await driver.getDisk(l.domain, { name: 'full' });
    expect(info.alias).toBe('ua-full');
    expect(info.target).toBe(disk('full').target);
    expect(info.chain.map((c) => c.path)).toEqual(disk('full').chain);
    expect(info.chain.map((c) => c.position)).toEqual([0, 1, 2]);
    expect(info.chain.every((c) => c.format === 'qcow2' && typeof c.index === 'number')).toBe(true);
    expect(new Set(info.chain.map((c) => c.index)).size).toBe(3);
    expect(await driver.getDisk(l.domain, { target: info.target })).toEqual(info);
    expect(await driver.getJob(l.domain, info.target)).toBeNull();
  });

  it('full pull of a 3-layer chain: progress rises, the job ends, one layer remains, data identical', async () => {
    const d = disk('full');
    const ref = await l.reference('full');
    const before = await driver.getDisk(l.domain, { name: 'full' });
    const goal = computeGoal(before);
    expect(goal.expectedPaths).toEqual([d.chain[0]]);
    expect(isPullComplete(null, before, goal)).toBe(false);

    const events: BlockJobEvent[] = [];
    const sub = driver.watchEvents(l.domain, (e) => events.push(e));
    await sleep(300); // let `virsh event` connect before the job can end
    const progress: BlockJobInfo[] = [];
    try {
      await driver.startPull(l.domain, d.target, { bandwidth: 24 * MiB });
      const running = await driver.getJob(l.domain, d.target);
      expect(running?.type).toBe('Block Pull');
      expect(isPullComplete(running, before, goal)).toBe(false);
      const result = await waitForPullCompletion(driver, l.domain, goal, {
        pollIntervalMs: 200,
        timeoutMs: 60_000,
        onProgress: (j) => progress.push(j),
      });
      expect(result.disk.chain).toHaveLength(1);
      expect(result.disk.chain[0]?.path).toBe(d.chain[0]);
      await waitFor(
        'completion event',
        5000,
        () => Promise.resolve(events.some((e) => e.target === d.target && e.kind === 'completed')),
        100,
      );
    } finally {
      sub.stop();
    }
    const curs = progress.map((p) => p.cur);
    expect(curs.length).toBeGreaterThanOrEqual(3);
    expect(curs.every((c, i) => i === 0 || c >= (curs[i - 1] ?? 0))).toBe(true);
    expect(curs.at(-1) ?? 0).toBeGreaterThan(curs[0] ?? 0);
    expect(progress.every((p) => p.end === d.sizeBytes && p.bandwidth === 24 * MiB)).toBe(true);
    expect(events.find((e) => e.target === d.target)).toMatchObject({
      domain: l.domain,
      kind: 'completed',
      jobType: 'Block Pull',
    });
    expect(await driver.getJob(l.domain, d.target)).toBeNull();
    expect(isPullComplete(null, await driver.getDisk(l.domain, { name: 'full' }), goal)).toBe(true);
    expect(await l.compare('full', ref)).toBe(true);
  });

  it('partial pull down to the bottom image: two layers remain, data identical', async () => {
    const d = disk('partial');
    const ref = await l.reference('partial');
    const before = await driver.getDisk(l.domain, { name: 'partial' });
    await expectCode(driver.startPull(l.domain, d.target, { base: { position: 0 } }), 'InvalidBase');
    await expectCode(driver.startPull(l.domain, d.target, { base: { position: 7 } }), 'InvalidBase');
    await expectCode(driver.startPull(l.domain, d.target, { base: { path: '/nonexistent.qcow2' } }), 'InvalidBase');
    const goal = computeGoal(before, { position: 2 });
    expect(goal.expectedPaths).toEqual([d.chain[0], d.chain[2]]);
    await driver.startPull(l.domain, d.target, { base: { position: 2 } });
    const result = await waitForPullCompletion(driver, l.domain, goal, { pollIntervalMs: 200, timeoutMs: 60_000 });
    expect(result.disk.chain.map((c) => c.path)).toEqual([d.chain[0], d.chain[2]]);
    expect(await l.compare('partial', ref)).toBe(true);
    // The middle layer's data now lives in the top: the top holds more than its own 1 MiB.
    expect(await l.topDataBytes('partial')).toBeGreaterThan(8 * MiB);
  });

  it('a throttled pull of N bytes takes at least N/limit', async () => {
    const d = disk('bw');
    const ref = await l.reference('bw');
    const limit = 16 * MiB;
    const goal = computeGoal(await driver.getDisk(l.domain, { name: 'bw' }));
    const t0 = performance.now();
    await driver.startPull(l.domain, d.target, { bandwidth: limit });
    const job = await driver.getJob(l.domain, d.target);
    expect(job?.bandwidth).toBe(limit);
    await waitForPullCompletion(driver, l.domain, goal, { pollIntervalMs: 50, timeoutMs: 60_000 });
    const elapsedS = (performance.now() - t0) / 1000;
    const minS = d.pullBytes / limit - RATELIMIT_SLICE_S;
    console.log(
      `throttled pull: ${d.pullBytes / MiB} MiB at ${limit / MiB} MiB/s took ${elapsedS.toFixed(2)} s (lower bound ${minS.toFixed(2)} s)`,
    );
    expect(d.pullBytes).toBeGreaterThanOrEqual(30 * MiB);
    expect(elapsedS).toBeGreaterThanOrEqual(minS);
    expect(await l.compare('bw', ref)).toBe(true);
  });

  it('bandwidth changed while the job runs takes effect', async () => {
    const d = disk('bwchange');
    const ref = await l.reference('bwchange');
    const slow = 4 * MiB;
    const fast = 64 * MiB;
    const goal = computeGoal(await driver.getDisk(l.domain, { name: 'bwchange' }));
    const t0 = performance.now();
    await driver.startPull(l.domain, d.target, { bandwidth: slow });
    await sleep(1500);
    const j1 = await driver.getJob(l.domain, d.target);
    const t1 = performance.now();
    expect(j1).not.toBeNull();
    expect(j1?.bandwidth).toBe(slow);
    const cur1 = j1?.cur ?? 0;
    // Throttled: no more than the limit allows (+ one slice, + 1 MiB the top holds and is skipped, + one 512 KiB chunk).
    expect(cur1).toBeLessThanOrEqual(slow * ((t1 - t0) / 1000 + RATELIMIT_SLICE_S) + 1.5 * MiB);
    expect(cur1).toBeGreaterThan(0);
    await driver.setBandwidth(l.domain, d.target, fast);
    const j2 = await driver.getJob(l.domain, d.target);
    expect(j2?.bandwidth).toBe(fast);
    await waitForPullCompletion(driver, l.domain, goal, { pollIntervalMs: 50, timeoutMs: 60_000 });
    const afterChangeS = (performance.now() - t1) / 1000;
    const remainingAtSlowS = (d.sizeBytes - cur1) / slow;
    console.log(
      `bandwidth change: ${(cur1 / MiB).toFixed(1)} MiB at ${slow / MiB} MiB/s, rest took ${afterChangeS.toFixed(2)} s (would be ${remainingAtSlowS.toFixed(1)} s at the old limit)`,
    );
    expect(afterChangeS).toBeLessThan(remainingAtSlowS / 2);
    expect(await l.compare('bwchange', ref)).toBe(true);
  });

  it('abort mid-job keeps the copied data; a new pull finishes from there; data identical', async () => {
    const d = disk('abort');
    const ref = await l.reference('abort');
    const before = await driver.getDisk(l.domain, { name: 'abort' });
    const goal = computeGoal(before);
    const topBefore = await l.topDataBytes('abort');
    await driver.startPull(l.domain, d.target, { bandwidth: 8 * MiB });
    const waiter = waitForPullCompletion(driver, l.domain, goal, { pollIntervalMs: 200, timeoutMs: 60_000 });
    const waiterOutcome = waiter.then(
      () => 'completed',
      (e: unknown) => e,
    );
    await waitFor(
      '8 MiB streamed',
      20_000,
      async () => ((await driver.getJob(l.domain, d.target))?.cur ?? 0) >= 8 * MiB,
      100,
    );
    await driver.abort(l.domain, d.target);
    await waitFor('job gone after abort', 20_000, async () => (await driver.getJob(l.domain, d.target)) === null, 100);
    const outcome = await waiterOutcome;
    expect(outcome).toBeInstanceOf(HypervisorError);
    expect((outcome as HypervisorError).code).toBe('JobCanceled');
    const afterAbort = await driver.getDisk(l.domain, { name: 'abort' });
    expect(afterAbort.chain.map((c) => c.path)).toEqual(d.chain);
    expect(isPullComplete(null, afterAbort, goal)).toBe(false);
    const topAfterAbort = await l.topDataBytes('abort');
    expect(topAfterAbort).toBeGreaterThanOrEqual(topBefore + 6 * MiB);
    expect(await l.compare('abort', ref)).toBe(true); // the partial copy changed nothing the guest sees

    await driver.startPull(l.domain, d.target, {});
    const result = await waitForPullCompletion(driver, l.domain, goal, { pollIntervalMs: 200, timeoutMs: 60_000 });
    expect(result.disk.chain).toHaveLength(1);
    expect(await l.compare('abort', ref)).toBe(true);
  });

  it('guest-like writes during the pull land: final image = reference + those writes', async () => {
    const d = disk('guest');
    const ref = await l.reference('guest');
    const goal = computeGoal(await driver.getDisk(l.domain, { name: 'guest' }));
    await driver.startPull(l.domain, d.target, { bandwidth: 16 * MiB });
    await waitFor(
      '4 MiB streamed',
      20_000,
      async () => ((await driver.getJob(l.domain, d.target))?.cur ?? 0) >= 4 * MiB,
      100,
    );
    const writes = [
      { offset: 2 * MiB, length: MiB, pattern: 0x77 }, // already streamed
      { offset: 40 * MiB + 4096, length: 256 * 1024, pattern: 0x78 }, // not yet streamed, unaligned
      { offset: 60 * MiB, length: MiB, pattern: 0x79 }, // never allocated in the chain
    ];
    for (const w of writes) await l.guestWrite('guest', w.offset, w.length, w.pattern);
    expect(await driver.getJob(l.domain, d.target)).not.toBeNull(); // the writes happened during the job
    const result = await waitForPullCompletion(driver, l.domain, goal, { pollIntervalMs: 200, timeoutMs: 60_000 });
    expect(result.disk.chain).toHaveLength(1);
    const expected = await referenceWithWrites(ref, writes);
    expect(await l.compare('guest', expected)).toBe(true);
    expect(await l.compare('guest', ref)).toBe(false); // the comparison can fail
  });

  it('typed errors: busy disk, missing domain, missing disk, unreachable daemon', async () => {
    const d = disk('busy');
    await driver.startPull(l.domain, d.target, { bandwidth: MiB });
    try {
      const busy = await expectCode(driver.startPull(l.domain, d.target, {}), 'DiskBusy');
      expect(busy.message).toMatch(/already in active block job/);
      await expectCode(driver.startPull(l.domain, d.target, { base: { position: 1 } }), 'DiskBusy');
    } finally {
      await driver.abort(l.domain, d.target);
    }
    await waitFor('busy job gone', 20_000, async () => (await driver.getJob(l.domain, d.target)) === null, 100);

    await expectCode(driver.getDisk('hv_missing', { name: 'busy' }), 'DomainNotFound');
    await expectCode(driver.getJob('hv_missing', 'vda'), 'DomainNotFound');
    await expectCode(driver.startPull('hv_missing', 'vda', {}), 'DomainNotFound');
    await expectCode(driver.getDisk(l.domain, { name: 'missing' }), 'DiskNotFound');
    await expectCode(driver.getDisk(l.domain, { target: 'vdz' }), 'DiskNotFound');
    await expectCode(driver.startPull(l.domain, 'vdz', {}), 'DiskNotFound');
    await expectCode(driver.getJob(l.domain, 'vdz'), 'DiskNotFound');

    const nowhere = new VirshDriver(l.runner, 'qemu+unix:///session?socket=/nonexistent/libvirt-sock');
    await expectCode(nowhere.getJob(l.domain, 'vda'), 'Unreachable');
    const noVirsh = new VirshDriver(new LocalRunner(), l.uri, { virsh: '/nonexistent/virsh' });
    await expectCode(noVirsh.getJob(l.domain, 'vda'), 'Unreachable');
  });
});

describe('virsh driver across a libvirt daemon restart', () => {
  let l: Launcher | undefined;
  afterAll(async () => {
    await l?.stop();
  });

  it('the daemon is killed and restarted mid-job: the driver then reports the running job and its completion', async () => {
    const registryDir = await mkdtemp(path.join(tmpdir(), 'bp-registry-'));
    l = await startLauncher({
      namespace: 'hv',
      vmiName: 'vm-restart',
      podName: 'virt-launcher-vm-restart-abcde',
      registryDir,
      disks: [{ name: 'root', layers: 3, sizeMiB: 64, allocatedMiB: 48 }],
    });
    const launcher = l;
    // Registered for the operator's local transport.
    const regPath = path.join(registryDir, 'hv.virt-launcher-vm-restart-abcde.json');
    expect(launcher.registrationPath).toBe(regPath);
    expect(JSON.parse(await readFile(regPath, 'utf8'))).toMatchObject({
      namespace: 'hv',
      pod: 'virt-launcher-vm-restart-abcde',
      uri: launcher.uri,
      uid: launcher.uid,
      gid: launcher.gid,
    });
    const driver = new VirshDriver(launcher.runner, launcher.uri, { timeoutMs: 10_000 });
    const d = launcher.disks[0];
    if (d === undefined) throw new Error('no disk');
    const ref = await launcher.reference('root');
    const goal = computeGoal(await driver.getDisk(launcher.domain, { name: 'root' }));
    await driver.startPull(launcher.domain, d.target, { bandwidth: 8 * MiB });
    // The waiter runs across the outage: events stream restarts, polling tolerates Unreachable.
    const waiter = waitForPullCompletion(driver, launcher.domain, goal, {
      pollIntervalMs: 200,
      timeoutMs: 90_000,
      unreachableGraceMs: 60_000,
    });
    const events: BlockJobEvent[] = [];
    const sub = driver.watchEvents(launcher.domain, (e) => events.push(e));
    await waitFor(
      '4 MiB streamed',
      20_000,
      async () => ((await driver.getJob(launcher.domain, d.target))?.cur ?? 0) >= 4 * MiB,
      100,
    );
    const beforeKill = await driver.getJob(launcher.domain, d.target);

    await launcher.killDaemon();
    await expectCode(driver.getJob(launcher.domain, d.target), 'Unreachable');
    await sleep(1000);
    await launcher.startDaemon();

    const afterRestart = await driver.getJob(launcher.domain, d.target);
    if (afterRestart !== null) {
      // Still running: libvirt re-attached to the job QEMU kept running.
      expect(afterRestart.type).toBe('Block Pull');
      expect(afterRestart.cur).toBeGreaterThanOrEqual(beforeKill?.cur ?? 0);
      expect(afterRestart.end).toBe(d.sizeBytes);
    } else {
      // Finished while the daemon was down: then the chain must already be at the goal.
      expect(isPullComplete(null, await driver.getDisk(launcher.domain, { name: 'root' }), goal)).toBe(true);
    }
    console.log(
      `after restart: ${afterRestart === null ? 'job already complete' : `job running, cur ${afterRestart.cur} (before kill ${beforeKill?.cur})`}`,
    );
    const result = await waiter;
    expect(result.disk.chain.map((c) => c.path)).toEqual([d.chain[0]]);
    expect(await driver.getJob(launcher.domain, d.target)).toBeNull();
    // The event subscription survived the outage (stream restarted, polling meanwhile).
    await waitFor(
      'completion event after the restart',
      10_000,
      () => Promise.resolve(events.some((e) => e.target === d.target && e.kind === 'completed')),
      100,
    );
    sub.stop();
    expect(await launcher.compare('root', ref)).toBe(true);

    // stop() removes everything it started: QEMU, the daemon, the directories, the registration.
    const qemuPid = Number(
      (
        await readFile(path.join(launcher.dir, 'run', 'libvirt', 'qemu', 'run', `${launcher.domain}.pid`), 'utf8')
      ).trim(),
    );
    expect(running(qemuPid)).toBe(true);
    await launcher.stop();
    l = undefined;
    expect(running(qemuPid)).toBe(false);
    expect(existsSync(launcher.dir)).toBe(false);
    expect(existsSync(regPath)).toBe(false);
    await rm(registryDir, { recursive: true, force: true });
  });
});
