/**
 * Reconcile one BlockPull: observe -> decide (pure, decide.ts) -> act (at most one side effect)
 * -> write status (status subresource only, throttled for progress).
 *
 * - observe: the BlockPull from the informer cache, or the object our own last write returned
 *   when that is newer (the cache may lag our own writes; a GET only when the cache has no such
 *   object), its VMI and the launcher pods from informer caches (indexed: no scan of all
 *   BlockPulls), then the disk's chain and block job through the driver.
 *   While a job runs only `virsh blockjob` is read (the chain does not change during a pull).
 * - act: add/remove the finalizer, start a pull, set its speed, or abort it. A start or an abort
 *   is recorded in the status first (status.job, the persisted intent), guarded by the
 *   resourceVersion that was read: if that write conflicts (the user changed the object
 *   meanwhile) nothing is done and the fresh object is reconciled again.
 * - status: written by the StatusWriter (status-writer.ts): a transition at once, progress
 *   throttled, guarded by the resourceVersion; the outcome of an action is a fact, written again
 *   on the fresh object after a conflict. The Events to record are chosen by event-choice.ts.
 * - other BlockPulls (the disk holder, slot counting, whom to wake when a disk or a slot is
 *   released) are read through the cache's indexes (blockpulls.ts).
 * - while a job runs: requeue every pollIntervalMs, and the driver's block-job events wake the
 *   BlockPull at once, so the final status lands within a second of the job's end.
 * - the look at libvirt goes through an ObserveGate (observe-gate.ts): a worker waits at most
 *   observeTimeoutMs for it and one look per launcher runs at a time, so a hanging launcher
 *   shows HypervisorUnreachable on its own BlockPulls and delays no one else.
 * - an action (start, bandwidth change, abort) is bounded by actionTimeoutMs: past it, its
 *   command is ended and the call fails with HypervisorError Timeout (a start: decide.ts records
 *   it Unanswered, and the next look at the disk tells whether it ran).
 * - slots: a start takes its slot in the SlotLedger (slots.ts) synchronously, right after the
 *   slot check, so concurrent workers never exceed the limits; the check includes the namespace's
 *   fair share (decide.ts fairShare), and waiters are woken round-robin by namespace.
 */
import { ApiException } from '@kubernetes/client-node';
import { API_VERSION, BLOCKPULL_REF, FINALIZER, KIND, isTerminal, type BlockPull } from '../api/types.ts';
import { HypervisorError, isHypervisorError, type HypervisorErrorCode } from '../hypervisor/errors.ts';
import type { BlockJobDriver, EventSubscription } from '../hypervisor/types.ts';
import type { EventRecorder, InvolvedObject } from '../kube/events.ts';
import { describeApiError, isNotFound, setFinalizers, type KubeClients } from '../kube/client.ts';
import type { OperatorMetrics } from '../kube/metrics.ts';
import { forBlockPullKey, type Logger } from '../log.ts';
import { ephemeralStorageLimit, locateLauncher, vmiHasDisk, VmiSchema, type LauncherLookup, type LauncherPod } from '../kubevirt/launcher.ts';
import { LauncherUnavailableError, type DriverProvider } from '../kubevirt/transport.ts';
import { BlockPulls, splitKey, type CacheReader } from './blockpulls.ts';
import {
  backoffMs,
  decide,
  decideActionError,
  mayRunOurJob,
  recordedJobState,
  type Action,
  type Decision,
  type HypervisorObservation,
  type Observation,
  type ProgressSample,
  type SlotUsage,
  type SpaceObservation,
} from './decide.ts';
import { chooseEvents } from './event-choice.ts';
import { POD_BY_VMI_UID } from './indexes.ts';
import { ObserveGate } from './observe-gate.ts';
import { roundRobinByNamespace, SlotLedger } from './slots.ts';
import { blockPullKey, StatusWriter } from './status-writer.ts';

/** Default of ReconcilerOptions.observeTimeoutMs (BLOCKPULL_OBSERVE_TIMEOUT_MS). */
export const DEFAULT_OBSERVE_TIMEOUT_MS = 1_000;

/**
 * Default of ReconcilerOptions.actionTimeoutMs (BLOCKPULL_ACTION_TIMEOUT_MS): `virsh blockpull`,
 * `blockjob --abort --async` and `--bandwidth` return at once on a healthy libvirt (they do not
 * wait for the job); 10 s leaves room for a slow pods/exec under load.
 */
export const DEFAULT_ACTION_TIMEOUT_MS = 10_000;

/**
 * Waiting reasons that a watch event ends (the VMI or its launcher pod appears or changes, a slot
 * is released): their requeue is only a safety net, not a poll. Not DiskBusy (the holder may be
 * another program's block job), nor a launcher the transport cannot reach (no event says when).
 */
const EVENT_WOKEN_REASONS: ReadonlySet<string> = new Set(['VMINotFound', 'VMINotRunning', 'LauncherNotFound', 'MigrationInProgress', 'WaitingForSlot']);

/** Default of ReconcilerOptions.safetyResyncMs. */
export const DEFAULT_SAFETY_RESYNC_MS = 10 * 60_000;

export interface ReconcilerOptions {
  readonly clients: KubeClients;
  readonly blockPulls: CacheReader;
  readonly vmis: CacheReader;
  readonly pods: CacheReader;
  /** VirtualMachineInstanceMigrations (kubevirt.io/v1); absent: only the VMI's status tells of a migration. */
  readonly migrations?: CacheReader;
  readonly drivers: DriverProvider;
  readonly events?: EventRecorder;
  readonly metrics?: OperatorMetrics;
  readonly logger: Logger;
  readonly pollIntervalMs: number;
  readonly waitRequeueMs?: number;
  readonly statusUpdateIntervalMs: number;
  readonly maxConcurrentPulls: number;
  readonly maxPullsPerNode: number;
  /** How long a worker waits for a read-only look at libvirt (default DEFAULT_OBSERVE_TIMEOUT_MS). */
  readonly observeTimeoutMs?: number;
  /** How long an action (start, bandwidth change, abort) may take before it is ended (default DEFAULT_ACTION_TIMEOUT_MS). */
  readonly actionTimeoutMs?: number;
  /** Pre-flight: bytes, and percent of the filesystem, that must stay free after the data to pull (default 0). */
  readonly spaceMarginBytes?: number;
  readonly spaceMarginPercent?: number;
  /** Wake a BlockPull (the work queue's add). */
  readonly enqueue: (key: string) => void;
  /** Requeue of a BlockPull waiting for an event (EVENT_WOKEN_REASONS), default DEFAULT_SAFETY_RESYNC_MS. */
  readonly safetyResyncMs?: number;
  readonly now?: () => Date;
}

export interface ReconcileResult {
  readonly requeueAfterMs: number | null;
}

/**
 * What this process keeps per BlockPull between reconciles (status writes apart: status-writer.ts).
 * All of it can be lost (restart) without harm: the truth is the disk.
 */
interface VolatilePullState {
  /** The last job sample, for the rate and the bytes-streamed counter. */
  sample?: ProgressSample;
  subscription?: { domain: string; driver: BlockJobDriver; sub: EventSubscription };
  /** The job this process asked libvirt to start (jobKey), until a look finds the disk without a job. */
  started?: string;
  /** The job this process adopted and has announced (Event + log line). */
  adopted?: string;
  /** Why our last job failed (QEMU's error, from the driver's events); cleared at each start. */
  lastJobError?: string;
  /** Called when lastJobError arrives (a reconcile waiting for it, see #jobError). */
  onJobError?: () => void;
  /** The last pre-flight that found too little space, how many did in a row, and when to measure again. */
  space?: { observation: SpaceObservation; shortChecks: number; nextAtMs: number; limits: string };
}

/** Identifies one job: the launcher pod, the domain and the disk target. */
function jobKey(pod: string, domain: string, target: string): string {
  return `${pod}|${domain}|${target}`;
}

/** How recording the intent and acting ended (#recordIntentAndAct). */
type ActOutcome = { kind: 'done'; result: ReconcileResult } | { kind: 'finalizerAdded' } | { kind: 'acted'; final: Decision; stored: BlockPull };

/** A reconcile pass that only added our finalizer: the next pass follows at once. */
const FINALIZER_ADDED = Symbol('finalizer added');

/** How long a reconcile that sees our job gone short of its goal waits for the failure's reason. */
const JOB_ERROR_WAIT_MS = 1_000;

/** A start that failed with these codes may still have started the job (its answer was lost, or it was ended midway). */
const MAY_HAVE_STARTED: ReadonlySet<HypervisorErrorCode> = new Set(['Unreachable', 'CommandFailed', 'JobFailed', 'Timeout']);

/**
 * The BlockPull waits for a slot only for its namespace's fair share (the cluster and the node had
 * room): the namespaces wanting slots change without a slot being released, so it looks again
 * after its requeue delay instead of waiting for a release.
 */
function fairShareWait(slots: SlotUsage, final: Decision): boolean {
  return final.status.reason === 'WaitingForSlot' && slots.running < slots.maxConcurrentPulls && slots.runningOnNode < slots.maxPullsPerNode;
}

/** What a HypervisorError during the look means for decide(); any other code: unreachable. */
const LOOK_ERROR_KIND: Partial<Readonly<Record<HypervisorErrorCode, 'domainNotFound' | 'diskNotFound'>>> = {
  DomainNotFound: 'domainNotFound',
  DiskNotFound: 'diskNotFound',
};

export class Reconciler {
  readonly #options: ReconcilerOptions;
  readonly #volatile = new Map<string, VolatilePullState>();
  /** Slots this process holds: pulls it knows to be Running (the cache may lag) and starts in flight. */
  readonly #slots = new SlotLedger();
  /** The namespace whose waiters were woken first at the last slot release (round-robin). */
  #wakeCursor: string | undefined;
  readonly #writer: StatusWriter;
  readonly #blockPulls: BlockPulls;
  /** Counts slot and disk releases: a BlockPull deciding to wait for one while one is released is looked at again. */
  #releases = 0;

  readonly #gate: ObserveGate<HypervisorObservation>;

  constructor(options: ReconcilerOptions) {
    this.#options = options;
    this.#writer = new StatusWriter({
      clients: options.clients,
      statusUpdateIntervalMs: options.statusUpdateIntervalMs,
      enqueue: options.enqueue,
      now: () => this.#now(),
      ...(options.metrics !== undefined ? { metrics: options.metrics } : {}),
    });
    this.#blockPulls = new BlockPulls(options.blockPulls, this.#writer, options.clients);
    this.#gate = new ObserveGate<HypervisorObservation>({
      budgetMs: options.observeTimeoutMs ?? DEFAULT_OBSERVE_TIMEOUT_MS,
      wake: (key) => options.enqueue(key),
      usableLate: (h) => h.kind !== 'unreachable',
    });
  }

  #now(): Date {
    return this.#options.now?.() ?? new Date();
  }

  #stateOf(key: string): VolatilePullState {
    let m = this.#volatile.get(key);
    if (m === undefined) {
      m = {};
      this.#volatile.set(key, m);
    }
    return m;
  }

  /** Forget a BlockPull (deleted): stop its event subscription, drop its per-pull metrics, give back its slot. */
  forget(key: string, wakeWaiters = true): void {
    const m = this.#volatile.get(key);
    m?.subscription?.sub.stop();
    this.#volatile.delete(key);
    if (wakeWaiters) this.#releaseSlot(key);
    else this.#slots.release(key);
    const { namespace, name } = splitKey(key);
    this.#options.metrics?.removePull(namespace, name);
    this.#writer.forget(key);
  }

  /**
   * The informer cache now holds `key` at `resourceVersion` (a watch update). True, once, when it
   * is our own last status write coming back: the reconcile that wrote it has already requeued
   * itself, so the controller need not wake the BlockPull for it (issue 15). See StatusWriter.
   */
  isOwnWrite(key: string, resourceVersion: string | undefined): boolean {
    return this.#writer.isOwnWrite(key, resourceVersion);
  }

  /** Stop every event subscription (shutdown). Running jobs are left alone. */
  stop(): void {
    for (const key of [...this.#volatile.keys()]) this.forget(key, false);
  }

  /** Remember what a metadata write of ours stored (the cache may not have it yet). */
  #wroteMetadata(raw: unknown): void {
    const p = this.#blockPulls.parse(raw);
    if (!(p instanceof Error)) this.#writer.wroteMetadata(p);
  }

  /**
   * The BlockPull informer's transform: the object to cache is the parsed one (one copy per
   * BlockPull, not the API server's object plus its parsed copy: issue 11, 10,000 BlockPulls);
   * one that does not parse is cached as it came, and reported when reconciled.
   */
  cacheForm<T extends object>(raw: T): T {
    return this.#blockPulls.cacheForm(raw);
  }

  /**
   * QEMU's reason our job failed, waiting at most `ms` for it (it may trail libvirt's event a
   * little): resolved by the driver's event itself, not by polling.
   */
  #jobError(key: string, ms: number): Promise<string | undefined> {
    const state = this.#stateOf(key);
    if (state.lastJobError !== undefined) return Promise.resolve(state.lastJobError);
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        if (state.onJobError === done) delete state.onJobError;
        resolve(state.lastJobError);
      };
      const timer = setTimeout(done, ms);
      state.onJobError = done;
    });
  }

  /**
   * One reconcile of `key`. A pass that only added our finalizer is followed at once by the next
   * (which looks at libvirt and may start the pull), not sent behind the whole queue: the work
   * queue never hands out a key twice at once, so going on here is safe.
   */
  async reconcile(key: string): Promise<ReconcileResult> {
    const first = await this.#reconcilePass(key);
    if (first !== FINALIZER_ADDED) return first;
    const second = await this.#reconcilePass(key);
    // Only if the second pass did not see the finalizer either (it would add it again): later, from the queue.
    return second === FINALIZER_ADDED ? { requeueAfterMs: 0 } : second;
  }

  /**
   * Observe -> decide -> record the intent -> act -> remember -> write status and Events -> wake
   * others -> requeue; or FINALIZER_ADDED when the pass only added our finalizer.
   */
  async #reconcilePass(key: string): Promise<ReconcileResult | typeof FINALIZER_ADDED> {
    const log = forBlockPullKey(this.#options.logger, key);
    const read = await this.#blockPulls.read(key);
    if (read.kind === 'gone') {
      log.debug('BlockPull is gone');
      this.forget(key);
      return { requeueAfterMs: null };
    }
    const releasesAtStart = this.#releases;
    if (read.kind === 'invalid') {
      log.error({ error: read.error.message }, 'BlockPull does not match the API schema; ignoring it');
      this.#options.metrics?.reconcileErrors.inc({ reason: 'InvalidObject' });
      return { requeueAfterMs: null };
    }
    const bp = read.bp;

    const observed = await this.#observe(bp, log);
    const { driver } = observed;
    const decided = await this.#decide(key, bp, observed.obs, driver, log);
    const { obs, decision } = this.#takeSlot(key, bp, decided.obs, decided.decision);
    log.debug({ phase: decision.status.phase, reason: decision.status.reason, action: decision.action.type }, 'decided');

    let acted: ActOutcome;
    try {
      acted = await this.#recordIntentAndAct(key, bp, obs, decision, driver, log);
    } catch (err) {
      // The start was not made, or failed in a way the status does not record: its slot is free.
      if (decision.action.type === 'startPull') this.#releaseSlot(key);
      throw err;
    }
    if (acted.kind === 'finalizerAdded') return FINALIZER_ADDED;
    if (acted.kind === 'done') {
      if (decision.action.type === 'startPull') this.#releaseSlot(key);
      return acted.result;
    }
    const { final, stored } = acted;
    const heldSlot = this.#slots.has(key);
    const adoptedNow = this.#remember(key, bp, final, log);

    const afterFinalizer = decision.action.type === 'addFinalizer' ? (this.#writer.lastWritten(key) ?? (await this.#writer.fresh(bp))) : stored;
    // The outcome of an action taken (start confirmed or refused) is a fact: never dropped on a conflict.
    const outcome = final !== decision ? final.status : decision.afterAction;
    await this.#writer.write(afterFinalizer, outcome ?? final.status, log, outcome !== undefined);
    this.#recordEvents(bp, decision, final, adoptedNow);
    this.#watchJobEvents(key, final, driver);
    this.#wakeOnRelease(key, bp, final, heldSlot);
    return this.#requeue(key, final, observed.polled === true || fairShareWait(obs.slots, final), releasesAtStart);
  }

  /** What this process counts against the slot limits for `key` now: the cache, our writes, our ledger. */
  #slotUsage(key: string, namespace: string, node: string): SlotUsage {
    const running = this.#blockPulls.runningOthers(key, this.#slots.entries());
    let runningOnNode = 0;
    let runningInNamespace = 0;
    for (const [k, n] of running) {
      if (n === node) runningOnNode++;
      if (splitKey(k).namespace === namespace) runningInNamespace++;
    }
    const wanting = this.#blockPulls.namespacesWaitingForSlot();
    wanting.add(namespace);
    return {
      running: running.size,
      runningOnNode,
      runningInNamespace,
      namespacesWanting: wanting.size,
      maxConcurrentPulls: this.#options.maxConcurrentPulls,
      maxPullsPerNode: this.#options.maxPullsPerNode,
    };
  }

  /**
   * A start takes its slot here, synchronously (no await between the check and the hold), with
   * the slots counted again now: between the observation and this point other workers may have
   * started pulls. Counted again, the start may have to wait (WaitingForSlot) after all.
   */
  #takeSlot(key: string, bp: BlockPull, obs: Observation, decision: Decision): { obs: Observation; decision: Decision } {
    if (decision.action.type !== 'startPull' || obs.launcher?.kind !== 'found') return { obs, decision };
    const node = obs.launcher.launcher.node;
    const now = { ...obs, slots: this.#slotUsage(key, bp.metadata.namespace, node) };
    const again = decide(now);
    if (again.action.type === 'startPull') this.#slots.hold(key, node);
    return { obs: now, decision: again };
  }

  /** Give back the slot of `key` if it holds one, and wake the BlockPulls waiting for one. */
  #releaseSlot(key: string): void {
    if (!this.#slots.release(key)) return;
    this.#releases++;
    this.#wakeWaiters();
  }

  /** Wake the BlockPulls waiting for a slot, round-robin by namespace (also those whose wait the cache has not seen yet). */
  #wakeWaiters(): void {
    const keys = roundRobinByNamespace(this.#blockPulls.waitingForSlot(), this.#wakeCursor);
    if (keys[0] !== undefined) this.#wakeCursor = splitKey(keys[0]).namespace;
    for (const k of keys) this.#options.enqueue(k);
  }

  /**
   * decide(), again with what it lacked: QEMU's reason when our job ended short of its goal, the
   * pre-flight space measurement before a start.
   */
  async #decide(key: string, bp: BlockPull, observation: Observation, driver: BlockJobDriver | undefined, log: Logger): Promise<{ obs: Observation; decision: Decision }> {
    let obs = observation;
    let decision = decide(obs);
    const state = this.#stateOf(key);
    const jobFailed = decision.status.reason === 'JobFailed' || decision.status.reason === 'RetryLimitExceeded';
    if (bp.status?.phase === 'Running' && jobFailed && driver !== undefined && obs.lastJobError === undefined) {
      // Our job ended short of its goal: QEMU's reason may trail libvirt's event a little, or
      // have arrived between the observation and now (then #jobError returns it at once).
      const error = await this.#jobError(key, JOB_ERROR_WAIT_MS);
      if (error !== undefined) {
        obs = { ...obs, lastJobError: error };
        decision = decide(obs);
      }
    }
    if (decision.action.type === 'startPull' && driver !== undefined) {
      // Pre-flight before every start: decide again with the space measured. While short, the
      // space is measured again only when its backoff has run out (5 s, 10 s, ... 5 min); a
      // reconcile woken meanwhile (e.g. by our own status write) reuses the last measurement.
      const nowMs = this.#now().getTime();
      const last = state.space;
      const limits = this.#spaceLimits(bp, obs);
      if (last !== undefined && bp.status?.reason === 'InsufficientSpace' && nowMs < last.nextAtMs && last.limits === limits) {
        obs = { ...obs, space: last.observation, spaceRecheckMs: last.nextAtMs - nowMs };
        decision = decide(obs);
      } else {
        const n = (last?.shortChecks ?? 0) + 1;
        const recheck = backoffMs(n, obs.waitRequeueMs);
        const observation = await this.#measureSpace(bp, obs, decision, driver, log);
        obs = { ...obs, space: observation, spaceRecheckMs: recheck };
        decision = decide(obs);
        if (decision.status.reason === 'InsufficientSpace') state.space = { observation, shortChecks: n, nextAtMs: nowMs + recheck, limits };
      }
      if (decision.status.reason !== 'InsufficientSpace') delete state.space;
    }
    return { obs, decision };
  }

  /**
   * Persisted intent: a start or an abort is recorded before it is made (a conflicting write: act
   * on nothing, look again). Then the action; a failure becomes decideActionError's decision.
   * `done`: the reconcile ends here (intent not recorded, finalizer removed); `finalizerAdded`: the next pass follows.
   */
  async #recordIntentAndAct(
    key: string,
    bp: BlockPull,
    obs: Observation,
    decision: Decision,
    driver: BlockJobDriver | undefined,
    log: Logger,
  ): Promise<ActOutcome> {
    let stored = bp;
    if (decision.action.type === 'startPull' || decision.action.type === 'abort') {
      const w = await this.#writer.write(bp, decision.status, log);
      if (w.kind === 'conflict' || w.kind === 'gone') {
        log.debug({ action: decision.action.type }, 'intent not recorded (the object changed or is gone); not acting');
        return { kind: 'done', result: { requeueAfterMs: null } };
      }
      if (w.kind === 'written') stored = w.bp;
    }

    let final: Decision = decision;
    let actionError: unknown;
    const startKey =
      decision.action.type === 'startPull' ? jobKey(decision.status.launcher?.pod ?? '', decision.action.domain, decision.action.target) : undefined;
    // Recorded before asking: a start whose answer is lost (timeout) may still have started the job.
    if (startKey !== undefined) this.#stateOf(key).started = startKey;
    try {
      await this.#act(bp, decision.action, driver, log);
    } catch (err) {
      actionError = err;
      // Refused for sure: nothing was started.
      if (startKey !== undefined && isHypervisorError(err) && !MAY_HAVE_STARTED.has(err.code)) {
        delete this.#stateOf(key).started;
      }
      const mapped = decideActionError(obs, decision, err);
      if (mapped === undefined) {
        log.warn({ action: decision.action.type, error: describeError(err) }, 'action failed');
        throw err;
      }
      log.warn({ action: decision.action.type, reason: mapped.status.reason, error: describeError(err) }, 'action failed');
      final = mapped;
    }
    if (decision.action.type === 'removeFinalizer' && actionError === undefined) {
      this.forget(key);
      return { kind: 'done', result: { requeueAfterMs: null } };
    }
    if (decision.action.type === 'addFinalizer' && actionError === undefined && this.#writer.lastWritten(key) !== undefined) {
      // The next pass (on the object the finalizer patch returned) looks at libvirt and writes the
      // status; a "Created" status before it would be one more write each.
      return { kind: 'finalizerAdded' };
    }
    return { kind: 'acted', final, stored };
  }

  /**
   * Remember the outcome in this process: the job sample (bytes streamed), whether it runs (slots,
   * per-pull metrics), and a job adopted now (announced once). True when adopted now.
   */
  #remember(key: string, bp: BlockPull, final: Decision, log: Logger): boolean {
    const { namespace, name } = splitKey(key);
    const state = this.#stateOf(key);
    if (final.sample !== undefined) {
      const delta = state.sample !== undefined ? final.sample.cur - state.sample.cur : 0;
      if (delta > 0) this.#options.metrics?.bytesStreamed.inc(delta);
      state.sample = final.sample;
    }
    if (final.status.phase !== 'Running') state.sample = undefined;
    // Running holds a slot; anything else gives it back (its waiters are woken by #wakeOnRelease).
    if (final.status.phase === 'Running') this.#slots.hold(key, final.status.launcher?.node ?? '');
    else this.#slots.release(key);
    // Per-pull series only while Running (bounded cardinality; see metrics.ts).
    if (final.status.phase === 'Running') this.#options.metrics?.setRunningPull(namespace, name, final.status.progress ?? {}, this.#now().getTime());
    else this.#options.metrics?.removePull(namespace, name);

    // A job this process did not start, found running: say so once (a new leader takes over).
    const launched = final.status.launcher;
    if (final.status.phase !== 'Running' || final.status.reason !== 'Adopted' || launched?.target === undefined) return false;
    const jk = jobKey(launched.pod ?? '', launched.domain ?? '', launched.target);
    if (state.adopted === jk) return false;
    state.adopted = jk;
    log.info(
      { launcherPod: launched.pod, domain: launched.domain, target: launched.target, previousPhase: bp.status?.phase, previousReason: bp.status?.reason },
      'adopted a running block pull job this process did not start (e.g. after a leader change)',
    );
    return true;
  }

  /** A slot or the disk released: wake the BlockPulls waiting for it. `heldSlot`: this process held a slot for it before this pass's outcome. */
  #wakeOnRelease(key: string, bp: BlockPull, final: Decision, heldSlot: boolean): void {
    if ((bp.status?.phase === 'Running' || heldSlot) && final.status.phase !== 'Running') {
      this.#releases++;
      this.#wakeWaiters();
    }
    if (!isTerminal(bp.status?.phase) && isTerminal(final.status.phase)) {
      // Wake the BlockPulls waiting for this disk.
      this.#releases++;
      for (const other of this.#blockPulls.othersOnDisk(bp)) this.#options.enqueue(blockPullKey(other));
      this.#volatile.get(key)?.subscription?.sub.stop();
      delete this.#stateOf(key).subscription;
    }
  }

  /** When to look again. */
  #requeue(key: string, final: Decision, polled: boolean, releasesAtStart: number): ReconcileResult {
    // While our job runs, its block-job events (or the driver's fallback poller) wake the BlockPull
    // when it ends: poll only as often as progress is written. Each poll is a virsh process, a libvirt
    // query of QEMU and an API GET next to the running job (issue 15).
    if (final.status.phase === 'Running' && final.requeueAfterMs !== null && this.#volatile.get(key)?.subscription !== undefined) {
      return { requeueAfterMs: Math.max(final.requeueAfterMs, this.#options.statusUpdateIntervalMs) };
    }
    // Waiting for something a watch event reports (the controller wakes it): no poll, a safety net.
    if (final.requeueAfterMs !== null && final.action.type === 'none' && final.status.phase === 'Pending' && EVENT_WOKEN_REASONS.has(final.status.reason ?? '') && !polled) {
      // A slot released while this reconcile ran may have missed waking it: look again now.
      if (this.#releases !== releasesAtStart && final.status.reason === 'WaitingForSlot') return { requeueAfterMs: 0 };
      return { requeueAfterMs: Math.max(final.requeueAfterMs, this.#options.safetyResyncMs ?? DEFAULT_SAFETY_RESYNC_MS) };
    }
    return { requeueAfterMs: final.requeueAfterMs };
  }

  /**
   * The observation, and the driver that made it (undefined when libvirt was not reached): the
   * action and the event subscription of this reconcile use that driver and no other, so a
   * driver of a launcher pod that is gone is never reused.
   */
  async #observe(bp: BlockPull, log: Logger): Promise<{ obs: Observation; driver?: BlockJobDriver; polled?: boolean }> {
    const key = blockPullKey(bp);
    const state = this.#volatile.get(key);
    const base = {
      now: this.#now(),
      bp,
      // Our own copy (maybe newer than the cache's) replaces the cached one.
      diskHolder: this.#blockPulls.diskHolder(bp),
      pollIntervalMs: this.#options.pollIntervalMs,
      waitRequeueMs: this.#options.waitRequeueMs ?? 5_000,
      spaceMarginBytes: this.#options.spaceMarginBytes ?? 0,
      spaceMarginPercent: this.#options.spaceMarginPercent ?? 0,
      ...(state?.lastJobError !== undefined ? { lastJobError: state.lastJobError } : {}),
      ...(state?.sample !== undefined ? { previousSample: state.sample } : {}),
    };
    const deleting = bp.metadata.deletionTimestamp !== undefined && bp.metadata.deletionTimestamp !== null;
    const slotsNone: SlotUsage = {
      running: 0,
      runningOnNode: 0,
      runningInNamespace: 0,
      namespacesWanting: 1,
      maxConcurrentPulls: this.#options.maxConcurrentPulls,
      maxPullsPerNode: this.#options.maxPullsPerNode,
    };
    if (isTerminal(bp.status?.phase) && !deleting) return { obs: { ...base, slots: slotsNone } };
    const ns = bp.metadata.namespace;
    const rawVmi = this.#options.vmis.get(ns, bp.spec.vmiName);
    const vmiUid = (rawVmi as { metadata?: { uid?: unknown } } | undefined)?.metadata?.uid;
    // Only the pods claiming this VMI (indexed by its uid), not every pod of the namespace.
    const pods =
      this.#options.pods.byIndex !== undefined && typeof vmiUid === 'string' ? this.#options.pods.byIndex(POD_BY_VMI_UID, `${ns}/${vmiUid}`) : this.#options.pods.list(ns);
    // Being deleted: a launcher pod that terminates still runs our job until its containers stop,
    // so it is looked at for the abort (decide() starts nothing through it).
    let launcher: LauncherLookup = locateLauncher(ns, bp.spec.vmiName, rawVmi, pods, this.#options.migrations?.list(ns) ?? [], { terminating: deleting });
    if (launcher.kind !== 'found') return { obs: { ...base, launcher, slots: slotsNone } };
    // Without our finalizer decide() adds it (the launcher is found) or lets go (deleting): nothing to read from libvirt yet.
    if (!(bp.metadata.finalizers ?? []).includes(FINALIZER)) return { obs: { ...base, launcher, slots: slotsNone } };
    const launcherPod = launcher.launcher;

    // Slots: Running BlockPulls other than this one, cluster-wide, on the launcher's node, in this
    // namespace (counted again when a start takes its slot, #takeSlot).
    const slots = this.#slotUsage(key, ns, launcherPod.node);

    // A migration is requested and no job of ours can run: decide() waits for it without libvirt.
    if (launcher.migration !== undefined && !mayRunOurJob(recordedJobState(bp.status)) && !bp.spec.paused) {
      return { obs: { ...base, launcher, slots } };
    }

    const vmi = VmiSchema.safeParse(rawVmi);
    if (vmi.success && vmiHasDisk(vmi.data, bp.spec.disk) === false) {
      const names = vmi.data.spec?.domain?.devices?.disks?.map((d) => d.name).join(', ') ?? '';
      return {
        obs: {
          ...base,
          launcher,
          slots,
          hypervisor: { kind: 'diskNotFound', message: `VMI ${ns}/${bp.spec.vmiName} has no disk ${bp.spec.disk} (disks: ${names})` },
        },
      };
    }

    let driver: BlockJobDriver;
    try {
      driver = await this.#options.drivers.driverFor(launcherPod);
    } catch (err) {
      if (err instanceof LauncherUnavailableError) {
        launcher = { kind: 'launcherNotFound', message: err.message };
        // The transport found no way in (no watch event says when it will): polled as before.
        return { obs: { ...base, launcher, slots }, polled: true };
      }
      throw err;
    }
    const looked = await this.#gate.observe(driver, `pod ${ns}/${launcherPod.pod}`, key, () => this.#observeHypervisor(bp, launcherPod, driver, log));
    if (looked.kind === 'waiting') {
      log.debug({ launcherPod: launcherPod.pod, detail: looked.detail }, 'not waiting on libvirt');
      // No driver: nothing is done through a launcher that did not answer this time.
      return { obs: { ...base, launcher, slots, hypervisor: { kind: 'unreachable', message: looked.message } } };
    }
    const hypervisor = looked.value;
    let jobStartedHere = false;
    if (hypervisor.kind === 'ok') {
      const pullState = this.#stateOf(key);
      const jk = jobKey(launcherPod.pod, launcherPod.domain, hypervisor.disk.target);
      if (hypervisor.job === null) {
        // No job on the disk: whatever this process started or adopted there has ended.
        if (pullState.started === jk) delete pullState.started;
        if (pullState.adopted === jk) delete pullState.adopted;
      }
      jobStartedHere = pullState.started === jk;
    }
    return { obs: { ...base, launcher, slots, hypervisor, jobStartedHere }, driver };
  }

  async #observeHypervisor(bp: BlockPull, launcherPod: LauncherPod, driver: BlockJobDriver, log: Logger): Promise<HypervisorObservation> {
    const st = bp.status;
    const domain = launcherPod.domain;
    try {
      // While our job runs the chain does not change: one `virsh blockjob` per poll (on the pod
      // it runs in: after a migration the chain is read anew).
      const target = st?.launcher?.target;
      const current = st?.backingChain?.current;
      if (st?.phase === 'Running' && st.launcher?.domain === domain && st.launcher.pod === launcherPod.pod && target !== undefined && current !== undefined) {
        const job = await driver.getJob(domain, target);
        if (job !== null) return { kind: 'ok', disk: { target, chain: current.map((l) => ({ ...l })) }, job };
        // Gone: the chain read after it is final (no second `virsh blockjob` at the job's end).
        const disk = await driver.getDisk(domain, { name: bp.spec.disk });
        if (disk.target === target) return { kind: 'ok', disk, job: null };
      }
      const disk = await driver.getDisk(domain, { name: bp.spec.disk });
      const job = await driver.getJob(domain, disk.target);
      return { kind: 'ok', disk, job };
    } catch (err) {
      if (err instanceof HypervisorError) {
        log.debug({ code: err.code, error: err.message }, 'hypervisor observation failed');
        return { kind: LOOK_ERROR_KIND[err.code] ?? 'unreachable', message: err.message };
      }
      return { kind: 'unreachable', message: describeError(err) };
    }
  }

  /** The launcher pod and its ephemeral-storage limit: a measurement is reused only while they stay. */
  #spaceLimits(bp: BlockPull, obs: Observation): string {
    const pod = obs.launcher?.kind === 'found' ? obs.launcher.launcher.pod : '';
    return `${pod}:${ephemeralStorageLimit(this.#options.pods.get(bp.metadata.namespace, pod)) ?? 'none'}`;
  }

  /**
   * The pre-flight measurement through the driver that made the observation (inside the compute
   * container). Unreachable propagates (the work queue retries with backoff); a tool that fails
   * or is missing makes the space unknown: the start is not held back, and the log says why.
   */
  async #measureSpace(bp: BlockPull, obs: Observation, decision: Decision, driver: BlockJobDriver, log: Logger): Promise<SpaceObservation> {
    const hypervisor = obs.hypervisor;
    const launcherPod = obs.launcher?.kind === 'found' ? obs.launcher.launcher : undefined;
    if (hypervisor?.kind !== 'ok' || launcherPod === undefined) return { kind: 'unknown', reason: 'the disk was not observed' };
    if (driver.getSpace === undefined) return { kind: 'unknown', reason: 'the driver cannot measure space' };
    const limitBytes = ephemeralStorageLimit(this.#options.pods.get(bp.metadata.namespace, launcherPod.pod));
    const basePath = decision.status.backingChain?.basePath;
    try {
      const info = await driver.getSpace(launcherPod.domain, { disk: hypervisor.disk, ...(basePath !== undefined ? { basePath } : {}), measureUsage: limitBytes !== undefined });
      if (info.kind === 'unknown') {
        log.info({ reason: info.reason }, 'pre-flight space check not applicable');
        return info;
      }
      log.debug({ topPath: info.topPath, pullBytes: info.pullBytes, availableBytes: info.availableBytes, totalBytes: info.totalBytes, limitBytes, usage: info.usage }, 'pre-flight space check');
      return {
        kind: 'measured',
        topPath: info.topPath,
        pullBytes: info.pullBytes,
        availableBytes: info.availableBytes,
        totalBytes: info.totalBytes,
        ...(limitBytes !== undefined && info.usage !== undefined
          ? { ephemeral: { pod: launcherPod.pod, limitBytes, usedBytes: info.usage.usedBytes, mountPoint: info.usage.mountPoint } }
          : {}),
      };
    } catch (err) {
      if (isHypervisorError(err, 'Unreachable')) throw err;
      log.warn({ error: describeError(err) }, 'pre-flight space check failed; starting without it');
      return { kind: 'unknown', reason: describeError(err) };
    }
  }

  async #act(bp: BlockPull, action: Action, observedWith: BlockJobDriver | undefined, log: Logger): Promise<void> {
    const driver = (): BlockJobDriver => {
      if (observedWith === undefined) throw new HypervisorError('Unreachable', 'no driver for this BlockPull');
      return observedWith;
    };
    switch (action.type) {
      case 'none':
        return;
      case 'addFinalizer':
        this.#writer.forgetStored(blockPullKey(bp));
        this.#wroteMetadata(
          await setFinalizers(this.#options.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name, bp.metadata.resourceVersion ?? '', [
            ...(bp.metadata.finalizers ?? []),
            FINALIZER,
          ]),
        );
        return;
      case 'removeFinalizer':
        try {
          await setFinalizers(
            this.#options.clients,
            BLOCKPULL_REF,
            bp.metadata.namespace,
            bp.metadata.name,
            bp.metadata.resourceVersion ?? '',
            (bp.metadata.finalizers ?? []).filter((f) => f !== FINALIZER),
          );
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
        log.info('finalizer removed');
        return;
      case 'startPull':
        delete this.#stateOf(blockPullKey(bp)).lastJobError;
        await this.#bounded('the start of the pull (virsh blockpull)', (signal) =>
          driver().startPull(action.domain, action.target, {
            ...(action.base !== undefined ? { base: action.base } : {}),
            ...(action.bandwidth > 0 ? { bandwidth: action.bandwidth } : {}),
            signal,
          }),
        );
        this.#options.metrics?.pullsStarted.inc();
        log.info({ domain: action.domain, target: action.target, base: action.base, bandwidth: action.bandwidth }, 'block pull started');
        return;
      case 'setBandwidth':
        await this.#bounded('the bandwidth change (virsh blockjob --bandwidth)', (signal) => driver().setBandwidth(action.domain, action.target, action.bandwidth, { signal }));
        log.info({ bandwidth: action.bandwidth }, 'bandwidth changed');
        return;
      case 'abort':
        try {
          await this.#bounded('the abort (virsh blockjob --abort)', (signal) => driver().abort(action.domain, action.target, { signal }));
        } catch (err) {
          // Already gone: what we wanted.
          if (!(isHypervisorError(err) && /no active block job|not active|No active/i.test(err.message))) throw err;
        }
        log.info({ domain: action.domain, target: action.target }, 'block job abort requested');
        return;
    }
  }

  /**
   * Run an action with its bound: past actionTimeoutMs its command is ended (the signal) and the
   * call fails with HypervisorError Timeout, also when a driver does not heed the signal.
   */
  async #bounded(what: string, run: (signal: AbortSignal) => Promise<void>): Promise<void> {
    const ms = this.#options.actionTimeoutMs ?? DEFAULT_ACTION_TIMEOUT_MS;
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err = new HypervisorError('Timeout', `${what} did not return within ${ms} ms; the command was ended`);
        controller.abort(err);
        reject(err);
      }, ms);
    });
    const running = run(controller.signal);
    // Settles after the bound when the driver ignores the signal: nobody waits for it then.
    running.catch(() => undefined);
    try {
      await Promise.race([running, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Record the Events event-choice.ts chooses for this reconcile. */
  #recordEvents(bp: BlockPull, decision: Decision, final: Decision, adoptedNow: boolean): void {
    const recorder = this.#options.events;
    if (recorder === undefined) return;
    const involved: InvolvedObject = { apiVersion: API_VERSION, kind: KIND, namespace: bp.metadata.namespace, name: bp.metadata.name, uid: bp.metadata.uid };
    const deleting = bp.metadata.deletionTimestamp !== undefined && bp.metadata.deletionTimestamp !== null;
    for (const e of chooseEvents({ before: bp.status, deleting, decision, final, adoptedNow })) void recorder.event(involved, e.type, e.reason, e.action, e.message, e.delivery);
  }

  /** While a job runs, the driver's block-job events wake this BlockPull at once. */
  #watchJobEvents(key: string, d: Decision, driver: BlockJobDriver | undefined): void {
    const state = this.#stateOf(key);
    const running = d.status.phase === 'Running' || d.action.type === 'abort';
    const domain = d.status.launcher?.domain;
    if (!running || domain === undefined || driver === undefined) {
      state.subscription?.sub.stop();
      delete state.subscription;
      return;
    }
    if (state.subscription !== undefined && state.subscription.domain === domain && state.subscription.driver === driver) return;
    state.subscription?.sub.stop();
    const target = d.status.launcher?.target;
    const sub = driver.watchEvents(
      domain,
      (ev) => {
        if (target !== undefined && ev.target !== target) return;
        if (ev.error !== undefined) {
          const current = this.#stateOf(key);
          current.lastJobError = ev.error;
          current.onJobError?.();
        }
        this.#options.enqueue(key);
      },
      target !== undefined ? { targets: [target] } : {},
    );
    state.subscription = { domain, driver, sub };
  }
}

function describeError(err: unknown): string {
  if (err instanceof ApiException) return describeApiError(err);
  return err instanceof Error ? err.message : String(err);
}
