/**
 * The Reconciler's writes of a BlockPull, and what it remembers of them.
 *
 * - status: a JSON patch of the status subresource that sets metadata.resourceVersion to the one
 *   read (optimistic concurrency: 409 when the object moved). A transition is written at once, a
 *   progress-only change at most every statusUpdateIntervalMs per BlockPull. A 422 is the CRD
 *   refusing the status: an error (work queue backoff). A status that records the outcome of
 *   an action (start confirmed, start refused) is a fact: on a conflict it is written again on the
 *   fresh object while the stored status is still the one it was decided from.
 * - one record per BlockPull of what our writes stored: the object as our last write returned it,
 *   while the informer cache has not caught up with it (the cache lags our own writes), and the
 *   resourceVersion of our last status write until the watch brings it back (no wake-up for it).
 */
import { objectKey } from '../api/object-key.ts';
import { z } from 'zod';
import { BLOCKPULL_REF, isTerminal, parseBlockPull, type BlockPull, type BlockPullStatus } from '../api/types.ts';
import { describeApiError, getCustomObject, isConflict, isNotFound, type KubeClients } from '../kube/client.ts';
import type { OperatorMetrics } from '../kube/metrics.ts';
import type { Logger } from '../log.ts';

/** a is a later resourceVersion than b (both etcd revisions); false when either is not a number. */
export function isNewerVersion(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined || !/^\d+$/.test(a) || !/^\d+$/.test(b)) return false;
  return BigInt(a) > BigInt(b);
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

/** The fields whose change is a transition (written at once); progress and message are not. */
export function transitionFields(s: BlockPullStatus | undefined): unknown {
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
    completed: s.backingChain?.completed,
    readOn: s.backingChain?.readOn,
    startTime: s.startTime,
    completionTime: s.completionTime,
    attempts: s.attempts,
    retries: s.retries,
    job: s.job?.state,
  };
}

/** What a status write did. `written.bp` is the object as stored (its new resourceVersion). */
export type WriteResult =
  { readonly kind: 'written'; readonly bp: BlockPull } | { readonly kind: 'skipped' | 'conflict' | 'gone' };

/** How often a fact (the outcome of an action) is written again after resourceVersion conflicts. */
const FACT_WRITE_ATTEMPTS = 5;

const StoredVersionSchema = z.object({ metadata: z.object({ resourceVersion: z.string() }) });

/** What this process remembers of its writes of one BlockPull. */
interface OwnWrites {
  /** The object as our last write returned it, until the informer cache holds it (or newer). */
  stored?: BlockPull;
  /** The resourceVersion our last status write produced, until the watch brings it back. */
  echo?: string;
  /** When the status was last written (the progress throttle). */
  statusWrittenAtMs?: number;
}

export interface StatusWriterOptions {
  readonly clients: KubeClients;
  readonly statusUpdateIntervalMs: number;
  /** Wake a BlockPull (a conflict: the fresh object is reconciled). */
  readonly enqueue: (key: string) => void;
  readonly metrics?: OperatorMetrics;
  readonly now: () => Date;
}

export class StatusWriter {
  readonly #options: StatusWriterOptions;
  readonly #writes = new Map<string, OwnWrites>();

  constructor(options: StatusWriterOptions) {
    this.#options = options;
  }

  #record(key: string): OwnWrites {
    let w = this.#writes.get(key);
    if (w === undefined) {
      w = {};
      this.#writes.set(key, w);
    }
    return w;
  }

  /** Forget a BlockPull (deleted, or its finalizer removed). */
  forget(key: string): void {
    this.#writes.delete(key);
  }

  /** `cached`, or our last write of it when that is newer. */
  newest(cached: BlockPull): BlockPull {
    const w = this.#writes.get(objectKey(cached))?.stored;
    return w !== undefined &&
      w.metadata.uid === cached.metadata.uid &&
      isNewerVersion(w.metadata.resourceVersion, cached.metadata.resourceVersion)
      ? w
      : cached;
  }

  /** The object our last write of `key` returned, while the cache may not have it yet. */
  lastWritten(key: string): BlockPull | undefined {
    return this.#writes.get(key)?.stored;
  }

  /** Every object our writes returned that the cache may not have yet, by key. */
  *inFlight(): Generator<[string, BlockPull]> {
    for (const [key, w] of this.#writes) if (w.stored !== undefined) yield [key, w.stored];
  }

  /** The remembered object is no longer needed: the cache holds it (or newer), or a metadata write is about to replace it. */
  forgetStored(key: string): void {
    const w = this.#writes.get(key);
    if (w !== undefined) delete w.stored;
  }

  /** Remember what a write of the object's metadata (a finalizer patch) stored. */
  wroteMetadata(stored: BlockPull): void {
    this.#record(objectKey(stored)).stored = stored;
  }

  /**
   * The informer cache now holds `key` at `resourceVersion` (a watch update). The remembered
   * object is dropped once the cache has caught up with it. True, once, when this is our own last
   * status write coming back: the reconcile that wrote it has already requeued itself, so the
   * controller need not wake the BlockPull for it (a GET and a `virsh blockjob` per progress
   * write).
   */
  isOwnWrite(key: string, resourceVersion: string | undefined): boolean {
    const w = this.#writes.get(key);
    if (w === undefined) return false;
    if (w.stored !== undefined && !isNewerVersion(w.stored.metadata.resourceVersion, resourceVersion)) delete w.stored;
    if (resourceVersion === undefined || w.echo !== resourceVersion) return false;
    delete w.echo;
    return true;
  }

  /** The stored object (a GET), or `bp` when it is gone. */
  async fresh(bp: BlockPull): Promise<BlockPull> {
    const raw = await getCustomObject(this.#options.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name);
    return raw === undefined ? bp : parseBlockPull(raw);
  }

  /**
   * Write the status, guarded by `bp`'s resourceVersion. A conflict requeues the BlockPull; with
   * `fact`, the status is written again on the fresh object first, as long as the stored status
   * is still the one `bp` carries (only spec or metadata moved), so the record of an action
   * taken is not lost to a user's concurrent patch.
   */
  async write(bp: BlockPull, next: BlockPullStatus, log: Logger, fact = false): Promise<WriteResult> {
    const key = objectKey(bp);
    let base = bp;
    for (let attempt = 1; ; attempt++) {
      const r = await this.#patch(base, next, log);
      if (r.kind !== 'conflict' || !fact || attempt >= FACT_WRITE_ATTEMPTS) {
        if (r.kind === 'conflict') this.#options.enqueue(key);
        return r;
      }
      const raw = await getCustomObject(this.#options.clients, BLOCKPULL_REF, bp.metadata.namespace, bp.metadata.name);
      if (raw === undefined) return { kind: 'gone' };
      const fresh = parseBlockPull(raw);
      if (!sameJson(transitionFields(fresh.status), transitionFields(base.status))) {
        log.debug('status changed by another writer; the fact is not rewritten');
        this.#options.enqueue(key);
        return { kind: 'conflict' };
      }
      log.debug({ attempt }, 'status write conflict; writing the outcome again on the fresh object');
      base = fresh;
    }
  }

  async #patch(bp: BlockPull, next: BlockPullStatus, log: Logger): Promise<WriteResult> {
    const key = objectKey(bp);
    const prev = bp.status;
    if (sameJson(prev, next)) return { kind: 'skipped' };
    const nowMs = this.#options.now().getTime();
    const transition = !sameJson(transitionFields(prev), transitionFields(next));
    const lastMs = this.#writes.get(key)?.statusWrittenAtMs;
    if (!transition && lastMs !== undefined && nowMs - lastMs < this.#options.statusUpdateIntervalMs)
      return { kind: 'skipped' };
    const kind = !transition ? 'progress' : isTerminal(next.phase) ? 'final' : 'transition';
    // The resourceVersion is set to the one read, not `test`ed: the API server then refuses a moved
    // object with 409 Conflict, and 422 means only that the CRD refuses the status (a failed `test`
    // is a 422 too, which took a GET to tell apart). Measured on kube-apiserver 1.34: a stale
    // resourceVersion gets 409 even when the status is also invalid.
    const patch = [
      { op: 'replace', path: '/metadata/resourceVersion', value: bp.metadata.resourceVersion },
      { op: 'add', path: '/status', value: next },
    ];
    let stored: unknown;
    try {
      stored = await this.#options.clients.custom.patchNamespacedCustomObjectStatus({
        ...BLOCKPULL_REF,
        namespace: bp.metadata.namespace,
        name: bp.metadata.name,
        body: patch,
      });
    } catch (err) {
      // A status the CRD refuses (422) is an error, not a conflict: requeueing it at once would
      // rewrite it in a loop.
      if (isConflict(err)) {
        // Changed meanwhile (spec edit, finalizer): the change triggers a new reconcile.
        log.debug({ error: describeApiError(err) }, 'status write conflict');
        return { kind: 'conflict' };
      }
      if (isNotFound(err)) return { kind: 'gone' };
      throw err;
    }
    const record = this.#record(key);
    record.statusWrittenAtMs = nowMs;
    this.#options.metrics?.statusWrites.inc({ kind });
    log.debug(
      { kind, phase: next.phase, reason: next.reason, job: next.job?.state, percent: next.progress?.percent },
      'status written',
    );
    const version = StoredVersionSchema.safeParse(stored);
    const resourceVersion = version.success ? version.data.metadata.resourceVersion : bp.metadata.resourceVersion;
    const written: BlockPull = {
      ...bp,
      metadata: { ...bp.metadata, ...(resourceVersion !== undefined ? { resourceVersion } : {}) },
      status: next,
    };
    if (version.success) {
      record.echo = version.data.metadata.resourceVersion;
      record.stored = written;
    }
    return { kind: 'written', bp: written };
  }
}
