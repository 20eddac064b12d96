import { describe, expect, it } from 'vitest';
import { containerDiskVolumes, HandlerPodSchema, HandlerVmiSchema, launcherPodOf, type HandlerPod } from './handler.ts';

const vmi = HandlerVmiSchema.parse({
  metadata: { name: 'vm1', namespace: 'ns', uid: 'vmi-uid' },
  spec: {
    volumes: [
      { name: 'cloudinit', cloudInitNoCloud: {} },
      { name: 'rootdisk', containerDisk: { image: 'img' } },
      { name: 'data', containerDisk: { image: 'img2', path: '/disk/data.qcow2' } },
    ],
  },
  status: { phase: 'Scheduled', nodeName: 'n1', activePods: { 'pod-uid': 'n1' } },
});

/** A virt-launcher pod as virt-controller makes it (its controller reference names the VMI's kind), Running. */
const pod = (
  uid: string,
  o: {
    controller?: boolean;
    owner?: string;
    node?: string;
    namespace?: string;
    phase?: string;
    deleting?: boolean;
    created?: string;
  } = {},
): HandlerPod =>
  HandlerPodSchema.parse({
    metadata: {
      name: `virt-launcher-vm1-${uid}`,
      namespace: o.namespace ?? 'ns',
      uid,
      ownerReferences: [
        { kind: 'VirtualMachineInstance', uid: o.owner ?? 'vmi-uid', controller: o.controller ?? true },
      ],
      ...(o.created !== undefined ? { creationTimestamp: o.created } : {}),
      ...(o.deleting === true ? { deletionTimestamp: '2026-12-01T00:00:00Z' } : {}),
    },
    spec: { nodeName: o.node ?? 'n1' },
    status: { phase: o.phase ?? 'Running' },
  });

describe('handler stand-in', () => {
  it('numbers containerDisks by their index in spec.volumes (disk_N), with their path', () => {
    expect(containerDiskVolumes(vmi)).toEqual([
      { index: 1, name: 'rootdisk', path: undefined },
      { index: 2, name: 'data', path: '/disk/data.qcow2' },
    ]);
  });

  it('talks only to the pod KubeVirt counts as the launcher: controlled by the VMI, in activePods, on this node', () => {
    const real = pod('pod-uid');
    expect(launcherPodOf(vmi, [pod('other', {}), pod('pod-uid', { controller: false }), real])).toBe(real);
    expect(launcherPodOf(vmi, [pod('pod-uid', { controller: false })])).toBeUndefined();
    expect(launcherPodOf(vmi, [pod('pod-uid', { owner: 'someone-else' })])).toBeUndefined();
    expect(launcherPodOf(vmi, [pod('other')])).toBeUndefined();
    expect(launcherPodOf(vmi, [pod('pod-uid', { node: 'n2' })])).toBeUndefined();
    expect(launcherPodOf(vmi, [pod('pod-uid', { namespace: 'elsewhere' })])).toBeUndefined();
  });

  it("is the operator's lookup: a pod not Running is not the launcher; one being deleted is, when no other is", () => {
    expect(launcherPodOf(vmi, [pod('pod-uid', { phase: 'Pending' })])).toBeUndefined();
    const deleting = pod('pod-uid', { deleting: true });
    expect(launcherPodOf(vmi, [deleting])).toBe(deleting);
    const twoActive = HandlerVmiSchema.parse({
      ...vmi,
      status: { ...vmi.status, activePods: { 'pod-uid': 'n1', 'pod-2': 'n1' } },
    });
    const live = pod('pod-2');
    expect(launcherPodOf(twoActive, [pod('pod-uid', { deleting: true }), live])).toBe(live);
  });
});
