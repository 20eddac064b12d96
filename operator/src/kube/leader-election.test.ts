/**
 * The leader's renewals, request by request, against a fake Lease API that keeps one object and
 * applies optimistic concurrency as the API server does (the algorithm's timing against the real
 * API server is in test/e2e/specs/kube/leader-election.e2e.test.ts).
 */
import { ApiException, type CoordinationV1Api, type V1Lease } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { LeaderElector } from './leader-election.ts';

/** One Lease, resourceVersion checked on replace (409 when stale), 404 when absent. */
function fakeLeases() {
  let lease: V1Lease | undefined;
  let rv = 0;
  const calls: string[] = [];
  const store = (l: V1Lease): V1Lease => {
    lease = structuredClone({ ...l, metadata: { ...l.metadata, resourceVersion: String(++rv) } });
    return structuredClone(lease);
  };
  const api = {
    readNamespacedLease: () => {
      calls.push('read');
      return lease === undefined
        ? Promise.reject(new ApiException(404, 'NotFound', '{}', {}))
        : Promise.resolve(structuredClone(lease));
    },
    createNamespacedLease: (req: { body: V1Lease }) => {
      calls.push('create');
      return lease !== undefined
        ? Promise.reject(new ApiException(409, 'AlreadyExists', '{}', {}))
        : Promise.resolve(store(req.body));
    },
    replaceNamespacedLease: (req: { body: V1Lease }) => {
      calls.push('replace');
      if (lease === undefined) return Promise.reject(new ApiException(404, 'NotFound', '{}', {}));
      if (req.body.metadata?.resourceVersion !== lease.metadata?.resourceVersion)
        return Promise.reject(new ApiException(409, 'Conflict', '{}', {}));
      return Promise.resolve(store(req.body));
    },
  } as unknown as CoordinationV1Api;
  /** Another candidate takes the Lease (a write we did not make). */
  const takeOver = (holder: string): void => {
    if (lease !== undefined)
      store({ ...lease, spec: { ...lease.spec, holderIdentity: holder, renewTime: new Date() } });
  };
  return { api, calls, takeOver, current: () => lease };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function elector(api: CoordinationV1Api) {
  let lost = false;
  const e = new LeaderElector({
    coordination: api,
    namespace: 'ns',
    leaseName: 'op',
    identity: 'me',
    leaseDurationMs: 2_000,
    renewDeadlineMs: 1_500,
    retryPeriodMs: 20,
    releaseOnCancel: false,
    onStartedLeading: () => undefined,
    onStoppedLeading: () => {
      lost = true;
    },
  });
  const ac = new AbortController();
  const result = e.run(ac.signal);
  return { result, stop: () => ac.abort(), lost: () => lost };
}

describe('LeaderElector renewals', () => {
  it('the leader renews with one update per retry period, without reading the Lease first', async () => {
    const f = fakeLeases();
    const c = elector(f.api);
    for (let i = 0; i < 100 && f.calls.filter((x) => x === 'replace').length < 5; i++) await sleep(20);
    c.stop();
    await c.result;
    // Acquire: read (404), create. Then renewals: updates only.
    expect(f.calls.slice(0, 2)).toEqual(['read', 'create']);
    expect(f.calls.slice(2).length).toBeGreaterThanOrEqual(5);
    expect(new Set(f.calls.slice(2))).toEqual(new Set(['replace']));
    expect(f.current()?.spec?.holderIdentity).toBe('me');
  });

  it('a Lease written by someone else meanwhile: the update conflicts, the Lease is read, leadership is lost', async () => {
    const f = fakeLeases();
    const c = elector(f.api);
    for (let i = 0; i < 100 && !f.calls.includes('replace'); i++) await sleep(20);
    f.takeOver('other');
    const n = f.calls.length;
    expect(await c.result).toBe('lost');
    expect(c.lost()).toBe(true);
    expect(f.calls.slice(n, n + 2)).toEqual(['replace', 'read']);
    expect(f.current()?.spec?.holderIdentity).toBe('other');
  });

  it('on a lost Lease, onStoppedLeading runs before the leading signal aborts (a caller can exit first)', async () => {
    const f = fakeLeases();
    const order: string[] = [];
    const e = new LeaderElector({
      coordination: f.api,
      namespace: 'ns',
      leaseName: 'op',
      identity: 'me',
      leaseDurationMs: 2_000,
      renewDeadlineMs: 1_500,
      retryPeriodMs: 20,
      onStartedLeading: (signal) => signal.addEventListener('abort', () => order.push('signal aborted')),
      onStoppedLeading: () =>
        order.push(`stopped leading, signal aborted: ${String(order.includes('signal aborted'))}`),
    });
    const result = e.run(new AbortController().signal);
    for (let i = 0; i < 100 && !f.calls.includes('replace'); i++) await sleep(20);
    f.takeOver('other');
    expect(await result).toBe('lost');
    expect(order).toEqual(['stopped leading, signal aborted: false', 'signal aborted']);
  });

  it('a restarted container under the same identity takes its own unexpired Lease back at once', async () => {
    const f = fakeLeases();
    const first = elector(f.api);
    for (let i = 0; i < 100 && !f.calls.includes('replace'); i++) await sleep(20);
    first.stop();
    await first.result;
    const n = f.calls.length;
    const t0 = performance.now();
    const second = elector(f.api);
    for (let i = 0; i < 100 && f.calls.slice(n).filter((x) => x === 'replace').length < 1; i++) await sleep(5);
    const tookMs = performance.now() - t0;
    second.stop();
    await second.result;
    // Lease duration is 2 s: well under it means it was not waited out.
    expect(tookMs).toBeLessThan(500);
    expect(f.calls.slice(n, n + 2)).toEqual(['read', 'replace']);
    expect(f.current()?.spec?.holderIdentity).toBe('me');
  });
});
