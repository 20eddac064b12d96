import { describe, expect, it } from 'vitest';
import { currentLauncherPod, domainName, ephemeralStorageLimit, libvirtUri, locateLauncher, migrationInProgress, vmiHasDisk, VmiSchema, PodSchema } from './launcher.ts';

const vmi = (status: Record<string, unknown> = {}, disks?: string[]) => ({
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachineInstance',
  metadata: { name: 'vm1', namespace: 'ns', uid: 'vmi-uid' },
  spec: { domain: { devices: disks ? { disks: disks.map((name) => ({ name, disk: { bus: 'virtio' } })) } : {} } },
  status: { phase: 'Running', nodeName: 'node1', runtimeUser: 107, ...status },
});
const pod = (name: string, o: { uid?: string; node?: string; phase?: string; created?: string; deleting?: boolean; containers?: string[] } = {}) => ({
  metadata: {
    name,
    namespace: 'ns',
    labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': o.uid ?? 'vmi-uid' },
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
    expect(migrationInProgress(VmiSchema.parse(vmi({ migrationState: { sourcePod: 'a', targetPod: 'b' } })))).toBe(true);
    expect(migrationInProgress(VmiSchema.parse(vmi({ migrationState: { completed: true } })))).toBe(false);
    expect(migrationInProgress(VmiSchema.parse(vmi({ migrationState: { failed: true } })))).toBe(false);
  });

  it('disk listed in the VMI spec', () => {
    expect(vmiHasDisk(VmiSchema.parse(vmi({}, ['rootdisk'])), 'rootdisk')).toBe(true);
    expect(vmiHasDisk(VmiSchema.parse(vmi({}, ['rootdisk'])), 'data')).toBe(false);
    expect(vmiHasDisk(VmiSchema.parse(vmi()), 'data')).toBeUndefined();
  });

  it('locateLauncher maps every case to an observation', () => {
    expect(locateLauncher('ns', 'vm1', undefined, []).observation.kind).toBe('vmiNotFound');
    expect(locateLauncher('ns', 'vm1', vmi({ phase: 'Scheduling' }), []).observation).toMatchObject({ kind: 'vmiNotRunning', message: expect.stringContaining('Scheduling') as string });
    expect(locateLauncher('ns', 'vm1', vmi({ migrationState: { sourcePod: 'a', targetPod: 'b' } }), [pod('p')]).observation.kind).toBe('migrationInProgress');
    expect(locateLauncher('ns', 'vm1', vmi(), []).observation.kind).toBe('vmiNotRunning');
    expect(locateLauncher('ns', 'vm1', vmi(), [pod('p', { containers: ['other'] })]).observation.kind).toBe('launcherNotFound');
    const found = locateLauncher('ns', 'vm1', vmi(), [pod('p')]);
    expect(found).toEqual({
      observation: { kind: 'found', launcher: { pod: 'p', node: 'node1', container: 'compute', domain: 'ns_vm1' } },
      uri: 'qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock',
      namespace: 'ns',
      runtimeUser: 107,
    });
    expect(locateLauncher('ns', 'vm1', vmi({ runtimeUser: 0 }), [pod('p')]).uri).toBe('qemu:///system');
  });
});

describe('ephemeralStorageLimit', () => {
  const withLimits = (...limits: (string | number | undefined)[]) => ({
    spec: { containers: limits.map((l, i) => ({ name: `c${i}`, resources: l === undefined ? {} : { limits: { 'ephemeral-storage': l, cpu: '1' } } })) },
  });
  it('is the sum of the containers that have one, or undefined', () => {
    expect(ephemeralStorageLimit(withLimits('1Gi', undefined, '50M'))).toBe(1024 ** 3 + 50_000_000);
    expect(ephemeralStorageLimit(withLimits(1000))).toBe(1000);
    expect(ephemeralStorageLimit(withLimits(undefined))).toBeUndefined();
    expect(ephemeralStorageLimit({ spec: {} })).toBeUndefined();
    expect(ephemeralStorageLimit(undefined)).toBeUndefined();
    expect(ephemeralStorageLimit(withLimits('lots'))).toBeUndefined();
  });
});
