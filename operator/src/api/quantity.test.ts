import { describe, expect, it } from 'vitest';
import { formatBytes, parseQuantity, QuantityError } from './quantity.ts';

describe('parseQuantity', () => {
  it.each([
    [0, 0],
    [1048576, 1048576],
    ['0', 0],
    ['123', 123],
    ['1k', 1000],
    ['50Mi', 50 * 1024 * 1024],
    ['100M', 100_000_000],
    ['1.5Gi', 1610612736],
    ['2Ti', 2 * 1024 ** 4],
    ['0.5', 0],
    ['1.25Ki', 1280],
  ] as const)('%s → %d', (input, bytes) => {
    expect(parseQuantity(input)).toBe(bytes);
  });

  it.each([-1, 1.5, Number.MAX_SAFE_INTEGER + 2, '', '-1', '1 Mi', 'Mi', '1m', '1e3', '1.', '.5', '10Pi0', '1KB'])(
    'rejects %j',
    (input) => {
      expect(() => parseQuantity(input)).toThrow(QuantityError);
    },
  );
});

describe('formatBytes', () => {
  it('uses binary units', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(50 * 1024 * 1024)).toBe('50.0 MiB');
  });
});
