// BlockPull objects in every phase and reason, with the status the operator's own decide() /
// decideActionError() produce for an observation that leads there (not hand-written statuses),
// plus the states the API server shows around them: just created (no status yet), spec changed
// but not yet observed, and being deleted. Shared by the conditions unit test, the kstatus test
// (real kstatus library) and the Argo CD health check test, so all three judge the same objects.
import {
  FINALIZER,
  parseBlockPull,
  type BlockPull,
  type BlockPullStatus,
  type Phase,
  type Reason,
} from '../../../operator/src/api/types.ts';
import type { HypervisorObservation } from '../../../operator/src/controller/decide.ts';
import { decide, decideActionError, type TestObservation as Observation } from '../../unit/support/decide.ts';
import type { LauncherLookup } from '../../../operator/src/kubevirt/launcher.ts';
import type { BlockJobInfo, DiskInfo } from '../../../operator/src/hypervisor/types.ts';

/** What kstatus must say (the table), and what Argo CD's health must agree with. */
export type Verdict = 'Current' | 'Failed' | 'InProgress' | 'Terminating';

export interface BlockPullState {
  /** Unique, e.g. `Running/Pulling`, `created`, `Completed/Completed, spec changed`. */
  readonly name: string;
  readonly phase: Phase | undefined;
  readonly reason: Reason | undefined;
  /** The object as the API server returns it (apiVersion, kind, metadata, spec, status). */
  readonly object: Record<string, unknown>;
  readonly kstatus: Verdict;
}

const NOW = new Date('2026-11-27T10:00:00Z');
const TOP = '/var/run/kubevirt-ephemeral-disks/disk-data/rootdisk/disk.qcow2';
const MID = '/var/run/kubevirt/container-disks/disk_0.img';
const BASE = '/var/lib/images/base.qcow2';
const chain = (paths: readonly string[]): DiskInfo => ({
  target: 'vda',
  alias: 'ua-rootdisk',
  chain: paths.map((path, i) => ({ position: i, index: i + 1, path, format: 'qcow2' })),
});
const CHAIN3 = chain([TOP, MID, BASE]);
const FLAT = chain([TOP]);
const FOUND: LauncherLookup = {
  kind: 'found',
  launcher: {
    namespace: 'vms',
    pod: 'virt-launcher-web-1-abcde',
    node: 'node1',
    container: 'compute',
    domain: 'vms_web-1',
    uri: 'qemu:///system',
  },
};
const GIB = 1024 ** 3;
const job = (cur: number, end = GIB): BlockJobInfo => ({ type: 'Block Pull', cur, end, bandwidth: 0 });
const ok = (disk: DiskInfo, j: BlockJobInfo | null = null): HypervisorObservation => ({ kind: 'ok', disk, job: j });

interface ObjectOptions {
  readonly name: string;
  readonly spec?: Record<string, unknown>;
  readonly status?: BlockPullStatus;
  readonly finalizer?: boolean;
  readonly generation?: number;
  readonly deleting?: boolean;
}

function object(o: ObjectOptions): Record<string, unknown> {
  return {
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPull',
    metadata: {
      name: o.name,
      namespace: 'vms',
      uid: `0d6c5e39-5b1f-4d0e-9a51-${o.name
        .replace(/[^a-z0-9]/gi, '')
        .slice(0, 12)
        .padStart(12, '0')
        .toLowerCase()}`,
      generation: o.generation ?? 1,
      resourceVersion: '1',
      creationTimestamp: '2026-11-27T09:00:00Z',
      ...(o.finalizer === false ? {} : { finalizers: [FINALIZER] }),
      ...(o.deleting ? { deletionTimestamp: '2026-11-27T10:05:00Z', deletionGracePeriodSeconds: 0 } : {}),
    },
    spec: { vmiName: 'web-1', disk: 'rootdisk', ...o.spec },
    ...(o.status ? { status: o.status } : {}),
  };
}

function observe(bp: BlockPull, o: Partial<Observation>): Observation {
  return {
    now: NOW,
    bp,
    launcher: FOUND,
    // This operator process started the job it sees (else the job reads Adopted).
    jobStartedHere: true,
    diskHolder: `vms/${bp.metadata.name}`,
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
    ...o,
  };
}

/** decide() for an object with this spec/status and this observation; the object with the decided status. */
function decided(name: string, opts: Omit<ObjectOptions, 'name'>, o: Partial<Observation>): Record<string, unknown> {
  const bp = parseBlockPull(object({ name, ...opts }));
  const d = decide(observe(bp, o));
  // The reconciler adds the finalizer (if decide asks for it) and writes the decided status
  // (after a start that libvirt accepted: the status recording the start as confirmed).
  return object({ name, ...opts, finalizer: true, status: d.afterAction ?? d.status });
}

function statusOf(obj: Record<string, unknown>): BlockPullStatus {
  return parseBlockPull(obj).status ?? {};
}

/** Every phase and reason, as decide() writes it. */
export function blockPullStates(): BlockPullState[] {
  const out: BlockPullState[] = [];
  const add = (obj: Record<string, unknown>, kstatus: Verdict, name?: string): void => {
    const s = statusOf(obj);
    const phase = s.phase;
    const reason = s.reason as Reason | undefined;
    out.push({ name: name ?? `${phase ?? '-'}/${reason ?? '-'}`, phase, reason, object: obj, kstatus });
  };
  const verdict = (obj: Record<string, unknown>): Verdict => {
    const phase = statusOf(obj).phase;
    return phase === 'Completed' || phase === 'Planned' ? 'Current' : phase === 'Failed' ? 'Failed' : 'InProgress';
  };
  const addDecided = (obj: Record<string, unknown>, name?: string): void => add(obj, verdict(obj), name);

  // --- just created: the operator has not looked yet, then its first look --------------------
  // The API server never returns a BlockPull without status: the CRD defaults it to
  // {observedGeneration: 0} (a status-less object would read Current to kstatus); the kstatus e2e
  // test proves it on the real API server.
  add(
    object({ name: 'created-defaulted', finalizer: false, status: { observedGeneration: 0 } }),
    'InProgress',
    'created (status defaulted by the CRD)',
  );
  addDecided(decided('created-looked', { finalizer: false }, { hypervisor: ok(CHAIN3) }));

  // --- Pending -----------------------------------------------------------------------------
  for (const [kind, reason] of [
    ['vmiNotFound', 'VMINotFound'],
    ['vmiNotRunning', 'VMINotRunning'],
    ['migrationInProgress', 'MigrationInProgress'],
    ['launcherNotFound', 'LauncherNotFound'],
  ] as const) {
    addDecided(
      decided(
        `pending-${reason.toLowerCase()}`,
        {},
        { launcher: { kind, message: `${reason}: VirtualMachineInstance vms/web-1` } },
      ),
    );
  }
  addDecided(
    decided(
      'pending-domainnotfound',
      {},
      { hypervisor: { kind: 'domainNotFound', message: 'Domain not found: no domain with matching name vms_web-1' } },
    ),
  );
  addDecided(
    decided('pending-diskbusy', {}, { hypervisor: ok(CHAIN3, { type: 'Block Copy', cur: 1, end: 10, bandwidth: 0 }) }),
  );
  addDecided(
    decided(
      'pending-slot',
      {},
      {
        hypervisor: ok(CHAIN3),
        slots: {
          running: 4,
          runningOnNode: 0,
          runningInNamespace: 0,
          namespacesWanting: 1,
          maxConcurrentPulls: 4,
          maxPullsPerNode: 2,
        },
      },
    ),
  );
  addDecided(
    decided(
      'pending-snapshotinprogress',
      {},
      {
        hypervisor: ok(CHAIN3),
        chainOperations: [
          {
            kind: 'snapshot',
            name: 'VirtualMachineSnapshot vms/snap-1',
            message: 'VirtualMachineSnapshot vms/snap-1 (phase InProgress) snapshots VirtualMachine vms/web-1',
          },
        ],
      },
    ),
  );
  addDecided(
    decided(
      'pending-backupinprogress',
      {},
      {
        hypervisor: ok(CHAIN3),
        chainOperations: [
          {
            kind: 'backup',
            name: 'VirtualMachineBackup vms/bk-1',
            message: 'VirtualMachineBackup vms/bk-1 (Initiated) backs up VirtualMachine vms/web-1',
          },
        ],
      },
    ),
  );
  addDecided(
    decided(
      'pending-volumeschangeinprogress',
      {},
      {
        hypervisor: ok(CHAIN3),
        chainOperations: [
          {
            kind: 'volumeMigration',
            name: 'the volume migration of VirtualMachineInstance vms/web-1',
            message:
              'VirtualMachineInstance vms/web-1 has condition VolumesChange=True: KubeVirt migrates its volumes to new claims',
          },
        ],
      },
    ),
  );
  addDecided(
    decided(
      'pending-datafileinchain',
      {},
      {
        hypervisor: ok({
          ...CHAIN3,
          chain: CHAIN3.chain.map((l) =>
            l.position === 0
              ? { ...l, dataFile: { path: '/var/run/kubevirt-private/vmi-disks/rootdisk/disk.img', format: 'raw' } }
              : l,
          ),
        }),
      },
    ),
  );
  addDecided(
    decided(
      'pending-unreachable',
      {},
      { hypervisor: { kind: 'unreachable', message: 'failed to connect to the hypervisor' } },
    ),
  );
  {
    const bp = parseBlockPull(object({ name: 'pending-jobfailed' }));
    const o = observe(bp, { hypervisor: ok(CHAIN3) });
    const d = decideActionError(o, decide(o), new Error('virsh: internal error'));
    if (d === undefined) throw new Error('decideActionError mapped nothing');
    addDecided(object({ name: 'pending-jobfailed', status: d.status }), 'Pending/JobFailed (will retry)');
  }

  // --- Running -----------------------------------------------------------------------------
  const started = decided('running-pulling', {}, { hypervisor: ok(CHAIN3) });
  addDecided(started, 'Running/Pulling (job started)');
  const pulling = decided(
    'running-pulling-progress',
    { status: statusOf(started) },
    { hypervisor: ok(CHAIN3, job(GIB / 4)), previousSample: { cur: 0, atMs: NOW.getTime() - 1000 } },
  );
  addDecided(pulling, 'Running/Pulling (progress)');
  addDecided(decided('running-adopted', {}, { hypervisor: ok(CHAIN3, job(GIB / 2)), jobStartedHere: false }));
  // Our job ended short of the goal: Pending/JobFailed for a backoff, then started again.
  const jobEnded = decided(
    'pending-jobfailed-backoff',
    { status: statusOf(pulling) },
    { hypervisor: ok(CHAIN3), jobStartedHere: false },
  );
  addDecided(jobEnded, 'Pending/JobFailed (job ended short, backoff)');
  const retrying = decided(
    'running-retrying',
    { status: statusOf(jobEnded) },
    { hypervisor: ok(CHAIN3), now: new Date(NOW.getTime() + 60_000) },
  );
  addDecided(retrying);
  addDecided(
    decided(
      'pending-insufficientspace',
      {},
      {
        hypervisor: ok(CHAIN3),
        space: {
          kind: 'measured',
          topPath: TOP,
          pullBytes: GIB,
          availableBytes: 16 * 1024 ** 2,
          totalBytes: 32 * 1024 ** 2,
        },
      },
    ),
  );
  addDecided(
    decided(
      'running-unreachable',
      { status: statusOf(pulling) },
      { hypervisor: { kind: 'unreachable', message: 'exec: connection refused' } },
    ),
    'Running/HypervisorUnreachable',
  );

  // --- Paused ------------------------------------------------------------------------------
  const pausing = decided(
    'paused-aborting',
    { spec: { paused: true }, status: statusOf(pulling) },
    { hypervisor: ok(CHAIN3, job(GIB / 3)) },
  );
  addDecided(pausing, 'Paused/Paused (aborting the job)');
  addDecided(
    decided('paused', { spec: { paused: true }, status: statusOf(pausing) }, { hypervisor: ok(CHAIN3) }),
    'Paused/Paused (no job)',
  );
  addDecided(
    decided('paused-from-start', { spec: { paused: true } }, { hypervisor: ok(CHAIN3) }),
    'Paused/Paused (created paused)',
  );

  // --- Completed ---------------------------------------------------------------------------
  const completed = decided('completed', { status: statusOf(pulling) }, { hypervisor: ok(FLAT) });
  addDecided(completed);
  addDecided(decided('completed-nothing', {}, { hypervisor: ok(FLAT) }));
  // Its VMI migrated since: another launcher pod, whose chain is a new overlay on the container
  // disk (KubeVirt's block migration). Still Completed and Ready: ChainAtGoal False says the rest.
  if (FOUND.kind === 'found') {
    const target = { ...FOUND.launcher, pod: 'virt-launcher-web-1-fghij', node: 'node2' };
    addDecided(
      decided(
        'completed-vmi-moved',
        { status: statusOf(completed) },
        { launcher: { kind: 'found', launcher: target }, hypervisor: ok(chain([TOP, MID])) },
      ),
      'Completed/Completed, VMI moved (ChainAtGoal False)',
    );
  }

  // --- Planned (spec.dryRun) ----------------------------------------------------------------
  const space = (pullBytes: number, availableBytes: number) => ({
    kind: 'measured' as const,
    topPath: TOP,
    pullBytes,
    availableBytes,
    totalBytes: 64 * GIB,
  });
  addDecided(
    decided(
      'planned',
      { spec: { dryRun: true, bandwidth: '50Mi' } },
      { hypervisor: ok(CHAIN3), space: space(GIB, 8 * GIB) },
    ),
    'Planned/Planned (fits)',
  );
  addDecided(
    decided(
      'planned-insufficient',
      { spec: { dryRun: true } },
      { hypervisor: ok(CHAIN3), space: space(GIB, 16 * 1024 ** 2) },
    ),
    'Planned/Planned (too little space)',
  );

  // --- Failed ------------------------------------------------------------------------------
  const diskNotFound = decided(
    'failed-disknotfound',
    {},
    { hypervisor: { kind: 'diskNotFound', message: 'disk rootdisk is not in domain vms_web-1' } },
  );
  addDecided(diskNotFound);
  addDecided(decided('failed-invalidbase', { spec: { base: { path: '/nope.qcow2' } } }, { hypervisor: ok(CHAIN3) }));
  addDecided(decided('failed-invalidbandwidth', { spec: { bandwidth: '5 MB' } }, { hypervisor: ok(CHAIN3) }));
  addDecided(
    decided('failed-retries', { spec: { maxRetries: 0 }, status: statusOf(pulling) }, { hypervisor: ok(CHAIN3) }),
  );
  {
    const bp = parseBlockPull(object({ name: 'failed-jobfailed', spec: { maxRetries: 0 } }));
    const o = observe(bp, { hypervisor: ok(CHAIN3) });
    const d = decideActionError(o, decide(o), new Error('virsh: internal error'));
    if (d === undefined) throw new Error('decideActionError mapped nothing');
    addDecided(object({ name: 'failed-jobfailed', spec: { maxRetries: 0 }, status: d.status }));
  }

  // --- spec changed, not yet observed (metadata.generation moved past status.observedGeneration)
  for (const [obj, label] of [
    [completed, 'Completed'],
    [diskNotFound, 'Failed'],
    [pulling, 'Running'],
  ] as const) {
    const md = obj.metadata as Record<string, unknown>;
    add(
      { ...obj, metadata: { ...md, name: `${String(md.name)}-edited`, generation: 2 } },
      'InProgress',
      `${label}, spec changed, not yet observed`,
    );
  }
  // ...and once the operator has observed it again, the terminal phase holds for the new generation.
  {
    const edited = object({
      name: 'completed-edited-observed',
      generation: 2,
      spec: { bandwidth: '10Mi' },
      status: statusOf(completed),
    });
    const d = decide(observe(parseBlockPull(edited), { hypervisor: ok(FLAT) }));
    addDecided({ ...edited, status: d.status }, 'Completed, spec changed, observed');
  }

  // --- being deleted: the finalizer aborts the job ----------------------------------------
  add(
    {
      ...pulling,
      metadata: {
        ...(pulling.metadata as object),
        name: 'deleting-running',
        deletionTimestamp: '2026-11-27T10:05:00Z',
        deletionGracePeriodSeconds: 0,
      },
    },
    'Terminating',
    'Running, being deleted (aborting the job)',
  );
  add(
    {
      ...completed,
      metadata: {
        ...(completed.metadata as object),
        name: 'deleting-completed',
        deletionTimestamp: '2026-11-27T10:05:00Z',
        deletionGracePeriodSeconds: 0,
      },
    },
    'Terminating',
    'Completed, being deleted',
  );
  return out;
}
