import type { KubernetesObject } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { chainOperations } from '../kubevirt/chain-operations.ts';
import { ephemeralStorageLimit, locateLauncher, VmiSchema } from '../kubevirt/launcher.ts';
import { OPERATION_BY_VM, operationIndexes, slimOperation } from './indexes.ts';
import {
  BP_BY_DISK,
  BP_BY_VMI,
  BP_RUNNING_BY_NODE,
  BP_WAITING_FOR_SLOT,
  blockPullIndexes,
  podIndexes,
  POD_BY_VMI_UID,
  slimPod,
  slimVmi,
  vmiIndexes,
  VMI_BY_UID,
} from './indexes.ts';

const managedFields = [
  { manager: 'virt-controller', operation: 'Update', fieldsV1: { 'f:status': { 'f:phase': {} } } },
];

const vmi = {
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachineInstance',
  metadata: {
    name: 'vm',
    namespace: 'ns',
    uid: 'vmi-uid',
    resourceVersion: '7',
    managedFields,
    annotations: { 'kubevirt.io/latest-observed-api-version': 'v1' },
  },
  spec: {
    domain: {
      devices: { disks: [{ name: 'rootdisk', disk: { bus: 'virtio' } }], interfaces: [{ name: 'default' }] },
      resources: { requests: { memory: '1Gi' } },
    },
    volumes: [{ name: 'rootdisk' }],
  },
  status: {
    phase: 'Running',
    nodeName: 'n1',
    runtimeUser: 107,
    activePods: { 'pod-uid': 'n1' },
    volumeStatus: [{ name: 'rootdisk', target: 'vda', persistentVolumeClaimInfo: { capacity: { storage: '10Gi' } } }],
    conditions: [{ type: 'Ready', status: 'True' }],
    interfaces: [{ ipAddress: '10.0.0.1' }],
  },
};

const pod = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    name: 'virt-launcher-vm-x',
    namespace: 'ns',
    uid: 'pod-uid',
    resourceVersion: '9',
    creationTimestamp: '2026-11-27T10:00:00Z',
    labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': 'vmi-uid' },
    ownerReferences: [
      { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', name: 'vm', uid: 'vmi-uid', controller: true },
    ],
    managedFields,
  },
  spec: {
    nodeName: 'n1',
    volumes: [{ name: 'private', emptyDir: {} }],
    containers: [
      {
        name: 'compute',
        image: 'virt-launcher',
        env: [{ name: 'A', value: 'b' }],
        resources: { limits: { 'ephemeral-storage': '2Gi', memory: '2Gi' } },
      },
    ],
  },
  status: { phase: 'Running', podIP: '10.0.0.2', containerStatuses: [{ name: 'compute', ready: true }] },
};

describe('cache transforms', () => {
  it('a slim VMI and pod locate the same launcher as the full objects, without managedFields', () => {
    const full = locateLauncher('ns', 'vm', vmi, [pod]);
    const slim = locateLauncher('ns', 'vm', slimVmi(vmi as KubernetesObject), [
      slimPod(pod as unknown as KubernetesObject),
    ]);
    expect(full.kind).toBe('found');
    expect(slim).toEqual(full);
    expect(ephemeralStorageLimit(slimPod(pod as unknown as KubernetesObject))).toBe(ephemeralStorageLimit(pod));
    expect(ephemeralStorageLimit(pod)).toBe(2 * 1024 ** 3);
    const s = JSON.stringify([slimVmi(vmi as KubernetesObject), slimPod(pod as unknown as KubernetesObject)]);
    for (const gone of [
      'managedFields',
      'interfaces',
      'env',
      'volumes',
      'podIP',
      'persistentVolumeClaimInfo',
      'annotations',
    ])
      expect(s).not.toContain(gone);
    expect(slimVmi(vmi as KubernetesObject).metadata?.resourceVersion).toBe('7');
  });

  it("KubeVirt's operations read the same from a slim VMI, snapshot and backup as from the full ones", () => {
    const window = {
      ...vmi,
      spec: {
        ...vmi.spec,
        utilityVolumes: [{ name: 'snap-1-snap-scratch', persistentVolumeClaim: { claimName: 'snap-1-snap-scratch' } }],
      },
      status: {
        ...vmi.status,
        conditions: [
          {
            type: 'OverlaySnapshotActive',
            status: 'True',
            reason: 'SnapshotInProgress',
            message: 'm',
            lastTransitionTime: '2026-11-27T10:00:00Z',
          },
        ],
        volumeStatus: [
          ...vmi.status.volumeStatus,
          { name: 'hp', target: 'sdb', hotplugVolume: { attachPodName: 'hp-pod', attachPodUID: 'u' } },
        ],
      },
    };
    const snap = {
      apiVersion: 'snapshot.kubevirt.io/v1beta1',
      kind: 'VirtualMachineSnapshot',
      metadata: { name: 'snap-1', namespace: 'ns', managedFields },
      spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm' } },
      status: { phase: 'InProgress', indications: ['Online'] },
    };
    const backup = {
      apiVersion: 'backup.kubevirt.io/v1alpha1',
      kind: 'VirtualMachineBackup',
      metadata: { name: 'bk', namespace: 'ns' },
      spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm' }, pvcName: 'out' },
      status: {
        conditions: [{ type: 'Progressing', status: 'True', reason: 'Initiated', message: '' }],
        includedVolumes: [{ volumeName: 'rootdisk' }],
      },
    };
    const chain = [
      { position: 0, path: '/var/run/kubevirt/hotplug-disks/snap-1-snap-scratch/ovl-rootdisk.qcow2', format: 'qcow2' },
      { position: 1, path: '/d/base.qcow2', format: 'qcow2' },
    ];
    const ops = (v: unknown, s: unknown, b: unknown) =>
      chainOperations({ vmi: VmiSchema.parse(v), disk: 'rootdisk', chain, snapshots: [s], backups: [b] });
    const full = ops(window, snap, backup);
    expect(full.map((o) => o.kind)).toEqual(['snapshot', 'snapshot', 'snapshot', 'backup']);
    const slim = ops(
      slimVmi(window as KubernetesObject),
      slimOperation(snap as KubernetesObject),
      slimOperation(backup as KubernetesObject),
    );
    expect(slim).toEqual(full);
    expect(
      JSON.stringify([slimOperation(snap as KubernetesObject), slimOperation(backup as KubernetesObject)]),
    ).not.toMatch(/managedFields|indications|includedVolumes|pvcName/);
    expect(operationIndexes[OPERATION_BY_VM]!(snap as KubernetesObject)).toEqual(['ns/vm']);
    expect(operationIndexes[OPERATION_BY_VM]!(slimOperation(backup as KubernetesObject))).toEqual(['ns/vm']);
  });

  it('a VMI that is not Running, or a refused pod, reads the same slim as full', () => {
    const scheduling = { ...vmi, status: { phase: 'Scheduling' } };
    expect(locateLauncher('ns', 'vm', slimVmi(scheduling as KubernetesObject), [])).toEqual(
      locateLauncher('ns', 'vm', scheduling, []),
    );
    const foreign = { ...pod, metadata: { ...pod.metadata, ownerReferences: [] } };
    expect(
      locateLauncher('ns', 'vm', slimVmi(vmi as KubernetesObject), [slimPod(foreign as unknown as KubernetesObject)]),
    ).toEqual(locateLauncher('ns', 'vm', vmi, [foreign]));
  });
});

describe('index functions', () => {
  const bp = (status?: Record<string, unknown>) =>
    ({
      metadata: { name: 'p', namespace: 'ns' },
      spec: { vmiName: 'vm', disk: 'd' },
      ...(status ? { status } : {}),
    }) as KubernetesObject;
  it('BlockPulls by VMI, Running ones by node, WaitingForSlot apart', () => {
    expect(blockPullIndexes[BP_BY_VMI]!(bp())).toEqual(['ns/vm']);
    expect(blockPullIndexes[BP_BY_DISK]!(bp())).toEqual(['ns/vm/d']);
    expect(blockPullIndexes[BP_RUNNING_BY_NODE]!(bp({ phase: 'Running', launcher: { node: 'n1' } }))).toEqual(['n1']);
    expect(blockPullIndexes[BP_RUNNING_BY_NODE]!(bp({ phase: 'Pending', reason: 'WaitingForSlot' }))).toEqual([]);
    expect(blockPullIndexes[BP_WAITING_FOR_SLOT]!(bp({ phase: 'Pending', reason: 'WaitingForSlot' }))).toEqual(['ns']);
    expect(blockPullIndexes[BP_WAITING_FOR_SLOT]!(bp({ phase: 'Pending', reason: 'VMINotFound' }))).toEqual([]);
  });
  it('pods by the uid of each VMI they claim (label and ownerReferences), VMIs by uid', () => {
    expect(podIndexes[POD_BY_VMI_UID]!(pod as unknown as KubernetesObject)).toEqual(['ns/vmi-uid']);
    const twoClaims = { ...pod, metadata: { ...pod.metadata, labels: { 'kubevirt.io/created-by': 'other' } } };
    expect(podIndexes[POD_BY_VMI_UID]!(twoClaims as unknown as KubernetesObject)).toEqual(['ns/other', 'ns/vmi-uid']);
    expect(vmiIndexes[VMI_BY_UID]!(vmi as KubernetesObject)).toEqual(['ns/vmi-uid']);
  });
});
