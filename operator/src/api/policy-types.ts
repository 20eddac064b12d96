/**
 * BlockPullPolicy and ClusterBlockPullPolicy API types: zod schemas mirroring
 * crds/blockpull.dev_blockpullpolicies.yaml and crds/blockpull.dev_clusterblockpullpolicies.yaml
 * (the source of truth). policy-types.test.ts walks both and fails when they drift apart.
 */
import { z } from 'zod';
import { ConditionSchema, GROUP, MigrationPolicySchema, ObjectMetaSchema, STATUS_LIMITS, VERSION } from './types.ts';

export const POLICY_KIND = 'BlockPullPolicy';
export const CLUSTER_POLICY_KIND = 'ClusterBlockPullPolicy';
export type PolicyKind = typeof POLICY_KIND | typeof CLUSTER_POLICY_KIND;
export const POLICY_REF = { group: GROUP, version: VERSION, plural: 'blockpullpolicies' } as const;
export const CLUSTER_POLICY_REF = { group: GROUP, version: VERSION, plural: 'clusterblockpullpolicies' } as const;

/** Labels the policy puts on each BlockPull it creates (the controller ownerReference is the proof of ownership). */
export const POLICY_UID_LABEL = 'blockpull.dev/policy-uid';
export const POLICY_NAME_LABEL = 'blockpull.dev/policy';
export const POLICY_KIND_LABEL = 'blockpull.dev/policy-kind';
export const VMI_UID_LABEL = 'blockpull.dev/vmi-uid';
/** pull: a BlockPull that pulls; plan: a dryRun BlockPull that looks at the chain first. */
export const ROLE_LABEL = 'blockpull.dev/role';
export type PolicyRole = 'pull' | 'plan';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const HHMM = /^([01][0-9]|2[0-3]):[0-5][0-9]$/;
const TIME_ZONE = /^[A-Za-z][A-Za-z0-9_+-]*(\/[A-Za-z0-9_+-]+)*$/;
const int32 = () => z.number().int().min(-2147483648).max(2147483647);
const int64 = () => z.number().int();
const dateTime = () => z.iso.datetime({ offset: true });

export const LABEL_OPERATORS = ['In', 'NotIn', 'Exists', 'DoesNotExist'] as const;
export const LabelSelectorSchema = z.object({
  matchLabels: z.record(z.string(), z.string()).optional(),
  matchExpressions: z
    .array(
      z.object({
        key: z.string().min(1).max(317),
        operator: z.enum(LABEL_OPERATORS),
        values: z.array(z.string().max(63)).max(64).optional(),
      }),
    )
    .max(64)
    .optional(),
});
export type LabelSelector = z.infer<typeof LabelSelectorSchema>;

export const DAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'] as const;
export type Day = (typeof DAYS)[number];

export const WindowSchema = z.object({
  start: z.string().regex(HHMM),
  end: z.string().regex(HHMM),
  timeZone: z.string().min(1).max(64).regex(TIME_ZONE),
  days: z.array(z.enum(DAYS)).min(1).max(7).optional(),
});
export type Window = z.infer<typeof WindowSchema>;

const specFields = {
  vmiSelector: LabelSelectorSchema,
  disks: z.array(z.string().min(1).max(63).regex(DNS1123_LABEL)).min(1).max(64).optional(),
  minChainLength: int32().min(2).max(256).default(2),
  base: z.object({ keepBottom: int32().min(1).max(255).optional() }).optional(),
  // Not bounded here, as BlockPull spec.bandwidth: the CRD rejects a bad value; an old one is passed on.
  bandwidth: z.union([z.number().int(), z.string()]).optional(),
  maxConcurrent: int32().min(1).max(10000).default(4),
  window: WindowSchema.optional(),
  paused: z.boolean().default(false),
  migrationPolicy: MigrationPolicySchema.default('Yield'),
  dryRun: z.boolean().default(false),
  ttlSecondsAfterFinished: int64().min(0).max(31536000).optional(),
};

export const PolicySpecSchema = z.object(specFields);
export const ClusterPolicySpecSchema = z.object({ namespaceSelector: LabelSelectorSchema, ...specFields });
/** The spec both kinds share; namespaceSelector only on a ClusterBlockPullPolicy. */
export type PolicySpec = z.infer<typeof PolicySpecSchema> & { readonly namespaceSelector?: LabelSelector };

/** Condition reasons of a policy (stable API). */
export const POLICY_REASONS = [
  'Created', // not observed yet
  'NothingSelected', // Ready True: the selectors match no disk
  'AllFlat', // Ready True: every selected disk's BlockPull is Completed
  'Pulling', // Reconciling: pulls are made, run or wait for the budget
  'Planning', // Reconciling: dryRun: plans are being made
  'Planned', // Ready True: dryRun: every selected disk has its plan
  'OutsideWindow', // Reconciling: the window is closed; pulls are paused until it opens
  'Paused', // spec.paused
  'Conflict', // Stalled: every unfinished disk is held by an older claim
  'PullsFailed', // Stalled: every unfinished disk's BlockPull is Failed (or in conflict)
  'InvalidWindow', // Stalled: the window's time zone is unknown
  'WindowNeverOpens', // Stalled: the window does not open within 8 days
] as const;
export type PolicyReason = (typeof POLICY_REASONS)[number];

const count = () => int32().min(0).optional();

export const PolicyStatusSchema = z.object({
  observedGeneration: int64().min(0).optional(),
  conditions: z.array(ConditionSchema).max(STATUS_LIMITS.conditions).optional(),
  selectedDisks: count(),
  counts: z
    .object({
      notCreated: count(),
      pending: count(),
      running: count(),
      paused: count(),
      completed: count(),
      failed: count(),
      planned: count(),
      skipped: count(),
    })
    .optional(),
  active: count(),
  bytesDone: int64().min(0).optional(),
  bytesTotal: int64().min(0).optional(),
  etaSeconds: int64().min(0).optional(),
  window: z.object({ open: z.boolean().optional(), nextChange: dateTime().optional() }).optional(),
  conflicts: z
    .array(
      z.object({
        namespace: z.string(),
        vmi: z.string(),
        disk: z.string(),
        blockPull: z.string().optional(),
        policy: z.string().optional(),
        message: z.string().max(1024),
      }),
    )
    .max(100)
    .optional(),
  conflictCount: count(),
  plan: z
    .array(
      z.object({
        namespace: z.string(),
        vmi: z.string(),
        disk: z.string(),
        chainLength: int32().min(0).optional(),
        bytesToWrite: int64().min(0).optional(),
        pull: z.boolean().optional(),
        blockPull: z.string().optional(),
      }),
    )
    .max(1000)
    .optional(),
  finished: z.array(z.string().max(128)).max(20000).optional(),
  message: z.string().max(STATUS_LIMITS.messageLength).optional(),
});
export type PolicyStatus = z.infer<typeof PolicyStatusSchema>;
export type PolicyConflict = NonNullable<PolicyStatus['conflicts']>[number];
export type PolicyPlanEntry = NonNullable<PolicyStatus['plan']>[number];

/** Bounds of the status lists (the CRD's maxItems), used where the status is made. */
export const POLICY_STATUS_LIMITS = { conflicts: 100, plan: 1000, finished: 20000 } as const;

const ClusterObjectMetaSchema = ObjectMetaSchema.extend({ namespace: z.string().optional() });

export const BlockPullPolicySchema = z.object({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  metadata: ObjectMetaSchema,
  spec: PolicySpecSchema,
  status: PolicyStatusSchema.optional(),
});
export const ClusterBlockPullPolicySchema = z.object({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  metadata: ClusterObjectMetaSchema,
  spec: ClusterPolicySpecSchema,
  status: PolicyStatusSchema.optional(),
});

/** A policy of either kind, as the policy controller reads it. */
export interface Policy {
  readonly kind: PolicyKind;
  readonly metadata: z.infer<typeof ClusterObjectMetaSchema>;
  readonly spec: PolicySpec;
  readonly status?: PolicyStatus | undefined;
}

/** Parse a policy of `kind` from the API server; throws a ZodError naming the bad field. */
export function parsePolicy(kind: PolicyKind, obj: unknown): Policy {
  if (kind === POLICY_KIND) {
    const p = BlockPullPolicySchema.parse(obj);
    return { kind, metadata: p.metadata, spec: p.spec, status: p.status };
  }
  const p = ClusterBlockPullPolicySchema.parse(obj);
  return { kind, metadata: p.metadata, spec: p.spec, status: p.status };
}
