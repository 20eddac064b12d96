import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { blockPullName, MAX_NAME_LENGTH } from './naming.ts';
import { matchesSelector } from './selector.ts';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const id = { policyUid: 'p1', vmiName: 'vm-1', vmiUid: 'u1', disk: 'rootdisk', role: 'pull' as const };

describe('blockPullName', () => {
  it('is deterministic, readable and different per policy, VMI incarnation, disk and role', () => {
    const n = blockPullName(id);
    expect(n).toBe(blockPullName({ ...id }));
    expect(n).toMatch(/^vm-1-rootdisk-[0-9a-f]{10}$/);
    const others = [
      blockPullName({ ...id, policyUid: 'p2' }),
      blockPullName({ ...id, vmiUid: 'u2' }),
      blockPullName({ ...id, disk: 'datadisk' }),
      blockPullName({ ...id, role: 'plan' }),
    ];
    expect(new Set([n, ...others]).size).toBe(5);
    expect(blockPullName({ ...id, role: 'plan' })).toMatch(/-plan$/);
  });

  it.each([
    ['a', 'b'],
    ['v'.repeat(63), 'd'.repeat(63)],
    ['vm-'.repeat(21), 'disk'],
    ['vm', 'data-'.repeat(12) + 'x'],
  ])('stays a DNS-1123 label of at most 63 characters (%s / %s), both roles', (vmiName, disk) => {
    for (const role of ['pull', 'plan'] as const) {
      const n = blockPullName({ ...id, vmiName, disk, role });
      expect(n.length).toBeLessThanOrEqual(MAX_NAME_LENGTH);
      expect(n).toMatch(DNS1123_LABEL);
      expect(n).not.toContain('--');
    }
  });

  it("a plan's base position gives a second name; without one the name is what it always was", () => {
    const plan = { ...id, role: 'plan' as const };
    // The hash input as before positions existed (a policy's existing plans keep their names).
    const before = createHash('sha256').update(['p1', 'u1', 'vm-1', 'rootdisk', 'plan'].join('\0')).digest('hex');
    expect(blockPullName(plan)).toBe(`vm-1-rootdisk-${before.slice(0, 10)}-plan`);
    const at3 = blockPullName({ ...plan, position: 3 });
    expect(at3).toMatch(/^vm-1-rootdisk-[0-9a-f]{10}-plan$/);
    expect(new Set([blockPullName(plan), at3, blockPullName({ ...plan, position: 2 })]).size).toBe(3);
  });

  it('two long names that share their first 40 characters do not collide', () => {
    const a = blockPullName({ ...id, vmiName: 'x'.repeat(50) + 'a' });
    const b = blockPullName({ ...id, vmiName: 'x'.repeat(50) + 'b' });
    expect(a).not.toBe(b);
  });
});

describe('matchesSelector', () => {
  const labels = { fleet: 'ci', tier: 'gold' };
  it.each([
    [{}, true],
    [{ matchLabels: { fleet: 'ci' } }, true],
    [{ matchLabels: { fleet: 'vdi' } }, false],
    [{ matchExpressions: [{ key: 'tier', operator: 'In' as const, values: ['gold', 'silver'] }] }, true],
    [{ matchExpressions: [{ key: 'tier', operator: 'NotIn' as const, values: ['gold'] }] }, false],
    [{ matchExpressions: [{ key: 'absent', operator: 'NotIn' as const, values: ['x'] }] }, true],
    [{ matchExpressions: [{ key: 'fleet', operator: 'Exists' as const }] }, true],
    [{ matchExpressions: [{ key: 'fleet', operator: 'DoesNotExist' as const }] }, false],
    [{ matchLabels: { fleet: 'ci' }, matchExpressions: [{ key: 'x', operator: 'Exists' as const }] }, false],
  ])('%j -> %s', (selector, want) => {
    expect(matchesSelector(selector, labels)).toBe(want);
  });

  it('an object without labels matches only selectors that need none', () => {
    expect(matchesSelector({}, undefined)).toBe(true);
    expect(matchesSelector({ matchLabels: { a: 'b' } }, undefined)).toBe(false);
  });
});
