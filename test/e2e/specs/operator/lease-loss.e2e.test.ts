/**
 * A leader whose API server stops answering (kube-apiserver SIGSTOPped for 40 s, etcd running):
 * the operator process, with the chart's leader election timings (lease 15 s, renew deadline
 * 10 s, retry 2 s), a running pull that ends while the API server is stopped, and then the
 * container restarted under the same pod name (the Lease identity).
 *
 * Its own control plane, with the API server's audit log on (writes to BlockPulls, their status,
 * Leases, Events and every pods/exec request), so that what reached the API server is read
 * from the API server itself:
 * - once the deposed leader has logged `leader lease lost; exiting`, nothing it wrote takes
 *   effect. Requests it sent while the API server was stopped sit in the kernel's socket
 *   buffers and are read when it runs again: the API server audits them, but their connection
 *   is gone with the process, so it abandons them (no 2xx). A process still alive then (a
 *   graceful stop waiting on those requests) would have them succeed;
 * - the process exits at once (within 1 s of that line);
 * - the restarted process takes its own Lease back without waiting it out: a BlockPull created
 *   when the API server answers again has a status within 5 s, the pull ends Completed with the
 *   one job the first process started, and the data is identical (qemu-img compare).
 * A process that shut down gracefully on a lost Lease (the behaviour before) fails it: it waited
 * for its hung requests until the API server ran again, ~30 s after the loss, and its status
 * patch, sent while the API server was stopped, was then applied (200), a stale Running over a
 * pull that had ended. A restart under another identity fails it too: it waits out the 15 s
 * Lease, its first status came ~17 s after the API server answered.
 * Needs the local control plane binaries (skipped on an external cluster).
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { installCrds, projectCrdFiles } from '../../cluster/crds.ts';
import { readAuditLog, startControlPlane, type AuditEvent, type ControlPlane } from '../../cluster/control-plane.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  OPERATOR_NAMESPACE,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { sleep, waitFor } from '../../support/wait.ts';

const NS = 'bp-lease-loss';
const VMI = 'vm-lease';
const DISK = 'pulled';
/** The Lease identity of both processes: one pod, its container restarted. */
const POD = 'blockpull-operator-0';
const STOP_MS = 40_000;
const GOAL_MS = 5_000;
/** The pull runs about this long, so that it ends while the API server is stopped, before the lease is lost. */
const PULL_MS = 6_000;
const OPERATOR_USER = `system:serviceaccount:${OPERATOR_NAMESPACE}:blockpull-operator`;
const WRITE_VERBS = ['create', 'update', 'patch', 'delete', 'deletecollection'];

const chartValues = parse(
  readFileSync(path.join(REPO_ROOT, 'charts', 'blockpull-operator', 'values.yaml'), 'utf8'),
) as {
  leaderElection: { leaseDurationMs: number; renewDeadlineMs: number; retryPeriodMs: number };
};
const LEADER_ENV = {
  BLOCKPULL_LEASE_DURATION_MS: String(chartValues.leaderElection.leaseDurationMs),
  BLOCKPULL_RENEW_DEADLINE_MS: String(chartValues.leaderElection.renewDeadlineMs),
  BLOCKPULL_RETRY_PERIOD_MS: String(chartValues.leaderElection.retryPeriodMs),
};

const time = (l: Record<string, unknown> | undefined): number => Date.parse(String(l?.['time']));
const auditTime = (e: AuditEvent): number => Date.parse(e.requestReceivedTimestamp);
const describeEvent = (e: AuditEvent): string =>
  `${e.requestReceivedTimestamp} ${e.verb} ${e.objectRef?.resource ?? ''}${e.objectRef?.subresource !== undefined ? `/${e.objectRef.subresource}` : ''} ${e.objectRef?.name ?? ''} -> ${e.responseStatus?.code ?? '?'}`;

describe.skipIf(inject('clusterBinDir') === '')(
  'a leader cut off from a stopped API server (operator process, audit log)',
  () => {
    let cp: ControlPlane | undefined;
    let apiserverPid: number | undefined;
    let tmp: string;
    let registryDir: string;
    let launcher: Launcher | undefined;
    const operators: OperatorProcess[] = [];

    beforeAll(async () => {
      cp = await startControlPlane({
        stateDir: path.join(REPO_ROOT, '.cache', 'e2e-lease-loss'),
        audit: {
          rules: [
            { level: 'Metadata', resources: [{ group: '', resources: ['pods/exec'] }] },
            {
              level: 'Metadata',
              verbs: WRITE_VERBS,
              resources: [
                { group: 'blockpull.dev', resources: ['blockpulls', 'blockpulls/status'] },
                { group: 'coordination.k8s.io', resources: ['leases'] },
                { group: 'events.k8s.io', resources: ['events'] },
                { group: '', resources: ['events'] },
              ],
            },
          ],
        },
      });
      apiserverPid = cp.processes.find((p) => p.name === 'kube-apiserver')?.pid;
      await installCrds(cp, await projectCrdFiles());
      tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-lease-'));
      registryDir = await mkdtemp('/var/tmp/bp-launchers-');
      await ensureNamespace(cp, NS);
      launcher = await startLauncher({
        namespace: NS,
        vmiName: VMI,
        registryDir,
        disks: [{ name: DISK, layers: 3, sizeMiB: 64, allocatedMiB: 13 }],
      });
      await createFakeVmi(cp, { namespace: NS, vmiName: VMI, launcher, disks: [DISK] });
    }, 180_000);

    afterAll(async () => {
      // Never leave a stopped API server behind.
      if (apiserverPid !== undefined) {
        try {
          process.kill(apiserverPid, 'SIGCONT');
        } catch {
          /* gone */
        }
      }
      if (cp !== undefined)
        await cp.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
      for (const op of operators) await op.stop();
      await launcher?.stop();
      await cp?.stop();
      if (registryDir) await rm(registryDir, { recursive: true, force: true });
      if (tmp) await rm(tmp, { recursive: true, force: true });
    }, 180_000);

    it('the deposed leader exits at once and nothing it sent takes effect; its restarted container leads again at once', async () => {
      const kube = cp!;
      const sa = await operatorServiceAccount(kube);
      const apply = async (
        name: string,
        vmiName: string,
        disk: string,
        spec: Record<string, unknown> = {},
      ): Promise<void> => {
        const file = path.join(tmp, `${name}.yaml`);
        await writeFile(file, blockPullManifest({ namespace: NS, name, vmiName, disk, spec }));
        await kube.kubectl(['apply', '-f', file]);
      };
      const env = { ...LEADER_ENV, BLOCKPULL_STATUS_UPDATE_INTERVAL_MS: '1000' };
      const first = await startOperator({ kubeconfig: sa, registryDir, name: POD, env });
      operators.push(first);

      const ref = await launcher!.reference(DISK);
      const pullBytes = launcher!.disks[0]!.pullBytes;
      expect(pullBytes).toBeGreaterThan(0);
      const bandwidth = Math.ceil(pullBytes / (PULL_MS / 1000));
      await apply('pull', VMI, DISK, { bandwidth });
      await waitFor('pull Running with progress', 60_000, async () => {
        const bp = await getBlockPull(kube, NS, 'pull');
        return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0 ? bp : undefined;
      });

      // The API server stops answering; the pull ends meanwhile.
      process.kill(apiserverPid!, 'SIGSTOP');
      const tStop = Date.now();
      let exitedAt: number | undefined;
      void first.exited.then(() => (exitedAt = Date.now()));
      await sleep(STOP_MS);
      const jobAfterStop = await new VirshDriver(launcher!.runner, launcher!.uri).getJob(
        launcher!.domain,
        launcher!.disks[0]!.target,
      );
      process.kill(apiserverPid!, 'SIGCONT');
      const tCont = Date.now();
      await waitFor(
        'API server answers again',
        30_000,
        async () => (await kube.kubectlResult(['get', '--raw', '/readyz'])).exitCode === 0 || undefined,
        100,
      );
      const tUp = Date.now();

      // The deposed leader: lease lost within the renew deadline (+ one retry), then gone.
      const lost = first.find('leader lease lost; exiting')[0];
      expect(lost, 'lease-lost line').toBeDefined();
      expect(await Promise.race([first.exited, sleep(5_000).then(() => 'still running')])).toBe(1);
      const tLost = time(lost);
      expect(exitedAt).toBeDefined();
      expect(exitedAt! - tLost).toBeLessThan(1_000);
      expect(tLost - tStop).toBeLessThan(
        chartValues.leaderElection.renewDeadlineMs + 2 * chartValues.leaderElection.retryPeriodMs + 1_000,
      );
      // The job ended while nobody could write its status.
      expect(jobAfterStop).toBeNull();
      // What the first process sent before it exited did not take effect: its Running status stands.
      const stale = await getBlockPull(kube, NS, 'pull');
      expect(stale?.status?.phase).toBe('Running');

      // The container restarts under the same pod name; a new BlockPull asks for a status.
      const second = await startOperator({ kubeconfig: sa, registryDir, name: POD, env, waitReady: false });
      operators.push(second);
      await apply('fresh', 'no-such-vmi', 'd');
      await waitFor(
        'status of "fresh"',
        60_000,
        async () => (await getBlockPull(kube, NS, 'fresh'))?.status?.phase !== undefined || undefined,
        100,
      );
      const tFresh = Date.now();
      const done = await waitForPhase(kube, NS, 'pull', ['Completed'], 60_000);
      const tDone = Date.now();

      const writes = (await readAuditLog(kube.auditLogPath!)).filter(
        (e) => e.user.username === OPERATOR_USER && WRITE_VERBS.includes(e.verb),
      );
      // The first process's writes (received before the second one started) still being served
      // after the lease was lost: received before (hung in the stopped API server) or after.
      const ofFirst = writes.filter((e) => auditTime(e) < time(second.lines[0]));
      const endedAfterLoss = ofFirst.filter((e) => Date.parse(e.stageTimestamp) > tLost);
      const receivedAfterLoss = endedAfterLoss.filter((e) => auditTime(e) > tLost);
      const tookEffect = endedAfterLoss.filter((e) => (e.responseStatus?.code ?? 0) < 300);
      const execs = (await readAuditLog(kube.auditLogPath!)).filter((e) => e.objectRef?.subresource === 'exec');
      console.log(
        [
          `SIGSTOP -> 'leader lease lost; exiting': ${tLost - tStop} ms; lease lost -> exit: ${exitedAt! - tLost} ms`,
          `SIGCONT -> API answers: ${tUp - tCont} ms; API answers -> status of a new BlockPull after the restart: ${tFresh - tUp} ms; -> pull Completed: ${tDone - tUp} ms`,
          `writes of the first process answered after its lease loss: ${endedAfterLoss.length} (received after it: ${receivedAfterLoss.length}), taking effect: ${tookEffect.length}`,
          ...endedAfterLoss.map((e) => `  ${describeEvent(e)} (answered ${e.stageTimestamp})`),
        ].join('\n'),
      );
      expect(tookEffect.map(describeEvent)).toEqual([]);
      // Only what was sent before the API server ran again: nothing was sent after the process ended.
      for (const e of receivedAfterLoss) expect(auditTime(e), describeEvent(e)).toBeGreaterThanOrEqual(tCont - 100);
      expect(execs).toEqual([]); // local transport: no pods/exec at all

      expect(tFresh - tUp).toBeLessThan(GOAL_MS);
      expect(done.status?.reason).toBe('Completed');
      expect(done.status?.attempts).toBe(1);
      const started = (op: OperatorProcess): number =>
        op.find('block pull started').filter((l) => l['blockpull'] === `${NS}/pull`).length;
      expect(started(first)).toBe(1);
      expect(started(second)).toBe(0);
      expect(await launcher!.compare(DISK, ref)).toBe(true);
    }, 240_000);
  },
);
