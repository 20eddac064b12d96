/**
 * `npm run bench`: the operator's apply-to-Completed against `virsh blockpull --wait` on identical
 * 3-layer chains with 2 GiB allocated, in one run.
 *
 * Rounds (BENCH_ROUNDS, default 4: an even number, so ABBA and BAAB weigh alike): each round builds a fresh stand-in VM with five identical
 * chains (one unmeasured warm-up pull first: the first pull after building is always faster),
 * measures raw, operator, operator, raw (the next round operator, raw, raw, operator: ABBA then
 * BAAB, so position and machine-load drift weigh on both sides alike), checks that every disk
 * ends with the same data, and removes the VM (and its 20 GiB of images).
 *
 * Fairness:
 * - the same observers on both sides: a `kubectl get blockpulls -w` (started 1.5 s before t0) and
 *   one `virsh event --loop` on the domain for the whole round (no polling of libvirt);
 * - t0 the same way on both sides: just before spawning the command that asks for the pull
 *   (`virsh blockpull --wait` / `kubectl apply`), after reading the disk's chain into the page
 *   cache and a `sync`;
 * - `virsh blockpull --wait` checks for the end every 0.5 s: the raw side is reported both to
 *   virsh's exit (what a user waits for) and to the block-job completion event (the job's real
 *   end, up to 0.5 s earlier); the RESULT ratio uses the stricter one (to the event);
 * - per side: each run, median, range; per round the ratio (sums); the load average per round
 *   and the CPU seconds the operator, kube-apiserver and etcd used during each run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cleanupOnSignals, run } from '../support/process.ts';
import { createReadStream, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseBlockJobEventLine } from '../../../operator/src/hypervisor/virsh-parse.ts';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../cluster/crds.ts';
import { startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { startLauncher, type Launcher } from '../launcher/launcher.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  operatorServiceAccount,
  startOperator,
  type BlockPullView,
  type OperatorProcess,
} from '../operator-fixture/fixture.ts';
import { cpuSeconds, loadAverages, machineJiffies } from '../support/procfs.ts';

const NS = 'bench';
const ALLOCATED_MIB = Number(process.env['BENCH_ALLOCATED_MIB'] ?? 2048);
const SIZE_MIB = Math.max(4096, ALLOCATED_MIB * 2);
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 4);
/**
 * Read each measured disk's chain just before its run (BENCH_WARM_CHAINS=0 to skip): with five
 * 2 GiB chains per round the page cache keeps some and not others (measured: the first run after
 * the warm-up, whose images were built first, often took twice as long, whichever side ran it).
 */
const WARM_CHAINS = process.env['BENCH_WARM_CHAINS'] !== '0';

const say = (m: string): void => {
  process.stdout.write(`${m}\n`);
};

let cp: ControlPlane | undefined;
let launcher: Launcher | undefined;
let operator: OperatorProcess | undefined;
let tmp: string | undefined;
const children = new Set<ChildProcess>();

async function cleanup(): Promise<void> {
  for (const c of children) c.kill('SIGKILL');
  if (cp !== undefined && operator !== undefined)
    await cp
      .kubectlResult(['delete', 'blockpull', '--all', '-n', NS, '--wait=true', '--timeout=30s'])
      .catch(() => undefined);
  await operator?.stop().catch(() => undefined);
  operator = undefined;
  await launcher?.stop().catch(() => undefined);
  launcher = undefined;
  await cp?.stop().catch(() => undefined);
  cp = undefined;
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
  tmp = undefined;
}

cleanupOnSignals(cleanup);

function track(c: ChildProcess): ChildProcess {
  children.add(c);
  c.on('exit', () => children.delete(c));
  return c;
}

interface WatchResult {
  completedAt: number;
  statusChanges: number;
  phases: string[];
}

/**
 * `kubectl get blockpulls -w -o json` on the namespace: the same observer on both sides. For a
 * name, resolves when it is Completed (counting its status changes); `stop()` ends it.
 */
function watchBlockPulls(
  kubectl: string,
  kubeconfig: string,
  name: string | undefined,
  timeoutMs: number,
): { ready: Promise<void>; done: Promise<WatchResult>; stop: () => void } {
  // Watch the collection (works before the object exists), filter by name.
  const child = track(
    spawn(
      kubectl,
      ['--kubeconfig', kubeconfig, 'get', 'blockpulls', '-n', NS, '-w', '-o', 'json', '--output-watch-events'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    ),
  );
  let buf = '';
  let depth = 0;
  let inString = false;
  let escaped = false;
  let prevStatus: string | undefined;
  let prevRv: string | undefined;
  let statusChanges = 0;
  const phases: string[] = [];
  let resolveReady!: () => void;
  const ready = new Promise<void>((r) => (resolveReady = r));
  let timer: NodeJS.Timeout | undefined;
  const done = new Promise<WatchResult>((resolve, reject) => {
    if (name !== undefined) {
      timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`BlockPull ${name} not Completed within ${timeoutMs} ms`));
      }, timeoutMs);
    }
    child.on('spawn', () => resolveReady());
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      // kubectl prints one pretty JSON document per event: split on balanced braces.
      for (const ch of chunk) {
        buf += ch;
        if (inString) {
          if (escaped) escaped = false;
          else if (ch === '\\') escaped = true;
          else if (ch === '"') inString = false;
          continue;
        }
        if (ch === '"') inString = true;
        else if (ch === '{') depth++;
        else if (ch === '}' && --depth === 0) {
          const ev = JSON.parse(buf) as { type: string; object: BlockPullView };
          buf = '';
          if (name === undefined || ev.object.metadata.name !== name) continue;
          const status = JSON.stringify(ev.object.status ?? null);
          if (ev.object.metadata.resourceVersion !== prevRv && prevStatus !== undefined && status !== prevStatus)
            statusChanges++;
          if (prevStatus === undefined && ev.object.status !== undefined) statusChanges++;
          prevRv = ev.object.metadata.resourceVersion;
          prevStatus = status;
          const phase = ev.object.status?.phase;
          if (phase !== undefined && phases.at(-1) !== phase) phases.push(phase);
          if (phase === 'Completed') {
            clearTimeout(timer);
            const completedAt = performance.now();
            child.kill('SIGTERM');
            resolve({ completedAt, statusChanges, phases });
          }
        }
      }
    });
    child.on('error', reject);
  });
  done.catch(() => undefined);
  return {
    ready,
    done,
    stop: () => {
      clearTimeout(timer);
      child.kill('SIGTERM');
    },
  };
}

/** One `virsh event --loop` per round: when each disk's block job ended (performance.now()). */
function watchJobEnds(l: Launcher): {
  ended: Map<string, number>;
  waitFor: (target: string, timeoutMs: number) => Promise<number>;
  stop: () => void;
} {
  const ended = new Map<string, number>();
  const waiters = new Map<string, (t: number) => void>();
  const h = l.runner.stream([
    'virsh',
    '-q',
    '-c',
    l.uri,
    'event',
    '--domain',
    l.domain,
    '--event',
    'block-job-2',
    '--loop',
    '--timestamp',
  ]);
  void (async () => {
    for await (const line of h.lines) {
      const ev = parseBlockJobEventLine(line);
      if (ev === null) continue;
      const t = performance.now();
      ended.set(ev.target, t);
      waiters.get(ev.target)?.(t);
    }
  })().catch(() => undefined);
  h.done.catch(() => undefined);
  return {
    ended,
    waitFor: (target, timeoutMs) => {
      const t = ended.get(target);
      if (t !== undefined) return Promise.resolve(t);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no block-job event for ${target} within ${timeoutMs} ms`)),
          timeoutMs,
        );
        waiters.set(target, (x) => {
          clearTimeout(timer);
          resolve(x);
        });
      });
    },
    stop: () => h.stop(),
  };
}

/** Read a file through the page cache and drop the bytes. */
async function readThrough(file: string): Promise<void> {
  const stream = createReadStream(file, { highWaterMark: 1024 * 1024 });
  for await (const chunk of stream) void chunk;
}

/** Flush dirty pages (chain building, the previous pull) so neither measurement pays for the other's writeback. */
async function syncDisks(): Promise<void> {
  await run(['sync'], { allowExit: true });
}

/** The operator's status writes and reconciles so far (sums over labels, from /metrics). */
async function operatorCounters(port: number | undefined): Promise<{ writes: number; reconciles: number }> {
  if (port === undefined) return { writes: 0, reconciles: 0 };
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const total = (name: string): number => {
    let n = 0;
    for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\d+)`, 'gm'))) n += Number(m[1]);
    return n;
  };
  return { writes: total('blockpull_status_writes_total'), reconciles: total('blockpull_reconcile_total') };
}

/** The stand-in's QEMU (cmdline names the domain) and libvirtd (its XDG_RUNTIME_DIR holds the socket). */
function launcherPids(l: Launcher): number[] {
  const runtimeDir = path.dirname(path.dirname(l.socketPath));
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (cmd.some((a) => a.includes(`guest=${l.domain}`))) out.push(Number(entry));
      else if (
        path.basename(cmd[0] ?? '') === 'libvirtd' &&
        readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0').includes(`XDG_RUNTIME_DIR=${runtimeDir}`)
      )
        out.push(Number(entry));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

interface RawRun {
  round: number;
  toExit: number;
  toEvent: number;
  cpu: Cpu;
}
interface OperatorRun {
  round: number;
  toCompleted: number;
  toJobStarted: number | undefined;
  toJobEnd: number;
  writes: { watch: number; metric: number };
  reconciles: number;
  phases: string[];
  cpu: Cpu;
}
interface Cpu {
  /** The operator process with the virsh commands it ran. */
  operator: number;
  apiserver: number;
  etcd: number;
  /** The stand-in's libvirtd and QEMU. */
  launcher: number;
  /** Share of the machine's 2 cores busy (everyone's processes), 0-1. */
  machineBusy: number;
}

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);
const f2 = (x: number): string => x.toFixed(2);
const spread = (xs: readonly number[]): string =>
  `median ${f2(median(xs))} s, range ${f2(Math.min(...xs))}-${f2(Math.max(...xs))} s`;
const load = loadAverages;

async function main(): Promise<void> {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-bench-'));
  const registryDir = path.join(tmp, 'launchers');
  say('bench: starting the control plane');
  cp = await startControlPlane({ stateDir: path.join(REPO_ROOT, '.cache', 'bench-cluster') });
  const apiserverPid = cp.processes.find((p) => p.name === 'kube-apiserver')?.pid;
  const etcdPid = cp.processes.find((p) => p.name === 'etcd')?.pid;
  await installCrds(cp, [...(await projectCrdFiles()), VMI_CRD_FILE]);
  await ensureNamespace(cp, NS);
  const sa = await operatorServiceAccount(cp);
  // The operator as the chart deploys it: info logs, the chart's leader-election timings (the test
  // harness renews the Lease every 0.5 s for fast fail-over tests; the chart every 2 s).
  operator = await startOperator({
    kubeconfig: sa,
    registryDir,
    name: 'bench-operator',
    env: {
      BLOCKPULL_LOG_LEVEL: process.env['BENCH_OPERATOR_LOG_LEVEL'] ?? 'info',
      BLOCKPULL_LEASE_DURATION_MS: '15000',
      BLOCKPULL_RENEW_DEADLINE_MS: '10000',
      BLOCKPULL_RETRY_PERIOD_MS: '2000',
    },
  });
  let launcherProcs: number[] = [];
  const cpuNow = (): Cpu & { jiffies: ReturnType<typeof machineJiffies> } => ({
    operator: cpuSeconds(operator?.child.pid, true),
    apiserver: cpuSeconds(apiserverPid),
    etcd: cpuSeconds(etcdPid),
    launcher: sum(launcherProcs.map((p) => cpuSeconds(p))),
    machineBusy: 0,
    jiffies: machineJiffies(),
  });
  const cpuSince = (a: ReturnType<typeof cpuNow>): Cpu => {
    const b = cpuNow();
    return {
      operator: b.operator - a.operator,
      apiserver: b.apiserver - a.apiserver,
      etcd: b.etcd - a.etcd,
      launcher: b.launcher - a.launcher,
      machineBusy: (b.jiffies.busy - a.jiffies.busy) / Math.max(1, b.jiffies.total - a.jiffies.total),
    };
  };

  const raw: RawRun[] = [];
  const op: OperatorRun[] = [];
  const warmups: number[] = [];
  const loads: string[] = [];
  let pulledMiB = 0;
  let allIdentical = true;

  for (let round = 1; round <= ROUNDS; round++) {
    const vmiName = `bench-vm-${round}`;
    const order = round % 2 === 1 ? ['raw', 'op', 'op', 'raw'] : ['op', 'raw', 'raw', 'op'];
    const names = ['warmup', ...order.map((s, i) => `r${round}-${s}-${i + 1}`)];
    const loadStart = load();
    say(
      `bench: round ${round}/${ROUNDS}: building five identical 3-layer chains (${SIZE_MIB} MiB virtual, ${ALLOCATED_MIB} MiB allocated); load average ${loadStart}`,
    );
    const l = await startLauncher({
      namespace: NS,
      vmiName,
      registryDir,
      disks: names.map((name) => ({ name, layers: 3, sizeMiB: SIZE_MIB, allocatedMiB: ALLOCATED_MIB })),
    });
    launcher = l;
    pulledMiB = l.disks[1]!.pullBytes / 1024 / 1024;
    await createFakeVmi(cp, { namespace: NS, vmiName, launcher: l, disks: names });
    const jobEnds = watchJobEnds(l);
    launcherProcs = launcherPids(l);
    const target = (disk: string): string => l.disks.find((x) => x.name === disk)!.target;

    /** The same start for both sides: the disk's chain in the page cache, writeback done, the observers up. */
    const prepare = async (disk: string, name: string | undefined): Promise<ReturnType<typeof watchBlockPulls>> => {
      if (WARM_CHAINS) for (const file of l.disks.find((x) => x.name === disk)!.chain) await readThrough(file);
      await syncDisks();
      const w = watchBlockPulls(cp!.binaries.kubectl, cp!.kubeconfigPath, name, 600_000);
      await w.ready;
      await new Promise((r) => setTimeout(r, 1_500)); // let kubectl establish the watch
      return w;
    };

    const timeRaw = async (disk: string): Promise<{ toExit: number; toEvent: number; cpu: Cpu }> => {
      const w = await prepare(disk, undefined);
      const cpu0 = cpuNow();
      const t0 = performance.now();
      const r = await l.runner.run(
        ['virsh', '-c', l.uri, 'blockpull', '--domain', l.domain, '--path', target(disk), '--wait'],
        { timeoutMs: 600_000 },
      );
      const exitAt = performance.now();
      if (r.exitCode !== 0) throw new Error(`virsh blockpull --wait failed: ${r.stderr}`);
      const eventAt = await jobEnds.waitFor(target(disk), 10_000);
      const cpu = cpuSince(cpu0);
      w.stop();
      return { toExit: (exitAt - t0) / 1000, toEvent: (eventAt - t0) / 1000, cpu };
    };

    const timeOperator = async (disk: string): Promise<OperatorRun> => {
      const before = await operatorCounters(operator!.metricsPort());
      const file = path.join(tmp!, `${disk}.yaml`);
      await writeFile(file, blockPullManifest({ namespace: NS, name: disk, vmiName, disk }));
      const w = await prepare(disk, disk);
      const cpu0 = cpuNow();
      const wall0 = Date.now();
      const t0 = performance.now();
      await cp!.kubectl(['apply', '-f', file]);
      const result = await w.done;
      const cpu = cpuSince(cpu0);
      const jobEnd = await jobEnds.waitFor(target(disk), 10_000);
      // The operator logs 'block pull started' right after virsh returned (epoch ms).
      const started = operator!.find('block pull started').find((x) => x['name'] === disk)?.['time'];
      const startedMs =
        typeof started === 'string' ? Date.parse(started) : typeof started === 'number' ? started : undefined;
      await new Promise((r) => setTimeout(r, 500));
      return {
        round,
        toCompleted: (result.completedAt - t0) / 1000,
        toJobStarted: startedMs !== undefined ? (startedMs - wall0) / 1000 : undefined,
        toJobEnd: (jobEnd - t0) / 1000,
        ...(await operatorCounters(operator!.metricsPort()).then((after) => ({
          writes: { watch: result.statusChanges, metric: after.writes - before.writes },
          reconciles: after.reconciles - before.reconciles,
        }))),
        phases: result.phases,
        cpu,
      };
    };

    const warm = await timeRaw('warmup');
    warmups.push(warm.toExit);
    for (const name of names.slice(1)) {
      if (name.includes('-raw-')) raw.push({ round, ...(await timeRaw(name)) });
      else op.push(await timeOperator(name));
    }
    jobEnds.stop();

    const ref = await l.reference(names[1]!);
    for (const d of names.slice(2)) allIdentical = (await l.compare(d, ref)) && allIdentical;
    await cp.kubectlResult(['delete', 'blockpull', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    await l.stop();
    launcher = undefined;
    loads.push(`round ${round}: ${loadStart} -> ${load()}`);
    const rr = raw.filter((x) => x.round === round);
    const oo = op.filter((x) => x.round === round);
    say(
      `bench: round ${round} (${order.join(', ')}): raw ${rr.map((x) => f2(x.toEvent)).join(', ')} s to the job's end event (${rr.map((x) => f2(x.toExit)).join(', ')} s to virsh's exit); operator ${oo.map((x) => f2(x.toCompleted)).join(', ')} s; ratio ${f2(sum(oo.map((x) => x.toCompleted)) / sum(rr.map((x) => x.toEvent)))}`,
    );
  }

  const ratiosEvent = Array.from(
    { length: ROUNDS },
    (_, i) =>
      sum(op.filter((x) => x.round === i + 1).map((x) => x.toCompleted)) /
      sum(raw.filter((x) => x.round === i + 1).map((x) => x.toEvent)),
  );
  const ratiosExit = Array.from(
    { length: ROUNDS },
    (_, i) =>
      sum(op.filter((x) => x.round === i + 1).map((x) => x.toCompleted)) /
      sum(raw.filter((x) => x.round === i + 1).map((x) => x.toExit)),
  );
  const cpuLine = (runs: readonly { cpu: Cpu }[]): string =>
    `libvirtd+QEMU ${f2(median(runs.map((x) => x.cpu.launcher)))} s, operator+its virsh ${f2(median(runs.map((x) => x.cpu.operator)))} s, kube-apiserver ${f2(median(runs.map((x) => x.cpu.apiserver)))} s, etcd ${f2(median(runs.map((x) => x.cpu.etcd)))} s, machine ${(100 * median(runs.map((x) => x.cpu.machineBusy))).toFixed(0)}% busy`;
  say('');
  say(
    `bench: ${ROUNDS} round(s) x 4 measured identical chains (+1 warm-up each): 3 layers, ${SIZE_MIB} MiB virtual, ${ALLOCATED_MIB} MiB allocated (${pulledMiB.toFixed(0)} MiB pulled); ABBA / BAAB order; chains read into the page cache before each run: ${WARM_CHAINS ? 'yes' : 'no'}`,
  );
  say(`bench: load average (1/5/15 min) per round: ${loads.join('; ')}`);
  say(`bench: warm-up virsh blockpull --wait (not counted): ${warmups.map(f2).join(', ')} s`);
  say(
    `bench: raw, t0 -> job end event:         ${raw.map((x) => f2(x.toEvent)).join(', ')} s (${spread(raw.map((x) => x.toEvent))})`,
  );
  say(
    `bench: raw, t0 -> virsh --wait exit:     ${raw.map((x) => f2(x.toExit)).join(', ')} s (${spread(raw.map((x) => x.toExit))}; --wait checks every 0.5 s)`,
  );
  say(
    `bench: operator, t0 -> Completed seen:   ${op.map((x) => f2(x.toCompleted)).join(', ')} s (${spread(op.map((x) => x.toCompleted))})`,
  );
  say(
    `bench: operator runs split: ${op.map((o) => `job started by ${o.toJobStarted !== undefined ? f2(o.toJobStarted) : '?'} s, ended ${f2(o.toJobEnd)} s, Completed seen ${f2(o.toCompleted)} s`).join('; ')}`,
  );
  say(`bench: phases seen: ${op.map((o) => o.phases.join(' -> ')).join('; ')}`);
  say(`bench: CPU used during a run (median): raw side: ${cpuLine(raw)}; operator side: ${cpuLine(op)}`);
  say(
    `bench: status writes per job: ${op.map((w) => `${w.writes.watch} (watch) / ${w.writes.metric} (blockpull_status_writes_total)`).join(', ')}`,
  );
  say(`bench: reconciles per job (blockpull_reconcile_total): ${op.map((w) => w.reconciles).join(', ')}`);
  say(`bench: all disks flattened to identical data: ${allIdentical ? 'yes' : 'NO'}`);
  say(
    `bench: per-round ratio operator / raw: ${ratiosEvent.map(f2).join(', ')} (to the job's end event); ${ratiosExit.map(f2).join(', ')} (to virsh --wait's exit)`,
  );
  say(
    `bench: RESULT apply-to-Completed / virsh blockpull = ${f2(sum(op.map((x) => x.toCompleted)) / sum(raw.map((x) => x.toEvent)))} to the job's end event, ${f2(sum(op.map((x) => x.toCompleted)) / sum(raw.map((x) => x.toExit)))} to --wait's exit (sums over ${ROUNDS} ABBA rounds; per round ${f2(Math.min(...ratiosEvent))}-${f2(Math.max(...ratiosEvent))}); status writes per job = ${op.map((w) => w.writes.metric).join(', ')}`,
  );
  if (!allIdentical) process.exitCode = 1;
}

main()
  .catch((err: unknown) => {
    say(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
