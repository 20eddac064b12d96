import { describe, expect, it } from 'vitest';
import { PolicySpecSchema, type PolicySpec } from '../api/policy-types.ts';
import { decidePolicy, type PolicyFacts, type PullView, type SelectedDisk } from './decide.ts';
import { blockPullName } from './naming.ts';
import type { WindowState } from './window.ts';

const NOW = new Date('2026-12-07T12:00:00Z');
const spec = (s: Partial<PolicySpec> = {}): PolicySpec => ({ ...PolicySpecSchema.parse({ vmiSelector: {} }), ...s });
const disk = (vmi: string, d = 'rootdisk', extra: Partial<SelectedDisk> = {}): SelectedDisk => ({
  namespace: 'ns',
  vmi,
  vmiUid: `${vmi}-uid`,
  vmiCreated: '2026-12-07T10:00:00Z',
  disk: d,
  ...extra,
});
const nameOf = (vmi: string, role: 'pull' | 'plan' = 'pull', d = 'rootdisk'): string =>
  blockPullName({ policyUid: 'pol-uid', vmiName: vmi, vmiUid: `${vmi}-uid`, disk: d, role });
const own = (vmi: string, p: Partial<PullView> = {}): PullView => ({
  namespace: 'ns',
  name: nameOf(vmi, p.role ?? 'pull'),
  uid: `${vmi}-${p.role ?? 'pull'}-bp-uid`,
  created: '2026-12-07T11:00:00Z',
  deleting: false,
  vmi,
  disk: 'rootdisk',
  dryRun: p.role === 'plan',
  paused: false,
  migrationPolicy: 'Yield',
  controllerUid: 'pol-uid',
  policyName: 'fleet',
  policyKind: 'BlockPullPolicy',
  vmiUid: `${vmi}-uid`,
  role: 'pull',
  ...p,
});
const facts = (f: Partial<PolicyFacts> = {}): PolicyFacts => {
  const selected = f.selected ?? [];
  return {
    kind: 'BlockPullPolicy',
    name: 'fleet',
    namespace: 'ns',
    uid: 'pol-uid',
    generation: 1,
    spec: spec(),
    status: undefined,
    window: { kind: 'always' },
    own: [],
    others: [],
    vmiUids: new Map(selected.map((d) => [`${d.namespace}/${d.vmi}`, d.vmiUid])),
    now: NOW,
    ...f,
    selected,
  };
};
const cond = (d: ReturnType<typeof decidePolicy>, type: string) => d.status.conditions?.find((c) => c.type === type);

describe('decidePolicy: creating and pacing', () => {
  it('one BlockPull per selected disk, owned names and labels; beyond maxConcurrent created paused', () => {
    const d = decidePolicy(facts({ spec: spec({ maxConcurrent: 2 }), selected: [disk('a'), disk('b'), disk('c')] }));
    expect(d.create.map((c) => [c.name, c.spec.paused])).toEqual([
      [nameOf('a'), false],
      [nameOf('b'), false],
      [nameOf('c'), true],
    ]);
    expect(d.create[0]!.labels).toEqual({
      'blockpull.dev/policy-uid': 'pol-uid',
      'blockpull.dev/policy': 'fleet',
      'blockpull.dev/policy-kind': 'BlockPullPolicy',
      'blockpull.dev/vmi-uid': 'a-uid',
      'blockpull.dev/role': 'pull',
    });
    expect(d.create[0]!.spec).toEqual({
      vmiName: 'a',
      disk: 'rootdisk',
      paused: false,
      maxRetries: 3,
      migrationPolicy: 'Yield',
      dryRun: false,
    });
    expect(d.status.active).toBe(2);
    expect(d.requeueAfterMs).toBeNull();
  });

  it.each([
    // [name, existing pulls (vmi, paused, phase), maxConcurrent, want changes]
    [
      'a finished pull frees its slot: the oldest paused one is unpaused',
      [
        ['a', false, 'Completed'],
        ['b', true, 'Paused'],
        ['c', true, 'Paused'],
      ],
      1,
      [['b', false]],
    ],
    [
      'the budget is full: nothing changes',
      [
        ['a', false, 'Running'],
        ['b', true, 'Paused'],
      ],
      1,
      [],
    ],
    [
      'maxConcurrent lowered: the youngest active ones are paused',
      [
        ['a', false, 'Running'],
        ['b', false, 'Running'],
        ['c', false, 'Pending'],
      ],
      1,
      [
        ['b', true],
        ['c', true],
      ],
    ],
    [
      'a Pending (VMI not running) pull holds its slot',
      [
        ['a', false, 'Pending'],
        ['b', true, 'Paused'],
      ],
      1,
      [],
    ],
    [
      'a Failed pull frees its slot',
      [
        ['a', false, 'Failed'],
        ['b', true, 'Paused'],
      ],
      1,
      [['b', false]],
    ],
  ] as const)('%s', (_n, pulls, maxConcurrent, want) => {
    const selected = pulls.map(([v]) => disk(v));
    const ownPulls = pulls.map(([v, paused, phase], i) =>
      own(v, {
        paused,
        phase,
        created: `2026-12-07T11:00:0${i}Z`,
        ...(phase === 'Completed' || phase === 'Failed' ? { completionTime: '2026-12-07T11:30:00Z' } : {}),
      }),
    );
    const d = decidePolicy(facts({ spec: spec({ maxConcurrent }), selected, own: ownPulls }));
    expect(d.change.map((c) => [c.name, c.spec.paused])).toEqual(want.map(([v, p]) => [nameOf(v), p]));
    expect(d.create).toEqual([]);
    expect(d.status.active).toBeLessThanOrEqual(maxConcurrent);
  });

  it.each([
    [
      'outside the window',
      { window: { kind: 'closed', nextChange: new Date('2026-12-07T22:00:00Z') } as WindowState },
      'OutsideWindow',
      true,
    ],
    ['paused', { spec: spec({ paused: true }) }, 'Paused', false],
    [
      'a window in an unknown zone',
      { window: { kind: 'invalid', reason: 'InvalidWindow', message: 'bad zone' } as WindowState },
      'InvalidWindow',
      false,
    ],
  ] as const)('%s: running pulls are paused, new ones created paused', (_n, extra, reason, reconciling) => {
    const d = decidePolicy(
      facts({ selected: [disk('a'), disk('b')], own: [own('a', { phase: 'Running' })], ...extra }),
    );
    expect(d.change).toEqual([{ namespace: 'ns', name: nameOf('a'), spec: { paused: true } }]);
    expect(d.create.map((c) => c.spec.paused)).toEqual([true]);
    expect(d.status.active).toBe(0);
    expect(cond(d, 'Ready')?.reason).toBe(reason);
    expect(cond(d, 'Reconciling')?.status).toBe(reconciling ? 'True' : 'False');
    expect(cond(d, 'Stalled')?.status).toBe(reason === 'InvalidWindow' ? 'True' : 'False');
  });

  it('outside the window: looks again when it opens', () => {
    const d = decidePolicy(
      facts({ selected: [disk('a')], window: { kind: 'closed', nextChange: new Date('2026-12-07T22:00:00Z') } }),
    );
    expect(d.requeueAfterMs).toBe(10 * 3600_000);
    expect(d.status.window).toEqual({ open: false, nextChange: '2026-12-07T22:00:00Z' });
  });

  it('keeps bandwidth and migrationPolicy in step on unfinished pulls only', () => {
    const d = decidePolicy(
      facts({
        spec: spec({ bandwidth: '50Mi', migrationPolicy: 'WaitForPull' }),
        selected: [disk('a'), disk('b')],
        own: [own('a', { phase: 'Running' }), own('b', { phase: 'Completed', completionTime: '2026-12-07T11:30:00Z' })],
      }),
    );
    expect(d.change).toEqual([
      { namespace: 'ns', name: nameOf('a'), spec: { bandwidth: '50Mi', migrationPolicy: 'WaitForPull' } },
    ]);
  });
});

describe('decidePolicy: conflicts (the older claim wins)', () => {
  const users = (p: Partial<PullView> = {}): PullView => ({
    ...own('a', { name: 'users-pull', uid: 'u1', created: '2026-12-07T10:30:00Z' }),
    controllerUid: undefined,
    policyName: undefined,
    policyKind: undefined,
    vmiUid: undefined,
    role: undefined,
    ...p,
  });

  it.each([
    ['a user BlockPull pulling the disk', users({ phase: 'Running' }), true],
    ['a user BlockPull not looked at yet', users(), true],
    [
      "another policy's BlockPull",
      own('a', {
        name: 'other',
        uid: 'o1',
        controllerUid: 'other-uid',
        policyName: 'older',
        vmiUid: 'a-uid',
        created: '2026-12-07T10:30:00Z',
      }),
      true,
    ],
    [
      'a user BlockPull that completed on this VMI incarnation',
      users({ phase: 'Completed', created: '2026-12-07T10:30:00Z' }),
      true,
    ],
    [
      'a user BlockPull that completed before the VMI restarted',
      users({ phase: 'Completed', created: '2026-12-07T09:00:00Z' }),
      false,
    ],
    ['a user dryRun BlockPull (a plan holds no disk)', users({ dryRun: true }), false],
    [
      "another policy's pull of an earlier VMI incarnation",
      own('a', { name: 'other', uid: 'o1', controllerUid: 'x', policyName: 'older', vmiUid: 'old-uid' }),
      false,
    ],
    ['a BlockPull being deleted', users({ deleting: true }), false],
  ] as const)('%s: conflict = %s', (_n, other, isConflict) => {
    const d = decidePolicy(facts({ selected: [disk('a')], others: [other] }));
    expect(d.create.length).toBe(isConflict ? 0 : 1);
    expect(d.status.conflictCount).toBe(isConflict ? 1 : 0);
    if (isConflict)
      expect(d.status.conflicts?.[0]).toMatchObject({
        namespace: 'ns',
        vmi: 'a',
        disk: 'rootdisk',
        blockPull: other.name,
      });
  });

  it('a completed rival leaves the disk flat: Ready once the rest is done', () => {
    const d = decidePolicy(
      facts({
        selected: [disk('a'), disk('b')],
        others: [users({ phase: 'Completed' })],
        own: [own('b', { phase: 'Completed', completionTime: '2026-12-07T11:30:00Z' })],
      }),
    );
    expect(d.status.conflictCount).toBe(1);
    expect(cond(d, 'Ready')).toMatchObject({ status: 'True', reason: 'AllFlat' });
  });

  it('both exist (a race): the younger pull is deleted by its own policy; the older one stays', () => {
    const younger = decidePolicy(
      facts({
        selected: [disk('a')],
        own: [own('a', { created: '2026-12-07T11:00:00Z' })],
        others: [users({ created: '2026-12-07T10:59:59Z' })],
      }),
    );
    expect(younger.remove).toEqual([{ namespace: 'ns', name: nameOf('a'), uid: 'a-pull-bp-uid', why: 'LostConflict' }]);
    const older = decidePolicy(
      facts({
        selected: [disk('a')],
        own: [own('a', { created: '2026-12-07T10:00:00Z', phase: 'Running' })],
        others: [users({ created: '2026-12-07T10:59:59Z' })],
      }),
    );
    expect(older.remove).toEqual([]);
    expect(older.status.conflictCount).toBe(0);
  });

  it('an older policy selecting the same disk (no BlockPull yet) wins; every disk in conflict is Stalled', () => {
    const d = decidePolicy(facts({ selected: [disk('a', 'rootdisk', { olderPolicy: 'BlockPullPolicy/ns/first' })] }));
    expect(d.create).toEqual([]);
    expect(d.status.conflicts).toEqual([
      {
        namespace: 'ns',
        vmi: 'a',
        disk: 'rootdisk',
        policy: 'BlockPullPolicy/ns/first',
        message: 'the older policy BlockPullPolicy/ns/first selects this disk too; the older claim wins',
      },
    ]);
    expect(cond(d, 'Stalled')).toMatchObject({ status: 'True', reason: 'Conflict' });
  });
});

describe('decidePolicy: VMIs gone, restarted, unselected; TTL', () => {
  it('a VMI deleted mid-pull: its pull is deleted (the finalizer aborts), a finished one kept', () => {
    const d = decidePolicy(
      facts({
        selected: [],
        own: [own('a', { phase: 'Running' }), own('b', { phase: 'Completed', completionTime: '2026-12-07T11:00:00Z' })],
        vmiUids: new Map(),
      }),
    );
    expect(d.remove).toEqual([{ namespace: 'ns', name: nameOf('a'), uid: 'a-pull-bp-uid', why: 'VMIGone' }]);
    expect(cond(d, 'Ready')).toMatchObject({ status: 'True', reason: 'NothingSelected' });
  });

  it("a restarted VMI (new uid) gets a new pull; the old incarnation's pull is removed", () => {
    const restarted = disk('a', 'rootdisk', { vmiUid: 'a-uid-2' });
    const d = decidePolicy(facts({ selected: [restarted], own: [own('a', { phase: 'Pending' })] }));
    expect(d.create.map((c) => [c.name, c.labels['blockpull.dev/vmi-uid']])).toEqual([
      [
        blockPullName({ policyUid: 'pol-uid', vmiName: 'a', vmiUid: 'a-uid-2', disk: 'rootdisk', role: 'pull' }),
        'a-uid-2',
      ],
    ]);
    expect(d.create[0]!.name).not.toBe(nameOf('a'));
    expect(d.remove.map((r) => r.why)).toEqual(['VMIGone']);
  });

  it('a disk no longer selected: its unfinished pull is deleted', () => {
    const d = decidePolicy(
      facts({
        selected: [disk('b')],
        own: [own('a', { phase: 'Running' }), own('b', { phase: 'Running' })],
        vmiUids: new Map([
          ['ns/a', 'a-uid'],
          ['ns/b', 'b-uid'],
        ]),
      }),
    );
    expect(d.remove).toEqual([{ namespace: 'ns', name: nameOf('a'), uid: 'a-pull-bp-uid', why: 'NotSelected' }]);
  });

  it('TTL: a finished pull is deleted when due and remembered; not made again; looked at again when the next is due', () => {
    const s = spec({ ttlSecondsAfterFinished: 600 });
    const d = decidePolicy(
      facts({
        spec: s,
        selected: [disk('a'), disk('b')],
        own: [
          own('a', { phase: 'Completed', completionTime: '2026-12-07T11:00:00Z' }),
          own('b', { phase: 'Failed', completionTime: '2026-12-07T11:55:00Z' }),
        ],
      }),
    );
    expect(d.remove.map((r) => [r.name, r.why])).toEqual([[nameOf('a'), 'TTLExpired']]);
    expect(d.status.finished).toEqual(['a-uid/rootdisk=Completed']);
    expect(d.requeueAfterMs).toBe(5 * 60_000);
    const after = decidePolicy(facts({ spec: s, selected: [disk('a')], status: d.status }));
    expect(after.create).toEqual([]);
    expect(after.status.counts?.completed).toBe(1);
    expect(cond(after, 'Ready')?.reason).toBe('AllFlat');
    // A restarted VMI is a new disk to pull, and the memory of the old one is dropped.
    const restarted = decidePolicy(
      facts({ spec: s, selected: [disk('a', 'rootdisk', { vmiUid: 'a-uid-2' })], status: d.status }),
    );
    expect(restarted.create.length).toBe(1);
    expect(restarted.status.finished).toBeUndefined();
  });
});

describe('decidePolicy: plans (dryRun, minChainLength, base.keepBottom)', () => {
  const planned = (vmi: string, chainLength: number): PullView =>
    own(vmi, { role: 'plan', dryRun: true, phase: 'Planned', chainLength, planBytes: 1024 });

  it('dryRun: a dryRun BlockPull per disk, then the plan in the status; existing pulls paused', () => {
    const s = spec({ dryRun: true });
    const first = decidePolicy(
      facts({ spec: s, selected: [disk('a'), disk('b')], own: [own('b', { role: 'pull', phase: 'Running' })] }),
    );
    expect(first.create.map((c) => [c.name, c.spec.dryRun])).toEqual([[nameOf('a', 'plan'), true]]);
    expect(first.change).toEqual([{ namespace: 'ns', name: nameOf('b'), spec: { paused: true } }]);
    expect(cond(first, 'Ready')?.reason).toBe('Planning');
    const done = decidePolicy(
      facts({ spec: s, selected: [disk('a'), disk('c')], own: [planned('a', 3), planned('c', 1)] }),
    );
    expect(done.create).toEqual([]);
    expect(done.status.plan).toEqual([
      {
        namespace: 'ns',
        vmi: 'a',
        disk: 'rootdisk',
        chainLength: 3,
        bytesToWrite: 1024,
        pull: true,
        blockPull: nameOf('a', 'plan'),
      },
      {
        namespace: 'ns',
        vmi: 'c',
        disk: 'rootdisk',
        chainLength: 1,
        bytesToWrite: 1024,
        pull: false,
        blockPull: nameOf('c', 'plan'),
      },
    ]);
    expect(cond(done, 'Ready')).toMatchObject({ status: 'True', reason: 'Planned' });
  });

  it('minChainLength 3: only a disk whose plan shows 3 images or more is pulled; the used plan is deleted', () => {
    const s = spec({ minChainLength: 3 });
    const d = decidePolicy(
      facts({ spec: s, selected: [disk('a'), disk('b')], own: [planned('a', 3), planned('b', 2)] }),
    );
    expect(d.create.map((c) => c.name)).toEqual([nameOf('a')]);
    expect(d.status.counts?.skipped).toBe(1);
    const next = decidePolicy(
      facts({
        spec: s,
        selected: [disk('a'), disk('b')],
        own: [planned('a', 3), planned('b', 2), own('a', { phase: 'Running' })],
      }),
    );
    expect(next.remove).toEqual([
      { namespace: 'ns', name: nameOf('a', 'plan'), uid: 'a-plan-bp-uid', why: 'PlanUsed' },
    ]);
  });

  it('base.keepBottom 1 on a chain of 4: base.position 3 (the bottom image is kept)', () => {
    const d = decidePolicy(
      facts({ spec: spec({ base: { keepBottom: 1 } }), selected: [disk('a')], own: [planned('a', 4)] }),
    );
    expect(d.create[0]!.spec.base).toEqual({ position: 3 });
    // The first look measured a full pull: its bytes are not the pull's, so none are listed.
    expect(d.status.plan).toEqual([
      { namespace: 'ns', vmi: 'a', disk: 'rootdisk', chainLength: 4, pull: true, blockPull: nameOf('a', 'plan') },
    ]);
  });

  describe('dryRun with base.keepBottom: the bytes of the images that would be pulled', () => {
    const s = spec({ dryRun: true, minChainLength: 3, base: { keepBottom: 2 } });
    const FULL = 4 * 1024 * 1024;
    const ABOVE_BASE = 1024 * 1024;
    const basePlanName = blockPullName({
      policyUid: 'pol-uid',
      vmiName: 'a',
      vmiUid: 'a-uid',
      disk: 'rootdisk',
      role: 'plan',
      position: 2,
    });
    const chainLook = own('a', { role: 'plan', dryRun: true, phase: 'Planned', chainLength: 4, planBytes: FULL });
    const baseLook = (p: Partial<PullView>): PullView =>
      own('a', { role: 'plan', dryRun: true, name: basePlanName, uid: 'a-base-plan-uid', basePosition: 2, ...p });

    it('the first look (a full pull) leads to a second with the base the pull would get; no full-pull bytes listed', () => {
      const d = decidePolicy(facts({ spec: s, selected: [disk('a')], own: [chainLook] }));
      expect(
        d.create.map((c) => [c.name, c.labels['blockpull.dev/role'], c.spec.dryRun, c.spec.base, c.spec.paused]),
      ).toEqual([[basePlanName, 'plan', true, { position: 2 }, false]]);
      expect(basePlanName).not.toBe(nameOf('a', 'plan'));
      expect(d.status.plan).toEqual([
        { namespace: 'ns', vmi: 'a', disk: 'rootdisk', chainLength: 4, pull: true, blockPull: nameOf('a', 'plan') },
      ]);
      expect(cond(d, 'Ready')?.reason).toBe('Planning');
      // Still looking: nothing more is created, the plan still lists no bytes.
      const looking = decidePolicy(facts({ spec: s, selected: [disk('a')], own: [chainLook, baseLook({})] }));
      expect(looking.create).toEqual([]);
      expect(looking.status.plan?.[0]).not.toHaveProperty('bytesToWrite');
      expect(cond(looking, 'Ready')?.reason).toBe('Planning');
    });

    it("the second look's bytes are the plan's: only the images above the kept bottom two", () => {
      const d = decidePolicy(
        facts({
          spec: s,
          selected: [disk('a')],
          own: [chainLook, baseLook({ phase: 'Planned', chainLength: 4, planBytes: ABOVE_BASE })],
        }),
      );
      expect(d.create).toEqual([]);
      expect(d.remove).toEqual([]);
      expect(d.status.plan).toEqual([
        {
          namespace: 'ns',
          vmi: 'a',
          disk: 'rootdisk',
          chainLength: 4,
          bytesToWrite: ABOVE_BASE,
          pull: true,
          blockPull: basePlanName,
        },
      ]);
      expect(d.status.counts).toMatchObject({ planned: 1, pending: 0 });
      expect(cond(d, 'Ready')).toMatchObject({ status: 'True', reason: 'Planned' });
    });

    it('a second look of another base (keepBottom changed) is deleted; a failed one fails the disk', () => {
      const stale = baseLook({ basePosition: 3, uid: 'stale-uid', name: 'stale-plan', phase: 'Planned' });
      const d = decidePolicy(facts({ spec: s, selected: [disk('a')], own: [chainLook, stale] }));
      expect(d.remove).toEqual([{ namespace: 'ns', name: 'stale-plan', uid: 'stale-uid', why: 'PlanStale' }]);
      expect(d.create.map((c) => c.name)).toEqual([basePlanName]);
      const failed = decidePolicy(
        facts({ spec: s, selected: [disk('a')], own: [chainLook, baseLook({ phase: 'Failed' })] }),
      );
      expect(failed.status.counts?.failed).toBe(1);
      expect(failed.create).toEqual([]);
      expect(failed.status.plan?.[0]).not.toHaveProperty('bytesToWrite');
    });

    it('a chain too short to keep two: skipped after the first look, no second one', () => {
      const short = own('a', { role: 'plan', dryRun: true, phase: 'Planned', chainLength: 2, planBytes: FULL });
      const d = decidePolicy(
        facts({
          spec: spec({ dryRun: true, base: { keepBottom: 2 }, minChainLength: 3 }),
          selected: [disk('a')],
          own: [short],
        }),
      );
      expect(d.create).toEqual([]);
      expect(d.status.counts?.skipped).toBe(1);
      expect(d.status.plan?.[0]).toMatchObject({ pull: false, chainLength: 2 });
    });

    it('once dryRun is off, the pull is made down to the base and both looks are deleted', () => {
      const live = spec({ minChainLength: 3, base: { keepBottom: 2 } });
      const looks = [chainLook, baseLook({ phase: 'Planned', chainLength: 4, planBytes: ABOVE_BASE })];
      const first = decidePolicy(facts({ spec: live, selected: [disk('a')], own: looks }));
      expect(first.create.map((c) => [c.name, c.spec.base, c.spec.dryRun])).toEqual([
        [nameOf('a'), { position: 2 }, false],
      ]);
      expect(first.status.plan?.[0]).toMatchObject({ bytesToWrite: ABOVE_BASE, blockPull: basePlanName });
      const next = decidePolicy(
        facts({ spec: live, selected: [disk('a')], own: [...looks, own('a', { phase: 'Running', basePosition: 2 })] }),
      );
      expect(next.remove.map((r) => [r.name, r.why])).toEqual([
        [nameOf('a', 'plan'), 'PlanUsed'],
        [basePlanName, 'PlanUsed'],
      ]);
    });
  });
});

describe('decidePolicy: status', () => {
  it('sums bytes, estimates the ETA from the running pulls, counts phases', () => {
    const d = decidePolicy(
      facts({
        selected: [disk('a'), disk('b'), disk('c')],
        own: [
          own('a', { phase: 'Running', currentBytes: 100, totalBytes: 1100, bytesPerSecond: 100 }),
          own('b', { phase: 'Completed', totalBytes: 500, currentBytes: 500, completionTime: '2026-12-07T11:00:00Z' }),
          own('c', { phase: 'Paused', paused: true, currentBytes: 0, totalBytes: 1000 }),
        ],
      }),
    );
    expect(d.status).toMatchObject({
      observedGeneration: 1,
      selectedDisks: 3,
      counts: { running: 1, completed: 1, paused: 1, pending: 0, failed: 0, notCreated: 0 },
      bytesDone: 600,
      bytesTotal: 2600,
      etaSeconds: 20,
    });
    for (const t of ['Ready', 'Reconciling', 'Stalled']) expect(cond(d, t)?.observedGeneration).toBe(1);
    expect(cond(d, 'Reconciling')).toMatchObject({ status: 'True', reason: 'Pulling' });
  });

  it('every unfinished disk failed: Stalled PullsFailed', () => {
    const d = decidePolicy(
      facts({ selected: [disk('a')], own: [own('a', { phase: 'Failed', completionTime: '2026-12-07T11:00:00Z' })] }),
    );
    expect(cond(d, 'Stalled')).toMatchObject({ status: 'True', reason: 'PullsFailed' });
    expect(cond(d, 'Reconciling')?.status).toBe('False');
  });
});
