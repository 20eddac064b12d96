/** Informer-cache objects for the Reconciler's unit tests. */
import { API_VERSION, FINALIZER, KIND, type BlockPullStatus } from '../../../operator/src/api/types.ts';

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

/**
 * BlockPull ns/p (uid u1, generation 1) of disk rootdisk of VMI vm at `resourceVersion`, with the
 * operator's finalizer unless `finalized: false` (a BlockPull the operator has not seen yet).
 */
export function blockPullFixture(
  resourceVersion: string,
  options: { readonly finalized?: boolean; readonly createdAt?: string } = {},
) {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: {
      name: 'p',
      namespace: 'ns',
      uid: 'u1',
      resourceVersion,
      generation: 1,
      ...(options.finalized === false ? {} : { finalizers: [FINALIZER] }),
      creationTimestamp: options.createdAt ?? '2026-11-27T10:00:00Z',
    },
    spec: { vmiName: 'vm', disk: 'rootdisk' },
  };
}

/** A two-image qcow2 chain of disk vda (top, base) as the driver reads it. */
export const TWO_IMAGE_CHAIN = [
  { position: 0, index: 1, path: '/d/top.qcow2', format: 'qcow2' },
  { position: 1, index: 2, path: '/d/base.qcow2', format: 'qcow2' },
] as const;

/**
 * The status of a BlockPull whose job of ours runs on launcherFixture's pod (node1, target vda),
 * the chain read before the pull being `chain` (positions, paths and formats).
 */
export function runningStatusFixture(
  chain: readonly { position: number; path: string; format: string }[] = TWO_IMAGE_CHAIN,
  reason = 'Pulling',
): BlockPullStatus {
  const before = chain.map(({ position, path, format }) => ({ position, path, format }));
  return {
    phase: 'Running',
    reason,
    attempts: 1,
    retries: 0,
    backingChain: { before, current: before },
    launcher: { pod: 'virt-launcher-vm-x', node: 'node1', container: 'compute', domain: 'ns_vm', target: 'vda' },
    job: { state: 'Running' },
  };
}
