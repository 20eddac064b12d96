import { describe, expect, it } from 'vitest';
import {
  currentLauncherPod,
  domainName,
  ephemeralStorageLimit,
  libvirtUri,
  locateLauncher,
  migrationInProgress,
  requestedMigration,
  vmiHasDisk,
  VmiSchema,
  PodSchema,
} from './launcher.ts';

/** Pod uids the VMI lists in status.activePods by default. */
const ACTIVE = [
  'other-vmi',
  'pending',
  'wrong-node',
  'deleting',
  'old',
  'new',
  'p',
  'forged-owner',
  'not-controller',
  'wrong-kind',
].map((n) => `uid-${n}`);
const vmi = (status: Record<string, unknown> = {}, disks?: string[]) => ({
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachineInstance',
  metadata: { name: 'vm1', namespace: 'ns', uid: 'vmi-uid' },
  spec: { domain: { devices: disks ? { disks: disks.map((name) => ({ name, disk: { bus: 'virtio' } })) } : {} } },
  status: {
    phase: 'Running',
    nodeName: 'node1',
    runtimeUser: 107,
    activePods: Object.fromEntries(ACTIVE.map((u) => [u, 'node1'])),
    ...status,
  },
});
type Owner = { apiVersion?: string; kind?: string; name?: string; uid?: string; controller?: boolean };
const VMI_OWNER: Owner = {
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachineInstance',
  name: 'vm1',
  uid: 'vmi-uid',
  controller: true,
};
const pod = (
  name: string,
  o: {
    uid?: string;
    node?: string;
    phase?: string;
    created?: string;
    deleting?: boolean;
    containers?: string[];
    owners?: Owner[];
    podUid?: string;
  } = {},
) => ({
  metadata: {
    name,
    namespace: 'ns',
    uid: o.podUid ?? `uid-${name}`,
    labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': o.uid ?? 'vmi-uid' },
    ownerReferences: o.owners ?? [{ ...VMI_OWNER, uid: o.uid ?? 'vmi-uid' }],
    creationTimestamp: o.created ?? '2026-11-27T09:00:00Z',
    ...(o.deleting ? { deletionTimestamp: '2026-11-27T09:30:00Z' } : {}),
  },
  spec: { nodeName: o.node ?? 'node1', containers: (o.containers ?? ['compute']).map((n) => ({ name: n })) },
  status: { phase: o.phase ?? 'Running' },
});

describe('kubevirt launcher lookup', () => {
  it('libvirt URI by runtimeUser', () => {
    expect(libvirtUri(0)).toBe('qemu:///system');
    expect(libvirtUri(107)).toBe('qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock');
    expect(libvirtUri(undefined)).toBe('qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock');
    expect(domainName('ns', 'vm1')).toBe('ns_vm1');
  });

  it('current pod: right VMI uid, Running, on the VMI node, not deleting, newest', () => {
    const v = VmiSchema.parse(vmi());
    const pods = [
      pod('other-vmi', { uid: 'x', created: '2026-11-27T10:00:00Z' }),
      pod('pending', { phase: 'Pending', created: '2026-11-27T10:00:00Z' }),
      pod('wrong-node', { node: 'node2', created: '2026-11-27T10:00:00Z' }),
      pod('deleting', { deleting: true, created: '2026-11-27T10:00:00Z' }),
      pod('old', { created: '2026-11-27T08:00:00Z' }),
      pod('new', { created: '2026-11-27T09:00:00Z' }),
    ].map((p) => PodSchema.parse(p));
    expect(currentLauncherPod(v, pods)?.metadata.name).toBe('new');
    expect(currentLauncherPod(VmiSchema.parse(vmi({ nodeName: undefined })), pods)).toBeUndefined();
  });

  it('migration in progress from status.migrationState', () => {
    expect(migrationInProgress(VmiSchema.parse(vmi()))).toBe(false);
    expect(migrationInProgress(VmiSchema.parse(vmi({ migrationState: { sourcePod: 'a', targetPod: 'b' } })))).toBe(
      true,
    );
    expect(migrationInProgress(VmiSchema.parse(vmi({ migrationState: { completed: true } })))).toBe(false);
    expect(migrationInProgress(VmiSchema.parse(vmi({ migrationState: { failed: true } })))).toBe(false);
  });

  it('disk listed in the VMI spec', () => {
    expect(vmiHasDisk(VmiSchema.parse(vmi({}, ['rootdisk'])), 'rootdisk')).toBe(true);
    expect(vmiHasDisk(VmiSchema.parse(vmi({}, ['rootdisk'])), 'data')).toBe(false);
    expect(vmiHasDisk(VmiSchema.parse(vmi()), 'data')).toBeUndefined();
  });

  it('locateLauncher maps every case to an observation', () => {
    expect(locateLauncher('ns', 'vm1', undefined, []).kind).toBe('vmiNotFound');
    expect(locateLauncher('ns', 'vm1', vmi({ phase: 'Scheduling' }), [])).toMatchObject({
      kind: 'vmiNotRunning',
      message: expect.stringContaining('Scheduling') as string,
    });
    // A migration with the source pod still the launcher: found, with the migration (a running pull yields through it).
    expect(
      locateLauncher('ns', 'vm1', vmi({ migrationState: { sourcePod: 'p', targetPod: 'b' } }), [pod('p')]),
    ).toMatchObject({
      kind: 'found',
      launcher: { pod: 'p' },
      migration: { name: 'migration (p -> b)' },
    });
    // ... and with no acceptable launcher pod (between source and target): wait for it.
    expect(locateLauncher('ns', 'vm1', vmi({ migrationState: { sourcePod: 'a', targetPod: 'b' } }), []).kind).toBe(
      'migrationInProgress',
    );
    // The VMI runs but its launcher pod is gone: LauncherNotFound (VMINotRunning is for the VMI's phase only).
    expect(locateLauncher('ns', 'vm1', vmi(), [])).toEqual({
      kind: 'launcherNotFound',
      message:
        'VirtualMachineInstance ns/vm1 is Running but has no acceptable virt-launcher pod on node node1: no pod is controlled by it or labelled kubevirt.io/created-by=vmi-uid',
    });
    expect(locateLauncher('ns', 'vm1', vmi(), [pod('p', { containers: ['other'] })]).kind).toBe('launcherNotFound');
    const found = locateLauncher('ns', 'vm1', vmi(), [pod('p')]);
    expect(found).toEqual({
      kind: 'found',
      launcher: {
        namespace: 'ns',
        pod: 'p',
        node: 'node1',
        container: 'compute',
        domain: 'ns_vm1',
        uri: 'qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock',
      },
    });
    expect(locateLauncher('ns', 'vm1', vmi({ runtimeUser: 0 }), [pod('p')])).toMatchObject({
      launcher: { uri: 'qemu:///system' },
    });
  });

  it('a forged pod (label and node right, not controlled by the VMI) is refused with the reason', () => {
    const created = '2026-11-27T10:00:00Z';
    // The spoof found in a review: label kubevirt.io/created-by=<vmi uid>, spec.nodeName = the VMI's node, Running, no owner.
    const forged = pod('forged', { owners: [], created });
    const r = locateLauncher('ns', 'vm1', vmi(), [forged]);
    expect(r).toEqual({
      kind: 'launcherNotFound',
      message:
        'VirtualMachineInstance ns/vm1 is Running but has no acceptable virt-launcher pod on node node1: pod forged refused: ' +
        "not controlled by the VMI (no ownerReference with controller: true, kind VirtualMachineInstance, uid vmi-uid); not in the VMI's status.activePods",
    });
    expect(r).not.toHaveProperty('launcher');
    // An owner reference that names the VMI but is not the controller, or names another kind: refused too.
    const notController = pod('not-controller', { owners: [{ ...VMI_OWNER, controller: false }], created });
    const wrongKind = pod('wrong-kind', { owners: [{ ...VMI_OWNER, kind: 'Pod' }], created });
    const another = pod('forged-owner', { owners: [{ ...VMI_OWNER, uid: 'other-uid' }], created });
    for (const p of [notController, wrongKind]) {
      expect(locateLauncher('ns', 'vm1', vmi(), [p])).toMatchObject({
        kind: 'launcherNotFound',
        message: expect.stringContaining(`pod ${p.metadata.name} refused: not controlled by the VMI`) as string,
      });
    }
    // Controlled by the VMI but missing from status.activePods (e.g. a pod of an older incarnation).
    const inactive = pod('p', { podUid: 'uid-unknown' });
    expect(locateLauncher('ns', 'vm1', vmi(), [inactive])).toMatchObject({
      kind: 'launcherNotFound',
      message: expect.stringMatching(/pod p refused: not in the VMI's status\.activePods$/) as string,
    });
    // The real launcher is chosen even when a forged pod is newer.
    const real = pod('old', { created: '2026-11-27T08:00:00Z' });
    expect(locateLauncher('ns', 'vm1', vmi(), [forged, notController, wrongKind, another, real])).toEqual({
      kind: 'found',
      launcher: {
        namespace: 'ns',
        pod: 'old',
        node: 'node1',
        container: 'compute',
        domain: 'ns_vm1',
        uri: 'qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock',
      },
    });
    // The message names at most five refused pods.
    const many = Array.from({ length: 7 }, (_, i) => pod(`f${i}`, { owners: [] }));
    expect((locateLauncher('ns', 'vm1', vmi(), many) as { message: string }).message).toMatch(
      /pod f4 refused: .*; and 2 more$/,
    );
  });

  it('a pod on another node or not Running is refused with that reason', () => {
    const r = locateLauncher('ns', 'vm1', vmi(), [
      pod('wrong-node', { node: 'node2' }),
      pod('pending', { phase: 'Pending' }),
      pod('deleting', { deleting: true }),
    ]);
    expect(r.kind).toBe('launcherNotFound');
    const message = (r as { message: string }).message;
    expect(message).toContain("pod wrong-node refused: on node node2, not the VMI's node node1");
    expect(message).toContain('pod pending refused: Pending, not Running');
    expect(message).toContain('pod deleting refused: being deleted');
  });

  it('for an abort on delete, a pod being deleted (still Running) is found, marked terminating; a pod not being deleted comes first', () => {
    const deleting = pod('deleting', { deleting: true, created: '2026-11-27T10:00:00Z' });
    const found = locateLauncher('ns', 'vm1', vmi(), [deleting], [], { terminating: true });
    expect(found).toMatchObject({ kind: 'found', launcher: { pod: 'deleting' }, terminating: true });
    // Other checks still hold: a terminating pod that is no longer Running is refused.
    expect(
      locateLauncher('ns', 'vm1', vmi(), [pod('deleting', { deleting: true, phase: 'Succeeded' })], [], {
        terminating: true,
      }).kind,
    ).toBe('launcherNotFound');
    const both = locateLauncher('ns', 'vm1', vmi(), [deleting, pod('old', { created: '2026-11-27T08:00:00Z' })], [], {
      terminating: true,
    });
    expect(both).toMatchObject({ kind: 'found', launcher: { pod: 'old' } });
    expect(both).not.toHaveProperty('terminating');
  });
});

describe('ephemeralStorageLimit', () => {
  const withLimits = (...limits: (string | number | undefined)[]) => ({
    spec: {
      containers: limits.map((l, i) => ({
        name: `c${i}`,
        resources: l === undefined ? {} : { limits: { 'ephemeral-storage': l, cpu: '1' } },
      })),
    },
  });
  it('is the sum of the containers that have one, or undefined', () => {
    expect(ephemeralStorageLimit(withLimits('1Gi', undefined, '50M'))).toBe(1024 ** 3 + 50_000_000);
    expect(ephemeralStorageLimit(withLimits(1000))).toBe(1000);
    expect(ephemeralStorageLimit(withLimits(undefined))).toBeUndefined();
    expect(ephemeralStorageLimit({ spec: {} })).toBeUndefined();
    expect(ephemeralStorageLimit(undefined)).toBeUndefined();
    expect(ephemeralStorageLimit(withLimits('lots'))).toBeUndefined();
  });

  describe('requestedMigration', () => {
    const vmim = (name: string, o: { vmiName?: string; ns?: string; phase?: string; created?: string } = {}) => ({
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstanceMigration',
      metadata: { name, namespace: o.ns ?? 'ns', creationTimestamp: o.created ?? '2026-11-27T09:00:00Z' },
      spec: { vmiName: o.vmiName ?? 'vm1' },
      ...(o.phase !== undefined ? { status: { phase: o.phase } } : {}),
    });
    const v = VmiSchema.parse(vmi());

    it('a VMIM naming the VMI that is not final (no status yet, Pending, Scheduling, Running ...)', () => {
      expect(requestedMigration(v, [])).toBeUndefined();
      expect(requestedMigration(v, [vmim('m1')])).toEqual({
        name: 'VirtualMachineInstanceMigration ns/m1',
        message: 'VirtualMachineInstanceMigration ns/m1 (phase not started) migrates VirtualMachineInstance ns/vm1',
      });
      for (const phase of ['Pending', 'Scheduling', 'Scheduled', 'PreparingTarget', 'TargetReady', 'Running']) {
        expect(requestedMigration(v, [vmim('m1', { phase })])?.message, phase).toContain(`(phase ${phase})`);
      }
    });

    it('final VMIMs, VMIMs of other VMIs or namespaces and malformed objects do not count', () => {
      expect(
        requestedMigration(v, [vmim('done', { phase: 'Succeeded' }), vmim('bad', { phase: 'Failed' })]),
      ).toBeUndefined();
      expect(
        requestedMigration(v, [
          vmim('other', { vmiName: 'vm2' }),
          vmim('elsewhere', { ns: 'ns2' }),
          { metadata: { name: 'x' } },
          null,
        ]),
      ).toBeUndefined();
    });

    it('names the oldest open VMIM', () => {
      const m = requestedMigration(v, [
        vmim('b', { created: '2026-11-27T09:05:00Z' }),
        vmim('a', { created: '2026-11-27T09:06:00Z' }),
        vmim('old', { phase: 'Failed', created: '2026-11-27T08:00:00Z' }),
      ]);
      expect(m?.name).toBe('VirtualMachineInstanceMigration ns/b');
    });

    it("the VMI's migrationState (neither completed nor failed) and an evacuation of its node", () => {
      expect(
        requestedMigration(
          VmiSchema.parse(vmi({ migrationState: { sourcePod: 'a', targetPod: 'b', migrationUid: 'u1' } })),
          [],
        )?.name,
      ).toBe('migration u1 (a -> b)');
      expect(
        requestedMigration(
          VmiSchema.parse(vmi({ migrationState: { sourcePod: 'a', targetPod: 'b', completed: true } })),
          [],
        ),
      ).toBeUndefined();
      expect(
        requestedMigration(
          VmiSchema.parse(vmi({ migrationState: { sourcePod: 'a', targetPod: 'b', failed: true } })),
          [],
        ),
      ).toBeUndefined();
      expect(requestedMigration(VmiSchema.parse(vmi({ evacuationNodeName: 'node1' })), [])).toEqual({
        name: 'evacuation of node node1',
        message: 'VirtualMachineInstance ns/vm1 is to be evacuated from node node1 (status.evacuationNodeName)',
      });
      // An evacuation of another node (the VMI has left it) or an empty one is not a request.
      expect(requestedMigration(VmiSchema.parse(vmi({ evacuationNodeName: 'node0' })), [])).toBeUndefined();
      expect(requestedMigration(VmiSchema.parse(vmi({ evacuationNodeName: '' })), [])).toBeUndefined();
    });

    it('locateLauncher passes it on with the found launcher', () => {
      const found = locateLauncher('ns', 'vm1', vmi(), [pod('p')], [vmim('m1', { phase: 'Running' })]);
      expect(found).toMatchObject({
        kind: 'found',
        launcher: { pod: 'p' },
        migration: { name: 'VirtualMachineInstanceMigration ns/m1' },
      });
      const none = locateLauncher('ns', 'vm1', vmi(), [pod('p')], [vmim('m1', { phase: 'Succeeded' })]);
      expect(none).not.toHaveProperty('migration');
    });
  });
});
