/**
 * `npm run bench:exec-fanout [-- --pods 10] [--allocated-mib 512] [--raw-first]`: many pulls through
 * pods/exec at once, on the real test bed.
 *
 * A control plane with a real node (kubelet + containerd, test/e2e/node), and `--pods` virt-launcher
 * stand-in PODS on it (test/e2e/node/launcher-pod.ts: session libvirtd + a paused TCG domain, no guest
 * OS), each with two identical 3-layer qcow2 chains: `opdisk` (vda) and `rawdisk` (vdb).
 * - Phase A: the operator as in the image (dist/, the ENTRYPOINT's node flags), exec transport
 *   (virsh through pods/exec, operator/src/kubevirt/exec-runner.ts), its concurrency limits raised to
 *   the pod count; one BlockPull per pod on `opdisk`, all created at once. Sampled every SAMPLE_MS:
 *   the operator's CPU (/proc/<pid>/stat utime+stime) and RSS, its ESTABLISHED TCP connections to the
 *   API server (/proc/<pid>/net/tcp: every pods/exec WebSocket is one), kube-apiserver's CPU, the
 *   BlockPulls Running (a watch). The kubelet's and containerd's CPU (they carry the exec streams)
 *   and the API server's pods/exec CONNECTs are taken over the whole phase.
 * - Phase B: `virsh blockpull --wait` on `rawdisk` in every pod, all started at once, each through one
 *   pods/exec session of this process (the project's ExecRunner: no kubectl start-up per run).
 * Both phases: t0 just before the pulls are asked for (after a `sync`); each disk's job end is seen
 * by a `virsh event --loop` per pod, open for the whole bench (the same observer on both sides).
 * Aggregate throughput = bytes of all pulls / (t0 -> the last end). Data: the chain of every disk is
 * one image after its phase, and `qemu-img compare` of the first and last pod's disk against a flat
 * copy of the chain made before the pulls.
 * Prints a table and one JSON line (RESULT); the per-pull figures and the 100-pull extrapolation are
 * computed by exec-fanout-figures.ts.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync, statfsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Watch } from '@kubernetes/client-node';
import { z } from 'zod';
import { parseBlockJobEventLine } from '../../../operator/src/hypervisor/virsh-parse.ts';
import { ExecRunner } from '../../../operator/src/kubevirt/exec-runner.ts';
import { loadKubeConfig } from '../../../operator/src/kube/client.ts';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../cluster/crds.ts';
import { readAuditLog, startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { launcherImage } from '../images/images.ts';
import { chainInDomainXml } from '../launcher/disk-chain.ts';
import { planChain, POD_DISK_DATA } from '../launcher/recipe.ts';
import { launcherPodManifest, launcherVmiManifest, LAUNCHER_URI, type LauncherDiskSpec } from '../node/launcher-pod.ts';
import { nodeApiserverArgs, startNode, type Node } from '../node/kubelet.ts';
import {
  blockPullManifest,
  buildOperator,
  imageNodeArgs,
  operatorServiceAccount,
  startOperator,
  type OperatorProcess,
} from '../operator-fixture/fixture.ts';
import { diffCounts, formatCounts, parseRequestTotals, type RequestCounts } from '../support/apiserver-metrics.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { cleanupOnSignals, findProcesses, listPids, run } from '../support/process.ts';
import { cpuSeconds, loadAverages, machineJiffies, memAvailableMiB, pssMiB, statusMiB } from '../support/procfs.ts';
import { tcpConnectionsTo } from '../support/sockets.ts';
import { sleep, waitFor } from '../support/wait.ts';
import {
  aggregateMiBps,
  counterByLabels,
  counterDelta,
  execCommandOf,
  extrapolate,
  perPull,
  windowFigures,
  type Sample,
} from './exec-fanout-figures.ts';

const { values } = parseArgs({
  options: {
    pods: { type: 'string', default: '10' },
    'allocated-mib': { type: 'string', default: '512' },
    'raw-first': { type: 'boolean', default: false },
  },
});
const Args = z.object({
  /** The node's kubelet runs at most 30 pods (node/kubelet.ts maxPods). */
  pods: z.number().int().min(1).max(30),
  allocatedMiB: z.number().int().min(64).max(4096),
  rawFirst: z.boolean(),
});
const args = Args.parse({
  pods: Number(values.pods),
  allocatedMiB: Number(values['allocated-mib']),
  rawFirst: values['raw-first'],
});

const STATE_DIR = path.join(REPO_ROOT, '.cache', 'exec-fanout-cluster');
const NS = 'fanout';
const LAYERS = 3;
const SIZE_MIB = args.allocatedMiB * 2;
const DISKS: readonly LauncherDiskSpec[] = [
  { name: 'opdisk', layers: LAYERS, sizeMiB: SIZE_MIB, allocatedMiB: args.allocatedMiB },
  { name: 'rawdisk', layers: LAYERS, sizeMiB: SIZE_MIB, allocatedMiB: args.allocatedMiB },
];
const TARGET = { opdisk: 'vda', rawdisk: 'vdb' } as const;
const SAMPLE_MS = 500;
const IDLE_MS = 5_000;
const PULL_TIMEOUT_MS = 30 * 60_000;
/** Where a flat copy of the chain is kept for qemu-img compare (an emptyDir of the pod). */
const REF = '/var/run/kubevirt-private/ref.qcow2';

const say = (m: string): void => void process.stdout.write(`${m}\n`);
const f = (x: number, d = 2): string => (Number.isFinite(x) ? x.toFixed(d) : String(x));
const load = loadAverages;

interface Pod {
  readonly index: number;
  readonly vmi: string;
  readonly pod: string;
  readonly domain: string;
  readonly runner: ExecRunner;
}

let cp: ControlPlane | undefined;
let node: Node | undefined;
let operator: OperatorProcess | undefined;
let tmp: string | undefined;
const stops: (() => void)[] = [];

async function cleanup(): Promise<void> {
  for (const s of stops.splice(0)) s();
  if (cp !== undefined && operator !== undefined)
    await cp
      .kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s'])
      .catch(() => undefined);
  await operator?.stop().catch(() => undefined);
  operator = undefined;
  await node?.stop().catch((err: unknown) => say(`bench: node stop: ${String(err)}`));
  node = undefined;
  await cp?.stop().catch(() => undefined);
  cp = undefined;
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
  tmp = undefined;
}
cleanupOnSignals(cleanup);

/** The top image of a disk in the pod, as the recipe makes it. */
function topOf(disk: string): string {
  const plan = planChain({
    dir: path.join(POD_DISK_DATA, disk),
    name: disk,
    layers: LAYERS,
    sizeMiB: SIZE_MIB,
    allocatedMiB: args.allocatedMiB,
  });
  return plan.chain[0]!;
}
const PULL_BYTES = planChain({
  dir: '/',
  name: 'x',
  layers: LAYERS,
  sizeMiB: SIZE_MIB,
  allocatedMiB: args.allocatedMiB,
}).pullBytes;

async function must(p: Pod, argv: string[], timeoutMs = 600_000): Promise<string> {
  const r = await p.runner.run(argv, { timeoutMs });
  if (r.exitCode !== 0) throw new Error(`${p.pod}: ${argv.join(' ')} exited ${r.exitCode}: ${r.stderr.trim()}`);
  return r.stdout;
}
const virsh = (p: Pod, ...a: string[]): Promise<string> => must(p, ['virsh', '-q', '-c', LAUNCHER_URI, ...a]);

/** Make QEMU write its cached qcow2 metadata, so qemu-img (outside QEMU) sees the current data. */
async function flush(p: Pod, disk: string): Promise<void> {
  await virsh(
    p,
    'qemu-monitor-command',
    p.domain,
    '--hmp',
    `qemu-io -d /machine/peripheral/ua-${disk}/virtio-backend "flush"`,
  );
}

/** The chain of every pod's disk is one image, and the checked pods' disk holds the reference data. */
async function verify(pods: readonly Pod[], checked: readonly Pod[], disk: 'opdisk' | 'rawdisk'): Promise<string[]> {
  const out: string[] = [];
  for (const p of pods) {
    const chain = chainInDomainXml(await virsh(p, 'dumpxml', p.domain), disk);
    if (chain.length !== 1) throw new Error(`${p.pod} ${disk}: chain of ${chain.length} after the pull`);
  }
  for (const p of checked) {
    await flush(p, disk);
    const r = (await must(p, ['qemu-img', 'compare', '-U', topOf(disk), REF])).trim();
    if (r !== 'Images are identical.') throw new Error(`${p.pod} ${disk}: qemu-img compare: ${r}`);
    out.push(`${p.pod}/${disk}: ${r}`);
  }
  return out;
}

/** The launcher's processes: those of its container carry POD_NAME (libvirtd, the entrypoint); QEMU names the domain. */
function launcherPids(p: Pod): number[] {
  const pids = new Set(findProcesses([`guest=${p.domain}`]).map((x) => x.pid));
  for (const pid of listPids()) {
    try {
      if (readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`POD_NAME=${p.pod}`)) pids.add(pid);
    } catch {
      /* gone, or not ours to read */
    }
  }
  return [...pids];
}

/** Who carries the pulls besides the operator, and their CPU seconds so far. */
interface CpuParties {
  readonly apiserver: number;
  readonly kubelet: number;
  readonly containerd: number;
  /** containerd-shim of the pods, with the children they reaped: runc and every exec'd command. */
  readonly shims: number;
  /** libvirtd and QEMU of every launcher (QEMU does the copying). */
  readonly launchers: number;
}
function cpuParties(pids: {
  apiserver: number | undefined;
  kubelet: number | undefined;
  containerd: number | undefined;
  shims: readonly number[];
  launchers: readonly number[];
}): CpuParties {
  const sum = (xs: readonly number[], children: boolean): number =>
    xs.reduce((a, pid) => a + cpuSeconds(pid, children), 0);
  return {
    apiserver: cpuSeconds(pids.apiserver),
    kubelet: cpuSeconds(pids.kubelet),
    containerd: cpuSeconds(pids.containerd),
    shims: sum(pids.shims, true),
    launchers: sum(pids.launchers, false),
  };
}
function cpuDelta(a: CpuParties, b: CpuParties): CpuParties {
  return {
    apiserver: b.apiserver - a.apiserver,
    kubelet: b.kubelet - a.kubelet,
    containerd: b.containerd - a.containerd,
    shims: b.shims - a.shims,
    launchers: b.launchers - a.launchers,
  };
}
const cpuLine = (c: CpuParties): string =>
  `kube-apiserver ${f(c.apiserver)} s, kubelet ${f(c.kubelet)} s, containerd ${f(c.containerd)} s, pod shims + runc + exec'd commands ${f(c.shims)} s, libvirtd + QEMU ${f(c.launchers)} s`;

async function apiMetrics(): Promise<RequestCounts> {
  return parseRequestTotals(await cp!.kubectl(['get', '--raw', '/metrics'], { timeoutMs: 60_000 }));
}

async function main(): Promise<void> {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-fanout-'));
  say(
    `bench: ${args.pods} launcher pods, ${LAYERS}-layer chains of ${SIZE_MIB} MiB with ${args.allocatedMiB} MiB allocated (${f(PULL_BYTES / 2 ** 20, 0)} MiB pulled per disk); load ${load()}`,
  );
  const image = await launcherImage();
  say('bench: building the operator as the image runs it (tsc into dist/)');
  const main = await buildOperator();
  cp = await startControlPlane({
    stateDir: STATE_DIR,
    extraApiserverArgs: nodeApiserverArgs(STATE_DIR),
    // Every pods/exec request at Metadata level: what each session ran (its requestURI) and how long it lasted.
    audit: { rules: [{ level: 'Metadata', resources: [{ group: '', resources: ['pods/exec'] }] }] },
  });
  const apiserverPid = cp.processes.find((p) => p.name === 'kube-apiserver')?.pid;
  await installCrds(cp, [...(await projectCrdFiles()), VMI_CRD_FILE]);
  node = await startNode(cp, { images: [image] });
  const kubeletPid = node.record.daemons.find((d) => d.name === 'kubelet')?.pid;
  const containerdPid = node.record.daemons.find((d) => d.name === 'containerd')?.pid;
  await cp.kubectl(['create', 'namespace', NS]);
  await waitFor(
    'default service account',
    60_000,
    async () => (await cp!.kubectlResult(['-n', NS, 'get', 'serviceaccount', 'default'])).exitCode === 0,
  );
  const kc = loadKubeConfig(cp.kubeconfigPath);
  const pods: Pod[] = Array.from({ length: args.pods }, (_, index) => {
    const vmi = `fan-${index}`;
    const pod = `virt-launcher-${vmi}-x`;
    return { index, vmi, pod, domain: `${NS}_${vmi}`, runner: new ExecRunner({ kc, namespace: NS, pod }) };
  });

  // --- the launcher pods -----------------------------------------------------------------------
  const memBefore = memAvailableMiB();
  const tPods = performance.now();
  for (const p of pods) {
    const vmi = launcherVmiManifest({
      namespace: NS,
      vmiName: p.vmi,
      podUid: 'pending',
      nodeName: node.name,
      disks: DISKS,
    });
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify({ ...vmi, status: undefined }) });
    const vmiUid = (await cp.kubectl(['get', 'vmi', p.vmi, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim();
    const manifest = launcherPodManifest({
      namespace: NS,
      podName: p.pod,
      vmiName: p.vmi,
      vmiUid,
      image: image.name,
      disks: DISKS,
      nodeName: node.name,
    });
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(manifest) });
  }
  say(`bench: ${args.pods} pods created; waiting until every launcher is Ready (chains built, domain up)`);
  await cp.kubectl(['wait', '--for=condition=Ready', 'pod', '--all', '-n', NS, '--timeout=1200s'], {
    timeoutMs: 1_210_000,
  });
  const podsReadyS = (performance.now() - tPods) / 1000;
  for (const p of pods) {
    const podUid = (await cp.kubectl(['get', 'pod', p.pod, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim();
    const status = launcherVmiManifest({ namespace: NS, vmiName: p.vmi, podUid, nodeName: node.name, disks: DISKS })[
      'status'
    ];
    await cp.kubectl(['patch', 'vmi', p.vmi, '-n', NS, '--type=merge', '-p', JSON.stringify({ status })]);
  }
  const launcherPidsOf = pods.map(launcherPids);
  const launcherMiB = launcherPidsOf.map((pids) => pids.reduce((a, pid) => a + pssMiB(pid), 0));
  const shimPids = findProcesses([node.runDir], ['containerd-shim-runc-v2']).map((x) => x.pid);
  const partyPids = {
    apiserver: apiserverPid,
    kubelet: kubeletPid,
    containerd: containerdPid,
    shims: shimPids,
    launchers: launcherPidsOf.flat(),
  };
  const perLauncherMiB = launcherMiB.reduce((a, b) => a + b, 0) / pods.length;
  const memAfter = memAvailableMiB();
  const fs = statfsSync(node.runDir);
  const diskFreeMiB = (fs.bavail * fs.bsize) / 2 ** 20;
  const diskPerPodMiB = DISKS.length * (args.allocatedMiB + PULL_BYTES / 2 ** 20);
  const capacity = {
    pods: args.pods,
    podsReadySeconds: podsReadyS,
    launcherPssMiB: perLauncherMiB,
    memAvailableDropMiB: memBefore - memAfter,
    memAvailableMiB: memAfter,
    moreByMemory: Math.floor(memAfter / Math.max(1, perLauncherMiB)),
    diskFreeMiB,
    diskPerPodAfterPullsMiB: diskPerPodMiB,
    kubeletMaxPods: 30,
  };
  say(
    `bench: ${args.pods} launchers Ready in ${f(podsReadyS, 0)} s; per launcher ${f(perLauncherMiB, 0)} MiB PSS (libvirtd + QEMU + shell); MemAvailable ${f(memAfter, 0)} MiB (dropped ${f(memBefore - memAfter, 0)} MiB, page cache of the chains included); disk free ${f(diskFreeMiB / 1024, 1)} GiB`,
  );

  // Flat references for qemu-img compare: the first and the last pod (identical chains per disk).
  const checked = pods.length > 1 ? [pods[0]!, pods.at(-1)!] : [pods[0]!];
  for (const p of checked) await must(p, ['qemu-img', 'convert', '-U', '-O', 'qcow2', topOf('opdisk'), REF]);

  // --- the observers, open for the whole bench ------------------------------------------------
  const jobEnd = new Map<string, number>(); // `${pod}/${target}` -> performance.now()
  for (const p of pods) {
    const h = p.runner.stream([
      'virsh',
      '-q',
      '-c',
      LAUNCHER_URI,
      'event',
      '--domain',
      p.domain,
      '--event',
      'block-job-2',
      '--loop',
      '--timestamp',
    ]);
    stops.push(() => h.stop());
    void (async () => {
      for await (const line of h.lines) {
        const ev = parseBlockJobEventLine(line);
        if (ev !== null) jobEnd.set(`${p.pod}/${ev.target}`, performance.now());
      }
    })().catch(() => undefined);
  }
  const phases = new Map<string, string>(); // BlockPull name -> phase
  const completedAt = new Map<string, number>();
  let watchAbort: AbortController | undefined;
  let watchStopped = false;
  const onBlockPull = (_type: string, obj: unknown): void => {
    const o = obj as { metadata?: { name?: string }; status?: { phase?: string } };
    const name = o.metadata?.name;
    if (name === undefined) return;
    const phase = o.status?.phase ?? '';
    phases.set(name, phase);
    if (phase === 'Completed' && !completedAt.has(name)) completedAt.set(name, performance.now());
  };
  // A watch can end (measured: in a --raw-first run with 1023 MiB disks it ended during phase B
  // and phase A waited for a Completed it could not see): it is opened again at once, and lists
  // every BlockPull as ADDED (one Completed meanwhile is stamped when it is seen again).
  const openWatch = async (): Promise<void> => {
    watchAbort = await new Watch(kc).watch(
      `/apis/blockpull.dev/v1alpha1/namespaces/${NS}/blockpulls`,
      {},
      onBlockPull,
      (err: unknown) => {
        if (watchStopped) return;
        say(`bench: the BlockPull watch ended (${err instanceof Error ? err.message : 'closed'}); opening it again`);
        openWatch().catch((e: unknown) => say(`bench: the BlockPull watch could not be opened again: ${String(e)}`));
      },
    );
  };
  await openWatch();
  stops.push(() => {
    watchStopped = true;
    watchAbort?.abort();
  });
  await sleep(2_000); // let the streams and the watch establish

  const apiserverPort = cp.ports.apiserver;
  const results: Record<string, unknown> = {};
  const report: string[] = [];

  const phaseA = async (): Promise<void> => {
    operator = await startOperator({
      kubeconfig: await operatorServiceAccount(cp!),
      registryDir: '',
      name: 'fanout-op',
      main,
      nodeArgs: imageNodeArgs(),
      env: {
        BLOCKPULL_TRANSPORT: 'exec',
        BLOCKPULL_LOCAL_LAUNCHERS_DIR: '',
        BLOCKPULL_LOG_LEVEL: process.env['BENCH_OPERATOR_LOG_LEVEL'] ?? 'info',
        BLOCKPULL_MAX_CONCURRENT_PULLS: String(args.pods),
        BLOCKPULL_MAX_PULLS_PER_NODE: String(args.pods),
        BLOCKPULL_WORKERS: String(Math.max(16, args.pods)),
        BLOCKPULL_LEASE_DURATION_MS: '15000',
        BLOCKPULL_RENEW_DEADLINE_MS: '10000',
        BLOCKPULL_RETRY_PERIOD_MS: '2000',
      },
    });
    const pid = operator.child.pid!;
    const sample = (t0: number): Sample => ({
      tS: (performance.now() - t0) / 1000,
      operatorCpuS: cpuSeconds(pid),
      apiserverCpuS: cpuSeconds(apiserverPid),
      running: [...phases.values()].filter((x) => x === 'Running').length,
      rssMiB: statusMiB(pid, 'VmRSS'),
      sockets: tcpConnectionsTo(apiserverPort, pid),
    });
    const COUNTERS = ['blockpull_reconcile_total', 'blockpull_status_writes_total'] as const;
    const operatorCounters = async (): Promise<Map<string, Map<string, number>>> => {
      const text = await (await fetch(`http://127.0.0.1:${operator!.metricsPort()}/metrics`)).text();
      return new Map(COUNTERS.map((c) => [c, counterByLabels(text, c)]));
    };
    const operatorDelta = (
      a: Map<string, Map<string, number>>,
      b: Map<string, Map<string, number>>,
    ): Map<string, Map<string, number>> =>
      new Map(
        COUNTERS.map((c) => [
          c,
          counterDelta(a.get(c) ?? new Map<string, number>(), b.get(c) ?? new Map<string, number>()),
        ]),
      );
    // Idle: the operator up, nothing to pull.
    await sleep(3_000);
    const idleSamples: Sample[] = [];
    const tIdle = performance.now();
    while (performance.now() - tIdle < IDLE_MS) {
      idleSamples.push(sample(tIdle));
      await sleep(SAMPLE_MS);
    }
    idleSamples.push(sample(tIdle));
    const idleW = windowFigures(idleSamples, () => true)!;
    const idle = {
      operatorCores: idleW.operatorCores,
      apiserverCores: idleW.apiserverCores,
      rssMiB: idleW.meanRssMiB,
      sockets: idleW.meanSockets,
    };

    await run(['sync'], { allowExit: true });
    const manifests = pods
      .map((p) => blockPullManifest({ namespace: NS, name: `pull-${p.index}`, vmiName: p.vmi, disk: 'opdisk' }))
      .join('---\n');
    const m0 = await apiMetrics();
    const op0 = await operatorCounters();
    const parties0 = cpuParties(partyPids);
    const j0 = machineJiffies();
    const loadA = load();
    const t0Wall = Date.now();
    const t0 = performance.now();
    const samples: Sample[] = [sample(t0)];
    const timer = setInterval(() => samples.push(sample(t0)), SAMPLE_MS);
    stops.push(() => clearInterval(timer));
    await cp!.kubectl(['apply', '-f', '-'], { input: manifests });
    // A Failed pull ends the wait at once (waitFor retries a check that throws).
    const failed = await waitFor('every BlockPull Completed (or one Failed)', PULL_TIMEOUT_MS, () => {
      const bad = pods.find((p) => phases.get(`pull-${p.index}`) === 'Failed');
      if (bad !== undefined) return `pull-${bad.index}`;
      return completedAt.size === pods.length ? 'none' : undefined;
    });
    if (failed !== 'none') throw new Error(`${failed} Failed; operator log ${operator?.logPath}`);
    clearInterval(timer);
    samples.push(sample(t0));
    const j1 = machineJiffies();
    const parties = cpuDelta(parties0, cpuParties(partyPids));
    const m1 = await apiMetrics();
    const opCounts = operatorDelta(op0, await operatorCounters());
    const requests = diffCounts(m0, m1);
    await sleep(1_000); // the last job end events
    const ends = pods.map((p) => jobEnd.get(`${p.pod}/${TARGET.opdisk}`) ?? NaN);
    if (ends.some((x) => Number.isNaN(x))) throw new Error('phase A: a job end event is missing');
    const bytes = PULL_BYTES * pods.length;
    const toCompleted = aggregateMiBps(bytes, t0, [...completedAt.values()]);
    const toJobEnd = aggregateMiBps(bytes, t0, ends);
    const all = windowFigures(samples, (s) => s.running === pods.length);
    const any = windowFigures(samples, (s) => s.running > 0)!;
    const steady = all ?? any;
    const per = perPull(steady, idle);
    const x100 = extrapolate(per, idle, 100);
    const wallS = (Math.max(...completedAt.values()) - t0) / 1000;
    const whole = {
      operatorCpuS: samples.at(-1)!.operatorCpuS - samples[0]!.operatorCpuS,
      cpuS: parties,
      machineBusy: (j1.busy - j0.busy) / Math.max(1, j1.total - j0.total),
    };
    const execConnects = [...requests].filter(([k]) => k === 'CONNECT pods/exec').reduce((a, [, v]) => a + v, 0);
    // The operator's exec sessions of phase A, by what they ran (audited when each one ended).
    const opUser = 'system:serviceaccount:bp-operator-system:blockpull-operator';
    const sessions = new Map<string, { n: number; seconds: number }>();
    for (const e of await readAuditLog(cp!.auditLogPath!)) {
      if (e.objectRef?.subresource !== 'exec' || e.user.username !== opUser) continue;
      if (Date.parse(e.requestReceivedTimestamp) < t0Wall) continue;
      const what = execCommandOf(e.requestURI) ?? '?';
      const s = sessions.get(what) ?? { n: 0, seconds: 0 };
      s.n++;
      s.seconds += (Date.parse(e.stageTimestamp) - Date.parse(e.requestReceivedTimestamp)) / 1000;
      sessions.set(what, s);
    }
    const verified = await verify(pods, checked, 'opdisk');
    results['A'] = {
      wallSecondsToLastCompleted: wallS,
      wallSecondsToLastJobEnd: (Math.max(...ends) - t0) / 1000,
      aggregateMiBpsToCompleted: toCompleted,
      aggregateMiBpsToJobEnd: toJobEnd,
      idle,
      steadyWindow: { allRunning: all !== undefined, ...steady },
      anyRunningWindow: any,
      perPull: per,
      extrapolated100: x100,
      wholePhase: whole,
      execConnects,
      operatorExecSessions: Object.fromEntries(sessions),
      operatorCounters: Object.fromEntries([...opCounts].map(([k, v]) => [k, Object.fromEntries(v)])),
      loadAverage: loadA,
      verified,
    };
    report.push(
      `| A operator (exec) | ${pods.length} | ${f(wallS)} s to the last Completed (${f((Math.max(...ends) - t0) / 1000)} s to the last job end) | ${f(toCompleted, 1)} MiB/s (${f(toJobEnd, 1)} to the job ends) | ${f(100 * whole.machineBusy, 0)} % | ${loadA} |`,
    );
    say('');
    say(
      `bench: phase A figures (window: ${all !== undefined ? `all ${pods.length} Running` : 'NOT all Running at once; any Running'}, ${f(steady.fromS)}-${f(steady.toS)} s, mean ${f(steady.meanRunning, 1)} running)`,
    );
    say('| figure | idle (operator up, no pull) | while pulling | per running pull |');
    say('|---|---|---|---|');
    say(
      `| operator CPU (cores) | ${f(idle.operatorCores, 4)} | ${f(steady.operatorCores, 4)} | ${f(per.operatorCoresPerPull, 4)} |`,
    );
    say(
      `| operator RSS (MiB) | ${f(idle.rssMiB, 1)} | ${f(steady.meanRssMiB, 1)} (max ${f(steady.maxRssMiB, 1)}) | ${f(per.rssMiBPerPull, 2)} |`,
    );
    say(
      `| operator TCP conns to the API server | ${f(idle.sockets, 1)} | ${f(steady.meanSockets, 1)} (max ${steady.maxSockets}) | ${f(per.socketsPerPull, 2)} |`,
    );
    say(
      `| kube-apiserver CPU (cores) | ${f(idle.apiserverCores, 4)} | ${f(steady.apiserverCores, 4)} | ${f(per.apiserverCoresPerPull, 4)} |`,
    );
    say(
      `bench: whole phase A (${f(wallS)} s), CPU seconds: operator ${f(whole.operatorCpuS)} s, ${cpuLine(parties)}; machine ${f(100 * whole.machineBusy, 0)} % busy; pods/exec CONNECTs completed: ${execConnects} (${f(execConnects / pods.length / wallS, 2)} per pull per second)`,
    );
    say(
      `bench: the operator's pods/exec sessions of phase A (audit log; count, mean lifetime): ${[...sessions]
        .sort((x, y) => y[1].n - x[1].n)
        .map(([k, v]) => `${k} ${v.n} (${f(v.seconds / v.n)} s)`)
        .join(', ')}`,
    );
    for (const [c, by] of opCounts) {
      const n = [...by.values()].reduce((x, y) => x + y, 0);
      say(
        `bench: operator ${c} during phase A: ${n} (${f(n / pods.length / wallS, 2)} per pull per second): ${[...by].map(([k, v]) => `${k || '-'} ${v}`).join(', ')}`,
      );
    }
    say(
      `bench: API requests during phase A (kube-apiserver apiserver_request_total; the bench's watch and streams were opened before):`,
    );
    for (const l of formatCounts(requests)) say(`  ${l}`);
    say(
      `bench: EXTRAPOLATED (linear, from the measured per-pull figures): 100 pulls at once -> operator ${f(x100.operatorCores, 3)} cores (${x100.fitsOneCore ? 'fits' : 'does NOT fit'} in one core), ${f(x100.rssMiB, 0)} MiB RSS, ${f(x100.sockets, 0)} TCP connections`,
    );
    say(`bench: phase A data: ${verified.join('; ')}; every opdisk chain is one image`);
  };

  const phaseB = async (): Promise<void> => {
    await run(['sync'], { allowExit: true });
    const j0 = machineJiffies();
    const parties0 = cpuParties(partyPids);
    const loadB = load();
    const t0 = performance.now();
    const exits = await Promise.all(
      pods.map(async (p) => {
        await must(
          p,
          ['virsh', '-q', '-c', LAUNCHER_URI, 'blockpull', '--domain', p.domain, '--path', TARGET.rawdisk, '--wait'],
          PULL_TIMEOUT_MS,
        );
        return performance.now();
      }),
    );
    const j1 = machineJiffies();
    const parties = cpuDelta(parties0, cpuParties(partyPids));
    await sleep(1_000);
    const ends = pods.map((p) => jobEnd.get(`${p.pod}/${TARGET.rawdisk}`) ?? NaN);
    if (ends.some((x) => Number.isNaN(x))) throw new Error('phase B: a job end event is missing');
    const bytes = PULL_BYTES * pods.length;
    const toExit = aggregateMiBps(bytes, t0, exits);
    const toJobEnd = aggregateMiBps(bytes, t0, ends);
    const busy = (j1.busy - j0.busy) / Math.max(1, j1.total - j0.total);
    const verified = await verify(pods, checked, 'rawdisk');
    results['B'] = {
      wallSecondsToLastExit: (Math.max(...exits) - t0) / 1000,
      wallSecondsToLastJobEnd: (Math.max(...ends) - t0) / 1000,
      aggregateMiBpsToExit: toExit,
      aggregateMiBpsToJobEnd: toJobEnd,
      cpuS: parties,
      machineBusy: busy,
      loadAverage: loadB,
      verified,
    };
    report.push(
      `| B raw virsh blockpull --wait | ${pods.length} | ${f((Math.max(...exits) - t0) / 1000)} s to the last exit (${f((Math.max(...ends) - t0) / 1000)} s to the last job end) | ${f(toExit, 1)} MiB/s (${f(toJobEnd, 1)} to the job ends) | ${f(100 * busy, 0)} % | ${loadB} |`,
    );
    say(
      `bench: whole phase B (${f((Math.max(...exits) - t0) / 1000)} s), CPU seconds: ${cpuLine(parties)}; machine ${f(100 * busy, 0)} % busy`,
    );
    say(`bench: phase B data: ${verified.join('; ')}; every rawdisk chain is one image`);
  };

  for (const ph of args.rawFirst ? [phaseB, phaseA] : [phaseA, phaseB]) await ph();

  const a = results['A'] as {
    aggregateMiBpsToCompleted: number;
    aggregateMiBpsToJobEnd: number;
    perPull: { operatorCoresPerPull: number };
    extrapolated100: { operatorCores: number; fitsOneCore: boolean };
  };
  const b = results['B'] as { aggregateMiBpsToExit: number; aggregateMiBpsToJobEnd: number };
  const ratio = {
    completedVsJobEnd: a.aggregateMiBpsToCompleted / b.aggregateMiBpsToJobEnd,
    completedVsExit: a.aggregateMiBpsToCompleted / b.aggregateMiBpsToExit,
    jobEndVsJobEnd: a.aggregateMiBpsToJobEnd / b.aggregateMiBpsToJobEnd,
  };
  say('');
  say(
    `RESULT bench:exec-fanout ${args.pods} pulls at once, ${f(PULL_BYTES / 2 ** 20, 0)} MiB each; order ${args.rawFirst ? 'B, A' : 'A, B'}`,
  );
  say('| phase | pulls | wall | aggregate throughput | machine busy | load avg at start |');
  say('|---|---|---|---|---|---|');
  for (const l of report) say(l);
  say(
    `| ratio A/B | | | ${f(ratio.completedVsJobEnd, 3)} (A to Completed / B to job end; strict), ${f(ratio.completedVsExit, 3)} (A Completed / B --wait exit), ${f(ratio.jobEndVsJobEnd, 3)} (job ends both) | goal >= 0.95 | |`,
  );
  say(
    `| operator CPU per running pull | measured | ${f(1000 * a.perPull.operatorCoresPerPull, 2)} millicores | x100 extrapolated: ${f(a.extrapolated100.operatorCores, 3)} cores (${a.extrapolated100.fitsOneCore ? 'fits' : 'does NOT fit'} in one core) | | |`,
  );
  say(
    `bench: capacity: ${args.pods} launcher pods, ${f(perLauncherMiB, 0)} MiB PSS each; by memory ~${capacity.moreByMemory} more would fit (MemAvailable ${f(memAfter, 0)} MiB); kubelet maxPods ${capacity.kubeletMaxPods}; disk free ${f(diskFreeMiB / 1024, 1)} GiB, ${f(diskPerPodMiB / 1024, 2)} GiB per pod after both pulls; 2 cores shared (load ${load()})`,
  );
  say(
    `JSON ${JSON.stringify({ bench: 'exec-fanout', pods: args.pods, pullMiB: PULL_BYTES / 2 ** 20, order: args.rawFirst ? 'B,A' : 'A,B', capacity, ...results, ratio })}`,
  );
}

main()
  .then(
    () => cleanup(),
    async (err: unknown) => {
      process.stderr.write(
        `bench:exec-fanout failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
      if (operator !== undefined) process.stderr.write(`operator log: ${operator.logPath}\n`);
      await cleanup();
      process.exitCode = 1;
    },
  )
  .finally(() => process.exit());
