/**
 * Table tests of the pure state machine: every row of the architecture sketch's table, and
 * deletion, pause/unpause, bandwidth change, adoption, NothingToDo vs Completed, retries,
 * slot limits and the final status.
 */
import { describe, expect, it } from 'vitest';
import { getCondition } from '../api/conditions.ts';
import { FINALIZER, parseBlockPull, type BlockPull, type BlockPullStatus } from '../api/types.ts';
import { HypervisorError } from '../hypervisor/errors.ts';
import type { BlockJobInfo, DiskInfo } from '../hypervisor/types.ts';
import { backoffMs, diskHolder, fairShare, MAX_BACKOFF_MS, type HypervisorObservation } from './decide.ts';
import {
  decide,
  decideActionError,
  factsWanted,
  type TestObservation as Observation,
} from '../../../test/unit/support/decide.ts';
import type { LauncherLookup } from '../kubevirt/launcher.ts';

const NOW = new Date('2026-11-27T10:00:00Z');
const MiB = 1024 * 1024;
const TOP = '/d/top.qcow2';
const MID = '/d/mid.qcow2';
const BASE = '/d/base.qcow2';
const CHAIN3: DiskInfo = {
  target: 'vda',
  alias: 'ua-rootdisk',
  chain: [
    { position: 0, index: 1, path: TOP, format: 'qcow2' },
    { position: 1, index: 2, path: MID, format: 'qcow2' },
    { position: 2, index: 3, path: BASE, format: 'qcow2' },
  ],
};
const FLAT: DiskInfo = {
  target: 'vda',
  alias: 'ua-rootdisk',
  chain: [{ position: 0, index: 1, path: TOP, format: 'qcow2' }],
};
const PARTIAL: DiskInfo = {
  target: 'vda',
  chain: [
    { position: 0, index: 1, path: TOP, format: 'qcow2' },
    { position: 1, index: 4, path: BASE, format: 'qcow2' },
  ],
};
const before3 = CHAIN3.chain.map(({ position, path, format }) => ({ position, path, format }));
const FOUND: LauncherLookup = {
  kind: 'found',
  launcher: {
    namespace: 'ns',
    pod: 'virt-launcher-vm1-abcde',
    node: 'node1',
    container: 'compute',
    domain: 'ns_vm1',
    uri: 'qemu:///system',
  },
};
const job = (cur: number, end: number, bandwidth = 0): BlockJobInfo => ({ type: 'Block Pull', cur, end, bandwidth });
const ok = (disk: DiskInfo, j: BlockJobInfo | null = null): HypervisorObservation => ({ kind: 'ok', disk, job: j });

function bp(
  opts: {
    spec?: Record<string, unknown>;
    status?: BlockPullStatus;
    finalizer?: boolean;
    deleting?: boolean;
    name?: string;
    created?: string;
  } = {},
): BlockPull {
  return parseBlockPull({
    metadata: {
      name: opts.name ?? 'pull1',
      namespace: 'ns',
      uid: 'uid-1',
      generation: 2,
      creationTimestamp: opts.created ?? '2026-11-27T09:00:00Z',
      ...(opts.finalizer === false ? {} : { finalizers: [FINALIZER] }),
      ...(opts.deleting ? { deletionTimestamp: '2026-11-27T09:59:00Z' } : {}),
    },
    spec: { vmiName: 'vm1', disk: 'rootdisk', ...opts.spec },
    ...(opts.status ? { status: opts.status } : {}),
  });
}

function obs(o: Partial<Observation> & { bp: BlockPull }): Observation {
  return {
    now: NOW,
    launcher: FOUND,
    diskHolder: 'ns/pull1',
    slots: {
      running: 0,
      runningOnNode: 0,
      runningInNamespace: 0,
      namespacesWanting: 1,
      maxConcurrentPulls: 4,
      maxPullsPerNode: 2,
    },
    pollIntervalMs: 500,
    waitRequeueMs: 5000,
    // The job on the disk (if any) was started by this process unless a row says otherwise.
    jobStartedHere: true,
    ...o,
  };
}

const running = (extra: BlockPullStatus = {}): BlockPullStatus => ({
  phase: 'Running',
  reason: 'Pulling',
  attempts: 1,
  retries: 0,
  backingChain: { before: before3 },
  ...extra,
});

describe('decide: the state table', () => {
  it('never starts without the space measured: it asks for the space instead (factsWanted), with the base the start keeps', () => {
    const look = obs({ bp: bp({ spec: { base: { position: 2 } } }), hypervisor: ok(CHAIN3), space: 'not measured' });
    const d = decide(look);
    expect(d.action).toEqual({ type: 'none' });
    expect(d.wants).toBe('space');
    expect(d.requeueAfterMs).toBe(0);
    expect(factsWanted(look)).toEqual({ space: { basePath: BASE }, jobError: false });
    // Measured: the start.
    expect(decide({ ...look, space: { kind: 'unknown', reason: 'block device' } }).action.type).toBe('startPull');
    // A look that waits for a slot wants nothing measured.
    expect(
      factsWanted({ ...look, slots: { running: 4, runningOnNode: 0, runningInNamespace: 0, namespacesWanting: 1 } })
        .space,
    ).toBeUndefined();
  });

  it('a BlockPull waiting for its VMI or launcher gets no finalizer: no job of ours can run to abort on delete', () => {
    for (const launcher of [
      { kind: 'vmiNotFound', message: 'no VMI' },
      { kind: 'vmiNotRunning', message: 'Scheduling' },
      { kind: 'launcherNotFound', message: 'no pod' },
    ] as const) {
      const d = decide(obs({ bp: bp({ finalizer: false }), launcher }));
      expect(d.action, launcher.kind).toEqual({ type: 'none' });
      expect(d.status.phase).toBe('Pending');
    }
    // Deleted while waiting without it: nothing to do, the API server lets it go.
    expect(
      decide(
        obs({ bp: bp({ finalizer: false, deleting: true }), launcher: { kind: 'vmiNotFound', message: 'no VMI' } }),
      ).action,
    ).toEqual({ type: 'none' });
  });

  it('puts the finalizer back first when the record says a job of ours may run, even with no launcher found', () => {
    for (const state of ['Starting', 'Running', 'Aborting'] as const) {
      const d = decide(
        obs({
          bp: bp({ finalizer: false, status: running({ job: { state } }) }),
          launcher: { kind: 'launcherNotFound', message: 'no pod' },
        }),
      );
      expect(d.action, state).toEqual({ type: 'addFinalizer' });
      expect(d.status.phase).toBe('Running');
    }
  });

  it('adds the finalizer first, with an initial Pending status', () => {
    const d = decide(obs({ bp: bp({ finalizer: false }), hypervisor: ok(CHAIN3) }));
    expect(d.action).toEqual({ type: 'addFinalizer' });
    expect(d.status.phase).toBe('Pending');
    expect(d.status.reason).toBe('Created');
    expect(d.status.observedGeneration).toBe(2);
    expect(d.requeueAfterMs).toBe(0);
  });

  it.each([
    ['vmiNotFound', 'VMINotFound'],
    ['vmiNotRunning', 'VMINotRunning'],
    ['migrationInProgress', 'MigrationInProgress'],
    ['launcherNotFound', 'LauncherNotFound'],
  ] as const)('launcher %s → Pending/%s, requeue, no action', (kind, reason) => {
    const d = decide(obs({ bp: bp(), launcher: { kind, message: `msg ${kind}` } }));
    expect(d.status.phase).toBe('Pending');
    expect(d.status.reason).toBe(reason);
    expect(d.status.message).toBe(`msg ${kind}`);
    expect(d.action.type).toBe('none');
    expect(d.requeueAfterMs).toBe(5000);
    const progressing = getCondition(d.status.conditions, 'Progressing');
    expect(progressing).toMatchObject({ status: 'False', reason, observedGeneration: 2 });
  });

  it('disk absent in the domain → Failed/DiskNotFound, no requeue', () => {
    const d = decide(obs({ bp: bp(), hypervisor: { kind: 'diskNotFound', message: 'no disk rootdisk in ns_vm1' } }));
    expect(d.status).toMatchObject({
      phase: 'Failed',
      reason: 'DiskNotFound',
      message: 'no disk rootdisk in ns_vm1',
      completionTime: '2026-11-27T10:00:00Z',
    });
    expect(getCondition(d.status.conditions, 'Failed')?.status).toBe('True');
    expect(d.requeueAfterMs).toBeNull();
  });

  it('domain not (yet) known → Pending/DomainNotFound', () => {
    const d = decide(obs({ bp: bp(), hypervisor: { kind: 'domainNotFound', message: 'no domain' } }));
    expect(d.status).toMatchObject({ phase: 'Pending', reason: 'DomainNotFound' });
  });

  it('chain at goal on the first look → Completed/NothingToDo', () => {
    const d = decide(obs({ bp: bp(), hypervisor: ok(FLAT) }));
    expect(d.status).toMatchObject({ phase: 'Completed', reason: 'NothingToDo' });
    expect(d.status.message).toContain('nothing to do');
    expect(d.status.backingChain?.before).toEqual([{ position: 0, path: TOP, format: 'qcow2' }]);
    expect(getCondition(d.status.conditions, 'Complete')).toMatchObject({ status: 'True', reason: 'NothingToDo' });
    expect(d.action.type).toBe('none');
  });

  it('chain at goal after our job → Completed/Completed with the final status', () => {
    const d = decide(
      obs({
        bp: bp({
          status: running({
            progress: { currentBytes: 5, totalBytes: 100, percent: '5%' },
            startTime: '2026-11-27T09:59:00Z',
          }),
        }),
        hypervisor: ok(FLAT),
      }),
    );
    expect(d.status).toMatchObject({
      phase: 'Completed',
      reason: 'Completed',
      progress: { currentBytes: 100, totalBytes: 100, percent: '100%', etaSeconds: 0 },
      backingChain: { before: before3, current: [{ position: 0, path: TOP, format: 'qcow2' }] },
      completionTime: '2026-11-27T10:00:00Z',
      startTime: '2026-11-27T09:59:00Z',
      attempts: 1,
    });
    expect(getCondition(d.status.conditions, 'Progressing')?.status).toBe('False');
    expect(getCondition(d.status.conditions, 'Complete')?.status).toBe('True');
    expect(getCondition(d.status.conditions, 'Failed')?.status).toBe('False');
    expect(d.requeueAfterMs).toBeNull();
  });

  it('a non-pull block job on the disk → Pending/DiskBusy', () => {
    const d = decide(obs({ bp: bp(), hypervisor: ok(CHAIN3, { type: 'Block Copy', cur: 1, end: 10, bandwidth: 0 }) }));
    expect(d.status).toMatchObject({ phase: 'Pending', reason: 'DiskBusy' });
    expect(d.status.message).toContain('Block Copy');
    expect(d.action.type).toBe('none');
  });

  it('the pull of another BlockPull on the disk → Pending/DiskBusy, no first look recorded', () => {
    const d = decide(obs({ bp: bp({ name: 'pull2' }), diskHolder: 'ns/pull1', hypervisor: ok(CHAIN3, job(10, 100)) }));
    expect(d.status).toMatchObject({ phase: 'Pending', reason: 'DiskBusy' });
    expect(d.status.message).toContain('ns/pull1');
    expect(d.status.backingChain).toBeUndefined();
  });

  it('another BlockPull holds the disk (no job yet) → DiskBusy', () => {
    const d = decide(obs({ bp: bp({ name: 'pull2' }), diskHolder: 'ns/pull1', hypervisor: ok(CHAIN3) }));
    expect(d.status.reason).toBe('DiskBusy');
    expect(d.action.type).toBe('none');
  });

  it('the second BlockPull, after the first completed the disk → NothingToDo', () => {
    const d = decide(
      obs({
        bp: bp({ name: 'pull2', status: { phase: 'Pending', reason: 'DiskBusy' } }),
        diskHolder: 'ns/pull2',
        hypervisor: ok(FLAT),
      }),
    );
    expect(d.status).toMatchObject({ phase: 'Completed', reason: 'NothingToDo' });
  });

  it('no job, chain not at goal, slot free → Running, start pull (attempt 1)', () => {
    const d = decide(obs({ bp: bp({ spec: { bandwidth: '10Mi' } }), hypervisor: ok(CHAIN3) }));
    expect(d.action).toEqual({ type: 'startPull', domain: 'ns_vm1', target: 'vda', bandwidth: 10 * 1024 * 1024 });
    expect(d.status).toMatchObject({
      phase: 'Running',
      reason: 'Pulling',
      attempts: 1,
      retries: 0,
      startTime: '2026-11-27T10:00:00Z',
      launcher: {
        pod: 'virt-launcher-vm1-abcde',
        node: 'node1',
        container: 'compute',
        domain: 'ns_vm1',
        target: 'vda',
      },
      backingChain: { before: before3, current: before3 },
    });
    expect(getCondition(d.status.conditions, 'Progressing')).toMatchObject({ status: 'True', reason: 'Pulling' });
    expect(d.requeueAfterMs).toBe(500);
  });

  it('partial pull by position: starts with the base path; completes when the base follows the top', () => {
    const p = bp({ spec: { base: { position: 2 } } });
    const d = decide(obs({ bp: p, hypervisor: ok(CHAIN3) }));
    expect(d.action).toEqual({
      type: 'startPull',
      domain: 'ns_vm1',
      target: 'vda',
      base: { path: BASE },
      bandwidth: 0,
    });
    expect(d.status.backingChain?.basePath).toBe(BASE);
    const later = decide(
      obs({ bp: bp({ spec: { base: { position: 2 } }, status: d.status }), hypervisor: ok(PARTIAL) }),
    );
    expect(later.status).toMatchObject({ phase: 'Completed', reason: 'Completed' });
    // The chain flattened completely is NOT the goal of a partial pull.
    const wrong = decide(obs({ bp: bp({ spec: { base: { position: 2 } }, status: d.status }), hypervisor: ok(FLAT) }));
    expect(wrong.status.phase).not.toBe('Completed');
  });

  it('partial pull by path; a base not in the chain → Failed/InvalidBase', () => {
    const d = decide(obs({ bp: bp({ spec: { base: { path: BASE } } }), hypervisor: ok(CHAIN3) }));
    expect(d.action).toMatchObject({ type: 'startPull', base: { path: BASE } });
    // The base is already the top's backing image: nothing to pull.
    const noop = decide(obs({ bp: bp({ spec: { base: { path: MID } } }), hypervisor: ok(CHAIN3) }));
    expect(noop.status).toMatchObject({ phase: 'Completed', reason: 'NothingToDo' });
    const bad = decide(obs({ bp: bp({ spec: { base: { path: '/nope.qcow2' } } }), hypervisor: ok(CHAIN3) }));
    expect(bad.status).toMatchObject({ phase: 'Failed', reason: 'InvalidBase' });
    expect(bad.status.message).toContain('/nope.qcow2');
    const tooDeep = decide(obs({ bp: bp({ spec: { base: { position: 3 } } }), hypervisor: ok(CHAIN3) }));
    expect(tooDeep.status).toMatchObject({ phase: 'Failed', reason: 'InvalidBase' });
  });

  it('no slot free cluster-wide or on the node → Pending/WaitingForSlot', () => {
    const cluster = decide(
      obs({
        bp: bp(),
        hypervisor: ok(CHAIN3),
        slots: {
          running: 4,
          runningOnNode: 0,
          runningInNamespace: 0,
          namespacesWanting: 1,
          maxConcurrentPulls: 4,
          maxPullsPerNode: 2,
        },
      }),
    );
    expect(cluster.status).toMatchObject({ phase: 'Pending', reason: 'WaitingForSlot' });
    expect(cluster.status.message).toContain('cluster-wide');
    expect(cluster.action.type).toBe('none');
    const node = decide(
      obs({
        bp: bp(),
        hypervisor: ok(CHAIN3),
        slots: {
          running: 2,
          runningOnNode: 2,
          runningInNamespace: 0,
          namespacesWanting: 1,
          maxConcurrentPulls: 4,
          maxPullsPerNode: 2,
        },
      }),
    );
    expect(node.status).toMatchObject({ phase: 'Pending', reason: 'WaitingForSlot' });
    expect(node.status.message).toContain('node1');
  });

  describe('fair share of the cluster-wide slots between namespaces: ceil(limit / namespaces wanting); a namespace at its share waits', () => {
    const slots = (
      running: number,
      runningInNamespace: number,
      namespacesWanting: number,
      maxConcurrentPulls = 4,
    ): Observation['slots'] => ({
      running,
      runningOnNode: 0,
      runningInNamespace,
      namespacesWanting,
      maxConcurrentPulls,
      maxPullsPerNode: 10,
    });
    const rows: { name: string; slots: Observation['slots']; share: number; starts: boolean }[] = [
      { name: 'one namespace wants slots: it may take them all', slots: slots(3, 3, 1), share: 4, starts: true },
      { name: 'two namespaces, this one runs 1 of its 2', slots: slots(3, 1, 2), share: 2, starts: true },
      { name: 'two namespaces, this one runs its 2', slots: slots(2, 2, 2), share: 2, starts: false },
      {
        name: 'two namespaces, this one runs 3 (more than its share, before the other came)',
        slots: slots(3, 3, 2),
        share: 2,
        starts: false,
      },
      {
        name: 'three namespaces, limit 4: share ceil(4/3) = 2, this one runs 1',
        slots: slots(3, 1, 3),
        share: 2,
        starts: true,
      },
      { name: 'five namespaces, limit 4: share 1, this one runs 1', slots: slots(1, 1, 5), share: 1, starts: false },
      { name: 'five namespaces, limit 4: share 1, this one runs none', slots: slots(3, 0, 5), share: 1, starts: true },
      {
        name: 'the cluster-wide limit comes first, whatever the share',
        slots: slots(4, 0, 2),
        share: 2,
        starts: false,
      },
    ];
    for (const row of rows) {
      it(row.name, () => {
        expect(fairShare(row.slots.maxConcurrentPulls ?? 4, row.slots.namespacesWanting)).toBe(row.share);
        const d = decide(obs({ bp: bp(), hypervisor: ok(CHAIN3), slots: row.slots }));
        if (row.starts) {
          expect(d.action.type).toBe('startPull');
        } else {
          expect(d.action.type).toBe('none');
          expect(d.status).toMatchObject({ phase: 'Pending', reason: 'WaitingForSlot' });
        }
      });
    }
    it('the message says why: the namespace, what it runs, its share', () => {
      const d = decide(obs({ bp: bp(), hypervisor: ok(CHAIN3), slots: slots(3, 2, 2) }));
      expect(d.status.message).toBe(
        'namespace ns runs 2 pulls, its fair share (2) of the 4 cluster-wide slots while 2 namespaces want one',
      );
    });
  });

  describe('a start that did not answer within the bound (job Unanswered)', () => {
    const unanswered = (extra: BlockPullStatus = {}): BlockPullStatus => ({
      ...running(),
      phase: 'Pending',
      reason: 'HypervisorUnreachable',
      message:
        'the start of the pull (virsh blockpull) did not return within 10000 ms; the command was ended; it may have started the job: the next look at the disk tells',
      job: { state: 'Unanswered' },
      ...extra,
    });
    it('the job is on the disk → ours, Running (never started again)', () => {
      const d = decide(obs({ bp: bp({ status: unanswered() }), hypervisor: ok(CHAIN3, job(10, 100)) }));
      expect(d.status).toMatchObject({ phase: 'Running', reason: 'Pulling', job: { state: 'Running' }, attempts: 1 });
      expect(d.action.type).toBe('none');
    });
    it('the job is on the disk, but this process did not start it (a restart meanwhile) → Adopted', () => {
      const d = decide(
        obs({ bp: bp({ status: unanswered() }), hypervisor: ok(CHAIN3, job(10, 100)), jobStartedHere: false }),
      );
      expect(d.status).toMatchObject({ phase: 'Running', reason: 'Adopted', job: { state: 'Running' } });
    });
    it('no job on the disk → it did not run: a failed start, retry 1 after the backoff, the record cleared', () => {
      const d = decide(obs({ bp: bp({ status: unanswered() }), hypervisor: ok(CHAIN3) }));
      expect(d.status).toMatchObject({ phase: 'Pending', reason: 'JobFailed', retries: 1, attempts: 1 });
      expect(d.status.job).toBeUndefined();
      expect(d.status.message).toBe(
        "the start of the pull did not answer within the operator's bound and no job is on the disk; retry 1/3 after 5 s",
      );
      expect(d.action.type).toBe('none');
      expect(d.requeueAfterMs).toBe(5000);
      // ... and waits out that backoff on the next looks.
      const wait = decide(
        obs({ now: new Date(NOW.getTime() + 2000), bp: bp({ status: d.status }), hypervisor: ok(CHAIN3) }),
      );
      expect(wait.action.type).toBe('none');
      expect(wait.requeueAfterMs).toBe(3000);
      const again = decide(
        obs({ now: new Date(NOW.getTime() + 5000), bp: bp({ status: d.status }), hypervisor: ok(CHAIN3) }),
      );
      expect(again.action.type).toBe('startPull');
      expect(again.status).toMatchObject({
        phase: 'Running',
        reason: 'Retrying',
        attempts: 2,
        job: { state: 'Starting' },
      });
    });
    it('no job on the disk and maxRetries reached → Failed/JobFailed', () => {
      const d = decide(
        obs({ bp: bp({ spec: { maxRetries: 1 }, status: unanswered({ retries: 1 }) }), hypervisor: ok(CHAIN3) }),
      );
      expect(d.status).toMatchObject({ phase: 'Failed', reason: 'JobFailed' });
      expect(d.status.job).toBeUndefined();
      expect(d.status.message).toMatch(/maxRetries 1 reached/);
    });
    it('the disk is not looked at (unreachable) → the record stays, nothing is started', () => {
      const d = decide(
        obs({ bp: bp({ status: unanswered() }), hypervisor: { kind: 'unreachable', message: 'no answer' } }),
      );
      expect(d.status.job).toEqual({ state: 'Unanswered' });
      expect(d.action.type).toBe('none');
    });
    it('deleted: the job found is aborted; unreachable: the finalizer stays', () => {
      const found = decide(
        obs({ bp: bp({ status: unanswered(), deleting: true }), hypervisor: ok(CHAIN3, job(10, 100)) }),
      );
      expect(found.action.type).toBe('abort');
      const unknown = decide(
        obs({
          bp: bp({ status: unanswered(), deleting: true }),
          hypervisor: { kind: 'unreachable', message: 'no answer' },
        }),
      );
      expect(unknown.action.type).toBe('none');
      const gone = decide(obs({ bp: bp({ status: unanswered(), deleting: true }), hypervisor: ok(CHAIN3) }));
      expect(gone.action.type).toBe('removeFinalizer');
    });
  });

  it('job running → Running with progress; rate and ETA from the previous sample', () => {
    const d = decide(
      obs({
        bp: bp({ status: running() }),
        hypervisor: ok(CHAIN3, job(300, 1000)),
        previousSample: { cur: 100, atMs: NOW.getTime() - 1000 },
      }),
    );
    expect(d.action.type).toBe('none');
    expect(d.status.progress).toEqual({
      currentBytes: 300,
      totalBytes: 1000,
      percent: '30%',
      bytesPerSecond: 200,
      etaSeconds: 4,
      observedTime: '2026-11-27T10:00:00Z',
    });
    expect(d.sample).toEqual({ cur: 300, atMs: NOW.getTime() });
    expect(d.status.reason).toBe('Pulling');
    expect(d.requeueAfterMs).toBe(500);
  });

  it('progress.observedTime is when libvirt answered the look, not the time of the decision (a late answer is dated as such)', () => {
    const answered = new Date(NOW.getTime() - 3_000); // a look that ended 3 s before this reconcile
    const d = decide(
      obs({
        bp: bp({ status: running() }),
        hypervisor: { kind: 'ok', disk: CHAIN3, job: job(300, 1000), observedAt: answered },
        previousSample: { cur: 100, atMs: answered.getTime() - 1000 },
      }),
    );
    expect(d.status.progress).toMatchObject({ observedTime: '2026-11-27T09:59:57Z', bytesPerSecond: 200 });
    expect(d.sample).toEqual({ cur: 300, atMs: answered.getTime() });
    // The look that finds the chain at its goal dates the 100 %.
    const done = decide(
      obs({
        bp: bp({ status: running({ progress: { currentBytes: 900, totalBytes: 1000, percent: '90%' } }) }),
        hypervisor: { kind: 'ok', disk: FLAT, job: null, observedAt: answered },
      }),
    );
    expect(done.status.phase).toBe('Completed');
    expect(done.status.progress).toMatchObject({ percent: '100%', observedTime: '2026-11-27T09:59:57Z' });
  });

  it('a job not started yet (cur=0 end=1) reads 0%', () => {
    const d = decide(obs({ bp: bp({ status: running() }), hypervisor: ok(CHAIN3, job(0, 1)) }));
    expect(d.status.progress).toMatchObject({ currentBytes: 0, totalBytes: 0, percent: '0%' });
  });

  it('bandwidth changed while running → set speed', () => {
    const d = decide(
      obs({ bp: bp({ spec: { bandwidth: '2Mi' }, status: running() }), hypervisor: ok(CHAIN3, job(10, 100, 1048576)) }),
    );
    expect(d.action).toEqual({ type: 'setBandwidth', domain: 'ns_vm1', target: 'vda', bandwidth: 2097152 });
    const same = decide(
      obs({
        bp: bp({ spec: { bandwidth: 2097152 }, status: running() }),
        hypervisor: ok(CHAIN3, job(10, 100, 2097152)),
      }),
    );
    expect(same.action.type).toBe('none');
    const unlimited = decide(obs({ bp: bp({ status: running() }), hypervisor: ok(CHAIN3, job(10, 100, 2097152)) }));
    expect(unlimited.action).toMatchObject({ type: 'setBandwidth', bandwidth: 0 });
  });

  it('a pull already running at the first look is adopted, not restarted', () => {
    const d = decide(
      obs({
        bp: bp({ status: { phase: 'Pending', reason: 'Created' } }),
        hypervisor: ok(CHAIN3, job(50, 100)),
        jobStartedHere: false,
      }),
    );
    expect(d.action.type).toBe('none');
    expect(d.status).toMatchObject({ phase: 'Running', reason: 'Adopted', attempts: 1 });
    expect(d.status.message).toMatch(/^adopted the running pull rootdisk/);
    expect(d.status.backingChain?.before).toEqual(before3);
    // A restarted operator (or a new leader) with the status still Running/Pulling: the job is
    // adopted (this process did not start it), attempts stay 1.
    const cont = decide(
      obs({ bp: bp({ status: running() }), hypervisor: ok(CHAIN3, job(60, 100)), jobStartedHere: false }),
    );
    expect(cont.status).toMatchObject({ phase: 'Running', reason: 'Adopted', attempts: 1 });
    expect(cont.action.type).toBe('none');
    // ...and stays Adopted on the next looks.
    const later = decide(
      obs({ bp: bp({ status: cont.status }), hypervisor: ok(CHAIN3, job(70, 100)), jobStartedHere: false }),
    );
    expect(later.status.reason).toBe('Adopted');
  });

  it('our own job is never called Adopted, even when the status write after the start was lost', () => {
    // Started by this process, but the status still says Pending (or Paused): Pulling, not Adopted.
    for (const prior of [
      { phase: 'Pending', reason: 'Created' },
      { ...running(), phase: 'Paused', reason: 'Paused' },
    ] as BlockPullStatus[]) {
      const d = decide(obs({ bp: bp({ status: prior }), hypervisor: ok(CHAIN3, job(5, 100)), jobStartedHere: true }));
      expect(d.status, prior.phase).toMatchObject({ phase: 'Running', reason: 'Pulling' });
      expect(d.status.message).toMatch(/^pulling rootdisk/);
    }
    // A retry this process started keeps Retrying while it runs.
    const retrying = decide(
      obs({
        bp: bp({ status: running({ reason: 'Retrying', attempts: 2, retries: 1 }) }),
        hypervisor: ok(CHAIN3, job(5, 100)),
      }),
    );
    expect(retrying.status.reason).toBe('Retrying');
    // A previous Adopted does not stick to a job this process started itself.
    const own = decide(
      obs({
        bp: bp({ status: running({ reason: 'Adopted' }) }),
        hypervisor: ok(CHAIN3, job(5, 100)),
        jobStartedHere: true,
      }),
    );
    expect(own.status.reason).toBe('Pulling');
  });

  it('spec.paused with our job running → Paused, abort (data kept)', () => {
    const d = decide(
      obs({ bp: bp({ spec: { paused: true }, status: running() }), hypervisor: ok(CHAIN3, job(40, 100)) }),
    );
    expect(d.action).toEqual({ type: 'abort', domain: 'ns_vm1', target: 'vda' });
    expect(d.status).toMatchObject({ phase: 'Paused', reason: 'Paused', progress: { percent: '40%' } });
    expect(getCondition(d.status.conditions, 'Progressing')?.status).toBe('False');
  });

  it('paused with no job → stays Paused; unpaused → starts again without counting a retry', () => {
    const pausedStatus: BlockPullStatus = {
      ...running(),
      phase: 'Paused',
      reason: 'Paused',
      progress: { percent: '40%' },
    };
    const still = decide(obs({ bp: bp({ spec: { paused: true }, status: pausedStatus }), hypervisor: ok(CHAIN3) }));
    expect(still.status).toMatchObject({ phase: 'Paused', reason: 'Paused' });
    expect(still.action.type).toBe('none');
    const resumed = decide(obs({ bp: bp({ spec: { paused: false }, status: pausedStatus }), hypervisor: ok(CHAIN3) }));
    expect(resumed.action.type).toBe('startPull');
    expect(resumed.status).toMatchObject({ phase: 'Running', reason: 'Pulling', attempts: 2, retries: 0 });
  });

  it('paused from the start → Paused, no job started', () => {
    const d = decide(obs({ bp: bp({ spec: { paused: true } }), hypervisor: ok(CHAIN3) }));
    expect(d.status.phase).toBe('Paused');
    expect(d.action.type).toBe('none');
  });

  it('our job gone short of the goal → Pending/JobFailed, restarted after a backoff (attempts+1), then Failed/RetryLimitExceeded', () => {
    const d = decide(obs({ bp: bp({ spec: { maxRetries: 1 }, status: running() }), hypervisor: ok(CHAIN3) }));
    expect(d.action.type).toBe('none');
    expect(d.status).toMatchObject({ phase: 'Pending', reason: 'JobFailed', attempts: 1, retries: 1 });
    expect(d.requeueAfterMs).toBe(5000);
    // Within the backoff: nothing starts, whatever wakes it.
    const early = decide(
      obs({
        now: new Date(NOW.getTime() + 2000),
        bp: bp({ spec: { maxRetries: 1 }, status: d.status }),
        hypervisor: ok(CHAIN3),
      }),
    );
    expect(early.action.type).toBe('none');
    expect(early.status).toMatchObject({ phase: 'Pending', reason: 'JobFailed', attempts: 1, retries: 1 });
    expect(early.requeueAfterMs).toBe(3000);
    // After it: started again.
    const later = new Date(NOW.getTime() + 5000);
    const restarted = decide(
      obs({ now: later, bp: bp({ spec: { maxRetries: 1 }, status: d.status }), hypervisor: ok(CHAIN3) }),
    );
    expect(restarted.action.type).toBe('startPull');
    expect(restarted.status).toMatchObject({ phase: 'Running', reason: 'Retrying', attempts: 2, retries: 1 });
    const again = decide(
      obs({ now: later, bp: bp({ spec: { maxRetries: 1 }, status: restarted.afterAction! }), hypervisor: ok(CHAIN3) }),
    );
    expect(again.action.type).toBe('none');
    expect(again.status).toMatchObject({ phase: 'Failed', reason: 'RetryLimitExceeded' });
    expect(getCondition(again.status.conditions, 'Failed')).toMatchObject({
      status: 'True',
      reason: 'RetryLimitExceeded',
    });
    const none = decide(obs({ bp: bp({ spec: { maxRetries: 0 }, status: running() }), hypervisor: ok(CHAIN3) }));
    expect(none.status).toMatchObject({ phase: 'Failed', reason: 'RetryLimitExceeded' });
  });

  it('retries back off exponentially: 5 s, 10 s, 20 s ... at most 5 min', () => {
    expect([1, 2, 3, 4, 10, 100].map((n) => backoffMs(n, 5000))).toEqual([
      5000,
      10_000,
      20_000,
      40_000,
      MAX_BACKOFF_MS,
      MAX_BACKOFF_MS,
    ]);
    const second = decide(obs({ bp: bp({ status: running({ attempts: 2, retries: 1 }) }), hypervisor: ok(CHAIN3) }));
    expect(second.status).toMatchObject({ phase: 'Pending', reason: 'JobFailed', retries: 2 });
    expect(second.requeueAfterMs).toBe(10_000);
  });

  it("a failed job's I/O error reaches the message (JobFailed, RetryLimitExceeded, InsufficientSpace)", () => {
    const error = 'No space left on device';
    const d = decide(obs({ bp: bp({ status: running() }), hypervisor: ok(CHAIN3), lastJobError: error }));
    expect(d.status).toMatchObject({ phase: 'Pending', reason: 'JobFailed' });
    expect(d.status.message).toContain(error);
    const last = decide(
      obs({ bp: bp({ spec: { maxRetries: 0 }, status: running() }), hypervisor: ok(CHAIN3), lastJobError: error }),
    );
    expect(last.status).toMatchObject({ phase: 'Failed', reason: 'RetryLimitExceeded' });
    expect(last.status.message).toContain(error);
    // The reason arrived after the failure was written: the waiting status gains it.
    const noText = decide(obs({ bp: bp({ status: running() }), hypervisor: ok(CHAIN3) }));
    expect(noText.status.message).not.toContain(error);
    const gained = decide(
      obs({
        now: new Date(NOW.getTime() + 1000),
        bp: bp({ status: noText.status }),
        hypervisor: ok(CHAIN3),
        lastJobError: error,
      }),
    );
    expect(gained.status.message).toContain(error);
    const short = decide(
      obs({
        now: new Date(NOW.getTime() + 5000),
        bp: bp({ status: noText.status }),
        hypervisor: ok(CHAIN3),
        lastJobError: error,
        space: { kind: 'measured', topPath: TOP, pullBytes: 256 * MiB, availableBytes: 0, totalBytes: 16 * MiB },
      }),
    );
    expect(short.status).toMatchObject({ phase: 'Pending', reason: 'InsufficientSpace', attempts: 1, retries: 1 });
    expect(short.status.message).toContain(error);
  });

  it('libvirt unreachable → phase kept, Progressing Unknown, requeue', () => {
    const d = decide(
      obs({ bp: bp({ status: running() }), hypervisor: { kind: 'unreachable', message: 'cannot connect' } }),
    );
    expect(d.status).toMatchObject({ phase: 'Running', reason: 'HypervisorUnreachable' });
    expect(getCondition(d.status.conditions, 'Progressing')?.status).toBe('Unknown');
    expect(d.requeueAfterMs).toBe(5000);
    // Still unreachable a minute later: the same status, so the object is not rewritten.
    const later = decide(
      obs({
        now: new Date(NOW.getTime() + 60_000),
        bp: bp({ status: d.status }),
        hypervisor: { kind: 'unreachable', message: 'cannot connect' },
      }),
    );
    expect(later.status).toEqual(d.status);
  });

  it('a running pull whose look got no answer in time: the status stays, until 3 such looks in a row spanning >= 10 s', () => {
    const stored = running({
      launcher: { pod: FOUND.launcher.pod, node: 'node1', container: 'compute', domain: 'ns_vm1', target: 'vda' },
      progress: { currentBytes: 40, totalBytes: 100, percent: '40%', bytesPerSecond: 10 },
    });
    const slow = (count: number, sinceMs: number) =>
      decide(
        obs({
          bp: bp({ status: stored }),
          hypervisor: { kind: 'unreachable', message: 'no answer within 1000 ms' },
          unansweredLooks: { count, sinceMs },
        }),
      );
    const t = NOW.getTime();
    for (const [count, sinceMs] of [
      [1, t],
      [3, t - 9_999], // three, but within 10 s
      [2, t - 60_000], // a long time, but two looks
    ] as const) {
      const d = slow(count, sinceMs);
      expect(d.status, `${count} looks since ${t - sinceMs} ms`).toEqual(stored); // not rewritten
      expect(d.action).toEqual({ type: 'none' });
      expect(d.requeueAfterMs).toBe(500);
    }
    const verdict = slow(3, t - 10_000);
    expect(verdict.status).toMatchObject({ phase: 'Running', reason: 'HypervisorUnreachable' });
    expect(getCondition(verdict.status.conditions, 'Progressing')?.status).toBe('Unknown');
    // Once said, a further unanswered look keeps saying it (no flip back without an answer).
    const after = decide(
      obs({
        bp: bp({ status: verdict.status }),
        hypervisor: { kind: 'unreachable', message: 'no answer within 1000 ms' },
        unansweredLooks: { count: 1, sinceMs: t },
      }),
    );
    expect(after.status.reason).toBe('HypervisorUnreachable');
  });

  it('terminal phases are sticky: re-applying starts nothing', () => {
    const done: BlockPullStatus = { phase: 'Completed', reason: 'Completed', backingChain: { before: before3 } };
    const d = decide(obs({ bp: bp({ status: done }), hypervisor: ok(CHAIN3) }));
    expect(d.action.type).toBe('none');
    expect(d.status.phase).toBe('Completed');
    expect(d.requeueAfterMs).toBeNull();
    const f = decide(obs({ bp: bp({ status: { phase: 'Failed', reason: 'DiskNotFound' } }), hypervisor: ok(CHAIN3) }));
    expect(f.action.type).toBe('none');
  });

  it('an unparsable bandwidth → Failed/InvalidBandwidth', () => {
    const d = decide(obs({ bp: bp({ spec: { bandwidth: '5 MB' } }), hypervisor: ok(CHAIN3) }));
    expect(d.status).toMatchObject({ phase: 'Failed', reason: 'InvalidBandwidth' });
  });
});

describe('decide: deletion', () => {
  it('being deleted with our job running → abort, keep the finalizer', () => {
    const d = decide(obs({ bp: bp({ deleting: true, status: running() }), hypervisor: ok(CHAIN3, job(1, 10)) }));
    expect(d.action).toEqual({ type: 'abort', domain: 'ns_vm1', target: 'vda' });
    expect(d.requeueAfterMs).toBe(500);
  });
  it('being deleted, job gone → remove the finalizer', () => {
    const d = decide(obs({ bp: bp({ deleting: true, status: running() }), hypervisor: ok(CHAIN3) }));
    expect(d.action).toEqual({ type: 'removeFinalizer' });
  });
  it('being deleted while another BlockPull pulls the disk → do not abort theirs', () => {
    const d = decide(
      obs({
        bp: bp({ name: 'pull2', deleting: true, status: { phase: 'Pending', reason: 'DiskBusy' } }),
        diskHolder: 'ns/pull1',
        hypervisor: ok(CHAIN3, job(1, 10)),
      }),
    );
    expect(d.action).toEqual({ type: 'removeFinalizer' });
  });
  it('being deleted after Completed, or with the VMI gone → remove the finalizer', () => {
    expect(decide(obs({ bp: bp({ deleting: true, status: { phase: 'Completed' } }) })).action.type).toBe(
      'removeFinalizer',
    );
    expect(
      decide(obs({ bp: bp({ deleting: true, status: running() }), launcher: { kind: 'vmiNotFound', message: 'gone' } }))
        .action.type,
    ).toBe('removeFinalizer');
  });
  it('being deleted, libvirt unreachable while Running → keep the finalizer, retry', () => {
    const d = decide(
      obs({ bp: bp({ deleting: true, status: running() }), hypervisor: { kind: 'unreachable', message: 'x' } }),
    );
    expect(d.action.type).toBe('none');
    expect(d.requeueAfterMs).toBe(5000);
  });
  // A namespace deletion deletes the launcher pod beside the BlockPull: while the pod's grace
  // period runs, its QEMU and our job still run.
  const TERMINATING: LauncherLookup = { ...FOUND, terminating: true };
  it('being deleted, launcher pod terminating but answering, our job running → abort through it, keep the finalizer', () => {
    const d = decide(
      obs({ bp: bp({ deleting: true, status: running() }), launcher: TERMINATING, hypervisor: ok(CHAIN3, job(1, 10)) }),
    );
    expect(d.action).toEqual({ type: 'abort', domain: 'ns_vm1', target: 'vda' });
    expect(d.status.job).toEqual({ state: 'Aborting' });
  });
  it('being deleted, launcher pod terminating, our job gone → remove the finalizer', () => {
    const d = decide(
      obs({
        bp: bp({ deleting: true, status: running({ job: { state: 'Aborting' } }) }),
        launcher: TERMINATING,
        hypervisor: ok(CHAIN3),
      }),
    );
    expect(d.action).toEqual({ type: 'removeFinalizer' });
  });
  it('being deleted, launcher pod terminating and no longer answering (its QEMU goes with it) → remove the finalizer', () => {
    for (const hypervisor of [
      { kind: 'unreachable', message: 'container not running' },
      { kind: 'domainNotFound', message: 'no domain' },
    ] as const) {
      const d = decide(
        obs({
          bp: bp({ deleting: true, status: running({ job: { state: 'Running' } }) }),
          launcher: TERMINATING,
          hypervisor,
        }),
      );
      expect(d.action, hypervisor.kind).toEqual({ type: 'removeFinalizer' });
    }
  });
  it('not being deleted, launcher pod terminating → LauncherNotFound, never a start', () => {
    const d = decide(
      obs({
        bp: bp({ status: { phase: 'Pending', reason: 'Created' } }),
        diskHolder: null,
        launcher: TERMINATING,
        hypervisor: ok(CHAIN3),
      }),
    );
    expect(d.action).toEqual({ type: 'none' });
    expect(d.status).toMatchObject({ phase: 'Pending', reason: 'LauncherNotFound' });
    expect(d.status.message).toContain('being deleted');
  });
  it('deleted without our finalizer → nothing', () => {
    expect(decide(obs({ bp: bp({ deleting: true, finalizer: false }) })).action.type).toBe('none');
  });
});

describe('decideActionError', () => {
  const o = obs({ bp: bp(), hypervisor: ok(CHAIN3) });
  const started = decide(o);
  it('busy disk at start → Pending/DiskBusy, attempt not counted', () => {
    const d = decideActionError(o, started, new HypervisorError('DiskBusy', "disk 'vda' already in active block job"));
    expect(d?.status).toMatchObject({ phase: 'Pending', reason: 'DiskBusy', attempts: 0 });
    expect(d?.requeueAfterMs).toBe(5000);
  });
  it('invalid base at start → Failed/InvalidBase', () => {
    expect(decideActionError(o, started, new HypervisorError('InvalidBase', 'bad'))?.status).toMatchObject({
      phase: 'Failed',
      reason: 'InvalidBase',
    });
  });
  it('other failures count against maxRetries, then Failed/JobFailed', () => {
    const d = decideActionError(o, started, new Error('virsh exploded'));
    expect(d?.status).toMatchObject({ phase: 'Pending', reason: 'JobFailed', retries: 1 });
    const last = obs({ bp: bp({ spec: { maxRetries: 0 } }), hypervisor: ok(CHAIN3) });
    expect(decideActionError(last, decide(last), new Error('virsh exploded'))?.status).toMatchObject({
      phase: 'Failed',
      reason: 'JobFailed',
    });
  });
  it('a start past the action bound (Timeout) → Pending/HypervisorUnreachable, recorded Unanswered, still counted (it may have run)', () => {
    const d = decideActionError(
      o,
      started,
      new HypervisorError(
        'Timeout',
        'the start of the pull (virsh blockpull) did not return within 10000 ms; the command was ended',
      ),
    );
    expect(d?.status).toMatchObject({
      phase: 'Pending',
      reason: 'HypervisorUnreachable',
      attempts: 1,
      retries: 0,
      job: { state: 'Unanswered' },
    });
    expect(d?.status.message).toBe(
      'the start of the pull (virsh blockpull) did not return within 10000 ms; the command was ended; it may have started the job: the next look at the disk tells',
    );
    expect(d?.action.type).toBe('none');
    expect(d?.requeueAfterMs).toBe(5000);
  });
  it('only start failures are mapped', () => {
    const r = decide(
      obs({ bp: bp({ spec: { bandwidth: 1 }, status: running() }), hypervisor: ok(CHAIN3, job(1, 10)) }),
    );
    expect(decideActionError(o, r, new Error('x'))).toBeUndefined();
  });
});

describe('diskHolder', () => {
  const mk = (name: string, created: string, status?: BlockPullStatus, disk = 'rootdisk') =>
    bp({ name, created, ...(status ? { status } : {}), spec: { disk } });
  it('the Running/Paused one holds the disk, else the oldest; terminal ones never', () => {
    const a = mk('a', '2026-11-27T09:00:00Z', { phase: 'Completed' });
    const b = mk('b', '2026-11-27T09:01:00Z', { phase: 'Pending' });
    const c = mk('c', '2026-11-27T09:02:00Z', { phase: 'Running' });
    const other = mk('x', '2026-11-27T08:00:00Z', { phase: 'Pending' }, 'datadisk');
    expect(diskHolder([a, b, c, other], b)).toBe('ns/c');
    expect(diskHolder([a, b, other], b)).toBe('ns/b');
    const b2 = mk('b2', '2026-11-27T09:01:00Z');
    expect(diskHolder([b2, b], b2)).toBe('ns/b');
    expect(diskHolder([a], a)).toBeNull();
  });
});

describe('decide: pre-flight space check before every start', () => {
  const fresh = (): BlockPull => bp();
  const measured = (
    pullBytes: number,
    availableBytes: number,
    ephemeral?: { limitBytes: number; usedBytes: number },
    totalBytes = 100_000 * MiB,
  ) =>
    ({
      kind: 'measured',
      topPath: TOP,
      pullBytes,
      availableBytes,
      totalBytes,
      ...(ephemeral
        ? {
            ephemeral: {
              pod: 'virt-launcher-vm1-abcde',
              mountPoint: '/var/run/kubevirt-ephemeral-disks',
              ...ephemeral,
            },
          }
        : {}),
    }) as const;

  it.each([
    ['fits with the margin', measured(100 * MiB, 200 * MiB), 64 * MiB, 'startPull'],
    ['exactly fits', measured(100 * MiB, 164 * MiB), 64 * MiB, 'startPull'],
    ['short by the margin only', measured(100 * MiB, 150 * MiB), 64 * MiB, 'none'],
    ['16 MiB free, 256 MiB to pull', measured(256 * MiB, 16 * MiB), 0, 'none'],
    [
      'fits the filesystem, not the ephemeral-storage limit',
      measured(100 * MiB, 10_000 * MiB, { limitBytes: 500 * MiB, usedBytes: 450 * MiB }),
      0,
      'none',
    ],
    ['fits both', measured(100 * MiB, 10_000 * MiB, { limitBytes: 500 * MiB, usedBytes: 300 * MiB }), 0, 'startPull'],
    ['not measurable (block device)', { kind: 'unknown', reason: 'block device' } as const, 64 * MiB, 'startPull'],
  ] as const)('%s → %s', (_name, space, margin, action) => {
    const d = decide(
      obs({ bp: fresh(), hypervisor: ok(CHAIN3), space, spaceMarginBytes: margin, spaceRecheckMs: 20_000 }),
    );
    expect(d.action.type).toBe(action);
    if (action === 'none') {
      expect(d.status).toMatchObject({ phase: 'Pending', reason: 'InsufficientSpace' });
      expect(d.status.attempts ?? 0).toBe(0);
      expect(getCondition(d.status.conditions, 'Progressing')).toMatchObject({
        status: 'False',
        reason: 'InsufficientSpace',
      });
      expect(d.requeueAfterMs).toBe(20_000);
    } else {
      expect(d.status).toMatchObject({ phase: 'Running', attempts: 1 });
    }
  });

  it.each([
    // 10 % of 1000 MiB = 100 MiB must stay free: more than the 64 MiB margin.
    ['the percentage margin is larger', measured(100 * MiB, 190 * MiB, undefined, 1000 * MiB), 'none'],
    ['fits with the percentage margin', measured(100 * MiB, 200 * MiB, undefined, 1000 * MiB), 'startPull'],
    // 10 % of 100 MiB = 10 MiB: the 64 MiB margin is larger.
    ['the MiB margin is larger', measured(100 * MiB, 150 * MiB, undefined, 100 * MiB), 'none'],
    // Under an ephemeral-storage limit only the MiB margin counts (the limit is not the filesystem).
    [
      'the limit keeps the MiB margin',
      measured(100 * MiB, 100_000 * MiB, { limitBytes: 200 * MiB, usedBytes: 36 * MiB }, 100_000 * MiB),
      'startPull',
    ],
  ] as const)('margin: %s → %s', (_name, space, action) => {
    const d = decide(
      obs({ bp: fresh(), hypervisor: ok(CHAIN3), space, spaceMarginBytes: 64 * MiB, spaceMarginPercent: 10 }),
    );
    expect(d.action.type).toBe(action);
    if (action === 'none') expect(d.status.reason).toBe('InsufficientSpace');
  });

  it('InsufficientSpace says both figures (filesystem, or limit and usage)', () => {
    const fs = decide(
      obs({ bp: fresh(), hypervisor: ok(CHAIN3), space: measured(256 * MiB, 16 * MiB), spaceMarginBytes: MiB }),
    );
    expect(fs.status.message).toContain(`${256 * MiB} bytes`);
    expect(fs.status.message).toContain(`${16 * MiB} bytes`);
    expect(fs.status.message).toContain(`${MiB} bytes`);
    expect(fs.status.message).toContain(TOP);
    const eph = decide(
      obs({
        bp: fresh(),
        hypervisor: ok(CHAIN3),
        space: measured(100 * MiB, 10_000 * MiB, { limitBytes: 500 * MiB, usedBytes: 450 * MiB }),
      }),
    );
    expect(eph.status.message).toMatch(/ephemeral-storage limit of 500\.0 MiB \(524288000 bytes\)/);
    expect(eph.status.message).toContain(`${450 * MiB} bytes`);
  });

  it('a resume after a pause is checked too; short → Pending/InsufficientSpace, the pause data kept', () => {
    const pausedStatus: BlockPullStatus = {
      phase: 'Paused',
      reason: 'Paused',
      attempts: 1,
      retries: 0,
      backingChain: { before: before3 },
    };
    const d = decide(
      obs({ bp: bp({ status: pausedStatus }), hypervisor: ok(CHAIN3), space: measured(256 * MiB, MiB) }),
    );
    expect(d.action.type).toBe('none');
    expect(d.status).toMatchObject({ phase: 'Pending', reason: 'InsufficientSpace', attempts: 1 });
  });

  it('a job running on the disk is never held back by the check (adoption)', () => {
    const d = decide(
      obs({ bp: bp({ status: running() }), hypervisor: ok(CHAIN3, job(10, 100)), space: measured(256 * MiB, 0) }),
    );
    expect(d.status).toMatchObject({ phase: 'Running' });
  });
});

/**
 * Persisted intent (status.job): what the operator did is recorded before it acts, and "no job,
 * chain short of the goal" is judged from that record, never from the phase alone. These rows
 * are the pause races found in review: a job we aborted is never a failure, our own job is never
 * "Adopted", attempts count the jobs started.
 */
describe('decide: the job record (persisted intent)', () => {
  const withRecord = (
    state: NonNullable<BlockPullStatus['job']>['state'],
    extra: BlockPullStatus = {},
  ): BlockPullStatus => running({ job: { state }, ...extra });

  it('a start is recorded before it is made (Starting, counted), confirmed after (Running)', () => {
    const d = decide(obs({ bp: bp(), hypervisor: ok(CHAIN3) }));
    expect(d.action.type).toBe('startPull');
    expect(d.status).toMatchObject({ phase: 'Running', attempts: 1, job: { state: 'Starting' } });
    expect(d.afterAction).toMatchObject({ phase: 'Running', attempts: 1, job: { state: 'Running' } });
  });

  it('pausing records the abort (Aborting) in the status written before the abort', () => {
    const d = decide(
      obs({ bp: bp({ spec: { paused: true }, status: withRecord('Running') }), hypervisor: ok(CHAIN3, job(40, 100)) }),
    );
    expect(d.action.type).toBe('abort');
    expect(d.status).toMatchObject({ phase: 'Paused', job: { state: 'Aborting' } });
    expect(d.afterAction).toBeUndefined();
  });

  it.each([
    ['Aborting', 'Running'], // the Paused status was written, then the user unpaused
    ['Aborted', 'Paused'],
  ] as const)(
    'after our abort (%s, phase %s), unpaused with maxRetries 0 → started again, not a failure',
    (state, phase) => {
      const prior = withRecord(state, { phase, reason: 'Paused', attempts: 3, retries: 0 });
      const d = decide(obs({ bp: bp({ spec: { maxRetries: 0 }, status: prior }), hypervisor: ok(CHAIN3) }));
      expect(d.action.type).toBe('startPull');
      expect(d.status).toMatchObject({
        phase: 'Running',
        reason: 'Pulling',
        attempts: 4,
        retries: 0,
        job: { state: 'Starting' },
      });
    },
  );

  it('after our abort, still paused → Paused, the record says Aborted, nothing done', () => {
    const d = decide(
      obs({
        bp: bp({ spec: { paused: true }, status: withRecord('Aborting', { phase: 'Paused', reason: 'Paused' }) }),
        hypervisor: ok(CHAIN3),
      }),
    );
    expect(d.action.type).toBe('none');
    expect(d.status).toMatchObject({ phase: 'Paused', reason: 'Paused', job: { state: 'Aborted' }, attempts: 1 });
  });

  it.each(['Starting', 'Aborting'] as const)(
    'our job (%s) still on the disk, not paused → Running/Pulling, never Adopted, attempts kept',
    (state) => {
      const d = decide(
        obs({
          bp: bp({
            status: withRecord(state, {
              phase: state === 'Aborting' ? 'Paused' : 'Running',
              reason: state === 'Aborting' ? 'Paused' : 'Pulling',
              attempts: 5,
            }),
          }),
          hypervisor: ok(CHAIN3, job(10, 100)),
        }),
      );
      expect(d.action.type).toBe('none');
      expect(d.status).toMatchObject({ phase: 'Running', reason: 'Pulling', attempts: 5, job: { state: 'Running' } });
    },
  );

  it('a pull this process did not start, found after our abort, is adopted (and recorded as running)', () => {
    const d = decide(
      obs({
        bp: bp({ status: withRecord('Aborted', { phase: 'Paused', reason: 'Paused', attempts: 2 }) }),
        hypervisor: ok(CHAIN3, job(10, 100)),
        jobStartedHere: false,
      }),
    );
    expect(d.status).toMatchObject({ phase: 'Running', reason: 'Adopted', attempts: 2, job: { state: 'Running' } });
  });

  it('a recorded start not known to have run (Starting, no job) is made again as the same attempt, not a failure', () => {
    const d = decide(
      obs({
        bp: bp({ spec: { maxRetries: 0 }, status: withRecord('Starting', { attempts: 2 }) }),
        hypervisor: ok(CHAIN3),
      }),
    );
    expect(d.action.type).toBe('startPull');
    expect(d.status).toMatchObject({
      phase: 'Running',
      reason: 'Pulling',
      retries: 0,
      attempts: 2,
      job: { state: 'Starting' },
    });
    // A retry recorded but not known to have run: still that retry, counted once.
    const retry = decide(
      obs({
        bp: bp({
          spec: { maxRetries: 1 },
          status: withRecord('Starting', { reason: 'Retrying', attempts: 2, retries: 1 }),
        }),
        hypervisor: ok(CHAIN3),
      }),
    );
    expect(retry.status).toMatchObject({ phase: 'Running', reason: 'Retrying', retries: 1, attempts: 2 });
    // Paused meanwhile: Paused, nothing counted.
    const paused = decide(
      obs({
        bp: bp({ spec: { paused: true }, status: withRecord('Starting', { attempts: 2 }) }),
        hypervisor: ok(CHAIN3),
      }),
    );
    expect(paused.status).toMatchObject({ phase: 'Paused', attempts: 2 });
  });

  it('our confirmed job gone short of the goal (Running, no job) → Ended; maxRetries 0 → Failed/RetryLimitExceeded', () => {
    const d = decide(
      obs({ bp: bp({ spec: { maxRetries: 0 }, status: withRecord('Running') }), hypervisor: ok(CHAIN3) }),
    );
    expect(d.status).toMatchObject({ phase: 'Failed', reason: 'RetryLimitExceeded', job: { state: 'Ended' } });
  });

  it('a job that ended short is counted once: Pending/JobFailed clears the record, a full slot only delays the retry', () => {
    const full = {
      running: 4,
      runningOnNode: 0,
      runningInNamespace: 0,
      namespacesWanting: 1,
      maxConcurrentPulls: 4,
      maxPullsPerNode: 2,
    };
    const failedJob = decide(obs({ bp: bp({ status: withRecord('Running') }), hypervisor: ok(CHAIN3), slots: full }));
    expect(failedJob.action.type).toBe('none');
    expect(failedJob.status).toMatchObject({ phase: 'Pending', reason: 'JobFailed', retries: 1, attempts: 1 });
    expect(failedJob.status.job).toBeUndefined();
    const later = new Date(NOW.getTime() + 60_000);
    const wait = decide(obs({ now: later, bp: bp({ status: failedJob.status }), hypervisor: ok(CHAIN3), slots: full }));
    expect(wait.status).toMatchObject({ phase: 'Pending', reason: 'WaitingForSlot', retries: 1, attempts: 1 });
    const retry = decide(obs({ now: later, bp: bp({ status: wait.status }), hypervisor: ok(CHAIN3) }));
    expect(retry.action.type).toBe('startPull');
    expect(retry.status).toMatchObject({ phase: 'Running', retries: 1, attempts: 2, job: { state: 'Starting' } });
    const exhausted = decide(
      obs({ bp: bp({ spec: { maxRetries: 0 }, status: withRecord('Running') }), hypervisor: ok(CHAIN3) }),
    );
    expect(exhausted.status).toMatchObject({ phase: 'Failed', reason: 'RetryLimitExceeded' });
  });

  it('the chain at its goal after our job → Completed, the record says Ended', () => {
    const d = decide(obs({ bp: bp({ status: withRecord('Aborting', { phase: 'Paused' }) }), hypervisor: ok(FLAT) }));
    expect(d.status).toMatchObject({ phase: 'Completed', reason: 'Completed', job: { state: 'Ended' } });
  });

  it('a start that failed leaves no job record and does not count', () => {
    const o = obs({
      bp: bp({ status: withRecord('Aborted', { phase: 'Paused', attempts: 2 }) }),
      hypervisor: ok(CHAIN3),
    });
    const started = decide(o);
    const d = decideActionError(o, started, new HypervisorError('DiskBusy', 'busy'));
    expect(d?.status.attempts).toBe(2);
    expect(d?.status.job).toBeUndefined();
  });

  it('a replayed start (Starting) that fails takes back the count made when it was recorded', () => {
    const o = obs({
      bp: bp({ status: withRecord('Starting', { attempts: 3, retries: 1, reason: 'Retrying' }) }),
      hypervisor: ok(CHAIN3),
    });
    const replay = decide(o);
    expect(replay.status).toMatchObject({ attempts: 3, retries: 1 });
    expect(decideActionError(o, replay, new HypervisorError('DiskBusy', 'busy'))?.status).toMatchObject({
      attempts: 2,
      retries: 0,
    });
    expect(decideActionError(o, replay, new Error('virsh exploded'))?.status).toMatchObject({
      attempts: 2,
      retries: 1,
      reason: 'JobFailed',
    });
  });

  it('a status from before status.job existed: Running means our job ran', () => {
    const legacy = running();
    expect(legacy.job).toBeUndefined();
    expect(decide(obs({ bp: bp({ status: legacy }), hypervisor: ok(CHAIN3, job(1, 10)) })).status).toMatchObject({
      reason: 'Pulling',
      job: { state: 'Running' },
    });
    expect(
      decide(obs({ bp: bp({ spec: { maxRetries: 0 }, status: legacy }), hypervisor: ok(CHAIN3) })).status.reason,
    ).toBe('RetryLimitExceeded');
  });
});

describe('decide: a bandwidth the operator cannot represent', () => {
  it('no job of ours → Failed/InvalidBandwidth at once, nothing started', () => {
    for (const bandwidth of ['1025Ti', 1125899906842625, '99999999999999999999Ti']) {
      const d = decide(obs({ bp: bp({ spec: { bandwidth } }), hypervisor: ok(CHAIN3) }));
      expect(d.status, String(bandwidth)).toMatchObject({ phase: 'Failed', reason: 'InvalidBandwidth' });
      expect(d.status.message).toMatch(/at most 1024Ti/);
      expect(d.action.type).toBe('none');
    }
  });

  it('our job running → aborted first (Running/InvalidBandwidth, Aborting), then Failed once it is gone', () => {
    const spec = { bandwidth: '99999999999999999999Ti' };
    const d = decide(
      obs({
        bp: bp({ spec, status: running({ job: { state: 'Running' } }) }),
        hypervisor: ok(CHAIN3, job(10, 100, 1048576)),
      }),
    );
    expect(d.action).toEqual({ type: 'abort', domain: 'ns_vm1', target: 'vda' });
    expect(d.status).toMatchObject({ phase: 'Running', reason: 'InvalidBandwidth', job: { state: 'Aborting' } });
    expect(d.status.message).toMatch(/aborting the running job first/);
    const after = decide(obs({ bp: bp({ spec, status: d.status }), hypervisor: ok(CHAIN3) }));
    expect(after.status).toMatchObject({ phase: 'Failed', reason: 'InvalidBandwidth', job: { state: 'Aborted' } });
    expect(after.action.type).toBe('none');
  });

  it('our job may run but libvirt cannot be reached → not terminal yet', () => {
    const d = decide(
      obs({
        bp: bp({ spec: { bandwidth: '1025Ti' }, status: running({ job: { state: 'Running' } }) }),
        hypervisor: { kind: 'unreachable', message: 'x' },
      }),
    );
    expect(d.status.phase).toBe('Running');
    expect(d.status.reason).toBe('HypervisorUnreachable');
  });

  it('"0.5" is 1 byte/s, not 0 = unlimited', () => {
    const d = decide(obs({ bp: bp({ spec: { bandwidth: '0.5' } }), hypervisor: ok(CHAIN3) }));
    expect(d.action).toMatchObject({ type: 'startPull', bandwidth: 1 });
  });
});

describe('decide: deletion aborts the job we started, whatever the phase', () => {
  it.each(['Failed', 'Completed', 'Paused', 'Pending'] as const)(
    'phase %s with our job recorded Running and on the disk → abort (Aborting recorded)',
    (phase) => {
      const d = decide(
        obs({
          bp: bp({ deleting: true, status: running({ phase, job: { state: 'Running' } }) }),
          diskHolder: null,
          hypervisor: ok(CHAIN3, job(1, 10)),
        }),
      );
      expect(d.action).toEqual({ type: 'abort', domain: 'ns_vm1', target: 'vda' });
      expect(d.status.job).toEqual({ state: 'Aborting' });
      expect(d.status.phase).toBe(phase);
    },
  );
  it('Failed/InvalidBandwidth written by an operator from before status.job, over its running job → abort', () => {
    const legacy: BlockPullStatus = { ...running(), phase: 'Failed', reason: 'InvalidBandwidth' };
    const d = decide(
      obs({ bp: bp({ deleting: true, status: legacy }), diskHolder: null, hypervisor: ok(CHAIN3, job(1, 10)) }),
    );
    expect(d.action.type).toBe('abort');
    const other: BlockPullStatus = { ...running(), phase: 'Failed', reason: 'RetryLimitExceeded' };
    expect(
      decide(obs({ bp: bp({ deleting: true, status: other }), diskHolder: null, hypervisor: ok(CHAIN3, job(1, 10)) }))
        .action.type,
    ).toBe('removeFinalizer');
  });
  it('a terminal BlockPull whose job ended: a pull on the disk is not ours → finalizer removed', () => {
    const d = decide(
      obs({
        bp: bp({ deleting: true, status: running({ phase: 'Completed', job: { state: 'Ended' } }) }),
        diskHolder: null,
        hypervisor: ok(CHAIN3, job(1, 10)),
      }),
    );
    expect(d.action).toEqual({ type: 'removeFinalizer' });
  });
  it('our job may run and libvirt is unreachable → keep the finalizer, whatever the phase', () => {
    const d = decide(
      obs({
        bp: bp({ deleting: true, status: running({ phase: 'Failed', job: { state: 'Starting' } }) }),
        hypervisor: { kind: 'unreachable', message: 'x' },
      }),
    );
    expect(d.action.type).toBe('none');
    expect(d.requeueAfterMs).toBe(5000);
  });
});

describe('decide: live migrations (yield, wait, resume on the new launcher)', () => {
  const VMIM = {
    name: 'VirtualMachineInstanceMigration ns/mig-1',
    message: 'VirtualMachineInstanceMigration ns/mig-1 (phase Pending) migrates VirtualMachineInstance ns/vm1',
  };
  const MIGRATING: LauncherLookup = { ...FOUND, migration: VMIM };
  const NEW_POD: LauncherLookup = {
    kind: 'found',
    launcher: {
      namespace: 'ns',
      pod: 'virt-launcher-vm1-target',
      node: 'node2',
      container: 'compute',
      domain: 'ns_vm1',
      uri: 'qemu:///system',
    },
  };
  // The chain on the target: a new overlay on the same backing images, at other paths.
  const T_TOP = '/t/top.qcow2';
  const T_MID = '/t/mid.qcow2';
  const T_BASE = '/t/base.qcow2';
  const TARGET3: DiskInfo = {
    target: 'vda',
    chain: [
      { position: 0, index: 1, path: T_TOP, format: 'qcow2' },
      { position: 1, index: 2, path: T_MID, format: 'qcow2' },
      { position: 2, index: 3, path: T_BASE, format: 'qcow2' },
    ],
  };
  const onSource = (extra: BlockPullStatus = {}): BlockPullStatus =>
    running({
      job: { state: 'Running' },
      launcher: {
        pod: 'virt-launcher-vm1-abcde',
        node: 'node1',
        container: 'compute',
        domain: 'ns_vm1',
        target: 'vda',
      },
      ...extra,
    });

  it('Yield (default): our running job is aborted, Pending/MigrationInProgress naming the migration, intent Aborting, nothing counted', () => {
    const d = decide(
      obs({ bp: bp({ status: onSource() }), launcher: MIGRATING, hypervisor: ok(CHAIN3, job(10 * MiB, 64 * MiB)) }),
    );
    expect(d.action).toEqual({ type: 'abort', domain: 'ns_vm1', target: 'vda' });
    expect(d.status.phase).toBe('Pending');
    expect(d.status.reason).toBe('MigrationInProgress');
    expect(d.status.message).toContain('VirtualMachineInstanceMigration ns/mig-1');
    expect(d.status.job).toEqual({ state: 'Aborting' });
    expect(d.status.attempts).toBe(1);
    expect(d.status.retries).toBe(0);
    expect(getCondition(d.status.conditions, 'Progressing')?.status).toBe('False');
    expect(d.requeueAfterMs).toBe(500);
  });

  it('WaitForPull: the running job goes on; the message says the migration waits', () => {
    const d = decide(
      obs({
        bp: bp({ spec: { migrationPolicy: 'WaitForPull' }, status: onSource() }),
        launcher: MIGRATING,
        hypervisor: ok(CHAIN3, job(10 * MiB, 64 * MiB)),
      }),
    );
    expect(d.action).toEqual({ type: 'none' });
    expect(d.status.phase).toBe('Running');
    expect(d.status.job).toEqual({ state: 'Running' });
    expect(d.status.message).toMatch(
      /VirtualMachineInstanceMigration ns\/mig-1 waits for the pull to end \(migrationPolicy WaitForPull\)/,
    );
  });

  it('the aborted job is gone while the migration runs: Aborted, waiting, never a retry', () => {
    const prior = onSource({
      phase: 'Pending',
      reason: 'MigrationInProgress',
      job: { state: 'Aborting' },
      progress: { percent: '15%' },
    });
    const d = decide(obs({ bp: bp({ status: prior }), launcher: MIGRATING, hypervisor: ok(CHAIN3, null) }));
    expect(d.action).toEqual({ type: 'none' });
    expect(d.status.phase).toBe('Pending');
    expect(d.status.reason).toBe('MigrationInProgress');
    expect(d.status.job).toEqual({ state: 'Aborted' });
    expect(d.status.retries).toBe(0);
    expect(d.status.message).toMatch(/yielded to VirtualMachineInstanceMigration ns\/mig-1: the pull is paused at 15%/);
  });

  it.each(['Yield', 'WaitForPull'])(
    'migrationPolicy %s: no job is started while a migration is requested',
    (policy) => {
      const d = decide(
        obs({
          bp: bp({ spec: { migrationPolicy: policy }, status: { phase: 'Pending', reason: 'Created' } }),
          launcher: MIGRATING,
          hypervisor: ok(CHAIN3, null),
        }),
      );
      expect(d.action).toEqual({ type: 'none' });
      expect(d.status.reason).toBe('MigrationInProgress');
      expect(d.status.message).toContain('the pull starts once the migration has ended');
    },
  );

  it('a migration requested and no job of ours can run: MigrationInProgress without a look at libvirt (the target may not answer yet)', () => {
    const d = decide(obs({ bp: bp({ status: { phase: 'Pending', reason: 'Created' } }), launcher: MIGRATING }));
    expect(d.status.reason).toBe('MigrationInProgress');
    expect(d.action).toEqual({ type: 'none' });
    // With a job of ours that may run, libvirt must be looked at first (to abort it).
    const e = decide(obs({ bp: bp({ status: onSource() }), launcher: MIGRATING }));
    expect(e.status.reason).toBe('HypervisorUnreachable');
  });

  it('the migration failed: the pull resumes on the same pod (a new attempt, no retry)', () => {
    const prior = onSource({ phase: 'Pending', reason: 'MigrationInProgress', job: { state: 'Aborted' } });
    const d = decide(obs({ bp: bp({ status: prior }), hypervisor: ok(CHAIN3, null) }));
    expect(d.action).toMatchObject({ type: 'startPull', domain: 'ns_vm1', target: 'vda' });
    expect(d.status.attempts).toBe(2);
    expect(d.status.retries).toBe(0);
    expect(d.status.reason).toBe('Pulling');
    expect(d.status.message).toMatch(/^resumed after the migration on pod virt-launcher-vm1-abcde \(node node1\)/);
  });

  it('the migration completed: resumes on the new pod, full pull into its active image', () => {
    // Aborting (the abort was not confirmed before the source pod went away): the job ended with the old pod.
    const prior = onSource({ phase: 'Pending', reason: 'MigrationInProgress', job: { state: 'Aborting' } });
    const d = decide(
      obs({ bp: bp({ status: prior }), launcher: NEW_POD, hypervisor: ok(TARGET3, null), jobStartedHere: false }),
    );
    expect(d.action).toEqual({ type: 'startPull', domain: 'ns_vm1', target: 'vda', bandwidth: 0 });
    expect(d.status.launcher).toMatchObject({ pod: 'virt-launcher-vm1-target', node: 'node2' });
    expect(d.status.attempts).toBe(2);
    expect(d.status.retries).toBe(0);
    expect(d.status.backingChain?.before).toEqual(before3);
    expect(d.status.backingChain?.current?.map((l) => l.path)).toEqual([T_TOP, T_MID, T_BASE]);
    expect(d.status.message).toMatch(/^resumed after the migration on pod virt-launcher-vm1-target \(node node2\)/);
    // ... and the goal there is the new active image alone.
    const flatTarget: DiskInfo = { target: 'vda', chain: [{ position: 0, index: 1, path: T_TOP, format: 'qcow2' }] };
    const done = decide(
      obs({
        bp: bp({ status: { ...d.afterAction!, launcher: d.status.launcher! } }),
        launcher: NEW_POD,
        hypervisor: ok(flatTarget, null),
      }),
    );
    expect(done.status.phase).toBe('Completed');
    expect(done.status.reason).toBe('Completed');
  });

  it('a job recorded Running on the old pod is gone on the new one: Aborted, not a failure (no retry)', () => {
    const d = decide(
      obs({
        bp: bp({ spec: { maxRetries: 0 }, status: onSource() }),
        launcher: NEW_POD,
        hypervisor: ok(TARGET3, null),
      }),
    );
    expect(d.status.phase).toBe('Running');
    expect(d.action.type).toBe('startPull');
    expect(d.status.retries).toBe(0);
    expect(d.status.attempts).toBe(2);
  });

  it('spec.base by position across a migration: the base at the same depth on the new chain (other paths)', () => {
    const prior = onSource({
      phase: 'Pending',
      reason: 'MigrationInProgress',
      job: { state: 'Aborted' },
      backingChain: { before: before3, basePath: BASE },
    });
    const d = decide(
      obs({
        bp: bp({ spec: { base: { position: 2 } }, status: prior }),
        launcher: NEW_POD,
        hypervisor: ok(TARGET3, null),
      }),
    );
    expect(d.action).toMatchObject({ type: 'startPull', base: { path: T_BASE } });
    expect(d.status.backingChain?.basePath).toBe(T_BASE);
    // Done there: the new top on the new base; the old paths alone would never be reached.
    const done: DiskInfo = {
      target: 'vda',
      chain: [TARGET3.chain[0]!, { position: 1, index: 3, path: T_BASE, format: 'qcow2' }],
    };
    const end = decide(
      obs({
        bp: bp({ spec: { base: { position: 2 } }, status: { ...d.afterAction! } }),
        launcher: NEW_POD,
        hypervisor: ok(done, null),
      }),
    );
    expect(end.status.phase).toBe('Completed');
    expect(end.status.reason).toBe('Completed');
  });

  it('spec.base by path across a migration: the same path when the new chain has it (KubeVirt mounts the container disk at the same path)', () => {
    const sameBacking: DiskInfo = {
      target: 'vda',
      chain: [
        { position: 0, index: 1, path: T_TOP, format: 'qcow2' },
        { position: 1, index: 2, path: MID, format: 'qcow2' },
        { position: 2, index: 3, path: BASE, format: 'qcow2' },
      ],
    };
    const prior = onSource({
      phase: 'Pending',
      reason: 'MigrationInProgress',
      job: { state: 'Aborted' },
      backingChain: { before: before3, basePath: BASE },
    });
    const d = decide(
      obs({
        bp: bp({ spec: { base: { path: BASE } }, status: prior }),
        launcher: NEW_POD,
        hypervisor: ok(sameBacking, null),
      }),
    );
    expect(d.action).toMatchObject({ type: 'startPull', base: { path: BASE } });
    const done: DiskInfo = {
      target: 'vda',
      chain: [
        { position: 0, index: 1, path: T_TOP, format: 'qcow2' },
        { position: 1, index: 3, path: BASE, format: 'qcow2' },
      ],
    };
    const end = decide(
      obs({
        bp: bp({ spec: { base: { path: BASE } }, status: { ...d.afterAction! } }),
        launcher: NEW_POD,
        hypervisor: ok(done, null),
      }),
    );
    expect(end.status.phase).toBe('Completed');
  });

  it('the base cannot be identified on the new chain (not there by path, other length, or other formats): InvalidBase', () => {
    const prior = onSource({
      phase: 'Pending',
      reason: 'MigrationInProgress',
      job: { state: 'Aborted' },
      backingChain: { before: before3, basePath: BASE },
    });
    const shorter: DiskInfo = {
      target: 'vda',
      chain: [TARGET3.chain[0]!, { position: 1, index: 2, path: T_BASE, format: 'qcow2' }],
    };
    const d = decide(
      obs({
        bp: bp({ spec: { base: { position: 2 } }, status: prior }),
        launcher: NEW_POD,
        hypervisor: ok(shorter, null),
      }),
    );
    expect(d.status.phase).toBe('Failed');
    expect(d.status.reason).toBe('InvalidBase');
    expect(d.status.message).toMatch(/cannot be identified/);
    const raw: DiskInfo = {
      target: 'vda',
      chain: [TARGET3.chain[0]!, TARGET3.chain[1]!, { ...TARGET3.chain[2]!, format: 'raw' }],
    };
    const e = decide(
      obs({ bp: bp({ spec: { base: { position: 2 } }, status: prior }), launcher: NEW_POD, hypervisor: ok(raw, null) }),
    );
    expect(e.status.reason).toBe('InvalidBase');
    expect(e.status.message).toMatch(/formats raw, where the base \/d\/base.qcow2 and below had qcow2/);
  });
});

describe('decide: spec.dryRun, a plan and never a start', () => {
  const space = (pullBytes: number, availableBytes: number) => ({
    kind: 'measured' as const,
    topPath: TOP,
    pullBytes,
    availableBytes,
    totalBytes: 100_000 * MiB,
  });
  const planBp = (spec: Record<string, unknown> = {}) => bp({ spec: { dryRun: true, ...spec } });

  it('the plan of the start that would follow: Planned, the base, the bytes, the space verdict with both figures, an ETA at the bandwidth', () => {
    const d = decide(
      obs({
        bp: planBp({ base: { position: 2 }, bandwidth: '1Mi' }),
        hypervisor: ok(CHAIN3),
        space: space(64 * MiB, 1000 * MiB),
      }),
    );
    expect(d.action).toEqual({ type: 'none' });
    expect(d.requeueAfterMs).toBeNull();
    expect(d.status).toMatchObject({
      phase: 'Planned',
      reason: 'Planned',
      plan: { basePath: BASE, bytesToWrite: 64 * MiB, space: 'Fits', availableBytes: 1000 * MiB, etaSeconds: 64 },
      backingChain: { current: before3 },
    });
    expect(d.status.message).toContain('no job started');
    expect(d.status.job).toBeUndefined();
    expect(d.status.attempts ?? 0).toBe(0);
    // kstatus: Ready True, not Reconciling, not Stalled.
    expect(getCondition(d.status.conditions, 'Ready')?.status).toBe('True');
    expect(getCondition(d.status.conditions, 'Reconciling')?.status).toBe('False');
    expect(getCondition(d.status.conditions, 'Stalled')?.status).toBe('False');
  });

  it('too little space: still a plan, with the verdict Insufficient and why', () => {
    const d = decide(obs({ bp: planBp(), hypervisor: ok(CHAIN3), space: space(800 * MiB, 100 * MiB) }));
    expect(d.status).toMatchObject({
      phase: 'Planned',
      plan: { space: 'Insufficient', bytesToWrite: 800 * MiB, availableBytes: 100 * MiB },
    });
    expect(d.status.plan?.etaSeconds).toBeUndefined(); // unlimited bandwidth: no ETA
    expect(d.status.message).toMatch(/space: .*free/);
  });

  it('waits for no slot (it takes none), and asks for the space before it plans', () => {
    const full = { running: 4, runningOnNode: 2, runningInNamespace: 4, namespacesWanting: 3 };
    expect(
      decide(obs({ bp: planBp(), hypervisor: ok(CHAIN3), slots: full, space: space(MiB, 10 * MiB) })).status.phase,
    ).toBe('Planned');
    const unmeasured = decide(obs({ bp: planBp(), hypervisor: ok(CHAIN3), space: 'not measured' }));
    expect(unmeasured.wants).toBe('space');
    expect(unmeasured.action.type).toBe('none');
  });

  it('a pull job on the disk is never its own: nothing is aborted, not on delete either', () => {
    const d = decide(obs({ bp: planBp(), hypervisor: ok(CHAIN3, job(10, 100)), diskHolder: null }));
    expect(d.action.type).toBe('none');
    expect(d.status.phase).toBe('Pending');
    const deleting = decide(
      obs({
        bp: bp({ spec: { dryRun: true }, deleting: true }),
        hypervisor: ok(CHAIN3, job(10, 100)),
        diskHolder: null,
      }),
    );
    expect(deleting.action.type).toBe('removeFinalizer');
  });

  it('a plan is the look it took: Planned is not looked at again', () => {
    const planned = decide(obs({ bp: planBp(), hypervisor: ok(CHAIN3), space: space(MiB, 10 * MiB) }));
    const again = decide(
      obs({ bp: bp({ spec: { dryRun: true }, status: planned.status }), hypervisor: ok(CHAIN3, job(1, 10)) }),
    );
    expect(again.status.phase).toBe('Planned');
    expect(again.action.type).toBe('none');
    expect(again.requeueAfterMs).toBeNull();
  });

  it('never holds a disk: a real BlockPull of the same disk is its holder even when younger', () => {
    const plan = bp({ spec: { dryRun: true }, name: 'plan', created: '2026-11-27T08:00:00Z' });
    const real = bp({ name: 'real', created: '2026-11-27T09:00:00Z' });
    expect(diskHolder([plan, real], plan)).toBe('ns/real');
    expect(diskHolder([plan], plan)).toBeNull();
  });
});

describe("decide: KubeVirt's own chain operations win (external snapshots, backups, data files)", () => {
  const SNAPSHOT = {
    kind: 'snapshot',
    name: 'the external snapshot of VirtualMachineInstance ns/vm1',
    message: 'VirtualMachineInstance ns/vm1 has condition OverlaySnapshotActive=True',
  } as const;
  const VMSNAPSHOT = {
    kind: 'snapshot',
    name: 'VirtualMachineSnapshot ns/snap-1',
    message: 'VirtualMachineSnapshot ns/snap-1 (phase InProgress) snapshots VirtualMachine ns/vm1',
  } as const;
  const BACKUP = {
    kind: 'backup',
    name: 'VirtualMachineBackup ns/bk-1',
    message: 'VirtualMachineBackup ns/bk-1 (Initiated) backs up VirtualMachine ns/vm1',
  } as const;
  const VOLUMES = {
    kind: 'volumeMigration',
    name: 'the volume migration of VirtualMachineInstance ns/vm1',
    message:
      'VirtualMachineInstance ns/vm1 has condition VolumesChange=True: KubeVirt migrates its volumes to new claims',
  } as const;
  const OVL = '/scratch/ovl-rootdisk.qcow2';
  // Inside the window: KubeVirt's overlay over the chain, and its active commit running.
  const WINDOW: DiskInfo = {
    target: 'vda',
    chain: [
      { position: 0, index: 5, path: OVL, format: 'qcow2' },
      ...CHAIN3.chain.map((l) => ({ ...l, position: l.position + 1 })),
    ],
  };
  const commit: BlockJobInfo = { type: 'Active Block Commit', cur: 1, end: 10, bandwidth: 0 };
  const withLauncher = (extra: BlockPullStatus = {}): BlockPullStatus =>
    running({
      job: { state: 'Running' },
      launcher: {
        pod: 'virt-launcher-vm1-abcde',
        node: 'node1',
        container: 'compute',
        domain: 'ns_vm1',
        target: 'vda',
      },
      ...extra,
    });

  it.each([
    ['SnapshotInProgress', SNAPSHOT],
    ['SnapshotInProgress', VMSNAPSHOT],
    ['BackupInProgress', BACKUP],
    ['VolumesChangeInProgress', VOLUMES],
  ] as const)('a pull applied during the operation → Pending/%s, no start, no chain recorded', (reason, op) => {
    for (const [what, disk, j] of [
      ['before the overlay', CHAIN3, null],
      ['on the overlay', WINDOW, null],
      ['during the commit', WINDOW, commit],
    ] as const) {
      const d = decide(
        obs({
          bp: bp({ status: { phase: 'Pending', reason: 'Created' } }),
          hypervisor: ok(disk, j),
          chainOperations: [op],
        }),
      );
      expect(d.action, what).toEqual({ type: 'none' });
      expect(d.status.phase).toBe('Pending');
      expect(d.status.reason, what).toBe(reason);
      expect(d.status.message).toContain(op.message);
      expect(d.status.message).toContain('the pull starts once it is over');
      // The overlay is KubeVirt's: the chain of the window is never the pull's "before".
      expect(d.status.backingChain).toBeUndefined();
      expect(d.status.attempts ?? 0).toBe(0);
      expect(d.requeueAfterMs).toBe(5000);
      // Nothing measured: no start can follow.
      expect(
        factsWanted(
          obs({
            bp: bp({ status: { phase: 'Pending', reason: 'Created' } }),
            hypervisor: ok(disk, j),
            chainOperations: [op],
            space: 'not measured',
          }),
        ).space,
      ).toBeUndefined();
    }
  });

  it.each([
    ['SnapshotInProgress', SNAPSHOT],
    ['BackupInProgress', BACKUP],
    ['VolumesChangeInProgress', VOLUMES],
  ] as const)(
    'our running pull yields at once (%s): intent Aborting recorded with the abort, nothing counted',
    (reason, op) => {
      const d = decide(
        obs({
          bp: bp({ status: withLauncher() }),
          hypervisor: ok(CHAIN3, job(10 * MiB, 64 * MiB)),
          chainOperations: [op],
        }),
      );
      expect(d.action).toEqual({ type: 'abort', domain: 'ns_vm1', target: 'vda' });
      expect(d.status.phase).toBe('Pending');
      expect(d.status.reason).toBe(reason);
      expect(d.status.job).toEqual({ state: 'Aborting' });
      expect(d.status.message).toMatch(/^yielding to /);
      expect(d.status.attempts).toBe(1);
      expect(d.status.retries).toBe(0);
    },
  );

  it('the aborted job is gone while the window lasts: Aborted, waiting, never a failure; then resumed (a new attempt, retries untouched)', () => {
    const prior = withLauncher({
      phase: 'Pending',
      reason: 'SnapshotInProgress',
      job: { state: 'Aborting' },
      progress: { percent: '15%' },
      retries: 1,
    });
    const d = decide(obs({ bp: bp({ status: prior }), hypervisor: ok(WINDOW, null), chainOperations: [SNAPSHOT] }));
    expect(d.action).toEqual({ type: 'none' });
    expect(d.status.reason).toBe('SnapshotInProgress');
    expect(d.status.job).toEqual({ state: 'Aborted' });
    expect(d.status.message).toMatch(
      /^yielded to the external snapshot of VirtualMachineInstance ns\/vm1: the pull is paused at 15%/,
    );
    expect(d.status.backingChain).toEqual({ before: before3 });
    // KubeVirt's commit ran: the chain is the pre-snapshot chain again, and the pull resumes.
    const r = decide(obs({ bp: bp({ status: d.status }), hypervisor: ok(CHAIN3, null) }));
    expect(r.action).toMatchObject({ type: 'startPull', domain: 'ns_vm1', target: 'vda' });
    expect(r.status.attempts).toBe(2);
    expect(r.status.retries).toBe(1);
    expect(r.status.message).toMatch(/^resumed after KubeVirt's snapshot: /);
  });

  it.each([
    ['BackupInProgress', BACKUP, "KubeVirt's backup"],
    ['VolumesChangeInProgress', VOLUMES, "KubeVirt's volume migration"],
  ] as const)(
    'yielded to %s: Aborted while it lasts, never a failure; resumed once it is gone (a new attempt, retries untouched)',
    (reason, op, after) => {
      const prior = withLauncher({
        phase: 'Pending',
        reason,
        job: { state: 'Aborting' },
        progress: { percent: '15%' },
        retries: 1,
      });
      const d = decide(obs({ bp: bp({ status: prior }), hypervisor: ok(CHAIN3, null), chainOperations: [op] }));
      expect(d.action).toEqual({ type: 'none' });
      expect(d.status.phase).toBe('Pending');
      expect(d.status.reason).toBe(reason);
      expect(d.status.job).toEqual({ state: 'Aborted' });
      expect(d.status.message).toMatch(new RegExp(`^yielded to ${op.name}: the pull is paused at 15%`));
      // Still there at the next look: it keeps waiting, nothing started, nothing counted.
      const w = decide(obs({ bp: bp({ status: d.status }), hypervisor: ok(CHAIN3, null), chainOperations: [op] }));
      expect(w.action).toEqual({ type: 'none' });
      expect(w.status.reason).toBe(reason);
      expect(w.status.attempts).toBe(1);
      // The operation is over (a volume migration: the condition removed or False): resumed.
      const r = decide(obs({ bp: bp({ status: w.status }), hypervisor: ok(CHAIN3, null) }));
      expect(r.action).toMatchObject({ type: 'startPull', domain: 'ns_vm1', target: 'vda' });
      expect(r.status.attempts).toBe(2);
      expect(r.status.retries).toBe(1);
      expect(r.status.message?.startsWith(`resumed after ${after}: `)).toBe(true);
    },
  );

  it("a volume migration's VirtualMachineInstanceMigration does not keep a WaitForPull pull running: the condition wins", () => {
    const migrating: LauncherLookup = {
      ...FOUND,
      migration: {
        name: 'VirtualMachineInstanceMigration ns/kubevirt-workload-update-abcde',
        message:
          'VirtualMachineInstanceMigration ns/kubevirt-workload-update-abcde (phase Pending) migrates VirtualMachineInstance ns/vm1',
      },
    };
    const d = decide(
      obs({
        bp: bp({ spec: { migrationPolicy: 'WaitForPull' }, status: withLauncher() }),
        launcher: migrating,
        hypervisor: ok(CHAIN3, job(10 * MiB, 64 * MiB)),
        chainOperations: [VOLUMES],
      }),
    );
    expect(d.action).toEqual({ type: 'abort', domain: 'ns_vm1', target: 'vda' });
    expect(d.status.reason).toBe('VolumesChangeInProgress');
    expect(d.status.job).toEqual({ state: 'Aborting' });
  });

  it('a paused pull stays Paused during the window', () => {
    const d = decide(
      obs({
        bp: bp({
          spec: { paused: true },
          status: withLauncher({ phase: 'Paused', reason: 'Paused', job: { state: 'Aborted' } }),
        }),
        hypervisor: ok(CHAIN3, null),
        chainOperations: [SNAPSHOT],
      }),
    );
    expect(d.status.phase).toBe('Paused');
  });

  it('no operation: the same look starts the pull (the rule is what holds it back)', () => {
    const d = decide(
      obs({ bp: bp({ status: { phase: 'Pending', reason: 'Created' } }), hypervisor: ok(CHAIN3, null) }),
    );
    expect(d.action.type).toBe('startPull');
  });

  describe('a <dataStore> disk (CBT)', () => {
    const CBT = '/run/kubevirt-private/libvirt/qemu/swtpm/rootdisk.qcow2';
    const RAW = '/run/kubevirt-private/vmi-disks/rootdisk/disk.img';
    const cbt: DiskInfo = {
      target: 'vda',
      chain: [{ position: 0, index: 1, path: CBT, format: 'qcow2', dataFile: { path: RAW, format: 'raw' } }],
    };

    it('a chain of that one image: Completed/NothingToDo at once, no job, the data file in status', () => {
      const d = decide(obs({ bp: bp({ status: { phase: 'Pending', reason: 'Created' } }), hypervisor: ok(cbt, null) }));
      expect(d.action).toEqual({ type: 'none' });
      expect(d.status.phase).toBe('Completed');
      expect(d.status.reason).toBe('NothingToDo');
      expect(d.status.backingChain?.before).toEqual([
        { position: 0, path: CBT, format: 'qcow2', dataFile: { path: RAW, format: 'raw' } },
      ]);
    });

    it('an image the pull would write into or remove has a data file: Pending/DataFileInChain, no start', () => {
      // The data file on the active image (written into), and on a backing image (removed).
      const onTop: DiskInfo = {
        target: 'vda',
        chain: [{ ...cbt.chain[0]! }, { position: 1, index: 2, path: BASE, format: 'qcow2' }],
      };
      const below: DiskInfo = {
        target: 'vda',
        chain: [
          { position: 0, index: 1, path: TOP, format: 'qcow2' },
          { ...cbt.chain[0]!, position: 1, index: 2 },
        ],
      };
      for (const [what, disk, re] of [
        ['on top', onTop, /position 0\) of vda has the data file .* the pull would write into it/],
        ['below', below, /position 1\) of vda has the data file .* the pull would remove it from the chain/],
      ] as const) {
        const d = decide(
          obs({ bp: bp({ status: { phase: 'Pending', reason: 'Created' } }), hypervisor: ok(disk, null) }),
        );
        expect(d.action, what).toEqual({ type: 'none' });
        expect(d.status.phase).toBe('Pending');
        expect(d.status.reason).toBe('DataFileInChain');
        expect(d.status.message).toMatch(re);
      }
      // Kept below the base: the pull does not touch it.
      const d = decide(
        obs({
          bp: bp({ spec: { base: { position: 1 } }, status: { phase: 'Pending', reason: 'Created' } }),
          hypervisor: ok(below, null),
        }),
      );
      expect(d.status.phase).toBe('Completed');
      const keep: DiskInfo = {
        target: 'vda',
        chain: [
          below.chain[0]!,
          { position: 1, index: 3, path: MID, format: 'qcow2' },
          { ...below.chain[1]!, position: 2 },
        ],
      };
      const s = decide(
        obs({
          bp: bp({ spec: { base: { position: 2 } }, status: { phase: 'Pending', reason: 'Created' } }),
          hypervisor: ok(keep, null),
        }),
      );
      expect(s.action).toMatchObject({ type: 'startPull', base: { path: CBT } });
    });
  });
});

describe('decide: a Completed BlockPull whose VMI moved to another launcher pod', () => {
  const POD_A = FOUND.kind === 'found' ? FOUND.launcher : undefined!;
  const onPod = (pod: string, node: string, extra: Partial<Extract<LauncherLookup, { kind: 'found' }>> = {}) =>
    ({ kind: 'found', launcher: { ...POD_A, pod, node }, ...extra }) as const;
  const OVERLAY = '/var/run/kubevirt-ephemeral-disks/disk-data/rootdisk/disk.qcow2';
  const CDISK = '/var/run/kubevirt/container-disks/disk_0.img';
  /** What KubeVirt's block migration leaves on the target: a new overlay on the container disk. */
  const MIGRATED: DiskInfo = {
    target: 'vda',
    chain: [
      { position: 0, index: 1, path: OVERLAY, format: 'qcow2' },
      { position: 1, index: 2, path: CDISK, format: 'qcow2' },
    ],
  };
  /** The status a full pull of CHAIN3 on pod A wrote at its end. */
  const completedOnA = (): BlockPullStatus =>
    decide(
      obs({
        bp: bp({ status: running({ job: { state: 'Running' }, launcher: { pod: POD_A.pod, node: 'node1' } }) }),
        hypervisor: ok(FLAT),
      }),
    ).status;

  it('the completion status as the tests start from it', () => {
    const s = completedOnA();
    expect(s).toMatchObject({ phase: 'Completed', reason: 'Completed', launcher: { pod: POD_A.pod, node: 'node1' } });
    expect(s.backingChain?.current?.map((l) => l.path)).toEqual([TOP]);
    expect(getCondition(s.conditions, 'ChainAtGoal')).toBeUndefined();
  });

  it('on the pod it completed on: sticky, unchanged, nothing to do (no libvirt look given)', () => {
    const s = completedOnA();
    const d = decide(obs({ bp: bp({ status: s }), launcher: FOUND }));
    expect(d.status).toEqual(s);
    expect(d.action.type).toBe('none');
    expect(d.requeueAfterMs).toBeNull();
  });

  it('on another pod, its chain read there has a backing file again: still Completed and Ready, ChainAtGoal False, the chain it left kept apart', () => {
    const s = completedOnA();
    const d = decide(
      obs({ bp: bp({ status: s }), launcher: onPod('virt-launcher-vm1-target', 'node2'), hypervisor: ok(MIGRATED) }),
    );
    expect(d.action.type).toBe('none');
    expect(d.requeueAfterMs).toBeNull();
    expect(d.status.phase).toBe('Completed');
    expect(d.status.reason).toBe('Completed');
    // Where the pull ran and completed: unchanged.
    expect(d.status.launcher).toEqual(s.launcher);
    expect(d.status.backingChain).toEqual({
      before: s.backingChain!.before,
      completed: [{ position: 0, path: TOP, format: 'qcow2' }],
      current: [
        { position: 0, path: OVERLAY, format: 'qcow2' },
        { position: 1, path: CDISK, format: 'qcow2' },
      ],
      readOn: { pod: 'virt-launcher-vm1-target', node: 'node2' },
    });
    const chain = getCondition(d.status.conditions, 'ChainAtGoal');
    expect(chain).toMatchObject({ status: 'False', reason: 'LauncherChanged', observedGeneration: 2 });
    for (const part of [
      `pod ${POD_A.pod} (node node1)`,
      'pod virt-launcher-vm1-target (node node2',
      `${OVERLAY} <- ${CDISK}`,
      'backing file again',
      'apply a new BlockPull',
    ])
      expect(chain?.message).toContain(part);
    expect(d.status.message).toBe(chain?.message);
    // kstatus: Current (Ready True, neither Reconciling nor Stalled); Complete kept.
    expect(getCondition(d.status.conditions, 'Ready')?.status).toBe('True');
    expect(getCondition(d.status.conditions, 'Complete')?.status).toBe('True');
    expect(getCondition(d.status.conditions, 'Reconciling')?.status).toBe('False');
    expect(getCondition(d.status.conditions, 'Stalled')?.status).toBe('False');
    // Ready's lastTransitionTime is kept: it did not change.
    expect(getCondition(d.status.conditions, 'Ready')?.lastTransitionTime).toBe(
      getCondition(s.conditions, 'Ready')?.lastTransitionTime,
    );

    // The next look on that pod (the gatherer does not read libvirt again): the same status.
    const later = decide(obs({ bp: bp({ status: d.status }), launcher: onPod('virt-launcher-vm1-target', 'node2') }));
    expect(later.status).toEqual(d.status);
    expect(later.requeueAfterMs).toBeNull();
  });

  it('on another pod whose chain is still at the goal (e.g. shared storage): ChainAtGoal True', () => {
    const d = decide(
      obs({
        bp: bp({ status: completedOnA() }),
        launcher: onPod('virt-launcher-vm1-b', 'node2'),
        hypervisor: ok(FLAT),
      }),
    );
    expect(getCondition(d.status.conditions, 'ChainAtGoal')).toMatchObject({
      status: 'True',
      reason: 'LauncherChanged',
    });
    expect(d.status.message).toContain("still at the pull's goal");
  });

  it('the new pod cannot be read: ChainAtGoal Unknown, no current chain claimed, looked at again after the wait', () => {
    const d = decide(
      obs({
        bp: bp({ status: completedOnA() }),
        launcher: onPod('virt-launcher-vm1-b', 'node2'),
        hypervisor: { kind: 'unreachable', message: 'cannot connect to libvirt' },
      }),
    );
    expect(d.status.phase).toBe('Completed');
    expect(d.status.backingChain?.current).toBeUndefined();
    expect(d.status.backingChain?.readOn).toBeUndefined();
    expect(d.status.backingChain?.completed?.map((l) => l.path)).toEqual([TOP]);
    expect(getCondition(d.status.conditions, 'ChainAtGoal')).toMatchObject({ status: 'Unknown' });
    expect(d.status.message).toContain('cannot connect to libvirt');
    expect(d.requeueAfterMs).toBe(5000);
    // Read on the next look: False, the chain there.
    const next = decide(
      obs({ bp: bp({ status: d.status }), launcher: onPod('virt-launcher-vm1-b', 'node2'), hypervisor: ok(MIGRATED) }),
    );
    expect(getCondition(next.status.conditions, 'ChainAtGoal')?.status).toBe('False');
    expect(next.status.backingChain?.completed?.map((l) => l.path)).toEqual([TOP]);
    expect(next.status.backingChain?.readOn?.pod).toBe('virt-launcher-vm1-b');
  });

  it('a second move: the chain the pull left stays the one of its completion', () => {
    const first = decide(
      obs({
        bp: bp({ status: completedOnA() }),
        launcher: onPod('virt-launcher-vm1-b', 'node2'),
        hypervisor: ok(MIGRATED),
      }),
    ).status;
    const second = decide(
      obs({ bp: bp({ status: first }), launcher: onPod('virt-launcher-vm1-c', 'node3'), hypervisor: ok(MIGRATED) }),
    ).status;
    expect(second.backingChain?.completed?.map((l) => l.path)).toEqual([TOP]);
    expect(second.backingChain?.readOn).toEqual({ pod: 'virt-launcher-vm1-c', node: 'node3' });
    expect(second.message).toContain(`pod ${POD_A.pod} (node node1)`);
    expect(second.message).toContain('pod virt-launcher-vm1-c (node node3');
  });

  it('while a migration is requested, or with the pod being deleted: nothing changes yet', () => {
    const s = completedOnA();
    for (const launcher of [
      onPod(POD_A.pod, 'node1', { migration: { name: 'VirtualMachineInstanceMigration ns/m', message: 'm' } }),
      onPod('virt-launcher-vm1-b', 'node2', { terminating: true }),
    ]) {
      const d = decide(obs({ bp: bp({ status: s }), launcher, hypervisor: ok(MIGRATED) }));
      expect(d.status).toEqual(s);
    }
  });

  it('a spec change later re-states ChainAtGoal for the new generation, as it was', () => {
    const moved = decide(
      obs({
        bp: bp({ status: completedOnA() }),
        launcher: onPod('virt-launcher-vm1-b', 'node2'),
        hypervisor: ok(MIGRATED),
      }),
    ).status;
    const edited = { ...bp({ status: moved }), metadata: { ...bp().metadata, generation: 3 } };
    const d = decide(obs({ bp: edited, launcher: onPod('virt-launcher-vm1-b', 'node2') }));
    const chain = getCondition(d.status.conditions, 'ChainAtGoal');
    expect(chain).toMatchObject({ status: 'False', reason: 'LauncherChanged', observedGeneration: 3 });
    expect(chain?.message).toBe(getCondition(moved.conditions, 'ChainAtGoal')?.message);
  });

  it('Failed and Planned BlockPulls are not followed (their status describes no chain the pull left)', () => {
    const failed: BlockPullStatus = {
      phase: 'Failed',
      reason: 'DiskNotFound',
      message: 'no disk',
      launcher: { pod: POD_A.pod, node: 'node1' },
    };
    const d = decide(
      obs({ bp: bp({ status: failed }), launcher: onPod('virt-launcher-vm1-b', 'node2'), hypervisor: ok(MIGRATED) }),
    );
    expect(getCondition(d.status.conditions, 'ChainAtGoal')).toBeUndefined();
    expect(d.status.backingChain).toBeUndefined();
  });
});
