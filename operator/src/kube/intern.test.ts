import { describe, expect, it } from 'vitest';
import { StringInterner } from './intern.ts';

/** Two BlockPull-like objects as JSON.parse makes them: every string value a new string. */
const object = (i: number): Record<string, unknown> =>
  JSON.parse(
    JSON.stringify({
      metadata: { name: `p${i}`, namespace: 'ns' },
      status: {
        reason: 'VMINotFound',
        message: `VMI vm${i} not found`,
        conditions: ['Ready', 'Progressing'].map((type) => ({
          type,
          status: 'False',
          reason: 'VMINotFound',
          message: `VMI vm${i} not found`,
        })),
        tags: ['a', 'a'],
      },
    }),
  ) as Record<string, unknown>;

describe('StringInterner', () => {
  it('keeps every value, and shares repeats within an object and short strings across objects', () => {
    const interner = new StringInterner();
    const first = object(1);
    const expected = structuredClone(first);
    expect(interner.intern(first)).toBe(first);
    expect(first).toEqual(expected);
    // Within the object: reason x2, message x2, status 'False' x1, 'a' x1, 'VMINotFound' again... counted.
    const withinFirst = interner.shared;
    expect(withinFirst).toBe(6); // VMINotFound x2, message x2, False x1, a x1
    interner.intern(object(2));
    // Across objects: 'ns', 'VMINotFound', 'Ready', 'Progressing', 'False', 'a' are held already.
    expect(interner.shared - withinFirst).toBe(6 + 6);
  });

  it('remembers only short strings across objects, and at most maxEntries of them', () => {
    const interner = new StringInterner({ maxLength: 8, maxEntries: 3 });
    interner.intern({ a: 'short', b: 'a much longer string' });
    expect(interner.size).toBe(1);
    interner.intern({ a: 'x1', b: 'x2', c: 'x3' });
    expect(interner.size).toBeLessThanOrEqual(3);
    const before = interner.shared;
    interner.intern({ b: 'a much longer string' }); // not remembered across objects
    expect(interner.shared).toBe(before);
  });
});
