/**
 * Cache indexes and cache transforms (10,000 BlockPulls on one operator).
 *
 * Indexes replace the O(N) scans of the BlockPull cache per reconcile and per watch event: like
 * KubeVirt's informers index pods by `kubevirt.io/created-by`, the BlockPulls are filed by their
 * VMI and by their disk, the Running ones by node, the ones waiting for a slot apart; launcher pods by the uid of
 * the VMI that they claim; VMIs by uid.
 *
 * Transforms keep in the VMI and pod caches only what the operator reads (the fields of
 * VmiSchema, PodSchema and the pod's container limits): no managedFields, no volumes, no env.
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import { operationVmKey } from '../kubevirt/chain-operations.ts';
import { CREATED_BY_LABEL } from '../kubevirt/launcher.ts';
import type { IndexFunc } from '../kube/informer.ts';

/** BlockPulls by "namespace/vmiName". */
export const BP_BY_VMI = 'vmi';
/** BlockPulls by "namespace/vmiName/disk" (the disk holder, waking those waiting for the disk). */
export const BP_BY_DISK = 'disk';
/** Running BlockPulls by status.launcher.node ('' when unknown). */
export const BP_RUNNING_BY_NODE = 'runningNode';
/** BlockPulls whose status.reason is WaitingForSlot, under ''. */
export const BP_WAITING_FOR_SLOT = 'waitingForSlot';
/** BlockPulls by status.phase ('Pending' without one): the blockpull_jobs gauge counts them at scrape. */
export const BP_BY_PHASE = 'phase';
/** Pods by "namespace/uid" of each VMI they claim (created-by label, ownerReferences). */
export const POD_BY_VMI_UID = 'vmiUid';
/** VMIs by uid. */
export const VMI_BY_UID = 'uid';
/** VirtualMachineSnapshots and VirtualMachineBackups by "namespace/name" of the VM they act on (spec.source). */
export const OPERATION_BY_VM = 'vm';

interface LooseBlockPull {
  metadata?: { namespace?: string };
  spec?: { vmiName?: unknown; disk?: unknown };
  status?: { phase?: unknown; reason?: unknown; launcher?: { node?: unknown } };
}

/** The BP_BY_DISK value of a disk. */
export function diskIndexKey(namespace: string, vmiName: string, disk: string): string {
  return `${namespace}/${vmiName}/${disk}`;
}

export const blockPullIndexes: Readonly<Record<string, IndexFunc<KubernetesObject>>> = {
  [BP_BY_VMI]: (obj) => {
    const b = obj as LooseBlockPull;
    return typeof b.spec?.vmiName === 'string' ? [`${b.metadata?.namespace ?? ''}/${b.spec.vmiName}`] : [];
  },
  [BP_BY_DISK]: (obj) => {
    const b = obj as LooseBlockPull;
    return typeof b.spec?.vmiName === 'string' && typeof b.spec.disk === 'string'
      ? [diskIndexKey(b.metadata?.namespace ?? '', b.spec.vmiName, b.spec.disk)]
      : [];
  },
  [BP_RUNNING_BY_NODE]: (obj) => {
    const s = (obj as LooseBlockPull).status;
    if (s?.phase !== 'Running') return [];
    return [typeof s.launcher?.node === 'string' ? s.launcher.node : ''];
  },
  [BP_WAITING_FOR_SLOT]: (obj) => {
    const b = obj as LooseBlockPull;
    return b.status?.reason === 'WaitingForSlot' ? [b.metadata?.namespace ?? ''] : [];
  },
  [BP_BY_PHASE]: (obj) => {
    const phase = (obj as LooseBlockPull).status?.phase;
    return [typeof phase === 'string' && phase !== '' ? phase : 'Pending'];
  },
};

interface LooseMeta {
  namespace?: string;
  uid?: string;
  labels?: Record<string, string>;
  ownerReferences?: { uid?: string }[];
}

export const podIndexes: Readonly<Record<string, IndexFunc<KubernetesObject>>> = {
  [POD_BY_VMI_UID]: (obj) => {
    const md = obj.metadata as LooseMeta | undefined;
    const ns = md?.namespace ?? '';
    const uids = new Set<string>();
    const label = md?.labels?.[CREATED_BY_LABEL];
    if (label !== undefined && label !== '') uids.add(label);
    for (const r of md?.ownerReferences ?? []) if (typeof r.uid === 'string' && r.uid !== '') uids.add(r.uid);
    return [...uids].map((u) => `${ns}/${u}`);
  },
};

export const vmiIndexes: Readonly<Record<string, IndexFunc<KubernetesObject>>> = {
  [VMI_BY_UID]: (obj) => {
    const md = obj.metadata as LooseMeta | undefined;
    return md?.uid ? [`${md.namespace ?? ''}/${md.uid}`] : [];
  },
};

export const operationIndexes: Readonly<Record<string, IndexFunc<KubernetesObject>>> = {
  [OPERATION_BY_VM]: (obj) => {
    const vm = operationVmKey(obj);
    return vm !== undefined ? [vm] : [];
  },
};

type Json = Record<string, unknown>;

const isObj = (v: unknown): v is Json => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Copy only `keys` of `v` (those present). */
function pick(v: unknown, keys: readonly string[]): Json | undefined {
  if (!isObj(v)) return undefined;
  const out: Json = {};
  for (const k of keys) if (v[k] !== undefined) out[k] = v[k];
  return out;
}

const METADATA_KEYS = [
  'name',
  'namespace',
  'uid',
  'resourceVersion',
  'generation',
  'creationTimestamp',
  'deletionTimestamp',
  'labels',
  'ownerReferences',
] as const;

function slimMetadata(md: unknown): Json | undefined {
  const out = pick(md, METADATA_KEYS);
  if (out === undefined) return undefined;
  // Labels are read (created-by); annotations and managedFields are not kept.
  return out;
}

/**
 * What the operator reads of a VMI (VmiSchema, chain-operations.ts): disk names, utility volume
 * names, phase, node, runtime user, pods, migration, volumes (hot-plugged or not), conditions.
 */
export function slimVmi<T extends KubernetesObject>(obj: T): T {
  const o = obj as unknown as Json;
  const spec = o['spec'];
  const disks =
    isObj(spec) && isObj(spec['domain']) && isObj(spec['domain']['devices'])
      ? spec['domain']['devices']['disks']
      : undefined;
  const utility =
    isObj(spec) && Array.isArray(spec['utilityVolumes']) ? (spec['utilityVolumes'] as unknown[]) : undefined;
  const status = pick(o['status'], [
    'phase',
    'nodeName',
    'runtimeUser',
    'activePods',
    'migrationState',
    'evacuationNodeName',
    'volumeStatus',
    'conditions',
  ]);
  if (status !== undefined && Array.isArray(status['volumeStatus'])) {
    status['volumeStatus'] = (status['volumeStatus'] as unknown[]).map((v) => {
      const kept = pick(v, ['name', 'target']) ?? v;
      // Only whether it is hot-plugged is read (not the attachment pod's details).
      return isObj(v) && isObj(v['hotplugVolume']) && isObj(kept) ? { ...kept, hotplugVolume: {} } : kept;
    });
  }
  if (status !== undefined && Array.isArray(status['conditions'])) {
    status['conditions'] = (status['conditions'] as unknown[]).map((c) => pick(c, ['type', 'status', 'reason']) ?? c);
  }
  const slimSpec: Json = {
    ...(Array.isArray(disks)
      ? { domain: { devices: { disks: (disks as unknown[]).map((d) => pick(d, ['name']) ?? d) } } }
      : {}),
    ...(utility !== undefined ? { utilityVolumes: utility.map((u) => pick(u, ['name']) ?? u) } : {}),
  };
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    metadata: slimMetadata(o['metadata']),
    ...(Object.keys(slimSpec).length > 0 ? { spec: slimSpec } : {}),
    ...(status !== undefined ? { status } : {}),
  } as unknown as T;
}

/** What the operator reads of a VirtualMachineSnapshot or VirtualMachineBackup: its source, phase and conditions. */
export function slimOperation<T extends KubernetesObject>(obj: T): T {
  const o = obj as unknown as Json;
  const spec = o['spec'];
  const source = isObj(spec) ? pick(spec['source'], ['apiGroup', 'kind', 'name']) : undefined;
  const status = pick(o['status'], ['phase', 'conditions']);
  if (status !== undefined && Array.isArray(status['conditions'])) {
    status['conditions'] = (status['conditions'] as unknown[]).map((c) => pick(c, ['type', 'status', 'reason']) ?? c);
  }
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    metadata: slimMetadata(o['metadata']),
    spec: source !== undefined ? { source } : {},
    ...(status !== undefined ? { status } : {}),
  } as unknown as T;
}

/** What the operator reads of a launcher pod (PodSchema, container limits): node, container names and limits, phase. */
export function slimPod<T extends KubernetesObject>(obj: T): T {
  const o = obj as unknown as Json;
  const spec = o['spec'];
  const containers = isObj(spec) && Array.isArray(spec['containers']) ? spec['containers'] : undefined;
  const status = pick(o['status'], ['phase']);
  return {
    apiVersion: obj.apiVersion,
    kind: obj.kind,
    metadata: slimMetadata(o['metadata']),
    spec: {
      ...(isObj(spec) && typeof spec['nodeName'] === 'string' ? { nodeName: spec['nodeName'] } : {}),
      ...(containers !== undefined
        ? {
            containers: containers.map((c) => {
              const limits = isObj(c) && isObj(c['resources']) ? c['resources']['limits'] : undefined;
              return { ...(pick(c, ['name']) ?? {}), ...(limits !== undefined ? { resources: { limits } } : {}) };
            }),
          }
        : {}),
    },
    ...(status !== undefined ? { status } : {}),
  } as unknown as T;
}
