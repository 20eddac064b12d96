import { describe, expect, it } from 'vitest';
import { PHASES, parseBlockPull, type Phase } from '../../operator/src/api/types.ts';
import { EXIT, timeoutLine, waitVerdict } from './verdict.ts';

const bp = (phase: Phase | undefined, reason?: string, message?: string) =>
  parseBlockPull({
    metadata: { name: 'p', namespace: 'ns', uid: 'u' },
    spec: { vmiName: 'vm1', disk: 'd' },
    ...(phase !== undefined
      ? {
          status: { phase, ...(reason !== undefined ? { reason } : {}), ...(message !== undefined ? { message } : {}) },
        }
      : {}),
  });

describe('waitVerdict', () => {
  it('Completed (and a plan, Planned) is 0, Failed is 1, every other phase waits', () => {
    expect(waitVerdict(bp('Completed', 'Completed'), 'ns/p')).toEqual({
      done: true,
      exitCode: 0,
      line: 'blockpull ns/p Completed/Completed',
    });
    expect(waitVerdict(bp('Failed', 'InvalidBase', 'base position 9 is not in the chain'), 'ns/p')).toEqual({
      done: true,
      exitCode: 1,
      line: 'blockpull ns/p Failed/InvalidBase: base position 9 is not in the chain',
    });
    expect(waitVerdict(bp('Planned', 'Planned'), 'ns/p')).toEqual({
      done: true,
      exitCode: 0,
      line: 'blockpull ns/p Planned/Planned',
    });
    const waiting = PHASES.filter((p) => p !== 'Completed' && p !== 'Failed' && p !== 'Planned');
    expect(waiting).toEqual(['Pending', 'Running', 'Paused']);
    for (const p of waiting) expect(waitVerdict(bp(p), 'ns/p').done, p).toBe(false);
    expect(waitVerdict(bp(undefined), 'ns/p').done).toBe(false);
  });

  it('a pull deleted before it completed is a failure', () => {
    expect(waitVerdict(undefined, 'ns/p')).toEqual({
      done: true,
      exitCode: EXIT.failed,
      line: 'blockpull ns/p was deleted before it completed',
    });
  });

  it('the exit codes are distinct and a timeout says where the pull was', () => {
    expect(new Set(Object.values(EXIT)).size).toBe(Object.keys(EXIT).length);
    expect([EXIT.ok, EXIT.failed, EXIT.timeout]).toEqual([0, 1, 2]);
    expect(timeoutLine(bp('Pending', 'VMINotFound', 'VirtualMachineInstance ns/x not found'), 'ns/p', 2000)).toBe(
      'timed out after 2s waiting for blockpull ns/p (Pending/VMINotFound: VirtualMachineInstance ns/x not found)',
    );
  });
});
