/**
 * Reconcile one BlockPull: observe -> decide (pure, decide.ts) -> act (at most one side effect)
 * -> write status (status subresource only, throttled for progress).
 *
 * - observe: the BlockPull (a fresh GET: the cache may lag our own writes), its VMI and the
 *   launcher pods from informer caches, then the disk's chain and block job through the driver.
 *   While a job runs only `virsh blockjob` is read (the chain does not change during a pull).
 * - act: add/remove the finalizer, start a pull, set its speed, or abort it.
 * - status: written when anything but progress changed (transition, final status at once); a
 *   progress-only change at most every statusUpdateIntervalMs per BlockPull.
 * - while a job runs: requeue every pollIntervalMs, and the driver's block-job events wake the
 *   BlockPull at once, so the final status lands within a second of the job's end.
 */
import { ApiException } from '@kubernetes/client-node';
import { API_VERSION, FINALIZER, GROUP, KIND, PLURAL, VERSION, isTerminal, parseBlockPull, type BlockPull, type BlockPullStatus } from '../api/types.ts';
import { HypervisorError, isHypervisorError } from '../hypervisor/errors.ts';
import type { BlockJobDriver, EventSubscription } from '../hypervisor/types.ts';
import type { EventRecorder, InvolvedObject } from '../kube/events.ts';
import { describeApiError, getCustomObject, isApiError, isConflict, isNotFound, setFinalizers, type KubeClients, type ResourceRef } from '../kube/client.ts';
import type { OperatorMetrics } from '../kube/metrics.ts';
import { forBlockPullKey, type Logger } from '../log.ts';
import { locateLauncher, vmiHasDisk, VmiSchema, LAUNCHER_CONTAINER } from '../kubevirt/launcher.ts';
import { LauncherUnavailableError, type DriverProvider } from '../kubevirt/transport.ts';
import {
  decide,
  decideActionError,
  diskHolder,
  type Action,
  type Decision,
  type HypervisorObservation,
  type LauncherObservation,
  type Observation,
  type ProgressSample,
} from './decide.ts';

export const BLOCKPULL_REF: ResourceRef = { group: GROUP, version: VERSION, plural: PLURAL };

/** Read access to an informer cache (WatchdogInformer implements it). */
export interface CacheReader {
  get(namespace: string | undefined, name: string): unknown;
  list(namespace?: string): readonly unknown[];
}

export interface ReconcilerOptions {
  readonly clients: KubeClients;
  readonly blockPulls: CacheReader;
  readonly vmis: CacheReader;
  readonly pods: CacheReader;
  readonly drivers: DriverProvider;
  readonly events?: EventRecorder;
  readonly metrics?: OperatorMetrics;
  readonly logger: Logger;
  readonly pollIntervalMs: number;
  readonly waitRequeueMs?: number;
  readonly statusUpdateIntervalMs: number;
  readonly maxConcurrentPulls: number;
  readonly maxPullsPerNode: number;
  /** Wake a BlockPull (the work queue's add). */
  readonly enqueue: (key: string) => void;
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
}

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

  constructor(options: ReconcilerOptions) {
    this.#o = options;
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

  /** Forget a BlockPull (deleted): stop its event subscription. */
  forget(key: string): void {
    const m = this.#memory.get(key);
    m?.subscription?.sub.stop();
    this.#memory.delete(key);
    this.#running.delete(key);
    this.#ownWrites.delete(key);
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

  /** All cached BlockPulls, parsed (malformed ones skipped). */
  #cachedBlockPulls(): BlockPull[] {
    const out: BlockPull[] = [];
    for (const raw of this.#o.blockPulls.list()) {
      try {
        out.push(parseBlockPull(raw));
      } catch {
        /* skipped: reconciled (and reported) on its own */
      }
    }
    return out;
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    const log = forBlockPullKey(this.#o.logger, key);
    const { namespace, name } = splitKey(key);
    const raw = await getCustomObject(this.#o.clients, BLOCKPULL_REF, namespace, name);
    if (raw === undefined) {
      log.debug('BlockPull is gone');
      this.forget(key);
      return { requeueAfterMs: null };
    }
    let bp: BlockPull;
    try {
      bp = parseBlockPull(raw);
    } catch (err) {
      log.error({ error: (err as Error).message }, 'BlockPull does not match the API schema; ignoring it');
      this.#o.metrics?.reconcileErrors.inc({ reason: 'InvalidObject' });
      return { requeueAfterMs: null };
    }

    const { obs, driver } = await this.#observe(bp, log);
    const decision = decide(obs);
    log.debug({ phase: decision.status.phase, reason: decision.status.reason, action: decision.action.type }, 'decided');

    let final: Decision = decision;
    let actionError: unknown;
    try {
      await this.#act(bp, decision.action, driver, log);
    } catch (err) {
      actionError = err;
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

    const mem = this.#mem(key);
    if (final.sample !== undefined) {
      const delta = mem.sample !== undefined ? final.sample.cur - mem.sample.cur : 0;
      if (delta > 0) this.#o.metrics?.bytesStreamed.inc(delta);
      mem.sample = final.sample;
    }
    if (final.status.phase !== 'Running') mem.sample = undefined;
    if (final.status.phase === 'Running') this.#running.set(key, final.status.launcher?.node ?? '');
    else this.#running.delete(key);

    const afterFinalizer = decision.action.type === 'addFinalizer' ? await this.#fresh(bp) : bp;
    await this.#writeStatus(afterFinalizer, final.status, log);
    this.#events(bp, decision, final);
    this.#watchJobEvents(key, final, driver);

    if (bp.status?.phase === 'Running' && final.status.phase !== 'Running') {
      // A slot is free: wake the BlockPulls waiting for one.
      for (const other of this.#cachedBlockPulls()) {
        if (other.status?.reason === 'WaitingForSlot') this.#o.enqueue(`${other.metadata.namespace}/${other.metadata.name}`);
      }
    }
    if (!isTerminal(bp.status?.phase) && isTerminal(final.status.phase)) {
      // Wake the BlockPulls waiting for this disk.
      for (const other of this.#cachedBlockPulls()) {
        if (
          other.metadata.namespace === bp.metadata.namespace &&
          other.spec.vmiName === bp.spec.vmiName &&
          other.spec.disk === bp.spec.disk &&
          other.metadata.name !== bp.metadata.name
        ) {
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
  async #observe(bp: BlockPull, log: Logger): Promise<{ obs: Observation; driver?: BlockJobDriver }> {
    const key = `${bp.metadata.namespace}/${bp.metadata.name}`;
    const all = this.#cachedBlockPulls();
    // Our own, fresh copy replaces the cached one.
    const others = all.filter((b) => !(b.metadata.namespace === bp.metadata.namespace && b.metadata.name === bp.metadata.name));
    const holder = diskHolder([...others, bp], bp);
    const base = {
      now: this.#now(),
      bp,
      diskHolder: holder,
      pollIntervalMs: this.#o.pollIntervalMs,
      waitRequeueMs: this.#o.waitRequeueMs ?? 5_000,
      ...(this.#memory.get(key)?.sample !== undefined ? { previousSample: this.#memory.get(key)!.sample! } : {}),
    };
    const deleting = bp.metadata.deletionTimestamp !== undefined && bp.metadata.deletionTimestamp !== null;
    const slotsNone = { running: 0, runningOnNode: 0, maxConcurrentPulls: this.#o.maxConcurrentPulls, maxPullsPerNode: this.#o.maxPullsPerNode };
    if (isTerminal(bp.status?.phase) && !deleting) return { obs: { ...base, slots: slotsNone } };
    // Without our finalizer decide() only adds it (deleting: lets go): nothing to read from libvirt yet.
    if (!(bp.metadata.finalizers ?? []).includes(FINALIZER)) return { obs: { ...base, slots: slotsNone } };

    const ns = bp.metadata.namespace;
    const rawVmi = this.#o.vmis.get(ns, bp.spec.vmiName);
    const located = locateLauncher(ns, bp.spec.vmiName, rawVmi, this.#o.pods.list(ns));
    let launcher: LauncherObservation = located.observation;
    if (launcher.kind !== 'found') return { obs: { ...base, launcher, slots: slotsNone } };
    const loc = launcher.launcher;

    // Slots: Running BlockPulls other than this one, cluster-wide and on the launcher's node.
    const running = new Map<string, string>();
    for (const b of others) if (b.status?.phase === 'Running') running.set(`${b.metadata.namespace}/${b.metadata.name}`, b.status.launcher?.node ?? '');
    for (const [k, node] of this.#running) if (k !== key) running.set(k, node);
    running.delete(key);
    const slots = {
      running: running.size,
      runningOnNode: [...running.values()].filter((n) => n === loc.node).length,
      maxConcurrentPulls: this.#o.maxConcurrentPulls,
      maxPullsPerNode: this.#o.maxPullsPerNode,
    };

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
        return { obs: { ...base, launcher, slots } };
      }
      throw err;
    }
    const hypervisor = await this.#observeHypervisor(bp, loc.domain, driver, log);
    return { obs: { ...base, launcher, slots, hypervisor }, driver };
  }

  async #observeHypervisor(bp: BlockPull, domain: string, driver: BlockJobDriver, log: Logger): Promise<HypervisorObservation> {
    const st = bp.status;
    try {
      // While our job runs the chain does not change: one `virsh blockjob` per poll.
      const target = st?.launcher?.target;
      const current = st?.backingChain?.current;
      if (st?.phase === 'Running' && st.launcher?.domain === domain && target !== undefined && current !== undefined) {
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

  async #act(bp: BlockPull, action: Action, observedWith: BlockJobDriver | undefined, log: Logger): Promise<void> {
    const driver = (): BlockJobDriver => {
      if (observedWith === undefined) throw new HypervisorError('Unreachable', 'no driver for this BlockPull');
      return observedWith;
    };
    switch (action.type) {
      case 'none':
        return;
      case 'addFinalizer':
        await setFinalizers(this.#o.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name, bp.metadata.resourceVersion ?? '', [
          ...(bp.metadata.finalizers ?? []),
          FINALIZER,
        ]);
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

  async #writeStatus(bp: BlockPull, next: BlockPullStatus, log: Logger): Promise<void> {
    const key = `${bp.metadata.namespace}/${bp.metadata.name}`;
    const prev = bp.status;
    if (sameJson(prev, next)) return;
    const mem = this.#mem(key);
    const nowMs = this.#now().getTime();
    const transition = !sameJson(significant(prev), significant(next));
    if (!transition && mem.lastStatusWriteMs !== undefined && nowMs - mem.lastStatusWriteMs < this.#o.statusUpdateIntervalMs) return;
    const kind = !transition ? 'progress' : isTerminal(next.phase) ? 'final' : 'transition';
    const patch = [
      { op: 'test', path: '/metadata/resourceVersion', value: bp.metadata.resourceVersion },
      { op: 'add', path: '/status', value: next },
    ];
    try {
      const written: unknown = await this.#o.clients.custom.patchNamespacedCustomObjectStatus({ ...BLOCKPULL_REF, namespace: bp.metadata.namespace, name: bp.metadata.name, body: patch });
      const rv = (written as { metadata?: { resourceVersion?: unknown } } | undefined)?.metadata?.resourceVersion;
      if (typeof rv === 'string') this.#ownWrites.set(key, rv);
    } catch (err) {
      // A failed `test` of the resourceVersion is a 422 too, like a status the CRD schema refuses;
      // only the first is a conflict. Requeueing the second at once would rewrite it in a loop.
      if (isConflict(err) || (isApiError(err, 422) && (await this.#resourceVersionMoved(bp)))) {
        // Changed meanwhile (spec edit, finalizer): the change triggers a new reconcile.
        log.debug({ error: describeApiError(err) }, 'status write conflict; requeued');
        this.#o.enqueue(key);
        return;
      }
      if (isNotFound(err)) return;
      throw err;
    }
    mem.lastStatusWriteMs = nowMs;
    this.#o.metrics?.statusWrites.inc({ kind });
    log.debug({ kind, phase: next.phase, reason: next.reason, percent: next.progress?.percent }, 'status written');
  }

  /** The stored BlockPull is no longer the version `bp` was read at (or is gone). */
  async #resourceVersionMoved(bp: BlockPull): Promise<boolean> {
    const raw = await getCustomObject(this.#o.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name);
    if (raw === undefined) return true;
    return (raw as { metadata?: { resourceVersion?: unknown } }).metadata?.resourceVersion !== bp.metadata.resourceVersion;
  }

  #events(bp: BlockPull, decision: Decision, final: Decision): void {
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
    if (action === 'startPull') void rec.normal(obj, reason === 'Retrying' ? 'Retrying' : 'PullStarted', 'StartPull', message);
    else if (action === 'setBandwidth' && decision.action.type === 'setBandwidth') {
      void rec.normal(obj, 'BandwidthChanged', 'SetBandwidth', `bandwidth set to ${decision.action.bandwidth} bytes/s`);
    } else if (action === 'abort') {
      void rec.normal(obj, bp.metadata.deletionTimestamp ? 'Aborting' : 'Paused', 'Abort', bp.metadata.deletionTimestamp ? 'BlockPull deleted: aborting its block job' : message);
    } else if (changed && reason !== undefined && reason !== 'Created') {
      const warning = final.status.phase === 'Failed' || ['DiskBusy', 'HypervisorUnreachable', 'JobFailed'].includes(reason);
      void rec.event(obj, warning ? 'Warning' : 'Normal', reason, final.status.phase ?? 'Observe', message);
    }
  }

  /** While a job runs, the driver's block-job events wake this BlockPull at once. */
  #watchJobEvents(key: string, d: Decision, driver: BlockJobDriver | undefined): void {
    const mem = this.#mem(key);
    const running = d.status.phase === 'Running' || (d.status.phase === 'Paused' && d.action.type === 'abort');
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
        if (target === undefined || ev.target === target) this.#o.enqueue(key);
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
