/**
 * BlockPull API types: zod schemas mirroring crds/blockpull.dev_blockpulls.yaml (the source
 * of truth). types.test.ts walks both and fails when they drift apart.
 */
import { z } from 'zod';

export const GROUP = 'blockpull.dev';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'BlockPull';
export const PLURAL = 'blockpulls';
/** The BlockPull resource for the custom objects API (a kube/client.ts ResourceRef). */
export const BLOCKPULL_REF = { group: GROUP, version: VERSION, plural: PLURAL } as const;
export const FINALIZER = 'blockpull.dev/abort-on-delete';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
// Built from strings so the JSON-schema patterns read exactly as in the CRD.
const CONDITION_TYPE = new RegExp(
  '^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$',
);
// eslint-disable-next-line no-control-regex -- NUL is exactly what a path must not contain
const ABSOLUTE_PATH = new RegExp('^/[^\\x00]*$');
const CONDITION_REASON = /^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/;
const int32 = () => z.number().int().min(-2147483648).max(2147483647);
const int64 = () => z.number().int();
const dateTime = () => z.iso.datetime({ offset: true });

/**
 * The CRD's bounds on status fields the operator fills from outside text (virsh stderr, chain
 * lists). Used by the zod schema below (types.test.ts checks it against the CRD) and by
 * controller/status-limits.ts, which cuts a status down to them before it is written.
 */
export const STATUS_LIMITS = {
  /** spec.base.path, status.backingChain.before/current/completed[].path and basePath maxLength (Linux PATH_MAX). */
  pathLength: 4096,
  /** status.message and status.conditions[].message maxLength. */
  messageLength: 32768,
  /** status.reason and status.conditions[].reason maxLength. */
  reasonLength: 1024,
  /** status.conditions maxItems. */
  conditions: 16,
  /** status.backingChain.before / .current / .completed maxItems. */
  chainItems: 256,
  /** status.progress.percent maxLength. */
  percentLength: 8,
} as const;

/**
 * Phases (stable; documented in the CRD and docs/api.md):
 * - Pending: waiting: VMI absent or not running, migration in progress, disk busy, no slot.
 * - Running: a block pull job runs on the disk (started or adopted by the operator).
 * - Paused: spec.paused stopped the job; what was streamed stays in the active image.
 * - Completed: the chain is at its goal (terminal).
 * - Failed: the pull cannot or will not complete (terminal): disk absent, invalid base, retries exhausted.
 * - Planned: spec.dryRun's plan is written (status.plan); no job is ever started for it.
 */
export const PHASES = ['Pending', 'Running', 'Paused', 'Completed', 'Failed', 'Planned'] as const;
export const PhaseSchema = z.enum(PHASES);
export type Phase = z.infer<typeof PhaseSchema>;
/** Phases after which the operator looks no more (a plan is not made again: it is the look it took). */
export const TERMINAL_PHASES: readonly Phase[] = ['Completed', 'Failed', 'Planned'];
/** Phases in which the operator still has work to do (kstatus: Reconciling True). */
export const RECONCILING_PHASES: readonly Phase[] = ['Pending', 'Running'];

/**
 * Condition types. Progressing: a job runs (True) or waits (False). Complete/Failed: terminal
 * outcomes (the Job convention). Ready/Reconciling/Stalled: the kstatus convention (Flux
 * `wait: true`, kubectl apply-sets, kpt): Ready True only when Completed; Reconciling True while
 * Pending or Running; Stalled True when Failed.
 */
export const CONDITION_TYPES = ['Progressing', 'Complete', 'Failed', 'Ready', 'Reconciling', 'Stalled'] as const;
/**
 * ChainAtGoal: set on a Completed BlockPull once its VMI runs on another launcher pod than the one
 * the pull completed on (a live migration, a restart): True when the chain read on that pod is still
 * at the pull's goal, False when it is not (KubeVirt's block migration puts a new overlay on the
 * container disk), Unknown while it could not be read. Absent: the VMI still runs on
 * status.launcher.pod, where the chain is as the pull left it. Not one of the phase's conditions:
 * Ready stays True (docs/live-migrations.md says why).
 */
export const CHAIN_CONDITION = 'ChainAtGoal';
export type ConditionType = (typeof CONDITION_TYPES)[number] | typeof CHAIN_CONDITION;

/** CamelCase reasons of phases and conditions (stable API). */
export const REASONS = [
  'Created', // first look not done yet
  'VMINotFound', // Pending: no VMI of that name in the namespace
  'VMINotRunning', // Pending: the VMI's phase is not Running
  'LauncherNotFound', // Pending: the VMI runs but no acceptable launcher pod (controlled by it, active, on its node) is found/reachable
  'MigrationInProgress', // Pending: a live migration of the VMI is requested or runs (a running pull yields to it unless migrationPolicy is WaitForPull)
  'DomainNotFound', // Pending: libvirt does not (yet) know the domain
  'HypervisorUnreachable', // phase kept: libvirt/exec unreachable; retried with backoff
  'DiskBusy', // Pending: another BlockPull or another block job uses the disk
  'WaitingForSlot', // Pending: the cluster-wide or per-node limit of concurrent pulls is reached
  'InsufficientSpace', // Pending: the data to pull does not fit the active image's filesystem or the pod's ephemeral-storage limit
  'SnapshotInProgress', // Pending: KubeVirt takes a snapshot of the VM (VMI OverlaySnapshotActive, a VirtualMachineSnapshot not final, an image on a hot-plugged or utility volume); a running pull yields to it
  'BackupInProgress', // Pending: a VirtualMachineBackup of the VM is in progress; a running pull yields to it
  'VolumesChangeInProgress', // Pending: KubeVirt migrates the VMI's volumes (VMI condition VolumesChange=True); a running pull yields to it
  'DataFileInChain', // Pending: an image the pull would write into or remove has a qcow2 data file (<dataStore>, KubeVirt's changed block tracking)
  'Pulling', // Running
  'Adopted', // Running: a pull already running on the disk was adopted
  'Retrying', // Running: a job ended short of the goal and was started again
  'Paused', // Paused
  'NothingToDo', // Completed: the chain was already at its goal at the first look
  'Planned', // Planned: spec.dryRun: the plan is in status.plan, no job is started
  'Completed', // Completed: the job ended and the chain is at its goal
  'DiskNotFound', // Failed: the VMI has no such disk
  'InvalidBase', // Failed: spec.base is not in the disk's chain
  'InvalidBandwidth', // Failed: spec.bandwidth cannot be applied (the CRD rejects it first); Running while our job is aborted first
  'JobFailed', // Failed: starting the job failed permanently; Pending: a job failed, started again after a backoff
  'RetryLimitExceeded', // Failed: the job ended short of the goal more than maxRetries times
] as const;
export type Reason = (typeof REASONS)[number];

/**
 * Reasons of the ChainAtGoal condition alone (never a phase's reason). LauncherChanged: the VMI
 * runs on another launcher pod than the one the pull completed on.
 */
export const CHAIN_REASONS = ['LauncherChanged'] as const;
export type ChainReason = (typeof CHAIN_REASONS)[number];

/**
 * The operator's record of this BlockPull's block job (status.job.state), written BEFORE it
 * starts or aborts a job, so that neither a lost status write nor a restart makes it misjudge
 * what it did (a job it aborted is never taken for a failed one; attempts count the jobs started):
 * - Starting: a start is recorded (counted in attempts); not yet known to have run. Found
 *   without a job later, it is made again as the same attempt: not counted again, not a failure.
 * - Unanswered: the start call did not return within the action bound and was ended; it may
 *   have started the job. The next look decides: a job found is adopted (Running), none is a
 *   failed start (counted against maxRetries, retried after a backoff).
 * - Running: the start call returned, or a running pull was adopted.
 * - Aborting: the operator is aborting it (pause, deletion, an unusable bandwidth, a live migration).
 * - Aborted: gone after the operator's abort: never a failure.
 * - Ended: it ended on its own (at the goal, or short of it: counted against maxRetries).
 * Absent: no job of this BlockPull is known.
 */
// A status from before status.job existed: decide.ts recordedJobState() reads it from the phase.
export const JOB_STATES = ['Starting', 'Unanswered', 'Running', 'Aborting', 'Aborted', 'Ended'] as const;
export const JobStateSchema = z.enum(JOB_STATES);
export type JobState = z.infer<typeof JobStateSchema>;

/**
 * What a running pull does when a live migration of its VMI is requested (libvirt refuses to
 * migrate a domain while a block job runs): Yield (default) aborts it, keeping what was streamed,
 * and resumes it on the VMI's launcher pod once the migration has ended; WaitForPull lets it run
 * to its end (the migration fails and is retried until then). Neither starts a job during a migration.
 */
export const MIGRATION_POLICIES = ['Yield', 'WaitForPull'] as const;
export const MigrationPolicySchema = z.enum(MIGRATION_POLICIES);
export type MigrationPolicy = z.infer<typeof MigrationPolicySchema>;

export const BaseSchema = z
  .object({
    position: int32().min(1).max(255).optional(),
    path: z.string().min(2).max(STATUS_LIMITS.pathLength).regex(ABSOLUTE_PATH).optional(),
  })
  .refine((b) => (b.position === undefined) !== (b.path === undefined), {
    message: 'base needs exactly one of position or path',
  });
export type Base = z.infer<typeof BaseSchema>;

export const BlockPullSpecSchema = z.object({
  vmiName: z.string().min(1).max(63).regex(DNS1123_LABEL),
  disk: z.string().min(1).max(63).regex(DNS1123_LABEL),
  base: BaseSchema.optional(),
  // Not bounded here: an object stored before the CRD's bounds (or under an older CRD) must still
  // be read, so that its running job can be aborted; decide() refuses the value (InvalidBandwidth).
  bandwidth: z.union([z.number().int(), z.string()]).optional(),
  paused: z.boolean().default(false),
  maxRetries: int32().min(0).max(100).default(3),
  migrationPolicy: MigrationPolicySchema.default('Yield'),
  dryRun: z.boolean().default(false),
});
export type BlockPullSpec = z.infer<typeof BlockPullSpecSchema>;

export const ConditionSchema = z.object({
  type: z.string().max(316).regex(CONDITION_TYPE),
  status: z.enum(['True', 'False', 'Unknown']),
  observedGeneration: int64().min(0).optional(),
  lastTransitionTime: dateTime(),
  reason: z.string().min(1).max(STATUS_LIMITS.reasonLength).regex(CONDITION_REASON),
  message: z.string().max(STATUS_LIMITS.messageLength),
});
export type Condition = z.infer<typeof ConditionSchema>;

/** A qcow2 image's external data file (libvirt <dataStore>): KubeVirt's changed block tracking keeps the raw disk there. */
export const DataFileSchema = z.object({
  path: z.string().max(STATUS_LIMITS.pathLength),
  format: z.string(),
});
export type DataFileStatus = z.infer<typeof DataFileSchema>;

export const ChainLayerSchema = z.object({
  position: int32().min(0),
  path: z.string().max(STATUS_LIMITS.pathLength),
  format: z.string(),
  dataFile: DataFileSchema.optional(),
});
export type ChainLayerStatus = z.infer<typeof ChainLayerSchema>;

export const ProgressSchema = z.object({
  currentBytes: int64().min(0).optional(),
  totalBytes: int64().min(0).optional(),
  percent: z.string().max(STATUS_LIMITS.percentLength).optional(),
  bytesPerSecond: int64().min(0).optional(),
  etaSeconds: int64().min(0).optional(),
  /**
   * When libvirt reported these figures (the look that read them, not the status write): a look
   * that gets no answer keeps the last figures, and this says how old they are.
   */
  observedTime: dateTime().optional(),
});
export type Progress = z.infer<typeof ProgressSchema>;

export const LauncherStatusSchema = z.object({
  pod: z.string().optional(),
  node: z.string().optional(),
  container: z.string().optional(),
  domain: z.string().optional(),
  target: z.string().optional(),
});
export type LauncherStatus = z.infer<typeof LauncherStatusSchema>;

export const BlockPullStatusSchema = z.object({
  phase: PhaseSchema.optional(),
  reason: z.string().max(STATUS_LIMITS.reasonLength).optional(),
  message: z.string().max(STATUS_LIMITS.messageLength).optional(),
  observedGeneration: int64().min(0).optional(),
  conditions: z.array(ConditionSchema).max(STATUS_LIMITS.conditions).optional(),
  progress: ProgressSchema.optional(),
  backingChain: z
    .object({
      before: z.array(ChainLayerSchema).max(STATUS_LIMITS.chainItems).optional(),
      current: z.array(ChainLayerSchema).max(STATUS_LIMITS.chainItems).optional(),
      basePath: z.string().max(STATUS_LIMITS.pathLength).optional(),
      completed: z.array(ChainLayerSchema).max(STATUS_LIMITS.chainItems).optional(),
      readOn: z.object({ pod: z.string(), node: z.string().optional() }).optional(),
    })
    .optional(),
  launcher: LauncherStatusSchema.optional(),
  startTime: dateTime().optional(),
  completionTime: dateTime().optional(),
  attempts: int32().min(0).optional(),
  retries: int32().min(0).optional(),
  job: z.object({ state: JobStateSchema }).optional(),
  plan: z
    .object({
      basePath: z.string().max(STATUS_LIMITS.pathLength).optional(),
      bytesToWrite: int64().min(0).optional(),
      space: z.enum(['Fits', 'Insufficient', 'Unknown']).optional(),
      availableBytes: int64().min(0).optional(),
      etaSeconds: int64().min(0).optional(),
    })
    .optional(),
});
export type BlockPullStatus = z.infer<typeof BlockPullStatusSchema>;

export const ObjectMetaSchema = z.looseObject({
  name: z.string(),
  namespace: z.string(),
  uid: z.string(),
  generation: z.number().int().optional(),
  resourceVersion: z.string().optional(),
  creationTimestamp: z.union([z.string(), z.date()]).optional(),
  deletionTimestamp: z.union([z.string(), z.date()]).optional(),
  finalizers: z.array(z.string()).optional(),
});

export const BlockPullSchema = z.object({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  metadata: ObjectMetaSchema,
  spec: BlockPullSpecSchema,
  status: BlockPullStatusSchema.optional(),
});
export type BlockPull = z.infer<typeof BlockPullSchema>;

/** Parse an object from the API server; throws a ZodError naming the bad field. */
export function parseBlockPull(obj: unknown): BlockPull {
  return BlockPullSchema.parse(obj);
}

export function isReason(value: string | undefined): value is Reason {
  return value !== undefined && (REASONS as readonly string[]).includes(value);
}

export function isTerminal(phase: Phase | undefined): boolean {
  return phase !== undefined && TERMINAL_PHASES.includes(phase);
}
