/**
 * The policy's decision, PURE: what the gatherer saw of the fleet in; the BlockPulls to create,
 * change and delete, the status and when to look again out. No I/O, no clock (the caller passes
 * `now`), so every rule is table-tested (decide.test.ts).
 *
 * Rules:
 * - One BlockPull per selected disk, named deterministically (naming.ts), per VMI incarnation:
 *   a restarted VMI (new uid) gets a new pull; the pulls of a VMI that is gone are deleted.
 * - A disk already claimed is left alone and reported as a conflict; the older claim wins: an
 *   existing BlockPull of the user's or of another policy, else the older policy selecting it.
 *   Should two pulls exist anyway (two policies racing), the younger policy deletes its own.
 * - Pacing: at most maxConcurrent pulls of the policy are active (not paused, not finished);
 *   the others are created paused and unpaused as slots free up, oldest first.
 * - Outside the window, when paused, in dryRun or with a window that never opens: every active
 *   pull is paused (spec.paused: streamed data is kept) and none is started.
 * - minChainLength above 2 and base.keepBottom need the chain first: a dryRun BlockPull (a plan)
 *   looks at it; the pull follows for a disk that qualifies, and the plan is then deleted.
 *   The first look is of a full pull (the chain's length is not known before it), so its bytes
 *   are a full pull's: under dryRun with base.keepBottom a second plan, with the base the pull
 *   would get, measures the bytes of the images that would really be pulled.
 * - ttlSecondsAfterFinished: a finished pull is deleted after the TTL and its disk remembered
 *   in status.finished, so it is not pulled again.
 */
import { assertNever } from '../api/assert-never.ts';
import { setCondition, timestamp } from '../api/conditions.ts';
import {
  POLICY_STATUS_LIMITS,
  type PolicyConflict,
  type PolicyKind,
  type PolicyPlanEntry,
  type PolicyReason,
  type PolicySpec,
  type PolicyStatus,
  type PolicyRole,
} from '../api/policy-types.ts';
import type { BlockPullSpec, Condition, MigrationPolicy, Phase } from '../api/types.ts';
import { blockPullName, pullLabels } from './naming.ts';
import type { WindowState } from './window.ts';

/** A selected disk of a selected VMI. */
export interface SelectedDisk {
  readonly namespace: string;
  readonly vmi: string;
  readonly vmiUid: string;
  /** The VMI's creationTimestamp (RFC 3339): a claim older than the VMI is not for this incarnation. */
  readonly vmiCreated: string;
  readonly disk: string;
  /** An older policy that selects this disk too ("Kind/namespace/name"), if any. */
  readonly olderPolicy?: string;
}

/** What the policy reads of a BlockPull (the policy's own and the other claims on its disks). */
export interface PullView {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  readonly created: string;
  readonly deleting: boolean;
  readonly vmi: string;
  readonly disk: string;
  readonly dryRun: boolean;
  readonly paused: boolean;
  /** spec.base.position, if set (a pull down to a kept base, or the plan of one). */
  readonly basePosition?: number;
  readonly bandwidth?: number | string;
  readonly migrationPolicy: MigrationPolicy;
  /** The uid of its controller owner, if any. */
  readonly controllerUid?: string;
  /** Labels written by a policy (naming.ts pullLabels). */
  readonly policyName?: string;
  readonly policyKind?: string;
  readonly vmiUid?: string;
  readonly role?: PolicyRole;
  readonly phase?: Phase;
  readonly currentBytes?: number;
  readonly totalBytes?: number;
  readonly bytesPerSecond?: number;
  /** Images in the chain (status.backingChain.current, else before), once looked at. */
  readonly chainLength?: number;
  readonly planBytes?: number;
  readonly completionTime?: string;
}

export interface PolicyFacts {
  readonly kind: PolicyKind;
  readonly name: string;
  readonly namespace?: string;
  readonly uid: string;
  readonly generation: number;
  readonly spec: PolicySpec;
  readonly status: PolicyStatus | undefined;
  readonly window: WindowState;
  /** Sorted by namespace, VMI, disk. */
  readonly selected: readonly SelectedDisk[];
  /** BlockPulls controlled by this policy. */
  readonly own: readonly PullView[];
  /** Every other BlockPull naming a selected VMI's disk (the claims the policy must respect). */
  readonly others: readonly PullView[];
  /** The VMIs of the policy's namespaces that exist now: "namespace/name" -> uid. */
  readonly vmiUids: ReadonlyMap<string, string>;
  readonly now: Date;
}

export interface PullToCreate {
  readonly namespace: string;
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly spec: BlockPullSpec;
}

export interface PullChange {
  readonly namespace: string;
  readonly name: string;
  readonly spec: Partial<Pick<BlockPullSpec, 'paused' | 'bandwidth' | 'migrationPolicy'>>;
}

export interface PullRemoval {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  readonly why: 'VMIGone' | 'NotSelected' | 'TTLExpired' | 'LostConflict' | 'PlanUsed' | 'PlanStale';
}

export interface PolicyDecision {
  readonly create: readonly PullToCreate[];
  readonly change: readonly PullChange[];
  readonly remove: readonly PullRemoval[];
  readonly status: PolicyStatus;
  /** Look again after this long (the window's next change, a TTL running out); null: on events only. */
  readonly requeueAfterMs: number | null;
}

const FINISHED: readonly (Phase | undefined)[] = ['Completed', 'Failed'];
const isFinished = (p: PullView): boolean => FINISHED.includes(p.phase);
const diskKey = (ns: string, vmi: string, disk: string): string => `${ns}/${vmi}/${disk}`;
const byAge = (a: PullView, b: PullView): number => a.created.localeCompare(b.created) || a.name.localeCompare(b.name);

/** Is `p` a claim on the disk of this VMI incarnation (not a plan, not of an earlier incarnation)? */
function claims(p: PullView, d: SelectedDisk): boolean {
  if (p.dryRun || p.deleting) return false;
  if (p.vmiUid !== undefined) return p.vmiUid === d.vmiUid;
  // A BlockPull without the label (the user's): a finished one older than the VMI was for an earlier incarnation.
  return !isFinished(p) || p.created >= d.vmiCreated;
}

function holdReason(f: PolicyFacts): { reason: PolicyReason; message: string } | undefined {
  if (f.window.kind === 'invalid') return { reason: f.window.reason, message: f.window.message };
  if (f.spec.paused) return { reason: 'Paused', message: 'spec.paused: every pull of the policy is paused' };
  if (f.spec.dryRun) return undefined;
  if (f.window.kind === 'closed') {
    const next = f.window.nextChange ? `; it opens at ${f.window.nextChange.toISOString()}` : '';
    return {
      reason: 'OutsideWindow',
      message: `outside the window ${f.spec.window?.start}-${f.spec.window?.end} ${f.spec.window?.timeZone}: pulls are paused, streamed data is kept${next}`,
    };
  }
  return undefined;
}

function pullSpec(f: PolicyFacts, d: SelectedDisk, paused: boolean, dryRun: boolean, position?: number): BlockPullSpec {
  return {
    vmiName: d.vmi,
    disk: d.disk,
    ...(position !== undefined ? { base: { position } } : {}),
    ...(f.spec.bandwidth !== undefined ? { bandwidth: f.spec.bandwidth } : {}),
    paused,
    maxRetries: 3,
    migrationPolicy: f.spec.migrationPolicy,
    dryRun,
  };
}

interface Tally {
  notCreated: number;
  pending: number;
  running: number;
  paused: number;
  completed: number;
  failed: number;
  planned: number;
  skipped: number;
}

/** A finished disk remembered in status.finished: "<VMI uid>/<disk>=<phase>". */
const memoOf = (d: SelectedDisk, phase: 'Completed' | 'Failed'): string => `${d.vmiUid}/${d.disk}=${phase}`;

const emptyTally = (): Tally => ({
  notCreated: 0,
  pending: 0,
  running: 0,
  paused: 0,
  completed: 0,
  failed: 0,
  planned: 0,
  skipped: 0,
});

function groupByDisk(list: readonly PullView[]): Map<string, PullView[]> {
  const m = new Map<string, PullView[]>();
  for (const p of list) {
    const k = diskKey(p.namespace, p.vmi, p.disk);
    m.set(k, [...(m.get(k) ?? []), p]);
  }
  return m;
}

/** One decision in the making: the accumulators, and one method per rule of the header. */
class Pass {
  readonly create: PullToCreate[] = [];
  readonly change = new Map<string, PullChange>();
  readonly remove: PullRemoval[] = [];
  readonly conflicts: PolicyConflict[] = [];
  readonly plan: PolicyPlanEntry[] = [];
  readonly tally = emptyTally();
  readonly keepFinished = new Set<string>();
  /** The uids of the policy's BlockPulls of selected disks. */
  readonly used = new Set<string>();
  /** The policy's unfinished pulls (paced), and the pulls to make. */
  readonly paced: PullView[] = [];
  readonly toCreate: { d: SelectedDisk; position?: number }[] = [];
  requeueAt = Number.POSITIVE_INFINITY;
  openConflicts = 0;
  plansToMake = 0;
  active = 0;
  readonly #f: PolicyFacts;
  readonly #now: number;
  readonly #finished: ReadonlySet<string>;
  readonly #ownByDisk: Map<string, PullView[]>;
  readonly #othersByDisk: Map<string, PullView[]>;

  constructor(f: PolicyFacts) {
    this.#f = f;
    this.#now = f.now.getTime();
    this.#finished = new Set(f.status?.finished ?? []);
    this.#ownByDisk = groupByDisk(f.own);
    this.#othersByDisk = groupByDisk(f.others);
  }

  #needPlan(): boolean {
    const s = this.#f.spec;
    return s.dryRun || s.minChainLength > 2 || s.base?.keepBottom !== undefined;
  }

  #changeSpec(p: PullView, spec: PullChange['spec']): void {
    const k = `${p.namespace}/${p.name}`;
    this.change.set(k, { namespace: p.namespace, name: p.name, spec: { ...this.change.get(k)?.spec, ...spec } });
  }

  #removeIfDue(p: PullView, memo?: string): void {
    const ttl = this.#f.spec.ttlSecondsAfterFinished;
    if (ttl === undefined || p.completionTime === undefined) return;
    const due = Date.parse(p.completionTime) + ttl * 1000;
    if (due > this.#now) {
      this.requeueAt = Math.min(this.requeueAt, due);
      return;
    }
    this.remove.push({ namespace: p.namespace, name: p.name, uid: p.uid, why: 'TTLExpired' });
    if (memo !== undefined) this.keepFinished.add(memo);
  }

  #newPull(d: SelectedDisk, role: PolicyRole, paused: boolean, position?: number): PullToCreate {
    const f = this.#f;
    // A plan's name covers its base (two looks at one disk); a pull's is one per disk.
    const planBase = role === 'plan' && position !== undefined ? { position } : {};
    return {
      namespace: d.namespace,
      name: blockPullName({ policyUid: f.uid, vmiName: d.vmi, vmiUid: d.vmiUid, disk: d.disk, role, ...planBase }),
      labels: pullLabels({ kind: f.kind, name: f.name, uid: f.uid }, d.vmiUid, role),
      spec: pullSpec(f, d, paused, role === 'plan', position),
    };
  }

  /** One selected disk: a claim of someone else's, the memory of a finished pull, our pull, or a plan. */
  disk(d: SelectedDisk): void {
    const k = diskKey(d.namespace, d.vmi, d.disk);
    const mine = (this.#ownByDisk.get(k) ?? []).filter((p) => p.vmiUid === d.vmiUid && !p.deleting);
    for (const p of mine) this.used.add(p.uid);
    const pull = mine.filter((p) => p.role !== 'plan').sort(byAge)[0];
    const plans = mine.filter((p) => p.role === 'plan');
    const rival = (this.#othersByDisk.get(k) ?? []).filter((p) => claims(p, d)).sort(byAge)[0];
    if (rival !== undefined && (pull === undefined || byAge(rival, pull) < 0)) return this.#lostTo(d, rival, pull);
    if (pull === undefined && plans.length === 0 && d.olderPolicy !== undefined) return this.#olderPolicy(d);
    const remembered = (['Completed', 'Failed'] as const).find((ph) => this.#finished.has(memoOf(d, ph)));
    if (pull === undefined && remembered !== undefined) {
      this.keepFinished.add(memoOf(d, remembered));
      if (remembered === 'Completed') this.tally.completed++;
      else this.tally.failed++;
      return;
    }
    if (pull !== undefined) return this.#ours(d, pull, plans);
    if (!this.#needPlan()) {
      this.toCreate.push({ d });
      return;
    }
    this.#planned(d, plans);
  }

  /** The older claim wins: an existing BlockPull of someone else's. */
  #lostTo(d: SelectedDisk, rival: PullView, pull: PullView | undefined): void {
    if (pull !== undefined)
      this.remove.push({ namespace: pull.namespace, name: pull.name, uid: pull.uid, why: 'LostConflict' });
    const whose = rival.policyName !== undefined ? `policy ${rival.policyKind}/${rival.policyName}` : 'the user';
    this.conflicts.push({
      namespace: d.namespace,
      vmi: d.vmi,
      disk: d.disk,
      blockPull: rival.name,
      ...(rival.policyName !== undefined ? { policy: `${rival.policyKind}/${rival.policyName}` } : {}),
      message: `BlockPull ${rival.name} (${whose}) already claims this disk (phase ${rival.phase ?? 'not looked at yet'}); the older claim wins`,
    });
    // A disk the other claim has flattened is flat all the same.
    if (rival.phase === 'Completed') this.tally.completed++;
    else {
      this.tally.notCreated++;
      this.openConflicts++;
    }
  }

  /** The older claim wins: before any BlockPull exists, the older policy selecting the disk. */
  #olderPolicy(d: SelectedDisk): void {
    this.conflicts.push({
      namespace: d.namespace,
      vmi: d.vmi,
      disk: d.disk,
      policy: d.olderPolicy!,
      message: `the older policy ${d.olderPolicy} selects this disk too; the older claim wins`,
    });
    this.tally.notCreated++;
    this.openConflicts++;
  }

  #ours(d: SelectedDisk, pull: PullView, plans: readonly PullView[]): void {
    const spec = this.#f.spec;
    if (!spec.dryRun)
      for (const p of plans) this.remove.push({ namespace: p.namespace, name: p.name, uid: p.uid, why: 'PlanUsed' });
    countPull(pull, this.tally);
    if (isFinished(pull)) {
      this.#removeIfDue(pull, memoOf(d, pull.phase === 'Failed' ? 'Failed' : 'Completed'));
      return;
    }
    // Keep the spec in step with the policy (the BlockPull controller applies a new bandwidth to a running job).
    if (spec.bandwidth !== undefined && pull.bandwidth !== spec.bandwidth)
      this.#changeSpec(pull, { bandwidth: spec.bandwidth });
    if (pull.migrationPolicy !== spec.migrationPolicy)
      this.#changeSpec(pull, { migrationPolicy: spec.migrationPolicy });
    this.paced.push(pull);
  }

  /**
   * A disk that needs its chain looked at first: the plan (a look at a full pull: the chain's
   * length), then (unless dryRun) the pull. With base.keepBottom under dryRun, a second plan with
   * the pull's base measures the bytes of the images above the kept ones.
   */
  #planned(d: SelectedDisk, plans: readonly PullView[]): void {
    const spec = this.#f.spec;
    const chainPlan = plans.find((p) => p.basePosition === undefined);
    if (chainPlan === undefined) {
      // A plan is a look, not a pull: it takes no slot and holds no disk, so it is not paced.
      this.tally.notCreated++;
      this.plansToMake++;
      this.create.push(this.#newPull(d, 'plan', false));
      return;
    }
    const entry = { namespace: d.namespace, vmi: d.vmi, disk: d.disk };
    if (chainPlan.phase !== 'Planned' || chainPlan.chainLength === undefined) {
      this.#planUnfinished(chainPlan);
      this.plan.push({ ...entry, blockPull: chainPlan.name });
      return;
    }
    const length = chainPlan.chainLength;
    const keep = spec.base?.keepBottom;
    const qualifies = length >= spec.minChainLength && (keep === undefined || length > keep);
    const position = qualifies && keep !== undefined ? length - keep : undefined;
    const basePlan = position !== undefined ? plans.find((p) => p.basePosition === position) : undefined;
    // A plan of another base (keepBottom changed since) measures a pull that will not be made.
    for (const p of plans)
      if (p.basePosition !== undefined && p !== basePlan)
        this.remove.push({ namespace: p.namespace, name: p.name, uid: p.uid, why: 'PlanStale' });
    if (position !== undefined && spec.dryRun && basePlan?.phase !== 'Planned') {
      if (basePlan === undefined) {
        this.tally.pending++;
        this.plansToMake++;
        this.create.push(this.#newPull(d, 'plan', false, position));
      } else this.#planUnfinished(basePlan);
      this.plan.push({ ...entry, chainLength: length, pull: true, blockPull: (basePlan ?? chainPlan).name });
      return;
    }
    // With a kept base the first look's bytes are a full pull's: only the second look's count.
    const bytes = position === undefined ? chainPlan.planBytes : basePlan?.planBytes;
    this.plan.push({
      ...entry,
      chainLength: length,
      ...(bytes !== undefined ? { bytesToWrite: bytes } : {}),
      pull: qualifies,
      blockPull: (basePlan ?? chainPlan).name,
    });
    if (!qualifies) this.tally.skipped++;
    else if (spec.dryRun) this.tally.planned++;
    else this.toCreate.push({ d, ...(position !== undefined ? { position } : {}) });
  }

  /** A plan not written yet (pending), or one that failed (a failed disk, as a failed pull). */
  #planUnfinished(p: PullView): void {
    if (p.phase === 'Failed') this.tally.failed++;
    else {
      this.tally.pending++;
      this.plansToMake++;
    }
  }

  /**
   * Pacing: the budget goes to the pulls already made (oldest first), then to new ones; the
   * rest are paused (created paused). No budget while held (window, paused, dryRun).
   */
  pace(held: boolean): void {
    const budget = held || this.#f.spec.dryRun ? 0 : this.#f.spec.maxConcurrent;
    for (const p of [...this.paced].sort(byAge)) {
      if (this.active < budget) {
        this.active++;
        if (p.paused) this.#changeSpec(p, { paused: false });
      } else if (!p.paused) this.#changeSpec(p, { paused: true });
    }
    for (const { d, position } of this.toCreate) {
      const start = this.active < budget;
      if (start) this.active++;
      this.tally.notCreated++;
      this.create.push(this.#newPull(d, 'pull', !start, position));
    }
  }

  /** The policy's BlockPulls of disks no longer selected: their VMI gone (or restarted), or unselected. */
  sweep(): void {
    for (const p of this.#f.own) {
      if (this.used.has(p.uid) || p.deleting) continue;
      const uid = this.#f.vmiUids.get(`${p.namespace}/${p.vmi}`);
      const gone = uid === undefined || (p.vmiUid !== undefined && uid !== p.vmiUid);
      // Its finalizer aborts a job still running; a finished pull stays as history until its TTL.
      if (p.role === 'plan' || !isFinished(p))
        this.remove.push({ namespace: p.namespace, name: p.name, uid: p.uid, why: gone ? 'VMIGone' : 'NotSelected' });
      else this.#removeIfDue(p);
    }
  }
}

export function decidePolicy(f: PolicyFacts): PolicyDecision {
  const pass = new Pass(f);
  const hold = holdReason(f);
  for (const d of f.selected) pass.disk(d);
  pass.pace(hold !== undefined);
  pass.sweep();
  const status = makeStatus(f, {
    tally: pass.tally,
    active: pass.active,
    openConflicts: pass.openConflicts,
    plansToMake: pass.plansToMake,
    conflicts: pass.conflicts,
    plan: pass.plan,
    finished: [...pass.keepFinished].sort(),
    hold,
    pulls: f.own.filter((p) => p.role !== 'plan' && pass.used.has(p.uid)),
  });
  let requeueAt = pass.requeueAt;
  if ((f.window.kind === 'open' || f.window.kind === 'closed') && f.window.nextChange !== undefined)
    requeueAt = Math.min(requeueAt, f.window.nextChange.getTime());
  return {
    create: pass.create,
    change: [...pass.change.values()],
    remove: pass.remove,
    status,
    requeueAfterMs: Number.isFinite(requeueAt) ? Math.max(0, requeueAt - f.now.getTime()) : null,
  };
}

function countPull(p: PullView, t: Tally): void {
  switch (p.phase) {
    case 'Running':
      t.running++;
      return;
    case 'Paused':
      t.paused++;
      return;
    case 'Completed':
      t.completed++;
      return;
    case 'Failed':
      t.failed++;
      return;
    case 'Planned':
      t.planned++;
      return;
    case 'Pending':
    case undefined:
      t.pending++;
      return;
    default:
      assertNever(p.phase);
  }
}

interface StatusInput {
  readonly tally: Tally;
  readonly active: number;
  /** Conflicts whose disk is not flat (the other claim has not completed). */
  readonly openConflicts: number;
  /** dryRun looks still to make or to finish. */
  readonly plansToMake: number;
  readonly conflicts: readonly PolicyConflict[];
  readonly plan: readonly PolicyPlanEntry[];
  readonly finished: readonly string[];
  readonly hold: { reason: PolicyReason; message: string } | undefined;
  readonly pulls: readonly PullView[];
}

function makeStatus(f: PolicyFacts, s: StatusInput): PolicyStatus {
  const t = s.tally;
  let done = 0;
  let total = 0;
  let rate = 0;
  for (const p of s.pulls) {
    if (p.totalBytes === undefined) continue;
    total += p.totalBytes;
    done += p.phase === 'Completed' ? p.totalBytes : Math.min(p.currentBytes ?? 0, p.totalBytes);
    if (p.phase === 'Running') rate += p.bytesPerSecond ?? 0;
  }
  const selected = f.selected.length;
  const unfinished = selected - t.completed - t.skipped - t.planned;
  const stuck = t.failed + s.openConflicts;
  const { ready, reconciling, stalled, reason, message } = ((): {
    ready: boolean;
    reconciling: boolean;
    stalled: boolean;
    reason: PolicyReason;
    message: string;
  } => {
    const summary = `${selected} disk(s) selected: ${t.completed} completed, ${t.running} running, ${t.paused} paused, ${t.pending} pending, ${t.failed} failed, ${t.notCreated} without a BlockPull, ${s.conflicts.length} in conflict`;
    if (s.hold?.reason === 'InvalidWindow' || s.hold?.reason === 'WindowNeverOpens')
      return { ready: false, reconciling: false, stalled: true, reason: s.hold.reason, message: s.hold.message };
    if (selected === 0)
      return {
        ready: true,
        reconciling: false,
        stalled: false,
        reason: 'NothingSelected',
        message: 'the selectors match no VMI disk (yet): VMIs that match later are picked up',
      };
    if (f.spec.dryRun) {
      const planning = s.plansToMake;
      return planning > 0
        ? {
            ready: false,
            reconciling: true,
            stalled: false,
            reason: 'Planning',
            message: `dryRun: ${planning} plan(s) to make; ${summary}`,
          }
        : {
            ready: true,
            reconciling: false,
            stalled: false,
            reason: 'Planned',
            message: `dryRun: ${s.plan.filter((p) => p.pull).length} disk(s) would be pulled; ${summary}`,
          };
    }
    if (s.hold?.reason === 'Paused')
      return {
        ready: false,
        reconciling: false,
        stalled: false,
        reason: 'Paused',
        message: `${s.hold.message}; ${summary}`,
      };
    if (unfinished <= 0)
      return { ready: true, reconciling: false, stalled: false, reason: 'AllFlat', message: summary };
    if (stuck >= unfinished)
      return {
        ready: false,
        reconciling: false,
        stalled: true,
        reason: t.failed > 0 ? 'PullsFailed' : 'Conflict',
        message: summary,
      };
    if (s.hold?.reason === 'OutsideWindow')
      return {
        ready: false,
        reconciling: true,
        stalled: false,
        reason: 'OutsideWindow',
        message: `${s.hold.message}; ${summary}`,
      };
    return { ready: false, reconciling: true, stalled: false, reason: 'Pulling', message: summary };
  })();
  let conditions: Condition[] | undefined = f.status?.conditions;
  const set = (type: 'Ready' | 'Reconciling' | 'Stalled', on: boolean): void => {
    conditions = setCondition(
      conditions,
      { type, status: on ? 'True' : 'False', reason, message },
      f.generation,
      f.now,
    );
  };
  set('Ready', ready);
  set('Reconciling', reconciling);
  set('Stalled', stalled);
  return {
    observedGeneration: f.generation,
    conditions,
    selectedDisks: selected,
    counts: { ...t },
    active: s.active,
    bytesDone: done,
    bytesTotal: total,
    ...(rate > 0 ? { etaSeconds: Math.ceil((total - done) / rate) } : {}),
    ...(f.window.kind === 'open' || f.window.kind === 'closed'
      ? {
          window: {
            open: f.window.kind === 'open',
            ...(f.window.nextChange ? { nextChange: timestamp(f.window.nextChange) } : {}),
          },
        }
      : {}),
    conflicts: s.conflicts.slice(0, POLICY_STATUS_LIMITS.conflicts),
    conflictCount: s.conflicts.length,
    ...(s.plan.length > 0 ? { plan: s.plan.slice(0, POLICY_STATUS_LIMITS.plan) } : {}),
    ...(s.finished.length > 0 ? { finished: s.finished.slice(0, POLICY_STATUS_LIMITS.finished) } : {}),
    message,
  };
}
