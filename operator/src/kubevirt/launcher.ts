/**
 * Find a VMI's current virt-launcher like KubeVirt does (pkg/controller CurrentVMIPod): a pod
 * CONTROLLED by the VMI (ownerReference controller: true, kind VirtualMachineInstance, the VMI's
 * uid; a label alone is not enough: anyone who may create pods in the namespace can set it),
 * listed in vmi.status.activePods, on vmi.status.nodeName, Running, newest first. Pods that claim
 * the VMI (label kubevirt.io/created-by=<vmi uid> or a controller reference) but fail a check are
 * named in the LauncherNotFound message with why they were refused.
 * The VM runs in container `compute`; the libvirt URI depends on vmi.status.runtimeUser;
 * the domain is <namespace>_<vmi name>. Objects come from informer caches: parsed with zod here.
 */
import { z } from 'zod';
import { parseQuantity } from '../api/quantity.ts';
import type { ResourceRef } from '../kube/client.ts';

/** The KubeVirt resources the operator reads (kubevirt.io/v1). */
export const VMI_REF: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances' };
export const VMIM_REF: ResourceRef = {
  group: 'kubevirt.io',
  version: 'v1',
  plural: 'virtualmachineinstancemigrations',
};

/**
 * The VMI's current virt-launcher pod: where its domain runs (status.launcher) and how libvirt is
 * reached there (the transport's driverFor).
 */
export interface LauncherPod {
  readonly namespace: string;
  readonly pod: string;
  readonly node: string;
  /** The container the VM runs in (LAUNCHER_CONTAINER). */
  readonly container: string;
  /** The libvirt domain, <namespace>_<vmi name>. */
  readonly domain: string;
  /** libvirt URI inside the container, from the VMI's status.runtimeUser. */
  readonly uri: string;
}

/** A live migration requested for the VMI (requestedMigration). */
export interface MigrationRequest {
  /** Names it: `VirtualMachineInstanceMigration ns/name`, `migration (src -> dst)`, `evacuation of node N`. */
  readonly name: string;
  readonly message: string;
}

/** What locateLauncher found: the VMI's launcher pod, or why there is none to use. */
export type LauncherLookup =
  | { readonly kind: 'vmiNotFound'; readonly message: string }
  | { readonly kind: 'vmiNotRunning'; readonly message: string }
  /** A migration runs and no acceptable launcher pod is there (between source and target). */
  | { readonly kind: 'migrationInProgress'; readonly message: string }
  | { readonly kind: 'launcherNotFound'; readonly message: string }
  /**
   * `migration`: a migration of the VMI is requested; the launcher is still the source's.
   * `terminating`: the pod is being deleted (found only with `{ terminating: true }`, for an abort
   * on delete: its containers may still run our job; nothing is ever started through it).
   */
  | {
      readonly kind: 'found';
      readonly launcher: LauncherPod;
      readonly migration?: MigrationRequest;
      readonly terminating?: true;
    };

/** How locateLauncher chooses. */
export interface LocateOptions {
  /**
   * Accept a launcher pod that is being deleted (deletionTimestamp set, still Running) when no
   * other pod is acceptable: while its grace period runs its QEMU, and our job, may still run.
   */
  readonly terminating?: boolean;
}

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
      evacuationNodeName: z.string().nullable().optional(),
      runtimeUser: z.number().int().optional(),
      activePods: z.record(z.string(), z.string()).optional(),
      migrationState: z
        .looseObject({
          sourcePod: z.string().optional(),
          targetPod: z.string().optional(),
          completed: z.boolean().optional(),
          failed: z.boolean().optional(),
          abortStatus: z.string().optional(),
          migrationUid: z.string().optional(),
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

export const VMI_KIND = 'VirtualMachineInstance';

const OwnerReferenceSchema = z.looseObject({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  name: z.string().optional(),
  uid: z.string().optional(),
  controller: z.boolean().nullable().optional(),
});

export const PodSchema = z.looseObject({
  metadata: z.looseObject({
    name: z.string(),
    namespace: z.string(),
    uid: z.string().optional(),
    ownerReferences: z.array(OwnerReferenceSchema).optional(),
    labels: z.record(z.string(), z.string()).optional(),
    creationTimestamp: timeLike.optional(),
    deletionTimestamp: timeLike.nullable().optional(),
  }),
  spec: z
    .looseObject({
      nodeName: z.string().optional(),
      containers: z.array(z.looseObject({ name: z.string() })).optional(),
      securityContext: z.looseObject({ runAsUser: z.number().int().nullable().optional() }).nullable().optional(),
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

/** Phases after which a VirtualMachineInstanceMigration does nothing more (kubevirt.io/v1 MigrationSucceeded, MigrationFailed). */
export const VMIM_FINAL_PHASES: readonly string[] = ['Succeeded', 'Failed'];

/** A VirtualMachineInstanceMigration (kubevirt.io/v1): only what says which VMI it moves and whether it is over. */
export const VmimSchema = z.looseObject({
  metadata: z.looseObject({ name: z.string(), namespace: z.string(), creationTimestamp: timeLike.optional() }),
  spec: z.looseObject({ vmiName: z.string() }),
  status: z.looseObject({ phase: z.string().optional() }).nullable().optional(),
});
export type Vmim = z.infer<typeof VmimSchema>;

/**
 * The migration requested for this VMI, if any (a pull yields to it, or waits with it):
 * - a VirtualMachineInstanceMigration in the VMI's namespace whose spec.vmiName names it and
 *   whose status.phase is not final (Succeeded, Failed); no phase yet counts (just created);
 * - the VMI's status.migrationState, neither completed nor failed (a migration runs);
 * - the VMI's status.evacuationNodeName equal to its status.nodeName (a drain asked KubeVirt to
 *   move it off its node: virt-api's eviction webhook sets it; the evacuation controller then
 *   creates a migration). The oldest matching VMIM is named (then by name), so the message is stable.
 */
export function requestedMigration(vmi: Vmi, rawMigrations: readonly unknown[]): MigrationRequest | undefined {
  const ns = vmi.metadata.namespace;
  const open: Vmim[] = [];
  for (const raw of rawMigrations) {
    const r = VmimSchema.safeParse(raw);
    if (!r.success) continue;
    const m = r.data;
    if (m.metadata.namespace !== ns || m.spec.vmiName !== vmi.metadata.name) continue;
    const phase = m.status?.phase;
    if (phase !== undefined && VMIM_FINAL_PHASES.includes(phase)) continue;
    open.push(m);
  }
  const created = (m: Vmim): number => timeMs(m.metadata.creationTimestamp);
  open.sort((a, b) => created(a) - created(b) || a.metadata.name.localeCompare(b.metadata.name));
  const vmim = open[0];
  if (vmim !== undefined) {
    const phase = vmim.status?.phase ?? 'not started';
    return {
      name: `VirtualMachineInstanceMigration ${ns}/${vmim.metadata.name}`,
      message: `VirtualMachineInstanceMigration ${ns}/${vmim.metadata.name} (phase ${phase}) migrates VirtualMachineInstance ${ns}/${vmi.metadata.name}`,
    };
  }
  if (migrationInProgress(vmi)) {
    const m = vmi.status?.migrationState;
    const uid = m?.migrationUid !== undefined ? ` ${m.migrationUid}` : '';
    return {
      name: `migration${uid} (${m?.sourcePod ?? '?'} -> ${m?.targetPod ?? '?'})`,
      message: `VirtualMachineInstance ${ns}/${vmi.metadata.name} is migrating (${m?.sourcePod ?? '?'} -> ${m?.targetPod ?? '?'})`,
    };
  }
  const evacuating = vmi.status?.evacuationNodeName;
  if (typeof evacuating === 'string' && evacuating !== '' && evacuating === vmi.status?.nodeName) {
    return {
      name: `evacuation of node ${evacuating}`,
      message: `VirtualMachineInstance ${ns}/${vmi.metadata.name} is to be evacuated from node ${evacuating} (status.evacuationNodeName)`,
    };
  }
  return undefined;
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

/** The pod's controller reference is this VMI (KubeVirt's controller.IsControlledBy). */
export function isControlledBy(pod: Pod, vmi: Vmi): boolean {
  const controller = (pod.metadata.ownerReferences ?? []).find((r) => r.controller === true);
  return (
    controller !== undefined &&
    controller.kind === VMI_KIND &&
    controller.uid === vmi.metadata.uid &&
    controller.uid !== ''
  );
}

/** Pods that claim to be the VMI's launcher: labelled with its uid, or naming it as controller. */
function claimsVmi(pod: Pod, vmi: Vmi): boolean {
  return (
    pod.metadata.namespace === vmi.metadata.namespace &&
    (pod.metadata.labels?.[CREATED_BY_LABEL] === vmi.metadata.uid ||
      (pod.metadata.ownerReferences ?? []).some((r) => r.uid === vmi.metadata.uid))
  );
}

function isTerminating(pod: Pod): boolean {
  return pod.metadata.deletionTimestamp !== undefined && pod.metadata.deletionTimestamp !== null;
}

/** Why a pod claiming the VMI is not its current launcher; empty when it is acceptable. */
export function launcherPodProblems(vmi: Vmi, pod: Pod, options: LocateOptions = {}): string[] {
  const problems: string[] = [];
  if (!isControlledBy(pod, vmi)) {
    problems.push(
      `not controlled by the VMI (no ownerReference with controller: true, kind ${VMI_KIND}, uid ${vmi.metadata.uid})`,
    );
  }
  const active = vmi.status?.activePods ?? {};
  const podUid = pod.metadata.uid;
  if (podUid === undefined || !Object.hasOwn(active, podUid)) problems.push(`not in the VMI's status.activePods`);
  const node = vmi.status?.nodeName;
  if (node === undefined || pod.spec?.nodeName !== node)
    problems.push(`on node ${pod.spec?.nodeName ?? '(none)'}, not the VMI's node ${node ?? '(none)'}`);
  if (pod.status?.phase !== 'Running') problems.push(`${pod.status?.phase ?? 'without a phase'}, not Running`);
  if (options.terminating !== true && isTerminating(pod)) problems.push('being deleted');
  return problems;
}

/**
 * The VMI's current launcher pod (KubeVirt's CurrentVMIPod), or undefined. With `terminating`,
 * a pod being deleted is taken only when no other pod is acceptable.
 */
export function currentLauncherPod(vmi: Vmi, pods: readonly Pod[], options: LocateOptions = {}): Pod | undefined {
  const candidates = pods.filter((p) => claimsVmi(p, vmi) && launcherPodProblems(vmi, p, options).length === 0);
  const rank = (p: Pod): number => (isTerminating(p) ? 1 : 0);
  return [...candidates].sort(
    (a, b) => rank(a) - rank(b) || timeMs(b.metadata.creationTimestamp) - timeMs(a.metadata.creationTimestamp),
  )[0];
}

/** At most this many refused pods are named in a message. */
const REFUSED_PODS_IN_MESSAGE = 5;

/** The message when no pod is acceptable: each claiming pod and why it was refused. */
function noLauncherMessage(vmi: Vmi, pods: readonly Pod[]): string {
  const what = `VirtualMachineInstance ${vmi.metadata.namespace}/${vmi.metadata.name} is Running but has no acceptable virt-launcher pod on node ${vmi.status?.nodeName ?? '(none)'}`;
  const claiming = pods.filter((p) => claimsVmi(p, vmi));
  if (claiming.length === 0)
    return `${what}: no pod is controlled by it or labelled ${CREATED_BY_LABEL}=${vmi.metadata.uid}`;
  const refused = claiming
    .slice(0, REFUSED_PODS_IN_MESSAGE)
    .map((p) => `pod ${p.metadata.name} refused: ${launcherPodProblems(vmi, p).join('; ')}`);
  const more =
    claiming.length > REFUSED_PODS_IN_MESSAGE ? `; and ${claiming.length - REFUSED_PODS_IN_MESSAGE} more` : '';
  return `${what}: ${refused.join('; ')}${more}`;
}

/** Where the VMI's domain is reached in `pod`: its compute container, with the URI of the runtime user. */
function launcherIn(pod: Pod, vmiName: string, runtimeUser: number | undefined): LauncherPod {
  const namespace = pod.metadata.namespace;
  return {
    namespace,
    pod: pod.metadata.name,
    node: pod.spec?.nodeName ?? '',
    container: LAUNCHER_CONTAINER,
    domain: domainName(namespace, vmiName),
    uri: libvirtUri(runtimeUser),
  };
}

/** From the cached VMI (or its absence), its launcher pods and migrations to the launcher to use (or why there is none). */
export function locateLauncher(
  namespace: string,
  vmiName: string,
  rawVmi: unknown,
  rawPods: readonly unknown[],
  rawMigrations: readonly unknown[] = [],
  options: LocateOptions = {},
): LauncherLookup {
  if (rawVmi === undefined || rawVmi === null) {
    return { kind: 'vmiNotFound', message: `VirtualMachineInstance ${namespace}/${vmiName} not found` };
  }
  const parsed = VmiSchema.safeParse(rawVmi);
  if (!parsed.success) {
    return {
      kind: 'vmiNotRunning',
      message: `VirtualMachineInstance ${namespace}/${vmiName} is malformed: ${parsed.error.issues[0]?.message ?? ''}`,
    };
  }
  const vmi = parsed.data;
  const phase = vmi.status?.phase;
  if (phase !== 'Running') {
    return {
      kind: 'vmiNotRunning',
      message: `VirtualMachineInstance ${namespace}/${vmiName} is ${phase ?? 'without a phase'}, not Running`,
    };
  }
  // A requested migration is passed on with the launcher (a running pull is aborted through it,
  // decide.ts); without an acceptable launcher pod (between the source and the target) it is waited for.
  const migration = requestedMigration(vmi, rawMigrations);
  const pods: Pod[] = [];
  for (const p of rawPods) {
    const r = PodSchema.safeParse(p);
    if (r.success) pods.push(r.data);
  }
  const pod = currentLauncherPod(vmi, pods, options);
  if (pod === undefined && migration !== undefined) {
    return { kind: 'migrationInProgress', message: `${migration.message}; waiting until it ends` };
  }
  if (pod === undefined) {
    // The VMI runs, so its launcher is what is missing (or refused): LauncherNotFound.
    return { kind: 'launcherNotFound', message: noLauncherMessage(vmi, pods) };
  }
  const containers = pod.spec?.containers;
  if (containers !== undefined && containers.length > 0 && !containers.some((c) => c.name === LAUNCHER_CONTAINER)) {
    return { kind: 'launcherNotFound', message: `pod ${pod.metadata.name} has no container ${LAUNCHER_CONTAINER}` };
  }
  return {
    kind: 'found',
    launcher: launcherIn(pod, vmiName, vmi.status?.runtimeUser),
    ...(migration !== undefined ? { migration } : {}),
    ...(isTerminating(pod) ? { terminating: true as const } : {}),
  };
}

/**
 * The launcher pod a BlockPull recorded (status.launcher.pod), once its VMI is gone while that pod
 * still runs: the VMI deleted at once (its finalizers removed by hand) or with `--cascade=orphan`.
 * Only for the abort on delete, so that no job of ours outlives its BlockPull: the pod must still
 * be a launcher (label kubevirt.io=virt-launcher) controlled by a VirtualMachineInstance of that
 * name, with the compute container. Without the VMI its runtime user is read from the pod, as
 * virt-controller renders it (pod securityContext.runAsUser: 0 for a root VMI, 107 otherwise).
 */
export function orphanedLauncher(namespace: string, vmiName: string, rawPod: unknown): LauncherLookup | undefined {
  const parsed = PodSchema.safeParse(rawPod);
  if (!parsed.success) return undefined;
  const pod = parsed.data;
  const controlledByVmi = (pod.metadata.ownerReferences ?? []).some(
    (r) => r.controller === true && r.kind === VMI_KIND && r.name === vmiName,
  );
  if (
    pod.metadata.namespace !== namespace ||
    pod.metadata.labels?.['kubevirt.io'] !== 'virt-launcher' ||
    !controlledByVmi ||
    !(pod.spec?.containers ?? []).some((c) => c.name === LAUNCHER_CONTAINER) ||
    pod.status?.phase !== 'Running'
  )
    return undefined;
  return {
    kind: 'found',
    launcher: launcherIn(pod, vmiName, pod.spec?.securityContext?.runAsUser ?? undefined),
    ...(isTerminating(pod) ? { terminating: true as const } : {}),
  };
}

const podLimitsSchema = z.looseObject({
  spec: z
    .looseObject({
      containers: z
        .array(
          z.looseObject({
            resources: z
              .looseObject({ limits: z.record(z.string(), z.union([z.string().max(64), z.number()])).optional() })
              .optional(),
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
