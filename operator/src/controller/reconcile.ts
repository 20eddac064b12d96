/**
 * Reconcile one BlockPull: gather -> decide (once, pure) -> execute -> remember, Events, wake
 * others -> requeue. docs/ARCHITECTURE.md ("The reconcile contract") is the contract; this file
 * wires its parts:
 * - gather.ts builds one complete Observation (caches, the hypervisor's view, the facts decide()
 *   says it lacks); the slots are counted last, synchronously, and a start takes its slot in the
 *   SlotLedger (slots.ts) right after decide(), so concurrent workers never exceed the limits;
 * - decide.ts judges (the Decider, given the settings once);
 * - execute.ts records the intent, acts, and writes the one outcome (status-writer.ts);
 * - pull-memory.ts is what this process remembers per BlockPull, with one forget;
 * - other BlockPulls (the disk holder, slot counting, whom to wake when a disk or a slot is
 *   released) are read through the cache's indexes (blockpulls.ts); waiters for a slot are woken
 *   round-robin by namespace.
 * While a job runs the BlockPull is requeued every statusUpdateIntervalMs, and the driver's
 * block-job events wake it at once, so the final status lands within a second of the job's end.
 */
import { assertNever } from '../api/assert-never.ts';
import { objectKey, splitKey } from '../api/object-key.ts';
import { API_VERSION, KIND, isTerminal, type BlockPull } from '../api/types.ts';
import type { BlockJobDriver } from '../hypervisor/types.ts';
import type { EventRecorder, InvolvedObject } from '../kube/events.ts';
import type { KubeClients } from '../kube/client.ts';
import type { OperatorMetrics } from '../kube/metrics.ts';
import { forBlockPullKey, type Logger } from '../log.ts';
import type { DriverProvider } from '../kubevirt/transport.ts';
import { BlockPulls, type CacheReader } from './blockpulls.ts';
import { Decider, type Decision, type HypervisorObservation, type SlotUsage } from './decide.ts';
import { chooseEvents } from './event-choice.ts';
import { DEFAULT_ACTION_TIMEOUT_MS, Executor, type Executed } from './execute.ts';
import { Gatherer } from './gather.ts';
import { ObserveGate } from './observe-gate.ts';
import { jobKey, PullMemory } from './pull-memory.ts';
import { progressLookIntervalMs, roundRobinByNamespace, SlotLedger } from './slots.ts';
import { StatusWriter } from './status-writer.ts';

export { DEFAULT_ACTION_TIMEOUT_MS } from './execute.ts';

/** Default of ReconcilerOptions.observeTimeoutMs (BLOCKPULL_OBSERVE_TIMEOUT_MS). */
export const DEFAULT_OBSERVE_TIMEOUT_MS = 1_000;

/**
 * Waiting reasons that a watch event ends (the VMI or its launcher pod appears or changes, a slot
 * is released): their requeue is only a safety net, not a poll. Not DiskBusy (the holder may be
 * another program's block job), nor a launcher the transport cannot reach (no event says when).
 */
const EVENT_WOKEN_REASONS: ReadonlySet<string> = new Set([
  'VMINotFound',
  'VMINotRunning',
  'LauncherNotFound',
  'MigrationInProgress',
  'WaitingForSlot',
]);

/** Default of ReconcilerOptions.safetyResyncMs. */
export const DEFAULT_SAFETY_RESYNC_MS = 10 * 60_000;

export interface ReconcilerOptions {
  readonly clients: KubeClients;
  readonly blockPulls: CacheReader;
  readonly vmis: CacheReader;
  /** The pods, indexed by the VMI they claim (POD_BY_VMI_UID). */
  readonly pods: CacheReader & Required<Pick<CacheReader, 'byIndex'>>;
  /** VirtualMachineInstanceMigrations (kubevirt.io/v1); absent: only the VMI's status tells of a migration. */
  readonly migrations?: CacheReader;
  /** VirtualMachineSnapshots and VirtualMachineBackups indexed by OPERATION_BY_VM (empty where their CRDs are absent). */
  readonly snapshots?: CacheReader & Required<Pick<CacheReader, 'byIndex'>>;
  readonly backups?: CacheReader & Required<Pick<CacheReader, 'byIndex'>>;
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

/** How one pass ended; reconcile() turns it into the work queue's result in one switch. */
type PassResult =
  | { readonly kind: 'gone' }
  | { readonly kind: 'invalid'; readonly error: Error }
  | { readonly kind: 'finalizerAdded' }
  | { readonly kind: 'requeue'; readonly afterMs: number | null };

/**
 * The BlockPull waits for a slot only for its namespace's fair share (the cluster and the node had
 * room): the namespaces wanting slots change without a slot being released, so it looks again
 * after its requeue delay instead of waiting for a release.
 */
function fairShareWait(slots: SlotUsage, final: Decision, decider: Decider): boolean {
  const { maxConcurrentPulls, maxPullsPerNode } = decider.settings;
  return (
    final.status.reason === 'WaitingForSlot' &&
    slots.running < maxConcurrentPulls &&
    slots.runningOnNode < maxPullsPerNode
  );
}

export class Reconciler {
  readonly #options: ReconcilerOptions;
  readonly #memory = new PullMemory();
  /** Slots this process holds: pulls it knows to be Running (the cache may lag) and starts in flight. */
  readonly #slots = new SlotLedger();
  /** The namespace whose waiters were woken first at the last slot release (round-robin). */
  #wakeCursor: string | undefined;
  readonly #writer: StatusWriter;
  readonly #blockPulls: BlockPulls;
  readonly #decider: Decider;
  readonly #gatherer: Gatherer;
  readonly #executor: Executor;
  /** Counts slot and disk releases: a BlockPull deciding to wait for one while one is released is looked at again. */
  #releases = 0;
  /** Numbers the passes: the reconcileId that ties one pass's log lines together. */
  #passes = 0;

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
    this.#decider = new Decider({
      pollIntervalMs: options.pollIntervalMs,
      waitRequeueMs: options.waitRequeueMs ?? 5_000,
      spaceMarginBytes: options.spaceMarginBytes ?? 0,
      spaceMarginPercent: options.spaceMarginPercent ?? 0,
      maxConcurrentPulls: options.maxConcurrentPulls,
      maxPullsPerNode: options.maxPullsPerNode,
    });
    const gate = new ObserveGate<HypervisorObservation>({
      budgetMs: options.observeTimeoutMs ?? DEFAULT_OBSERVE_TIMEOUT_MS,
      wake: (key) => options.enqueue(key),
      usableLate: (h) => h.kind !== 'unreachable',
    });
    this.#gatherer = new Gatherer({
      vmis: options.vmis,
      pods: options.pods,
      ...(options.migrations !== undefined ? { migrations: options.migrations } : {}),
      ...(options.snapshots !== undefined ? { snapshots: options.snapshots } : {}),
      ...(options.backups !== undefined ? { backups: options.backups } : {}),
      drivers: options.drivers,
      gate,
      blockPulls: this.#blockPulls,
      memory: this.#memory,
      slots: this.#slots,
      decider: this.#decider,
      now: () => this.#now(),
    });
    this.#executor = new Executor({
      clients: options.clients,
      writer: this.#writer,
      blockPulls: this.#blockPulls,
      memory: this.#memory,
      decider: this.#decider,
      ...(options.metrics !== undefined ? { metrics: options.metrics } : {}),
      actionTimeoutMs: options.actionTimeoutMs ?? DEFAULT_ACTION_TIMEOUT_MS,
    });
    // What forgetting a BlockPull means beyond its memory: its slot, its per-pull metrics, its status records.
    this.#memory.onForget((key, wakeWaiters) => {
      if (wakeWaiters) this.#releaseSlot(key);
      else this.#slots.release(key);
      const { namespace, name } = splitKey(key);
      options.metrics?.removePull(namespace, name);
      this.#writer.forget(key);
    });
  }

  #now(): Date {
    return this.#options.now?.() ?? new Date();
  }

  /** Forget a BlockPull (deleted): its event subscription, per-pull metrics, status records; give back its slot. */
  forget(key: string, wakeWaiters = true): void {
    this.#memory.forget(key, wakeWaiters);
  }

  /**
   * The informer cache now holds `key` at `resourceVersion` (a watch update). True, once, when it
   * is our own last status write coming back: the reconcile that wrote it has already requeued
   * itself, so the controller need not wake the BlockPull for it. See StatusWriter.
   */
  isOwnWrite(key: string, resourceVersion: string | undefined): boolean {
    return this.#writer.isOwnWrite(key, resourceVersion);
  }

  /** Stop every event subscription (shutdown). Running jobs are left alone. */
  stop(): void {
    for (const key of this.#memory.keys()) this.forget(key, false);
  }

  /**
   * The BlockPull informer's transform: the object to cache is the parsed one (one copy per
   * BlockPull, not the API server's object plus its parsed copy); one that does not parse is
   * cached as it came, and reported when reconciled.
   */
  cacheForm<T extends object>(raw: T): T {
    return this.#blockPulls.cacheForm(raw);
  }

  /**
   * One reconcile of `key`, and the one switch from a pass's result to the work queue's. A pass
   * that only added our finalizer is followed at once by the next (which looks at libvirt and
   * may start the pull), not sent behind the whole queue: the work queue never hands out a key
   * twice at once, so going on here is safe.
   */
  async reconcile(key: string): Promise<ReconcileResult> {
    const log = forBlockPullKey(this.#options.logger, key).child({ reconcileId: ++this.#passes });
    let result = await this.#pass(key, log);
    if (result.kind === 'finalizerAdded') result = await this.#pass(key, log);
    switch (result.kind) {
      case 'gone':
        log.debug('BlockPull is gone');
        this.forget(key);
        return { requeueAfterMs: null };
      case 'invalid':
        log.error({ error: result.error.message }, 'BlockPull does not match the API schema; ignoring it');
        this.#options.metrics?.reconcileErrors.inc({ reason: 'InvalidObject' });
        return { requeueAfterMs: null };
      case 'finalizerAdded':
        // The second pass did not see the finalizer either (it would add it again): later, from the queue.
        return { requeueAfterMs: 0 };
      case 'requeue':
        return { requeueAfterMs: result.afterMs };
      default:
        return assertNever(result);
    }
  }

  /** Gather -> decide -> take a start's slot -> execute -> remember, Events, wake others -> when to look again. */
  async #pass(key: string, log: Logger): Promise<PassResult> {
    const read = await this.#blockPulls.read(key);
    if (read.kind !== 'ok') return read;
    const bp = read.bp;
    const releasesAtStart = this.#releases;
    const gathered = await this.#gatherer.gather(bp, log);
    // No await from the slot count to the slot's hold: counting and taking are one step.
    const obs = this.#gatherer.withSlots(gathered.obs);
    const decision = this.#decider.decide(obs);
    const starts = decision.action.type === 'startPull';
    if (starts && obs.launcher?.kind === 'found') this.#slots.hold(key, obs.launcher.launcher.node);
    log.debug(
      { phase: decision.status.phase, reason: decision.status.reason, action: decision.action.type },
      'decided',
    );

    let heldSlot = false;
    let adoptedNow = false;
    let executed: Executed;
    try {
      executed = await this.#executor.execute(bp, obs, decision, gathered.driver, log, (final) => {
        heldSlot = this.#slots.has(key);
        adoptedNow = this.#remember(key, bp, final, log);
      });
    } catch (err) {
      // The start was not made, or failed in a way the status does not record: its slot is free.
      if (starts) this.#releaseSlot(key);
      throw err;
    }
    switch (executed.kind) {
      case 'notActed':
        if (starts) this.#releaseSlot(key);
        return { kind: 'requeue', afterMs: null };
      case 'finalizerRemoved':
        this.forget(key);
        return { kind: 'requeue', afterMs: null };
      case 'finalizerAdded':
        return { kind: 'finalizerAdded' };
      case 'written':
        break;
      default:
        return assertNever(executed);
    }
    const { final } = executed;
    this.#recordEvents(bp, decision, final, adoptedNow);
    this.#watchJobEvents(key, final, gathered.driver ?? this.#slowButKept(key, final, gathered.waitingOn));
    this.#wakeOnRelease(key, bp, final, heldSlot);
    const polled = gathered.polled || fairShareWait(obs.slots, final, this.#decider);
    return { kind: 'requeue', afterMs: this.#requeue(key, final, polled, releasesAtStart).requeueAfterMs };
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
   * Remember the outcome in this process: the job sample (bytes streamed), whether it runs (slots,
   * per-pull metrics), and a job adopted now (announced once). True when adopted now.
   */
  #remember(key: string, bp: BlockPull, final: Decision, log: Logger): boolean {
    const { namespace, name } = splitKey(key);
    const state = this.#memory.of(key);
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
    if (final.status.phase === 'Running')
      this.#options.metrics?.setRunningPull(namespace, name, final.status.progress ?? {}, this.#now().getTime());
    else this.#options.metrics?.removePull(namespace, name);

    // A job this process did not start, found running: say so once (a new leader takes over).
    const launched = final.status.launcher;
    if (final.status.phase !== 'Running' || final.status.reason !== 'Adopted' || launched?.target === undefined)
      return false;
    const jk = jobKey(launched.pod ?? '', launched.domain ?? '', launched.target);
    if (state.adopted === jk) return false;
    state.adopted = jk;
    log.info(
      {
        launcherPod: launched.pod,
        domain: launched.domain,
        target: launched.target,
        previousPhase: bp.status?.phase,
        previousReason: bp.status?.reason,
      },
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
      for (const other of this.#blockPulls.othersOnDisk(bp)) this.#options.enqueue(objectKey(other));
      this.#memory.unsubscribe(key);
    }
  }

  /** When to look again. */
  #requeue(key: string, final: Decision, polled: boolean, releasesAtStart: number): ReconcileResult {
    // While our job runs, its block-job events (or the driver's fallback poller) wake the BlockPull
    // when it ends: poll only as often as progress is written. Each poll is a virsh process, a libvirt
    // query of QEMU and an API GET next to the running job.
    if (
      final.status.phase === 'Running' &&
      final.requeueAfterMs !== null &&
      this.#memory.peek(key)?.subscription !== undefined
    ) {
      const node = final.status.launcher?.node ?? '';
      const lookMs = progressLookIntervalMs(this.#options.statusUpdateIntervalMs, this.#slots.heldOn(node));
      return { requeueAfterMs: Math.max(final.requeueAfterMs, lookMs) };
    }
    // Waiting for something a watch event reports (the controller wakes it): no poll, a safety net.
    if (
      final.requeueAfterMs !== null &&
      final.action.type === 'none' &&
      final.status.phase === 'Pending' &&
      EVENT_WOKEN_REASONS.has(final.status.reason ?? '') &&
      !polled
    ) {
      // A slot released while this reconcile ran may have missed waking it: look again now.
      if (this.#releases !== releasesAtStart && final.status.reason === 'WaitingForSlot') return { requeueAfterMs: 0 };
      return {
        requeueAfterMs: Math.max(final.requeueAfterMs, this.#options.safetyResyncMs ?? DEFAULT_SAFETY_RESYNC_MS),
      };
    }
    return { requeueAfterMs: final.requeueAfterMs };
  }

  /** Record the Events event-choice.ts chooses for this reconcile. */
  #recordEvents(bp: BlockPull, decision: Decision, final: Decision, adoptedNow: boolean): void {
    const recorder = this.#options.events;
    if (recorder === undefined) return;
    const involved: InvolvedObject = {
      apiVersion: API_VERSION,
      kind: KIND,
      namespace: bp.metadata.namespace,
      name: bp.metadata.name,
      uid: bp.metadata.uid,
    };
    const deleting = bp.metadata.deletionTimestamp !== undefined && bp.metadata.deletionTimestamp !== null;
    for (const e of chooseEvents({ before: bp.status, deleting, decision, final, adoptedNow }))
      void recorder.event(involved, e.type, e.reason, e.action, e.message, e.delivery);
  }

  /**
   * The driver of a look that got no answer in time, when the job's subscription is on it and the
   * pull is still said Running (no HypervisorUnreachable verdict yet): the subscription is kept.
   * Dropping it ended the job's event streams, and every new subscription runs a seed `virsh
   * blockjob`: on a loaded node that was two exec sessions per slow look, loading it further.
   */
  #slowButKept(key: string, final: Decision, waitingOn: BlockJobDriver | undefined): BlockJobDriver | undefined {
    const sub = this.#memory.peek(key)?.subscription;
    if (waitingOn === undefined || sub?.driver !== waitingOn) return undefined;
    if (final.status.phase !== 'Running' || final.status.reason === 'HypervisorUnreachable') return undefined;
    return waitingOn;
  }

  /** While a job runs, the driver's block-job events wake this BlockPull at once. */
  #watchJobEvents(key: string, d: Decision, driver: BlockJobDriver | undefined): void {
    const state = this.#memory.of(key);
    const running = d.status.phase === 'Running' || d.action.type === 'abort';
    const domain = d.status.launcher?.domain;
    if (!running || domain === undefined || driver === undefined) {
      state.subscription?.sub.stop();
      delete state.subscription;
      return;
    }
    if (
      state.subscription !== undefined &&
      state.subscription.domain === domain &&
      state.subscription.driver === driver
    )
      return;
    state.subscription?.sub.stop();
    const target = d.status.launcher?.target;
    const sub = driver.watchEvents(
      domain,
      (ev) => {
        if (target !== undefined && ev.target !== target) return;
        if (ev.error !== undefined) this.#memory.jobFailed(key, ev.error);
        this.#options.enqueue(key);
      },
      target !== undefined ? { targets: [target] } : {},
    );
    state.subscription = { domain, driver, sub };
  }
}
