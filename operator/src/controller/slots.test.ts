import { describe, expect, it } from 'vitest';
import { roundRobinByNamespace, SlotLedger } from './slots.ts';

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
