/**
 * A rate-limited work queue with client-go's semantics (k8s.io/client-go/util/workqueue):
 *
 * - dedup: an item added while already queued is queued once;
 * - an item being processed (handed out by get(), not yet done()) is never handed out again
 *   at the same time; if it is added meanwhile it is marked dirty and re-queued by done();
 * - addAfter(item, ms): delayed add (the earliest pending time wins);
 * - addRateLimited(item): addAfter with the rate limiter's delay: the max of a per-item
 *   exponential backoff (5 ms * 2^failures, capped at 1000 s) and an overall token bucket
 *   (10 qps, burst 100); forget(item) resets the item's failures;
 * - shutDown(): no more adds; get() still returns what is queued, then undefined;
 *   shutDownWithDrain() additionally waits until every handed-out item is done().
 *
 * Usage in a worker: `for (;;) { const k = await q.get(); if (k === undefined) break;
 * try { ...; q.forget(k) } catch { q.addRateLimited(k) } finally { q.done(k) } }`.
 */

// --- rate limiters ---------------------------------------------------------------------------

export interface RateLimiter<T> {
  /** Delay in ms before the item may be processed again; records a failure. */
  when(item: T): number;
  /** Stop tracking the item (it succeeded). */
  forget(item: T): void;
  /** How many times the item has been rate-limited since the last forget. */
  numRequeues(item: T): number;
}

/** Per-item exponential backoff: base * 2^failures, capped at max. */
export class ItemExponentialFailureRateLimiter<T> implements RateLimiter<T> {
  readonly #failures = new Map<T, number>();
  readonly #baseMs: number;
  readonly #maxMs: number;
  constructor(baseMs = 5, maxMs = 1_000_000) {
    this.#baseMs = baseMs;
    this.#maxMs = maxMs;
  }
  when(item: T): number {
    const exp = this.#failures.get(item) ?? 0;
    this.#failures.set(item, exp + 1);
    const backoff = this.#baseMs * 2 ** exp;
    return Number.isFinite(backoff) ? Math.min(backoff, this.#maxMs) : this.#maxMs;
  }
  forget(item: T): void {
    this.#failures.delete(item);
  }
  numRequeues(item: T): number {
    return this.#failures.get(item) ?? 0;
  }
}

/**
 * Overall token bucket (golang.org/x/time/rate Reserve semantics): starts full with `burst`
 * tokens, refills at `qps`; each when() reserves one token and returns how long until it is
 * available. Not per item: forget/numRequeues are no-ops.
 */
export class BucketRateLimiter<T> implements RateLimiter<T> {
  readonly #qps: number;
  readonly #burst: number;
  readonly #now: () => number;
  #tokens: number;
  #last: number;
  constructor(qps = 10, burst = 100, now: () => number = Date.now) {
    this.#qps = qps;
    this.#burst = burst;
    this.#now = now;
    this.#tokens = burst;
    this.#last = now();
  }
  when(_item: T): number {
    const now = this.#now();
    const elapsed = Math.max(0, now - this.#last);
    this.#last = now;
    this.#tokens = Math.min(this.#burst, this.#tokens + (elapsed * this.#qps) / 1000);
    this.#tokens -= 1;
    return this.#tokens >= 0 ? 0 : Math.ceil((-this.#tokens / this.#qps) * 1000);
  }
  forget(_item: T): void {}
  numRequeues(_item: T): number {
    return 0;
  }
}

/** The maximum delay of several limiters (all of them record the failure). */
export class MaxOfRateLimiter<T> implements RateLimiter<T> {
  readonly #limiters: readonly RateLimiter<T>[];
  constructor(...limiters: RateLimiter<T>[]) {
    this.#limiters = limiters;
  }
  when(item: T): number {
    let max = 0;
    for (const l of this.#limiters) max = Math.max(max, l.when(item));
    return max;
  }
  forget(item: T): void {
    for (const l of this.#limiters) l.forget(item);
  }
  numRequeues(item: T): number {
    let max = 0;
    for (const l of this.#limiters) max = Math.max(max, l.numRequeues(item));
    return max;
  }
}

/** client-go's DefaultControllerRateLimiter: max(5 ms * 2^n capped at 1000 s, bucket 10 qps burst 100). */
export function defaultControllerRateLimiter<T>(now: () => number = Date.now): RateLimiter<T> {
  return new MaxOfRateLimiter<T>(
    new ItemExponentialFailureRateLimiter<T>(5, 1_000_000),
    new BucketRateLimiter<T>(10, 100, now),
  );
}

// --- the delay heap --------------------------------------------------------------------------

interface Timed {
  readonly at: number;
}

/** Push onto a binary min-heap ordered by `at`. */
function heapPush<E extends Timed>(heap: E[], e: E): void {
  heap.push(e);
  for (let i = heap.length - 1; i > 0;) {
    const parent = (i - 1) >> 1;
    if (heap[parent]!.at <= heap[i]!.at) break;
    [heap[parent], heap[i]] = [heap[i]!, heap[parent]!];
    i = parent;
  }
}

/** Pop the earliest entry of a binary min-heap ordered by `at`. */
function heapPop<E extends Timed>(heap: E[]): E | undefined {
  const top = heap[0];
  const last = heap.pop();
  if (top === undefined || last === undefined || heap.length === 0) return top;
  heap[0] = last;
  for (let i = 0; ;) {
    const l = 2 * i + 1;
    const r = l + 1;
    let m = i;
    if (l < heap.length && heap[l]!.at < heap[m]!.at) m = l;
    if (r < heap.length && heap[r]!.at < heap[m]!.at) m = r;
    if (m === i) break;
    [heap[m], heap[i]] = [heap[i]!, heap[m]!];
    i = m;
  }
  return top;
}

// --- the queue -------------------------------------------------------------------------------

/** Optional observers, e.g. Prometheus metrics (see kube/metrics.ts workQueueHooks). */
export interface WorkQueueHooks {
  /** Called with the number of queued (ready) items after each change. */
  depth?(n: number): void;
  /** An item was added (deduplicated adds included, like client-go's adds_total). */
  add?(): void;
  /** addRateLimited was called. */
  retry?(): void;
  /** Seconds an item waited in the queue before get() handed it out. */
  queueLatency?(seconds: number): void;
  /** Seconds between get() and done() of an item. */
  workDuration?(seconds: number): void;
}

export interface WorkQueueOptions<T> {
  readonly name?: string;
  readonly rateLimiter?: RateLimiter<T>;
  readonly hooks?: WorkQueueHooks;
}

export class WorkQueue<T = string> {
  readonly name: string;
  readonly #rateLimiter: RateLimiter<T>;
  readonly #hooks: WorkQueueHooks;
  /** Ready items in FIFO order; every element is also in #dirty. */
  readonly #queue: T[] = [];
  /** Items that need processing (queued, or added again while processing). */
  readonly #dirty = new Set<T>();
  /** Items handed out by get() and not yet done(). Value: start time for workDuration. */
  readonly #processing = new Map<T, number>();
  /** When each queued item was added, for queueLatency. */
  readonly #addedAt = new Map<T, number>();
  /**
   * Delayed adds: item -> ready time, and the same in a min-heap by time with one timer for the
   * earliest, as client-go's delaying queue (not a timer per item: a fleet of 10,000 waiting
   * BlockPulls each holds a safety-resync requeue). A heap entry whose time is no
   * longer the item's (an earlier add replaced it) is stale and skipped.
   */
  readonly #waiting = new Map<T, number>();
  #heap: { at: number; item: T }[] = [];
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Number.POSITIVE_INFINITY;
  /** Pending get() calls. */
  readonly #getters: ((item: T | undefined) => void)[] = [];
  readonly #drainWaiters: (() => void)[] = [];
  #shuttingDown = false;

  constructor(options: WorkQueueOptions<T> = {}) {
    this.name = options.name ?? 'workqueue';
    this.#rateLimiter = options.rateLimiter ?? defaultControllerRateLimiter<T>();
    this.#hooks = options.hooks ?? {};
  }

  /** Queue an item now (deduplicated; deferred until done() if it is being processed). */
  add(item: T): void {
    if (this.#shuttingDown) return;
    this.#hooks.add?.();
    if (this.#dirty.has(item)) return;
    this.#dirty.add(item);
    if (this.#processing.has(item)) return;
    this.#enqueue(item);
  }

  /** Queue an item after `delayMs` (<= 0: now). A pending earlier time is kept. */
  addAfter(item: T, delayMs: number): void {
    if (this.#shuttingDown) return;
    if (!(delayMs > 0)) {
      this.add(item);
      return;
    }
    const at = Date.now() + delayMs;
    const pending = this.#waiting.get(item);
    if (pending !== undefined && pending <= at) return;
    this.#waiting.set(item, at);
    // Stale entries pile up only when items are moved earlier again and again: rebuild then.
    if (this.#heap.length > 2 * this.#waiting.size + 64)
      this.#heap = [...this.#waiting].map(([i, t]) => ({ at: t, item: i })).sort((a, b) => a.at - b.at);
    else heapPush(this.#heap, { at, item });
    this.#armTimer();
  }

  /** One timer, for the earliest live entry of the heap. */
  #armTimer(): void {
    const heap = this.#heap;
    while (heap.length > 0 && this.#waiting.get(heap[0]!.item) !== heap[0]!.at) heapPop(heap);
    const next = heap[0]?.at ?? Number.POSITIVE_INFINITY;
    if (next === this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = next;
    if (next === Number.POSITIVE_INFINITY) return;
    this.#timer = setTimeout(() => this.#releaseDue(), Math.max(0, next - Date.now()));
  }

  /** The timer fired: add every item whose time has come, then arm the timer for the next. */
  #releaseDue(): void {
    this.#timer = undefined;
    this.#timerAt = Number.POSITIVE_INFINITY;
    const now = Date.now();
    const heap = this.#heap;
    while (heap.length > 0 && heap[0]!.at <= now) {
      const { at, item } = heapPop(heap)!;
      if (this.#waiting.get(item) !== at) continue;
      this.#waiting.delete(item);
      this.add(item);
    }
    this.#armTimer();
  }

  /** Queue an item after the rate limiter's delay (a failure: the item's backoff grows). */
  addRateLimited(item: T): void {
    if (this.#shuttingDown) return;
    this.#hooks.retry?.();
    this.addAfter(item, this.#rateLimiter.when(item));
  }

  /** The item succeeded: reset its backoff. Does not remove it from the queue. */
  forget(item: T): void {
    this.#rateLimiter.forget(item);
  }

  numRequeues(item: T): number {
    return this.#rateLimiter.numRequeues(item);
  }

  /**
   * The next item, waiting if none is ready. Resolves undefined once the queue is shut down
   * and empty. The caller must call done(item) when finished with it.
   */
  get(): Promise<T | undefined> {
    if (this.#queue.length > 0) return Promise.resolve(this.#take());
    if (this.#shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.#getters.push(resolve));
  }

  /** Finished processing `item`; if it was added meanwhile it is queued again. */
  done(item: T): void {
    const started = this.#processing.get(item);
    if (started === undefined) return;
    this.#processing.delete(item);
    this.#hooks.workDuration?.((performance.now() - started) / 1000);
    if (this.#dirty.has(item)) {
      this.#enqueue(item);
    }
    if (this.#processing.size === 0) {
      for (const w of this.#drainWaiters.splice(0)) w();
    }
  }

  /** Number of ready items (not counting delayed or in-process ones). */
  len(): number {
    return this.#queue.length;
  }

  /** Items currently handed out and not done. */
  processingCount(): number {
    return this.#processing.size;
  }

  /** Items waiting for a delayed add. */
  waitingCount(): number {
    return this.#waiting.size;
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** Refuse new adds, drop delayed adds; get() drains what is queued, then resolves undefined. */
  shutDown(): void {
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Number.POSITIVE_INFINITY;
    this.#waiting.clear();
    this.#heap = [];
    if (this.#queue.length === 0) {
      for (const g of this.#getters.splice(0)) g(undefined);
    }
  }

  /** shutDown(), then wait until every item handed out by get() is done(). */
  async shutDownWithDrain(): Promise<void> {
    this.shutDown();
    if (this.#processing.size === 0) return;
    await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
  }

  #enqueue(item: T): void {
    this.#addedAt.set(item, performance.now());
    const getter = this.#getters.shift();
    if (getter !== undefined) {
      this.#queue.push(item);
      getter(this.#take());
      return;
    }
    this.#queue.push(item);
    this.#hooks.depth?.(this.#queue.length);
  }

  #take(): T {
    const item = this.#queue.shift() as T;
    this.#dirty.delete(item);
    const now = performance.now();
    const added = this.#addedAt.get(item);
    this.#addedAt.delete(item);
    if (added !== undefined) this.#hooks.queueLatency?.((now - added) / 1000);
    this.#processing.set(item, now);
    this.#hooks.depth?.(this.#queue.length);
    if (this.#shuttingDown && this.#queue.length === 0) {
      for (const g of this.#getters.splice(0)) g(undefined);
    }
    return item;
  }
}

// --- workers -------------------------------------------------------------------------------

/** What one pass over a key returns: when to look at it again (ms), or null for "on the next event". */
export type ReconcileKey<T> = (item: T) => Promise<number | null>;

export interface WorkerHooks<T> {
  /** A pass threw; the item is re-queued with backoff (unless shutting down). */
  readonly onError?: (item: T, err: unknown, worker: number) => void;
  /** Every pass, after done(): its outcome and duration in seconds. */
  readonly onPass?: (outcome: 'success' | 'requeue' | 'error', seconds: number) => void;
}

/**
 * Runs `count` workers over the queue until the signal aborts, the one loop both controllers use
 * (client-go's processNextWorkItem): a success forgets the item's failures and honours its
 * requeue delay, a failure re-queues it rate-limited. On abort the queue is shut down, items
 * still queued are released without a pass, and this resolves once every pass in flight is done.
 */
export async function runWorkers<T>(
  queue: WorkQueue<T>,
  count: number,
  signal: AbortSignal,
  reconcile: ReconcileKey<T>,
  hooks: WorkerHooks<T> = {},
): Promise<void> {
  const worker = async (id: number): Promise<void> => {
    for (;;) {
      const item = await queue.get();
      if (item === undefined) return;
      if (signal.aborted) {
        queue.done(item);
        continue;
      }
      const started = performance.now();
      let outcome: 'success' | 'requeue' | 'error' = 'success';
      try {
        const after = await reconcile(item);
        queue.forget(item);
        if (after !== null && !signal.aborted) {
          outcome = 'requeue';
          queue.addAfter(item, after);
        }
      } catch (err) {
        outcome = 'error';
        hooks.onError?.(item, err, id);
        if (!signal.aborted) queue.addRateLimited(item);
      } finally {
        queue.done(item);
        hooks.onPass?.(outcome, (performance.now() - started) / 1000);
      }
    }
  };
  const workers = Array.from({ length: count }, (_, i) => worker(i));
  await new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
  queue.shutDown();
  await Promise.all(workers);
}
