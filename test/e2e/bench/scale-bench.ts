/**
 * `npm run bench:scale [-- --count 1000|10000] [--running 4]`: fleet scale.
 *
 * Starts the control plane and the operator compiled as in the image (`npm run build`, then
 * dist/operator/src/main.js), and a mix of BlockPulls:
 * - 10 % already Completed (created with a Completed status before the operator starts);
 * - 20 % whose VMI exists but is not Running (phase Scheduling, no launcher pod);
 * - the rest waiting for a VMI that does not exist;
 * - `--running` (default 4) really pulling on launcher stand-ins (test/e2e/launcher).
 *
 * Prints each figure of the table: created -> all have their waiting status; operator
 * RSS (peak: /proc VmHWM, and sampled) and CPU seconds (/proc stat); API requests per BlockPull
 * to settle and idle, by verb and resource, from kube-apiserver's own apiserver_request_total
 * (the bench's own requests are counted and subtracted); a waiting BlockPull's VMI appears ->
 * Running; restart with everything existing -> all looked at, and the status writes it made.
 */
import { readdirSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CustomObjectsApi, Watch } from '@kubernetes/client-node';
import { loadKubeConfig } from '../../../operator/src/kube/client.ts';
import { z } from 'zod';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../cluster/crds.ts';
import { startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { cleanupOnSignals } from '../support/process.ts';
import { startLauncher, type Launcher } from '../launcher/launcher.ts';
import {
  buildOperator,
  imageNodeArgs,
  createFakeVmi,
  ensureNamespace,
  operatorServiceAccount,
  startOperator,
  type BlockPullView,
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
import { pool } from '../support/pool.ts';
import { cpuSeconds, loadAverages, RssSampler, statusMiB } from '../support/procfs.ts';
import { sleep } from '../support/wait.ts';

const Args = z.object({
  count: z.number().int().min(10).max(20_000),
  running: z.number().int().min(0).max(16),
  idleSeconds: z.number().int().min(5).max(600),
  createWidth: z.number().int().min(1).max(512),
  heapSnapshot: z.boolean(),
  /** node flags for the operator; default: those of the image's ENTRYPOINT (Dockerfile). */
  nodeArgs: z.array(z.string().regex(/^--[a-z0-9-]+(=[\w.-]+)?$/)).optional(),
});

function parseArgs(argv: readonly string[]): z.infer<typeof Args> {
  const raw: Record<string, number | boolean | string[]> = {
    count: 1000,
    running: 4,
    idleSeconds: 30,
    createWidth: 64,
    heapSnapshot: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = Number(argv[i + 1]);
    if (a === '--heap-snapshot') {
      raw['heapSnapshot'] = true;
      continue;
    }
    if (a === '--node-args') raw['nodeArgs'] = (argv[i + 1] ?? '').split(/\s+/).filter((x) => x !== '');
    else if (a === '--count') raw['count'] = v;
    else if (a === '--running') raw['running'] = v;
    else if (a === '--idle-seconds') raw['idleSeconds'] = v;
    else if (a === '--create-width') raw['createWidth'] = v;
    else
      throw new Error(
        `unknown argument ${a} (use --count N, --running N, --idle-seconds N, --create-width N, --heap-snapshot, --node-args '--flag ...')`,
      );
    i++;
  }
  return Args.parse(raw);
}

const NS = 'scale';
const OP_NS = 'bp-scale-system';
const GROUP = { group: 'blockpull.dev', version: 'v1alpha1', plural: 'blockpulls' };
const VMI = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances' };
const say = (m: string): void => void process.stdout.write(`${m}\n`);

let cp: ControlPlane | undefined;
let operator: OperatorProcess | undefined;
const launchers: Launcher[] = [];
let tmp: string | undefined;

async function cleanup(): Promise<void> {
  await operator?.stop().catch(() => undefined);
  operator = undefined;
  for (const l of launchers.splice(0)) await l.stop().catch(() => undefined);
  await cp?.stop().catch(() => undefined);
  cp = undefined;
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
  tmp = undefined;
}
cleanupOnSignals(cleanup);

/** The bench's own API requests, subtracted from the API server's counts. */
const own: RequestCounts = new Map();
const count = (key: string, n = 1): void => addCount(own, key, n);

const fmt = (x: number, d = 1): string => x.toFixed(d);

/** The operator's own requests (no lease renewals, nothing of the API server's own). */
const operatorsOwn = operatorRequests(['blockpulls', 'pods', 'virtualmachineinstances']);

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const N = args.count;
  const nCompleted = Math.round(N * 0.1);
  const nNotRunning = Math.round(N * 0.2);
  const nWaiting = N - nCompleted - nNotRunning - args.running;
  say(
    `bench:scale: ${N} BlockPulls: ${nWaiting} waiting for a VMI, ${nNotRunning} VMI not running, ${nCompleted} already Completed, ${args.running} running`,
  );

  const nodeArgs = args.nodeArgs ?? imageNodeArgs();
  say(
    `bench:scale: npm run build (the operator as in the image: dist/, node ${[...nodeArgs, 'dist/operator/src/main.js'].join(' ')})`,
  );
  const main = await buildOperator();

  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-scale-'));
  const registryDir = path.join(tmp, 'launchers');
  cp = await startControlPlane({ stateDir: path.join(REPO_ROOT, '.cache', 'scale-cluster') });
  await installCrds(cp, [...(await projectCrdFiles()), VMI_CRD_FILE]);
  await ensureNamespace(cp, NS);
  // Its own operator namespace: the service account's kubeconfig file is named after it (an e2e
  // run in the same checkout writes the default one).
  const sa = await operatorServiceAccount(cp, OP_NS);
  // The bench creates like kubectl or Argo CD: over kept-alive connections (the operator's own
  // pooled client). client-node alone makes a TCP + TLS handshake per request, which
  // would measure the bench's handshakes, and the API server's, on the same two cores.
  const kc = loadKubeConfig(cp.kubeconfigPath);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const apiMetrics = async (): Promise<RequestCounts> => {
    const text = await cp!.kubectl(['get', '--raw', '/metrics'], { timeoutMs: 60_000 });
    return parseRequestTotals(text);
  };
  const bp = (name: string, vmiName: string) => ({
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPull',
    metadata: { name, namespace: NS },
    spec: { vmiName, disk: 'rootdisk' },
  });

  // Completed before the operator starts (a fleet where earlier pulls are done).
  const completedNames = Array.from({ length: nCompleted }, (_, i) => `done-${i}`);
  await pool(completedNames, 16, async (name) => {
    await custom.createNamespacedCustomObject({ ...GROUP, namespace: NS, body: bp(name, `gone-${name}`) });
    const now = new Date().toISOString();
    await custom.patchNamespacedCustomObjectStatus({
      ...GROUP,
      namespace: NS,
      name,
      body: [
        {
          op: 'add',
          path: '/status',
          value: { phase: 'Completed', reason: 'Completed', message: 'pulled earlier', completionTime: now },
        },
      ],
    });
  });
  // VMIs that exist but do not run.
  const notRunningNames = Array.from({ length: nNotRunning }, (_, i) => `sched-${i}`);
  await pool(notRunningNames, 16, async (name) => {
    await custom.createNamespacedCustomObject({
      ...VMI,
      namespace: NS,
      body: {
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachineInstance',
        metadata: { name: `vm-${name}`, namespace: NS },
        spec: { domain: { devices: { disks: [{ name: 'rootdisk' }] } } },
      },
    });
  });
  // Stand-ins for the running pulls (throttled so that they run for a while).
  for (let i = 0; i < args.running; i++) {
    const l = await startLauncher({
      namespace: NS,
      vmiName: `run-${i}`,
      registryDir,
      disks: [{ name: 'rootdisk', layers: 2, sizeMiB: 256, allocatedMiB: 64 }],
    });
    launchers.push(l);
    await createFakeVmi(cp, { namespace: NS, vmiName: `run-${i}`, launcher: l, disks: ['rootdisk'] });
  }
  // The VMI that appears later (the event-driven wake-up): its stand-in is ready, the VMI is not.
  const late = await startLauncher({
    namespace: NS,
    vmiName: 'late',
    registryDir,
    disks: [{ name: 'rootdisk', layers: 2, sizeMiB: 256, allocatedMiB: 16 }],
  });
  launchers.push(late);

  const env: Record<string, string> = {
    ...(args.heapSnapshot ? { NODE_OPTIONS: '--heapsnapshot-signal=SIGUSR2' } : {}),
    BLOCKPULL_POD_NAMESPACE: OP_NS,
    BLOCKPULL_LOG_LEVEL: 'info',
    BLOCKPULL_LEASE_DURATION_MS: '15000',
    BLOCKPULL_RENEW_DEADLINE_MS: '10000',
    BLOCKPULL_RETRY_PERIOD_MS: '2000',
  };
  operator = await startOperator({ kubeconfig: sa, registryDir, name: 'scale-operator', main, env, nodeArgs });
  let pid = operator.child.pid;
  const sampler = new RssSampler(pid);

  // --- created -> all have their waiting status ---------------------------------------------
  const waitingNames = Array.from({ length: nWaiting }, (_, i) => `wait-${i}`);
  const specs = [
    ...waitingNames.map((n) => ({ name: n, vmi: `vm-${n}` })),
    ...notRunningNames.map((n) => ({ name: n, vmi: `vm-${n}` })),
    ...Array.from({ length: args.running }, (_, i) => ({ name: `run-${i}`, vmi: `run-${i}` })),
  ];
  const expected = new Map<string, readonly string[]>();
  for (const n of waitingNames) expected.set(n, ['VMINotFound']);
  for (const n of notRunningNames) expected.set(n, ['VMINotRunning']);
  for (let i = 0; i < args.running; i++) expected.set(`run-${i}`, ['Running', 'Completed']);
  type Item = BlockPullView;
  const list = async (): Promise<Item[]> => {
    count('LIST blockpulls');
    return ((await custom.listNamespacedCustomObject({ ...GROUP, namespace: NS })) as { items: Item[] }).items;
  };
  const isDone = (it: Item): boolean => {
    const want = expected.get(it.metadata.name);
    return want !== undefined && (want.includes(it.status?.reason ?? '') || want.includes(it.status?.phase ?? ''));
  };
  // When each BlockPull first showed its waiting status: from a watch (opened before the first
  // create, so no status is missed), not from polling a list of N objects every so often.
  const reachedAt = new Map<string, number>();
  const createdAt = new Map<string, number>();
  const startRv = (
    (await custom.listNamespacedCustomObject({ ...GROUP, namespace: NS, limit: 1 })) as {
      metadata?: { resourceVersion?: string };
    }
  ).metadata?.resourceVersion;
  count('LIST blockpulls');
  let watchEnded = false;
  const watchAbort = await new Watch(kc).watch(
    `/apis/${GROUP.group}/${GROUP.version}/namespaces/${NS}/${GROUP.plural}`,
    { resourceVersion: startRv ?? '0' },
    (_phase: string, obj: unknown) => {
      const it = obj as Item;
      if (it?.metadata?.name !== undefined && !reachedAt.has(it.metadata.name) && isDone(it))
        reachedAt.set(it.metadata.name, performance.now());
    },
    () => (watchEnded = true),
  );
  count('WATCH blockpulls');

  const m0 = await apiMetrics();
  const cpu0 = cpuSeconds(pid, true);
  const benchCpu0 = process.cpuUsage();
  const t0 = performance.now();
  await pool(specs, args.createWidth, async (s) => {
    await custom.createNamespacedCustomObject({ ...GROUP, namespace: NS, body: bp(s.name, s.vmi) });
    createdAt.set(s.name, performance.now());
  });
  count('POST blockpulls', specs.length);
  const tCreated = performance.now();
  const benchCpuCreate = process.cpuUsage(benchCpu0);
  let seen = 0;
  for (let lastList = performance.now(); ;) {
    seen = reachedAt.size;
    if (seen >= expected.size || performance.now() - t0 > 15 * 60_000) break;
    // The watch may have ended (the API server closes watches after a while): fall back to lists.
    if (watchEnded || performance.now() - lastList > 10_000) {
      lastList = performance.now();
      for (const it of await list())
        if (!reachedAt.has(it.metadata.name) && isDone(it)) reachedAt.set(it.metadata.name, performance.now());
    }
    await sleep(50);
  }
  watchAbort.abort();
  const tWaiting = Math.max(...reachedAt.values());
  // How long each waited for its status after its own create (the operator's lag per object).
  const lags = [...reachedAt].map(([n, t]) => t - (createdAt.get(n) ?? t0)).sort((a, b) => a - b);
  const lagAt = (q: number): number => lags[Math.min(lags.length - 1, Math.floor(q * lags.length))] ?? Number.NaN;
  const settleTotals0 = await operatorTotals(operator.metricsPort());
  // Settled: the running ones Completed, and the queue quiet (no status write for 3 s).
  for (;;) {
    const items = await list();
    const running = items.filter(
      (it) => it.metadata.name.startsWith('run-') && it.status?.phase !== 'Completed',
    ).length;
    if (running === 0 || performance.now() - t0 > 20 * 60_000) break;
    await sleep(1_000);
  }
  for (let last = -1; ;) {
    const w = (await operatorTotals(operator.metricsPort())).writes;
    if (w === last) break;
    last = w;
    await sleep(3_000);
  }
  const settledTotals = await operatorTotals(operator.metricsPort());
  const settledMemory = settledTotals.memory;
  const m1 = await apiMetrics();
  const settle = diffCounts(m0, m1, own);
  const cpuSettle = cpuSeconds(pid, true) - cpu0;
  const settleOperatorRequests = total(settle, operatorsOwn);
  own.clear();

  // --- idle ---------------------------------------------------------------------------------
  const reconcilesIdle0 = (await operatorTotals(operator.metricsPort())).reconciles;
  const cpuIdle0 = cpuSeconds(pid, true);
  const tIdle0 = performance.now();
  await sleep(args.idleSeconds * 1000);
  const idleS = (performance.now() - tIdle0) / 1000;
  const cpuIdle = cpuSeconds(pid, true) - cpuIdle0;
  const m2 = await apiMetrics();
  const idle = diffCounts(m1, m2, own);
  const idleTotals = await operatorTotals(operator.metricsPort());
  const idleMemory = idleTotals.memory;
  const reconcilesIdle = idleTotals.reconciles - reconcilesIdle0;
  // --- a waiting BlockPull's VMI appears -> Running ---------------------------------------------
  await custom.createNamespacedCustomObject({ ...GROUP, namespace: NS, body: bp('late-0', 'late') });
  await sleep(2_000);
  const tVmi = performance.now();
  await createFakeVmi(cp, { namespace: NS, vmiName: 'late', launcher: late, disks: ['rootdisk'] });
  const tVmiReady = performance.now();
  let lateMs = Number.NaN;
  for (;;) {
    const o = (await custom.getNamespacedCustomObject({ ...GROUP, namespace: NS, name: 'late-0' })) as Item;
    if (o.status?.phase === 'Running' || o.status?.phase === 'Completed') {
      lateMs = performance.now() - tVmiReady;
      break;
    }
    if (performance.now() - tVmi > 120_000) break;
    await sleep(50);
  }
  const peakHwm = statusMiB(pid, 'VmHWM');
  const peakSampledFirst = sampler.peak;
  const cpuTotalFirst = cpuSeconds(pid, true);
  // --heap-snapshot: the operator writes one on SIGUSR2 (node --heapsnapshot-signal, set below).
  let snapshotPath: string | undefined;
  if (args.heapSnapshot && pid !== undefined) {
    const before = new Set(readdirSync(REPO_ROOT).filter((f) => f.endsWith('.heapsnapshot')));
    process.kill(pid, 'SIGUSR2');
    for (let i = 0; i < 600 && snapshotPath === undefined; i++) {
      await sleep(500);
      const f = readdirSync(REPO_ROOT).find((x) => x.endsWith('.heapsnapshot') && !before.has(x));
      // Written when its size stops changing.
      if (f !== undefined) {
        const size = statSync(path.join(REPO_ROOT, f)).size;
        await sleep(2_000);
        if (statSync(path.join(REPO_ROOT, f)).size === size) snapshotPath = path.join(REPO_ROOT, f);
      }
    }
  }

  // --- restart with everything existing -----------------------------------------------------------
  await operator.stop();
  const m3 = await apiMetrics();
  const tRestart = performance.now();
  operator = await startOperator({ kubeconfig: sa, registryDir, name: 'scale-operator-2', main, env, nodeArgs });
  pid = operator.child.pid;
  sampler.follow(pid);
  const tSynced = performance.now();
  const all = N + 1;
  let restartLooked = Number.NaN;
  let restartCpu = Number.NaN;
  for (;;) {
    const t = await operatorTotals(operator.metricsPort());
    if (t.reconciles >= all) {
      restartLooked = performance.now() - tRestart;
      restartCpu = cpuSeconds(pid, true);
      break;
    }
    if (performance.now() - tRestart > 10 * 60_000) break;
    await sleep(200);
  }
  await sleep(3_000);
  const restartTotals = await operatorTotals(operator.metricsPort());
  const m4 = await apiMetrics();
  const restart = diffCounts(m3, m4);
  const restartHwm = statusMiB(pid, 'VmHWM');
  sampler.stop();

  // --- report -------------------------------------------------------------------------------------
  say('');
  say(
    `RESULT bench:scale ${N} BlockPulls; node ${nodeArgs.join(' ') || '(no flags)'} (${nWaiting} waiting for a VMI, ${nNotRunning} VMI not running, ${nCompleted} Completed, ${args.running} running); load ${loadAverages()}`,
  );
  say(`| figure | measured | goal |`);
  say(`|---|---|---|`);
  say(
    `| ${expected.size} created -> all have their waiting status | first create -> last status ${fmt((tWaiting - t0) / 1000)} s; last create -> last status ${fmt((tWaiting - tCreated) / 1000)} s (creating took ${fmt((tCreated - t0) / 1000)} s, ${args.createWidth} at once; ${seen}/${expected.size} seen) | < 10 s |`,
  );
  say(
    `| operator RSS | peak ${fmt(Math.max(peakHwm, peakSampledFirst), 0)} MiB (VmHWM ${fmt(peakHwm, 0)}); after restart with all existing ${fmt(restartHwm, 0)} MiB | < 200 MiB at 10,000 |`,
  );
  say(
    `| API requests per BlockPull to settle | ${fmt(settleOperatorRequests / expected.size, 2)} (${settleOperatorRequests} requests for ${expected.size} created, without leases and the API server's own; with them ${fmt(total(settle) / expected.size, 2)}) | <= 4 |`,
  );
  say(
    `| idle after settling (${fmt(idleS, 0)} s) | ${fmt((100 * cpuIdle) / idleS, 2)} % of a core (${reconcilesIdle} reconciles), ${fmt(total(idle) / idleS, 2)} API requests/s (${fmt(total(idle, operatorsOwn) / idleS, 2)}/s without the lease renewals and the API server's own) | < 2 %, < 1/s |`,
  );
  say(
    `| restart with ${all} existing | caches ${fmt((tSynced - tRestart) / 1000)} s; all looked at ${fmt(restartLooked / 1000)} s; ${restartTotals.writes} status writes | < 30 s at 10,000; 0 writes |`,
  );
  say(`| a waiting BlockPull's VMI appears -> Running | ${fmt(lateMs, 0)} ms | < 1 s, by the watch event |`);
  say('');
  say(
    `each BlockPull, its create -> its status: median ${fmt(lagAt(0.5) / 1000, 2)} s, p90 ${fmt(lagAt(0.9) / 1000, 2)} s, max ${fmt(lagAt(1) / 1000, 2)} s; operator work queue wait: mean ${fmt(settleTotals0.queueWaitSum / Math.max(1, settleTotals0.queueWaitCount), 3)} s over ${settleTotals0.queueWaitCount} items`,
  );
  say(`the bench's own CPU while creating: ${fmt((benchCpuCreate.user + benchCpuCreate.system) / 1e6, 2)} s`);
  say(
    `operator memory (its /metrics): settled ${memoryLine(settledMemory)}; idle ${memoryLine(idleMemory)}; after restart ${memoryLine(restartTotals.memory)}`,
  );
  if (snapshotPath !== undefined) say(`operator heap snapshot (after the VMI-appears step): ${snapshotPath}`);
  say(
    `operator CPU seconds: settling ${fmt(cpuSettle, 2)}, idle ${fmt(cpuIdle, 2)}, first process total ${fmt(cpuTotalFirst, 2)}; restarted process until all ${all} looked at ${fmt(restartCpu, 2)} (start, lists, and a reconcile of each that writes nothing: at most ${fmt((1000 * restartCpu) / all, 2)} ms each)`,
  );
  say(
    `Events dropped by the operator (its queue of 1,000 full; statuses are all written): ${settledTotals.eventsDropped} while settling`,
  );
  say(`API requests to settle (kube-apiserver apiserver_request_total, the bench's own creates and lists subtracted):`);
  for (const l of formatCounts(settle)) say(`  ${l}`);
  say(`API requests while idle (${fmt(idleS, 0)} s):`);
  for (const l of formatCounts(idle)) say(`  ${l}`);
  if (idle.size === 0) say('  (none)');
  say(`API requests of the restart (until all looked at + 3 s; includes the operator's start: lease, lists, watches):`);
  for (const l of formatCounts(restart)) say(`  ${l}`);
}

main()
  .then(
    () => cleanup(),
    async (err: unknown) => {
      process.stderr.write(`bench:scale failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      if (operator !== undefined) process.stderr.write(`operator log: ${operator.logPath}\n`);
      await cleanup();
      process.exitCode = 1;
    },
  )
  .finally(() => process.exit());
