/**
 * What one reconcile pass costs, counted with a fake API server and a fake driver: decide() calls,
 * GETs of the BlockPull, status writes and libvirt commands, for each pass of a pull's life (start,
 * a poll while it runs, its end). docs/ARCHITECTURE.md (Reconcile) states the figures; a pass that
 * costs more than it says fails here.
 */
import { describe, expect, it, vi } from 'vitest';
import { FINALIZER } from '../api/types.ts';
import type { BlockJobDriver, BlockJobInfo, DiskInfo } from '../hypervisor/types.ts';
import type { KubeClients } from '../kube/client.ts';
import { blockPullFixture, launcherFixture } from '../../../test/unit/support/launcher.ts';
import { testReconciler } from '../../../test/unit/support/reconciler.ts';

const counted = vi.hoisted(() => ({ decide: 0, factsWanted: 0 }));
vi.mock('./decide.ts', async (importOriginal) => {
  const actual = await importOriginal<typeof import('./decide.ts')>();
  /** The Decider, counting its calls. */
  class CountingDecider extends actual.Decider {
    override decide(...args: Parameters<InstanceType<typeof actual.Decider>['decide']>) {
      counted.decide++;
      return super.decide(...args);
    }
    override factsWanted(...args: Parameters<InstanceType<typeof actual.Decider>['factsWanted']>) {
      counted.factsWanted++;
      return super.factsWanted(...args);
    }
  }
  return { ...actual, Decider: CountingDecider };
});

const node1 = launcherFixture('node1');
/** The VMI after a live migration to node2: another launcher pod, named in activePods. */
function movedToNode2(): { vmi: Record<string, unknown>; pod: Record<string, unknown> } {
  const { vmi, pod } = launcherFixture('node2');
  const podMeta = pod['metadata'] as Record<string, unknown>;
  const vmiStatus = vmi['status'] as Record<string, unknown>;
  return {
    vmi: { ...vmi, status: { ...vmiStatus, activePods: { 'pod-uid-2': 'node2' } } },
    pod: { ...pod, metadata: { ...podMeta, name: 'virt-launcher-vm-y', uid: 'pod-uid-2' } },
  };
}
const CHAIN = [
  { position: 0, index: 1, path: '/d/top.qcow2', format: 'qcow2' },
  { position: 1, index: 2, path: '/d/base.qcow2', format: 'qcow2' },
];

/** One BlockPull in a fake API server whose informer cache shows every write at once. */
function world() {
  let rv = 1;
  let stored: Record<string, unknown> = blockPullFixture(String(rv), { finalized: false });
  const api = { gets: 0, statusWrites: 0, metadataWrites: 0 };
  const virsh = { getDisk: 0, getJob: 0, getSpace: 0, startPull: 0 };
  const bump = (change: Record<string, unknown>): Record<string, unknown> => {
    stored = {
      ...stored,
      ...change,
      metadata: { ...(stored['metadata'] as object), ...(change['metadata'] ?? {}), resourceVersion: String(++rv) },
    };
    return structuredClone(stored);
  };
  const clients = {
    custom: {
      getNamespacedCustomObject: () => (api.gets++, Promise.resolve(structuredClone(stored))),
      patchNamespacedCustomObject: (req: { body: { metadata: { finalizers: string[] } } }) => (
        api.metadataWrites++,
        Promise.resolve(bump({ metadata: { finalizers: req.body.metadata.finalizers } }))
      ),
      patchNamespacedCustomObjectStatus: (req: { body: { op: string; path: string; value: unknown }[] }) => {
        api.statusWrites++;
        return Promise.resolve(bump({ status: req.body.find((op) => op.path === '/status')?.value }));
      },
    },
  } as unknown as KubeClients;
  let job: BlockJobInfo | null = null;
  let disk: DiskInfo = { target: 'vda', alias: 'ua-rootdisk', chain: CHAIN };
  const driver: BlockJobDriver = {
    getDisk: () => (virsh.getDisk++, Promise.resolve(disk)),
    getJob: () => (virsh.getJob++, Promise.resolve(job)),
    getSpace: () => (
      virsh.getSpace++,
      Promise.resolve({
        kind: 'measured',
        topPath: '/d/top.qcow2',
        pullBytes: 1 << 20,
        availableBytes: 1 << 30,
        totalBytes: 1 << 31,
      })
    ),
    startPull: () => {
      virsh.startPull++;
      job = { type: 'Block Pull', cur: 0, end: 100, bandwidth: 0 };
      return Promise.resolve();
    },
    setBandwidth: () => Promise.resolve(),
    abort: () => Promise.resolve(),
    watchEvents: () => ({ stop: () => undefined }),
  };
  const cache = { get: () => structuredClone(stored), list: () => [structuredClone(stored)] };
  let { vmi, pod } = node1;
  const reconciler = testReconciler({
    clients,
    blockPulls: cache,
    vmis: { get: () => vmi, list: () => [vmi] },
    pods: { get: () => pod, list: () => [pod], byIndex: () => [pod] },
    drivers: { kind: 'local', driverFor: () => Promise.resolve(driver) },
    statusUpdateIntervalMs: 0,
  });
  /** Counts of one reconcile of the BlockPull. */
  async function pass(): Promise<Record<string, number>> {
    counted.decide = 0;
    counted.factsWanted = 0;
    for (const k of Object.keys(api) as (keyof typeof api)[]) api[k] = 0;
    for (const k of Object.keys(virsh) as (keyof typeof virsh)[]) virsh[k] = 0;
    await reconciler.reconcile('ns/p');
    return { decide: counted.decide, factsWanted: counted.factsWanted, ...api, ...virsh };
  }
  return {
    pass,
    phase: () => (stored['status'] as { phase?: string } | undefined)?.phase,
    setJob: (j: BlockJobInfo | null) => (job = j),
    setDisk: (d: DiskInfo) => (disk = d),
    setLauncher: (l: { vmi: Record<string, unknown>; pod: Record<string, unknown> }) => ({ vmi, pod } = l),
    status: () => stored['status'] as Record<string, unknown> | undefined,
    finalizers: () => (stored['metadata'] as { finalizers?: string[] }).finalizers,
  };
}

describe('Reconciler: the cost of one pass', () => {
  it('start, poll and end of a pull: decide once per pass, no GET from a current cache, one status write per outcome', async () => {
    const w = world();
    // Finalizer pass, followed at once by the pass that measures space and starts.
    const start = await w.pass();
    expect(w.finalizers()).toEqual([FINALIZER]);
    expect(w.phase()).toBe('Running');
    w.setJob({ type: 'Block Pull', cur: 40, end: 100, bandwidth: 0 });
    const poll = await w.pass();
    w.setJob(null);
    w.setDisk({ target: 'vda', alias: 'ua-rootdisk', chain: [CHAIN[0]!] });
    const end = await w.pass();
    expect(w.phase()).toBe('Completed');
    console.log(`pass cost: start ${JSON.stringify(start)}; poll ${JSON.stringify(poll)}; end ${JSON.stringify(end)}`);
    // Two passes (finalizer, then start): one decide each, and one factsWanted where the disk is
    // idle (it asks for the space); the intent and the outcome are two status writes.
    // Before the gatherer: decide 4 for the start (the space and the slot recount decided again).
    expect(start).toEqual({
      decide: 2,
      factsWanted: 1,
      gets: 0,
      statusWrites: 2,
      metadataWrites: 1,
      getDisk: 1,
      getJob: 1,
      getSpace: 1,
      startPull: 1,
    });
    expect(poll).toEqual({
      decide: 1,
      factsWanted: 0,
      gets: 0,
      statusWrites: 1,
      metadataWrites: 0,
      getDisk: 0,
      getJob: 1,
      getSpace: 0,
      startPull: 0,
    });
    expect(end).toEqual({
      decide: 1,
      factsWanted: 1,
      gets: 0,
      statusWrites: 1,
      metadataWrites: 0,
      getDisk: 1,
      getJob: 1,
      getSpace: 0,
      startPull: 0,
    });
  });

  it('a Completed BlockPull: nothing from libvirt or the API server while its pod stays, one chain read when the VMI moves', async () => {
    const w = world();
    await w.pass();
    w.setJob(null);
    w.setDisk({ target: 'vda', alias: 'ua-rootdisk', chain: [CHAIN[0]!] });
    await w.pass();
    expect(w.phase()).toBe('Completed');
    const none = { factsWanted: 0, gets: 0, statusWrites: 0, metadataWrites: 0, getDisk: 0, getJob: 0, getSpace: 0 };
    // Woken (a VMI or pod event, a restart) on the same pod: one decide, nothing else.
    const unchanged = await w.pass();
    expect(unchanged).toEqual({ decide: 1, ...none, startPull: 0 });
    // Migrated: the target's chain is a new overlay on the container disk.
    w.setLauncher(movedToNode2());
    w.setDisk({
      target: 'vda',
      alias: 'ua-rootdisk',
      chain: [
        { position: 0, index: 1, path: '/d/target-overlay.qcow2', format: 'qcow2' },
        { position: 1, index: 2, path: '/d/base.qcow2', format: 'qcow2' },
      ],
    });
    const moved = await w.pass();
    expect(moved).toEqual({ decide: 1, ...none, statusWrites: 1, getDisk: 1, startPull: 0 });
    expect(w.phase()).toBe('Completed');
    expect((w.status()?.['backingChain'] as { readOn?: unknown }).readOn).toEqual({
      pod: 'virt-launcher-vm-y',
      node: 'node2',
    });
    // Read once per pod: the next passes on that pod cost what an unchanged one does.
    const after = await w.pass();
    console.log(`pass cost (Completed): unchanged ${JSON.stringify(unchanged)}; moved ${JSON.stringify(moved)}`);
    expect(after).toEqual({ decide: 1, ...none, startPull: 0 });
  });
});
