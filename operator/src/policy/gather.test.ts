import type { KubernetesObject } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { parsePolicy, type Policy } from '../api/policy-types.ts';
import {
  BP_BY_CONTROLLER,
  BP_BY_DISK,
  pullIndexes,
  pullView,
  slimPullForPolicy,
  slimVmiForPolicy,
  vmiDisks,
  parseCachedVmi,
} from './cache.ts';
import { gatherPolicy, type PolicyCaches } from './gather.ts';

const NOW = new Date('2026-12-07T12:00:00Z');
const vmiObj = (
  name: string,
  labels: Record<string, string>,
  ns = 'ns',
  created = '2026-12-07T10:00:00Z',
): KubernetesObject =>
  slimVmiForPolicy({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: {
      name,
      namespace: ns,
      uid: `${name}-uid`,
      labels,
      creationTimestamp: created as unknown as Date,
      managedFields: [],
    },
    spec: {
      domain: {
        devices: {
          disks: [
            { name: 'rootdisk', disk: { bus: 'virtio' } },
            { name: 'data', disk: {} },
            { name: 'cloudinit', disk: {} },
            { name: 'iso', cdrom: {} },
          ],
        },
      },
      volumes: [
        { name: 'rootdisk', containerDisk: { image: 'x' } },
        { name: 'data', persistentVolumeClaim: { claimName: 'c' } },
        { name: 'cloudinit', cloudInitNoCloud: {} },
        { name: 'iso', containerDisk: { image: 'y' } },
      ],
    },
    status: { phase: 'Running' },
  } as KubernetesObject);

function cachesOf(
  vmis: KubernetesObject[],
  pulls: KubernetesObject[],
  policies: Policy[],
  namespaces: Record<string, Record<string, string>> = { ns: {} },
): PolicyCaches {
  const slim = pulls.map(slimPullForPolicy);
  return {
    policies: () => policies,
    vmis: {
      list: (ns) => vmis.filter((v) => ns === undefined || v.metadata?.namespace === ns),
      get: (ns, name) => vmis.find((v) => v.metadata?.namespace === ns && v.metadata.name === name),
    },
    pulls: { byIndex: (index, value) => slim.filter((p) => pullIndexes[index]!(p).includes(value)) },
    namespaces: () => new Map(Object.entries(namespaces)),
  };
}
const pol = (
  name: string,
  spec: Record<string, unknown>,
  created: string,
  kind: 'BlockPullPolicy' | 'ClusterBlockPullPolicy' = 'BlockPullPolicy',
): Policy =>
  parsePolicy(kind, {
    metadata: {
      name,
      uid: `${name}-uid`,
      creationTimestamp: created,
      generation: 1,
      ...(kind === 'BlockPullPolicy' ? { namespace: 'ns' } : {}),
    },
    spec,
  });

describe('policy caches', () => {
  it('keeps of a VMI its identity, labels, disks and volume kinds only', () => {
    const v = parseCachedVmi(vmiObj('vm', { fleet: 'ci' }))!;
    expect(v.metadata).toEqual({
      name: 'vm',
      namespace: 'ns',
      uid: 'vm-uid',
      labels: { fleet: 'ci' },
      creationTimestamp: '2026-12-07T10:00:00Z',
    });
    expect(v.spec?.disks?.map((d) => `${d.name}:${d.device}`)).toEqual([
      'rootdisk:disk',
      'data:disk',
      'cloudinit:disk',
      'iso:cdrom',
    ]);
  });

  it('disks: named ones the VMI has, else those whose volume can carry a chain (no cdrom, no cloud-init)', () => {
    const v = parseCachedVmi(vmiObj('vm', {}))!;
    expect(vmiDisks(v, undefined)).toEqual(['rootdisk', 'data']);
    expect(vmiDisks(v, ['data', 'absent'])).toEqual(['data']);
  });

  it('reads a BlockPull: owner, labels, chain length, progress; indexes by owner and disk', () => {
    const bp = {
      metadata: {
        name: 'b',
        namespace: 'ns',
        uid: 'b-uid',
        creationTimestamp: '2026-12-07T11:00:00Z',
        labels: { 'blockpull.dev/vmi-uid': 'vm-uid', 'blockpull.dev/role': 'plan' },
        ownerReferences: [
          { apiVersion: 'blockpull.dev/v1alpha1', kind: 'BlockPullPolicy', name: 'p', uid: 'p-uid', controller: true },
        ],
        managedFields: [{}],
      },
      spec: { vmiName: 'vm', disk: 'rootdisk', dryRun: true },
      status: {
        phase: 'Planned',
        backingChain: { current: [{ path: '/a' }, { path: '/b' }, { path: '/c' }] },
        plan: { bytesToWrite: 7 },
      },
    };
    const slim = slimPullForPolicy(bp as unknown as KubernetesObject);
    expect(JSON.stringify(slim)).not.toContain('/a');
    expect(pullView(slim)).toMatchObject({
      controllerUid: 'p-uid',
      vmiUid: 'vm-uid',
      role: 'plan',
      chainLength: 3,
      planBytes: 7,
      dryRun: true,
      phase: 'Planned',
    });
    expect(pullView(slim)).not.toHaveProperty('basePosition');
    // A plan of a pull down to a kept base (base.keepBottom) is told apart by its base.
    const basePlan = slimPullForPolicy({
      ...bp,
      spec: { ...bp.spec, base: { position: 2 } },
    } as unknown as KubernetesObject);
    expect(pullView(basePlan)).toMatchObject({ role: 'plan', basePosition: 2, planBytes: 7 });
    expect(pullIndexes[BP_BY_CONTROLLER]!(slim)).toEqual(['p-uid']);
    expect(pullIndexes[BP_BY_DISK]!(slim)).toEqual(['ns/vm/rootdisk']);
  });
});

describe('gatherPolicy', () => {
  it('selects by label, in the policy namespace, disks sorted; an older policy on the same disk is named', () => {
    const older = pol(
      'first',
      { vmiSelector: { matchLabels: { fleet: 'ci' } }, disks: ['data'] },
      '2026-12-01T00:00:00Z',
    );
    const me = pol('me', { vmiSelector: { matchLabels: { fleet: 'ci' } } }, '2026-12-05T00:00:00Z');
    const vmis = [
      vmiObj('b', { fleet: 'ci' }),
      vmiObj('a', { fleet: 'ci' }),
      vmiObj('c', { fleet: 'vdi' }),
      vmiObj('d', { fleet: 'ci' }, 'elsewhere'),
    ];
    const f = gatherPolicy(me, cachesOf(vmis, [], [older, me]), NOW);
    expect(f.selected.map((d) => `${d.vmi}/${d.disk}:${d.olderPolicy ?? ''}`)).toEqual([
      'a/data:BlockPullPolicy/ns/first',
      'a/rootdisk:',
      'b/data:BlockPullPolicy/ns/first',
      'b/rootdisk:',
    ]);
    expect(f.window).toEqual({ kind: 'always' });
  });

  it('a cluster policy selects in the namespaces its namespaceSelector matches', () => {
    const c = pol(
      'c',
      { vmiSelector: {}, namespaceSelector: { matchLabels: { team: 'a' } }, disks: ['rootdisk'] },
      '2026-12-05T00:00:00Z',
      'ClusterBlockPullPolicy',
    );
    const vmis = [vmiObj('x', {}, 'team-a'), vmiObj('y', {}, 'team-b')];
    const f = gatherPolicy(c, cachesOf(vmis, [], [c], { 'team-a': { team: 'a' }, 'team-b': { team: 'b' } }), NOW);
    expect(f.selected.map((d) => `${d.namespace}/${d.vmi}`)).toEqual(['team-a/x']);
  });

  it('own pulls by controller owner, other claims on the selected disks, VMI uids of own pulls', () => {
    const me = pol('me', { vmiSelector: {}, disks: ['rootdisk'] }, '2026-12-05T00:00:00Z');
    const bp = (name: string, vmi: string, owner?: string): KubernetesObject =>
      ({
        metadata: {
          name,
          namespace: 'ns',
          uid: `${name}-uid`,
          ...(owner
            ? { ownerReferences: [{ kind: 'BlockPullPolicy', name: 'me', uid: owner, controller: true }] }
            : {}),
        },
        spec: { vmiName: vmi, disk: 'rootdisk' },
      }) as KubernetesObject;
    const f = gatherPolicy(
      me,
      cachesOf([vmiObj('a', {})], [bp('mine', 'a', 'me-uid'), bp('users', 'a'), bp('stale', 'gone', 'me-uid')], [me]),
      NOW,
    );
    expect(f.own.map((o) => o.name).sort()).toEqual(['mine', 'stale']);
    expect(f.others.map((o) => o.name)).toEqual(['users']);
    expect([...f.vmiUids]).toEqual([['ns/a', 'a-uid']]);
  });
});
