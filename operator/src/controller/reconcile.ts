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
 * - status: written when anything but progress changed (transition, final status at once); a
 *   progress-only change at most every statusUpdateIntervalMs per BlockPull. A status that
 *   records the outcome of an action (start confirmed, start refused) is a fact: when its write
 *   conflicts with a spec or metadata change, it is written again on the fresh object.
 * - while a job runs: requeue every pollIntervalMs, and the driver's block-job events wake the
 *   BlockPull at once, so the final status lands within a second of the job's end.
 * - the look at libvirt goes through an ObserveGate (observe-gate.ts): a worker waits at most
 *   observeTimeoutMs for it and one look per launcher runs at a time, so a hanging launcher
 *   shows HypervisorUnreachable on its own BlockPulls and delays no one else.
 */
import { ApiException } from '@kubernetes/client-node';
import { z } from 'zod';
import { API_VERSION, FINALIZER, GROUP, KIND, PLURAL, VERSION, isTerminal, parseBlockPull, type BlockPull, type BlockPullStatus } from '../api/types.ts';
import { HypervisorError, isHypervisorError } from '../hypervisor/errors.ts';
import type { BlockJobDriver, EventSubscription } from '../hypervisor/types.ts';
import type { EventRecorder, InvolvedObject } from '../kube/events.ts';
import { describeApiError, getCustomObject, isApiError, isConflict, isNotFound, setFinalizers, type KubeClients, type ResourceRef } from '../kube/client.ts';
import type { OperatorMetrics } from '../kube/metrics.ts';
import { forBlockPullKey, type Logger } from '../log.ts';
import { ephemeralStorageLimit, locateLauncher, vmiHasDisk, VmiSchema, LAUNCHER_CONTAINER } from '../kubevirt/launcher.ts';
import { LauncherUnavailableError, type DriverProvider } from '../kubevirt/transport.ts';
import {
  backoffMs,
  decide,
  decideActionError,
  diskHolder,
  mayRunOurJob,
  recordedJobState,
  type Action,
  type Decision,
  type HypervisorObservation,
  type LauncherObservation,
  type Observation,
  type ProgressSample,
  type SpaceObservation,
} from './decide.ts';
import { BP_BY_VMI, BP_RUNNING_BY_NODE, BP_WAITING_FOR_SLOT, POD_BY_VMI_UID } from './indexes.ts';
import { ObserveGate } from './observe-gate.ts';

export const BLOCKPULL_REF: ResourceRef = { group: GROUP, version: VERSION, plural: PLURAL };

/** Default of ReconcilerOptions.observeTimeoutMs (BLOCKPULL_OBSERVE_TIMEOUT_MS). */
export const DEFAULT_OBSERVE_TIMEOUT_MS = 1_000;

/** Read access to an informer cache (WatchdogInformer implements it). */
export interface CacheReader {
  get(namespace: string | undefined, name: string): unknown;
  list(namespace?: string): readonly unknown[];
  /** Objects filed under `value` in index `name` (indexes.ts); without it, list() is scanned. */
  byIndex?(name: string, value: string): readonly unknown[];
  indexValues?(name: string): ReadonlyMap<string, ReadonlySet<string>>;
}

/**
 * Waiting reasons that a watch event ends (the VMI or its launcher pod appears or changes, a slot
 * is released): their requeue is only a safety net, not a poll. Not DiskBusy (the holder may be
 * another program's block job), nor a launcher the transport cannot reach (no event says when).
 */
const EVENT_WOKEN_REASONS: ReadonlySet<string> = new Set(['VMINotFound', 'VMINotRunning', 'LauncherNotFound', 'MigrationInProgress', 'WaitingForSlot']);

/** Default of ReconcilerOptions.safetyResyncMs. */
export const DEFAULT_SAFETY_RESYNC_MS = 10 * 60_000;

/** a is a later resourceVersion than b (both etcd revisions); false when either is not a number. */
export function isNewerVersion(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined || !/^\d+$/.test(a) || !/^\d+$/.test(b)) return false;
  return BigInt(a) > BigInt(b);
}

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

/** Per-BlockPull memory; all of it can be lost (restart) without harm: the truth is the disk. */
interface Memory {
  lastStatusWriteMs?: number;
  sample?: ProgressSample;
  subscription?: { domain: string; driver: BlockJobDriver; sub: EventSubscription };
  /** The job this process asked libvirt to start (jobKey), until a look finds the disk without a job. */
  started?: string;
  /** The job this process adopted and has announced (Event + log line). */
  adopted?: string;
  /** Why our last job failed (QEMU's error, from the driver's events); cleared at each start. */
  lastJobError?: string;
  /** The last pre-flight that found too little space, how many did in a row, and when to measure again. */
  space?: { observation: SpaceObservation; shortChecks: number; nextAtMs: number; limits: string };
}

/** Identifies one job: the launcher pod, the domain and the disk target. */
function jobKey(pod: string, domain: string, target: string): string {
  return `${pod}|${domain}|${target}`;
}

/** How long a reconcile that sees our job gone short of its goal waits for the failure's reason. */
const JOB_ERROR_WAIT_MS = 1_000;

/** Fields whose change is a transition (written at once); progress and message are not. */
function significant(s: BlockPullStatus | undefined): unknown {
  if (s === undefined) return null;
  return {
    phase: s.phase,
    reason: s.reason,
    observedGeneration: s.observedGeneration,
    conditions: (s.conditions ?? []).map((c) => [c.type, c.status, c.reason, c.observedGeneration]),
    launcher: s.launcher,
    before: s.backingChain?.before,
    current: s.backingChain?.current,
    basePath: s.backingChain?.basePath,
    startTime: s.startTime,
    completionTime: s.completionTime,
    attempts: s.attempts,
    retries: s.retries,
    job: s.job?.state,
  };
}

/** JSON with object keys sorted (the API server does not keep our key order) and undefined dropped. */
export function canonicalJson(v: unknown): string {
  const norm = (x: unknown): unknown => {
    if (Array.isArray(x)) return x.map(norm);
    if (x !== null && typeof x === 'object' && !(x instanceof Date)) {
      const out: Record<string, unknown> = {};
      for (const k of Object.keys(x).sort()) {
        const val = (x as Record<string, unknown>)[k];
        if (val !== undefined) out[k] = norm(val);
      }
      return out;
    }
    return x;
  };
  return JSON.stringify(norm(v)) ?? 'undefined';
}

const sameJson = (a: unknown, b: unknown): boolean => canonicalJson(a) === canonicalJson(b);

/** What a status write did. `written.bp` is the object as stored (its new resourceVersion). */
type WriteResult = { readonly kind: 'written'; readonly bp: BlockPull } | { readonly kind: 'skipped' | 'conflict' | 'gone' };

/** How often a fact (the outcome of an action) is written again after resourceVersion conflicts. */
const FACT_WRITE_ATTEMPTS = 5;

const StoredVersionSchema = z.object({ metadata: z.object({ resourceVersion: z.string() }) });

function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

export class Reconciler {
  readonly #o: ReconcilerOptions;
  readonly #memory = new Map<string, Memory>();
  /** BlockPulls this process knows to be Running (the cache may lag): key -> node. */
  readonly #running = new Map<string, string>();
  /** The resourceVersion our last status write produced, per BlockPull (see isOwnWrite). */
  readonly #ownWrites = new Map<string, string>();
  /** The object as our last write of it returned it (used while the cache has an older one). */
  readonly #lastWritten = new Map<string, BlockPull>();
  /** Each cached object parsed once. */
  readonly #parsed = new WeakMap<object, BlockPull | Error>();
  /** Counts slot and disk releases: a BlockPull deciding to wait for one while one is released is looked at again. */
  #releases = 0;

  readonly #gate: ObserveGate<HypervisorObservation>;

  constructor(options: ReconcilerOptions) {
    this.#o = options;
    this.#gate = new ObserveGate<HypervisorObservation>({
      budgetMs: options.observeTimeoutMs ?? DEFAULT_OBSERVE_TIMEOUT_MS,
      wake: (key) => options.enqueue(key),
      usableLate: (h) => h.kind !== 'unreachable',
    });
  }

  #now(): Date {
    return this.#o.now?.() ?? new Date();
  }

  #mem(key: string): Memory {
    let m = this.#memory.get(key);
    if (m === undefined) {
      m = {};
      this.#memory.set(key, m);
    }
    return m;
  }

  /** Forget a BlockPull (deleted): stop its event subscription, drop its per-pull metrics. */
  forget(key: string): void {
    const m = this.#memory.get(key);
    m?.subscription?.sub.stop();
    this.#memory.delete(key);
    this.#running.delete(key);
    const { namespace, name } = splitKey(key);
    this.#o.metrics?.removePull(namespace, name);
    this.#ownWrites.delete(key);
    this.#lastWritten.delete(key);
  }

  /**
   * True, once, when a watch update of `key` at `resourceVersion` is our own last status write
   * coming back: the reconcile that wrote it has already requeued itself, so the controller need not
   * wake the BlockPull for it (a GET and a `virsh blockjob` per progress write, issue 15).
   */
  isOwnWrite(key: string, resourceVersion: string | undefined): boolean {
    if (resourceVersion === undefined || this.#ownWrites.get(key) !== resourceVersion) return false;
    this.#ownWrites.delete(key);
    return true;
  }

  /** Stop every event subscription (shutdown). Running jobs are left alone. */
  stop(): void {
    for (const key of [...this.#memory.keys()]) this.forget(key);
  }

  /**
   * The BlockPull informer's transform: the object to cache is the parsed one (one copy per
   * BlockPull, not the API server's object plus its parsed copy: issue 11, 10,000 BlockPulls);
   * one that does not parse is cached as it came, and reported when reconciled.
   */
  cacheForm<T extends object>(raw: T): T {
    const p = this.#parse(raw);
    if (p instanceof Error) return raw;
    this.#parsed.set(p, p);
    return p as unknown as T;
  }

  /** A cached object, parsed once per version (the cache replaces an object on each change). */
  #parse(raw: unknown): BlockPull | Error {
    if (raw === null || typeof raw !== 'object') return new Error('not an object');
    let p = this.#parsed.get(raw);
    if (p === undefined) {
      try {
        p = parseBlockPull(raw);
      } catch (err) {
        p = err instanceof Error ? err : new Error(String(err));
      }
      this.#parsed.set(raw, p);
    }
    return p;
  }

  /** Cached BlockPulls filed under `value` in `index`, parsed (malformed ones skipped), each replaced by our newer write of it. */
  #indexed(index: string, value: string, match: (raw: unknown) => boolean): BlockPull[] {
    const c = this.#o.blockPulls;
    const raws = c.byIndex !== undefined ? c.byIndex(index, value) : c.list().filter(match);
    const out: BlockPull[] = [];
    for (const raw of raws) {
      const p = this.#parse(raw);
      if (!(p instanceof Error)) out.push(this.#newest(p));
    }
    return out;
  }

  /** `cached`, or our last write of it when that is newer. */
  #newest(cached: BlockPull): BlockPull {
    const w = this.#lastWritten.get(`${cached.metadata.namespace}/${cached.metadata.name}`);
    return w !== undefined && w.metadata.uid === cached.metadata.uid && isNewerVersion(w.metadata.resourceVersion, cached.metadata.resourceVersion) ? w : cached;
  }

  /**
   * The informer cache holds `key` at `resourceVersion`: our remembered write of it is no longer
   * needed once the cache has it (or something newer). Keeps #lastWritten to the writes in flight.
   */
  cacheCaughtUp(key: string, resourceVersion: string | undefined): void {
    const w = this.#lastWritten.get(key);
    if (w !== undefined && !isNewerVersion(w.metadata.resourceVersion, resourceVersion)) this.#lastWritten.delete(key);
  }

  /** Cached BlockPulls naming this VMI. */
  #sameVmi(namespace: string, vmiName: string): BlockPull[] {
    return this.#indexed(BP_BY_VMI, `${namespace}/${vmiName}`, (raw) => {
      const b = raw as { metadata?: { namespace?: string }; spec?: { vmiName?: string } };
      return b.metadata?.namespace === namespace && b.spec?.vmiName === vmiName;
    });
  }

  /**
   * The BlockPull to reconcile: the cached one, or the one our last write returned when that is
   * newer (the cache lags our own writes). Not in the cache: a GET (deleted, or not seen yet).
   */
  async #read(key: string): Promise<{ kind: 'ok'; bp: BlockPull } | { kind: 'gone' } | { kind: 'invalid'; error: Error }> {
    const { namespace, name } = splitKey(key);
    const cached = this.#o.blockPulls.get(namespace, name);
    let parsed: BlockPull | Error;
    if (cached === undefined) {
      const raw = await getCustomObject(this.#o.clients, BLOCKPULL_REF, namespace, name);
      if (raw === undefined) return { kind: 'gone' };
      parsed = this.#parse(raw);
    } else {
      parsed = this.#parse(cached);
    }
    if (parsed instanceof Error) return { kind: 'invalid', error: parsed };
    const newest = this.#newest(parsed);
    // The cache has caught up with our write (or it was of another object of that name).
    if (newest === parsed) this.#lastWritten.delete(key);
    return { kind: 'ok', bp: newest };
  }

  /** Remember what a write of ours stored (the cache may not have it yet). */
  #wrote(raw: unknown): void {
    const p = this.#parse(raw);
    if (p instanceof Error) return;
    this.#lastWritten.set(`${p.metadata.namespace}/${p.metadata.name}`, p);
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    const log = forBlockPullKey(this.#o.logger, key);
    const { namespace, name } = splitKey(key);
    const read = await this.#read(key);
    if (read.kind === 'gone') {
      log.debug('BlockPull is gone');
      this.forget(key);
      return { requeueAfterMs: null };
    }
    const releasesAtStart = this.#releases;
    if (read.kind === 'invalid') {
      log.error({ error: read.error.message }, 'BlockPull does not match the API schema; ignoring it');
      this.#o.metrics?.reconcileErrors.inc({ reason: 'InvalidObject' });
      return { requeueAfterMs: null };
    }
    const bp = read.bp;

    const observed = await this.#observe(bp, log);
    const { driver } = observed;
    let obs = observed.obs;
    let decision = decide(obs);
    const mem0 = this.#mem(key);
    const jobFailed = decision.status.reason === 'JobFailed' || decision.status.reason === 'RetryLimitExceeded';
    if (bp.status?.phase === 'Running' && jobFailed && driver !== undefined && mem0.lastJobError === undefined) {
      // Our job ended short of its goal: QEMU's reason may trail libvirt's event a little.
      const t0 = performance.now();
      while (mem0.lastJobError === undefined && performance.now() - t0 < JOB_ERROR_WAIT_MS) await new Promise((r) => setTimeout(r, 50));
      if (mem0.lastJobError !== undefined) {
        obs = { ...obs, lastJobError: mem0.lastJobError };
        decision = decide(obs);
      }
    }
    if (decision.action.type === 'startPull' && driver !== undefined) {
      // Pre-flight before every start: decide again with the space measured. While short, the
      // space is measured again only when its backoff has run out (5 s, 10 s, ... 5 min); a
      // reconcile woken meanwhile (e.g. by our own status write) reuses the last measurement.
      const nowMs = this.#now().getTime();
      const last = mem0.space;
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
        if (decision.status.reason === 'InsufficientSpace') mem0.space = { observation, shortChecks: n, nextAtMs: nowMs + recheck, limits };
      }
      if (decision.status.reason !== 'InsufficientSpace') delete mem0.space;
    }
    log.debug({ phase: decision.status.phase, reason: decision.status.reason, action: decision.action.type }, 'decided');

    // Persisted intent: a start or an abort is recorded before it is made. When that write
    // conflicts, the object changed since it was read: act on nothing, look again.
    let stored = bp;
    if (decision.action.type === 'startPull' || decision.action.type === 'abort') {
      const w = await this.#writeStatus(bp, decision.status, log);
      if (w.kind === 'conflict' || w.kind === 'gone') {
        log.debug({ action: decision.action.type }, 'intent not recorded (the object changed or is gone); not acting');
        return { requeueAfterMs: null };
      }
      if (w.kind === 'written') stored = w.bp;
    }

    let final: Decision = decision;
    let actionError: unknown;
    const startKey =
      decision.action.type === 'startPull' ? jobKey(decision.status.launcher?.pod ?? '', decision.action.domain, decision.action.target) : undefined;
    // Recorded before asking: a start whose answer is lost (timeout) may still have started the job.
    if (startKey !== undefined) this.#mem(key).started = startKey;
    try {
      await this.#act(bp, decision.action, driver, log);
    } catch (err) {
      actionError = err;
      // Refused for sure: nothing was started.
      if (startKey !== undefined && isHypervisorError(err) && err.code !== 'Unreachable' && err.code !== 'CommandFailed' && err.code !== 'JobFailed') {
        delete this.#mem(key).started;
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
      return { requeueAfterMs: null };
    }
    if (decision.action.type === 'addFinalizer' && actionError === undefined && bp.status?.phase === undefined && this.#lastWritten.has(key)) {
      // A new BlockPull: the next reconcile (at once, on the object the finalizer patch returned)
      // writes its first real status; a "Created" status before it would be one more write each.
      return { requeueAfterMs: 0 };
    }

    const mem = this.#mem(key);
    if (final.sample !== undefined) {
      const delta = mem.sample !== undefined ? final.sample.cur - mem.sample.cur : 0;
      if (delta > 0) this.#o.metrics?.bytesStreamed.inc(delta);
      mem.sample = final.sample;
    }
    if (final.status.phase !== 'Running') mem.sample = undefined;
    if (final.status.phase === 'Running') this.#running.set(key, final.status.launcher?.node ?? '');
    else this.#running.delete(key);
    // Per-pull series only while Running (bounded cardinality; see metrics.ts).
    if (final.status.phase === 'Running') this.#o.metrics?.setRunningPull(namespace, name, final.status.progress ?? {}, this.#now().getTime());
    else this.#o.metrics?.removePull(namespace, name);

    // A job this process did not start, found running: say so once (a new leader takes over).
    const launched = final.status.launcher;
    let adoptedNow = false;
    if (final.status.phase === 'Running' && final.status.reason === 'Adopted' && launched?.target !== undefined) {
      const jk = jobKey(launched.pod ?? '', launched.domain ?? '', launched.target);
      if (mem.adopted !== jk) {
        mem.adopted = jk;
        adoptedNow = true;
        log.info(
          { launcherPod: launched.pod, domain: launched.domain, target: launched.target, previousPhase: bp.status?.phase, previousReason: bp.status?.reason },
          'adopted a running block pull job this process did not start (e.g. after a leader change)',
        );
      }
    }

    const afterFinalizer = decision.action.type === 'addFinalizer' ? (this.#lastWritten.get(key) ?? (await this.#fresh(bp))) : stored;
    // The outcome of an action taken (start confirmed or refused) is a fact: never dropped on a conflict.
    const outcome = final !== decision ? final.status : decision.afterAction;
    await this.#writeStatus(afterFinalizer, outcome ?? final.status, log, outcome !== undefined);
    this.#events(bp, decision, final, adoptedNow);
    this.#watchJobEvents(key, final, driver);

    if (bp.status?.phase === 'Running' && final.status.phase !== 'Running') {
      // A slot is free: wake the BlockPulls waiting for one (also those whose wait the cache has not seen yet).
      this.#releases++;
      for (const other of this.#indexed(BP_WAITING_FOR_SLOT, '', (raw) => (raw as { status?: { reason?: string } }).status?.reason === 'WaitingForSlot')) {
        this.#o.enqueue(`${other.metadata.namespace}/${other.metadata.name}`);
      }
      for (const [k, w] of this.#lastWritten) if (w.status?.reason === 'WaitingForSlot') this.#o.enqueue(k);
    }
    if (!isTerminal(bp.status?.phase) && isTerminal(final.status.phase)) {
      // Wake the BlockPulls waiting for this disk.
      this.#releases++;
      for (const other of this.#sameVmi(bp.metadata.namespace, bp.spec.vmiName)) {
        if (other.spec.disk === bp.spec.disk && other.metadata.name !== bp.metadata.name) {
          this.#o.enqueue(`${other.metadata.namespace}/${other.metadata.name}`);
        }
      }
      this.#memory.get(key)?.subscription?.sub.stop();
      delete this.#mem(key).subscription;
    }
    // While our job runs, its block-job events (or the driver's fallback poller) wake the BlockPull
    // when it ends: poll only as often as progress is written. Each poll is a virsh process, a libvirt
    // query of QEMU and an API GET next to the running job (issue 15).
    if (final.status.phase === 'Running' && final.requeueAfterMs !== null && this.#memory.get(key)?.subscription !== undefined) {
      return { requeueAfterMs: Math.max(final.requeueAfterMs, this.#o.statusUpdateIntervalMs) };
    }
    // Waiting for something a watch event reports (the controller wakes it): no poll, a safety net.
    if (
      final.requeueAfterMs !== null &&
      final.action.type === 'none' &&
      final.status.phase === 'Pending' &&
      EVENT_WOKEN_REASONS.has(final.status.reason ?? '') &&
      observed.polled !== true
    ) {
      // A slot released while this reconcile ran may have missed waking it: look again now.
      if (this.#releases !== releasesAtStart && final.status.reason === 'WaitingForSlot') return { requeueAfterMs: 0 };
      return { requeueAfterMs: Math.max(final.requeueAfterMs, this.#o.safetyResyncMs ?? DEFAULT_SAFETY_RESYNC_MS) };
    }
    return { requeueAfterMs: final.requeueAfterMs };
  }

  async #fresh(bp: BlockPull): Promise<BlockPull> {
    const raw = await getCustomObject(this.#o.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name);
    return raw === undefined ? bp : parseBlockPull(raw);
  }

  /**
   * The observation, and the driver that made it (undefined when libvirt was not reached): the
   * action and the event subscription of this reconcile use that driver and no other, so a
   * driver of a launcher pod that is gone is never reused.
   */
  async #observe(bp: BlockPull, log: Logger): Promise<{ obs: Observation; driver?: BlockJobDriver; polled?: boolean }> {
    const key = `${bp.metadata.namespace}/${bp.metadata.name}`;
    // Our own copy (maybe newer than the cache's) replaces the cached one.
    const others = this.#sameVmi(bp.metadata.namespace, bp.spec.vmiName).filter((b) => b.metadata.name !== bp.metadata.name);
    const holder = diskHolder([...others, bp], bp);
    const base = {
      now: this.#now(),
      bp,
      diskHolder: holder,
      pollIntervalMs: this.#o.pollIntervalMs,
      waitRequeueMs: this.#o.waitRequeueMs ?? 5_000,
      spaceMarginBytes: this.#o.spaceMarginBytes ?? 0,
      spaceMarginPercent: this.#o.spaceMarginPercent ?? 0,
      ...(this.#memory.get(key)?.lastJobError !== undefined ? { lastJobError: this.#memory.get(key)!.lastJobError! } : {}),
      ...(this.#memory.get(key)?.sample !== undefined ? { previousSample: this.#memory.get(key)!.sample! } : {}),
    };
    const deleting = bp.metadata.deletionTimestamp !== undefined && bp.metadata.deletionTimestamp !== null;
    const slotsNone = { running: 0, runningOnNode: 0, maxConcurrentPulls: this.#o.maxConcurrentPulls, maxPullsPerNode: this.#o.maxPullsPerNode };
    if (isTerminal(bp.status?.phase) && !deleting) return { obs: { ...base, slots: slotsNone } };
    // Without our finalizer decide() only adds it (deleting: lets go): nothing to read from libvirt yet.
    if (!(bp.metadata.finalizers ?? []).includes(FINALIZER)) return { obs: { ...base, slots: slotsNone } };

    const ns = bp.metadata.namespace;
    const rawVmi = this.#o.vmis.get(ns, bp.spec.vmiName);
    const vmiUid = (rawVmi as { metadata?: { uid?: unknown } } | undefined)?.metadata?.uid;
    // Only the pods claiming this VMI (indexed by its uid), not every pod of the namespace.
    const pods = this.#o.pods.byIndex !== undefined && typeof vmiUid === 'string' ? this.#o.pods.byIndex(POD_BY_VMI_UID, `${ns}/${vmiUid}`) : this.#o.pods.list(ns);
    const located = locateLauncher(ns, bp.spec.vmiName, rawVmi, pods, this.#o.migrations?.list(ns) ?? []);
    let launcher: LauncherObservation = located.observation;
    if (launcher.kind !== 'found') return { obs: { ...base, launcher, slots: slotsNone } };
    const loc = launcher.launcher;

    // Slots: Running BlockPulls other than this one, cluster-wide and on the launcher's node.
    const running = new Map<string, string>();
    const bps = this.#o.blockPulls;
    if (bps.indexValues !== undefined) {
      for (const [node, keys] of bps.indexValues(BP_RUNNING_BY_NODE)) {
        for (const k of keys) {
          // Our newer write of it (not in the cache yet) says whether it still runs.
          const w = this.#lastWritten.get(k);
          const cached = w !== undefined ? this.#parse(bps.get(splitKey(k).namespace, splitKey(k).name)) : undefined;
          const cur = cached !== undefined && !(cached instanceof Error) ? this.#newest(cached) : undefined;
          if (cur === undefined) running.set(k, node);
          else if (cur.status?.phase === 'Running') running.set(k, cur.status.launcher?.node ?? '');
        }
      }
      for (const [k, w] of this.#lastWritten) if (w.status?.phase === 'Running') running.set(k, w.status.launcher?.node ?? '');
    } else {
      for (const raw of bps.list()) {
        const b = this.#parse(raw);
        if (!(b instanceof Error) && b.status?.phase === 'Running') running.set(`${b.metadata.namespace}/${b.metadata.name}`, b.status.launcher?.node ?? '');
      }
    }
    for (const [k, node] of this.#running) if (k !== key) running.set(k, node);
    running.delete(key);
    const slots = {
      running: running.size,
      runningOnNode: [...running.values()].filter((n) => n === loc.node).length,
      maxConcurrentPulls: this.#o.maxConcurrentPulls,
      maxPullsPerNode: this.#o.maxPullsPerNode,
    };

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
      driver = await this.#o.drivers.driverFor({ namespace: ns, pod: loc.pod, container: LAUNCHER_CONTAINER, uri: located.uri ?? '' });
    } catch (err) {
      if (err instanceof LauncherUnavailableError) {
        launcher = { kind: 'launcherNotFound', message: err.message };
        // The transport found no way in (no watch event says when it will): polled as before.
        return { obs: { ...base, launcher, slots }, polled: true };
      }
      throw err;
    }
    const looked = await this.#gate.observe(driver, `pod ${ns}/${loc.pod}`, key, () => this.#observeHypervisor(bp, loc, driver, log));
    if (looked.kind === 'waiting') {
      log.debug({ launcherPod: loc.pod, detail: looked.detail }, 'not waiting on libvirt');
      // No driver: nothing is done through a launcher that did not answer this time.
      return { obs: { ...base, launcher, slots, hypervisor: { kind: 'unreachable', message: looked.message } } };
    }
    const hypervisor = looked.value;
    let jobStartedHere = false;
    if (hypervisor.kind === 'ok') {
      const mem = this.#mem(key);
      const jk = jobKey(loc.pod, loc.domain, hypervisor.disk.target);
      if (hypervisor.job === null) {
        // No job on the disk: whatever this process started or adopted there has ended.
        if (mem.started === jk) delete mem.started;
        if (mem.adopted === jk) delete mem.adopted;
      }
      jobStartedHere = mem.started === jk;
    }
    return { obs: { ...base, launcher, slots, hypervisor, jobStartedHere }, driver };
  }

  async #observeHypervisor(bp: BlockPull, loc: { readonly pod: string; readonly domain: string }, driver: BlockJobDriver, log: Logger): Promise<HypervisorObservation> {
    const st = bp.status;
    const domain = loc.domain;
    try {
      // While our job runs the chain does not change: one `virsh blockjob` per poll (on the pod
      // it runs in: after a migration the chain is read anew).
      const target = st?.launcher?.target;
      const current = st?.backingChain?.current;
      if (st?.phase === 'Running' && st.launcher?.domain === domain && st.launcher.pod === loc.pod && target !== undefined && current !== undefined) {
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
        switch (err.code) {
          case 'DomainNotFound':
            return { kind: 'domainNotFound', message: err.message };
          case 'DiskNotFound':
            return { kind: 'diskNotFound', message: err.message };
          default:
            return { kind: 'unreachable', message: err.message };
        }
      }
      return { kind: 'unreachable', message: describeError(err) };
    }
  }

  /** The launcher pod and its ephemeral-storage limit: a measurement is reused only while they stay. */
  #spaceLimits(bp: BlockPull, obs: Observation): string {
    const pod = obs.launcher?.kind === 'found' ? obs.launcher.launcher.pod : '';
    return `${pod}:${ephemeralStorageLimit(this.#o.pods.get(bp.metadata.namespace, pod)) ?? 'none'}`;
  }

  /**
   * The pre-flight measurement through the driver that made the observation (inside the compute
   * container). Unreachable propagates (the work queue retries with backoff); a tool that fails
   * or is missing makes the space unknown: the start is not held back, and the log says why.
   */
  async #measureSpace(bp: BlockPull, obs: Observation, decision: Decision, driver: BlockJobDriver, log: Logger): Promise<SpaceObservation> {
    const hv = obs.hypervisor;
    const loc = obs.launcher?.kind === 'found' ? obs.launcher.launcher : undefined;
    if (hv?.kind !== 'ok' || loc === undefined) return { kind: 'unknown', reason: 'the disk was not observed' };
    if (driver.getSpace === undefined) return { kind: 'unknown', reason: 'the driver cannot measure space' };
    const limitBytes = ephemeralStorageLimit(this.#o.pods.get(bp.metadata.namespace, loc.pod));
    const basePath = decision.status.backingChain?.basePath;
    try {
      const info = await driver.getSpace(loc.domain, { disk: hv.disk, ...(basePath !== undefined ? { basePath } : {}), measureUsage: limitBytes !== undefined });
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
          ? { ephemeral: { pod: loc.pod, limitBytes, usedBytes: info.usage.usedBytes, mountPoint: info.usage.mountPoint } }
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
        this.#lastWritten.delete(`${bp.metadata.namespace}/${bp.metadata.name}`);
        this.#wrote(
          await setFinalizers(this.#o.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name, bp.metadata.resourceVersion ?? '', [
            ...(bp.metadata.finalizers ?? []),
            FINALIZER,
          ]),
        );
        return;
      case 'removeFinalizer':
        try {
          await setFinalizers(
            this.#o.clients,
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
        delete this.#mem(`${bp.metadata.namespace}/${bp.metadata.name}`).lastJobError;
        await driver().startPull(action.domain, action.target, {
          ...(action.base !== undefined ? { base: action.base } : {}),
          ...(action.bandwidth > 0 ? { bandwidth: action.bandwidth } : {}),
        });
        this.#o.metrics?.pullsStarted.inc();
        log.info({ domain: action.domain, target: action.target, base: action.base, bandwidth: action.bandwidth }, 'block pull started');
        return;
      case 'setBandwidth':
        await driver().setBandwidth(action.domain, action.target, action.bandwidth);
        log.info({ bandwidth: action.bandwidth }, 'bandwidth changed');
        return;
      case 'abort':
        try {
          await driver().abort(action.domain, action.target);
        } catch (err) {
          // Already gone: what we wanted.
          if (!(isHypervisorError(err) && /no active block job|not active|No active/i.test(err.message))) throw err;
        }
        log.info({ domain: action.domain, target: action.target }, 'block job abort requested');
        return;
    }
  }

  /**
   * Write the status, guarded by `bp`'s resourceVersion. A conflict requeues the BlockPull; with
   * `fact`, the status is written again on the fresh object first, as long as the stored status
   * is still the one `bp` carries (only spec or metadata moved), so the record of an action
   * taken is not lost to a user's concurrent patch.
   */
  async #writeStatus(bp: BlockPull, next: BlockPullStatus, log: Logger, fact = false): Promise<WriteResult> {
    const key = `${bp.metadata.namespace}/${bp.metadata.name}`;
    let base = bp;
    for (let attempt = 1; ; attempt++) {
      const r = await this.#patchStatus(base, next, log);
      if (r.kind !== 'conflict' || !fact || attempt >= FACT_WRITE_ATTEMPTS) {
        if (r.kind === 'conflict') this.#o.enqueue(key);
        return r;
      }
      const raw = await getCustomObject(this.#o.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name);
      if (raw === undefined) return { kind: 'gone' };
      const fresh = parseBlockPull(raw);
      if (!sameJson(significant(fresh.status), significant(base.status))) {
        log.debug('status changed by another writer; the fact is not rewritten');
        this.#o.enqueue(key);
        return { kind: 'conflict' };
      }
      log.debug({ attempt }, 'status write conflict; writing the outcome again on the fresh object');
      base = fresh;
    }
  }

  async #patchStatus(bp: BlockPull, next: BlockPullStatus, log: Logger): Promise<WriteResult> {
    const key = `${bp.metadata.namespace}/${bp.metadata.name}`;
    const prev = bp.status;
    if (sameJson(prev, next)) return { kind: 'skipped' };
    const mem = this.#mem(key);
    const nowMs = this.#now().getTime();
    const transition = !sameJson(significant(prev), significant(next));
    if (!transition && mem.lastStatusWriteMs !== undefined && nowMs - mem.lastStatusWriteMs < this.#o.statusUpdateIntervalMs) return { kind: 'skipped' };
    const kind = !transition ? 'progress' : isTerminal(next.phase) ? 'final' : 'transition';
    const patch = [
      { op: 'test', path: '/metadata/resourceVersion', value: bp.metadata.resourceVersion },
      { op: 'add', path: '/status', value: next },
    ];
    let stored: unknown;
    try {
      stored = await this.#o.clients.custom.patchNamespacedCustomObjectStatus({ ...BLOCKPULL_REF, namespace: bp.metadata.namespace, name: bp.metadata.name, body: patch });
    } catch (err) {
      // A failed `test` of the resourceVersion is a 422 too, like a status the CRD schema refuses;
      // only the first is a conflict. Requeueing the second at once would rewrite it in a loop.
      if (isConflict(err) || (isApiError(err, 422) && (await this.#resourceVersionMoved(bp)))) {
        // Changed meanwhile (spec edit, finalizer): the change triggers a new reconcile.
        log.debug({ error: describeApiError(err) }, 'status write conflict');
        return { kind: 'conflict' };
      }
      if (isNotFound(err)) return { kind: 'gone' };
      throw err;
    }
    mem.lastStatusWriteMs = nowMs;
    this.#o.metrics?.statusWrites.inc({ kind });
    log.debug({ kind, phase: next.phase, reason: next.reason, job: next.job?.state, percent: next.progress?.percent }, 'status written');
    const version = StoredVersionSchema.safeParse(stored);
    const resourceVersion = version.success ? version.data.metadata.resourceVersion : bp.metadata.resourceVersion;
    const written: BlockPull = { ...bp, metadata: { ...bp.metadata, ...(resourceVersion !== undefined ? { resourceVersion } : {}) }, status: next };
    if (version.success) {
      this.#ownWrites.set(key, version.data.metadata.resourceVersion);
      this.#lastWritten.set(key, written);
    }
    return { kind: 'written', bp: written };
  }

  /** The stored BlockPull is no longer the version `bp` was read at (or is gone). */
  async #resourceVersionMoved(bp: BlockPull): Promise<boolean> {
    const raw = await getCustomObject(this.#o.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name);
    if (raw === undefined) return true;
    return (raw as { metadata?: { resourceVersion?: unknown } }).metadata?.resourceVersion !== bp.metadata.resourceVersion;
  }

  #events(bp: BlockPull, decision: Decision, final: Decision, adoptedNow: boolean): void {
    const rec = this.#o.events;
    if (rec === undefined) return;
    const obj: InvolvedObject = {
      apiVersion: API_VERSION,
      kind: KIND,
      namespace: bp.metadata.namespace,
      name: bp.metadata.name,
      uid: bp.metadata.uid,
    };
    const reason = final.status.reason;
    const changed = reason !== bp.status?.reason || final.status.phase !== bp.status?.phase;
    const message = final.status.message ?? '';
    const action = final === decision ? decision.action.type : 'none';
    if (adoptedNow) {
      void rec.normal(obj, 'Adopted', 'Adopt', `this operator process took over a block job it did not start: ${message}`);
      if (action === 'setBandwidth' && decision.action.type === 'setBandwidth') {
        void rec.normal(obj, 'BandwidthChanged', 'SetBandwidth', `bandwidth set to ${decision.action.bandwidth} bytes/s`);
      }
    } else if (action === 'startPull') void rec.normal(obj, reason === 'Retrying' ? 'Retrying' : 'PullStarted', 'StartPull', message);
    else if (action === 'setBandwidth' && decision.action.type === 'setBandwidth') {
      void rec.normal(obj, 'BandwidthChanged', 'SetBandwidth', `bandwidth set to ${decision.action.bandwidth} bytes/s`);
    } else if (action === 'abort') {
      if (bp.metadata.deletionTimestamp) void rec.normal(obj, 'Aborting', 'Abort', 'BlockPull deleted: aborting its block job');
      else if (reason === 'InvalidBandwidth') void rec.warning(obj, 'InvalidBandwidth', 'Abort', message);
      else if (reason === 'MigrationInProgress') void rec.normal(obj, 'MigrationInProgress', 'Abort', message);
      else void rec.normal(obj, 'Paused', 'Abort', message);
    } else if (changed && reason !== undefined && reason !== 'Created' && reason !== 'Adopted') {
      const warning = final.status.phase === 'Failed' || ['DiskBusy', 'HypervisorUnreachable', 'JobFailed', 'InsufficientSpace'].includes(reason);
      void rec.event(obj, warning ? 'Warning' : 'Normal', reason, final.status.phase ?? 'Observe', message);
    }
  }

  /** While a job runs, the driver's block-job events wake this BlockPull at once. */
  #watchJobEvents(key: string, d: Decision, driver: BlockJobDriver | undefined): void {
    const mem = this.#mem(key);
    const running = d.status.phase === 'Running' || d.action.type === 'abort';
    const domain = d.status.launcher?.domain;
    if (!running || domain === undefined || driver === undefined) {
      mem.subscription?.sub.stop();
      delete mem.subscription;
      return;
    }
    if (mem.subscription !== undefined && mem.subscription.domain === domain && mem.subscription.driver === driver) return;
    mem.subscription?.sub.stop();
    const target = d.status.launcher?.target;
    const sub = driver.watchEvents(
      domain,
      (ev) => {
        if (target !== undefined && ev.target !== target) return;
        if (ev.error !== undefined) this.#mem(key).lastJobError = ev.error;
        this.#o.enqueue(key);
      },
      target !== undefined ? { targets: [target] } : {},
    );
    mem.subscription = { domain, driver, sub };
  }
}

function describeError(err: unknown): string {
  if (err instanceof ApiException) return describeApiError(err);
  return err instanceof Error ? err.message : String(err);
}
