/**
 * The conditions decide() writes, for every phase and reason (test/e2e/ship/blockpull-states.ts):
 * Ready True only when Completed or Planned (False with the phase's reason otherwise), Reconciling True while
 * Pending or Running, Stalled True when Failed, Complete and Failed kept, each with the
 * observedGeneration it was computed from. The real kstatus library judges the same objects in
 * test/e2e/specs/ship/kstatus.e2e.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { REASONS, parseBlockPull, type Condition } from '../../operator/src/api/types.ts';
import { blockPullStates } from '../e2e/ship/blockpull-states.ts';

const states = blockPullStates();
const decidedStates = states.filter((s) => s.phase !== undefined);

function conditions(obj: Record<string, unknown>): Map<string, Condition> {
  const bp = parseBlockPull(obj);
  return new Map((bp.status?.conditions ?? []).map((c) => [c.type, c]));
}

describe('BlockPull conditions (kstatus and Job conventions)', () => {
  it('covers every phase and every reason', () => {
    expect(new Set(decidedStates.map((s) => s.phase))).toEqual(
      new Set(['Pending', 'Running', 'Paused', 'Completed', 'Failed', 'Planned']),
    );
    expect([...new Set(decidedStates.map((s) => s.reason))].sort()).toEqual([...REASONS].sort());
    expect(new Set(states.map((s) => s.name)).size).toBe(states.length);
  });

  it.each(decidedStates.map((s) => [s.name, s] as const))('%s', (_name, s) => {
    const c = conditions(s.object);
    const generation = (s.object.metadata as { generation: number }).generation;
    const observed = parseBlockPull(s.object).status?.observedGeneration;
    const want = {
      Ready: s.phase === 'Completed' || s.phase === 'Planned',
      Reconciling: s.phase === 'Pending' || s.phase === 'Running',
      Stalled: s.phase === 'Failed',
      Complete: s.phase === 'Completed',
      Failed: s.phase === 'Failed',
    };
    for (const [type, isTrue] of Object.entries(want)) {
      const cond = c.get(type);
      expect(cond, `${type} is set`).toBeDefined();
      expect(cond?.status, `${type}`).toBe(isTrue ? 'True' : 'False');
      expect(cond?.reason, `${type}.reason is the phase's reason`).toBe(s.reason);
      expect(cond?.observedGeneration, `${type}.observedGeneration`).toBe(observed);
    }
    if (!s.name.includes('not yet observed')) expect(observed).toBe(generation);
  });

  it('a terminal BlockPull whose spec changed re-states its conditions for the new generation', () => {
    const s = states.find((x) => x.name === 'Completed, spec changed, observed');
    expect(s).toBeDefined();
    const c = conditions(s!.object);
    expect(parseBlockPull(s!.object).status?.observedGeneration).toBe(2);
    for (const type of ['Ready', 'Reconciling', 'Stalled', 'Complete', 'Failed', 'Progressing'])
      expect(c.get(type)?.observedGeneration).toBe(2);
    expect(c.get('Ready')?.status).toBe('True');
  });
});
