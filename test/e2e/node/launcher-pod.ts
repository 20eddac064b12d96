/**
 * Manifests for a virt-launcher stand-in running as a real pod on the test node, shaped like
 * what KubeVirt v1.7.0's virt-controller renders (compared with the real pod by
 * test/e2e/specs/kubevirt/real-kubevirt.e2e.test.ts; the differences left are listed in
 * test/e2e/README.md): its labels and annotations, controlled by the VMI (ownerReference
 * controller: true; unless `owned: false`), the VM in container `compute` running as uid 107
 * (non-root) with compute's environment, security context and emptyDir mounts, and a matching
 * VMI whose status points at the pod (phase Running, nodeName, activePods, runtimeUser 107).
 */
import { LAUNCHER_UID } from '../images/images.ts';
import { podRecipe, targetName } from '../launcher/recipe.ts';

export const LAUNCHER_URI = 'qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock';

export interface LauncherDiskSpec {
  readonly name: string;
  readonly layers: number;
  readonly sizeMiB: number;
  readonly allocatedMiB?: number;
}

export interface LauncherPodSpec {
  readonly namespace: string;
  readonly podName: string;
  readonly vmiName: string;
  readonly vmiUid: string;
  readonly image: string;
  readonly disks: readonly LauncherDiskSpec[];
  readonly nodeName?: string;
  /**
   * Controlled by the VMI, as KubeVirt makes it (default true). False only for a pod without a
   * VMI object: the node's garbage collector deletes a pod whose owner does not exist.
   */
  readonly owned?: boolean;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** The stand-in recipe (launcher/recipe.ts) for the pod's disks, as the entrypoint reads it. */
export function launcherRecipeEnv(
  s: Pick<LauncherPodSpec, 'namespace' | 'vmiName' | 'disks'>,
): { name: string; value: string }[] {
  for (const d of s.disks) if (!DNS_LABEL.test(d.name)) throw new Error(`disk name ${d.name} is not a DNS label`);
  const recipe = podRecipe(s);
  return [
    { name: 'LAUNCHER_STEPS', value: recipe.steps },
    { name: 'LAUNCHER_DOMAIN_XML', value: recipe.domainXml },
  ];
}

export function launcherPodManifest(s: LauncherPodSpec): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: s.podName,
      namespace: s.namespace,
      // What KubeVirt v1.7.0's virt-controller puts on the pod (kubevirt.io/nodeName once scheduled).
      labels: {
        'kubevirt.io': 'virt-launcher',
        'kubevirt.io/created-by': s.vmiUid,
        'vm.kubevirt.io/name': s.vmiName,
        'vmi.kubevirt.io/id': s.vmiName,
        ...(s.nodeName ? { 'kubevirt.io/nodeName': s.nodeName } : {}),
      },
      annotations: { 'kubevirt.io/domain': s.vmiName, 'kubectl.kubernetes.io/default-container': 'compute' },
      ...(s.owned === false
        ? {}
        : {
            ownerReferences: [
              {
                apiVersion: 'kubevirt.io/v1',
                kind: 'VirtualMachineInstance',
                name: s.vmiName,
                uid: s.vmiUid,
                controller: true,
                blockOwnerDeletion: true,
              },
            ],
          }),
    },
    spec: {
      ...(s.nodeName ? { nodeName: s.nodeName } : {}),
      terminationGracePeriodSeconds: 5,
      automountServiceAccountToken: false,
      securityContext: { runAsUser: LAUNCHER_UID, runAsGroup: LAUNCHER_UID, fsGroup: LAUNCHER_UID, runAsNonRoot: true },
      containers: [
        {
          name: 'compute',
          image: s.image,
          imagePullPolicy: 'Never',
          env: [
            // as virt-controller renders compute's environment
            { name: 'XDG_CACHE_HOME', value: '/var/run/kubevirt-private' },
            { name: 'XDG_CONFIG_HOME', value: '/var/run/kubevirt-private' },
            { name: 'XDG_RUNTIME_DIR', value: '/var/run' },
            { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
            { name: 'VMI_NAMESPACE', value: s.namespace },
            { name: 'VMI_NAME', value: s.vmiName },
            ...launcherRecipeEnv(s),
          ],
          securityContext: {
            allowPrivilegeEscalation: false,
            capabilities: { add: ['NET_BIND_SERVICE'], drop: ['ALL'] },
            runAsUser: LAUNCHER_UID,
            runAsGroup: LAUNCHER_UID,
            runAsNonRoot: true,
          },
          readinessProbe: {
            exec: { command: ['test', '-e', '/var/run/libvirt/launcher-ready'] },
            periodSeconds: 1,
            failureThreshold: 600,
          },
          // compute's mounts as virt-controller renders them (sockets, container-disks and
          // hotplug-disks stay empty here: no virt-handler, the chain is built in ephemeral-disks)
          volumeMounts: [
            { name: 'private', mountPath: '/var/run/kubevirt-private' },
            { name: 'public', mountPath: '/var/run/kubevirt' },
            { name: 'ephemeral-disks', mountPath: '/var/run/kubevirt-ephemeral-disks' },
            { name: 'libvirt-runtime', mountPath: '/var/run/libvirt' },
            { name: 'sockets', mountPath: '/var/run/kubevirt/sockets' },
            {
              name: 'container-disks',
              mountPath: '/var/run/kubevirt/container-disks',
              mountPropagation: 'HostToContainer',
            },
            {
              name: 'hotplug-disks',
              mountPath: '/var/run/kubevirt/hotplug-disks',
              mountPropagation: 'HostToContainer',
            },
          ],
        },
      ],
      volumes: [
        'private',
        'public',
        'sockets',
        'libvirt-runtime',
        'ephemeral-disks',
        'container-disks',
        'hotplug-disks',
      ].map((name) => ({ name, emptyDir: {} })),
    },
  };
}

/** The VMI object for the stand-in (the test VMI CRD has no status subresource, like KubeVirt's). */
export function launcherVmiManifest(s: {
  namespace: string;
  vmiName: string;
  podUid: string;
  nodeName: string;
  disks: readonly LauncherDiskSpec[];
}): Record<string, unknown> {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: s.vmiName, namespace: s.namespace },
    spec: { domain: { devices: { disks: s.disks.map((d) => ({ name: d.name, disk: { bus: 'virtio' } })) } } },
    status: {
      phase: 'Running',
      nodeName: s.nodeName,
      runtimeUser: LAUNCHER_UID,
      activePods: { [s.podUid]: s.nodeName },
      volumeStatus: s.disks.map((d, i) => ({ name: d.name, target: targetName(i) })),
    },
  };
}
