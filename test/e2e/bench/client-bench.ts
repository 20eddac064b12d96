/**
 * `npm run bench:client`: the cost of one API GET through client-node's own KubeConfig (2.0.x:
 * a new undici Agent, hence a new TLS connection, per request) versus the operator's
 * loadKubeConfig (one keep-alive pool for the process), against a real kube-apiserver, in one run.
 *
 *   node test/e2e/bench/client-bench.ts [--gets 1500] [--rounds 2]
 *
 * Each measurement is a fresh child process (same Node, same kubeconfig) that warms up with 20
 * GETs, then times `--gets` sequential GETs of a Namespace and reports: client CPU per GET
 * (process.cpuUsage), wall time per GET, kube-apiserver CPU per GET (/proc/<pid>/stat utime+stime
 * of the server process), RSS growth, and the TCP connections the child holds to the API server at
 * the end (/proc/self/net/tcp rows of its own sockets). Variants run in ABBA order per round,
 * so a drift in machine load weighs on both alike; the ratios are stock / pooled from medians.
 * BLOCKPULL_KUBECONFIG=<file> uses that cluster instead (no server CPU figures then).
 */
import { run } from '../support/process.ts';
import { loadavg } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { z } from 'zod';
import { createKubeClients, loadKubeConfig } from '../../../operator/src/kube/client.ts';
import { startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { tcpConnectionsTo } from '../support/sockets.ts';
import { cpuSeconds } from '../support/procfs.ts';

const { values } = parseArgs({
  options: {
    gets: { type: 'string', default: '1500' },
    rounds: { type: 'string', default: '2' },
    child: { type: 'string' },
    kubeconfig: { type: 'string' },
    'server-pid': { type: 'string', default: '0' },
  },
});

const VARIANTS = ['stock', 'pooled'] as const;
type Variant = (typeof VARIANTS)[number];

const result = z.object({
  variant: z.enum(VARIANTS),
  gets: z.number(),
  clientCpuMs: z.number(),
  wallMs: z.number(),
  serverCpuMs: z.number().nullable(),
  rssMiB: z.number(),
  connections: z.number(),
});
type Result = z.infer<typeof result>;

/** The API server's CPU time in ms, or null when its pid is unknown or it is gone. */
function serverCpuMs(pid: number): number | null {
  const seconds = pid > 0 ? cpuSeconds(pid) : 0;
  return seconds > 0 ? seconds * 1000 : null;
}

async function child(variant: Variant, kubeconfig: string, gets: number, serverPid: number): Promise<void> {
  let kc: KubeConfig;
  if (variant === 'pooled') kc = loadKubeConfig(kubeconfig);
  else {
    kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
  }
  const { core } = createKubeClients(kc);
  const port = Number(new URL(kc.getCurrentCluster()!.server).port || 443);
  for (let i = 0; i < 20; i++) await core.readNamespace({ name: 'default' });
  const rss0 = process.memoryUsage().rss;
  const server0 = serverCpuMs(serverPid);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < gets; i++) await core.readNamespace({ name: 'default' });
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const server1 = serverCpuMs(serverPid);
  const r: Result = {
    variant,
    gets,
    clientCpuMs: (cpu.user + cpu.system) / 1000 / gets,
    wallMs: wall / gets,
    serverCpuMs: server0 !== null && server1 !== null ? (server1 - server0) / gets : null,
    rssMiB: (process.memoryUsage().rss - rss0) / 1024 / 1024,
    connections: tcpConnectionsTo(port),
  };
  process.stdout.write(`${JSON.stringify(r)}\n`);
  process.exit(0); // the stock variant's stray sockets would keep the process alive for seconds
}

async function runChild(variant: Variant, kubeconfig: string, gets: number, serverPid: number): Promise<Result> {
  const r = await run(
    [
      process.execPath,
      import.meta.filename,
      '--child',
      variant,
      '--kubeconfig',
      kubeconfig,
      '--gets',
      String(gets),
      '--server-pid',
      String(serverPid),
    ],
    {
      allowExit: true,
      timeoutMs: 600_000,
    },
  );
  const out = r.stdout.slice(0, 10_000);
  const line = out.trim().split('\n').at(-1) ?? '';
  try {
    if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
    return result.parse(JSON.parse(line));
  } catch (err) {
    throw new Error(
      `bench child ${variant} failed (${(err as Error).message}): ${out.slice(0, 500)}${r.stderr.slice(-2000)}`,
    );
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function main(): Promise<void> {
  const gets = Number(values.gets);
  const rounds = Number(values.rounds);
  let cp: ControlPlane | undefined;
  let kubeconfig = process.env['BLOCKPULL_KUBECONFIG'];
  let serverPid = 0;
  try {
    if (kubeconfig === undefined) {
      process.stdout.write('bench:client: starting the control plane\n');
      cp = await startControlPlane({ stateDir: path.join(REPO_ROOT, '.cache', 'bench-client-cluster') });
      kubeconfig = cp.kubeconfigPath;
      serverPid = cp.processes.find((p) => p.name === 'kube-apiserver')?.pid ?? 0;
    }
    const load0 = loadavg();
    const results: Result[] = [];
    for (let r = 0; r < rounds; r++) {
      for (const v of ['stock', 'pooled', 'pooled', 'stock'] as const) {
        const res = await runChild(v, kubeconfig, gets, serverPid);
        results.push(res);
        process.stdout.write(
          `bench:client: round ${r + 1} ${v.padEnd(6)} client CPU ${res.clientCpuMs.toFixed(2)} ms/GET, wall ${res.wallMs.toFixed(2)} ms/GET, server CPU ${res.serverCpuMs?.toFixed(2) ?? '-'} ms/GET, RSS +${res.rssMiB.toFixed(0)} MiB, ${res.connections} connection(s) open after ${gets} GETs\n`,
        );
      }
    }
    const load1 = loadavg();
    const of = (v: Variant, f: (x: Result) => number | null): number[] =>
      results.filter((x) => x.variant === v).flatMap((x) => (f(x) === null ? [] : [f(x)!]));
    const row = (label: string, f: (x: Result) => number | null, unit: string, digits = 2): void => {
      const s = of('stock', f);
      const p = of('pooled', f);
      if (s.length === 0 || p.length === 0) return;
      const range = (xs: number[]): string => `${Math.min(...xs).toFixed(digits)}-${Math.max(...xs).toFixed(digits)}`;
      const ratio = median(p) === 0 ? 'n/a' : `x${(median(s) / median(p)).toFixed(2)}`;
      process.stdout.write(
        `bench:client: ${label.padEnd(22)} client-node alone ${median(s).toFixed(digits)} ${unit} (${range(s)}) | one pool ${median(p).toFixed(digits)} ${unit} (${range(p)}) | stock/pooled ${ratio}\n`,
      );
    };
    process.stdout.write(
      `\nbench:client: ${gets} sequential GETs per run, ${rounds} ABBA round(s), medians (range); load average ${load0.map((x) => x.toFixed(2)).join(' ')} at start, ${load1.map((x) => x.toFixed(2)).join(' ')} at end\n`,
    );
    row('client CPU per GET', (x) => x.clientCpuMs, 'ms');
    row('wall time per GET', (x) => x.wallMs, 'ms');
    row('API server CPU per GET', (x) => x.serverCpuMs, 'ms');
    row('RSS growth per run', (x) => x.rssMiB, 'MiB', 0);
    row('connections left open', (x) => x.connections, '', 0);
  } finally {
    await cp?.stop();
  }
}

if (values.child !== undefined) {
  const v = z.enum(VARIANTS).parse(values.child);
  await child(v, values.kubeconfig ?? '', Number(values.gets), Number(values['server-pid']));
} else {
  await main();
}
