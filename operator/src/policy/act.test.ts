import { describe, expect, it } from 'vitest';
import { statusPatch } from './act.ts';

describe('statusPatch', () => {
  it('sets to null what the last status had and the new one lacks (a merge patch keeps what it does not name)', () => {
    expect(
      statusPatch(
        { observedGeneration: 1, etaSeconds: 10, plan: [{ namespace: 'n', vmi: 'v', disk: 'd' }], conflictCount: 0 },
        { observedGeneration: 2, conflictCount: 1 },
      ),
    ).toEqual({ status: { observedGeneration: 2, conflictCount: 1, etaSeconds: null, plan: null } });
    expect(statusPatch(undefined, { observedGeneration: 1 })).toEqual({ status: { observedGeneration: 1 } });
  });
});
