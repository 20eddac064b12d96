/**
 * `npm run bench:scale [-- --count 1000|10000] [--running 4]`: fleet scale (issue 11).
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
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import { z } from 'zod';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../cluster/crds.ts';
import { startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { startLauncher, type Launcher } from '../launcher/launcher.ts';
import { buildOperator, createFakeVmi, ensureNamespace, operatorServiceAccount, startOperator, type OperatorProcess } from '../operator-fixture/fixture.ts';
import { diffCounts, formatCounts, parseRequestTotals, total, type RequestCounts } from '../support/apiserver-metrics.ts';

const Args = z.object({ count: z.number().int().min(10).max(20_000), running: z.number().int().min(0).max(16), idleSeconds: z.number().int().min(5).max(600) });

function parseArgs(argv: readonly string[]): z.infer<typeof Args> {
  const raw: Record<string, number> = { count: 1000, running: 4, idleSeconds: 30 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = Number(argv[i + 1]);
    if (a === '--count') raw['count'] = v;
    else if (a === '--running') raw['running'] = v;
    else if (a === '--idle-seconds') raw['idleSeconds'] = v;
    else throw new Error(`unknown argument ${a} (use --count N, --running N, --idle-seconds N)`);
    i++;
  }
  return Args.parse(raw);
}

const NS = 'scale';
const OP_NS = 'bp-scale-system';
const GROUP = { group: 'blockpull.dev', version: 'v1alpha1', plural: 'blockpulls' };
const VMI = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances' };
const say = (m: string): void => void process.stdout.write(`${m}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

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
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => void cleanup().finally(() => process.exit(130)));

/** The bench's own API requests, subtracted from the API server's counts. */
const own: RequestCounts = new Map();
const count = (key: string, n = 1): void => void own.set(key, (own.get(key) ?? 0) + n);

/** Run `items` through `fn` with at most `width` at once. */
async function pool<T>(items: readonly T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

function procStatus(pid: number | undefined, field: 'VmRSS' | 'VmHWM'): number {
  if (pid === undefined) return 0;
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / 100;
  } catch {
    return 0;
  }
}

async function operatorTotals(port: number | undefined): Promise<{ writes: number; reconciles: number }> {
  if (port === undefined) return { writes: 0, reconciles: 0 };
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const sum = (name: string): number => {
    let n = 0;
    for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)`, 'gm'))) n += Number(m[1]);
    return n;
  };
  return { writes: sum('blockpull_status_writes_total'), reconciles: sum('blockpull_reconcile_total') };
}

const fmt = (x: number, d = 1): string => x.toFixed(d);

/**
 * Requests that are neither the leader election's (GET+PUT leases every retry period, whatever the
 * fleet) nor the API server's own (its endpoints reconciler; watches of resources the operator
 * does not read, re-opened by the API server's internal informers).
 */
const operatorsOwn = (key: string): boolean =>
  !key.endsWith(' leases') && !key.endsWith(' endpoints') && (!key.startsWith('WATCH ') || ['WATCH blockpulls', 'WATCH pods', 'WATCH virtualmachineinstances'].includes(key));

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const N = args.count;
  const nCompleted = Math.round(N * 0.1);
  const nNotRunning = Math.round(N * 0.2);
  const nWaiting = N - nCompleted - nNotRunning - args.running;
  say(`bench:scale: ${N} BlockPulls: ${nWaiting} waiting for a VMI, ${nNotRunning} VMI not running, ${nCompleted} already Completed, ${args.running} running`);

  say('bench:scale: npm run build (the operator as in the image: dist/)');
  const main = await buildOperator();

  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-scale-'));
  const registryDir = path.join(tmp, 'launchers');
  cp = await startControlPlane({ stateDir: path.join(REPO_ROOT, '.cache', 'scale-cluster') });
  await installCrds(cp, [...(await projectCrdFiles()), VMI_CRD_FILE]);
  await ensureNamespace(cp, NS);
  // Its own operator namespace: the service account's kubeconfig file is named after it (an e2e
  // run in the same checkout writes the default one).
  const sa = await operatorServiceAccount(cp, OP_NS);
  const kc = new KubeConfig();
  kc.loadFromFile(cp.kubeconfigPath);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const apiMetrics = async (): Promise<RequestCounts> => {
    const text = await cp!.kubectl(['get', '--raw', '/metrics'], { timeoutMs: 60_000 });
    return parseRequestTotals(text);
  };
  const bp = (name: string, vmiName: string) => ({ apiVersion: 'blockpull.dev/v1alpha1', kind: 'BlockPull', metadata: { name, namespace: NS }, spec: { vmiName, disk: 'rootdisk' } });

  // Completed before the operator starts (a fleet where earlier pulls are done).
  const completedNames = Array.from({ length: nCompleted }, (_, i) => `done-${i}`);
  await pool(completedNames, 16, async (name) => {
    await custom.createNamespacedCustomObject({ ...GROUP, namespace: NS, body: bp(name, `gone-${name}`) });
    const now = new Date().toISOString();
    await custom.patchNamespacedCustomObjectStatus(
      { ...GROUP, namespace: NS, name, body: [{ op: 'add', path: '/status', value: { phase: 'Completed', reason: 'Completed', message: 'pulled earlier', completionTime: now } }] },
    );
  });
  // VMIs that exist but do not run.
  const notRunningNames = Array.from({ length: nNotRunning }, (_, i) => `sched-${i}`);
  await pool(notRunningNames, 16, async (name) => {
    await custom.createNamespacedCustomObject({
      ...VMI,
      namespace: NS,
      body: { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata: { name: `vm-${name}`, namespace: NS }, spec: { domain: { devices: { disks: [{ name: 'rootdisk' }] } } } },
    });
  });
  // Stand-ins for the running pulls (throttled so that they run for a while).
  for (let i = 0; i < args.running; i++) {
    const l = await startLauncher({ namespace: NS, vmiName: `run-${i}`, registryDir, disks: [{ name: 'rootdisk', layers: 2, sizeMiB: 256, allocatedMiB: 64 }] });
    launchers.push(l);
    await createFakeVmi(cp, { namespace: NS, vmiName: `run-${i}`, launcher: l, disks: ['rootdisk'] });
  }
  // The VMI that appears later (the event-driven wake-up): its stand-in is ready, the VMI is not.
  const late = await startLauncher({ namespace: NS, vmiName: 'late', registryDir, disks: [{ name: 'rootdisk', layers: 2, sizeMiB: 256, allocatedMiB: 16 }] });
  launchers.push(late);

  const env = { BLOCKPULL_POD_NAMESPACE: OP_NS, BLOCKPULL_LOG_LEVEL: 'info', BLOCKPULL_LEASE_DURATION_MS: '15000', BLOCKPULL_RENEW_DEADLINE_MS: '10000', BLOCKPULL_RETRY_PERIOD_MS: '2000' };
  operator = await startOperator({ kubeconfig: sa, registryDir, name: 'scale-operator', main, env });
  let pid = operator.child.pid;
  let rssPeakSampled = 0;
  const sampler = setInterval(() => (rssPeakSampled = Math.max(rssPeakSampled, procStatus(pid, 'VmRSS'))), 250);

  // --- created -> all have their waiting status ---------------------------------------------
  const waitingNames = Array.from({ length: nWaiting }, (_, i) => `wait-${i}`);
  const specs = [
    ...waitingNames.map((n) => ({ name: n, vmi: `vm-${n}` })),
    ...notRunningNames.map((n) => ({ name: n, vmi: `vm-${n}` })),
    ...Array.from({ length: args.running }, (_, i) => ({ name: `run-${i}`, vmi: `run-${i}` })),
  ];
  const m0 = await apiMetrics();
  const cpu0 = cpuSeconds(pid);
  const t0 = performance.now();
  await pool(specs, 32, async (s) => {
    await custom.createNamespacedCustomObject({ ...GROUP, namespace: NS, body: bp(s.name, s.vmi) });
  });
  count('POST blockpulls', specs.length);
  const tCreated = performance.now();
  const expected = new Map<string, readonly string[]>();
  for (const n of waitingNames) expected.set(n, ['VMINotFound']);
  for (const n of notRunningNames) expected.set(n, ['VMINotRunning']);
  for (let i = 0; i < args.running; i++) expected.set(`run-${i}`, ['Running', 'Completed']);
  type Item = { metadata: { name: string }; status?: { phase?: string; reason?: string } };
  const list = async (): Promise<Item[]> => {
    count('LIST blockpulls');
    return ((await custom.listNamespacedCustomObject({ ...GROUP, namespace: NS })) as { items: Item[] }).items;
  };
  const done = (items: Item[]): number =>
    items.filter((it) => {
      const want = expected.get(it.metadata.name);
      return want !== undefined && (want.includes(it.status?.reason ?? '') || want.includes(it.status?.phase ?? ''));
    }).length;
  let seen = 0;
  for (;;) {
    seen = done(await list());
    if (seen >= expected.size || performance.now() - t0 > 15 * 60_000) break;
    await sleep(500);
  }
  const tWaiting = performance.now();
  // Settled: the running ones Completed, and the queue quiet (no status write for 3 s).
  for (;;) {
    const items = await list();
    const running = items.filter((it) => it.metadata.name.startsWith('run-') && it.status?.phase !== 'Completed').length;
    if (running === 0 || performance.now() - t0 > 20 * 60_000) break;
    await sleep(1_000);
  }
  for (let last = -1; ; ) {
    const w = (await operatorTotals(operator.metricsPort())).writes;
    if (w === last) break;
    last = w;
    await sleep(3_000);
  }
  const m1 = await apiMetrics();
  const settle = diffCounts(m0, m1, own);
  const cpuSettle = cpuSeconds(pid) - cpu0;
  const settleOperatorRequests = total(settle, operatorsOwn);
  own.clear();

  // --- idle ---------------------------------------------------------------------------------
  const cpuIdle0 = cpuSeconds(pid);
  const tIdle0 = performance.now();
  await sleep(args.idleSeconds * 1000);
  const idleS = (performance.now() - tIdle0) / 1000;
  const cpuIdle = cpuSeconds(pid) - cpuIdle0;
  const m2 = await apiMetrics();
  const idle = diffCounts(m1, m2, own);

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
  const peakHwm = procStatus(pid, 'VmHWM');
  const cpuTotalFirst = cpuSeconds(pid);

  // --- restart with everything existing -----------------------------------------------------------
  await operator.stop();
  const m3 = await apiMetrics();
  const tRestart = performance.now();
  operator = await startOperator({ kubeconfig: sa, registryDir, name: 'scale-operator-2', main, env });
  pid = operator.child.pid;
  const tSynced = performance.now();
  const all = N + 1;
  let restartLooked = Number.NaN;
  for (;;) {
    const t = await operatorTotals(operator.metricsPort());
    if (t.reconciles >= all) {
      restartLooked = performance.now() - tRestart;
      break;
    }
    if (performance.now() - tRestart > 10 * 60_000) break;
    await sleep(200);
  }
  await sleep(3_000);
  const restartTotals = await operatorTotals(operator.metricsPort());
  const m4 = await apiMetrics();
  const restart = diffCounts(m3, m4);
  const restartHwm = procStatus(pid, 'VmHWM');
  clearInterval(sampler);

  // --- report -------------------------------------------------------------------------------------
  say('');
  say(`RESULT bench:scale ${N} BlockPulls (${nWaiting} waiting for a VMI, ${nNotRunning} VMI not running, ${nCompleted} Completed, ${args.running} running); load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  say(`| figure | measured | goal |`);
  say(`|---|---|---|`);
  say(`| ${expected.size} created -> all have their waiting status | ${fmt((tWaiting - t0) / 1000)} s (creating took ${fmt((tCreated - t0) / 1000)} s; ${seen}/${expected.size} seen) | < 10 s |`);
  say(`| operator RSS | peak ${fmt(Math.max(peakHwm, rssPeakSampled), 0)} MiB (VmHWM ${fmt(peakHwm, 0)}); after restart with all existing ${fmt(restartHwm, 0)} MiB | < 200 MiB at 10,000 |`);
  say(
    `| API requests per BlockPull to settle | ${fmt(settleOperatorRequests / expected.size, 2)} (${settleOperatorRequests} requests for ${expected.size} created, without leases and the API server's own; with them ${fmt(total(settle) / expected.size, 2)}) | <= 4 |`,
  );
  say(
    `| idle after settling (${fmt(idleS, 0)} s) | ${fmt((100 * cpuIdle) / idleS, 2)} % of a core, ${fmt(total(idle) / idleS, 2)} API requests/s (${fmt(total(idle, operatorsOwn) / idleS, 2)}/s without the lease renewals and the API server's own) | < 2 %, < 1/s |`,
  );
  say(`| restart with ${all} existing | caches ${fmt((tSynced - tRestart) / 1000)} s; all looked at ${fmt(restartLooked / 1000)} s; ${restartTotals.writes} status writes | < 30 s at 10,000; 0 writes |`);
  say(`| a waiting BlockPull's VMI appears -> Running | ${fmt(lateMs, 0)} ms | < 1 s, by the watch event |`);
  say('');
  say(`operator CPU seconds: settling ${fmt(cpuSettle, 2)}, idle ${fmt(cpuIdle, 2)}, first process total ${fmt(cpuTotalFirst, 2)}`);
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
