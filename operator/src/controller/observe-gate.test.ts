import { describe, expect, it } from 'vitest';
import { ObserveGate } from './observe-gate.ts';

const BUDGET = 250;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A look under test control: counts calls and concurrency; resolves when told (or after `ms`). */
function looks() {
  let running = 0;
  let maxRunning = 0;
  let calls = 0;
  const pending: ((v: string) => void)[] = [];
  const make = (value: string, ms?: number) => (): Promise<string> => {
    calls++;
    running++;
    maxRunning = Math.max(maxRunning, running);
    return new Promise<string>((resolve) => {
      const done = (v: string): void => {
        running--;
        resolve(v);
      };
      if (ms === undefined) pending.push(done);
      else setTimeout(() => done(value), ms);
    });
  };
  return {
    make,
    release: (v: string) => pending.shift()?.(v),
    get calls() {
      return calls;
    },
    get maxRunning() {
      return maxRunning;
    },
  };
}

function gate(lateMaxAgeMs?: number) {
  const woken: string[] = [];
  const g = new ObserveGate<string>({
    budgetMs: BUDGET,
    wake: (k) => woken.push(k),
    usableLate: (v) => v !== 'unreachable',
    ...(lateMaxAgeMs !== undefined ? { lateMaxAgeMs } : {}),
  });
  return { g, woken };
}

describe('ObserveGate', () => {
  it('a look within the budget is returned', async () => {
    const { g, woken } = gate();
    const l = looks();
    const launcher = {};
    expect(await g.observe(launcher, 'pod ns/p', 'ns/a', l.make('chain', 5))).toEqual({ kind: 'done', value: 'chain' });
    expect(woken).toEqual([]);
  });

  it('a hanging launcher holds a worker once for the budget, then not at all; its BlockPulls are woken when it answers', async () => {
    const { g, woken } = gate();
    const l = looks();
    const launcher = {};
    let t0 = performance.now();
    const first = await g.observe(launcher, 'pod ns/p', 'ns/a', l.make('x'));
    const firstMs = performance.now() - t0;
    const message = `libvirt in pod ns/p did not answer within ${BUDGET} ms; not waiting on it: its command runs on in the background (killed at its timeout) and this BlockPull is looked at again when it answers`;
    expect(first).toMatchObject({
      kind: 'waiting',
      message,
      detail: 'no answer within the budget: the look runs on in the background',
    });
    expect(firstMs).toBeGreaterThanOrEqual(BUDGET - 5);
    // Another BlockPull of the same launcher (and the first one again): no new command, no wait.
    t0 = performance.now();
    const second = await g.observe(launcher, 'pod ns/p', 'ns/b', l.make('y'));
    const third = await g.observe(launcher, 'pod ns/p', 'ns/a', l.make('z'));
    expect(performance.now() - t0).toBeLessThan(BUDGET - 50);
    // The same message (a status that changed with every look would be rewritten each time); the detail differs.
    expect(second).toMatchObject({
      kind: 'waiting',
      message,
      detail: expect.stringMatching(/^a look started \d+\.\d s ago \(by ns\/a\) has not ended$/) as string,
    });
    expect(third.kind).toBe('waiting');
    expect(l.calls).toBe(1);
    // It answers at last: both BlockPulls are woken; the first gets the late answer without a new command.
    l.release('late chain');
    await sleep(0);
    expect(woken.sort()).toEqual(['ns/a', 'ns/b']);
    expect(await g.observe(launcher, 'pod ns/p', 'ns/a', l.make('fresh', 1))).toEqual({
      kind: 'done',
      value: 'late chain',
    });
    expect(l.calls).toBe(1);
    // It was slow: the next look is not waited for; it runs in the background and wakes the BlockPull.
    t0 = performance.now();
    const next = await g.observe(launcher, 'pod ns/p', 'ns/b', l.make('quick', 5));
    expect(performance.now() - t0).toBeLessThan(BUDGET - 50);
    expect(next).toMatchObject({
      kind: 'waiting',
      message,
      detail: expect.stringContaining('the last look took longer than the budget') as string,
    });
    await sleep(20);
    expect(woken).toContain('ns/b');
    expect(await g.observe(launcher, 'pod ns/p', 'ns/b', l.make('never used'))).toEqual({
      kind: 'done',
      value: 'quick',
    });
    // That look was quick: the launcher is waited for again.
    expect(await g.observe(launcher, 'pod ns/p', 'ns/b', l.make('again', 5))).toEqual({ kind: 'done', value: 'again' });
    expect(l.maxRunning).toBe(1);
  });

  it('never two looks at one launcher at once: a second BlockPull waits behind a look within its budget', async () => {
    const { g } = gate();
    const l = looks();
    const launcher = {};
    const [a, b, c] = await Promise.all([
      g.observe(launcher, 'p', 'ns/a', l.make('A', 20)),
      g.observe(launcher, 'p', 'ns/b', l.make('B', 20)),
      g.observe({}, 'q', 'ns/c', l.make('C', 20)),
    ]);
    expect([a, b, c]).toEqual([
      { kind: 'done', value: 'A' },
      { kind: 'done', value: 'B' },
      { kind: 'done', value: 'C' },
    ]);
    expect(l.calls).toBe(3);
    expect(l.maxRunning).toBe(2); // the two launchers in parallel, each launcher one at a time
  });

  it('other launchers are not held back by a hanging one', async () => {
    const { g } = gate();
    const l = looks();
    const hanging = {};
    void g.observe(hanging, 'p', 'ns/a', l.make('x'));
    const t0 = performance.now();
    expect(await g.observe({}, 'q', 'ns/b', l.make('ok', 1))).toEqual({ kind: 'done', value: 'ok' });
    expect(performance.now() - t0).toBeLessThan(BUDGET);
  });

  it('a late answer too old, or a failed one, is not used', async () => {
    const { g } = gate(60);
    const l = looks();
    const launcher = {};
    await g.observe(launcher, 'p', 'ns/a', l.make('x'));
    l.release('old chain');
    await sleep(120);
    const next = await g.observe(launcher, 'p', 'ns/a', l.make('y'));
    expect(next.kind).toBe('waiting'); // slow launcher: a new look runs in the background
    expect(l.calls).toBe(2);
    l.release('unreachable');
    await sleep(0);
    const after = await g.observe(launcher, 'p', 'ns/a', l.make('z'));
    expect(after.kind).toBe('waiting');
    expect(l.calls).toBe(3);
  });
});
