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
