/**
 * EventRecorder's bounds (the API round trip itself is in test/e2e/specs/kube/events.e2e.test.ts):
 * a few Event writes at once, a bounded queue, drops counted; a failed write frees its turn;
 * essential Events (terminal transitions) never dropped, written first and retried.
 */
import type { EventsV1Api } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../log.ts';
import { EventRecorder, type InvolvedObject } from './events.ts';

const logger = createLogger({ level: 'silent' });
const about = (i: number): InvolvedObject => ({
  apiVersion: 'v1',
  kind: 'ConfigMap',
  namespace: 'ns',
  name: `o${i}`,
  uid: `uid-${i}`,
});
const ticks = async (n = 20): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

/** An events API whose creates wait until the test lets them go (or fail them). */
function fakeEvents() {
  const pending: { name: string; settle: (ok: boolean) => void }[] = [];
  const written: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const api = {
    createNamespacedEvent: (req: { body: { regarding: { name: string } } }) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      return new Promise((resolve, reject) => {
        pending.push({
          name: req.body.regarding.name,
          settle: (ok) => {
            inFlight--;
            if (ok) {
              written.push(req.body.regarding.name);
              resolve({ metadata: { name: `${req.body.regarding.name}.ev` } });
            } else reject(new Error('API server said no'));
          },
        });
      });
    },
  } as unknown as EventsV1Api;
  const settleAll = async (ok = true): Promise<void> => {
    for (let guard = 0; guard < 100; guard++) {
      await ticks();
      const batch = pending.splice(0);
      if (batch.length === 0) return;
      for (const p of batch) p.settle(ok);
    }
  };
  return { api, pending, written, settleAll, maxInFlight: () => maxInFlight };
}

describe('EventRecorder bounds', () => {
  it('sends at most maxInFlight writes at once, in the order they were asked for', async () => {
    const f = fakeEvents();
    const rec = new EventRecorder({ events: f.api, reportingInstance: 'op-0', logger, maxInFlight: 4 });
    const done = Array.from({ length: 10 }, (_, i) => rec.normal(about(i), 'Waiting', 'Wait', `waiting ${i}`));
    await ticks();
    expect(f.pending.map((p) => p.name)).toEqual(['o0', 'o1', 'o2', 'o3']);
    await f.settleAll();
    await Promise.all(done);
    expect(f.maxInFlight()).toBe(4);
    expect(f.written).toEqual(Array.from({ length: 10 }, (_, i) => `o${i}`));
    expect(rec.dropped).toBe(0);
  });

  it('drops (and counts) Events past maxQueued while the API server is slow; the accepted ones are all written', async () => {
    const f = fakeEvents();
    let droppedCalls = 0;
    const rec = new EventRecorder({
      events: f.api,
      reportingInstance: 'op-0',
      logger,
      maxInFlight: 1,
      maxQueued: 3,
      onDropped: () => droppedCalls++,
    });
    const first = rec.normal(about(0), 'Waiting', 'Wait', 'first');
    await ticks();
    expect(f.pending).toHaveLength(1); // writing: no longer queued
    const rest = Array.from({ length: 5 }, (_, i) => rec.normal(about(i + 1), 'Waiting', 'Wait', `next ${i + 1}`));
    expect(rec.dropped).toBe(2);
    expect(droppedCalls).toBe(2);
    await f.settleAll();
    await Promise.all([first, ...rest]);
    expect(f.written).toEqual(['o0', 'o1', 'o2', 'o3']);
    // With the queue drained, new Events are accepted again.
    const later = rec.normal(about(9), 'Waiting', 'Wait', 'later');
    await f.settleAll();
    await later;
    expect(f.written.at(-1)).toBe('o9');
    expect(rec.dropped).toBe(2);
  });

  it('a failed write frees its turn: the next Events are still written', async () => {
    const f = fakeEvents();
    const rec = new EventRecorder({ events: f.api, reportingInstance: 'op-0', logger, maxInFlight: 1 });
    const failing = rec.warning(about(0), 'Broken', 'Wait', 'refused');
    await ticks();
    f.pending.splice(0)[0]!.settle(false);
    await failing; // logged, never thrown into the caller
    const next = [rec.normal(about(1), 'Waiting', 'Wait', 'a'), rec.normal(about(2), 'Waiting', 'Wait', 'b')];
    await f.settleAll();
    await Promise.all(next);
    expect(f.written).toEqual(['o1', 'o2']);
  });

  it('a burst far past the queue: every essential Event is written, before the waiting ones; only best-effort Events are dropped', async () => {
    const f = fakeEvents();
    const rec = new EventRecorder({
      events: f.api,
      reportingInstance: 'op-0',
      logger,
      maxInFlight: 4,
      maxQueued: 1000,
    });
    const waiting = Array.from({ length: 5000 }, (_, i) =>
      rec.normal(about(i), 'VMINotFound', 'Pending', `waiting ${i}`),
    );
    const terminal = Array.from({ length: 500 }, (_, i) =>
      rec.event(about(10_000 + i), 'Normal', 'Completed', 'Completed', `done ${i}`, 'essential'),
    );
    for (let guard = 0; guard < 100 && f.written.length < 1500; guard++) await f.settleAll();
    await Promise.all([...waiting, ...terminal]);
    const essentialWritten = f.written.filter((n) => Number(n.slice(1)) >= 10_000);
    expect(essentialWritten).toEqual(Array.from({ length: 500 }, (_, i) => `o${10_000 + i}`));
    // The four writes already running when the burst came were best effort; then every essential one.
    expect(f.written.slice(4, 504)).toEqual(essentialWritten);
    expect(rec.dropped).toBe(5000 - 1000);
    expect(f.written).toHaveLength(1000 + 500);
  });

  it('an essential write refused for a passing reason is tried again; a refusal of the Event itself is not', async () => {
    let calls = 0;
    const failures: Error[] = [
      Object.assign(new Error('etcd timeout'), { code: 500 }),
      Object.assign(new Error('slow down'), { code: 429 }),
    ];
    const api = {
      createNamespacedEvent: (req: { body: { regarding: { name: string } } }) => {
        calls++;
        const failure =
          req.body.regarding.name === 'o1' ? failures.shift() : Object.assign(new Error('invalid'), { code: 422 });
        return failure !== undefined ? Promise.reject(failure) : Promise.resolve({ metadata: { name: 'o1.ev' } });
      },
    } as unknown as EventsV1Api;
    const rec = new EventRecorder({ events: api, reportingInstance: 'op-0', logger, essentialRetryMs: 1 });
    await rec.event(about(1), 'Normal', 'Completed', 'Completed', 'done', 'essential');
    expect(calls).toBe(3);
    calls = 0;
    await rec.event(about(2), 'Warning', 'Failed', 'Failed', 'refused', 'essential');
    expect(calls).toBe(1);
    calls = 0;
    failures.push(Object.assign(new Error('etcd timeout'), { code: 503 }));
    await rec.normal(about(1), 'Waiting', 'Wait', 'best effort');
    expect(calls).toBe(1);
  });
});

describe('EventRecorder: where an Event is written', () => {
  it("a namespaced object's Event goes to its namespace; a cluster-scoped object's to default, regarding no namespace", async () => {
    const creates: {
      namespace: string;
      body: { metadata: { namespace: string }; regarding: Record<string, unknown> };
    }[] = [];
    const patches: { namespace: string }[] = [];
    const api = {
      createNamespacedEvent: (req: (typeof creates)[number]) => {
        creates.push(req);
        return Promise.resolve({ metadata: { name: `ev${creates.length}` } });
      },
      patchNamespacedEvent: (req: { namespace: string }) => {
        patches.push(req);
        return Promise.resolve({});
      },
    } as unknown as EventsV1Api;
    const rec = new EventRecorder({ events: api, reportingInstance: 'op-0', logger });
    const cluster: InvolvedObject = {
      apiVersion: 'blockpull.dev/v1alpha1',
      kind: 'ClusterBlockPullPolicy',
      name: 'fleet',
      uid: 'c-uid',
    };
    await rec.normal(about(1), 'Created', 'Create', 'x');
    await rec.normal(cluster, 'BlockPullsCreated', 'Create', 'created 3 BlockPull(s)');
    // A repeat within the series window patches the Event where it was written.
    await rec.normal(cluster, 'BlockPullsCreated', 'Create', 'created 3 BlockPull(s)');
    expect(creates.map((c) => [c.namespace, c.body.metadata.namespace, c.body.regarding.namespace])).toEqual([
      ['ns', 'ns', 'ns'],
      ['default', 'default', undefined],
    ]);
    expect(creates[1]!.body.regarding).not.toHaveProperty('namespace');
    expect(patches.map((p) => p.namespace)).toEqual(['default']);
  });
});
