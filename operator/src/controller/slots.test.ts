import { describe, expect, it } from 'vitest';
import { NODE_LOOK_SPACING_MS, progressLookIntervalMs, roundRobinByNamespace, SlotLedger } from './slots.ts';

describe('roundRobinByNamespace: whom to wake first when a slot frees', () => {
  const waiting = ['a/1', 'a/2', 'a/3', 'a/4', 'b/1', 'c/1', 'c/2'];
  it('one of each namespace, then the next of each', () => {
    expect(roundRobinByNamespace(waiting, undefined)).toEqual(['a/1', 'b/1', 'c/1', 'a/2', 'c/2', 'a/3', 'a/4']);
  });
  it('starts after the namespace woken first last time (rotates), wrapping around', () => {
    expect(roundRobinByNamespace(waiting, 'a')).toEqual(['b/1', 'c/1', 'a/1', 'c/2', 'a/2', 'a/3', 'a/4']);
    expect(roundRobinByNamespace(waiting, 'c')).toEqual(['a/1', 'b/1', 'c/1', 'a/2', 'c/2', 'a/3', 'a/4']);
    expect(roundRobinByNamespace(waiting, 'gone')).toEqual(['a/1', 'b/1', 'c/1', 'a/2', 'c/2', 'a/3', 'a/4']);
  });
  it('a key listed twice (the cache and our in-flight write) is woken once', () => {
    expect(roundRobinByNamespace(['a/1', 'b/1', 'a/1'], undefined)).toEqual(['a/1', 'b/1']);
    expect(roundRobinByNamespace([], undefined)).toEqual([]);
  });
});

describe('SlotLedger', () => {
  it('holds a slot per BlockPull; release says whether it held one', () => {
    const l = new SlotLedger();
    l.hold('a/1', 'n1');
    l.hold('a/1', 'n2');
    expect([...l.entries()]).toEqual([['a/1', 'n2']]);
    expect(l.has('a/1')).toBe(true);
    expect(l.release('a/1')).toBe(true);
    expect(l.release('a/1')).toBe(false);
  });
});

describe('progress looks per node', () => {
  it('counts the held slots of one node', () => {
    const ledger = new SlotLedger();
    ledger.hold('a/1', 'n1');
    ledger.hold('a/2', 'n1');
    ledger.hold('b/1', 'n2');
    expect(ledger.heldOn('n1')).toBe(2);
    expect(ledger.heldOn('n2')).toBe(1);
    expect(ledger.heldOn('n3')).toBe(0);
    ledger.release('a/1');
    expect(ledger.heldOn('n1')).toBe(1);
  });

  it('looks every statusUpdateIntervalMs until the node has many pulls, then at most 2 looks a second on it', () => {
    expect(progressLookIntervalMs(2_000, 1)).toBe(2_000);
    expect(progressLookIntervalMs(2_000, 4)).toBe(2_000);
    expect(progressLookIntervalMs(2_000, 10)).toBe(10 * NODE_LOOK_SPACING_MS);
    expect(progressLookIntervalMs(2_000, 100)).toBe(50_000);
    // Whatever the count, the node sees at most 1000 / NODE_LOOK_SPACING_MS looks a second.
    for (const n of [1, 5, 10, 40, 100]) expect((n * 1000) / progressLookIntervalMs(2_000, n)).toBeLessThanOrEqual(2);
  });
});
