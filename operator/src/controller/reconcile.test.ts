import { ApiException } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { API_VERSION, FINALIZER, KIND } from '../api/types.ts';
import type { BlockJobDriver, DiskInfo, SpaceInfo } from '../hypervisor/types.ts';
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
 * The pre-flight space check in the reconciler: measured through the driver before a start; while
 * short, measured again only when its backoff (5 s, 10 s, ...) has run out, whatever wakes the
 * BlockPull meanwhile (its own status write does); once it fits, the pull starts.
 */
describe('Reconciler pre-flight space check', () => {
  const MiB = 1024 * 1024;
  const chain: DiskInfo = {
    target: 'vda',
    alias: 'ua-rootdisk',
    chain: [
      { position: 0, index: 1, path: '/e/top.qcow2', format: 'qcow2' },
      { position: 1, index: 2, path: '/e/base.qcow2', format: 'qcow2' },
    ],
  };
  const vmi = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'vm', namespace: 'ns', uid: 'vmi-uid' },
    spec: { domain: { devices: { disks: [{ name: 'rootdisk' }] } } },
    status: { phase: 'Running', nodeName: 'n1', runtimeUser: 107, activePods: { 'pod-uid': 'n1' } },
  };
  const pod = {
    metadata: {
      name: 'virt-launcher-vm-x',
      namespace: 'ns',
      uid: 'pod-uid',
      labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': 'vmi-uid' },
      ownerReferences: [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', name: 'vm', uid: 'vmi-uid', controller: true }],
      creationTimestamp: '2026-11-27T09:00:00Z',
    },
    spec: { nodeName: 'n1', containers: [{ name: 'compute' }] },
    status: { phase: 'Running' },
  };

  function setup() {
    let stored: Record<string, unknown> = {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: 'p', namespace: 'ns', uid: 'u1', resourceVersion: '1', generation: 1, finalizers: [FINALIZER], creationTimestamp: '2026-11-27T10:00:00Z' },
      spec: { vmiName: 'vm', disk: 'rootdisk' },
    };
    let rv = 1;
    let nowMs = Date.parse('2026-11-27T10:00:00Z');
    const space = { availableBytes: 10 * MiB };
    const calls = { getSpace: 0, startPull: 0 };
    const driver: BlockJobDriver = {
      getDisk: () => Promise.resolve(chain),
      getJob: () => Promise.resolve(null),
      startPull: () => {
        calls.startPull++;
        return Promise.resolve();
      },
      setBandwidth: () => Promise.resolve(),
      abort: () => Promise.resolve(),
      watchEvents: () => ({ stop: () => undefined }),
      getSpace: (): Promise<SpaceInfo> => {
        calls.getSpace++;
        return Promise.resolve({ kind: 'measured', topPath: '/e/top.qcow2', pullBytes: 100 * MiB, availableBytes: space.availableBytes, totalBytes: 1000 * MiB });
      },
    };
    const clients = {
      custom: {
        getNamespacedCustomObject: () => Promise.resolve(structuredClone(stored)),
        patchNamespacedCustomObjectStatus: (req: { body: { op: string; path: string; value?: unknown }[] }) => {
          const status = req.body.find((o) => o.path === '/status')?.value;
          rv += 1;
          stored = { ...stored, status, metadata: { ...(stored['metadata'] as object), resourceVersion: String(rv) } };
          return Promise.resolve(stored);
        },
      },
    } as unknown as KubeClients;
    const r = new Reconciler({
      clients,
      blockPulls: { get: () => undefined, list: () => [] },
      vmis: { get: () => vmi, list: () => [vmi] },
      pods: { get: () => pod, list: () => [pod] },
      drivers: { kind: 'local', driverFor: () => Promise.resolve(driver) },
      logger: createLogger({ level: 'silent' }),
      pollIntervalMs: 500,
      statusUpdateIntervalMs: 2000,
      maxConcurrentPulls: 4,
      maxPullsPerNode: 2,
      spaceMarginBytes: MiB,
      enqueue: () => undefined,
      now: () => new Date(nowMs),
    });
    const status = () => stored['status'] as { phase?: string; reason?: string; message?: string } | undefined;
    return { r, calls, space, status, advance: (ms: number) => (nowMs += ms) };
  }

  it('short: InsufficientSpace, re-measured only after 5 s, then 10 s; starts once it fits', async () => {
    const { r, calls, space, status, advance } = setup();
    expect(await r.reconcile('ns/p')).toEqual({ requeueAfterMs: 5000 });
    expect(status()).toMatchObject({ phase: 'Pending', reason: 'InsufficientSpace' });
    expect(status()?.message).toContain(`${10 * MiB} bytes`);
    expect(calls).toEqual({ getSpace: 1, startPull: 0 });
    // Woken early (e.g. by its own status write): the last measurement is reused.
    advance(1000);
    expect(await r.reconcile('ns/p')).toEqual({ requeueAfterMs: 4000 });
    expect(calls.getSpace).toBe(1);
    advance(4000);
    expect(await r.reconcile('ns/p')).toEqual({ requeueAfterMs: 10_000 });
    expect(calls.getSpace).toBe(2);
    advance(9000);
    await r.reconcile('ns/p');
    expect(calls.getSpace).toBe(2);
    // Space appears; the next check starts the pull.
    space.availableBytes = 500 * MiB;
    advance(1000);
    await r.reconcile('ns/p');
    expect(calls).toEqual({ getSpace: 3, startPull: 1 });
    expect(status()).toMatchObject({ phase: 'Running', reason: 'Pulling' });
  });
});
