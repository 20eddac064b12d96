/** Informer-cache objects for the Reconciler's unit tests. */

/**
 * A Running VMI with disk rootdisk on `node` and its launcher pod as KubeVirt makes it (controlled
 * by the VMI, listed in its activePods), for the Reconciler's informer caches.
 */
export function launcherFixture(node: string): { vmi: Record<string, unknown>; pod: Record<string, unknown> } {
  return {
    vmi: {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'vm', namespace: 'ns', uid: 'vmi-uid' },
      spec: { domain: { devices: { disks: [{ name: 'rootdisk', disk: { bus: 'virtio' } }] } } },
      status: { phase: 'Running', nodeName: node, runtimeUser: 107, activePods: { 'pod-uid': node } },
    },
    pod: {
      metadata: {
        name: 'virt-launcher-vm-x',
        namespace: 'ns',
        uid: 'pod-uid',
        labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': 'vmi-uid' },
        ownerReferences: [
          {
            apiVersion: 'kubevirt.io/v1',
            kind: 'VirtualMachineInstance',
            name: 'vm',
            uid: 'vmi-uid',
            controller: true,
          },
        ],
        creationTimestamp: '2026-11-27T09:00:00Z',
      },
      spec: { nodeName: node, containers: [{ name: 'compute' }] },
      status: { phase: 'Running' },
    },
  };
}
