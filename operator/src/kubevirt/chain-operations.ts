/**
 * KubeVirt's own operations on a running VM's disk chains (KubeVirt 1.8 and later), which always
 * win over a pull: an external snapshot window, a VirtualMachineBackup and a volume migration. Pure: from the cached
 * VMI, VirtualMachineSnapshots, VirtualMachineBackups and the chain libvirt shows to the
 * operations under way (decide.ts waits for them; a running pull yields to them).
 *
 * - External snapshot (VEP 321): while KubeVirt's overlays exist the VMI has condition
 *   OverlaySnapshotActive=True; a VirtualMachineSnapshot of the VM that has not reached a final
 *   phase (Succeeded, Failed) is one too (the condition may not be set yet); and an image of the
 *   chain on a hot-plugged or utility volume other than the disk's own (the `ovl-*.qcow2` overlays
 *   live on the hot-plugged scratch PVC `<snapshot>-snap-scratch`) is one whatever the objects say.
 * - VirtualMachineBackup (backup.kubevirt.io/v1alpha1): a libvirt backup job with checkpoints; in
 *   progress until its condition Complete or Failed is True.
 * - Volume migration (a VM's `spec.updateVolumesStrategy: Migration`): virt-controller sets the VMI
 *   condition VolumesChange=True when the VMI's volumes name new claims (status.migratedVolumes),
 *   and the workload updater then migrates the VMI, libvirt copying those disks onto the new
 *   claims. The condition is removed when the migration ends, or set False on a cancellation or an
 *   invalid update; only True is an operation. A pull would race the copy (the copy may miss what
 *   the pull writes, or the pull block the migration), so it waits for the condition to go.
 * The CRDs of both may be absent (KubeVirt 1.7): their lists are then empty.
 */
import { z } from 'zod';
import type { ResourceRef } from '../kube/client.ts';
import type { ChainLayer } from '../hypervisor/types.ts';
import type { Vmi } from './launcher.ts';

/** VirtualMachineSnapshots (snapshot.kubevirt.io): the versions tried, preferred first. */
export const VMSNAPSHOT_REFS: readonly ResourceRef[] = [
  { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinesnapshots' },
  { group: 'snapshot.kubevirt.io', version: 'v1alpha1', plural: 'virtualmachinesnapshots' },
];
/** VirtualMachineBackups (backup.kubevirt.io, alpha in KubeVirt 1.8). */
export const VMBACKUP_REFS: readonly ResourceRef[] = [
  { group: 'backup.kubevirt.io', version: 'v1alpha1', plural: 'virtualmachinebackups' },
];

/** The VMI condition KubeVirt sets while the overlays of an external snapshot exist. */
export const OVERLAY_SNAPSHOT_CONDITION = 'OverlaySnapshotActive';
/** Phases after which a VirtualMachineSnapshot does nothing more to the VM. */
export const VMSNAPSHOT_FINAL_PHASES: readonly string[] = ['Succeeded', 'Failed'];
/** Where virt-launcher finds hot-plugged (and utility) volumes: `<dir>/<volume>` or `<dir>/<volume>.img`. */
export const HOTPLUG_DISKS_DIR = '/var/run/kubevirt/hotplug-disks/';

/** The VMI condition KubeVirt sets (True) while a volume migration of the VMI is under way. */
export const VOLUMES_CHANGE_CONDITION = 'VolumesChange';

export type ChainOperationKind = 'snapshot' | 'backup' | 'volumeMigration';

/** A KubeVirt operation on the VM's disks under way: the pull waits (or yields) until it is over. */
export interface ChainOperation {
  readonly kind: ChainOperationKind;
  /** Names it: `VirtualMachineSnapshot ns/name`, `VMI condition OverlaySnapshotActive`, ... */
  readonly name: string;
  readonly message: string;
}

const conditionSchema = z.looseObject({ type: z.string(), status: z.string(), reason: z.string().optional() });

/** The parts of a VMI this module reads (beside launcher.ts's VmiSchema). */
const VmiOperationsSchema = z.looseObject({
  spec: z.looseObject({ utilityVolumes: z.array(z.looseObject({ name: z.string() })).optional() }).optional(),
  status: z
    .looseObject({
      conditions: z.array(conditionSchema).optional(),
      volumeStatus: z.array(z.looseObject({ name: z.string(), hotplugVolume: z.unknown().optional() })).optional(),
    })
    .optional(),
});

/** A source naming the VM (kind VirtualMachine): its name, else undefined. */
const sourceSchema = z.looseObject({ kind: z.string().optional(), name: z.string().optional() });

const VmSnapshotSchema = z.looseObject({
  metadata: z.looseObject({ name: z.string(), namespace: z.string() }),
  spec: z.looseObject({ source: sourceSchema.optional() }),
  status: z.looseObject({ phase: z.string().optional() }).nullable().optional(),
});

const VmBackupSchema = z.looseObject({
  metadata: z.looseObject({ name: z.string(), namespace: z.string() }),
  spec: z.looseObject({ source: sourceSchema.optional() }),
  status: z
    .looseObject({ conditions: z.array(conditionSchema).optional() })
    .nullable()
    .optional(),
});

/**
 * The VM a VirtualMachineSnapshot or VirtualMachineBackup acts on ("namespace/name"), or undefined
 * (a backup through a VirtualMachineBackupTracker names no VM). The VMI has the VM's name.
 */
export function operationVmKey(raw: unknown): string | undefined {
  const r = z
    .looseObject({
      metadata: z.looseObject({ namespace: z.string() }),
      spec: z.looseObject({ source: sourceSchema.optional() }),
    })
    .safeParse(raw);
  if (!r.success) return undefined;
  const src = r.data.spec.source;
  if (src?.kind !== 'VirtualMachine' || src.name === undefined) return undefined;
  return `${r.data.metadata.namespace}/${src.name}`;
}

/** The VMI's condition of that type if it is True, else undefined. */
function trueCondition(vmi: Vmi, type: string): z.infer<typeof conditionSchema> | undefined {
  const r = VmiOperationsSchema.safeParse(vmi);
  const c = r.success ? r.data.status?.conditions?.find((x) => x.type === type) : undefined;
  return c?.status === 'True' ? c : undefined;
}

/**
 * The operation a True VMI condition says is under way: `what` names it ("the external snapshot"),
 * `meaning` says what KubeVirt does to the disks meanwhile.
 */
function conditionOperation(
  vmi: Vmi,
  type: string,
  kind: ChainOperationKind,
  what: string,
  meaning: string,
): ChainOperation | undefined {
  const c = trueCondition(vmi, type);
  if (c === undefined) return undefined;
  const vmiName = `VirtualMachineInstance ${vmi.metadata.namespace}/${vmi.metadata.name}`;
  return {
    kind,
    name: `${what} of ${vmiName}`,
    message: `${vmiName} has condition ${type}=True${c.reason !== undefined ? ` (${c.reason})` : ''}: ${meaning}`,
  };
}

/** The VMI's external snapshot, said by its condition OverlaySnapshotActive=True. */
const overlayCondition = (vmi: Vmi): ChainOperation | undefined =>
  conditionOperation(
    vmi,
    OVERLAY_SNAPSHOT_CONDITION,
    'snapshot',
    'the external snapshot',
    "KubeVirt's snapshot overlays are on its disks",
  );

/** The VMI's volume migration, said by its condition VolumesChange=True. */
const volumesChange = (vmi: Vmi): ChainOperation | undefined =>
  conditionOperation(
    vmi,
    VOLUMES_CHANGE_CONDITION,
    'volumeMigration',
    'the volume migration',
    'KubeVirt migrates its volumes to new claims',
  );

/** VirtualMachineSnapshots of the VM not in a final phase (no phase yet counts: just created), oldest name first. */
function openSnapshots(vmi: Vmi, rawSnapshots: readonly unknown[]): ChainOperation[] {
  const ns = vmi.metadata.namespace;
  const out: { name: string; op: ChainOperation }[] = [];
  for (const raw of rawSnapshots) {
    if (operationVmKey(raw) !== `${ns}/${vmi.metadata.name}`) continue;
    const r = VmSnapshotSchema.safeParse(raw);
    if (!r.success) continue;
    const phase = r.data.status?.phase;
    if (phase !== undefined && VMSNAPSHOT_FINAL_PHASES.includes(phase)) continue;
    const name = `VirtualMachineSnapshot ${ns}/${r.data.metadata.name}`;
    out.push({
      name: r.data.metadata.name,
      op: {
        kind: 'snapshot',
        name,
        message: `${name} (phase ${phase ?? 'not started'}) snapshots VirtualMachine ${ns}/${vmi.metadata.name}`,
      },
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name)).map((x) => x.op);
}

/** VirtualMachineBackups of the VM without Complete=True or Failed=True. */
function openBackups(vmi: Vmi, rawBackups: readonly unknown[]): ChainOperation[] {
  const ns = vmi.metadata.namespace;
  const out: { name: string; op: ChainOperation }[] = [];
  for (const raw of rawBackups) {
    if (operationVmKey(raw) !== `${ns}/${vmi.metadata.name}`) continue;
    const r = VmBackupSchema.safeParse(raw);
    if (!r.success) continue;
    const conditions = r.data.status?.conditions ?? [];
    if (conditions.some((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True')) continue;
    const progressing = conditions.find((c) => c.type === 'Progressing');
    const name = `VirtualMachineBackup ${ns}/${r.data.metadata.name}`;
    const state = progressing?.reason !== undefined ? ` (${progressing.reason})` : '';
    out.push({
      name: r.data.metadata.name,
      op: { kind: 'backup', name, message: `${name}${state} backs up VirtualMachine ${ns}/${vmi.metadata.name}` },
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name)).map((x) => x.op);
}

/**
 * The hot-plugged and utility volumes of the VMI other than the disk's own (a KubeVirt disk and its
 * volume share the name): status.volumeStatus entries with hotplugVolume, spec.utilityVolumes.
 */
function foreignVolumes(vmi: Vmi, disk: string): Set<string> {
  const r = VmiOperationsSchema.safeParse(vmi);
  const names = new Set<string>();
  if (!r.success) return names;
  for (const v of r.data.status?.volumeStatus ?? [])
    if (v.hotplugVolume !== undefined && v.hotplugVolume !== null) names.add(v.name);
  for (const v of r.data.spec?.utilityVolumes ?? []) names.add(v.name);
  names.delete(disk);
  return names;
}

/** The volume a path lies on under virt-launcher's hot-plug directory (`<dir>/<vol>`, `<dir>/<vol>.img`, `<dir>/<vol>/...`). */
export function hotplugVolumeOf(path: string): string | undefined {
  if (!path.startsWith(HOTPLUG_DISKS_DIR)) return undefined;
  const first = path.slice(HOTPLUG_DISKS_DIR.length).split('/')[0] ?? '';
  const name = first.endsWith('.img') ? first.slice(0, -'.img'.length) : first;
  return name === '' ? undefined : name;
}

/**
 * An image of the chain on a hot-plugged or utility volume other than the disk's own: what
 * KubeVirt's external snapshot puts on the disk (its overlay on the scratch PVC), even when no
 * object says so yet. A hot-plug path whose volume the VMI does not list counts too (the VMI's
 * status may lag libvirt), unless it is the disk's own volume.
 */
function imageOnForeignVolume(vmi: Vmi, disk: string, chain: readonly ChainLayer[]): ChainOperation | undefined {
  const foreign = foreignVolumes(vmi, disk);
  for (const layer of chain) {
    const vol = hotplugVolumeOf(layer.path);
    if (vol === undefined || vol === disk) continue;
    const what = foreign.has(vol) ? 'hot-plugged or utility volume' : 'hot-plugged volume';
    return {
      kind: 'snapshot',
      name: `the overlay ${layer.path}`,
      message: `image ${layer.path} (position ${layer.position}) of disk ${disk} lies on ${what} ${vol} of VirtualMachineInstance ${vmi.metadata.namespace}/${vmi.metadata.name}, not the disk's own: KubeVirt's snapshot overlay`,
    };
  }
  return undefined;
}

export interface ChainOperationsInput {
  readonly vmi: Vmi;
  /** The BlockPull's disk (its volume has the same name). */
  readonly disk: string;
  /** The chain as libvirt shows it, if looked at. */
  readonly chain?: readonly ChainLayer[];
  readonly snapshots: readonly unknown[];
  readonly backups: readonly unknown[];
}

/** Every KubeVirt operation on the VM's disks under way: external snapshots, backups, then a volume migration. */
export function chainOperations(input: ChainOperationsInput): ChainOperation[] {
  const { vmi } = input;
  const ops: ChainOperation[] = [];
  const cond = overlayCondition(vmi);
  if (cond !== undefined) ops.push(cond);
  ops.push(...openSnapshots(vmi, input.snapshots));
  const image = input.chain !== undefined ? imageOnForeignVolume(vmi, input.disk, input.chain) : undefined;
  if (image !== undefined) ops.push(image);
  ops.push(...openBackups(vmi, input.backups));
  const volumes = volumesChange(vmi);
  if (volumes !== undefined) ops.push(volumes);
  return ops;
}
