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
import { getCondition, setCondition, timestamp } from '../api/conditions.ts';
import { parseQuantity, formatBytes } from '../api/quantity.ts';
import {
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
import { computeGoal, isPullComplete, type PullGoal } from '../hypervisor/completion.ts';
import { HypervisorError, isHypervisorError } from '../hypervisor/errors.ts';
import type { BaseRef, BlockJobInfo, DiskInfo } from '../hypervisor/types.ts';
import type { LauncherLookup, MigrationRequest } from '../kubevirt/launcher.ts';
import { boundStatus } from './status-limits.ts';

export type HypervisorObservation =
  | { readonly kind: 'unreachable'; readonly message: string }
  | { readonly kind: 'domainNotFound'; readonly message: string }
  | { readonly kind: 'diskNotFound'; readonly message: string }
  | { readonly kind: 'ok'; readonly disk: DiskInfo; readonly job: BlockJobInfo | null };

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
      readonly ephemeral?: { readonly pod: string; readonly limitBytes: number; readonly usedBytes: number; readonly mountPoint: string };
    }
  /** Not measurable (block device, a driver without the check): the start is not held back. */
  | { readonly kind: 'unknown'; readonly reason: string };

export interface SlotUsage {
  /** Pulls running cluster-wide, this BlockPull excluded. */
  readonly running: number;
  /** Pulls running on the launcher's node, this BlockPull excluded. */
  readonly runningOnNode: number;
  readonly maxConcurrentPulls: number;
  readonly maxPullsPerNode: number;
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
  readonly pollIntervalMs: number;
  /** Requeue delay while waiting (VMI, launcher, disk, slot). */
  readonly waitRequeueMs: number;
  /**
   * This operator process asked libvirt to start the pull job now on the disk. A pull found running
   * that this process did not start (a leader change, a restart, a job started by hand) is Adopted.
   */
  readonly jobStartedHere?: boolean;
  /** Pre-flight before a start; undefined = not measured (the caller measures when decide wants to start). */
  readonly space?: SpaceObservation;
  /** Bytes that must stay free after the data to pull (BLOCKPULL_SPACE_MARGIN_MIB). Default 0. */
  readonly spaceMarginBytes?: number;
  /** Percent of the filesystem that must stay free after the data to pull, if more (BLOCKPULL_SPACE_MARGIN_PERCENT). Default 0. */
  readonly spaceMarginPercent?: number;
  /** Requeue delay after an InsufficientSpace check (the caller's backoff). Default waitRequeueMs. */
  readonly spaceRecheckMs?: number;
  /** Why our last job failed, as the hypervisor said (e.g. "No space left on device"), if known. */
  readonly lastJobError?: string;
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
export function spaceShortage(space: SpaceObservation | undefined, marginBytes: number, marginPercent = 0): string | undefined {
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
  | { readonly type: 'startPull'; readonly domain: string; readonly target: string; readonly base?: BaseRef; readonly bandwidth: number }
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
}

const JOB_TYPE_PULL = 'Block Pull';

export function blockPullKeyOf(bp: BlockPull): string {
  return `${bp.metadata.namespace}/${bp.metadata.name}`;
}

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
      !isTerminal(b.status?.phase),
  );
  if (same.length === 0) return null;
  const active = same.filter((b) => b.status?.phase === 'Running' || b.status?.phase === 'Paused');
  const pool = active.length > 0 ? active : same;
  const sorted = [...pool].sort((a, b) => createdMs(a) - createdMs(b) || a.metadata.name.localeCompare(b.metadata.name));
  return blockPullKeyOf(sorted[0]!);
}

/**
 * The recorded state of this BlockPull's job. A status written before status.job existed says
 * Running while a job of ours ran; and Failed/InvalidBandwidth after a start is what such an
 * operator wrote over a job it left running (deletion then aborts it).
 */
export function recordedJobState(status: BlockPullStatus | undefined): JobState | undefined {
  if (status?.job !== undefined) return status.job.state;
  if (status?.phase === 'Running') return 'Running';
  if (status?.phase === 'Failed' && status.reason === 'InvalidBandwidth' && (status.attempts ?? 0) > 0) return 'Running';
  return undefined;
}

/** A job this BlockPull started (or adopted) may still run on the disk. */
export function mayRunOurJob(js: JobState | undefined): boolean {
  return js === 'Starting' || js === 'Running' || js === 'Aborting';
}

function withJob(status: BlockPullStatus, state: JobState | undefined): BlockPullStatus {
  const { job: _dropped, ...rest } = status;
  return state === undefined ? rest : { ...rest, job: { state } };
}

function layers(chain: DiskInfo['chain']): ChainLayerStatus[] {
  return chain.map((l) => ({ position: l.position, path: l.path, format: l.format }));
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
    conditions = setCondition(conditions, { type, status: is ? 'True' : 'False', reason: p.reason, message: p.message }, generation, now);
  };
  set('Progressing', p.phase === 'Running');
  set('Complete', p.phase === 'Completed');
  set('Failed', p.phase === 'Failed');
  set('Ready', p.phase === 'Completed');
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
  obs: Observation,
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

function failed(obs: Observation, base: BlockPullStatus, reason: Reason, message: string): Decision {
  return {
    status: withPhase(base, { phase: 'Failed', reason, message }, obs.bp.metadata.generation, obs.now),
    action: { type: 'none' },
    requeueAfterMs: null,
  };
}

/** The goal of this pull, from the chain recorded at the first look. */
export function goalOf(bp: BlockPull, target: string, before: readonly ChainLayerStatus[]): PullGoal {
  const disk: DiskInfo = { target, chain: before.map((l) => ({ position: l.position, path: l.path, format: l.format })) };
  return computeGoal(disk, toBaseRef(bp.spec.base));
}

export function toBaseRef(base: BlockPull['spec']['base']): BaseRef | undefined {
  if (base === undefined) return undefined;
  if (base.position !== undefined) return { position: base.position };
  if (base.path !== undefined) return { path: base.path };
  return undefined;
}

function progressFrom(job: BlockJobInfo, prev: ProgressSample | undefined, nowMs: number): { progress: Progress; sample: ProgressSample } {
  // A job may report cur > end (or odd values): keep 0 <= cur <= total, so the ETA is never negative.
  const total = job.end <= 1 ? 0 : Math.floor(job.end);
  const cur = total === 0 ? 0 : Math.min(total, Math.max(0, Math.floor(job.cur)));
  let rate = 0;
  if (prev !== undefined && nowMs > prev.atMs && cur >= prev.cur) rate = Math.round(((cur - prev.cur) * 1000) / (nowMs - prev.atMs));
  const progress: Progress = {
    currentBytes: cur,
    totalBytes: total,
    percent: percentOf(cur, total),
    bytesPerSecond: rate,
    ...(rate > 0 ? { etaSeconds: Math.ceil((total - cur) / rate) } : {}),
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
function goalFromStatus(bp: BlockPull, disk: DiskInfo, before: readonly ChainLayerStatus[], basePath: string | undefined): PullGoal {
  const top = before[0];
  const active = disk.chain[0];
  if (top !== undefined && active !== undefined && active.path !== top.path) return goalOnOtherImage(bp, disk, before, basePath);
  if (before.length < STATUS_LIMITS.chainItems || basePath === undefined || top === undefined) return goalOf(bp, disk.target, before);
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
function goalOnOtherImage(bp: BlockPull, disk: DiskInfo, before: readonly ChainLayerStatus[], basePath: string | undefined): PullGoal {
  const active = disk.chain[0]!;
  if (bp.spec.base === undefined) return { target: disk.target, expectedPaths: [active.path] };
  const recorded = basePath ?? goalOf(bp, disk.target, before).basePath;
  const byPath = disk.chain.findIndex((l) => l.path === recorded);
  if (byPath >= 1) return { target: disk.target, expectedPaths: [active.path, ...disk.chain.slice(byPath).map((l) => l.path)], basePath: recorded! };
  const at = before.findIndex((l) => l.path === recorded);
  const chainText = disk.chain.map((l) => l.path).join(' <- ');
  if (at < 1 || before.length >= STATUS_LIMITS.chainItems || disk.chain.length !== before.length) {
    throw new HypervisorError(
      'InvalidBase',
      `the active image of ${disk.target} is now ${active.path} (was ${before[0]?.path ?? '?'}) and the base ${recorded ?? '?'} cannot be identified in its chain (${chainText}): not there by path, and the chain has ${disk.chain.length} images where it had ${before.length}`,
    );
  }
  const below = disk.chain.slice(at);
  const formats = below.map((l) => l.format).join(',');
  const recordedFormats = before.slice(at).map((l) => l.format).join(',');
  if (formats !== recordedFormats) {
    throw new HypervisorError(
      'InvalidBase',
      `the active image of ${disk.target} is now ${active.path} and the image at the base's depth (${below[0]?.path ?? '?'}) and below have formats ${formats}, where the base ${recorded ?? '?'} and below had ${recordedFormats}`,
    );
  }
  return { target: disk.target, expectedPaths: [active.path, ...below.map((l) => l.path)], basePath: below[0]!.path };
}

/**
 * The pure decision. Its status is always one the CRD accepts (messages, chain lists and
 * numbers cut to the CRD's bounds by boundStatus).
 */
export function decide(obs: Observation): Decision {
  const d = decideUnbounded(obs);
  return { ...d, status: boundStatus(d.status), ...(d.afterAction !== undefined ? { afterAction: boundStatus(d.afterAction) } : {}) };
}

function decideUnbounded(obs: Observation): Decision {
  const { bp, now } = obs;
  const generation = bp.metadata.generation;
  const self = blockPullKeyOf(bp);
  const prior: BlockPullStatus = { ...(bp.status ?? {}), ...(generation !== undefined ? { observedGeneration: generation } : {}) };
  const hasFinalizer = bp.metadata.finalizers?.includes(FINALIZER) ?? false;
  const deleting = bp.metadata.deletionTimestamp !== undefined && bp.metadata.deletionTimestamp !== null;
  const hv = obs.hypervisor;
  const launcher = obs.launcher?.kind === 'found' ? obs.launcher.launcher : undefined;
  const target = hv?.kind === 'ok' ? hv.disk.target : prior.launcher?.target;
  const job = hv?.kind === 'ok' ? hv.job : null;
  const jobIsPull = job !== null && job.type === JOB_TYPE_PULL;
  // A pull on the disk is ours when no other BlockPull holds the disk.
  const holdsDisk = obs.diskHolder === null || obs.diskHolder === self;
  const ourJob = jobIsPull && holdsDisk;
  const js = recordedJobState(prior);

  // --- deletion: abort our running job (whatever the phase), then let the object go --------
  if (deleting) {
    if (!hasFinalizer) return { status: prior, action: { type: 'none' }, requeueAfterMs: null };
    if (ourJob && launcher !== undefined && target !== undefined && (mayRunOurJob(js) || !isTerminal(prior.phase))) {
      return {
        status: withJob(prior, 'Aborting'),
        action: { type: 'abort', domain: launcher.domain, target },
        requeueAfterMs: obs.pollIntervalMs,
      };
    }
    if (hv?.kind === 'unreachable' && (prior.phase === 'Running' || mayRunOurJob(js))) {
      // Cannot confirm the job is gone; keep the finalizer and try again.
      return { status: prior, action: { type: 'none' }, requeueAfterMs: obs.waitRequeueMs };
    }
    return { status: prior, action: { type: 'removeFinalizer' }, requeueAfterMs: null };
  }

  // --- terminal phases are sticky: re-applying the manifest starts nothing -----------------
  // The conditions are re-stated for this generation (a spec edit is observed; a status written
  // before Ready/Reconciling/Stalled existed gets them), keeping lastTransitionTime.
  if (isTerminal(prior.phase)) {
    const status =
      prior.phase !== undefined && isReason(prior.reason)
        ? withPhase(prior, { phase: prior.phase, reason: prior.reason, message: prior.message ?? '' }, generation, now)
        : prior;
    return { status, action: { type: 'none' }, requeueAfterMs: null };
  }

  if (!hasFinalizer) {
    const status =
      prior.phase === undefined
        ? withPhase(prior, { phase: 'Pending', reason: 'Created', message: 'Looking at the VMI and its disk' }, generation, now)
        : prior;
    return { status, action: { type: 'addFinalizer' }, requeueAfterMs: 0 };
  }

  // A bandwidth the operator cannot apply: Failed, but never while a job of ours may run
  // (it is aborted first, below).
  let bandwidth = 0;
  let bandwidthError: string | undefined;
  if (bp.spec.bandwidth !== undefined) {
    try {
      bandwidth = parseQuantity(bp.spec.bandwidth);
    } catch (err) {
      bandwidthError = (err as Error).message;
      if (!mayRunOurJob(js)) return failed(obs, prior, 'InvalidBandwidth', bandwidthError);
    }
  }

  // --- the VMI and its launcher -------------------------------------------------------------
  const lo = obs.launcher;
  if (lo === undefined) return waitingStatus(obs, prior, 'VMINotFound', `VMI ${bp.spec.vmiName} was not looked at`);
  switch (lo.kind) {
    case 'vmiNotFound':
      return waitingStatus(obs, prior, 'VMINotFound', lo.message);
    case 'vmiNotRunning':
      return waitingStatus(obs, prior, 'VMINotRunning', lo.message);
    case 'migrationInProgress':
      return waitingStatus(obs, prior, 'MigrationInProgress', lo.message);
    case 'launcherNotFound':
      return waitingStatus(obs, prior, 'LauncherNotFound', lo.message);
    case 'found':
      break;
  }
  const loc = lo.launcher;
  // A migration of the VMI is requested: with migrationPolicy Yield (the default) our running
  // job is aborted (a pause: streamed data is kept) and none is started until it is over; with
  // WaitForPull a running job goes on (the migration fails and is retried until the pull ends).
  const migration = lo.migration;
  const yieldToMigration = migration !== undefined && bp.spec.migrationPolicy !== 'WaitForPull';
  // The job record was made on another launcher pod (a migration, a new pod): a job of ours ran
  // in that pod's QEMU and ended with it, which is no failure of the pull.
  const movedPod = prior.launcher?.pod !== undefined && prior.launcher.pod !== loc.pod;
  const withLauncher: BlockPullStatus = {
    ...prior,
    launcher: { pod: loc.pod, node: loc.node, container: loc.container, domain: loc.domain, ...(target !== undefined ? { target } : {}) },
  };
  const migrationWait = (base: BlockPullStatus, m: MigrationRequest): Decision => {
    // No job of ours runs: none is started while a migration is requested (libvirt would refuse
    // the migration while it runs), whatever the migrationPolicy.
    const yielded = prior.reason === 'MigrationInProgress' && (js === 'Aborting' || js === 'Aborted');
    return waitingStatus(
      obs,
      base,
      'MigrationInProgress',
      yielded
        ? `yielded to ${m.name}: the pull is paused at ${prior.progress?.percent ?? '?'} (streamed data is kept) and resumes on the VMI's launcher pod once the migration has ended`
        : `${m.message}; the pull starts once the migration has ended`,
    );
  };
  // No job of ours can run: wait for the migration without looking at libvirt (reconcile.ts does
  // not look then; the target pod may not even be reachable yet).
  if (migration !== undefined && !mayRunOurJob(js) && !bp.spec.paused && !deleting) return migrationWait(withLauncher, migration);

  // --- the hypervisor -----------------------------------------------------------------------
  if (hv === undefined) return waitingStatus(obs, withLauncher, 'HypervisorUnreachable', 'libvirt was not looked at', prior.phase ?? 'Pending');
  switch (hv.kind) {
    case 'unreachable': {
      const base = { ...withLauncher };
      const d = waitingStatus(obs, base, 'HypervisorUnreachable', hv.message, prior.phase ?? 'Pending');
      // Progressing is Unknown; judged against the prior status (waitingStatus set it False on the
      // way), so an unchanged Unknown keeps its lastTransitionTime and nothing is rewritten.
      const conditions = setCondition(
        d.status.conditions?.map((c) => (c.type === 'Progressing' ? (getCondition(prior.conditions, 'Progressing') ?? c) : c)),
        { type: 'Progressing', status: 'Unknown', reason: 'HypervisorUnreachable', message: hv.message },
        generation,
        now,
      );
      return { ...d, status: { ...d.status, conditions } };
    }
    case 'domainNotFound':
      return waitingStatus(obs, withLauncher, 'DomainNotFound', hv.message);
    case 'diskNotFound':
      return failed(obs, withLauncher, 'DiskNotFound', hv.message);
    case 'ok':
      break;
  }
  const disk = hv.disk;

  // Another block job on the disk (not a pull, or a pull of another BlockPull): wait.
  if (job !== null && !ourJob) {
    const who = jobIsPull ? `BlockPull ${obs.diskHolder ?? '?'}` : 'another program';
    return waitingStatus(obs, withLauncher, 'DiskBusy', `disk ${bp.spec.disk} (${disk.target}) is busy: a ${job.type} job of ${who} runs on it`);
  }
  if (!holdsDisk) {
    return waitingStatus(obs, withLauncher, 'DiskBusy', `disk ${bp.spec.disk} is held by BlockPull ${obs.diskHolder ?? '?'}; waiting until it ends`);
  }

  // We hold the disk: record the chain at the first look and resolve the goal.
  const firstLook = prior.backingChain?.before === undefined;
  const before = prior.backingChain?.before ?? layers(disk.chain);
  let goal: PullGoal;
  try {
    goal = firstLook ? goalOf(bp, disk.target, before) : goalFromStatus(bp, disk, before, prior.backingChain?.basePath);
  } catch (err) {
    if (isHypervisorError(err, 'InvalidBase')) return failed(obs, withLauncher, 'InvalidBase', err.message);
    throw err;
  }
  const chained: BlockPullStatus = {
    ...withLauncher,
    backingChain: {
      before,
      current: layers(disk.chain),
      ...(goal.basePath !== undefined ? { basePath: goal.basePath } : {}),
    },
  };
  const attempts = prior.attempts ?? 0;
  const retries = prior.retries ?? 0;

  // --- the disk says it is done --------------------------------------------------------------
  if (isPullComplete(job, disk, goal)) {
    const total = prior.progress?.totalBytes;
    const progress: Progress = {
      ...(total !== undefined ? { currentBytes: total, totalBytes: total } : {}),
      percent: '100%',
      bytesPerSecond: 0,
      etaSeconds: 0,
    };
    const nothing = firstLook && attempts === 0;
    const chainText = disk.chain.map((l) => l.path).join(' <- ');
    const message = nothing
      ? `nothing to do: the chain of ${disk.target} is already at its goal (${chainText})`
      : `pulled: the chain of ${disk.target} is now ${chainText}`;
    const ended = withJob({ ...chained, progress }, js === undefined ? undefined : 'Ended');
    return {
      status: withPhase(ended, { phase: 'Completed', reason: nothing ? 'NothingToDo' : 'Completed', message }, generation, now),
      action: { type: 'none' },
      requeueAfterMs: null,
    };
  }

  // --- our pull runs -------------------------------------------------------------------------
  if (ourJob) {
    const { progress, sample } = progressFrom(job, obs.previousSample, now.getTime());
    if (bandwidthError !== undefined) {
      return {
        status: withPhase(
          withJob({ ...chained, progress }, 'Aborting'),
          { phase: 'Running', reason: 'InvalidBandwidth', message: `${bandwidthError}: aborting the running job first (streamed data is kept), then Failed` },
          generation,
          now,
        ),
        action: { type: 'abort', domain: loc.domain, target: disk.target },
        requeueAfterMs: obs.pollIntervalMs,
        sample,
      };
    }
    if (bp.spec.paused) {
      return {
        status: withPhase(
          withJob({ ...chained, progress }, 'Aborting'),
          { phase: 'Paused', reason: 'Paused', message: `paused at ${progress.percent}: aborting the job, streamed data is kept` },
          generation,
          now,
        ),
        action: { type: 'abort', domain: loc.domain, target: disk.target },
        requeueAfterMs: obs.pollIntervalMs,
        sample,
      };
    }
    if (yieldToMigration) {
      return {
        status: withPhase(
          withJob({ ...chained, progress }, 'Aborting'),
          {
            phase: 'Pending',
            reason: 'MigrationInProgress',
            message: `yielding to ${migration.name}: aborting the pull at ${progress.percent} (streamed data is kept); it resumes on the VMI's launcher pod once the migration has ended`,
          },
          generation,
          now,
        ),
        action: { type: 'abort', domain: loc.domain, target: disk.target },
        requeueAfterMs: obs.pollIntervalMs,
        sample,
      };
    }
    // Adopted: running, and not started by this process (whatever the status said before).
    const adopted = obs.jobStartedHere !== true;
    const reason: Reason = adopted ? 'Adopted' : prior.phase === 'Running' && prior.reason === 'Retrying' ? 'Retrying' : 'Pulling';
    const status = withPhase(
      {
        ...withJob(chained, 'Running'),
        progress,
        attempts: Math.max(attempts, 1),
        ...(prior.startTime === undefined ? { startTime: timestamp(now) } : {}),
      },
      {
        phase: 'Running',
        reason,
        message: `${adopted ? 'adopted the running pull' : 'pulling'} ${bp.spec.disk} (${disk.target}): ${progress.percent} of ${formatBytes(progress.totalBytes ?? 0)}${bandwidthMessage(bandwidth)}${migration !== undefined ? `; ${migration.name} waits for the pull to end (migrationPolicy WaitForPull)` : ''}`,
      },
      generation,
      now,
    );
    const action: Action =
      job.bandwidth !== bandwidth ? { type: 'setBandwidth', domain: loc.domain, target: disk.target, bandwidth } : { type: 'none' };
    return { status, action, requeueAfterMs: obs.pollIntervalMs, sample };
  }

  // --- no job, chain not at its goal --------------------------------------------------------
  // What ended the last job, by the record: our abort (a pause, never a failure), or the job
  // itself (Running: ended short of the goal, a retry is due). A start recorded but not known to
  // have run (Starting: the operator stopped, or its write was lost, between recording the start
  // and its outcome) is neither: it is made again as the same attempt (counted once).
  // On another launcher pod than the record's, a Running or Aborting job ended with the old pod
  // (a migration): Aborted, never a failure.
  const lostWithPod = movedPod && (js === 'Running' || js === 'Aborting');
  const retryDue = !lostWithPod && (js === 'Running' || js === 'Ended');
  const replay = js === 'Starting';
  const settled = withJob(chained, lostWithPod ? 'Aborted' : js === 'Running' ? 'Ended' : js === 'Aborting' ? 'Aborted' : js);
  if (bandwidthError !== undefined) return failed(obs, settled, 'InvalidBandwidth', bandwidthError);
  if (bp.spec.paused) {
    return {
      status: withPhase(
        settled,
        { phase: 'Paused', reason: 'Paused', message: `paused${prior.progress?.percent ? ` at ${prior.progress.percent}` : ''}; set spec.paused to false to continue` },
        generation,
        now,
      ),
      action: { type: 'none' },
      requeueAfterMs: null,
    };
  }

  const why = obs.lastJobError !== undefined ? ` (the hypervisor said: ${obs.lastJobError})` : '';
  if (retryDue) {
    // Our job ended on its own (failed, or canceled by someone else) short of the goal.
    if (retries >= bp.spec.maxRetries) {
      return failed(
        obs,
        settled,
        'RetryLimitExceeded',
        `the pull ended short of its goal ${retries + 1} time(s)${why} (maxRetries ${bp.spec.maxRetries}); chain is ${disk.chain.map((l) => l.path).join(' <- ')}`,
      );
    }
    // Started again after a backoff, not at once: a cause that persists (a full filesystem)
    // would otherwise burn every retry within seconds.
    const delay = backoffMs(retries + 1, obs.waitRequeueMs);
    return {
      // The retry is counted here, and the job record cleared: the next look waits out the
      // backoff and starts again, never counting this ending twice.
      status: withPhase(
        { ...withJob(settled, undefined), retries: retries + 1 },
        { phase: 'Pending', reason: 'JobFailed', message: `the block job ended short of its goal${why}; retry ${retries + 1}/${bp.spec.maxRetries} after ${Math.ceil(delay / 1000)} s` },
        generation,
        now,
      ),
      action: { type: 'none' },
      requeueAfterMs: delay,
    };
  }
  if (prior.phase === 'Pending' && prior.reason === 'JobFailed' && retries > 0) {
    // The backoff after a failed job runs from the moment it was seen (Progressing went False).
    const since = Date.parse(getCondition(prior.conditions, 'Progressing')?.lastTransitionTime ?? '');
    const left = since + backoffMs(retries, obs.waitRequeueMs) - now.getTime();
    if (Number.isFinite(since) && left > 0) {
      const message =
        obs.lastJobError !== undefined && !(prior.message ?? '').includes(obs.lastJobError)
          ? `the block job ended short of its goal${why}; retry ${retries}/${bp.spec.maxRetries} after ${Math.ceil(backoffMs(retries, obs.waitRequeueMs) / 1000)} s`
          : (prior.message ?? '');
      return { status: withPhase(settled, { phase: 'Pending', reason: 'JobFailed', message }, generation, now), action: { type: 'none' }, requeueAfterMs: left };
    }
  }
  if (migration !== undefined) return migrationWait(settled, migration);
  const nextRetries = retries;
  const retrying = (replay && prior.reason === 'Retrying') || (retries > 0 && (prior.reason === 'JobFailed' || prior.reason === 'InsufficientSpace'));
  const reason: Reason = retrying ? 'Retrying' : 'Pulling';

  if (obs.slots.running >= obs.slots.maxConcurrentPulls) {
    return waitingStatus(obs, settled, 'WaitingForSlot', `${obs.slots.running} pulls run cluster-wide (limit ${obs.slots.maxConcurrentPulls})`);
  }
  if (obs.slots.runningOnNode >= obs.slots.maxPullsPerNode) {
    return waitingStatus(obs, settled, 'WaitingForSlot', `${obs.slots.runningOnNode} pulls run on node ${loc.node} (limit ${obs.slots.maxPullsPerNode})`);
  }

  // Pre-flight: the data to pull must fit, with the margin, where the active image lives.
  const short = spaceShortage(obs.space, obs.spaceMarginBytes ?? 0, obs.spaceMarginPercent ?? 0);
  if (short !== undefined) {
    const recheck = obs.spaceRecheckMs ?? obs.waitRequeueMs;
    return {
      ...waitingStatus(obs, settled, 'InsufficientSpace', `${short}${why}; checked again with backoff (${Math.ceil(obs.waitRequeueMs / 1000)} s, doubling, at most ${MAX_BACKOFF_MS / 60_000} min)`),
      requeueAfterMs: recheck,
    };
  }

  // The start is recorded (Starting, counted in attempts) before it is made; confirmed after.
  const startBase: BaseRef | undefined = goal.basePath !== undefined ? { path: goal.basePath } : undefined;
  const status = withPhase(
    {
      ...withJob(settled, 'Starting'),
      attempts: replay ? Math.max(attempts, 1) : attempts + 1,
      retries: nextRetries,
      progress: { currentBytes: 0, totalBytes: prior.progress?.totalBytes ?? 0, percent: prior.progress?.percent ?? '0%', bytesPerSecond: 0 },
      ...(prior.startTime === undefined ? { startTime: timestamp(now) } : {}),
    },
    {
      phase: 'Running',
      reason,
      message: `${prior.reason === 'MigrationInProgress' ? `resumed after the migration on pod ${loc.pod} (node ${loc.node}): ` : ''}${reason === 'Retrying' ? `retry ${nextRetries}/${bp.spec.maxRetries}: ` : ''}started pulling ${bp.spec.disk} (${disk.target}) ${goal.basePath !== undefined ? `down to ${goal.basePath}` : 'into a single image'}${bandwidthMessage(bandwidth)}`,
    },
    generation,
    now,
  );
  return {
    status,
    action: { type: 'startPull', domain: loc.domain, target: disk.target, ...(startBase !== undefined ? { base: startBase } : {}), bandwidth },
    afterAction: withJob(status, 'Running'),
    requeueAfterMs: obs.pollIntervalMs,
  };
}

/**
 * After a failed action: the status to write. Typed hypervisor errors become reasons; other
 * errors leave the status and let the work queue retry with backoff.
 */
export function decideActionError(obs: Observation, decided: Decision, err: unknown): Decision | undefined {
  const d = decideActionErrorUnbounded(obs, decided, err);
  return d === undefined ? undefined : { ...d, status: boundStatus(d.status) };
}

function decideActionErrorUnbounded(obs: Observation, decided: Decision, err: unknown): Decision | undefined {
  const { bp, now } = obs;
  const prior: BlockPullStatus = bp.status ?? {};
  const generation = bp.metadata.generation;
  if (decided.action.type !== 'startPull') return undefined;
  // The job was not started: do not count it, and no job of ours runs. A replayed start
  // (Starting) was counted when it was first recorded: that count is taken back too.
  const replayed = recordedJobState(prior) === 'Starting';
  const attempts = Math.max(0, (prior.attempts ?? 0) - (replayed ? 1 : 0));
  const priorRetries = Math.max(0, (prior.retries ?? 0) - (replayed && prior.reason === 'Retrying' ? 1 : 0));
  const base: BlockPullStatus = withJob({ ...decided.status, attempts, retries: priorRetries }, undefined);
  if (isHypervisorError(err, 'DiskBusy')) {
    return {
      status: withPhase({ ...base, phase: prior.phase ?? 'Pending' }, { phase: 'Pending', reason: 'DiskBusy', message: err.message }, generation, now),
      action: { type: 'none' },
      requeueAfterMs: obs.waitRequeueMs,
    };
  }
  if (isHypervisorError(err, 'InvalidBase')) {
    return { status: withPhase(base, { phase: 'Failed', reason: 'InvalidBase', message: err.message }, generation, now), action: { type: 'none' }, requeueAfterMs: null };
  }
  if (isHypervisorError(err, 'DiskNotFound')) {
    return { status: withPhase(base, { phase: 'Failed', reason: 'DiskNotFound', message: err.message }, generation, now), action: { type: 'none' }, requeueAfterMs: null };
  }
  if (isHypervisorError(err, 'DomainNotFound') || isHypervisorError(err, 'Unreachable')) {
    const reason: Reason = isHypervisorError(err, 'DomainNotFound') ? 'DomainNotFound' : 'HypervisorUnreachable';
    return {
      status: withPhase(base, { phase: 'Pending', reason, message: (err as Error).message }, generation, now),
      action: { type: 'none' },
      requeueAfterMs: obs.waitRequeueMs,
    };
  }
  // Any other failure to start (virsh error, job failed at once): counts against maxRetries.
  const message = `starting the pull failed: ${err instanceof Error ? err.message : String(err)}`;
  const retries = priorRetries;
  if (retries >= bp.spec.maxRetries) {
    return { status: withPhase(base, { phase: 'Failed', reason: 'JobFailed', message }, generation, now), action: { type: 'none' }, requeueAfterMs: null };
  }
  return {
    status: withPhase({ ...base, retries: retries + 1 }, { phase: 'Pending', reason: 'JobFailed', message: `${message} (retry ${retries + 1}/${bp.spec.maxRetries})` }, generation, now),
    action: { type: 'none' },
    requeueAfterMs: obs.waitRequeueMs,
  };
}
