import { describe, expect, it } from 'vitest';
import { chainOperations, hotplugVolumeOf, operationVmKey } from './chain-operations.ts';
import { VmiSchema } from './launcher.ts';

const vmi = (status: Record<string, unknown> = {}, spec: Record<string, unknown> = {}) =>
  VmiSchema.parse({
    metadata: { name: 'vm1', namespace: 'ns', uid: 'u1' },
    spec,
    status: { phase: 'Running', ...status },
  });
const source = { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm1' };
const snapshot = (name: string, phase?: string, src: Record<string, unknown> = source, ns = 'ns') => ({
  metadata: { name, namespace: ns },
  spec: { source: src },
  ...(phase !== undefined ? { status: { phase } } : {}),
});
const backup = (name: string, conditions: { type: string; status: string; reason?: string }[] = []) => ({
  metadata: { name, namespace: 'ns' },
  spec: { source, pvcName: 'out' },
  status: { conditions },
});
const CHAIN = [
  { position: 0, path: '/var/run/kubevirt-ephemeral-disks/disk-data/rootdisk/disk.qcow2', format: 'qcow2' },
  { position: 1, path: '/var/run/kubevirt/container-disks/disk_0.img', format: 'qcow2' },
];
const ops = (o: Partial<Parameters<typeof chainOperations>[0]> = {}) =>
  chainOperations({ vmi: vmi(), disk: 'rootdisk', chain: CHAIN, snapshots: [], backups: [], ...o });

describe("KubeVirt's chain operations", () => {
  it('none: an idle VM', () => {
    expect(ops()).toEqual([]);
    // A condition False, final snapshots, finished backups, another VM's: none either.
    expect(
      ops({
        vmi: vmi({
          conditions: [
            { type: 'OverlaySnapshotActive', status: 'False' },
            // A volume migration cancelled (or refused): virt-controller sets the condition False.
            { type: 'VolumesChange', status: 'False', reason: 'VolumesChangeCancellation' },
          ],
        }),
        snapshots: [
          snapshot('s1', 'Succeeded'),
          snapshot('s2', 'Failed'),
          snapshot('s3', 'InProgress', { ...source, name: 'vm2' }),
          snapshot('s4', 'InProgress', source, 'other'),
        ],
        backups: [
          backup('b1', [{ type: 'Complete', status: 'True' }]),
          backup('b2', [{ type: 'Failed', status: 'True' }]),
        ],
      }),
    ).toEqual([]);
  });

  it('an external snapshot window: the VMI condition OverlaySnapshotActive=True', () => {
    const [op] = ops({
      vmi: vmi({ conditions: [{ type: 'OverlaySnapshotActive', status: 'True', reason: 'SnapshotInProgress' }] }),
    });
    expect(op).toMatchObject({ kind: 'snapshot', name: 'the external snapshot of VirtualMachineInstance ns/vm1' });
    expect(op?.message).toMatch(/OverlaySnapshotActive=True \(SnapshotInProgress\)/);
  });

  it('a VirtualMachineSnapshot of the VM not in a final phase (no phase yet counts)', () => {
    expect(ops({ snapshots: [snapshot('s-b', 'InProgress'), snapshot('s-a')] }).map((o) => o.name)).toEqual([
      'VirtualMachineSnapshot ns/s-a',
      'VirtualMachineSnapshot ns/s-b',
    ]);
    expect(ops({ snapshots: [snapshot('s', 'Unknown')] })[0]?.message).toMatch(/phase Unknown/);
  });

  it("an image of the chain on a hot-plugged or utility volume other than the disk's own: KubeVirt's overlay", () => {
    const ovl = {
      position: 0,
      path: '/var/run/kubevirt/hotplug-disks/snap-1-snap-scratch/ovl-rootdisk.qcow2',
      format: 'qcow2',
    };
    const chain = [ovl, ...CHAIN.map((l) => ({ ...l, position: l.position + 1 }))];
    const withUtility = vmi({}, { utilityVolumes: [{ name: 'snap-1-snap-scratch' }] });
    const [op] = ops({ vmi: withUtility, chain });
    expect(op?.kind).toBe('snapshot');
    expect(op?.message).toMatch(/lies on hot-plugged or utility volume snap-1-snap-scratch/);
    // Said by the chain alone, when the VMI does not list it (yet).
    expect(ops({ chain })[0]?.message).toMatch(/lies on hot-plugged volume snap-1-snap-scratch/);
    // A hot-plugged volume listed in volumeStatus.
    const hp = vmi({ volumeStatus: [{ name: 'scratch', hotplugVolume: { attachPodName: 'p' } }] });
    expect(
      ops({
        vmi: hp,
        chain: [{ position: 0, path: '/var/run/kubevirt/hotplug-disks/scratch.img', format: 'qcow2' }, CHAIN[1]!],
      })[0]?.message,
    ).toMatch(/hot-plugged or utility volume scratch/);
    // The disk's own hot-plugged volume is its own: not a window.
    expect(
      ops({ chain: [{ position: 0, path: '/var/run/kubevirt/hotplug-disks/rootdisk.img', format: 'qcow2' }] }),
    ).toEqual([]);
  });

  it('a VirtualMachineBackup of the VM without Complete or Failed True', () => {
    const [op] = ops({ backups: [backup('bk', [{ type: 'Progressing', status: 'True', reason: 'Initiated' }])] });
    expect(op).toMatchObject({ kind: 'backup', name: 'VirtualMachineBackup ns/bk' });
    expect(op?.message).toMatch(/\(Initiated\) backs up VirtualMachine ns\/vm1/);
    expect(ops({ backups: [backup('new')] })[0]?.kind).toBe('backup');
  });

  it('a volume migration: the VMI condition VolumesChange=True (as virt-controller sets it)', () => {
    // virt-controller's syncVolumesUpdate: status True, message "migrate volumes", no reason.
    const migrating = vmi({
      conditions: [{ type: 'VolumesChange', status: 'True', message: 'migrate volumes' }],
      migratedVolumes: [{ volumeName: 'rootdisk' }],
    });
    const [op] = ops({ vmi: migrating });
    expect(op).toMatchObject({
      kind: 'volumeMigration',
      name: 'the volume migration of VirtualMachineInstance ns/vm1',
    });
    expect(op?.message).toMatch(/has condition VolumesChange=True: KubeVirt migrates its volumes to new claims$/);
    expect(
      ops({ vmi: vmi({ conditions: [{ type: 'VolumesChange', status: 'True', reason: 'R' }] }) })[0]?.message,
    ).toMatch(/VolumesChange=True \(R\)/);
    // Only True: Unknown is no operation either.
    expect(ops({ vmi: vmi({ conditions: [{ type: 'VolumesChange', status: 'Unknown' }] }) })).toEqual([]);
  });

  it('snapshots come before backups, a volume migration last', () => {
    const all = ops({
      vmi: vmi({
        conditions: [
          { type: 'VolumesChange', status: 'True' },
          { type: 'OverlaySnapshotActive', status: 'True' },
        ],
      }),
      backups: [backup('bk')],
      snapshots: [snapshot('s')],
    });
    expect(all.map((o) => o.kind)).toEqual(['snapshot', 'snapshot', 'backup', 'volumeMigration']);
  });

  it('the VM of a snapshot or backup: its source VirtualMachine; a tracker names none', () => {
    expect(operationVmKey(snapshot('s'))).toBe('ns/vm1');
    expect(
      operationVmKey({
        metadata: { namespace: 'ns' },
        spec: { source: { apiGroup: 'backup.kubevirt.io', kind: 'VirtualMachineBackupTracker', name: 't' } },
      }),
    ).toBeUndefined();
    expect(operationVmKey({})).toBeUndefined();
  });

  it('the volume of a path under the hot-plug directory', () => {
    expect(hotplugVolumeOf('/var/run/kubevirt/hotplug-disks/vol.img')).toBe('vol');
    expect(hotplugVolumeOf('/var/run/kubevirt/hotplug-disks/vol')).toBe('vol');
    expect(hotplugVolumeOf('/var/run/kubevirt/hotplug-disks/vol/ovl.qcow2')).toBe('vol');
    expect(hotplugVolumeOf('/var/run/kubevirt-private/vmi-disks/vol/disk.img')).toBeUndefined();
  });
});
