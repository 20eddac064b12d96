/**
 * Full disks, end to end: the real API server, the operator process and a
 * launcher stand-in whose disks have their top image on a small tmpfs of its own (topFsMiB).
 *
 * - short from the start: 16 MiB free, ~130 MiB to pull -> Pending/InsufficientSpace with both
 *   figures, no job started, the filesystem untouched; re-checked with backoff: once the
 *   filesystem is grown the pull starts and completes with identical data;
 * - space taken after the start: the job fails on ENOSPC -> QEMU's error text in status.message
 *   and in a JobFailed Event, no immediate restart (backoff, then the pre-flight holds it as
 *   InsufficientSpace), QEMU still runs and the domain is not paused on an I/O error; once space
 *   is freed it completes;
 * - the launcher pod's ephemeral-storage limit: short under the limit -> InsufficientSpace naming
 *   the limit; a pod with a larger limit -> it completes.
 */
import { run } from '../../support/process.ts';
import { mkdtemp, rm, statfs, unlink, writeFile } from 'node:fs/promises';
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
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { waitFor } from '../../support/wait.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';

const NS = 'bp-space';
const VMI = 'vm-space';
const MiB = 1024 * 1024;
const DISKS = ['short', 'later', 'eph'];

async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

describe('full disks: pre-flight space check, I/O errors reported (operator process, launcher stand-in)', () => {
  let kube: ClusterClient;
  let registryDir: string;
  let tmp: string;
  let launcher: Launcher | undefined;
  let operator: OperatorProcess | undefined;
  let driver: VirshDriver;

  const disk = (name: string) => {
    const d = launcher?.disks.find((x) => x.name === name);
    if (d?.topFs === undefined) throw new Error(`no disk ${name} with a top filesystem`);
    return d as typeof d & { topFs: string };
  };
  const apply = async (name: string, diskName: string, spec: Record<string, unknown> = {}): Promise<void> => {
    const file = path.join(tmp, `${name}.yaml`);
    await writeFile(file, blockPullManifest({ namespace: NS, name, vmiName: VMI, disk: diskName, spec }));
    await kube.kubectl(['apply', '-f', file]);
  };
  const startsFor = (name: string): number =>
    operator!.find('block pull started').filter((l) => l['blockpull'] === `${NS}/${name}`).length;
  const checksFor = (name: string): Record<string, unknown>[] =>
    operator!.find('pre-flight space check').filter((l) => l['blockpull'] === `${NS}/${name}`);
  const eventsOf = async (name: string): Promise<{ reason: string; message: string; type: string }[]> => {
    const out = await kube.kubectl([
      'get',
      'events',
      '-n',
      NS,
      '--field-selector',
      `involvedObject.name=${name}`,
      '-o',
      'json',
    ]);
    return (JSON.parse(out) as { items: { reason: string; message: string; type: string }[] }).items;
  };
  const domstate = async (): Promise<string> => {
    const r = await launcher!.runner.run(
      ['virsh', '-q', '-c', launcher!.uri, 'domstate', '--reason', launcher!.domain],
      { timeoutMs: 30_000 },
    );
    return r.stdout.trim();
  };

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-space-'));
    registryDir = await mkdtemp('/var/tmp/bp-launchers-');
    const sa = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    launcher = await startLauncher({
      namespace: NS,
      vmiName: VMI,
      registryDir,
      disks: [
        // ~130 MiB to pull into a 16 MiB filesystem.
        { name: 'short', layers: 3, sizeMiB: 256, allocatedMiB: 129, topFsMiB: 16 },
        // ~64 MiB to pull into 160 MiB: fits at the start.
        { name: 'later', layers: 3, sizeMiB: 128, allocatedMiB: 65, topFsMiB: 160 },
        // ~32 MiB to pull into 128 MiB: fits the filesystem; the pod's limit decides.
        { name: 'eph', layers: 3, sizeMiB: 64, allocatedMiB: 33, topFsMiB: 128 },
      ],
    });
    driver = new VirshDriver(launcher.runner, launcher.uri);
    await createFakeVmi(kube, { namespace: NS, vmiName: VMI, launcher, disks: DISKS });
    // Margins: 1 MiB, or the default 10 % of the top filesystem when larger.
    operator = await startOperator({
      kubeconfig: sa,
      registryDir,
      name: 'e2e-space',
      env: { BLOCKPULL_SPACE_MARGIN_MIB: '1' },
    });
  });

  afterAll(async () => {
    if (kube !== undefined)
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    await operator?.stop();
    await launcher?.stop();
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('the driver measures inside the launcher: bytes to pull (upper bound), free space, mount point and usage', async () => {
    const d = disk('short');
    const info = await driver.getSpace(launcher!.domain, {
      disk: await driver.getDisk(launcher!.domain, { name: 'short' }),
      measureUsage: true,
    });
    expect(info.kind).toBe('measured');
    if (info.kind !== 'measured') return;
    expect(info.topPath).toBe(d.chain[0]);
    // An upper bound of what a full pull copies, within the backing files' qcow2 overhead.
    expect(info.pullBytes).toBeGreaterThanOrEqual(d.pullBytes);
    expect(info.pullBytes).toBeLessThan(d.pullBytes + 8 * MiB);
    expect(info.availableBytes).toBe(await freeBytes(d.topFs));
    const fs = await statfs(d.topFs);
    expect(info.totalBytes).toBe(fs.blocks * fs.bsize);
    expect(info.usage?.mountPoint).toBe(d.topFs);
    expect(info.usage?.usedBytes).toBeGreaterThan(0);
    expect(info.usage?.usedBytes).toBeLessThan(16 * MiB);
    console.log(
      `pre-flight figures for 'short': pull <= ${info.pullBytes} bytes (stand-in's own count ${d.pullBytes}), ${info.availableBytes} bytes free, ${info.usage?.usedBytes} used`,
    );
  });

  it('short from the start: Pending/InsufficientSpace with both figures, no job, nothing written; re-checked with backoff, then completes', async () => {
    const d = disk('short');
    const ref = await launcher!.reference('short');
    const freeBefore = await freeBytes(d.topFs);
    await apply('short', 'short');
    const bp = await waitForPhase(kube, NS, 'short', ['Pending'], 30_000).then(() =>
      waitFor('InsufficientSpace', 30_000, async () => {
        const b = await getBlockPull(kube, NS, 'short');
        return b?.status?.reason === 'InsufficientSpace' ? b : undefined;
      }),
    );
    const message = bp.status?.message ?? '';
    console.log(`InsufficientSpace message: ${message}`);
    expect(message).toContain(`${freeBefore} bytes`); // the free space, as the test measures it
    const pulled = /up to .*?\((\d+) bytes\)/.exec(message);
    expect(Number(pulled?.[1])).toBeGreaterThanOrEqual(d.pullBytes); // the data to pull
    expect(message).toContain(d.chain[0]);
    expect(startsFor('short')).toBe(0);
    expect(await driver.getJob(launcher!.domain, d.target)).toBeNull();
    expect(await freeBytes(d.topFs)).toBe(freeBefore);
    const events = await eventsOf('short');
    expect(
      events.some(
        (e) => e.reason === 'InsufficientSpace' && e.type === 'Warning' && e.message.includes(`${freeBefore} bytes`),
      ),
    ).toBe(true);

    // Re-checked with backoff: the measurements are spaced 5 s, 10 s, ... (not on every wake-up).
    await waitFor('three checks', 60_000, () => Promise.resolve(checksFor('short').length >= 3 || undefined), 500);
    const times = checksFor('short').map((l) => Date.parse(String(l['time'])));
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    console.log(`pre-flight checks of 'short' spaced ${gaps.join(', ')} ms`);
    expect(gaps[0]).toBeGreaterThanOrEqual(4_500);
    expect(gaps[1]).toBeGreaterThanOrEqual(9_000);
    expect(startsFor('short')).toBe(0);

    // Space appears (the filesystem grows): the next check starts the pull.
    await run(['mount', '-o', 'remount,size=512m', d.topFs]);
    const done = await waitForPhase(kube, NS, 'short', ['Completed'], 120_000);
    expect(done.status?.reason).toBe('Completed');
    expect(done.status?.attempts).toBe(1);
    expect(startsFor('short')).toBe(1);
    expect(await launcher!.compare('short', ref)).toBe(true);
  });

  it('space taken after the start: the I/O error reaches status.message and an Event, no hot retry, the VM keeps running; completes once space is back', async () => {
    const d = disk('later');
    const ref = await launcher!.reference('later');
    const stateBefore = await domstate();
    await apply('later', 'later', { bandwidth: '4Mi', maxRetries: 3 });
    await waitFor('later Running with progress', 60_000, async () => {
      const b = await getBlockPull(kube, NS, 'later');
      return b?.status?.phase === 'Running' && (b.status.progress?.currentBytes ?? 0) > 0 ? b : undefined;
    });
    // Someone else fills the filesystem while the job runs.
    const filler = path.join(d.topFs, 'filler');
    // The running job keeps writing meanwhile: measure again when the filesystem moved under us.
    for (let tries = 1; ; tries++) {
      const free = await freeBytes(d.topFs);
      try {
        await run(['fallocate', '-l', String(free - 64 * 1024), filler]);
        break;
      } catch (err) {
        if (tries >= 5 || !/No space left/.test(String(err))) throw err;
        await rm(filler, { force: true });
      }
    }
    await patchBandwidth('later', '64Mi');
    const failedAt = Date.now();
    const jf = await waitFor('JobFailed with the I/O error', 60_000, async () => {
      const b = await getBlockPull(kube, NS, 'later');
      return b?.status?.reason === 'JobFailed' || b?.status?.reason === 'InsufficientSpace' ? b : undefined;
    });
    console.log(`after the job failed: ${jf.status?.reason}: ${jf.status?.message}`);
    expect(jf.status?.message).toMatch(/No space left on device/);
    const events = await eventsOf('later');
    const failedEvent = events.find((e) => e.reason === 'JobFailed');
    expect(failedEvent?.type).toBe('Warning');
    expect(failedEvent?.message).toMatch(/No space left on device/);

    // No hot retry: within the backoff nothing starts; then the pre-flight holds it.
    const held = await waitFor('InsufficientSpace after the backoff', 30_000, async () => {
      const b = await getBlockPull(kube, NS, 'later');
      return b?.status?.reason === 'InsufficientSpace' ? b : undefined;
    });
    console.log(`held ${Date.now() - failedAt} ms after the failure: ${held.status?.message}`);
    expect(held.status?.message).toMatch(/No space left on device/);
    expect(startsFor('later')).toBe(1);
    expect(held.status?.attempts).toBe(1);
    expect(held.status?.retries).toBe(1);
    // The VM: QEMU still runs, not paused on an I/O error (the stand-in's CPUs are paused by the user from the start).
    expect(await domstate()).toBe(stateBefore);
    expect(await domstate()).not.toMatch(/ioerror/);

    // Space comes back: it resumes from what was streamed and completes.
    await unlink(filler);
    const done = await waitForPhase(kube, NS, 'later', ['Completed'], 120_000);
    expect(done.status?.attempts).toBe(2);
    expect(startsFor('later')).toBe(2);
    expect(await launcher!.compare('later', ref)).toBe(true);
  });

  it("the launcher pod's ephemeral-storage limit: short under it -> InsufficientSpace naming the limit; a larger limit -> completes", async () => {
    const recreatePod = async (limit: string): Promise<void> => {
      await kube.kubectl(['delete', 'pod', launcher!.podName, '-n', NS, '--grace-period=0', '--force', '--wait=true']);
      await createFakeVmi(kube, {
        namespace: NS,
        vmiName: VMI,
        launcher: launcher!,
        disks: DISKS,
        computeLimits: { 'ephemeral-storage': limit },
      });
    };
    const ref = await launcher!.reference('eph');
    await recreatePod('20Mi');
    await apply('eph', 'eph');
    const held = await waitFor('InsufficientSpace under the limit', 60_000, async () => {
      const b = await getBlockPull(kube, NS, 'eph');
      return b?.status?.reason === 'InsufficientSpace' ? b : undefined;
    });
    console.log(`ephemeral-storage: ${held.status?.message}`);
    expect(held.status?.message).toMatch(/ephemeral-storage limit of 20\.0 MiB \(20971520 bytes\)/);
    expect(held.status?.message).toContain(disk('eph').topFs);
    expect(startsFor('eph')).toBe(0);
    await recreatePod('1Gi');
    const done = await waitForPhase(kube, NS, 'eph', ['Completed'], 120_000);
    expect(done.status?.attempts).toBe(1);
    expect(await launcher!.compare('eph', ref)).toBe(true);
  });

  async function patchBandwidth(name: string, bandwidth: string): Promise<void> {
    await kube.kubectl([
      'patch',
      'blockpull',
      name,
      '-n',
      NS,
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { bandwidth } }),
    ]);
  }
});
