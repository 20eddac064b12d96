/**
 * Find a VMI's current virt-launcher like KubeVirt does (pkg/controller CurrentVMIPod): the pods
 * labelled kubevirt.io/created-by=<vmi uid>, Running, on vmi.status.nodeName, newest first.
 * The VM runs in container `compute`; the libvirt URI depends on vmi.status.runtimeUser;
 * the domain is <namespace>_<vmi name>. Objects come from informer caches: parsed with zod here.
 */
import { z } from 'zod';
import { parseQuantity } from '../api/quantity.ts';
import type { LauncherObservation } from '../controller/decide.ts';

export const LAUNCHER_CONTAINER = 'compute';
export const CREATED_BY_LABEL = 'kubevirt.io/created-by';
export const LAUNCHER_LABEL_SELECTOR = 'kubevirt.io=virt-launcher';
export const ROOT_URI = 'qemu:///system';
export const SESSION_URI = 'qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock';

const timeLike = z.union([z.string(), z.date()]);

export const VmiSchema = z.looseObject({
  metadata: z.looseObject({ name: z.string(), namespace: z.string(), uid: z.string() }),
  spec: z
    .looseObject({
      domain: z
        .looseObject({
          devices: z.looseObject({ disks: z.array(z.looseObject({ name: z.string() })).optional() }).optional(),
        })
        .optional(),
    })
    .optional(),
  status: z
    .looseObject({
      phase: z.string().optional(),
      nodeName: z.string().optional(),
      runtimeUser: z.number().int().optional(),
      activePods: z.record(z.string(), z.string()).optional(),
      migrationState: z
        .looseObject({
          sourcePod: z.string().optional(),
          targetPod: z.string().optional(),
          completed: z.boolean().optional(),
          failed: z.boolean().optional(),
          abortStatus: z.string().optional(),
          startTimestamp: timeLike.optional(),
          endTimestamp: timeLike.optional(),
        })
        .nullable()
        .optional(),
      volumeStatus: z.array(z.looseObject({ name: z.string(), target: z.string().optional() })).optional(),
    })
    .optional(),
});
export type Vmi = z.infer<typeof VmiSchema>;

export const PodSchema = z.looseObject({
  metadata: z.looseObject({
    name: z.string(),
    namespace: z.string(),
    labels: z.record(z.string(), z.string()).optional(),
    creationTimestamp: timeLike.optional(),
    deletionTimestamp: timeLike.nullable().optional(),
  }),
  spec: z
    .looseObject({
      nodeName: z.string().optional(),
      containers: z.array(z.looseObject({ name: z.string() })).optional(),
    })
    .optional(),
  status: z.looseObject({ phase: z.string().optional() }).optional(),
});
export type Pod = z.infer<typeof PodSchema>;

/** libvirt URI inside the compute container, by the VMI's runtime user. */
export function libvirtUri(runtimeUser: number | undefined): string {
  return runtimeUser === 0 ? ROOT_URI : SESSION_URI;
}

export function domainName(namespace: string, vmiName: string): string {
  return `${namespace}_${vmiName}`;
}

/** A migration is in progress while migrationState exists and has neither completed nor failed. */
export function migrationInProgress(vmi: Vmi): boolean {
  const m = vmi.status?.migrationState;
  if (m === undefined || m === null) return false;
  return m.completed !== true && m.failed !== true;
}

/** false when the VMI's spec lists disks and not this one; undefined when it lists none. */
export function vmiHasDisk(vmi: Vmi, disk: string): boolean | undefined {
  const disks = vmi.spec?.domain?.devices?.disks;
  if (disks === undefined || disks.length === 0) return undefined;
  return disks.some((d) => d.name === disk);
}

function timeMs(t: string | Date | undefined): number {
  if (t === undefined) return 0;
  return t instanceof Date ? t.getTime() : Date.parse(t);
}

/** The VMI's current launcher pod (KubeVirt's CurrentVMIPod), or undefined. */
export function currentLauncherPod(vmi: Vmi, pods: readonly Pod[]): Pod | undefined {
  const node = vmi.status?.nodeName;
  const candidates = pods.filter(
    (p) =>
      p.metadata.namespace === vmi.metadata.namespace &&
      p.metadata.labels?.[CREATED_BY_LABEL] === vmi.metadata.uid &&
      p.status?.phase === 'Running' &&
      (p.metadata.deletionTimestamp === undefined || p.metadata.deletionTimestamp === null) &&
      node !== undefined &&
      p.spec?.nodeName === node,
  );
  return [...candidates].sort((a, b) => timeMs(b.metadata.creationTimestamp) - timeMs(a.metadata.creationTimestamp))[0];
}

export interface LauncherTarget {
  readonly observation: LauncherObservation;
  /** Set when found: where to run virsh. */
  readonly uri?: string;
  readonly namespace?: string;
  readonly runtimeUser?: number;
}

/** From the cached VMI (or its absence) and launcher pods to the decide() observation. */
export function locateLauncher(namespace: string, vmiName: string, rawVmi: unknown, rawPods: readonly unknown[]): LauncherTarget {
  if (rawVmi === undefined || rawVmi === null) {
    return { observation: { kind: 'vmiNotFound', message: `VirtualMachineInstance ${namespace}/${vmiName} not found` } };
  }
  const parsed = VmiSchema.safeParse(rawVmi);
  if (!parsed.success) {
    return { observation: { kind: 'vmiNotRunning', message: `VirtualMachineInstance ${namespace}/${vmiName} is malformed: ${parsed.error.issues[0]?.message ?? ''}` } };
  }
  const vmi = parsed.data;
  const phase = vmi.status?.phase;
  if (phase !== 'Running') {
    return { observation: { kind: 'vmiNotRunning', message: `VirtualMachineInstance ${namespace}/${vmiName} is ${phase ?? 'without a phase'}, not Running` } };
  }
  if (migrationInProgress(vmi)) {
    const m = vmi.status?.migrationState;
    return {
      observation: {
        kind: 'migrationInProgress',
        message: `VirtualMachineInstance ${namespace}/${vmiName} is migrating (${m?.sourcePod ?? '?'} -> ${m?.targetPod ?? '?'}); waiting until it ends`,
      },
    };
  }
  const pods: Pod[] = [];
  for (const p of rawPods) {
    const r = PodSchema.safeParse(p);
    if (r.success) pods.push(r.data);
  }
  const pod = currentLauncherPod(vmi, pods);
  if (pod === undefined) {
    return {
      observation: {
        kind: 'vmiNotRunning',
        message: `VirtualMachineInstance ${namespace}/${vmiName} has no Running virt-launcher pod on node ${vmi.status?.nodeName ?? '(none)'}`,
      },
    };
  }
  const containers = pod.spec?.containers;
  if (containers !== undefined && containers.length > 0 && !containers.some((c) => c.name === LAUNCHER_CONTAINER)) {
    return { observation: { kind: 'launcherNotFound', message: `pod ${pod.metadata.name} has no container ${LAUNCHER_CONTAINER}` } };
  }
  const runtimeUser = vmi.status?.runtimeUser;
  return {
    observation: {
      kind: 'found',
      launcher: {
        pod: pod.metadata.name,
        node: pod.spec?.nodeName ?? '',
        container: LAUNCHER_CONTAINER,
        domain: domainName(namespace, vmiName),
      },
    },
    uri: libvirtUri(runtimeUser),
    namespace,
    ...(runtimeUser !== undefined ? { runtimeUser } : {}),
  };
}

const podLimitsSchema = z.looseObject({
  spec: z
    .looseObject({
      containers: z
        .array(
          z.looseObject({
            resources: z.looseObject({ limits: z.record(z.string(), z.union([z.string().max(64), z.number()])).optional() }).optional(),
          }),
        )
        .optional(),
    })
    .optional(),
});

/**
 * The pod's ephemeral-storage limit in bytes, as the kubelet applies it (evicting the pod above
 * it): the sum of its containers' limits, when at least one container has one; undefined otherwise
 * (also when a limit is not a quantity this operator reads: then no limit is applied).
 */
export function ephemeralStorageLimit(rawPod: unknown): number | undefined {
  const pod = podLimitsSchema.safeParse(rawPod);
  if (!pod.success) return undefined;
  let sum: number | undefined;
  for (const c of pod.data.spec?.containers ?? []) {
    const q = c.resources?.limits?.['ephemeral-storage'];
    if (q === undefined) continue;
    try {
      sum = (sum ?? 0) + parseQuantity(q);
    } catch {
      return undefined;
    }
  }
  return sum;
}
