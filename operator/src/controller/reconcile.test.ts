import { ApiException } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { API_VERSION, FINALIZER, KIND } from '../api/types.ts';
import type { KubeClients } from '../kube/client.ts';
import { createLogger } from '../log.ts';
import { LauncherUnavailableError } from '../kubevirt/transport.ts';
import { canonicalJson, Reconciler } from './reconcile.ts';

describe('canonicalJson', () => {
  it('ignores key order and undefined, keeps array order', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, 1], c: undefined } })).toBe(canonicalJson({ a: { d: [2, 1] }, b: 1 }));
    expect(canonicalJson({ a: [1, 2] })).not.toBe(canonicalJson({ a: [2, 1] }));
    expect(canonicalJson({ a: 1 })).not.toBe(canonicalJson({ a: 2 }));
  });
});

/**
 * The status write's 422 handling. The API server answers 422 "Invalid" both when the JSON patch's
 * `test` of metadata.resourceVersion fails (measured on kube-apiserver 1.34: empty details, generic
 * message) and when the CRD schema refuses the status (details name the field). Only the first is a
 * conflict to requeue at once; requeueing the second would rewrite the same refused status in a loop.
 */
describe('Reconciler status write', () => {
  const blockPull = (resourceVersion: string) => ({
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: 'p', namespace: 'ns', uid: 'u1', resourceVersion, generation: 1, finalizers: [FINALIZER], creationTimestamp: '2026-11-27T10:00:00Z' },
    spec: { vmiName: 'vm', disk: 'rootdisk' },
  });
  const invalid = new ApiException(
    422,
    'Invalid',
    JSON.stringify({ kind: 'Status', status: 'Failure', reason: 'Invalid', code: 422, message: 'BlockPull.blockpull.dev "p" is invalid: status.message: Too long', details: { name: 'p' } }),
    {},
  );
  const testFailed = new ApiException(
    422,
    'Invalid',
    JSON.stringify({ kind: 'Status', status: 'Failure', reason: 'Invalid', code: 422, message: 'the server rejected our request due to an error in our request', details: {} }),
    {},
  );

  function reconciler(versions: string[], patchError: Error) {
    const calls = { gets: 0, patches: 0, enqueued: [] as string[] };
    const clients = {
      custom: {
        getNamespacedCustomObject: () => Promise.resolve(blockPull(versions[Math.min(calls.gets++, versions.length - 1)] ?? '1')),
        patchNamespacedCustomObjectStatus: () => {
          calls.patches++;
          return Promise.reject(patchError);
        },
      },
    } as unknown as KubeClients;
    const empty = { get: () => undefined, list: () => [] };
    const r = new Reconciler({
      clients,
      blockPulls: empty,
      vmis: empty, // VMI not found: the reconcile writes a VMINotFound status
      pods: empty,
      drivers: { kind: 'local', driverFor: () => Promise.reject(new LauncherUnavailableError('none')) },
      logger: createLogger({ level: 'silent' }),
      pollIntervalMs: 500,
      statusUpdateIntervalMs: 2000,
      maxConcurrentPulls: 4,
      maxPullsPerNode: 2,
      enqueue: (key) => calls.enqueued.push(key),
    });
    return { r, calls };
  }

  it('a status the API server refuses is an error (work queue backoff), not an immediate requeue', async () => {
    const { r, calls } = reconciler(['5'], invalid);
    await expect(r.reconcile('ns/p')).rejects.toBe(invalid);
    expect(calls.patches).toBe(1);
    expect(calls.enqueued).toEqual([]);
  });

  it('a failed resourceVersion test (the object moved on) requeues at once', async () => {
    const { r, calls } = reconciler(['5', '6'], testFailed);
    await expect(r.reconcile('ns/p')).resolves.toEqual({ requeueAfterMs: 5000 });
    expect(calls.patches).toBe(1);
    expect(calls.enqueued).toEqual(['ns/p']);
  });
});

/**
 * While our job runs, completion arrives as a block-job event: the Reconciler polls the job only
 * as often as progress is written (statusUpdateIntervalMs), not every pollIntervalMs, and reads
 * `virsh blockjob` once at the job's end (issue 15: every poll is a virsh process, a libvirt query
 * of QEMU and an API GET next to the running job).
 */
describe('Reconciler while a job runs', () => {
  const vmi = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'vm', namespace: 'ns', uid: 'vmi-uid' },
    spec: { domain: { devices: { disks: [{ name: 'rootdisk', disk: { bus: 'virtio' } }] } } },
    status: { phase: 'Running', nodeName: 'node1', runtimeUser: 107 },
  };
  const pod = {
    metadata: { name: 'virt-launcher-vm-x', namespace: 'ns', labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': 'vmi-uid' }, creationTimestamp: '2026-11-27T09:00:00Z' },
    spec: { nodeName: 'node1', containers: [{ name: 'compute' }] },
    status: { phase: 'Running' },
  };
  const chain = [
    { position: 0, index: 1, path: '/d/top.qcow2', format: 'qcow2' },
    { position: 1, index: 2, path: '/d/mid.qcow2', format: 'qcow2' },
    { position: 2, index: 3, path: '/d/base.qcow2', format: 'qcow2' },
  ];

  it('no libvirt look before the finalizer; after the start, polls every statusUpdateIntervalMs; at the end reads the job once', async () => {
    let stored: Record<string, unknown> = {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: 'p', namespace: 'ns', uid: 'u1', resourceVersion: '1', generation: 1, creationTimestamp: '2026-11-27T10:00:00Z' },
      spec: { vmiName: 'vm', disk: 'rootdisk' },
    };
    let rv = 1;
    const clients = {
      custom: {
        getNamespacedCustomObject: () => Promise.resolve(structuredClone(stored)),
        patchNamespacedCustomObject: (req: { body: { metadata: { finalizers: string[] } } }) => {
          stored = { ...stored, metadata: { ...(stored['metadata'] as object), finalizers: req.body.metadata.finalizers, resourceVersion: String(++rv) } };
          return Promise.resolve(stored);
        },
        patchNamespacedCustomObjectStatus: (req: { body: { op: string; path: string; value: unknown }[] }) => {
          const status = req.body.find((op) => op.path === '/status')?.value;
          stored = { ...stored, metadata: { ...(stored['metadata'] as object), resourceVersion: String(++rv) }, status };
          return Promise.resolve(stored);
        },
      },
    } as unknown as KubeClients;
    let job: { type: string; cur: number; end: number; bandwidth: number } | null = null;
    let disk = { target: 'vda', alias: 'ua-rootdisk', chain };
    const calls = { driverFor: 0, getJob: 0, getDisk: 0, startPull: 0, subscriptions: 0 };
    const subscribedTargets: unknown[] = [];
    const driver = {
      getDisk: () => (calls.getDisk++, Promise.resolve(disk)),
      getJob: () => (calls.getJob++, Promise.resolve(job)),
      startPull: () => {
        calls.startPull++;
        job = { type: 'Block Pull', cur: 0, end: 100, bandwidth: 0 };
        return Promise.resolve();
      },
      setBandwidth: () => Promise.resolve(),
      abort: () => Promise.resolve(),
      watchEvents: (_d: string, _cb: unknown, options?: { targets?: string[] }) => (calls.subscriptions++, subscribedTargets.push(options?.targets), { stop: () => undefined }),
    };
    const r = new Reconciler({
      clients,
      blockPulls: { get: () => undefined, list: () => [] },
      vmis: { get: () => vmi, list: () => [vmi] },
      pods: { get: () => pod, list: () => [pod] },
      drivers: { kind: 'local', driverFor: () => (calls.driverFor++, Promise.resolve(driver)) },
      logger: createLogger({ level: 'silent' }),
      pollIntervalMs: 500,
      statusUpdateIntervalMs: 2000,
      maxConcurrentPulls: 4,
      maxPullsPerNode: 2,
      enqueue: () => undefined,
    });

    // First look: only the finalizer (and Pending) are written; libvirt is not asked anything yet.
    expect(await r.reconcile('ns/p')).toEqual({ requeueAfterMs: 0 });
    expect((stored['metadata'] as { finalizers?: string[] }).finalizers).toEqual([FINALIZER]);
    expect((stored['status'] as { phase?: string }).phase).toBe('Pending');
    expect(calls).toMatchObject({ driverFor: 0, getJob: 0, getDisk: 0 });

    const started = await r.reconcile('ns/p');
    expect(calls.startPull).toBe(1);
    expect((stored['status'] as { phase?: string }).phase).toBe('Running');
    expect(calls.subscriptions).toBe(1);
    expect(subscribedTargets).toEqual([['vda']]); // the driver's fallback poller looks at our disk only
    expect(started.requeueAfterMs).toBe(2000);

    // The watch brings our own status write back once: no need to wake the BlockPull for it.
    const ownRv = (stored['metadata'] as { resourceVersion: string }).resourceVersion;
    expect(r.isOwnWrite('ns/p', String(Number(ownRv) - 1))).toBe(false);
    expect(r.isOwnWrite('ns/p', ownRv)).toBe(true);
    expect(r.isOwnWrite('ns/p', ownRv)).toBe(false); // once (a later resync of the same version wakes it)

    job = { type: 'Block Pull', cur: 40, end: 100, bandwidth: 0 };
    expect(await r.reconcile('ns/p')).toEqual({ requeueAfterMs: 2000 });

    // The job ends (the event woke us): one `virsh blockjob`, then the chain read after it.
    job = null;
    disk = { target: 'vda', alias: 'ua-rootdisk', chain: [{ ...chain[0]!, index: 1 }] };
    calls.getJob = 0;
    calls.getDisk = 0;
    const done = await r.reconcile('ns/p');
    expect((stored['status'] as { phase?: string }).phase).toBe('Completed');
    expect(done.requeueAfterMs).toBeNull();
    expect(calls).toMatchObject({ getJob: 1, getDisk: 1 });
  });
});
