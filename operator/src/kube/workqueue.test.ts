import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  BucketRateLimiter,
  ItemExponentialFailureRateLimiter,
  MaxOfRateLimiter,
  WorkQueue,
  runWorkers,
  defaultControllerRateLimiter,
} from './workqueue.ts';

/** A get() that has not resolved within a few macrotasks is "pending". */
async function isPending<T>(p: Promise<T>): Promise<boolean> {
  const marker = Symbol('pending');
  const r = await Promise.race([p, new Promise((res) => setImmediate(() => res(marker)))]);
  return r === marker;
}

describe('ItemExponentialFailureRateLimiter', () => {
  it('backs off 5 ms * 2^n per item, capped at 1000 s, and forget resets', () => {
    const rl = new ItemExponentialFailureRateLimiter<string>();
    expect([rl.when('a'), rl.when('a'), rl.when('a'), rl.when('a')]).toEqual([5, 10, 20, 40]);
    expect(rl.when('b')).toBe(5); // independent per item
    expect(rl.numRequeues('a')).toBe(4);
    for (let i = 0; i < 40; i++) rl.when('a');
    expect(rl.when('a')).toBe(1_000_000);
    for (let i = 0; i < 2000; i++) rl.when('a'); // 2^n overflows to Infinity: still capped
    expect(rl.when('a')).toBe(1_000_000);
    rl.forget('a');
    expect(rl.numRequeues('a')).toBe(0);
    expect(rl.when('a')).toBe(5);
  });
});

describe('BucketRateLimiter', () => {
  it('allows a burst of 100, then 10 per second', () => {
    let now = 0;
    const rl = new BucketRateLimiter<string>(10, 100, () => now);
    for (let i = 0; i < 100; i++) expect(rl.when(`k${i}`)).toBe(0);
    expect(rl.when('x')).toBe(100); // 101st token available after 1/10 s
    expect(rl.when('y')).toBe(200); // reservations queue up
    now = 1_000; // 10 tokens refilled, 2 were already reserved
    expect(rl.when('z')).toBe(0);
    for (let i = 0; i < 7; i++) expect(rl.when(`w${i}`)).toBe(0);
    expect(rl.when('v')).toBe(100);
    expect(rl.numRequeues('x')).toBe(0);
  });
  it('refills to at most the burst', () => {
    let now = 0;
    const rl = new BucketRateLimiter<string>(10, 3, () => now);
    now = 1_000_000;
    expect([rl.when('a'), rl.when('a'), rl.when('a'), rl.when('a')]).toEqual([0, 0, 0, 100]);
  });
});

describe('MaxOfRateLimiter / default controller rate limiter', () => {
  it('takes the larger delay of backoff and bucket', () => {
    const now = 0;
    const rl = defaultControllerRateLimiter<string>(() => now);
    expect(rl.when('a')).toBe(5);
    expect(rl.when('a')).toBe(10);
    for (let i = 0; i < 98; i++) rl.when(`b${i}`);
    // 100 tokens used: the bucket now dominates for a fresh item
    expect(rl.when('c')).toBe(100);
    expect(rl.numRequeues('a')).toBe(2);
    rl.forget('a');
    expect(rl.numRequeues('a')).toBe(0);
  });
  it('records the failure in every limiter', () => {
    const a = new ItemExponentialFailureRateLimiter<string>(1, 1000);
    const b = new ItemExponentialFailureRateLimiter<string>(3, 1000);
    const rl = new MaxOfRateLimiter(a, b);
    expect(rl.when('k')).toBe(3);
    expect(rl.when('k')).toBe(6);
    expect(a.numRequeues('k')).toBe(2);
    expect(b.numRequeues('k')).toBe(2);
  });
});

describe('WorkQueue', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('hands out items in FIFO order and deduplicates queued keys', async () => {
    const q = new WorkQueue<string>();
    q.add('a');
    q.add('b');
    q.add('a');
    q.add('c');
    q.add('b');
    expect(q.len()).toBe(3);
    expect(await q.get()).toBe('a');
    expect(await q.get()).toBe('b');
    expect(await q.get()).toBe('c');
    expect(q.len()).toBe(0);
    expect(q.processingCount()).toBe(3);
  });

  it('never hands out a key twice at once: re-added while processing, it comes back after done()', async () => {
    const q = new WorkQueue<string>();
    q.add('a');
    const first = await q.get();
    expect(first).toBe('a');
    q.add('a'); // added while being processed: marked dirty, not queued
    q.add('a');
    expect(q.len()).toBe(0);
    const second = q.get();
    expect(await isPending(second)).toBe(true);
    q.done('a');
    expect(await second).toBe('a'); // exactly once, after done()
    expect(q.len()).toBe(0);
    q.done('a');
    expect(q.processingCount()).toBe(0);
    // done() without re-add does not requeue
    expect(await isPending(q.get())).toBe(true);
  });

  it('with many concurrent workers, no key is processed concurrently and every add after a get is seen', async () => {
    const q = new WorkQueue<string>();
    const active = new Set<string>();
    const processed: string[] = [];
    let violations = 0;
    const keys = ['k1', 'k2', 'k3'];
    const worker = async () => {
      for (;;) {
        const k = await q.get();
        if (k === undefined) return;
        if (active.has(k)) violations++;
        active.add(k);
        processed.push(k);
        // while processing, the key is added again by "informer events"
        if (processed.length < 60) q.add(k);
        await new Promise((r) => setImmediate(r));
        active.delete(k);
        q.done(k);
      }
    };
    const workers = Array.from({ length: 8 }, () => worker());
    for (const k of keys) q.add(k);
    while (processed.length < 60) await new Promise((r) => setImmediate(r));
    await q.shutDownWithDrain();
    await Promise.all(workers);
    expect(violations).toBe(0);
    expect(processed.length).toBeGreaterThanOrEqual(60);
    for (const k of keys) expect(processed.filter((p) => p === k).length).toBeGreaterThan(5);
  });

  it('a waiting get() is woken by add()', async () => {
    const q = new WorkQueue<string>();
    const g = q.get();
    expect(await isPending(g)).toBe(true);
    q.add('x');
    expect(await g).toBe('x');
  });

  it('several waiting getters each receive a different item', async () => {
    const q = new WorkQueue<string>();
    const gs = [q.get(), q.get(), q.get()];
    q.add('a');
    q.add('b');
    q.add('a');
    q.add('c');
    expect((await Promise.all(gs)).sort()).toEqual(['a', 'b', 'c']);
  });

  it('addAfter delays the add; the earliest pending time wins; duplicates collapse', async () => {
    vi.useFakeTimers();
    const q = new WorkQueue<string>();
    q.addAfter('a', 1000);
    q.addAfter('a', 500);
    q.addAfter('a', 2000); // later than the pending 500 ms: ignored
    expect(q.waitingCount()).toBe(1);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(499);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
    expect(q.waitingCount()).toBe(0);
    vi.advanceTimersByTime(5000);
    expect(q.len()).toBe(1); // the replaced timers did not fire a second add
    expect(await q.get()).toBe('a');
    q.addAfter('b', 0); // 0 = now
    expect(q.len()).toBe(1);
  });

  it('delayed adds share one timer, come out in time order, and an item moved earlier many times comes once', async () => {
    vi.useFakeTimers();
    const q = new WorkQueue<string>();
    // 1,000 items with shuffled delays 1..1000 ms: one pending timer, not 1,000.
    const delays = Array.from({ length: 1000 }, (_, i) => ((i * 7919) % 1000) + 1);
    delays.forEach((d, i) => q.addAfter(`i${i}`, d));
    expect(q.waitingCount()).toBe(1000);
    expect(vi.getTimerCount()).toBe(1);
    vi.advanceTimersByTime(500);
    expect(q.len()).toBe(500);
    const firstOut: string[] = [];
    for (let i = 0; i < 500; i++) firstOut.push((await q.get())!);
    // Delay k belongs to exactly one item; the first 500 out are those with delays 1..500, in order.
    const byDelay = new Map(delays.map((d, i) => [d, `i${i}`]));
    expect(firstOut).toEqual(Array.from({ length: 500 }, (_, k) => byDelay.get(k + 1)));
    for (const item of firstOut) q.done(item);
    // One item moved earlier 300 times (each leaves a stale heap entry behind): it comes out once, at its earliest time (9,700 ms).
    for (let d = 10_000; d >= 9_700; d--) q.addAfter('moved', d);
    vi.advanceTimersByTime(500);
    expect(q.len()).toBe(500);
    vi.advanceTimersByTime(9_700 - 500 - 1);
    expect(q.len()).toBe(500);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(501);
    vi.advanceTimersByTime(1_000);
    expect(q.len()).toBe(501);
    expect(q.waitingCount()).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('addRateLimited backs off exponentially per item until forget()', () => {
    vi.useFakeTimers();
    const q = new WorkQueue<string>();
    q.addRateLimited('a'); // 5 ms
    expect(q.numRequeues('a')).toBe(1);
    vi.advanceTimersByTime(4);
    expect(q.len()).toBe(0);
    vi.advanceTimersByTime(1);
    expect(q.len()).toBe(1);
    q.addRateLimited('z'); // item already queued: still delayed add, dedup on arrival
    q.addRateLimited('a'); // 10 ms
    q.addRateLimited('a'); // 20 ms, but the pending 10 ms wins
    expect(q.numRequeues('a')).toBe(3);
    q.forget('a');
    expect(q.numRequeues('a')).toBe(0);
  });

  it('shutDown: adds are ignored, queued items drain, then get() resolves undefined; waiting getters are released', async () => {
    const q = new WorkQueue<string>();
    const waiting = q.get();
    q.add('a');
    expect(await waiting).toBe('a');
    q.add('b');
    q.add('c');
    const idle = new WorkQueue<string>();
    const idleGet = idle.get();
    idle.shutDown();
    expect(await idleGet).toBeUndefined();

    q.addAfter('d', 10);
    q.shutDown();
    expect(q.waitingCount()).toBe(0); // delayed adds dropped
    q.add('e');
    q.addRateLimited('f');
    expect(q.len()).toBe(2);
    expect(await q.get()).toBe('b');
    expect(await q.get()).toBe('c');
    expect(await q.get()).toBeUndefined();
    expect(q.shuttingDown).toBe(true);
  });

  it('shutDownWithDrain waits for items in process to be done()', async () => {
    const q = new WorkQueue<string>();
    q.add('a');
    q.add('b');
    const a = await q.get();
    const b = await q.get();
    let drained = false;
    const d = q.shutDownWithDrain().then(() => {
      drained = true;
    });
    await new Promise((r) => setImmediate(r));
    expect(drained).toBe(false);
    q.done(a as string);
    await new Promise((r) => setImmediate(r));
    expect(drained).toBe(false);
    q.done(b as string);
    await d;
    expect(drained).toBe(true);
    // drain with nothing in process resolves at once
    await new WorkQueue<string>().shutDownWithDrain();
  });

  it('reports depth, adds, retries and latencies to hooks', async () => {
    const depths: number[] = [];
    let adds = 0;
    let retries = 0;
    const latencies: number[] = [];
    const works: number[] = [];
    const q = new WorkQueue<string>({
      hooks: {
        depth: (n) => depths.push(n),
        add: () => adds++,
        retry: () => retries++,
        queueLatency: (s) => latencies.push(s),
        workDuration: (s) => works.push(s),
      },
    });
    q.add('a');
    q.add('a');
    q.add('b');
    const k = await q.get();
    q.done(k as string);
    q.addRateLimited('c');
    expect(adds).toBe(3);
    expect(retries).toBe(1);
    expect(depths).toEqual([1, 2, 1]);
    expect(latencies).toHaveLength(1);
    expect(works).toHaveLength(1);
    expect(works[0]).toBeGreaterThanOrEqual(0);
    q.shutDown();
  });
});

describe('runWorkers', () => {
  it('honours requeue delays, retries failures rate-limited, and never runs one key twice at once', async () => {
    const q = new WorkQueue<string>({ rateLimiter: new ItemExponentialFailureRateLimiter(1, 10) });
    const ac = new AbortController();
    const passes: string[] = [];
    const inFlight = new Set<string>();
    let overlap = false;
    let failuresLeft = 2;
    const outcomes: string[] = [];
    const errors: string[] = [];
    const done = runWorkers(
      q,
      3,
      ac.signal,
      async (key) => {
        if (inFlight.has(key)) overlap = true;
        inFlight.add(key);
        passes.push(key);
        await new Promise((r) => setTimeout(r, 2));
        q.add(key); // an event while the pass runs: dirty, handed out again after done()
        inFlight.delete(key);
        if (key === 'flaky' && failuresLeft-- > 0) throw new Error('boom');
        return key === 'again' && passes.filter((p) => p === 'again').length < 3 ? 5 : null;
      },
      { onError: (key, err) => errors.push(`${key}: ${(err as Error).message}`), onPass: (o) => outcomes.push(o) },
    );
    q.add('flaky');
    q.add('again');
    await vi.waitFor(() => {
      expect(passes.filter((p) => p === 'flaky').length).toBeGreaterThanOrEqual(3);
      expect(passes.filter((p) => p === 'again').length).toBeGreaterThanOrEqual(3);
    });
    ac.abort();
    await done;
    expect(overlap).toBe(false);
    expect(errors).toEqual(['flaky: boom', 'flaky: boom']);
    expect(outcomes).toContain('requeue');
    expect(outcomes.filter((o) => o === 'error')).toHaveLength(2);
    expect(q.shuttingDown).toBe(true);
    expect(q.processingCount()).toBe(0);
  });

  it('releases queued keys without a pass once the signal has aborted', async () => {
    const q = new WorkQueue<string>();
    const ac = new AbortController();
    ac.abort();
    q.add('a');
    const seen: string[] = [];
    await runWorkers(q, 2, ac.signal, (key) => {
      seen.push(key);
      return Promise.resolve(null);
    });
    expect(seen).toEqual([]);
    expect(q.processingCount()).toBe(0);
  });
});
