import { describe, expect, it } from 'vitest';
import { parseBlockPull, type BlockPull } from '../../operator/src/api/types.ts';
import {
  bar,
  barBlock,
  barLine,
  formatEta,
  parsePlainLine,
  plainLine,
  planLines,
  progressOf,
  redraw,
} from './render.ts';

const MiB = 1024 * 1024;

function pull(
  status: Record<string, unknown> | undefined,
  name = 'vm1-root',
  extra: Record<string, unknown> = {},
): BlockPull {
  return parseBlockPull({
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPull',
    metadata: { name, namespace: 'tenant', uid: 'u1', ...extra },
    spec: { vmiName: 'vm1', disk: 'root' },
    ...(status !== undefined ? { status } : {}),
  });
}

const running = pull({
  phase: 'Running',
  reason: 'Pulling',
  message: 'streaming',
  progress: { currentBytes: 14 * MiB, totalBytes: 32 * MiB, percent: '43%', bytesPerSecond: 4 * MiB, etaSeconds: 5 },
  job: { state: 'Running' },
});

describe('planLines', () => {
  const chain = [
    { position: 0, path: '/d/top.qcow2', format: 'qcow2' },
    { position: 1, path: '/d/base.qcow2', format: 'qcow2' },
  ];
  it('the plan: what, the chain, the bytes to write, the space verdict, the ETA', () => {
    const p = pull({
      phase: 'Planned',
      reason: 'Planned',
      message: 'plan',
      launcher: { target: 'vda' },
      backingChain: { current: chain },
      plan: { bytesToWrite: 32 * MiB, space: 'Fits', availableBytes: 1024 * MiB, etaSeconds: 4 },
    });
    expect(planLines(p)).toEqual([
      'tenant/vm1 disk root (vda): pull into a single image',
      '  chain: /d/top.qcow2 (qcow2) <- /d/base.qcow2 (qcow2)',
      '  to write: at most 32.0 MiB (33554432 bytes)',
      '  space: Fits, 1.0 GiB (1073741824 bytes) free',
      `  eta: about ${formatEta(4)}`,
    ]);
  });
  it('too little space says why; no plan says where the BlockPull is', () => {
    const short = pull({
      phase: 'Planned',
      reason: 'Planned',
      message: 'space: 32 MiB must fit',
      plan: { basePath: '/d/base.qcow2', bytesToWrite: 1, space: 'Insufficient' },
    });
    expect(planLines(short)[0]).toBe('tenant/vm1 disk root: pull down to /d/base.qcow2');
    expect(planLines(short)).toContain('  space: Insufficient (space: 32 MiB must fit)');
    expect(
      planLines(pull({ phase: 'Failed', reason: 'InvalidBase', message: 'base position 7 is not in the chain' })),
    ).toEqual(['tenant/vm1 disk root: no plan: Failed/InvalidBase: base position 7 is not in the chain']);
    expect(planLines(pull({ phase: 'Completed', reason: 'NothingToDo', message: 'already flat' }))[0]).toBe(
      'tenant/vm1 disk root: nothing to do: already flat',
    );
  });
});

describe('progressOf', () => {
  it('percent from the bytes (floor), rate and ETA while running', () => {
    expect(progressOf(running)).toEqual({
      percent: 43,
      currentBytes: 14 * MiB,
      totalBytes: 32 * MiB,
      bytesPerSecond: 4 * MiB,
      etaSeconds: 5,
    });
  });

  it('ETA computed from the rate when the status has none', () => {
    const bp = pull({
      phase: 'Running',
      reason: 'Pulling',
      progress: { currentBytes: 10 * MiB, totalBytes: 32 * MiB, bytesPerSecond: 4 * MiB },
    });
    expect(progressOf(bp).etaSeconds).toBe(6); // 22 MiB at 4 MiB/s = 5.5 s, rounded up
  });

  it('a Completed pull is at 100 %, with neither rate nor ETA', () => {
    const bp = pull({
      phase: 'Completed',
      reason: 'Completed',
      progress: {
        currentBytes: 31 * MiB,
        totalBytes: 32 * MiB,
        percent: '97%',
        bytesPerSecond: 4 * MiB,
        etaSeconds: 0,
      },
    });
    expect(progressOf(bp)).toEqual({ percent: 100, currentBytes: 31 * MiB, totalBytes: 32 * MiB });
  });

  it('the percent string when bytes are missing; nothing before the first look', () => {
    expect(progressOf(pull({ phase: 'Paused', reason: 'Paused', progress: { percent: '12.5%' } })).percent).toBe(12);
    expect(progressOf(pull(undefined))).toEqual({});
  });
});

describe('barLine', () => {
  it('label, bar, percent, bytes, rate, ETA, phase/reason within the width', () => {
    const line = barLine(running, { width: 100, labelWidth: 10, withNamespace: false });
    // 24 inner cells, 43 % of them = 10: nine '=' and the head.
    expect(line).toBe(
      'vm1-root    [=========>              ]   43%  14.0 MiB/32.0 MiB  4.0 MiB/s  ETA 5s  Running/Pulling',
    );
    expect(line.length).toBeLessThanOrEqual(99);
  });

  it('a waiting pull shows its message (cut first); a narrow terminal drops the bar, then cuts the line', () => {
    const waiting = pull({ phase: 'Pending', reason: 'WaitingForSlot', message: 'the cluster runs 4 of 4 pulls' });
    expect(barLine(waiting, { width: 120, labelWidth: 8, withNamespace: false })).toBe(
      `vm1-root  [${' '.repeat(40)}]     -  Pending/WaitingForSlot: the cluster runs 4 of 4 pulls`,
    );
    expect(barLine(waiting, { width: 80, labelWidth: 8, withNamespace: false })).toBe(
      'vm1-root  [          ]     -  Pending/WaitingForSlot: the cluster runs 4 of 4 …',
    );
    const narrow = barLine(running, { width: 50, labelWidth: 8, withNamespace: true });
    expect(narrow.startsWith('tenant/vm1-root  ')).toBe(true);
    expect(narrow).not.toContain('[');
    expect(narrow.length).toBe(49);
    expect(narrow.endsWith('…')).toBe(true);
  });

  it('a pull being deleted shows the abort as the operator records it', () => {
    const aborting = pull({ ...running.status, job: { state: 'Aborting' } }, 'vm1-root', {
      deletionTimestamp: '2026-01-01T00:00:00Z',
    });
    expect(barLine(aborting, { width: 120, labelWidth: 8, withNamespace: false })).toMatch(
      /ETA 5s {2}Running\/Pulling deleting, job Aborting$/,
    );
    const noJob = pull({ phase: 'Pending', reason: 'VMINotFound' }, 'x', { deletionTimestamp: '2026-01-01T00:00:00Z' });
    expect(barLine(noJob, { width: 120, labelWidth: 1, withNamespace: false })).toMatch(
      /Pending\/VMINotFound deleting$/,
    );
  });

  it('bar cells: empty, partial, full', () => {
    expect(bar(undefined, 7)).toBe('[     ]');
    expect(bar(0, 7)).toBe('[     ]');
    expect(bar(40, 7)).toBe('[=>   ]');
    expect(bar(100, 7)).toBe('[=====]');
  });

  it('a block aligns its labels and sorts nothing itself', () => {
    const lines = barBlock([running, pull({ phase: 'Completed', reason: 'Completed' }, 'a')], 120, false);
    expect(lines[0]!.indexOf('[')).toBe(lines[1]!.indexOf('['));
    expect(lines[1]).toMatch(/^a {9}\[=+\] {2}100% {2}Completed\/Completed$/);
  });
});

describe('plainLine', () => {
  it('one key=value line with exact figures, parsed back', () => {
    const line = plainLine(running);
    expect(line).toBe(
      'tenant/vm1-root vmi=vm1 disk=root phase=Running reason=Pulling percent=43 bytes=14680064/33554432 rate=4194304 eta=5 job=Running message="streaming"',
    );
    expect(parsePlainLine(line)).toEqual({
      label: 'tenant/vm1-root',
      fields: {
        vmi: 'vm1',
        disk: 'root',
        phase: 'Running',
        reason: 'Pulling',
        percent: '43',
        bytes: '14680064/33554432',
        rate: '4194304',
        eta: '5',
        job: 'Running',
        message: 'streaming',
      },
    });
  });

  it('unknown figures are -, a new object is Pending/Created, a deleting one says so, a message with quotes survives', () => {
    expect(plainLine(pull(undefined))).toBe(
      'tenant/vm1-root vmi=vm1 disk=root phase=Pending reason=Created percent=- bytes=-/- rate=- eta=-',
    );
    const deleting = pull(
      { phase: 'Running', reason: 'Pulling', message: 'said "no"\nthen left', job: { state: 'Aborting' } },
      'x',
      { deletionTimestamp: '2026-01-01T00:00:00Z' },
    );
    const parsed = parsePlainLine(plainLine(deleting));
    expect(parsed?.fields).toMatchObject({ job: 'Aborting', deleting: 'true', message: 'said "no" then left' });
    expect(parsePlainLine('not a plain line =')).toBeUndefined();
  });
});

describe('formatEta and redraw', () => {
  it('ETA', () => {
    expect(formatEta(0)).toBe('0s');
    expect(formatEta(59)).toBe('59s');
    expect(formatEta(185)).toBe('3m05s');
    expect(formatEta(3720)).toBe('1h02m');
  });

  it('redraw moves up over what was drawn, clears each line, and what is left below', () => {
    expect(redraw(['a', 'b'], 0)).toBe('\x1b[2Ka\n\x1b[2Kb\n\x1b[J');
    expect(redraw(['c'], 2)).toBe('\x1b[2F\x1b[2Kc\n\x1b[J');
  });
});
