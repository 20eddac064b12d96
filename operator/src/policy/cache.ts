/**
 * What the policy controller keeps of the objects it watches, and the indexes it looks them up
 * by. Its caches are its own (the BlockPull controller's are not shared: the two rooms meet
 * only through the API server); each keeps only the fields the policy reads.
 */
import type { KubernetesObject } from '@kubernetes/client-node';
import { z } from 'zod';
import { POLICY_KIND_LABEL, POLICY_NAME_LABEL, ROLE_LABEL, VMI_UID_LABEL } from '../api/policy-types.ts';
import { MigrationPolicySchema, PhaseSchema } from '../api/types.ts';
import type { IndexFunc } from '../kube/informer.ts';
import type { PullView } from './decide.ts';

type Json = Record<string, unknown>;
const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const time = z.union([z.string(), z.date()]).transform((t) => (typeof t === 'string' ? t : t.toISOString()));

/** Cache indexes of the BlockPulls. */
export const BP_BY_CONTROLLER = 'controllerUid';
export const BP_BY_DISK = 'disk';

/**
 * The volume kinds whose disk can carry a backing chain: KubeVirt puts an overlay over a
 * containerDisk or an ephemeral PVC, and an imported or snapshot-made image may have a backing
 * file. Cloud-init, config, secret and other generated volumes are never chains.
 */
export const CHAIN_VOLUMES = ['containerDisk', 'ephemeral', 'persistentVolumeClaim', 'dataVolume', 'hostDisk'] as const;

/** The metadata both slimmed caches keep: identity, labels (selectors) and lifetime. */
const CachedMetadata = z.looseObject({
  name: z.string(),
  namespace: z.string(),
  uid: z.string(),
  labels: z.record(z.string(), z.string()).optional(),
  creationTimestamp: time.optional(),
  deletionTimestamp: time.optional(),
});

const VmiCacheSchema = z.looseObject({
  metadata: CachedMetadata,
  spec: z
    .looseObject({
      disks: z.array(z.object({ name: z.string(), device: z.string() })).optional(),
      volumes: z.array(z.object({ name: z.string(), kind: z.string() })).optional(),
    })
    .optional(),
});
export type CachedVmi = z.infer<typeof VmiCacheSchema>;

/** A VMI as the policy caches it: its identity and labels, its disks (name, device) and volumes (name, kind). */
export function slimVmiForPolicy<T extends KubernetesObject>(obj: T): T {
  const o = obj as unknown as Json;
  const md = isObj(o.metadata) ? o.metadata : {};
  const spec = isObj(o.spec) ? o.spec : {};
  const devices = isObj(spec.domain) && isObj(spec.domain.devices) ? spec.domain.devices : {};
  const disks = Array.isArray(devices.disks)
    ? devices.disks.filter(isObj).map((d) => ({
        name: String(d.name),
        device: ['cdrom', 'lun', 'floppy'].find((k) => k in d) ?? 'disk',
      }))
    : [];
  const volumes = Array.isArray(spec.volumes)
    ? spec.volumes
        .filter(isObj)
        .map((v) => ({ name: String(v.name), kind: Object.keys(v).find((k) => k !== 'name') ?? '' }))
    : [];
  const pick = (k: string): Json => (md[k] !== undefined ? { [k]: md[k] } : {});
  return {
    apiVersion: o.apiVersion,
    kind: o.kind,
    metadata: {
      ...pick('name'),
      ...pick('namespace'),
      ...pick('uid'),
      ...pick('resourceVersion'),
      ...pick('labels'),
      ...pick('creationTimestamp'),
      ...pick('deletionTimestamp'),
    },
    spec: { disks, volumes },
  } as unknown as T;
}

export function parseCachedVmi(obj: unknown): CachedVmi | undefined {
  const r = VmiCacheSchema.safeParse(obj);
  return r.success ? r.data : undefined;
}

/** The disks of a VMI a policy may select: the named ones it has, else those whose volume can carry a chain. */
export function vmiDisks(vmi: CachedVmi, names: readonly string[] | undefined): string[] {
  const disks = vmi.spec?.disks ?? [];
  if (names !== undefined) return disks.filter((d) => names.includes(d.name)).map((d) => d.name);
  const kinds = new Map((vmi.spec?.volumes ?? []).map((v) => [v.name, v.kind]));
  return disks
    .filter((d) => d.device === 'disk' && (CHAIN_VOLUMES as readonly string[]).includes(kinds.get(d.name) ?? ''))
    .map((d) => d.name);
}

const PullCacheSchema = z.looseObject({
  metadata: CachedMetadata.extend({
    ownerReferences: z.array(z.looseObject({ uid: z.string(), controller: z.boolean().optional() })).optional(),
  }),
  spec: z.looseObject({
    vmiName: z.string(),
    disk: z.string(),
    paused: z.boolean().optional(),
    dryRun: z.boolean().optional(),
    base: z.looseObject({ position: z.number().optional() }).optional(),
    bandwidth: z.union([z.number(), z.string()]).optional(),
    migrationPolicy: MigrationPolicySchema.optional(),
  }),
  status: z
    .looseObject({
      phase: PhaseSchema.optional(),
      progress: z
        .looseObject({
          currentBytes: z.number().optional(),
          totalBytes: z.number().optional(),
          bytesPerSecond: z.number().optional(),
        })
        .optional(),
      backingChain: z
        .looseObject({ before: z.array(z.unknown()).optional(), current: z.array(z.unknown()).optional() })
        .optional(),
      plan: z.looseObject({ bytesToWrite: z.number().optional() }).optional(),
      completionTime: time.optional(),
    })
    .optional(),
});

/** The controller owner's uid of a cached object, if it has one. */
export function controllerUid(obj: { metadata?: { ownerReferences?: unknown } }): string | undefined {
  const refs = obj.metadata?.ownerReferences;
  if (!Array.isArray(refs)) return undefined;
  const c = (refs as unknown[]).find((r) => isObj(r) && r.controller === true);
  return isObj(c) && typeof c.uid === 'string' ? c.uid : undefined;
}

/** A cached BlockPull as the policy reads it; undefined for one it cannot read (logged by the caller). */
export function pullView(obj: unknown): PullView | undefined {
  const r = PullCacheSchema.safeParse(obj);
  if (!r.success) return undefined;
  const { metadata: md, spec, status } = r.data;
  const labels = md.labels ?? {};
  const owner = controllerUid(r.data);
  const chain = status?.backingChain?.current ?? status?.backingChain?.before;
  const role = labels[ROLE_LABEL];
  return {
    namespace: md.namespace,
    name: md.name,
    uid: md.uid,
    created: md.creationTimestamp ?? '',
    deleting: md.deletionTimestamp !== undefined,
    vmi: spec.vmiName,
    disk: spec.disk,
    dryRun: spec.dryRun ?? false,
    paused: spec.paused ?? false,
    ...(spec.base?.position !== undefined ? { basePosition: spec.base.position } : {}),
    ...(spec.bandwidth !== undefined ? { bandwidth: spec.bandwidth } : {}),
    migrationPolicy: spec.migrationPolicy ?? 'Yield',
    ...(owner !== undefined ? { controllerUid: owner } : {}),
    ...(labels[POLICY_NAME_LABEL] !== undefined ? { policyName: labels[POLICY_NAME_LABEL] } : {}),
    ...(labels[POLICY_KIND_LABEL] !== undefined ? { policyKind: labels[POLICY_KIND_LABEL] } : {}),
    ...(labels[VMI_UID_LABEL] !== undefined ? { vmiUid: labels[VMI_UID_LABEL] } : {}),
    ...(role === 'pull' || role === 'plan' ? { role: role } : {}),
    ...(status?.phase !== undefined ? { phase: status.phase } : {}),
    ...(status?.progress?.currentBytes !== undefined ? { currentBytes: status.progress.currentBytes } : {}),
    ...(status?.progress?.totalBytes !== undefined ? { totalBytes: status.progress.totalBytes } : {}),
    ...(status?.progress?.bytesPerSecond !== undefined ? { bytesPerSecond: status.progress.bytesPerSecond } : {}),
    ...(chain !== undefined ? { chainLength: chain.length } : {}),
    ...(status?.plan?.bytesToWrite !== undefined ? { planBytes: status.plan.bytesToWrite } : {}),
    ...(status?.completionTime !== undefined ? { completionTime: status.completionTime } : {}),
  };
}

/** A BlockPull as the policy caches it: no managedFields, no chain paths (their count is kept), no launcher. */
export function slimPullForPolicy<T extends KubernetesObject>(obj: T): T {
  const o = obj as unknown as Json;
  const md = isObj(o.metadata) ? { ...o.metadata } : {};
  delete md.managedFields;
  delete md.annotations;
  const status = isObj(o.status) ? o.status : undefined;
  const chain = status && isObj(status.backingChain) ? status.backingChain : undefined;
  const count = (k: string): unknown[] | undefined =>
    chain && Array.isArray(chain[k]) ? new Array<unknown>((chain[k] as unknown[]).length).fill(0) : undefined;
  const slimStatus =
    status === undefined
      ? undefined
      : {
          phase: status.phase,
          progress: status.progress,
          completionTime: status.completionTime,
          plan: status.plan,
          ...(chain ? { backingChain: { before: count('before'), current: count('current') } } : {}),
        };
  return { ...o, metadata: md, ...(slimStatus ? { status: slimStatus } : {}) } as unknown as T;
}

export const pullIndexes: Record<string, IndexFunc<KubernetesObject>> = {
  [BP_BY_CONTROLLER]: (obj) => {
    const uid = controllerUid(obj);
    return uid !== undefined ? [uid] : [];
  },
  [BP_BY_DISK]: (obj) => {
    const spec = (obj as { spec?: { vmiName?: unknown; disk?: unknown } }).spec;
    return typeof spec?.vmiName === 'string' && typeof spec.disk === 'string'
      ? [`${obj.metadata?.namespace ?? ''}/${spec.vmiName}/${spec.disk}`]
      : [];
  },
};
