import { ApiException } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { API_VERSION, FINALIZER, KIND, type BlockPullStatus } from '../api/types.ts';
import type { ActionOptions, BlockJobDriver, BlockJobInfo, StartPullOptions } from '../hypervisor/types.ts';
import type { KubeClients } from '../kube/client.ts';
import { podIndexes, POD_BY_VMI_UID } from './indexes.ts';
import { testReconciler } from '../../../test/unit/support/reconciler.ts';

/**
 * Slots and action bounds with many workers: a fake API server holding one object per BlockPull
 * (the JSON patch's resourceVersion test applied as the real one does), informer caches that lag
 * (they keep the objects as first listed, as a cache does until the watch brings the writes), and
 * one launcher per VMI whose looks answer after a few milliseconds, so that concurrent reconciles
 * interleave as the controller's workers do.
 */
const CHAIN = [
  { position: 0, index: 1, path: '/d/top.qcow2', format: 'qcow2' },
  { position: 1, index: 2, path: '/d/base.qcow2', format: 'qcow2' },
];

interface Pull {
  readonly namespace: string;
  readonly name: string;
  readonly node: string;
  readonly status?: BlockPullStatus;
}

type Start = (domain: string, options: StartPullOptions) => Promise<void>;

function world(
  pulls: readonly Pull[],
  o: { maxConcurrentPulls: number; maxPullsPerNode: number; actionTimeoutMs?: number; start?: Start },
) {
  let rv = 100;
  const objects = new Map<string, Record<string, unknown>>();
  const vmis = new Map<string, Record<string, unknown>>();
  const pods = new Map<string, Record<string, unknown>>();
  const jobs = new Map<string, BlockJobInfo>();
  const calls = { startPull: 0, maxRunningAtOnce: 0, enqueued: [] as string[] };
  const k = (ns: string, name: string): string => `${ns}/${name}`;
  for (const p of pulls) {
    const vmi = `vm-${p.name}`;
    objects.set(k(p.namespace, p.name), {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: {
        name: p.name,
        namespace: p.namespace,
        uid: `u-${p.name}`,
        resourceVersion: String(++rv),
        generation: 1,
        finalizers: [FINALIZER],
        creationTimestamp: '2026-11-27T09:00:00Z',
      },
      spec: { vmiName: vmi, disk: 'rootdisk' },
      ...(p.status !== undefined ? { status: p.status } : {}),
    });
    vmis.set(k(p.namespace, vmi), {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: vmi, namespace: p.namespace, uid: `vmi-${p.name}` },
      spec: { domain: { devices: { disks: [{ name: 'rootdisk', disk: { bus: 'virtio' } }] } } },
      status: { phase: 'Running', nodeName: p.node, runtimeUser: 107, activePods: { [`pod-${p.name}`]: p.node } },
    });
    pods.set(k(p.namespace, `virt-launcher-${p.name}`), {
      metadata: {
        name: `virt-launcher-${p.name}`,
        namespace: p.namespace,
        uid: `pod-${p.name}`,
        labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': `vmi-${p.name}` },
        ownerReferences: [
          {
            apiVersion: 'kubevirt.io/v1',
            kind: 'VirtualMachineInstance',
            name: vmi,
            uid: `vmi-${p.name}`,
            controller: true,
          },
        ],
        creationTimestamp: '2026-11-27T09:00:00Z',
      },
      spec: { nodeName: p.node, containers: [{ name: 'compute' }] },
      status: { phase: 'Running' },
    });
  }
  // The caches: as first listed (they lag every write of this test).
  const cachedPulls = [...objects.values()].map((x) => structuredClone(x));
  const cache = (m: Map<string, Record<string, unknown>>, list?: Record<string, unknown>[]) => ({
    get: (ns: string | undefined, name: string) =>
      (list ?? [...m.values()]).find(
        (x) =>
          (x['metadata'] as { namespace: string; name: string }).namespace === ns &&
          (x['metadata'] as { name: string }).name === name,
      ),
    list: (ns?: string) =>
      (list ?? [...m.values()]).filter(
        (x) => ns === undefined || (x['metadata'] as { namespace: string }).namespace === ns,
      ),
  });
  const rvMoved = new ApiException(
    409,
    'Conflict',
    JSON.stringify({ kind: 'Status', code: 409, reason: 'Conflict', message: 'the object has been modified' }),
    {},
  );
  const clients = {
    custom: {
      getNamespacedCustomObject: ({ namespace, name }: { namespace: string; name: string }) =>
        Promise.resolve(structuredClone(objects.get(k(namespace, name)))),
      patchNamespacedCustomObjectStatus: ({
        namespace,
        name,
        body,
      }: {
        namespace: string;
        name: string;
        body: { op: string; path: string; value: unknown }[];
      }) => {
        const obj = objects.get(k(namespace, name))!;
        const meta = obj['metadata'] as { resourceVersion: string };
        if (body[0]?.value !== meta.resourceVersion) return Promise.reject(rvMoved);
        const next = { ...obj, metadata: { ...meta, resourceVersion: String(++rv) }, status: body[1]!.value };
        objects.set(k(namespace, name), next);
        return Promise.resolve(structuredClone(next));
      },
    },
  } as unknown as KubeClients;
  const tick = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 2));
  const running = (): number => [...jobs.values()].length;
  const start: Start =
    o.start ??
    (async (domain) => {
      await tick();
      jobs.set(domain, { type: 'Block Pull', cur: 0, end: 100, bandwidth: 0 });
    });
  const drivers = new Map<string, BlockJobDriver>();
  const driverFor = (pod: string): BlockJobDriver => {
    let d = drivers.get(pod);
    if (d === undefined) {
      d = {
        getDisk: async () => (await tick(), { target: 'vda', alias: 'ua-rootdisk', chain: CHAIN }),
        getJob: async (domain) => (await tick(), jobs.get(domain) ?? null),
        startPull: async (domain, _target, options) => {
          calls.startPull++;
          await start(domain, options);
          calls.maxRunningAtOnce = Math.max(calls.maxRunningAtOnce, running());
        },
        setBandwidth: (_d: string, _t: string, _b: number, _o?: ActionOptions) => Promise.resolve(),
        abort: () => Promise.resolve(),
        watchEvents: () => ({ stop: () => undefined }),
      };
      drivers.set(pod, d);
    }
    return d;
  };
  const r = testReconciler({
    clients,
    blockPulls: cache(objects, cachedPulls),
    vmis: cache(vmis),
    pods: {
      ...cache(pods),
      byIndex: (_index: string, value: string) =>
        [...pods.values()].filter((p) => (podIndexes[POD_BY_VMI_UID]!(p) as string[]).includes(value)),
    },
    drivers: { kind: 'local', driverFor: (a) => Promise.resolve(driverFor(a.pod)) },
    maxConcurrentPulls: o.maxConcurrentPulls,
    maxPullsPerNode: o.maxPullsPerNode,
    ...(o.actionTimeoutMs !== undefined ? { actionTimeoutMs: o.actionTimeoutMs } : {}),
    enqueue: (key) => calls.enqueued.push(key),
  });
  const status = (key: string): BlockPullStatus => objects.get(key)?.['status'] ?? {};
  return { r, calls, jobs, status, domainOf: (ns: string, name: string) => `${ns}_vm-${name}` };
}

const pending = (namespace: string, n: number, node = (i: number) => `node-${i}`): Pull[] =>
  Array.from({ length: n }, (_, i) => ({ namespace, name: `p${i}`, node: node(i) }));

describe('Reconciler slots with concurrent workers', () => {
  it('16 workers, 12 BlockPulls ready to start, a limit of 4: never more than 4 start; the others wait for a slot', async () => {
    const w = world(pending('a', 12), { maxConcurrentPulls: 4, maxPullsPerNode: 100 });
    await Promise.all(Array.from({ length: 12 }, (_, i) => w.r.reconcile(`a/p${i}`)));
    expect(w.calls.startPull).toBe(4);
    expect(w.calls.maxRunningAtOnce).toBe(4);
    const reasons = Array.from({ length: 12 }, (_, i) => w.status(`a/p${i}`).reason);
    expect(reasons.filter((r) => r === 'Pulling')).toHaveLength(4);
    expect(reasons.filter((r) => r === 'WaitingForSlot')).toHaveLength(8);
  });

  it('the per-node limit too: 12 BlockPulls on one node with a limit of 2 per node: 2 start', async () => {
    const w = world(
      pending('a', 12, () => 'node-1'),
      { maxConcurrentPulls: 10, maxPullsPerNode: 2 },
    );
    await Promise.all(Array.from({ length: 12 }, (_, i) => w.r.reconcile(`a/p${i}`)));
    expect(w.calls.startPull).toBe(2);
    expect(
      Array.from({ length: 12 }, (_, i) => w.status(`a/p${i}`).reason).filter((r) => r === 'WaitingForSlot'),
    ).toHaveLength(10);
  });

  it('a start that never returns is ended at the bound: Unanswered, Pending, no slot held; the next look adopts the job it did start, or counts a failed start', async () => {
    // a/p0's start hangs (and ignores the signal); a/p1 waits for the only slot meanwhile.
    let signalled = 0;
    const w = world(pending('a', 2), {
      maxConcurrentPulls: 1,
      maxPullsPerNode: 100,
      actionTimeoutMs: 50,
      start: (_domain, options) => {
        options.signal?.addEventListener('abort', () => signalled++);
        return new Promise<void>(() => undefined);
      },
    });
    const t0 = performance.now();
    const [first, second] = await Promise.all([
      w.r.reconcile('a/p0'),
      new Promise((resolve) => setTimeout(resolve, 10)).then(() => w.r.reconcile('a/p1')),
    ]);
    expect(performance.now() - t0).toBeLessThan(1_000);
    expect(signalled).toBe(1); // the command was told to end
    expect(w.status('a/p0')).toMatchObject({
      phase: 'Pending',
      reason: 'HypervisorUnreachable',
      job: { state: 'Unanswered' },
      attempts: 1,
    });
    expect(w.status('a/p0').message).toMatch(
      /^the start of the pull \(virsh blockpull\) did not return within 50 ms; the command was ended; it may have started the job/,
    );
    expect(first.requeueAfterMs).toBe(5_000);
    expect(w.status('a/p1').reason).toBe('WaitingForSlot');
    expect(second).toBeDefined();
    // The slot given back woke the waiter, which now starts (and hangs too).
    expect(w.calls.enqueued).toContain('a/p1');
    await w.r.reconcile('a/p1');
    expect(w.status('a/p1')).toMatchObject({ phase: 'Pending', job: { state: 'Unanswered' } });
    // p0's start did run after all: the next look adopts it as ours (never started again).
    w.jobs.set(w.domainOf('a', 'p0'), { type: 'Block Pull', cur: 10, end: 100, bandwidth: 0 });
    const starts = w.calls.startPull;
    await w.r.reconcile('a/p0');
    expect(w.calls.startPull).toBe(starts);
    expect(w.status('a/p0')).toMatchObject({
      phase: 'Running',
      reason: 'Pulling',
      job: { state: 'Running' },
      attempts: 1,
    });
    // p1's did not: a failed start, retried after the backoff.
    await w.r.reconcile('a/p1');
    expect(w.calls.startPull).toBe(starts);
    expect(w.status('a/p1')).toMatchObject({ phase: 'Pending', reason: 'JobFailed', retries: 1 });
    expect(w.status('a/p1').job).toBeUndefined();
  });

  it('fair share: namespace b waits while a runs 3 of 4 slots; a new BlockPull of a then waits for its share, b takes the free slot', async () => {
    const running = (node: string, name: string): BlockPullStatus => ({
      phase: 'Running',
      reason: 'Pulling',
      attempts: 1,
      launcher: { pod: `virt-launcher-${name}`, node, container: 'compute', domain: `a_vm-${name}`, target: 'vda' },
      job: { state: 'Running' },
    });
    const waiting: BlockPullStatus = {
      phase: 'Pending',
      reason: 'WaitingForSlot',
      message: '4 pulls run cluster-wide (limit 4)',
    };
    const pulls: Pull[] = [
      ...[0, 1, 2].map((i) => ({ namespace: 'a', name: `r${i}`, node: `n${i}`, status: running(`n${i}`, `r${i}`) })),
      { namespace: 'a', name: 'new', node: 'n5' },
      { namespace: 'b', name: 'w', node: 'n6', status: waiting },
    ];
    const w = world(pulls, { maxConcurrentPulls: 4, maxPullsPerNode: 100 });
    for (const i of [0, 1, 2]) w.jobs.set(`a_vm-r${i}`, { type: 'Block Pull', cur: 1, end: 100, bandwidth: 0 });
    const a = await w.r.reconcile('a/new');
    expect(w.status('a/new')).toMatchObject({ phase: 'Pending', reason: 'WaitingForSlot' });
    expect(w.status('a/new').message).toBe(
      'namespace a runs 3 pulls, its fair share (2) of the 4 cluster-wide slots while 2 namespaces want one',
    );
    // A slot was free: it looks again after its requeue delay, not only when a slot is released.
    expect(a.requeueAfterMs).toBe(5_000);
    await w.r.reconcile('b/w');
    expect(w.status('b/w')).toMatchObject({ phase: 'Running', reason: 'Pulling' });
    expect(w.calls.startPull).toBe(1);
  });
});
