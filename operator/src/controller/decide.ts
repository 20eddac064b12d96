/**
 * The BlockPull state machine, PURE: observations in; the next status, at most ONE action and
 * a requeue delay out. No I/O, no clock (the caller passes `now`), so every row of the state
 * table is unit-tested without a cluster (decide.test.ts).
 *
 * The truth is the disk: a block pull job running on the disk is adopted, not restarted;
 * no job + chain at its goal = Completed (NothingToDo when it was so at the first look).
 *
 * What the operator did is persisted intent (status.job, like VDSM's job state): a start or
 * abort returns the status recording it, which the reconciler writes (guarded by the
 * resourceVersion) BEFORE acting. So "no job, chain short of the goal" is judged from that
 * record: after our abort (Aborting) it is a pause, never a failure; after a confirmed start
 * (Running) the job ended on its own. A lost write can only delay an action, never mislabel one.
 */
import { objectKey } from '../api/object-key.ts';
import { getCondition, setCondition, timestamp } from '../api/conditions.ts';
import { parseQuantity, formatBytes } from '../api/quantity.ts';
import {
  CHAIN_CONDITION,
  FINALIZER,
  RECONCILING_PHASES,
  STATUS_LIMITS,
  isReason,
  isTerminal,
  type ConditionType,
  type BlockPull,
  type BlockPullStatus,
  type ChainLayerStatus,
  type JobState,
  type Phase,
  type Progress,
  type Reason,
} from '../api/types.ts';
import { goalOrInvalid } from '../hypervisor/chain.ts';
import { isPullComplete, type PullGoal } from '../hypervisor/completion.ts';
import { isHypervisorError, type HypervisorErrorCode } from '../hypervisor/errors.ts';
import type { BaseRef, BlockJobInfo, DiskInfo } from '../hypervisor/types.ts';
import { errorMessage } from '../log.ts';
import type { ChainOperation, ChainOperationKind } from '../kubevirt/chain-operations.ts';
import type { LauncherLookup, LauncherPod, MigrationRequest } from '../kubevirt/launcher.ts';
import { boundStatus } from './status-limits.ts';

export type HypervisorObservation =
  | { readonly kind: 'unreachable'; readonly message: string }
  | { readonly kind: 'domainNotFound'; readonly message: string }
  | { readonly kind: 'diskNotFound'; readonly message: string }
  | {
      readonly kind: 'ok';
      readonly disk: DiskInfo;
      readonly job: BlockJobInfo | null;
      /** When libvirt answered this look (its job figures are of that moment); absent: the observation's now. */
      readonly observedAt?: Date;
    };

/**
 * The pre-flight space check before a start (reconcile.ts measures it through the driver, see
 * VirshDriver.getSpace): an upper bound of the bytes the pull writes into the active image, the
 * free space of its filesystem, and the launcher pod's ephemeral-storage limit if it has one.
 */
export type SpaceObservation =
  | {
      readonly kind: 'measured';
      readonly topPath: string;
      readonly pullBytes: number;
      readonly availableBytes: number;
      /** Size of the filesystem (for the percentage margin). */
      readonly totalBytes: number;
      /** The launcher pod's ephemeral-storage limit and the bytes used under the active image's mount point. */
      readonly ephemeral?: {
        readonly pod: string;
        readonly limitBytes: number;
        readonly usedBytes: number;
        readonly mountPoint: string;
      };
    }
  /** Not measurable (block device, a driver without the check): the start is not held back. */
  | { readonly kind: 'unknown'; readonly reason: string };

export interface SlotUsage {
  /** Pulls running cluster-wide, this BlockPull excluded (starts in flight in this process included). */
  readonly running: number;
  /** Pulls running on the launcher's node, this BlockPull excluded. */
  readonly runningOnNode: number;
  /** Pulls running in this BlockPull's namespace, this BlockPull excluded. */
  readonly runningInNamespace: number;
  /**
   * Namespaces that want a slot: those with a BlockPull waiting for one (WaitingForSlot), and
   * this BlockPull's own. At least 1.
   */
  readonly namespacesWanting: number;
}

/**
 * The operator's settings that decide() applies: given once, when the Decider is made (like
 * cert-manager's policy chain gets its clock), while the Observation carries only facts.
 */
export interface DecideSettings {
  /** Requeue while a job runs. */
  readonly pollIntervalMs: number;
  /** Requeue delay while waiting (VMI, launcher, disk, slot), and the base of every backoff. */
  readonly waitRequeueMs: number;
  /** Bytes that must stay free after the data to pull (BLOCKPULL_SPACE_MARGIN_MIB). */
  readonly spaceMarginBytes: number;
  /** Percent of the filesystem that must stay free after the data to pull, if more (BLOCKPULL_SPACE_MARGIN_PERCENT). */
  readonly spaceMarginPercent: number;
  readonly maxConcurrentPulls: number;
  readonly maxPullsPerNode: number;
}

/**
 * A namespace's fair share of the cluster-wide slots while several namespaces want one:
 * ceil(limit / namespaces wanting). A namespace that already runs its share waits, so one
 * tenant cannot hold every slot while another waits (running pulls are never preempted).
 */
export function fairShare(maxConcurrentPulls: number, namespacesWanting: number): number {
  return Math.ceil(maxConcurrentPulls / Math.max(1, namespacesWanting));
}

export interface ProgressSample {
  readonly cur: number;
  readonly atMs: number;
}

export interface Observation {
  readonly now: Date;
  readonly bp: BlockPull;
  /** Undefined when not looked at (terminal phases, or deletion that needs no look). */
  readonly launcher?: LauncherLookup;
  /** Undefined when the launcher was not found. */
  readonly hypervisor?: HypervisorObservation;
  /** Key (ns/name) of the BlockPull holding the disk (see diskHolder), or null. */
  readonly diskHolder: string | null;
  readonly slots: SlotUsage;
  /** The previous job sample of this BlockPull, for the rate. */
  readonly previousSample?: ProgressSample;
  /**
   * This operator process asked libvirt to start the pull job now on the disk. A pull found running
   * that this process did not start (a leader change, a restart, a job started by hand) is Adopted.
   */
  readonly jobStartedHere?: boolean;
  /**
   * Pre-flight before a start (the gatherer measures it when a start may follow, see
   * factsWanted). Undefined: not measured, and then decide() starts nothing.
   */
  readonly space?: SpaceObservation;
  /** Requeue delay after an InsufficientSpace check (the gatherer's backoff). Default waitRequeueMs. */
  readonly spaceRecheckMs?: number;
  /** Why our last job failed, as the hypervisor said (e.g. "No space left on device"), if known. */
  readonly lastJobError?: string;
  /**
   * KubeVirt's operations on the VM's disks under way (an external snapshot window, a
   * VirtualMachineBackup; kubevirt/chain-operations.ts), looked at with the launcher. KubeVirt
   * always wins: no pull starts, and a running one yields at once.
   */
  readonly chainOperations?: readonly ChainOperation[];
  /**
   * This look got no answer within the observe budget (hypervisor is then 'unreachable'): how
   * many looks in a row got none, this one included, and when the first of them was made (ms).
   * Kept by the gatherer in this process's per-BlockPull memory; undefined when the look was
   * answered (an error is an answer).
   */
  readonly unansweredLooks?: { readonly count: number; readonly sinceMs: number };
}

/**
 * A running pull is said HypervisorUnreachable only after UNREACHABLE_AFTER_LOOKS looks in a row
 * got no answer within the observe budget, spanning at least UNREACHABLE_AFTER_MS. On a loaded
 * node one look outlasts the budget now and then while the job runs on in QEMU: saying so at
 * each such look flipped the reason back and forth (a status write and an Event per flip, measured
 * as 57 transitions per pull with 10 pulls on 2 cores). Both bounds: three misses can come within
 * a second (the BlockPull is woken by events), and one long miss is still a single look.
 */
export const UNREACHABLE_AFTER_LOOKS = 3;
export const UNREACHABLE_AFTER_MS = 10_000;

/** The unanswered looks are enough to say libvirt is unreachable (see UNREACHABLE_AFTER_LOOKS). */
export function unreachableVerdict(looks: Observation['unansweredLooks'], nowMs: number): boolean {
  return (
    looks === undefined || (looks.count >= UNREACHABLE_AFTER_LOOKS && nowMs - looks.sinceMs >= UNREACHABLE_AFTER_MS)
  );
}

/** Longest wait between two starts after failures, and between two space checks. */
export const MAX_BACKOFF_MS = 300_000;

/** Exponential backoff: base, 2 x base, 4 x base, ... (n = 1, 2, 3, ...), at most MAX_BACKOFF_MS. */
export function backoffMs(n: number, baseMs: number): number {
  if (n <= 1) return Math.min(baseMs, MAX_BACKOFF_MS);
  return Math.min(baseMs * 2 ** Math.min(n - 1, 30), MAX_BACKOFF_MS);
}

function bytesText(n: number): string {
  return `${formatBytes(n)} (${n} bytes)`;
}

/**
 * Why the pull cannot start for lack of space, or undefined when it fits (or cannot be measured).
 * On the filesystem, the larger of marginBytes and marginPercent of its size must stay free (the
 * kubelet evicts pods when the node's filesystem has less than 10 % free by default); under an
 * ephemeral-storage limit, marginBytes.
 */
export function spaceShortage(
  space: SpaceObservation | undefined,
  marginBytes: number,
  marginPercent = 0,
): string | undefined {
  if (space?.kind !== 'measured') return undefined;
  const fsMargin = Math.max(marginBytes, Math.ceil((space.totalBytes * marginPercent) / 100));
  const pulled = `the pull may write up to ${bytesText(space.pullBytes)} into ${space.topPath} (the data allocated in the layers being pulled)`;
  if (space.pullBytes + fsMargin > space.availableBytes) {
    return `${pulled} and ${bytesText(fsMargin)} must stay free (the larger of ${formatBytes(marginBytes)} and ${marginPercent}% of its filesystem's ${formatBytes(space.totalBytes)}), but its filesystem has ${bytesText(space.availableBytes)} free`;
  }
  const eph = space.ephemeral;
  if (eph !== undefined && space.pullBytes + marginBytes > eph.limitBytes - eph.usedBytes) {
    return `${pulled} and ${bytesText(marginBytes)} must stay free, but launcher pod ${eph.pod} has an ephemeral-storage limit of ${bytesText(eph.limitBytes)} of which ${bytesText(eph.usedBytes)} are used under ${eph.mountPoint}`;
  }
  return undefined;
}

export type Action =
  | { readonly type: 'none' }
  | { readonly type: 'addFinalizer' }
  | { readonly type: 'removeFinalizer' }
  | {
      readonly type: 'startPull';
      readonly domain: string;
      readonly target: string;
      readonly base?: BaseRef;
      readonly bandwidth: number;
    }
  | { readonly type: 'setBandwidth'; readonly domain: string; readonly target: string; readonly bandwidth: number }
  | { readonly type: 'abort'; readonly domain: string; readonly target: string };

export interface Decision {
  /**
   * The status to write (the reconciler writes it only if it differs, with progress throttled).
   * For startPull and abort it records the intent and is written BEFORE the action.
   */
  readonly status: BlockPullStatus;
  readonly action: Action;
  /** The status to write once the action succeeded (startPull: the start confirmed). */
  readonly afterAction?: BlockPullStatus;
  /** null = no requeue (terminal, or wait for a watch event). */
  readonly requeueAfterMs: number | null;
  /** The job sample taken (store it for the next rate). */
  readonly sample?: ProgressSample;
  /**
   * A start would follow, but the space was not measured: nothing is done (see factsWanted;
   * only a look whose slot count changed after the gatherer asked can end here).
   */
  readonly wants?: 'space';
}

const JOB_TYPE_PULL = 'Block Pull';

function createdMs(bp: BlockPull): number {
  const t = bp.metadata.creationTimestamp;
  if (t === undefined) return 0;
  return t instanceof Date ? t.getTime() : Date.parse(t);
}

/**
 * Which BlockPull holds a disk (one job per disk): among the non-terminal BlockPulls naming
 * the same namespace/VMI/disk, the one Running or Paused, else the oldest (then by name).
 * Deterministic, so every reconcile (and every operator replica) agrees.
 */
export function diskHolder(all: readonly BlockPull[], self: BlockPull): string | null {
  const same = all.filter(
    (b) =>
      b.metadata.namespace === self.metadata.namespace &&
      b.spec.vmiName === self.spec.vmiName &&
      b.spec.disk === self.spec.disk &&
      // A plan (spec.dryRun) never holds a disk: it starts no job.
      !b.spec.dryRun &&
      !isTerminal(b.status?.phase),
  );
  if (same.length === 0) return null;
  const active = same.filter((b) => b.status?.phase === 'Running' || b.status?.phase === 'Paused');
  const pool = active.length > 0 ? active : same;
  const sorted = [...pool].sort(
    (a, b) => createdMs(a) - createdMs(b) || a.metadata.name.localeCompare(b.metadata.name),
  );
  return objectKey(sorted[0]!);
}

/**
 * The recorded state of this BlockPull's job. A status written before status.job existed says
 * Running while a job of ours ran; and Failed/InvalidBandwidth after a start is what such an
 * operator wrote over a job it left running (deletion then aborts it).
 */
export function recordedJobState(status: BlockPullStatus | undefined): JobState | undefined {
  if (status?.job !== undefined) return status.job.state;
  if (status?.phase === 'Running') return 'Running';
  if (status?.phase === 'Failed' && status.reason === 'InvalidBandwidth' && (status.attempts ?? 0) > 0)
    return 'Running';
  return undefined;
}

/** A job this BlockPull started (or adopted) may still run on the disk. */
export function mayRunOurJob(js: JobState | undefined): boolean {
  return js === 'Starting' || js === 'Unanswered' || js === 'Running' || js === 'Aborting';
}

function withJob(status: BlockPullStatus, state: JobState | undefined): BlockPullStatus {
  const { job: _dropped, ...rest } = status;
  return state === undefined ? rest : { ...rest, job: { state } };
}

function layers(chain: DiskInfo['chain']): ChainLayerStatus[] {
  return chain.map((l) => ({
    position: l.position,
    path: l.path,
    format: l.format,
    ...(l.dataFile !== undefined ? { dataFile: { path: l.dataFile.path, format: l.dataFile.format } } : {}),
  }));
}

function percentOf(cur: number, end: number): string {
  if (end <= 1) return '0%';
  return `${Math.min(100, Math.floor((cur * 100) / end))}%`;
}

interface PhaseInput {
  readonly phase: Phase;
  readonly reason: Reason;
  readonly message: string;
}

/**
 * Apply phase/reason/message and the conditions consistently: Progressing, Complete, Failed (the
 * Job convention) and Ready, Reconciling, Stalled (the kstatus convention: kstatus reads Reconciling
 * True as InProgress, Stalled True as Failed, then Ready True as Current and False as InProgress).
 */
function withPhase(status: BlockPullStatus, p: PhaseInput, generation: number | undefined, now: Date): BlockPullStatus {
  let conditions = status.conditions;
  const set = (type: ConditionType, is: boolean): void => {
    conditions = setCondition(
      conditions,
      { type, status: is ? 'True' : 'False', reason: p.reason, message: p.message },
      generation,
      now,
    );
  };
  set('Progressing', p.phase === 'Running');
  set('Complete', p.phase === 'Completed');
  set('Failed', p.phase === 'Failed');
  set('Ready', p.phase === 'Completed' || p.phase === 'Planned');
  set('Reconciling', RECONCILING_PHASES.includes(p.phase));
  set('Stalled', p.phase === 'Failed');
  const terminal = p.phase === 'Completed' || p.phase === 'Failed';
  return {
    ...status,
    phase: p.phase,
    reason: p.reason,
    message: p.message,
    conditions,
    ...(terminal && status.completionTime === undefined ? { completionTime: timestamp(now) } : {}),
  };
}

function waitingStatus(
  obs: Input,
  base: BlockPullStatus,
  reason: Reason,
  message: string,
  phase: Phase = 'Pending',
): Decision {
  return {
    status: withPhase(base, { phase, reason, message }, obs.bp.metadata.generation, obs.now),
    action: { type: 'none' },
    requeueAfterMs: obs.waitRequeueMs,
  };
}

function failed(obs: Input, base: BlockPullStatus, reason: Reason, message: string): Decision {
  return {
    status: withPhase(base, { phase: 'Failed', reason, message }, obs.bp.metadata.generation, obs.now),
    action: { type: 'none' },
    requeueAfterMs: null,
  };
}

/** A goal, or why the base designates no backing image (the pull fails InvalidBase). */
type GoalOrInvalid = PullGoal | { readonly invalidBase: string };

/** The goal of this pull, from the chain recorded at the first look. */
export function goalOf(bp: BlockPull, target: string, before: readonly ChainLayerStatus[]): GoalOrInvalid {
  const disk: DiskInfo = {
    target,
    chain: before.map((l) => ({ position: l.position, path: l.path, format: l.format })),
  };
  return goalOrInvalid(disk, toBaseRef(bp.spec.base));
}

export function toBaseRef(base: BlockPull['spec']['base']): BaseRef | undefined {
  if (base === undefined) return undefined;
  if (base.position !== undefined) return { position: base.position };
  if (base.path !== undefined) return { path: base.path };
  return undefined;
}

/** When libvirt answered the look that decide() judges (progress.observedTime, the rate's clock). */
function observedAt(obs: Observation): Date {
  return (obs.hypervisor?.kind === 'ok' ? obs.hypervisor.observedAt : undefined) ?? obs.now;
}

function progressFrom(
  job: BlockJobInfo,
  prev: ProgressSample | undefined,
  observed: Date,
): { progress: Progress; sample: ProgressSample } {
  const nowMs = observed.getTime();
  // A job may report cur > end (or odd values): keep 0 <= cur <= total, so the ETA is never negative.
  const total = job.end <= 1 ? 0 : Math.floor(job.end);
  const cur = total === 0 ? 0 : Math.min(total, Math.max(0, Math.floor(job.cur)));
  let rate = 0;
  if (prev !== undefined && nowMs > prev.atMs && cur >= prev.cur)
    rate = Math.round(((cur - prev.cur) * 1000) / (nowMs - prev.atMs));
  const progress: Progress = {
    currentBytes: cur,
    totalBytes: total,
    percent: percentOf(cur, total),
    bytesPerSecond: rate,
    ...(rate > 0 ? { etaSeconds: Math.ceil((total - cur) / rate) } : {}),
    observedTime: timestamp(observed),
  };
  return { progress, sample: { cur, atMs: nowMs } };
}

function bandwidthMessage(bytesPerSecond: number): string {
  return bytesPerSecond > 0 ? ` at most ${formatBytes(bytesPerSecond)}/s` : '';
}

/**
 * The goal on a later look. `before` may have been cut at the CRD's maxItems (status-limits.ts);
 * then the base recorded at the first look and the layers under it are taken from the chain as
 * it is now (a pull never changes them), so a cut chain does not make the goal unreachable.
 */
function goalFromStatus(
  bp: BlockPull,
  disk: DiskInfo,
  before: readonly ChainLayerStatus[],
  basePath: string | undefined,
): GoalOrInvalid {
  const top = before[0];
  const active = disk.chain[0];
  if (top !== undefined && active !== undefined && active.path !== top.path)
    return goalOnOtherImage(bp, disk, before, basePath);
  if (before.length < STATUS_LIMITS.chainItems || basePath === undefined || top === undefined)
    return goalOf(bp, disk.target, before);
  const i = disk.chain.findIndex((l) => l.path === basePath);
  if (i < 1) return goalOf(bp, disk.target, before);
  return { target: disk.target, expectedPaths: [top.path, ...disk.chain.slice(i).map((l) => l.path)], basePath };
}

/**
 * The goal when the active image is another file than at the first look: after a live migration
 * (KubeVirt block-migrates a containerDisk/ephemeral overlay into a new overlay in the target pod,
 * on the same backing images, possibly at other paths) or on a new launcher pod. The goal keeps
 * its meaning, the same disk content: the active image (whatever its path), then the base
 * resolved at the first look and everything below it.
 * - full pull: the active image alone;
 * - with a base (spec.base.position or .path, resolved ONCE at the first look to
 *   status.backingChain.basePath): the image with that path if the chain has it (at position
 *   >= 1); else the image with as many images below it as the base had at the first look,
 *   provided the chain has exactly as many images as then and the base and every image below it
 *   have the formats recorded then. Otherwise the base cannot be identified: InvalidBase.
 * A position is never re-resolved from the top of another chain.
 */
function goalOnOtherImage(
  bp: BlockPull,
  disk: DiskInfo,
  before: readonly ChainLayerStatus[],
  basePath: string | undefined,
): GoalOrInvalid {
  const active = disk.chain[0]!;
  if (bp.spec.base === undefined) return { target: disk.target, expectedPaths: [active.path] };
  const first = goalOf(bp, disk.target, before);
  const recorded = basePath ?? ('invalidBase' in first ? undefined : first.basePath);
  const byPath = disk.chain.findIndex((l) => l.path === recorded);
  if (byPath >= 1)
    return {
      target: disk.target,
      expectedPaths: [active.path, ...disk.chain.slice(byPath).map((l) => l.path)],
      basePath: recorded!,
    };
  const at = before.findIndex((l) => l.path === recorded);
  const chainText = disk.chain.map((l) => l.path).join(' <- ');
  if (at < 1 || before.length >= STATUS_LIMITS.chainItems || disk.chain.length !== before.length) {
    return {
      invalidBase: `the active image of ${disk.target} is now ${active.path} (was ${before[0]?.path ?? '?'}) and the base ${recorded ?? '?'} cannot be identified in its chain (${chainText}): not there by path, and the chain has ${disk.chain.length} images where it had ${before.length}`,
    };
  }
  const below = disk.chain.slice(at);
  const formats = below.map((l) => l.format).join(',');
  const recordedFormats = before
    .slice(at)
    .map((l) => l.format)
    .join(',');
  if (formats !== recordedFormats) {
    return {
      invalidBase: `the active image of ${disk.target} is now ${active.path} and the image at the base's depth (${below[0]?.path ?? '?'}) and below have formats ${formats}, where the base ${recorded ?? '?'} and below had ${recordedFormats}`,
    };
  }
  return { target: disk.target, expectedPaths: [active.path, ...below.map((l) => l.path)], basePath: below[0]!.path };
}

/** The observation and the settings, as the steps read them. */
type Input = Observation & DecideSettings;

/** The facts a look must add before decide() can judge it (the gatherer fetches them). */
export interface FactsWanted {
  /** A start may follow: measure the space for the pre-flight, with the base the start would keep. */
  readonly space?: { readonly basePath?: string };
  /** Our job ended short of its goal and QEMU's reason is not known yet: wait for it briefly. */
  readonly jobError: boolean;
}

/**
 * The pure decision, with the operator's settings given once. Its status is always one the CRD
 * accepts (messages, chain lists and numbers cut to the CRD's bounds by boundStatus).
 */
export class Decider {
  readonly settings: DecideSettings;

  constructor(settings: DecideSettings) {
    this.settings = settings;
  }

  decide(obs: Observation): Decision {
    const d = decideUnbounded({ ...obs, ...this.settings });
    return {
      ...d,
      status: boundStatus(d.status),
      ...(d.afterAction !== undefined ? { afterAction: boundStatus(d.afterAction) } : {}),
    };
  }

  /**
   * What the look at `obs` lacks for decide(): the same chain of steps, run on the facts gathered
   * so far (pure; its decision is not acted on).
   */
  factsWanted(obs: Observation): FactsWanted {
    const d = decideUnbounded({ ...obs, ...this.settings });
    const ended = d.status.reason === 'JobFailed' || d.status.reason === 'RetryLimitExceeded';
    const basePath = d.status.backingChain?.basePath;
    return {
      ...(d.wants === 'space' ? { space: basePath !== undefined ? { basePath } : {} } : {}),
      jobError: ended && obs.bp.status?.phase === 'Running' && obs.lastJobError === undefined,
    };
  }

  /**
   * After a failed action: the status to write. Typed hypervisor errors become reasons; other
   * errors leave the status and let the work queue retry with backoff.
   */
  actionError(obs: Observation, decided: Decision, err: unknown): Decision | undefined {
    const d = decideActionErrorUnbounded({ ...obs, ...this.settings }, decided, err);
    return d === undefined ? undefined : { ...d, status: boundStatus(d.status) };
  }
}

// --- the decision as a chain of named steps ------------------------------------------------------
// Like cert-manager's policy chains: each step looks at what is known and returns a decision or
// nothing; the first decision wins. The steps come in four stages, each knowing more than the one
// before: the object (facts from the BlockPull alone), the launcher (found), the disk (looked at,
// goal resolved), and the idle disk (no job of ours on it). Order within a stage is the priority.

/** One step of a chain: a decision, or undefined to let the next step decide. */
type Step<F> = (f: F) => Decision | undefined;

function firstDecision<F>(f: F, steps: readonly Step<F>[]): Decision | undefined {
  for (const step of steps) {
    const d = step(f);
    if (d !== undefined) return d;
  }
  return undefined;
}

/** What the BlockPull and the observation say before the launcher is known. */
interface ObjectFacts {
  readonly obs: Input;
  readonly bp: BlockPull;
  readonly now: Date;
  readonly generation: number | undefined;
  /** The stored status, with observedGeneration set to this generation. */
  readonly prior: BlockPullStatus;
  readonly hasFinalizer: boolean;
  readonly deleting: boolean;
  /** The pull job on the disk when it is ours (a pull, and no other BlockPull holds the disk). */
  readonly ourJob: BlockJobInfo | null;
  readonly holdsDisk: boolean;
  readonly recorded: JobState | undefined;
  /** spec.bandwidth in bytes/s (0: unlimited), or why it cannot be applied. */
  readonly bandwidth: number;
  readonly bandwidthError: string | undefined;
}

function objectFacts(obs: Input): ObjectFacts {
  const { bp, now } = obs;
  const generation = bp.metadata.generation;
  const hypervisor = obs.hypervisor;
  const job = hypervisor?.kind === 'ok' ? hypervisor.job : null;
  // A pull on the disk is ours when no other BlockPull holds the disk.
  const holdsDisk = obs.diskHolder === null || obs.diskHolder === objectKey(bp);
  const prior: BlockPullStatus = {
    ...(bp.status ?? {}),
    ...(generation !== undefined ? { observedGeneration: generation } : {}),
  };
  let bandwidth = 0;
  let bandwidthError: string | undefined;
  if (bp.spec.bandwidth !== undefined) {
    try {
      bandwidth = parseQuantity(bp.spec.bandwidth);
    } catch (err) {
      bandwidthError = (err as Error).message;
    }
  }
  return {
    obs,
    bp,
    now,
    generation,
    prior,
    hasFinalizer: bp.metadata.finalizers?.includes(FINALIZER) ?? false,
    deleting: bp.metadata.deletionTimestamp !== undefined && bp.metadata.deletionTimestamp !== null,
    // A plan (spec.dryRun) has no job: a pull on the disk is someone else's.
    ourJob: job !== null && job.type === JOB_TYPE_PULL && holdsDisk && !bp.spec.dryRun ? job : null,
    holdsDisk,
    recorded: recordedJobState(prior),
    bandwidth,
    bandwidthError,
  };
}

/**
 * Deleting: abort our running job (whatever the phase), then let the object go. The launcher may
 * be a pod being deleted (a namespace deletion deletes it beside the BlockPull): while it answers,
 * our job is aborted through it before the finalizer goes.
 */
const deletion: Step<ObjectFacts> = (f) => {
  if (!f.deleting) return undefined;
  const { obs, prior } = f;
  if (!f.hasFinalizer) return { status: prior, action: { type: 'none' }, requeueAfterMs: null };
  const hypervisor = obs.hypervisor;
  const launcher = obs.launcher?.kind === 'found' ? obs.launcher.launcher : undefined;
  const target = hypervisor?.kind === 'ok' ? hypervisor.disk.target : prior.launcher?.target;
  if (
    f.ourJob !== null &&
    launcher !== undefined &&
    target !== undefined &&
    (mayRunOurJob(f.recorded) || !isTerminal(prior.phase))
  ) {
    return {
      status: withJob(prior, 'Aborting'),
      action: { type: 'abort', domain: launcher.domain, target },
      requeueAfterMs: obs.pollIntervalMs,
    };
  }
  // A launcher pod being deleted that no longer answers is going with its containers: the job
  // lived in its QEMU and ends with it, so nothing is left to abort.
  const terminating = obs.launcher?.kind === 'found' && obs.launcher.terminating === true;
  if (hypervisor?.kind === 'unreachable' && !terminating && (prior.phase === 'Running' || mayRunOurJob(f.recorded))) {
    // Cannot confirm the job is gone; keep the finalizer and try again.
    return { status: prior, action: { type: 'none' }, requeueAfterMs: obs.waitRequeueMs };
  }
  return { status: prior, action: { type: 'removeFinalizer' }, requeueAfterMs: null };
};

/**
 * A Completed BlockPull whose VMI now runs on another launcher pod than the one the pull completed
 * on (a live migration, a restart): it stays Completed (the pull it describes did finish; a new
 * pull is a new BlockPull), but its status stops saying that the chain it left is the disk's. The
 * chain the pull left moves to backingChain.completed; current becomes the chain read on the new
 * pod (the gatherer reads it once per pod, backingChain.readOn), or goes while it cannot be read;
 * ChainAtGoal says whether that chain is still at the pull's goal. KubeVirt's block migration
 * (VIR_MIGRATE_NON_SHARED_INC) copies only the top image, onto a new overlay on the container
 * disk: the data is whole, the chain has a backing file again (docs/live-migrations.md).
 */
const completedOnOtherPod: Step<ObjectFacts> = (f) => {
  const { prior, obs, bp } = f;
  if (prior.phase !== 'Completed' || f.deleting || obs.hypervisor === undefined) return undefined;
  const lookup = obs.launcher;
  if (lookup?.kind !== 'found' || lookup.terminating === true || lookup.migration !== undefined) return undefined;
  const was = prior.launcher;
  const pod = lookup.launcher;
  if (was?.pod === undefined || was.pod === pod.pod || !isReason(prior.reason)) return undefined;
  const h = obs.hypervisor;
  const chain = prior.backingChain ?? {};
  const { current: _previous, readOn: _readOn, ...kept } = chain;
  const completed = chain.completed ?? chain.current;
  const target = was.target ?? (h.kind === 'ok' ? h.disk.target : '?');
  const moved = `the pull completed on pod ${was.pod} (node ${was.node ?? '?'}); the VMI now runs on pod ${pod.pod} (node ${pod.node}: a live migration or a restart)`;
  let backingChain: NonNullable<BlockPullStatus['backingChain']>;
  let status: 'True' | 'False' | 'Unknown';
  let message: string;
  if (h.kind === 'ok') {
    const chainText = h.disk.chain.map((l) => l.path).join(' <- ');
    const goal = goalFromStatus(bp, h.disk, chain.before ?? layers(h.disk.chain), chain.basePath);
    const atGoal = !('invalidBase' in goal) && isPullComplete(null, h.disk, goal);
    backingChain = {
      ...kept,
      ...(completed !== undefined ? { completed } : {}),
      current: layers(h.disk.chain),
      readOn: { pod: pod.pod, node: pod.node },
    };
    status = atGoal ? 'True' : 'False';
    message = atGoal
      ? `${moved}, where the chain of ${h.disk.target} is ${chainText}: still at the pull's goal`
      : `${moved}, where the chain of ${h.disk.target} is ${chainText}: not at the pull's goal. After a live migration the data is whole (KubeVirt's block migration copies only the top image, onto a new overlay on the container disk), but the disk has a backing file again. To flatten it, apply a new BlockPull`;
  } else {
    backingChain = { ...kept, ...(completed !== undefined ? { completed } : {}) };
    status = 'Unknown';
    message = `${moved}; the chain of ${target} there could not be read (${h.message}); looked at again in ${Math.ceil(obs.waitRequeueMs / 1000)} s`;
  }
  const restated = withPhase(
    { ...prior, backingChain },
    { phase: 'Completed', reason: prior.reason, message },
    f.generation,
    f.now,
  );
  const conditions = setCondition(
    restated.conditions,
    { type: CHAIN_CONDITION, status, reason: 'LauncherChanged', message },
    f.generation,
    f.now,
  );
  return {
    status: { ...restated, conditions },
    action: { type: 'none' },
    requeueAfterMs: status === 'Unknown' ? obs.waitRequeueMs : null,
  };
};

/**
 * Terminal phases are sticky: re-applying the manifest starts nothing. The conditions are
 * re-stated for this generation (a spec edit is observed; a status written before
 * Ready/Reconciling/Stalled existed gets them), keeping lastTransitionTime.
 */
const terminalIsSticky: Step<ObjectFacts> = ({ prior, generation, now }) => {
  if (!isTerminal(prior.phase)) return undefined;
  const restated =
    prior.phase !== undefined && isReason(prior.reason)
      ? withPhase(prior, { phase: prior.phase, reason: prior.reason, message: prior.message ?? '' }, generation, now)
      : prior;
  // ChainAtGoal (completedOnOtherPod) is re-stated for this generation too, as it was.
  const chain = getCondition(prior.conditions, CHAIN_CONDITION);
  const status =
    chain !== undefined && chain.reason === 'LauncherChanged'
      ? {
          ...restated,
          conditions: setCondition(
            restated.conditions,
            { type: CHAIN_CONDITION, status: chain.status, reason: chain.reason, message: chain.message },
            generation,
            now,
          ),
        }
      : restated;
  return { status, action: { type: 'none' }, requeueAfterMs: null };
};

/**
 * Our finalizer, added where a job of ours may come to run: once the VMI's launcher is found (a
 * pull may start next), or at once when the record says a job of ours may run (someone removed
 * the finalizer). A BlockPull waiting for its VMI or launcher has no job to abort when deleted, so
 * it waits without one: for a fleet of waiting BlockPulls that is one write and one pass through
 * the queue less each. A new BlockPull is Pending/Created meanwhile.
 */
function addFinalizer({ prior, generation, now }: ObjectFacts): Decision {
  const status =
    prior.phase === undefined
      ? withPhase(
          prior,
          { phase: 'Pending', reason: 'Created', message: 'Looking at the VMI and its disk' },
          generation,
          now,
        )
      : prior;
  return { status, action: { type: 'addFinalizer' }, requeueAfterMs: 0 };
}

/** The record says a job of ours may run, but our finalizer is gone: put it back before anything else. */
const finalizerForOurJob: Step<ObjectFacts> = (f) =>
  !f.hasFinalizer && (mayRunOurJob(f.recorded) || f.prior.phase === 'Running') ? addFinalizer(f) : undefined;

/** A bandwidth the operator cannot apply: Failed, but never while a job of ours may run (it is aborted first, below). */
const invalidBandwidth: Step<ObjectFacts> = (f) =>
  f.bandwidthError !== undefined && !mayRunOurJob(f.recorded)
    ? failed(f.obs, f.prior, 'InvalidBandwidth', f.bandwidthError)
    : undefined;

/** The reason to wait while the VMI's launcher is not found, by what the lookup said. */
const LAUNCHER_WAIT_REASON: Readonly<Record<Exclude<LauncherLookup['kind'], 'found'>, Reason>> = {
  vmiNotFound: 'VMINotFound',
  vmiNotRunning: 'VMINotRunning',
  migrationInProgress: 'MigrationInProgress',
  launcherNotFound: 'LauncherNotFound',
};

const OBJECT_STEPS: readonly Step<ObjectFacts>[] = [
  deletion,
  completedOnOtherPod,
  terminalIsSticky,
  finalizerForOurJob,
  invalidBandwidth,
];

/** Wait while the VMI or its launcher pod is not there. */
function launcherMissing(
  { obs, prior, bp }: ObjectFacts,
  lookup: Exclude<LauncherLookup, { kind: 'found' }> | undefined,
): Decision {
  if (lookup === undefined) return waitingStatus(obs, prior, 'VMINotFound', `VMI ${bp.spec.vmiName} was not looked at`);
  return waitingStatus(obs, prior, LAUNCHER_WAIT_REASON[lookup.kind], lookup.message);
}

/** ... and the VMI's launcher pod, found. */
interface LauncherFacts extends ObjectFacts {
  readonly launcherPod: LauncherPod;
  /**
   * A migration of the VMI is requested: with migrationPolicy Yield (the default) our running
   * job is aborted (a pause: streamed data is kept) and none is started until it is over; with
   * WaitForPull a running job goes on (the migration fails and is retried until the pull ends).
   */
  readonly migration: MigrationRequest | undefined;
  readonly yieldToMigration: boolean;
  /**
   * The job record was made on another launcher pod (a migration, a new pod): a job of ours ran
   * in that pod's QEMU and ended with it, which is no failure of the pull.
   */
  readonly movedPod: boolean;
  /** The prior status with status.launcher set to this pod. */
  readonly withLauncher: BlockPullStatus;
  /** KubeVirt's operation on the VM's disks under way (the first), to which a pull yields. */
  readonly operation: ChainOperation | undefined;
}

function launcherFacts(
  f: ObjectFacts,
  launcherPod: LauncherPod,
  migration: MigrationRequest | undefined,
): LauncherFacts {
  const { prior, obs } = f;
  const target = obs.hypervisor?.kind === 'ok' ? obs.hypervisor.disk.target : prior.launcher?.target;
  return {
    ...f,
    launcherPod,
    migration,
    yieldToMigration: migration !== undefined && f.bp.spec.migrationPolicy !== 'WaitForPull',
    movedPod: prior.launcher?.pod !== undefined && prior.launcher.pod !== launcherPod.pod,
    operation: obs.chainOperations?.[0],
    withLauncher: {
      ...prior,
      launcher: {
        pod: launcherPod.pod,
        node: launcherPod.node,
        container: launcherPod.container,
        domain: launcherPod.domain,
        ...(target !== undefined ? { target } : {}),
      },
    },
  };
}

/**
 * Wait for a requested migration. No job of ours runs: none is started while a migration is
 * requested (libvirt would refuse the migration while it runs), whatever the migrationPolicy.
 */
function migrationWait(f: LauncherFacts, base: BlockPullStatus, m: MigrationRequest): Decision {
  const { prior } = f;
  const yielded = prior.reason === 'MigrationInProgress' && (f.recorded === 'Aborting' || f.recorded === 'Aborted');
  return waitingStatus(
    f.obs,
    base,
    'MigrationInProgress',
    yielded
      ? `yielded to ${m.name}: the pull is paused at ${prior.progress?.percent ?? '?'} (streamed data is kept) and resumes on the VMI's launcher pod once the migration has ended`
      : `${m.message}; the pull starts once the migration has ended`,
  );
}

/** The reason a pull waits for (or yields to) a KubeVirt operation, by its kind. */
const OPERATION_REASON: Readonly<Record<ChainOperationKind, Reason>> = {
  snapshot: 'SnapshotInProgress',
  backup: 'BackupInProgress',
  volumeMigration: 'VolumesChangeInProgress',
};

/** How a resumed pull's message names the operation it yielded to, by the reason it waited with. */
const RESUMED_AFTER: Readonly<Partial<Record<Reason, string>>> = {
  SnapshotInProgress: "KubeVirt's snapshot",
  BackupInProgress: "KubeVirt's backup",
  VolumesChangeInProgress: "KubeVirt's volume migration",
};

/**
 * KubeVirt operates on the VM's disks (an external snapshot window, a backup) and no job of ours
 * runs on the disk: wait, and start nothing (KubeVirt's own block jobs, e.g. its commit, may run).
 * The chain is not recorded meanwhile (it holds KubeVirt's overlays); the record of an abort we
 * made to yield settles to Aborted, never a failure. Woken by the watch event that ends it.
 */
function operationWait(f: LauncherFacts): Decision | undefined {
  const op = f.operation;
  // A paused pull stays Paused (nothing of ours runs, nothing is started).
  if (op === undefined || f.ourJob !== null || f.bp.spec.paused) return undefined;
  const { prior } = f;
  const reason = OPERATION_REASON[op.kind];
  const yielded = prior.reason === reason && (f.recorded === 'Aborting' || f.recorded === 'Aborted');
  const base = f.recorded === 'Aborting' ? withJob(f.withLauncher, 'Aborted') : f.withLauncher;
  return waitingStatus(
    f.obs,
    base,
    reason,
    yielded
      ? `yielded to ${op.name}: the pull is paused at ${prior.progress?.percent ?? '?'} (streamed data is kept) and resumes once it is over; ${op.message}`
      : `${op.message}; the pull starts once it is over`,
  );
}

/** No job of ours can run: wait for the migration without looking at libvirt (reconcile.ts does not look then; the target pod may not even be reachable yet). */
const migrationBeforeLooking = (f: LauncherFacts): Decision | undefined =>
  f.migration !== undefined && !mayRunOurJob(f.recorded) && !f.bp.spec.paused
    ? migrationWait(f, f.withLauncher, f.migration)
    : undefined;

/** What libvirt's answer other than the disk means: wait with a reason, fail, or (unreachable) Progressing Unknown. */
const HYPERVISOR_PROBLEM: Readonly<
  Record<
    Exclude<HypervisorObservation['kind'], 'ok'>,
    { readonly reason: Reason; readonly outcome: 'wait' | 'fail' | 'unknown' }
  >
> = {
  unreachable: { reason: 'HypervisorUnreachable', outcome: 'unknown' },
  domainNotFound: { reason: 'DomainNotFound', outcome: 'wait' },
  diskNotFound: { reason: 'DiskNotFound', outcome: 'fail' },
};

/** libvirt was not looked at, or did not show the disk. */
function hypervisorProblem(
  f: LauncherFacts,
  hypervisor: Exclude<HypervisorObservation, { kind: 'ok' }> | undefined,
): Decision {
  const { obs, prior, withLauncher, generation, now } = f;
  // A running pull whose look did not answer in time, too few times yet for a verdict: the status
  // stays as the last answered look left it (its figures dated by progress.observedTime).
  if (
    hypervisor?.kind === 'unreachable' &&
    prior.phase === 'Running' &&
    prior.reason !== 'HypervisorUnreachable' &&
    !f.movedPod &&
    f.bp.status !== undefined &&
    !unreachableVerdict(obs.unansweredLooks, now.getTime())
  )
    return { status: f.bp.status, action: { type: 'none' }, requeueAfterMs: obs.pollIntervalMs };
  if (hypervisor === undefined)
    return waitingStatus(
      obs,
      withLauncher,
      'HypervisorUnreachable',
      'libvirt was not looked at',
      prior.phase ?? 'Pending',
    );
  const { reason, outcome } = HYPERVISOR_PROBLEM[hypervisor.kind];
  if (outcome === 'fail') return failed(obs, withLauncher, reason, hypervisor.message);
  if (outcome === 'wait') return waitingStatus(obs, withLauncher, reason, hypervisor.message);
  const d = waitingStatus(obs, withLauncher, reason, hypervisor.message, prior.phase ?? 'Pending');
  // Progressing is Unknown; judged against the prior status (waitingStatus set it False on the
  // way), so an unchanged Unknown keeps its lastTransitionTime and nothing is rewritten.
  const conditions = setCondition(
    d.status.conditions?.map((c) =>
      c.type === 'Progressing' ? (getCondition(prior.conditions, 'Progressing') ?? c) : c,
    ),
    { type: 'Progressing', status: 'Unknown', reason, message: hypervisor.message },
    generation,
    now,
  );
  return { ...d, status: { ...d.status, conditions } };
}

/** Another block job on the disk (not a pull, or a pull of another BlockPull), or another BlockPull holds the disk: wait. */
function diskBusy(f: LauncherFacts, hypervisor: Extract<HypervisorObservation, { kind: 'ok' }>): Decision | undefined {
  const { obs, bp, withLauncher } = f;
  const job = hypervisor.job;
  if (job !== null && f.ourJob === null) {
    const who = job.type === JOB_TYPE_PULL ? `BlockPull ${obs.diskHolder ?? '?'}` : 'another program';
    return waitingStatus(
      obs,
      withLauncher,
      'DiskBusy',
      `disk ${bp.spec.disk} (${hypervisor.disk.target}) is busy: a ${job.type} job of ${who} runs on it`,
    );
  }
  if (!f.holdsDisk)
    return waitingStatus(
      obs,
      withLauncher,
      'DiskBusy',
      `disk ${bp.spec.disk} is held by BlockPull ${obs.diskHolder ?? '?'}; waiting until it ends`,
    );
  return undefined;
}

/** ... and the disk, looked at and held by this BlockPull, with the goal of the pull. */
interface DiskFacts extends LauncherFacts {
  readonly disk: DiskInfo;
  readonly goal: PullGoal;
  /** The chain was recorded at this look (status.backingChain.before was not set). */
  readonly firstLook: boolean;
  /** withLauncher with status.backingChain (before, current, basePath). */
  readonly chained: BlockPullStatus;
  readonly attempts: number;
  readonly retries: number;
}

/** We hold the disk: record the chain at the first look and resolve the goal (InvalidBase: Failed). */
function diskFacts(f: LauncherFacts, disk: DiskInfo): DiskFacts | Decision {
  const { prior, bp } = f;
  const firstLook = prior.backingChain?.before === undefined;
  const before = prior.backingChain?.before ?? layers(disk.chain);
  const goal = firstLook
    ? goalOf(bp, disk.target, before)
    : goalFromStatus(bp, disk, before, prior.backingChain?.basePath);
  if ('invalidBase' in goal) return failed(f.obs, f.withLauncher, 'InvalidBase', goal.invalidBase);
  return {
    ...f,
    disk,
    goal,
    firstLook,
    chained: {
      ...f.withLauncher,
      backingChain: {
        before,
        current: layers(disk.chain),
        ...(goal.basePath !== undefined ? { basePath: goal.basePath } : {}),
      },
    },
    attempts: prior.attempts ?? 0,
    retries: prior.retries ?? 0,
  };
}

/** The disk says it is done: Completed (NothingToDo when it was so at the first look). */
const pullComplete: Step<DiskFacts> = (f) => {
  const { disk, prior } = f;
  if (!isPullComplete(f.ourJob, disk, f.goal)) return undefined;
  const total = prior.progress?.totalBytes;
  const progress: Progress = {
    ...(total !== undefined ? { currentBytes: total, totalBytes: total } : {}),
    percent: '100%',
    bytesPerSecond: 0,
    etaSeconds: 0,
    // The look that found the chain at its goal.
    observedTime: timestamp(observedAt(f.obs)),
  };
  const nothing = f.firstLook && f.attempts === 0;
  const chainText = disk.chain.map((l) => l.path).join(' <- ');
  const message = nothing
    ? `nothing to do: the chain of ${disk.target} is already at its goal (${chainText})`
    : `pulled: the chain of ${disk.target} is now ${chainText}`;
  const ended = withJob({ ...f.chained, progress }, f.recorded === undefined ? undefined : 'Ended');
  return {
    status: withPhase(
      ended,
      { phase: 'Completed', reason: nothing ? 'NothingToDo' : 'Completed', message },
      f.generation,
      f.now,
    ),
    action: { type: 'none' },
    requeueAfterMs: null,
  };
};

/** ... and our pull job, running on the disk, with its progress. */
interface RunningFacts extends DiskFacts {
  readonly job: BlockJobInfo;
  readonly progress: Progress;
  readonly sample: ProgressSample;
}

/** Why our running job is aborted (the first that applies), or undefined: it goes on. */
type StopReason = (f: RunningFacts) => PhaseInput | undefined;

const STOP_OUR_JOB: readonly StopReason[] = [
  (f) =>
    f.bandwidthError !== undefined
      ? {
          phase: 'Running',
          reason: 'InvalidBandwidth',
          message: `${f.bandwidthError}: aborting the running job first (streamed data is kept), then Failed`,
        }
      : undefined,
  (f) =>
    f.bp.spec.paused
      ? {
          phase: 'Paused',
          reason: 'Paused',
          message: `paused at ${f.progress.percent}: aborting the job, streamed data is kept`,
        }
      : undefined,
  (f) =>
    f.operation !== undefined
      ? {
          phase: 'Pending',
          reason: OPERATION_REASON[f.operation.kind],
          message: `yielding to ${f.operation.name}: aborting the pull at ${f.progress.percent} (streamed data is kept); it resumes once it is over; ${f.operation.message}`,
        }
      : undefined,
  (f) =>
    f.yieldToMigration && f.migration !== undefined
      ? {
          phase: 'Pending',
          reason: 'MigrationInProgress',
          message: `yielding to ${f.migration.name}: aborting the pull at ${f.progress.percent} (streamed data is kept); it resumes on the VMI's launcher pod once the migration has ended`,
        }
      : undefined,
];

/** Our pull runs: abort it (bad bandwidth, pause, migration), or report progress and keep its bandwidth right. */
function ourPullRuns(f: RunningFacts): Decision {
  const { bp, disk, launcherPod, progress, sample, prior, job, bandwidth, migration } = f;
  for (const stop of STOP_OUR_JOB) {
    const why = stop(f);
    if (why === undefined) continue;
    return {
      status: withPhase(withJob({ ...f.chained, progress }, 'Aborting'), why, f.generation, f.now),
      action: { type: 'abort', domain: launcherPod.domain, target: disk.target },
      requeueAfterMs: f.obs.pollIntervalMs,
      sample,
    };
  }
  // Adopted: running, and not started by this process (whatever the status said before).
  const adopted = f.obs.jobStartedHere !== true;
  const reason: Reason = adopted
    ? 'Adopted'
    : prior.phase === 'Running' && prior.reason === 'Retrying'
      ? 'Retrying'
      : 'Pulling';
  const status = withPhase(
    {
      ...withJob(f.chained, 'Running'),
      progress,
      attempts: Math.max(f.attempts, 1),
      ...(prior.startTime === undefined ? { startTime: timestamp(f.now) } : {}),
    },
    {
      phase: 'Running',
      reason,
      message: `${adopted ? 'adopted the running pull' : 'pulling'} ${bp.spec.disk} (${disk.target}): ${progress.percent} of ${formatBytes(progress.totalBytes ?? 0)}${bandwidthMessage(bandwidth)}${migration !== undefined ? `; ${migration.name} waits for the pull to end (migrationPolicy WaitForPull)` : ''}`,
    },
    f.generation,
    f.now,
  );
  const action: Action =
    job.bandwidth !== bandwidth
      ? { type: 'setBandwidth', domain: launcherPod.domain, target: disk.target, bandwidth }
      : { type: 'none' };
  return { status, action, requeueAfterMs: f.obs.pollIntervalMs, sample };
}

/** ... and no job on the disk, its chain short of the goal. */
interface IdleFacts extends DiskFacts {
  /** The job record settled: what ended the last job (Ended, Aborted), or as it was. */
  readonly settled: BlockPullStatus;
  /** Our job ended on its own short of the goal: a retry is due. */
  readonly retryDue: boolean;
  /** A start was recorded but is not known to have run: it is made again as the same attempt. */
  readonly replay: boolean;
  /** Our last start did not answer within the bound, and the disk shows no job: it did not run. */
  readonly unanswered: boolean;
  /** ` (the hypervisor said: ...)` when QEMU's reason for the last failure is known. */
  readonly hypervisorSaid: string;
}

/**
 * What ended the last job, by the record: our abort (a pause, never a failure), or the job
 * itself (Running: ended short of the goal, a retry is due). A start recorded but not known to
 * have run (Starting: the operator stopped, or its write was lost, between recording the start
 * and its outcome) is neither: it is made again as the same attempt (counted once). On another
 * launcher pod than the record's, a Running or Aborting job ended with the old pod (a
 * migration): Aborted, never a failure.
 */
function idleFacts(f: DiskFacts): IdleFacts {
  const js = f.recorded;
  const lostWithPod = f.movedPod && (js === 'Running' || js === 'Aborting');
  return {
    ...f,
    settled: withJob(
      f.chained,
      lostWithPod
        ? 'Aborted'
        : js === 'Running'
          ? 'Ended'
          : js === 'Aborting'
            ? 'Aborted'
            : js === 'Unanswered'
              ? undefined
              : js,
    ),
    retryDue: !lostWithPod && (js === 'Running' || js === 'Ended'),
    replay: js === 'Starting',
    unanswered: js === 'Unanswered',
    hypervisorSaid: f.obs.lastJobError !== undefined ? ` (the hypervisor said: ${f.obs.lastJobError})` : '',
  };
}

/**
 * An image the pull would write into (the active image) or remove (those above the base) has a
 * qcow2 data file (<dataStore>, KubeVirt's changed block tracking): a pull never touches a data
 * file (its raw disk and the dirty bitmaps beside it stay KubeVirt's). A chain of that one image
 * is complete (NothingToDo, pullComplete). Waits: KubeVirt's own operation (an external snapshot
 * over such a disk) ends with the chain of one image again.
 */
const dataFileInChain: Step<IdleFacts> = (f) => {
  const kept =
    f.goal.basePath !== undefined ? f.disk.chain.findIndex((l) => l.path === f.goal.basePath) : f.disk.chain.length;
  const touched = f.disk.chain.slice(0, kept < 0 ? f.disk.chain.length : kept).find((l) => l.dataFile !== undefined);
  if (touched?.dataFile === undefined) return undefined;
  const how = touched.position === 0 ? 'the pull would write into it' : 'the pull would remove it from the chain';
  return waitingStatus(
    f.obs,
    f.settled,
    'DataFileInChain',
    `image ${touched.path} (position ${touched.position}) of ${f.disk.target} has the data file ${touched.dataFile.path} (${touched.dataFile.format}; KubeVirt's changed block tracking) and ${how}: a pull never touches a data file; chain is ${f.disk.chain.map((l) => l.path).join(' <- ')}`,
  );
};

const invalidBandwidthIdle: Step<IdleFacts> = (f) =>
  f.bandwidthError !== undefined ? failed(f.obs, f.settled, 'InvalidBandwidth', f.bandwidthError) : undefined;

const pausedIdle: Step<IdleFacts> = ({ bp, prior, settled, generation, now }) => {
  if (!bp.spec.paused) return undefined;
  const at = prior.progress?.percent ? ` at ${prior.progress.percent}` : '';
  return {
    status: withPhase(
      settled,
      { phase: 'Paused', reason: 'Paused', message: `paused${at}; set spec.paused to false to continue` },
      generation,
      now,
    ),
    action: { type: 'none' },
    requeueAfterMs: null,
  };
};

/** Our job ended on its own (failed, or canceled by someone else) short of the goal: retry after a backoff, or Failed. */
const jobEndedShort: Step<IdleFacts> = (f) => {
  if (!f.retryDue) return undefined;
  const { bp, retries, disk, obs, hypervisorSaid } = f;
  if (retries >= bp.spec.maxRetries) {
    return failed(
      obs,
      f.settled,
      'RetryLimitExceeded',
      `the pull ended short of its goal ${retries + 1} time(s)${hypervisorSaid} (maxRetries ${bp.spec.maxRetries}); chain is ${disk.chain.map((l) => l.path).join(' <- ')}`,
    );
  }
  // Started again after a backoff, not at once: a cause that persists (a full filesystem)
  // would otherwise burn every retry within seconds.
  const delay = backoffMs(retries + 1, obs.waitRequeueMs);
  return {
    // The retry is counted here, and the job record cleared: the next look waits out the
    // backoff and starts again, never counting this ending twice.
    status: withPhase(
      { ...withJob(f.settled, undefined), retries: retries + 1 },
      {
        phase: 'Pending',
        reason: 'JobFailed',
        message: `the block job ended short of its goal${hypervisorSaid}; retry ${retries + 1}/${bp.spec.maxRetries} after ${Math.ceil(delay / 1000)} s`,
      },
      f.generation,
      f.now,
    ),
    action: { type: 'none' },
    requeueAfterMs: delay,
  };
};

/**
 * A start that did not answer within the bound (ended by the operator), and the disk shows no
 * job: the start did not run. A failed start (counted against maxRetries), retried after a
 * backoff like a job that ended short; a job found instead is adopted by ourPullRuns.
 */
const startUnanswered: Step<IdleFacts> = (f) => {
  if (!f.unanswered) return undefined;
  const { bp, retries, obs } = f;
  const what = "the start of the pull did not answer within the operator's bound and no job is on the disk";
  if (retries >= bp.spec.maxRetries)
    return failed(obs, f.settled, 'JobFailed', `${what} (maxRetries ${bp.spec.maxRetries} reached)`);
  const delay = backoffMs(retries + 1, obs.waitRequeueMs);
  return {
    status: withPhase(
      { ...f.settled, retries: retries + 1 },
      {
        phase: 'Pending',
        reason: 'JobFailed',
        message: `${what}; retry ${retries + 1}/${bp.spec.maxRetries} after ${Math.ceil(delay / 1000)} s`,
      },
      f.generation,
      f.now,
    ),
    action: { type: 'none' },
    requeueAfterMs: delay,
  };
};

/** The backoff after a failed job runs from the moment it was seen (Progressing went False). */
const retryBackoff: Step<IdleFacts> = (f) => {
  const { prior, retries, obs, bp } = f;
  if (!(prior.phase === 'Pending' && prior.reason === 'JobFailed' && retries > 0)) return undefined;
  const since = Date.parse(getCondition(prior.conditions, 'Progressing')?.lastTransitionTime ?? '');
  const left = since + backoffMs(retries, obs.waitRequeueMs) - f.now.getTime();
  if (!Number.isFinite(since) || left <= 0) return undefined;
  const message =
    obs.lastJobError !== undefined && !(prior.message ?? '').includes(obs.lastJobError)
      ? `the block job ended short of its goal${f.hypervisorSaid}; retry ${retries}/${bp.spec.maxRetries} after ${Math.ceil(backoffMs(retries, obs.waitRequeueMs) / 1000)} s`
      : (prior.message ?? '');
  return {
    status: withPhase(f.settled, { phase: 'Pending', reason: 'JobFailed', message }, f.generation, f.now),
    action: { type: 'none' },
    requeueAfterMs: left,
  };
};

const migrationRequested: Step<IdleFacts> = (f) =>
  f.migration !== undefined ? migrationWait(f, f.settled, f.migration) : undefined;

/**
 * spec.dryRun: the plan of the start that would follow, from the same look (the chain, the goal,
 * the space pre-flight), and never the start: no job, no slot.
 */
const planOnly: Step<IdleFacts> = (f) => {
  if (!f.bp.spec.dryRun) return undefined;
  const { obs, settled, goal, bandwidth, disk, bp } = f;
  const space = obs.space;
  if (space === undefined) return { status: settled, action: { type: 'none' }, requeueAfterMs: 0, wants: 'space' };
  const short = spaceShortage(space, obs.spaceMarginBytes, obs.spaceMarginPercent);
  const bytes = space.kind === 'measured' ? space.pullBytes : undefined;
  const verdict = space.kind === 'unknown' ? 'Unknown' : short !== undefined ? 'Insufficient' : 'Fits';
  const eta = bytes !== undefined && bandwidth > 0 ? Math.ceil(bytes / bandwidth) : undefined;
  const plan: NonNullable<BlockPullStatus['plan']> = {
    ...(goal.basePath !== undefined ? { basePath: goal.basePath } : {}),
    ...(bytes !== undefined ? { bytesToWrite: bytes } : {}),
    space: verdict,
    ...(space.kind === 'measured' ? { availableBytes: space.availableBytes } : {}),
    ...(eta !== undefined ? { etaSeconds: eta } : {}),
  };
  const what = `${goal.basePath !== undefined ? `down to ${goal.basePath}` : 'into a single image'}`;
  const written =
    bytes !== undefined ? `at most ${bytesText(bytes)} to write` : 'the bytes to write are not measurable';
  const spaceSaid =
    verdict === 'Insufficient'
      ? `space: ${short}`
      : verdict === 'Fits'
        ? `space: fits (${bytesText(space.kind === 'measured' ? space.availableBytes : 0)} free)`
        : `space: not measurable (${space.kind === 'unknown' ? space.reason : ''})`;
  const etaSaid = eta !== undefined ? `; about ${eta} s at ${formatBytes(bandwidth)}/s` : '';
  return {
    status: withPhase(
      { ...settled, plan },
      {
        phase: 'Planned',
        reason: 'Planned',
        message: `plan (spec.dryRun, no job started): pull ${bp.spec.disk} (${disk.target}) ${what}; ${written}; ${spaceSaid}${etaSaid}`,
      },
      f.generation,
      f.now,
    ),
    action: { type: 'none' },
    requeueAfterMs: null,
  };
};

const noClusterSlot: Step<IdleFacts> = ({ obs, settled }) =>
  obs.slots.running >= obs.maxConcurrentPulls
    ? waitingStatus(
        obs,
        settled,
        'WaitingForSlot',
        `${obs.slots.running} pulls run cluster-wide (limit ${obs.maxConcurrentPulls})`,
      )
    : undefined;

/** Several namespaces want a slot and this one runs its fair share (fairShare): it waits. */
const noFairShare: Step<IdleFacts> = ({ obs, settled, bp }) => {
  const { slots } = obs;
  if (slots.namespacesWanting <= 1) return undefined;
  const share = fairShare(obs.maxConcurrentPulls, slots.namespacesWanting);
  if (slots.runningInNamespace < share) return undefined;
  return waitingStatus(
    obs,
    settled,
    'WaitingForSlot',
    `namespace ${bp.metadata.namespace} runs ${slots.runningInNamespace} pulls, its fair share (${share}) of the ${obs.maxConcurrentPulls} cluster-wide slots while ${slots.namespacesWanting} namespaces want one`,
  );
};

const noNodeSlot: Step<IdleFacts> = ({ obs, settled, launcherPod }) =>
  obs.slots.runningOnNode >= obs.maxPullsPerNode
    ? waitingStatus(
        obs,
        settled,
        'WaitingForSlot',
        `${obs.slots.runningOnNode} pulls run on node ${launcherPod.node} (limit ${obs.maxPullsPerNode})`,
      )
    : undefined;

/** Pre-flight: the data to pull must fit, with the margin, where the active image lives. */
const insufficientSpace: Step<IdleFacts> = ({ obs, settled, hypervisorSaid }) => {
  // Never a start without its pre-flight: the gatherer measures when factsWanted says so.
  if (obs.space === undefined) return { status: settled, action: { type: 'none' }, requeueAfterMs: 0, wants: 'space' };
  const short = spaceShortage(obs.space, obs.spaceMarginBytes, obs.spaceMarginPercent);
  if (short === undefined) return undefined;
  return {
    ...waitingStatus(
      obs,
      settled,
      'InsufficientSpace',
      `${short}${hypervisorSaid}; checked again with backoff (${Math.ceil(obs.waitRequeueMs / 1000)} s, doubling, at most ${MAX_BACKOFF_MS / 60_000} min)`,
    ),
    requeueAfterMs: obs.spaceRecheckMs ?? obs.waitRequeueMs,
  };
};

const IDLE_STEPS: readonly Step<IdleFacts>[] = [
  invalidBandwidthIdle,
  dataFileInChain,
  pausedIdle,
  jobEndedShort,
  startUnanswered,
  retryBackoff,
  migrationRequested,
  planOnly,
  noClusterSlot,
  noFairShare,
  noNodeSlot,
  insufficientSpace,
];

/** Start the pull: recorded (Starting, counted in attempts) before it is made; confirmed after (afterAction). */
function startPull(f: IdleFacts): Decision {
  const { prior, bp, retries, attempts, goal, launcherPod, disk, bandwidth } = f;
  const retrying =
    (f.replay && prior.reason === 'Retrying') ||
    (retries > 0 && (prior.reason === 'JobFailed' || prior.reason === 'InsufficientSpace'));
  const reason: Reason = retrying ? 'Retrying' : 'Pulling';
  const startBase: BaseRef | undefined = goal.basePath !== undefined ? { path: goal.basePath } : undefined;
  const after = isReason(prior.reason) ? RESUMED_AFTER[prior.reason] : undefined;
  const resumed =
    prior.reason === 'MigrationInProgress'
      ? `resumed after the migration on pod ${launcherPod.pod} (node ${launcherPod.node}): `
      : after !== undefined
        ? `resumed after ${after}: `
        : '';
  const retry = reason === 'Retrying' ? `retry ${retries}/${bp.spec.maxRetries}: ` : '';
  const status = withPhase(
    {
      ...withJob(f.settled, 'Starting'),
      attempts: f.replay ? Math.max(attempts, 1) : attempts + 1,
      retries,
      progress: {
        currentBytes: 0,
        totalBytes: prior.progress?.totalBytes ?? 0,
        percent: prior.progress?.percent ?? '0%',
        bytesPerSecond: 0,
      },
      ...(prior.startTime === undefined ? { startTime: timestamp(f.now) } : {}),
    },
    {
      phase: 'Running',
      reason,
      message: `${resumed}${retry}started pulling ${bp.spec.disk} (${disk.target}) ${goal.basePath !== undefined ? `down to ${goal.basePath}` : 'into a single image'}${bandwidthMessage(bandwidth)}`,
    },
    f.generation,
    f.now,
  );
  return {
    status,
    action: {
      type: 'startPull',
      domain: launcherPod.domain,
      target: disk.target,
      ...(startBase !== undefined ? { base: startBase } : {}),
      bandwidth,
    },
    afterAction: withJob(status, 'Running'),
    requeueAfterMs: f.obs.pollIntervalMs,
  };
}

/**
 * The chain, in order: the object's steps; the launcher (missing: wait); our finalizer; a migration to wait
 * for before looking at libvirt; libvirt's answer (no disk: wait or fail); a busy disk; the goal
 * (InvalidBase); a pull complete; our running pull; the idle disk's steps; else the start.
 */
function decideUnbounded(obs: Input): Decision {
  const object = objectFacts(obs);
  const early = firstDecision(object, OBJECT_STEPS);
  if (early !== undefined) return early;
  const lookup = obs.launcher;
  if (lookup?.kind !== 'found') return launcherMissing(object, lookup);
  // A launcher pod being deleted serves only the abort on delete (above): never a start.
  if (lookup.terminating === true) {
    return launcherMissing(object, {
      kind: 'launcherNotFound',
      message: `virt-launcher pod ${lookup.launcher.pod} is being deleted`,
    });
  }
  if (!object.hasFinalizer) return addFinalizer(object);
  const launcher = launcherFacts(object, lookup.launcher, lookup.migration);
  const waitForMigration = migrationBeforeLooking(launcher);
  if (waitForMigration !== undefined) return waitForMigration;
  const hypervisor = obs.hypervisor;
  if (hypervisor?.kind !== 'ok') return hypervisorProblem(launcher, hypervisor);
  const kubevirtOperates = operationWait(launcher);
  if (kubevirtOperates !== undefined) return kubevirtOperates;
  const busy = diskBusy(launcher, hypervisor);
  if (busy !== undefined) return busy;
  const disk = diskFacts(launcher, hypervisor.disk);
  if ('action' in disk) return disk;
  const complete = pullComplete(disk);
  if (complete !== undefined) return complete;
  if (disk.ourJob !== null) {
    const { progress, sample } = progressFrom(disk.ourJob, obs.previousSample, observedAt(obs));
    return ourPullRuns({ ...disk, job: disk.ourJob, progress, sample });
  }
  const idle = idleFacts(disk);
  return firstDecision(idle, IDLE_STEPS) ?? startPull(idle);
}

/**
 * What a failed start means, by the hypervisor's error code (one row per code): whether the job
 * may have started all the same (its answer was lost, or it was ended midway: the next look at
 * the disk tells), and the phase and reason to show when the start was refused (absent: a failed
 * start, counted against maxRetries; the message is the error's). Timeout is its own outcome
 * (Unanswered, decideActionErrorUnbounded).
 */
const START_ERRORS: Readonly<
  Record<
    HypervisorErrorCode,
    {
      readonly mayHaveStarted: boolean;
      readonly refused?: { readonly phase: 'Pending' | 'Failed'; readonly reason: Reason };
    }
  >
> = {
  DiskBusy: { mayHaveStarted: false, refused: { phase: 'Pending', reason: 'DiskBusy' } },
  InvalidBase: { mayHaveStarted: false, refused: { phase: 'Failed', reason: 'InvalidBase' } },
  DiskNotFound: { mayHaveStarted: false, refused: { phase: 'Failed', reason: 'DiskNotFound' } },
  DomainNotFound: { mayHaveStarted: false, refused: { phase: 'Pending', reason: 'DomainNotFound' } },
  Unreachable: { mayHaveStarted: true, refused: { phase: 'Pending', reason: 'HypervisorUnreachable' } },
  CommandFailed: { mayHaveStarted: true },
  JobFailed: { mayHaveStarted: true },
  JobCanceled: { mayHaveStarted: false },
  NoJob: { mayHaveStarted: false },
  Timeout: { mayHaveStarted: true },
};

/** A start that failed with `err` may still have started the job (any error but a typed refusal). */
export function startMayHaveRun(err: unknown): boolean {
  return !isHypervisorError(err) || START_ERRORS[err.code].mayHaveStarted;
}

function decideActionErrorUnbounded(obs: Input, decided: Decision, err: unknown): Decision | undefined {
  const { bp, now } = obs;
  const prior: BlockPullStatus = bp.status ?? {};
  if (decided.action.type !== 'startPull') return undefined;
  if (isHypervisorError(err, 'Timeout')) {
    // It may have started the job: still counted, and recorded so; the next look at the disk
    // tells (startUnanswered, or ourPullRuns adopts it). Not Running: it holds no slot meanwhile.
    return {
      status: withPhase(
        withJob(decided.status, 'Unanswered'),
        {
          phase: 'Pending',
          reason: 'HypervisorUnreachable',
          message: `${err.message}; it may have started the job: the next look at the disk tells`,
        },
        bp.metadata.generation,
        now,
      ),
      action: { type: 'none' },
      requeueAfterMs: obs.waitRequeueMs,
    };
  }
  // The job was not started: do not count it, and no job of ours runs. A replayed start
  // (Starting) was counted when it was first recorded: that count is taken back too.
  const replayed = recordedJobState(prior) === 'Starting';
  const attempts = Math.max(0, (prior.attempts ?? 0) - (replayed ? 1 : 0));
  const retries = Math.max(0, (prior.retries ?? 0) - (replayed && prior.reason === 'Retrying' ? 1 : 0));
  const base: BlockPullStatus = withJob({ ...decided.status, attempts, retries }, undefined);
  const outcome = (status: BlockPullStatus, p: PhaseInput): Decision => ({
    status: withPhase(status, p, bp.metadata.generation, now),
    action: { type: 'none' },
    requeueAfterMs: p.phase === 'Failed' ? null : obs.waitRequeueMs,
  });
  const refused = isHypervisorError(err) ? START_ERRORS[err.code].refused : undefined;
  if (refused !== undefined) return outcome(base, { ...refused, message: (err as Error).message });
  // Any other failure to start (virsh error, job failed at once): counts against maxRetries.
  const message = `starting the pull failed: ${errorMessage(err)}`;
  if (retries >= bp.spec.maxRetries) return outcome(base, { phase: 'Failed', reason: 'JobFailed', message });
  return outcome(
    { ...base, retries: retries + 1 },
    { phase: 'Pending', reason: 'JobFailed', message: `${message} (retry ${retries + 1}/${bp.spec.maxRetries})` },
  );
}
