/**
 * `npm run bench`: from ONE run, on two identical 3-layer chains with 2 GiB allocated in the
 * same stand-in VM:
 * - apply-to-Completed: from `kubectl apply` of a BlockPull (no bandwidth limit) until a watch
 *   sees phase Completed, with the operator as its own process;
 * - `virsh blockpull --wait` of the other disk, run directly against the same libvirt;
 * - their ratio, and the number of status writes for the job, counted twice: status changes seen
 *   by a watch on the object (`kubectl get -w`), and the operator's blockpull_status_writes_total.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../cluster/crds.ts';
import { REPO_ROOT, startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { startLauncher, type Launcher } from '../launcher/launcher.ts';
import { blockPullManifest, createFakeVmi, ensureNamespace, operatorServiceAccount, startOperator, type OperatorProcess } from '../demo/harness.ts';

const NS = 'bench';
const VMI = 'bench-vm';
const ALLOCATED_MIB = Number(process.env['BENCH_ALLOCATED_MIB'] ?? 2048);
const SIZE_MIB = Math.max(4096, ALLOCATED_MIB * 2);

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
  say(`bench: building two identical 3-layer chains (${SIZE_MIB} MiB virtual, ${ALLOCATED_MIB} MiB allocated) in one stand-in VM`);
  launcher = await startLauncher({
    namespace: NS,
    vmiName: VMI,
    registryDir,
    disks: [
      { name: 'operator', layers: 3, sizeMiB: SIZE_MIB, allocatedMiB: ALLOCATED_MIB },
      { name: 'virsh', layers: 3, sizeMiB: SIZE_MIB, allocatedMiB: ALLOCATED_MIB },
    ],
  });
  const [opDisk, virshDisk] = launcher.disks;
  await createFakeVmi(cp, { namespace: NS, vmiName: VMI, launcher, disks: ['operator', 'virsh'] });
  const sa = await operatorServiceAccount(cp);
  operator = await startOperator({ kubeconfig: sa, registryDir, name: 'bench-operator', env: { BLOCKPULL_LOG_LEVEL: 'info' } });
  const writesBefore = (await statusWritesMetric(operator.metricsPort())) ?? 0;

  // 1. The operator: kubectl apply -> Completed.
  const file = path.join(tmp, 'bp.yaml');
  await writeFile(file, blockPullManifest({ namespace: NS, name: 'bench', vmiName: VMI, disk: 'operator' }));
  const watch = watchUntilCompleted(cp.binaries.kubectl, cp.kubeconfigPath, 'bench', 600_000);
  await watch.ready;
  await new Promise((r) => setTimeout(r, 1_500)); // let kubectl establish the watch
  const t0 = performance.now();
  await cp.kubectl(['apply', '-f', file]);
  const result = await watch.done;
  const operatorSeconds = (result.completedAt - t0) / 1000;
  await new Promise((r) => setTimeout(r, 500));
  const writesMetric = ((await statusWritesMetric(operator.metricsPort())) ?? 0) - writesBefore;

  // 2. virsh blockpull --wait on the identical chain, same libvirt.
  const t1 = performance.now();
  const r = await launcher.runner.run(['virsh', '-c', launcher.uri, 'blockpull', '--domain', launcher.domain, '--path', virshDisk!.target, '--wait'], {
    timeoutMs: 600_000,
  });
  const virshSeconds = (performance.now() - t1) / 1000;
  if (r.exitCode !== 0) throw new Error(`virsh blockpull --wait failed: ${r.stderr}`);

  const opChainOk = await launcher.compare('operator', await launcher.reference('virsh'));
  say('');
  say(`bench: chain ${opDisk!.chain.length} layers, ${ALLOCATED_MIB} MiB allocated (${(opDisk!.pullBytes / 1024 / 1024).toFixed(0)} MiB pulled)`);
  say(`bench: apply-to-Completed (operator): ${operatorSeconds.toFixed(2)} s; phases seen: ${result.phases.join(' -> ')}`);
  say(`bench: virsh blockpull --wait:       ${virshSeconds.toFixed(2)} s`);
  say(`bench: ratio apply-to-Completed / virsh blockpull --wait = ${(operatorSeconds / virshSeconds).toFixed(2)}`);
  say(`bench: status writes for the job: ${result.statusChanges} (status changes seen by a watch), ${writesMetric} (blockpull_status_writes_total)`);
  say(`bench: both disks flattened to identical data: ${opChainOk ? 'yes' : 'NO'}`);
  if (!opChainOk) process.exitCode = 1;
}

main()
  .catch((err: unknown) => {
    say(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
