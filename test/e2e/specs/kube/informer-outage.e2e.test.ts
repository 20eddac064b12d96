/**
 * Watches after an API server outage: the operator process (its informers
 * with their watchdogs) against the e2e control plane, whose kube-apiserver is stopped for 20 s
 * (long enough for the restart backoff to grow to 16 s) and started again with the same flags
 * (etcd keeps its data). Measured from the moment /readyz answers 200 again:
 * - a BlockPull created after the recovery gets its first status;
 * - a VMI change made after the recovery is seen (the BlockPull naming it says the new phase);
 * - a BlockPull that nothing changes is reconciled again (its reconciles failed during the outage
 *   and sat in the work queue's per-item backoff).
 * Goal: both within 5 s. Needs the local control plane (skipped on an external cluster).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import { stopApiserver, type StoppedApiserver } from '../../cluster/control-plane.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { sleep, waitFor } from '../../support/wait.ts';

const NS = 'bp-outage';
const VMI = 'vm-outage';
const OUTAGE_MS = 20_000;
const GOAL_MS = 5_000;
const pkiDir = inject('clusterPkiDir');

describe.skipIf(pkiDir === '')(
  'informers after an API server outage (operator process, real kube-apiserver restart)',
  () => {
    let kube: ClusterClient;
    let tmp: string;
    let operator: OperatorProcess | undefined;
    let down: StoppedApiserver | undefined;

    const apply = async (name: string, vmiName: string): Promise<void> => {
      const file = path.join(tmp, `${name}.yaml`);
      await writeFile(file, blockPullManifest({ namespace: NS, name, vmiName, disk: 'rootdisk' }));
      await kube.kubectl(['apply', '-f', file]);
    };

    beforeAll(async () => {
      kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
      tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-outage-'));
      const sa = await operatorServiceAccount(kube);
      await ensureNamespace(kube, NS);
      await createFakeVmi(kube, { namespace: NS, vmiName: VMI, disks: ['rootdisk'], phase: 'Scheduling', pod: false });
      // No leader election: an outage longer than the renew deadline would (rightly) end the leader.
      operator = await startOperator({
        kubeconfig: sa,
        registryDir: tmp,
        name: 'e2e-outage',
        env: { BLOCKPULL_LEADER_ELECT: 'false' },
      });
    });

    afterAll(async () => {
      // Never leave the shared control plane without its API server.
      await down?.start().catch(() => undefined);
      if (kube !== undefined) {
        await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
        await kube.kubectlResult(['delete', 'namespace', NS, '--wait=false']);
      }
      await operator?.stop();
      if (tmp) await rm(tmp, { recursive: true, force: true });
    });

    it(`a BlockPull created and a VMI changed after the API server is back are seen within ${GOAL_MS / 1000} s`, async () => {
      await apply('before', VMI);
      await apply('idle', 'no-such-vmi-either');
      await waitFor('status of "before"', 30_000, async () =>
        ((await getBlockPull(kube, NS, 'before'))?.status?.message ?? '').includes('is Scheduling'),
      );
      await waitFor(
        'status of "idle"',
        30_000,
        async () => (await getBlockPull(kube, NS, 'idle'))?.status?.reason === 'VMINotFound',
      );

      const stopped = await stopApiserver(path.dirname(pkiDir));
      down = stopped;
      await sleep(OUTAGE_MS);
      const tStart = performance.now();
      await stopped.start();
      down = undefined;
      const tUp = performance.now();
      const upWall = Date.now();
      console.log(`kube-apiserver ready ${Math.round(tUp - tStart)} ms after its start`);

      // Right after recovery: a new BlockPull, and a VMI change.
      let tBlockPull: number | undefined;
      let tVmi: number | undefined;
      const created = (async () => {
        await apply('after', 'no-such-vmi');
        await waitFor(
          'status of "after"',
          60_000,
          async () => (await getBlockPull(kube, NS, 'after'))?.status?.phase !== undefined,
          100,
        );
        tBlockPull = performance.now() - tUp;
      })();
      const changed = (async () => {
        await kube.kubectl([
          'patch',
          'vmi',
          VMI,
          '-n',
          NS,
          '--type=merge',
          '-p',
          JSON.stringify({ status: { phase: 'Scheduled' } }),
        ]);
        await waitFor(
          'VMI change seen',
          60_000,
          async () => ((await getBlockPull(kube, NS, 'before'))?.status?.message ?? '').includes('is Scheduled,'),
          100,
        );
        tVmi = performance.now() - tUp;
      })();
      const idleDecided = () =>
        operator!
          .find('decided')
          .filter((l) => l['blockpull'] === `${NS}/idle` && Date.parse(String(l['time'])) >= upWall);
      const idle = (async () => {
        await waitFor(
          '"idle" reconciled again',
          60_000,
          () => Promise.resolve(idleDecided().length > 0 || undefined),
          100,
        );
        return Date.parse(String(idleDecided()[0]!['time'])) - upWall;
      })();
      await Promise.all([created, changed]);
      const tIdle = await idle;
      console.log(
        `after a ${OUTAGE_MS / 1000} s outage: new BlockPull got its status ${Math.round(tBlockPull!)} ms, VMI change seen ${Math.round(tVmi!)} ms, ` +
          `an unchanged BlockPull reconciled again ${tIdle} ms after /readyz answered 200`,
      );
      expect(operator!.child.exitCode).toBeNull();
      expect(tBlockPull!).toBeLessThan(GOAL_MS);
      expect(tVmi!).toBeLessThan(GOAL_MS);
      expect(tIdle).toBeLessThan(GOAL_MS);
      expect(operator!.find('API server ready again; restarting the informer now').length).toBeGreaterThan(0);
    });
  },
);
