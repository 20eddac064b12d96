import { describe, expect, it } from 'vitest';
import { RestartBackoff } from './restart-backoff.ts';

describe('RestartBackoff', () => {
  it('doubles from the first delay up to the ceiling; a stream that lived long enough starts it again', () => {
    const b = new RestartBackoff({ firstMs: 1_000, maxMs: 30_000, healthyAfterMs: 30_000 });
    expect([0, 0, 0, 0, 0, 0, 0].map((lived) => b.next(lived))).toEqual([
      1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000,
    ]);
    expect(b.next(29_999)).toBe(30_000); // not long enough
    expect(b.next(30_000)).toBe(1_000); // healthy: from the start
    expect(b.next(10)).toBe(2_000);
  });
});
