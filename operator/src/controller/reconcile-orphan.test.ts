import { describe, expect, it } from 'vitest';
import { FINALIZER } from '../api/types.ts';
import type { BlockJobDriver } from '../hypervisor/types.ts';
import {
  blockPullFixture,
  launcherFixture,
  runningStatusFixture,
  TWO_IMAGE_CHAIN,
} from '../../../test/unit/support/launcher.ts';
import { oneObjectApi, testReconciler } from '../../../test/unit/support/reconciler.ts';

/**
 * A BlockPull deleted after its VMI vanished at once (finalizers removed by hand, or deleted with
 * --cascade=orphan) while the launcher pod, and our job in its QEMU, still run: the finalizer
 * aborts the job through the pod the status recorded before it lets the object go. Nothing else
 * (a pod not controlled by a VMI of that name, a pod gone) is taken for it.
 */
describe('Reconciler: deletion once the VMI is gone', () => {
  const CHAIN = [...TWO_IMAGE_CHAIN];
  const running = runningStatusFixture(CHAIN);

  function world(pod: Record<string, unknown> | undefined) {
    const fixture = blockPullFixture('10');
    const api = oneObjectApi({
      ...fixture,
      metadata: { ...fixture.metadata, deletionTimestamp: '2026-11-27T10:00:00Z' },
      status: running,
    });
    let jobRunning = true;
    const calls = {
      aborts: [] as { domain: string; target: string }[],
      uris: [] as string[],
      get finalizerRemoved(): boolean {
        return !((api.stored()['metadata'] as { finalizers?: string[] }).finalizers ?? []).includes(FINALIZER);
      },
    };
    const driver: BlockJobDriver = {
      getDisk: () => Promise.resolve({ target: 'vda', alias: 'ua-rootdisk', chain: CHAIN }),
      getJob: () => Promise.resolve(jobRunning ? { type: 'Block Pull', cur: 10, end: 100, bandwidth: 0 } : null),
      startPull: () => Promise.reject(new Error('nothing may start while deleting')),
      setBandwidth: () => Promise.resolve(),
      abort: (domain, target) => {
        calls.aborts.push({ domain, target });
        jobRunning = false;
        return Promise.resolve();
      },
      watchEvents: () => ({ stop: () => undefined }),
    };
    const pods = pod === undefined ? [] : [pod];
    const r = testReconciler({
      clients: api.clients,
      blockPulls: { get: () => undefined, list: () => [] },
      vmis: { get: () => undefined, list: () => [] }, // the VMI is gone
      pods: {
        get: (_ns, name) => pods.find((p) => (p['metadata'] as { name: string }).name === name),
        list: () => pods,
        byIndex: () => [], // nothing indexed under a VMI uid: the VMI is not there to give one
      },
      drivers: {
        kind: 'local',
        driverFor: (launcher) => {
          calls.uris.push(launcher.uri);
          return Promise.resolve(driver);
        },
      },
    });
    return { r, calls, jobIsRunning: () => jobRunning };
  }

  const { pod } = launcherFixture('node1');
  const nonRootPod = { ...pod, spec: { ...(pod['spec'] as object), securityContext: { runAsUser: 107 } } };

  it('aborts the job through the recorded launcher pod, then removes the finalizer', async () => {
    const w = world(nonRootPod);
    await w.r.reconcile('ns/p');
    expect(w.calls.aborts).toEqual([{ domain: 'ns_vm', target: 'vda' }]);
    expect(w.calls.uris[0]).toContain('session'); // runAsUser 107: the session daemon, as for the VMI
    expect(w.calls.finalizerRemoved).toBe(false); // the job's end is seen before the object goes
    for (let i = 0; i < 3 && !w.calls.finalizerRemoved; i++) await w.r.reconcile('ns/p');
    expect(w.jobIsRunning()).toBe(false);
    expect(w.calls.finalizerRemoved).toBe(true);
  });

  it('a root launcher pod (runAsUser 0) is reached on the system URI', async () => {
    const w = world({ ...pod, spec: { ...(pod['spec'] as object), securityContext: { runAsUser: 0 } } });
    await w.r.reconcile('ns/p');
    expect(w.calls.uris[0]).toBe('qemu:///system');
    expect(w.calls.aborts).toHaveLength(1);
  });

  it('a pod of that name not controlled by a VMI of that name is not touched: the finalizer goes', async () => {
    const meta = pod['metadata'] as Record<string, unknown>;
    const stranger = {
      ...nonRootPod,
      metadata: {
        ...meta,
        ownerReferences: [{ apiVersion: 'v1', kind: 'ReplicaSet', name: 'vm', uid: 'x', controller: true }],
      },
    };
    const w = world(stranger);
    await w.r.reconcile('ns/p');
    expect(w.calls.aborts).toEqual([]);
    expect(w.calls.uris).toEqual([]);
    expect(w.calls.finalizerRemoved).toBe(true);
  });

  it('the recorded pod is gone too: nothing is left to abort, the finalizer goes', async () => {
    const w = world(undefined);
    await w.r.reconcile('ns/p');
    expect(w.calls.aborts).toEqual([]);
    expect(w.calls.finalizerRemoved).toBe(true);
  });
});
