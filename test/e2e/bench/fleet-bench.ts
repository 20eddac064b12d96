/**
 * `npm run bench:fleet [-- --vmis 1000] [--running 8] [--pulls 24] [--budget 16] [--bandwidth 2Mi]`:
 * a BlockPullPolicy over a fleet, figures printed, nothing timed asserted.
 *
 * The control plane and the operator compiled as in the image (dist/, the ENTRYPOINT's node flags),
 * then two parts:
 * - (a) fleet: `--vmis` VMIs selected by one policy, a realistic mix: `--running` of them Running on
 *   launcher stand-ins (test/e2e/launcher: libvirt, QEMU, real qcow2 chains), the rest not running
 *   yet (phase Scheduling, no launcher pod). From the policy's creation: every BlockPull exists and
 *   has its first status; the policy's status settles; operator RSS and CPU; API requests per
 *   selected disk (kube-apiserver's apiserver_request_total, the bench's own subtracted); the
 *   policy's memory per disk (its caches' form of the disk's VMI and BlockPull, measured in this
 *   process after a full GC; and the operator's RSS and heap growth, both controllers together).
 *   The policy is then deleted, and the time until its BlockPulls are gone reported.
 * - (b) pacing: `--pulls` stand-ins with real chains, pulls throttled to `--bandwidth` so that
 *   they last, one policy with maxConcurrent `--budget`: the most running at once (from a watch;
 *   libvirt's own block jobs counted once at the peak), and for each slot freed the gap between one
 *   pull's Completed status and the next pull's Running status. The operator's global limits are
 *   raised above the budget, so the policy's budget is what binds.
 *
 * The machine's load average is printed with the figures (a shared 2-core machine).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CustomObjectsApi, Watch, type KubernetesObject } from '@kubernetes/client-node';
import { z } from 'zod';
import { VirshDriver } from '../../../operator/src/hypervisor/virsh-driver.ts';
import { createKubeClients, loadKubeConfig, mergePatchCustomObject } from '../../../operator/src/kube/client.ts';
import { slimPullForPolicy, slimVmiForPolicy } from '../../../operator/src/policy/cache.ts';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../cluster/crds.ts';
import { startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { startLauncher, type Launcher } from '../launcher/launcher.ts';
import {
  buildOperator,
  createFakeVmi,
  ensureNamespace,
  imageNodeArgs,
  operatorServiceAccount,
  startOperator,
  vmiManifest,
  type OperatorProcess,
} from '../operator-fixture/fixture.ts';
import {
  addCount,
  diffCounts,
  formatCounts,
  operatorRequests,
  parseRequestTotals,
  total,
  type RequestCounts,
} from '../support/apiserver-metrics.ts';
import { memoryLine, operatorTotals } from '../support/operator-metrics.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { cleanupOnSignals } from '../support/process.ts';
import { pool } from '../support/pool.ts';
import { cpuSeconds, loadAverages, RssSampler, statusMiB } from '../support/procfs.ts';
import { sleep } from '../support/wait.ts';

const { values } = parseArgs({
  options: {
    vmis: { type: 'string', default: '1000' },
    running: { type: 'string', default: '8' },
    pulls: { type: 'string', default: '24' },
    budget: { type: 'string', default: '16' },
    bandwidth: { type: 'string', default: '2Mi' },
    'pull-mib': { type: 'string', default: '40' },
  },
});
const args = z
  .object({
    vmis: z.coerce.number().int().min(10).max(10_000),
    running: z.coerce.number().int().min(0).max(32),
    pulls: z.coerce.number().int().min(0).max(64),
    budget: z.coerce.number().int().min(1).max(64),
    bandwidth: z.string().regex(/^\d+(Ki|Mi|Gi)?$/),
    pullMiB: z.coerce.number().int().min(4).max(1024),
  })
  .refine((a) => a.running <= a.vmis, { message: '--running must not exceed --vmis' })
  .parse({ ...values, pullMiB: values['pull-mib'] });

const FLEET_NS = 'fleet';
const PACE_NS = 'fleet-pace';
const OP_NS = 'bp-fleet-system';
const BP = { group: 'blockpull.dev', version: 'v1alpha1', plural: 'blockpulls' } as const;
const POLICY = { group: 'blockpull.dev', version: 'v1alpha1', plural: 'blockpullpolicies' } as const;
const VMI = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances' } as const;
/** What the operator watches (its WATCH requests are its own, not the API server's internal ones). */
const WATCHED = [
  'blockpulls',
  'blockpullpolicies',
  'clusterblockpullpolicies',
  'pods',
  'virtualmachineinstances',
  'virtualmachineinstancemigrations',
  'namespaces',
];
const operatorsOwn = operatorRequests(WATCHED);

const say = (m: string): void => void process.stdout.write(`${m}\n`);
const fmt = (x: number, d = 1): string => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const load = loadAverages;
const quantile = (xs: readonly number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

let cp: ControlPlane | undefined;
let operator: OperatorProcess | undefined;
const launchers: Launcher[] = [];
let tmp: string | undefined;

async function cleanup(): Promise<void> {
  await operator?.stop().catch(() => undefined);
  operator = undefined;
  await pool(launchers.splice(0), 8, (l) => l.stop().catch(() => undefined));
  await cp?.stop().catch(() => undefined);
  cp = undefined;
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
  tmp = undefined;
}
cleanupOnSignals(cleanup);

/** The bench's own API requests in a measured window, subtracted from the API server's counts. */
const own: RequestCounts = new Map();
const count = (key: string, n = 1): void => addCount(own, key, n);

interface Bp {
  metadata: { name: string; namespace: string; uid: string };
  spec: { paused?: boolean };
  status?: { phase?: string };
}

/** What the watch saw of each BlockPull, when (performance.now() ms). */
interface Seen {
  namespace: string;
  name: string;
  firstSeen: number;
  firstStatus?: number;
  createdPaused: boolean;
  unpausedAt?: number;
  runningAt?: number;
  completedAt?: number;
  phase?: string;
  paused: boolean;
  deleted?: number;
}

/**
 * Every BlockPull of the cluster through one watch, opened before anything is created (so no
 * change is missed) and re-opened from the last resourceVersion when the API server ends it.
 * `onChange` runs after each event, with the table.
 */
class PullWatch {
  readonly seen = new Map<string, Seen>();
  #rv = '0';
  #abort: AbortController | undefined;
  #stopped = false;
  onChange: (s: Seen) => void = () => undefined;

  readonly #watch: Watch;

  constructor(watch: Watch) {
    this.#watch = watch;
  }

  async start(rv: string): Promise<void> {
    this.#rv = rv;
    await this.#open();
  }

  async #open(): Promise<void> {
    this.#abort = await this.#watch.watch(
      `/apis/${BP.group}/${BP.version}/${BP.plural}`,
      { resourceVersion: this.#rv, allowWatchBookmarks: true },
      (type: string, obj: unknown) => this.#event(type, obj as Bp),
      () => {
        if (!this.#stopped) void sleep(200).then(() => this.#open());
      },
    );
  }

  #event(type: string, b: Bp): void {
    const rv = (b as { metadata?: { resourceVersion?: string } }).metadata?.resourceVersion;
    if (rv !== undefined) this.#rv = rv;
    if (type === 'BOOKMARK' || b.metadata?.uid === undefined) return;
    const now = performance.now();
    const paused = b.spec?.paused === true;
    let s = this.seen.get(b.metadata.uid);
    if (s === undefined) {
      s = { namespace: b.metadata.namespace, name: b.metadata.name, firstSeen: now, createdPaused: paused, paused };
      this.seen.set(b.metadata.uid, s);
    }
    if (type === 'DELETED') s.deleted ??= now;
    const phase = b.status?.phase;
    if (phase !== undefined) s.firstStatus ??= now;
    if (s.paused && !paused) s.unpausedAt ??= now;
    s.paused = paused;
    s.phase = phase;
    if (phase === 'Running') s.runningAt ??= now;
    if (phase === 'Completed') s.completedAt ??= now;
    this.onChange(s);
  }

  in(ns: string): Seen[] {
    return [...this.seen.values()].filter((s) => s.namespace === ns);
  }

  stop(): void {
    this.#stopped = true;
    this.#abort?.abort();
  }
}

async function main(): Promise<void> {
  const N = args.vmis;
  say(
    `bench:fleet: (a) ${N} VMIs selected by one policy (${args.running} running on stand-ins, ${N - args.running} not running yet); (b) ${args.pulls} pulls at ${args.bandwidth}/s, maxConcurrent ${args.budget}; load ${load()}`,
  );
  const nodeArgs = imageNodeArgs();
  say(`bench:fleet: npm run build (the operator as in the image: node ${[...nodeArgs, 'dist/...'].join(' ')})`);
  const main = await buildOperator();
  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-fleet-'));
  const registryDir = path.join(tmp, 'launchers');
  cp = await startControlPlane({ stateDir: path.join(REPO_ROOT, '.cache', 'fleet-cluster') });
  await installCrds(cp, [...(await projectCrdFiles()), VMI_CRD_FILE]);
  await ensureNamespace(cp, FLEET_NS);
  await ensureNamespace(cp, PACE_NS);
  const sa = await operatorServiceAccount(cp, OP_NS);
  const kc = loadKubeConfig(cp.kubeconfigPath);
  const clients = createKubeClients(kc);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const apiMetrics = async (): Promise<RequestCounts> =>
    parseRequestTotals(await cp!.kubectl(['get', '--raw', '/metrics'], { timeoutMs: 60_000 }));
  const apiserverPid = cp.processes.find((p) => p.name === 'kube-apiserver')?.pid;

  // --- (a) the fleet's VMIs -----------------------------------------------------------------------
  const label = { fleet: 'bench' };
  const notRunning = Array.from({ length: N - args.running }, (_, i) => `vm-${String(i).padStart(5, '0')}`);
  const tPrep = performance.now();
  await pool(notRunning, 32, async (name) => {
    const body = vmiManifest({ namespace: FLEET_NS, vmiName: name, disks: ['rootdisk'] });
    (body.metadata as Record<string, unknown>).labels = label;
    // The VMI CRD here has no status subresource: the status is part of the object.
    await custom.createNamespacedCustomObject({
      ...VMI,
      namespace: FLEET_NS,
      body: { ...body, status: { phase: 'Scheduling' } },
    });
  });
  const startStandIns = async (
    ns: string,
    names: readonly string[],
    disk: { layers: number; sizeMiB: number; allocatedMiB: number },
  ): Promise<Launcher[]> => {
    const out: Launcher[] = [];
    await pool(names, 4, async (vmiName) => {
      const l = await startLauncher({ namespace: ns, vmiName, registryDir, disks: [{ name: 'rootdisk', ...disk }] });
      launchers.push(l);
      out.push(l);
      await createFakeVmi(cp!, { namespace: ns, vmiName, launcher: l, disks: ['rootdisk'] });
      await mergePatchCustomObject(clients, VMI, ns, vmiName, { metadata: { labels: label } });
    });
    return out;
  };
  const running = Array.from({ length: args.running }, (_, i) => `run-${String(i).padStart(3, '0')}`);
  await startStandIns(FLEET_NS, running, { layers: 2, sizeMiB: 16, allocatedMiB: 8 });
  say(`bench:fleet: ${N} VMIs made in ${fmt((performance.now() - tPrep) / 1000)} s; load ${load()}`);

  const limit = String(Math.max(args.budget, args.running) + 16);
  operator = await startOperator({
    kubeconfig: sa,
    registryDir,
    name: 'fleet-operator',
    main,
    nodeArgs,
    env: {
      BLOCKPULL_POD_NAMESPACE: OP_NS,
      BLOCKPULL_LOG_LEVEL: 'info',
      BLOCKPULL_LEASE_DURATION_MS: '15000',
      BLOCKPULL_RENEW_DEADLINE_MS: '10000',
      BLOCKPULL_RETRY_PERIOD_MS: '2000',
      // The policy's budget binds, not the operator's global or per-node limits.
      BLOCKPULL_MAX_CONCURRENT_PULLS: limit,
      BLOCKPULL_MAX_PULLS_PER_NODE: limit,
    },
  });
  const pid = operator.child.pid;
  const sampler = new RssSampler(pid);
  const watch = new PullWatch(new Watch(kc));
  const rv0 = (
    (await custom.listClusterCustomObject({ ...BP, limit: 1 })) as { metadata?: { resourceVersion?: string } }
  ).metadata?.resourceVersion;
  await watch.start(rv0 ?? '0');
  await sleep(3_000); // the operator's start settles (its lists and first looks)

  const policyBody = (ns: string, name: string, spec: Record<string, unknown>): Record<string, unknown> => ({
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPullPolicy',
    metadata: { name, namespace: ns },
    spec,
  });
  const getPolicy = async (ns: string, name: string): Promise<{ status?: Record<string, unknown> }> => {
    count('GET blockpullpolicies');
    return (await custom.getNamespacedCustomObject({ ...POLICY, namespace: ns, name })) as {
      status?: Record<string, unknown>;
    };
  };

  const loadA0 = load();
  const mem0 = (await operatorTotals(operator.metricsPort(), 'policy')).memory;
  const rss0 = statusMiB(pid, 'VmRSS');
  const m0 = await apiMetrics();
  const cpu0 = cpuSeconds(pid, true);
  const apiCpu0 = cpuSeconds(apiserverPid);
  own.clear();
  const t0 = performance.now();
  await custom.createNamespacedCustomObject({
    ...POLICY,
    namespace: FLEET_NS,
    body: policyBody(FLEET_NS, 'fleet', { vmiSelector: { matchLabels: label }, maxConcurrent: Math.min(N, 10_000) }),
  });
  count('POST blockpullpolicies');
  // Every BlockPull exists and has its first status.
  let tAllExist = Number.NaN;
  let tAllStatus = Number.NaN;
  for (;;) {
    const mine = watch.in(FLEET_NS);
    if (Number.isNaN(tAllExist) && mine.length >= N) tAllExist = Math.max(...mine.map((s) => s.firstSeen)) - t0;
    const withStatus = mine.filter((s) => s.firstStatus !== undefined);
    if (withStatus.length >= N) {
      tAllStatus = Math.max(...withStatus.map((s) => s.firstStatus!)) - t0;
      break;
    }
    if (performance.now() - t0 > 10 * 60_000) break;
    await sleep(50);
  }
  const cpuFirst = cpuSeconds(pid, true) - cpu0;
  // The policy's status settles: every disk counted with its BlockPull's phase, the running ones
  // Completed, and no change for 5 s (the condition times aside).
  let lastJson = '';
  let lastChange = performance.now();
  let settledStatus: Record<string, unknown> | undefined;
  for (;;) {
    const st = (await getPolicy(FLEET_NS, 'fleet')).status ?? {};
    const json = JSON.stringify(st, (k, v: unknown) => (k === 'lastTransitionTime' ? undefined : v));
    if (json !== lastJson) {
      lastJson = json;
      lastChange = performance.now();
    }
    const c = (st.counts ?? {}) as Record<string, number | undefined>;
    const counted = (c.pending ?? 0) + (c.paused ?? 0) + (c.completed ?? 0) + (c.failed ?? 0);
    const complete = st.selectedDisks === N && (c.notCreated ?? 0) === 0 && (c.running ?? 0) === 0 && counted === N;
    if (complete && performance.now() - lastChange >= 5_000) {
      settledStatus = st;
      break;
    }
    if (performance.now() - t0 > 15 * 60_000) break;
    await sleep(250);
  }
  const tSettled = lastChange - t0;
  const tSettleSeen = performance.now() - t0;
  const m1 = await apiMetrics();
  const cpuSettle = cpuSeconds(pid, true) - cpu0;
  const apiCpuSettle = cpuSeconds(apiserverPid) - apiCpu0;
  const settle = diffCounts(m0, m1, own);
  own.clear();
  const totals1 = await operatorTotals(operator.metricsPort(), 'policy');
  const rss1 = statusMiB(pid, 'VmRSS');
  const hwm1 = statusMiB(pid, 'VmHWM');
  const loadA1 = load();

  // The policy's caches per disk: the disk's VMI and BlockPull in the form the policy controller
  // keeps them (cache.ts), from the API server's own objects; live heap after a full GC.
  const gc = (globalThis as { gc?: () => void }).gc;
  let cacheBytesPerDisk = Number.NaN;
  if (gc !== undefined) {
    const items = async (ref: typeof BP | typeof VMI): Promise<unknown[]> =>
      ((await custom.listNamespacedCustomObject({ ...ref, namespace: FLEET_NS })) as { items: unknown[] }).items;
    const texts = [
      ...(await items(BP)).map((o) => ['bp', JSON.stringify(o)] as const),
      ...(await items(VMI)).map((o) => ['vmi', JSON.stringify(o)] as const),
    ];
    gc();
    const before = process.memoryUsage().heapUsed;
    const kept = texts.map(([kind, t]) => {
      const o = JSON.parse(t) as KubernetesObject;
      return kind === 'bp' ? slimPullForPolicy(o) : slimVmiForPolicy(o);
    });
    gc();
    cacheBytesPerDisk = (process.memoryUsage().heapUsed - before) / N;
    if (kept.length === 0) say('(no objects listed)');
  }
  const statusBytes = JSON.stringify(settledStatus ?? {}).length;

  // Deleting the policy deletes its BlockPulls (the policy controller, there is no garbage collector here).
  const tDel = performance.now();
  await custom.deleteNamespacedCustomObject({ ...POLICY, namespace: FLEET_NS, name: 'fleet' });
  let tGone = Number.NaN;
  for (;;) {
    const left = watch.in(FLEET_NS).filter((s) => s.deleted === undefined).length;
    if (left === 0) {
      tGone = performance.now() - tDel;
      break;
    }
    if (performance.now() - tDel > 5 * 60_000) break;
    await sleep(250);
  }

  // --- (b) pacing ---------------------------------------------------------------------------------
  let pace: PaceResult | undefined;
  if (args.pulls > 0) pace = await pacing(watch, custom, startStandIns, policyBody);
  const peakRss = Math.max(sampler.peak, statusMiB(pid, 'VmHWM'));
  sampler.stop();
  watch.stop();

  // --- report -------------------------------------------------------------------------------------
  const settleOperator = total(settle, operatorsOwn);
  say('');
  say(
    `RESULT bench:fleet (a) ${N} VMIs, one policy (${args.running} running on stand-ins, ${N - args.running} not running); load before ${loadA0}, after ${loadA1}`,
  );
  say('| figure | measured | goal |');
  say('|---|---|---|');
  say(
    `| policy created -> every BlockPull exists / each has its first status | ${fmt(tAllExist / 1000)} s / ${fmt(tAllStatus / 1000)} s (${watch.in(FLEET_NS).filter((s) => s.firstStatus !== undefined).length}/${N} with a status) | < 30 s |`,
  );
  say(
    `| policy created -> its status settles | ${fmt(tSettled / 1000)} s (${settledStatus !== undefined ? 'settled' : 'NOT settled in 15 min'}) | settles |`,
  );
  say(
    `| operator CPU | ${fmt(cpuFirst, 1)} s until every first status; ${fmt(cpuSettle, 1)} s until settled (${fmt((100 * cpuSettle) / (tSettleSeen / 1000), 0)} % of a core over the ${fmt(tSettleSeen / 1000, 0)} s); kube-apiserver ${fmt(apiCpuSettle, 1)} s | |`,
  );
  say(
    `| operator RSS | before the policy ${fmt(rss0, 0)} MiB, settled ${fmt(rss1, 0)} MiB, peak ${fmt(Math.max(hwm1, sampler.peak), 0)} MiB | |`,
  );
  say(
    `| API requests per selected disk | ${fmt(settleOperator / N, 2)} (${settleOperator} until settled, without lease renewals and the API server's own; with them ${fmt(total(settle) / N, 2)}) | |`,
  );
  say(
    `| policy memory per disk | its caches' form of the disk's VMI and BlockPull: ${fmt(cacheBytesPerDisk, 0)} bytes (measured here after a full GC); the operator's growth (both controllers, no GC forced): RSS ${fmt(((rss1 - rss0) * 1048576) / N, 0)} bytes, heap used ${fmt(((totals1.memory['heapUsed'] ?? 0) - (mem0['heapUsed'] ?? 0)) / N, 0)} bytes; the policy's status ${statusBytes} bytes in all | |`,
  );
  say(`| policy deleted -> its ${N} BlockPulls gone | ${fmt(tGone / 1000)} s | |`);
  say('');
  say(`policy status settled: ${JSON.stringify({ ...settledStatus, conditions: undefined, plan: undefined })}`);
  say(`operator memory (its /metrics) before the policy: ${memoryLine(mem0)}; settled: ${memoryLine(totals1.memory)}`);
  say(
    `policy work queue: mean wait ${fmt(totals1.queueWaitSum / Math.max(1, totals1.queueWaitCount), 3)} s over ${totals1.queueWaitCount} items; Events dropped ${totals1.eventsDropped}`,
  );
  say("API requests from the policy creation until settled (apiserver_request_total, the bench's own subtracted):");
  for (const l of formatCounts(settle)) say(`  ${l}`);
  if (pace !== undefined) {
    say('');
    say(
      `RESULT bench:fleet (b) pacing: ${args.pulls} pulls of ~${args.pullMiB} MiB at ${args.bandwidth}/s, maxConcurrent ${args.budget}; load before ${pace.loadBefore}, after ${pace.loadAfter}`,
    );
    say('| figure | measured | goal |');
    say('|---|---|---|');
    say(
      `| most Running at once (BlockPull phase) / most active (not paused, not finished) | ${pace.maxRunning} / ${pace.maxActive} (budget ${args.budget}: ${pace.maxActive <= args.budget && pace.maxRunning <= args.budget ? 'never exceeded' : 'EXCEEDED'}); block jobs libvirt had at the peak: ${pace.jobsAtPeak} | <= budget, >= 16 running |`,
    );
    say(
      `| one pull Completed -> the next Running | median ${fmt(pace.gaps.median, 0)} ms, p90 ${fmt(pace.gaps.p90, 0)} ms, max ${fmt(pace.gaps.max, 0)} ms over ${pace.gaps.n} freed slots (the policy's unpause: median ${fmt(pace.unpause.median, 0)} ms, max ${fmt(pace.unpause.max, 0)} ms) | < 1 s |`,
    );
    say(`| all ${args.pulls} Completed | ${fmt(pace.allDoneS)} s after the policy's creation | |`);
  }
  say('');
  say(`operator peak RSS over the run ${fmt(peakRss, 0)} MiB; load at the end ${load()}`);
  if (pace !== undefined && (pace.maxActive > args.budget || pace.maxRunning > args.budget)) {
    say('bench:fleet: the budget was exceeded');
    process.exitCode = 1;
  }
}

interface Spread {
  n: number;
  median: number;
  p90: number;
  max: number;
}
const spread = (xs: readonly number[]): Spread => ({
  n: xs.length,
  median: quantile(xs, 0.5),
  p90: quantile(xs, 0.9),
  max: xs.length === 0 ? Number.NaN : Math.max(...xs),
});

interface PaceResult {
  maxRunning: number;
  maxActive: number;
  jobsAtPeak: string;
  gaps: Spread;
  unpause: Spread;
  allDoneS: number;
  loadBefore: string;
  loadAfter: string;
}

async function pacing(
  watch: PullWatch,
  custom: CustomObjectsApi,
  startStandIns: (
    ns: string,
    names: readonly string[],
    disk: { layers: number; sizeMiB: number; allocatedMiB: number },
  ) => Promise<Launcher[]>,
  policyBody: (ns: string, name: string, spec: Record<string, unknown>) => Record<string, unknown>,
): Promise<PaceResult> {
  const names = Array.from({ length: args.pulls }, (_, i) => `pace-${String(i).padStart(3, '0')}`);
  const tPrep = performance.now();
  // A full pull copies what the backing image holds and the top does not (recipe.ts): ~pullMiB.
  const standIns = await startStandIns(PACE_NS, names, {
    layers: 2,
    sizeMiB: args.pullMiB + 8,
    allocatedMiB: args.pullMiB + 1,
  });
  say(`bench:fleet: ${args.pulls} stand-ins up in ${fmt((performance.now() - tPrep) / 1000)} s; load ${load()}`);
  const active = (s: Seen): boolean =>
    !s.paused && s.phase !== 'Completed' && s.phase !== 'Failed' && s.deleted === undefined;
  let maxRunning = 0;
  let maxActive = 0;
  let peakSeen = false;
  let jobsAtPeak = 'not counted';
  let peakCheck: Promise<void> | undefined;
  watch.onChange = (s) => {
    if (s.namespace !== PACE_NS) return;
    const mine = watch.in(PACE_NS).filter((x) => x.deleted === undefined);
    const r = mine.filter((x) => x.phase === 'Running').length;
    maxRunning = Math.max(maxRunning, r);
    maxActive = Math.max(maxActive, mine.filter(active).length);
    if (!peakSeen && r >= Math.min(args.budget, args.pulls)) {
      peakSeen = true;
      // Once, at the peak: the block jobs libvirt itself has (a virsh per stand-in, so not in a loop).
      peakCheck = (async () => {
        const jobs = await Promise.all(
          standIns.map(async (l) =>
            (await new VirshDriver(l.runner, l.uri).getJob(l.domain, l.disks[0]!.target)) !== null ? 1 : 0,
          ),
        );
        jobsAtPeak = `${jobs.reduce<number>((a, b) => a + b, 0)} of ${standIns.length} stand-ins`;
      })().catch((err: unknown) => void (jobsAtPeak = `not counted: ${String(err)}`));
    }
  };
  const loadBefore = load();
  const t0 = performance.now();
  await custom.createNamespacedCustomObject({
    ...POLICY,
    namespace: PACE_NS,
    body: policyBody(PACE_NS, 'pace', {
      vmiSelector: { matchLabels: { fleet: 'bench' } },
      maxConcurrent: args.budget,
      bandwidth: args.bandwidth,
    }),
  });
  for (;;) {
    const mine = watch.in(PACE_NS);
    if (mine.length >= args.pulls && mine.every((s) => s.phase === 'Completed' || s.phase === 'Failed')) break;
    if (performance.now() - t0 > 30 * 60_000) break;
    await sleep(200);
  }
  const allDoneS = (performance.now() - t0) / 1000;
  await peakCheck;
  const mine = watch.in(PACE_NS);
  // Each completion frees one slot, and the policy unpauses the oldest paused pull: pair the
  // k-th completion with the k-th start of a pull that was created paused.
  const completions = mine.flatMap((s) => (s.completedAt !== undefined ? [s.completedAt] : [])).sort((a, b) => a - b);
  const later = mine
    .filter((s) => s.createdPaused && s.runningAt !== undefined)
    .sort((a, b) => a.runningAt! - b.runningAt!);
  const gaps: number[] = [];
  const unpause: number[] = [];
  for (const [k, s] of later.entries()) {
    const freed = completions[k];
    if (freed === undefined) break;
    gaps.push(s.runningAt! - freed);
    if (s.unpausedAt !== undefined) unpause.push(s.unpausedAt - freed);
  }
  const failed = mine.filter((s) => s.phase === 'Failed').length;
  if (failed > 0) say(`bench:fleet: ${failed} pacing pull(s) Failed`);
  return {
    maxRunning,
    maxActive,
    jobsAtPeak,
    gaps: spread(gaps),
    unpause: spread(unpause),
    allDoneS,
    loadBefore,
    loadAfter: load(),
  };
}

main()
  .then(
    () => cleanup(),
    async (err: unknown) => {
      process.stderr.write(`bench:fleet failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      if (operator !== undefined) process.stderr.write(`operator log: ${operator.logPath}\n`);
      await cleanup();
      process.exitCode = 1;
    },
  )
  .finally(() => process.exit());
