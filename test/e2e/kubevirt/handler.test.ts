import { describe, expect, it } from 'vitest';
import { containerDiskVolumes, HandlerVmiSchema, launcherPodOf } from './handler.ts';

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

const pod = (uid: string, o: { controller?: boolean; owner?: string; node?: string; namespace?: string } = {}): Parameters<typeof launcherPodOf>[1][number] => ({
  metadata: { name: `virt-launcher-vm1-${uid}`, namespace: o.namespace ?? 'ns', uid, ownerReferences: [{ uid: o.owner ?? 'vmi-uid', controller: o.controller ?? true }] },
  spec: { nodeName: o.node ?? 'n1' },
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
    expect(launcherPodOf(vmi, [pod('other', {}), pod('pod-uid', { controller: false }), real], 'n1')).toBe(real);
    expect(launcherPodOf(vmi, [pod('pod-uid', { controller: false })], 'n1')).toBeUndefined();
    expect(launcherPodOf(vmi, [pod('pod-uid', { owner: 'someone-else' })], 'n1')).toBeUndefined();
    expect(launcherPodOf(vmi, [pod('other')], 'n1')).toBeUndefined();
    expect(launcherPodOf(vmi, [pod('pod-uid', { node: 'n2' })], 'n1')).toBeUndefined();
    expect(launcherPodOf(vmi, [pod('pod-uid', { namespace: 'elsewhere' })], 'n1')).toBeUndefined();
  });
});
