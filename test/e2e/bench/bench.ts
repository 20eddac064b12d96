/**
 * `npm run bench`: from ONE run, on five identical 3-layer chains with 2 GiB allocated in the
 * same stand-in VM:
 * - apply-to-Completed: from `kubectl apply` of a BlockPull (no bandwidth limit) until a watch
 *   sees phase Completed, with the operator as its own process;
 * - `virsh blockpull --wait` run directly against the same libvirt;
 * measured in the order virsh, operator, operator, virsh (ABBA) against machine-load drift;
 * - their ratio (sums), and the number of status writes per job, counted twice: status changes
 *   seen by a watch on the object (`kubectl get -w`), and the operator's blockpull_status_writes_total.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { VirshDriver } from '../../../operator/src/hypervisor/virsh-driver.ts';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../cluster/crds.ts';
import { REPO_ROOT, startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { startLauncher, type Launcher } from '../launcher/launcher.ts';
import { blockPullManifest, createFakeVmi, ensureNamespace, operatorServiceAccount, startOperator, type OperatorProcess } from '../demo/harness.ts';

const NS = 'bench';
const VMI = 'bench-vm';
const ALLOCATED_MIB = Number(process.env['BENCH_ALLOCATED_MIB'] ?? 2048);
const SIZE_MIB = Math.max(4096, ALLOCATED_MIB * 2);
const DISKS = ['warmup', 'virsh-1', 'operator-1', 'operator-2', 'virsh-2'];

const say = (m: string): void => {
  process.stdout.write(`${m}\n`);
};

let cp: ControlPlane | undefined;
let launcher: Launcher | undefined;
let operator: OperatorProcess | undefined;
let tmp: string | undefined;

async function cleanup(): Promise<void> {
  if (cp !== undefined && operator !== undefined) await cp.kubectlResult(['delete', 'blockpull', '--all', '-n', NS, '--wait=true', '--timeout=30s']).catch(() => undefined);
  await operator?.stop().catch(() => undefined);
  operator = undefined;
  await launcher?.stop().catch(() => undefined);
  launcher = undefined;
  await cp?.stop().catch(() => undefined);
  cp = undefined;
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
  tmp = undefined;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    void cleanup().finally(() => process.exit(130));
  });
}

interface WatchResult {
  completedAt: number;
  statusChanges: number;
  phases: string[];
}

/** `kubectl get bp -w -o json`: resolves when Completed; counts status changes between events. */
function watchUntilCompleted(kubectl: string, kubeconfig: string, name: string, timeoutMs: number): { ready: Promise<void>; done: Promise<WatchResult> } {
  // Watch the collection (works before the object exists), filter by name.
  const child = spawn(kubectl, ['--kubeconfig', kubeconfig, 'get', 'blockpulls', '-n', NS, '-w', '-o', 'json', '--output-watch-events'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
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
  const done = new Promise<WatchResult>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`BlockPull ${name} not Completed within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('spawn', () => resolveReady());
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
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
          const ev = JSON.parse(buf) as { type: string; object: { metadata: { name: string; resourceVersion: string }; status?: { phase?: string } } };
          buf = '';
          if (ev.object.metadata.name !== name) continue;
          const status = JSON.stringify(ev.object.status ?? null);
          if (ev.object.metadata.resourceVersion !== prevRv && prevStatus !== undefined && status !== prevStatus) statusChanges++;
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
  return { ready, done };
}

/** Flush dirty pages (chain building, the previous pull) so neither measurement pays for the other's writeback. */
async function syncDisks(): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const c = spawn('sync', [], { stdio: 'ignore' });
    c.on('error', reject);
    c.on('exit', () => resolve());
  });
}

async function statusWritesMetric(port: number | undefined): Promise<number | undefined> {
  if (port === undefined) return undefined;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const m of text.matchAll(/^blockpull_status_writes_total\{[^}]*\} (\d+)/gm)) sum += Number(m[1]);
  return sum;
}

async function main(): Promise<void> {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-bench-'));
  const registryDir = path.join(tmp, 'launchers');
  say('bench: starting the control plane');
  cp = await startControlPlane({ stateDir: path.join(REPO_ROOT, '.cache', 'bench-cluster') });
  await installCrds(cp, [...(await projectCrdFiles()), VMI_CRD_FILE]);
  await ensureNamespace(cp, NS);
  say(`bench: building five identical 3-layer chains (${SIZE_MIB} MiB virtual, ${ALLOCATED_MIB} MiB allocated) in one stand-in VM`);
  launcher = await startLauncher({
    namespace: NS,
    vmiName: VMI,
    registryDir,
    disks: DISKS.map((name) => ({ name, layers: 3, sizeMiB: SIZE_MIB, allocatedMiB: ALLOCATED_MIB })),
  });
  const opDisk = launcher.disks[1];
  await createFakeVmi(cp, { namespace: NS, vmiName: VMI, launcher, disks: DISKS });
  const sa = await operatorServiceAccount(cp);
  operator = await startOperator({ kubeconfig: sa, registryDir, name: 'bench-operator', env: { BLOCKPULL_LOG_LEVEL: 'info' } });

  // Four identical chains, measured in the order virsh, operator, operator, virsh (ABBA), so a drift
  // in machine load or cache state during the run weighs on both sides alike.
  const virshSeconds: number[] = [];
  const operatorSeconds: number[] = [];
  const writes: { watch: number; metric: number }[] = [];
  const phases: string[][] = [];
  const overheads: { toStart: number; job: number; toCompleted: number }[] = [];
  const timeVirsh = async (diskName: string): Promise<void> => {
    await syncDisks();
    const d = launcher!.disks.find((x) => x.name === diskName)!;
    const t1 = performance.now();
    const r = await launcher!.runner.run(['virsh', '-c', launcher!.uri, 'blockpull', '--domain', launcher!.domain, '--path', d.target, '--wait'], { timeoutMs: 600_000 });
    virshSeconds.push((performance.now() - t1) / 1000);
    if (r.exitCode !== 0) throw new Error(`virsh blockpull --wait failed: ${r.stderr}`);
  };
  const timeOperator = async (diskName: string): Promise<void> => {
    await syncDisks();
    const before = (await statusWritesMetric(operator!.metricsPort())) ?? 0;
    const file = path.join(tmp!, `${diskName}.yaml`);
    await writeFile(file, blockPullManifest({ namespace: NS, name: diskName, vmiName: VMI, disk: diskName }));
    const watch = watchUntilCompleted(cp!.binaries.kubectl, cp!.kubeconfigPath, diskName, 600_000);
    await watch.ready;
    await new Promise((r) => setTimeout(r, 1_500)); // let kubectl establish the watch
    // Watch the job on libvirt too, to split the time into the pull itself and the operator's share.
    const target = launcher!.disks.find((x) => x.name === diskName)!.target;
    const driver = new VirshDriver(launcher!.runner, launcher!.uri);
    let jobStart: number | undefined;
    let jobEnd: number | undefined;
    let watching = true;
    const jobWatch = (async () => {
      while (watching && jobEnd === undefined) {
        const job = await driver.getJob(launcher!.domain, target).catch(() => null);
        const now = performance.now();
        if (job !== null) jobStart ??= now;
        else if (jobStart !== undefined) jobEnd = now;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const t0 = performance.now();
    await cp!.kubectl(['apply', '-f', file]);
    const result = await watch.done;
    watching = false;
    await jobWatch;
    operatorSeconds.push((result.completedAt - t0) / 1000);
    if (jobStart !== undefined && jobEnd !== undefined) {
      overheads.push({ toStart: (jobStart - t0) / 1000, job: (jobEnd - jobStart) / 1000, toCompleted: (result.completedAt - jobEnd) / 1000 });
    }
    await new Promise((r) => setTimeout(r, 500));
    writes.push({ watch: result.statusChanges, metric: ((await statusWritesMetric(operator!.metricsPort())) ?? 0) - before });
    phases.push(result.phases);
  };
  // The first pull of a run is always much faster (~3 s here, whoever runs it: the host's disk
  // bursts); an unmeasured warm-up pull puts every measured run in the same steady state.
  await timeVirsh('warmup');
  const warmupSeconds = virshSeconds.pop()!;
  await timeVirsh('virsh-1');
  await timeOperator('operator-1');
  await timeOperator('operator-2');
  await timeVirsh('virsh-2');

  const ref = await launcher.reference('virsh-1');
  let opChainOk = true;
  for (const d of ['operator-1', 'operator-2', 'virsh-2']) opChainOk = (await launcher.compare(d, ref)) && opChainOk;
  const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
  const fmt = (xs: number[]): string => xs.map((x) => `${x.toFixed(2)} s`).join(', ');
  say('');
  say(`bench: 4 measured identical chains (+1 warm-up): ${opDisk!.chain.length} layers, ${SIZE_MIB} MiB virtual, ${ALLOCATED_MIB} MiB allocated (${(opDisk!.pullBytes / 1024 / 1024).toFixed(0)} MiB pulled); order virsh, operator, operator, virsh`);
  say(`bench: warm-up virsh blockpull --wait (not counted): ${warmupSeconds.toFixed(2)} s`);
  say(`bench: virsh blockpull --wait:        ${fmt(virshSeconds)}`);
  say(`bench: apply-to-Completed (operator): ${fmt(operatorSeconds)}; phases seen: ${phases.map((p) => p.join(' -> ')).join('; ')}`);
  say(
    `bench: operator runs split: ${overheads.map((o) => `apply->job started ${o.toStart.toFixed(2)} s + job ${o.job.toFixed(2)} s + job end->Completed seen ${o.toCompleted.toFixed(2)} s`).join('; ')} (libvirt polled every 50 ms)`,
  );
  say(`bench: status writes per job: ${writes.map((w) => `${w.watch} (watch) / ${w.metric} (blockpull_status_writes_total)`).join(', ')}`);
  say(`bench: all four disks flattened to identical data: ${opChainOk ? 'yes' : 'NO'}`);
  say(`bench: RESULT apply-to-Completed / virsh blockpull --wait = ${(sum(operatorSeconds) / sum(virshSeconds)).toFixed(2)} (sum over the ABBA runs); status writes per job = ${writes.map((w) => w.metric).join(', ')}`);
  if (!opChainOk) process.exitCode = 1;
}

main()
  .catch((err: unknown) => {
    say(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
