/**
 * What the BlockPull end-to-end specs, the demo and the bench share:
 * - the operator as its OWN process (Node 24 from node_modules/.bin, `operator/src/main.ts`),
 *   local transport, running as a ServiceAccount bound to the chart's ClusterRole rules;
 * - a VMI object and its virt-launcher Pod object pointing at a launcher stand-in. There is no
 *   kubelet: the Pod is created bound to a node name and its status set to Running through the
 *   pods/status subresource; the VMI (no status subresource, as upstream) gets its status by patch.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { z } from 'zod';
import type { BlockPullSchema } from '../../../operator/src/api/types.ts';
import { loadConfig } from '../../../operator/src/config.ts';
import { errorMessage } from '../../../operator/src/log.ts';
import type { ClusterClient } from '../cluster/client.ts';
import { createServiceAccountKubeconfig } from '../cluster/service-account.ts';
import { parseDockerfile, parseExecForm } from '../ship/dockerfile.ts';
import type { Launcher } from '../launcher/launcher.ts';
import { NODE_BIN, REPO_ROOT } from '../support/paths.ts';
import { crashDaemon, run, startDaemon, stopDaemon, type Daemon } from '../support/process.ts';
import { tail } from '../support/tail.ts';
import { sleep, waitFor } from '../support/wait.ts';

export const OPERATOR_MAIN = path.join(REPO_ROOT, 'operator', 'src', 'main.ts');
export const LOG_DIR = path.join(REPO_ROOT, '.cache', 'e2e-blockpull');
export const STANDIN_NODE = 'standin-node';
/** The operator's own namespace in these tests (ServiceAccount, Lease): not the chart's, to stay clear of chart tests sharing the cluster. */
export const OPERATOR_NAMESPACE = 'bp-operator-system';

// --- RBAC: the operator runs as a ServiceAccount with the chart's rules ------------------------

const RulesSchema = z.array(
  z.object({
    apiGroups: z.array(z.string()),
    resources: z.array(z.string()),
    verbs: z.array(z.string()),
    resourceNames: z.array(z.string()).optional(),
  }),
);

async function rulesFile(name: string): Promise<z.infer<typeof RulesSchema>> {
  return RulesSchema.parse(
    parse(await readFile(path.join(REPO_ROOT, 'charts', 'blockpull-operator', 'files', name), 'utf8')),
  );
}

/**
 * A ServiceAccount in `namespace` bound to a ClusterRole made of charts/.../files/rbac-rules.yaml
 * and a Role (leases) from leader-election-rules.yaml; returns the path of its kubeconfig.
 */
export async function operatorServiceAccount(
  kube: ClusterClient,
  namespace = OPERATOR_NAMESPACE,
  name = 'blockpull-operator',
): Promise<string> {
  const clusterRules = await rulesFile('rbac-rules.yaml');
  const leaseRules = await rulesFile('leader-election-rules.yaml');
  const objects = [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace } },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: `${name}-e2e` },
      rules: clusterRules,
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: `${name}-e2e` },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: `${name}-e2e` },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: { name: `${name}-leader-election`, namespace },
      rules: leaseRules,
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: `${name}-leader-election`, namespace },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: `${name}-leader-election` },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
  ];
  await kube.kubectl(['apply', '-f', '-'], { input: objects.map((o) => stringify(o)).join('---\n') });
  return createServiceAccountKubeconfig(kube, namespace, name);
}

// --- the operator process --------------------------------------------------------------------

export interface OperatorProcess {
  readonly child: Daemon['child'];
  readonly logPath: string;
  /** Parsed JSON log lines so far. */
  readonly lines: Record<string, unknown>[];
  readonly metricsPort: () => number | undefined;
  /** The port of /healthz and /readyz (BLOCKPULL_HEALTH_PORT=0: the one the operator bound). */
  readonly healthPort: () => number | undefined;
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>;
  /** SIGTERM and wait (SIGKILL after graceMs). */
  stop(graceMs?: number): Promise<number | null>;
  /** SIGKILL now (a crash), and wait. */
  kill(): Promise<void>;
  /** Lines whose msg matches. */
  find(msg: string | RegExp): Record<string, unknown>[];
}

export interface StartOperatorOptions {
  readonly kubeconfig: string;
  readonly registryDir: string;
  /** For the log file name and the Lease identity. */
  readonly name: string;
  readonly env?: Readonly<Record<string, string>>;
  /** Mirror log lines (e.g. the demo prints a few). */
  readonly onLine?: (line: Record<string, unknown>) => void;
  /**
   * Wait until the controller runs: /readyz answers 200 and, with leader election on, this process
   * leads (a standby is ready too, but runs nothing). Default true.
   */
  readonly waitReady?: boolean;
  /** How long waitReady waits before the operator is killed and startOperator fails. Default 60 s. */
  readonly readyTimeoutMs?: number;
  /** The script to run (default OPERATOR_MAIN, the TypeScript source; the bench runs dist/, as the image does). */
  readonly main?: string;
  /** node's own flags before the script (the bench passes the image ENTRYPOINT's V8 flags). */
  readonly nodeArgs?: readonly string[];
}

/**
 * Compile the operator as the image does (`tsc -p tsconfig.build.json` into dist/) and return the
 * script to pass as StartOperatorOptions.main: memory figures are about the product, which does
 * not strip TypeScript at load.
 */
/** The node flags of the image's ENTRYPOINT (`node <flags> dist/operator/src/main.js`), for StartOperatorOptions.nodeArgs. */
export function imageNodeArgs(): string[] {
  const entrypoint = parseDockerfile(readFileSync(path.join(REPO_ROOT, 'Dockerfile'), 'utf8'))
    .filter((i) => i.keyword === 'ENTRYPOINT')
    .at(-1);
  const argv = parseExecForm(entrypoint?.args ?? '');
  if (argv === undefined || argv[0] !== 'node' || argv.at(-1) !== 'dist/operator/src/main.js') {
    throw new Error(`Dockerfile: the ENTRYPOINT is not node <flags> dist/operator/src/main.js: ${entrypoint?.args}`);
  }
  return argv.slice(1, -1);
}

export async function buildOperator(): Promise<string> {
  await run([NODE_BIN, path.join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], {
    cwd: REPO_ROOT,
    timeoutMs: 600_000,
  });
  return path.join(REPO_ROOT, 'dist', 'operator', 'src', 'main.js');
}

export async function startOperator(o: StartOperatorOptions): Promise<OperatorProcess> {
  await mkdir(LOG_DIR, { recursive: true });
  const logPath = path.join(LOG_DIR, `${o.name}.log`);
  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    BLOCKPULL_TRANSPORT: 'local',
    BLOCKPULL_LOCAL_LAUNCHERS_DIR: o.registryDir,
    BLOCKPULL_KUBECONFIG: o.kubeconfig,
    BLOCKPULL_POD_NAMESPACE: OPERATOR_NAMESPACE,
    BLOCKPULL_POD_NAME: o.name,
    BLOCKPULL_LEADER_ELECT: 'true',
    BLOCKPULL_LEASE_DURATION_MS: '4000',
    BLOCKPULL_RENEW_DEADLINE_MS: '3000',
    BLOCKPULL_RETRY_PERIOD_MS: '500',
    BLOCKPULL_HEALTH_PORT: '0',
    BLOCKPULL_METRICS_PORT: '0',
    BLOCKPULL_METRICS_BIND_ADDRESS: '127.0.0.1',
    BLOCKPULL_LOG_LEVEL: 'debug',
    ...o.env,
  };
  const lines: Record<string, unknown>[] = [];
  let rest = '';
  const onStdout = (chunk: string): void => {
    rest += chunk;
    let i: number;
    while ((i = rest.indexOf('\n')) >= 0) {
      const text = rest.slice(0, i);
      rest = rest.slice(i + 1);
      try {
        const line = JSON.parse(text) as Record<string, unknown>;
        lines.push(line);
        o.onLine?.(line);
      } catch {
        /* not JSON */
      }
    }
  };
  const main = o.main ?? OPERATOR_MAIN;
  const daemon = await startDaemon(`operator ${o.name}`, [NODE_BIN, ...(o.nodeArgs ?? []), main], logPath, {
    marker: main,
    env,
    cwd: REPO_ROOT,
    onOutput: (chunk, stream) => {
      if (stream === 'stdout') onStdout(chunk);
    },
  });
  const child = daemon.child;
  const exited = daemon.exited.then((e) => e.code);
  // With port 0 the operator binds a free port and says which: its 'http server listening' line.
  const portServing = (route: string): number | undefined => {
    const l = lines.find(
      (x) =>
        x['msg'] === 'http server listening' && Array.isArray(x['paths']) && (x['paths'] as string[]).includes(route),
    );
    return typeof l?.['port'] === 'number' ? l['port'] : undefined;
  };
  const proc: OperatorProcess = {
    child,
    logPath,
    lines,
    metricsPort: () => portServing('/metrics'),
    healthPort: () => portServing('/readyz'),
    exited,
    async stop(graceMs = 15_000) {
      await stopDaemon(daemon.record, graceMs, 'leader'); // as a kubelet stops the container
      return exited;
    },
    async kill() {
      await crashDaemon(daemon.record);
      await exited;
    },
    find(msg) {
      return lines.filter((l) =>
        typeof msg === 'string' ? l['msg'] === msg : typeof l['msg'] === 'string' && msg.test(l['msg']),
      );
    },
  };
  if (o.waitReady ?? true) await waitUntilRunning(proc, o.name, leaderElectionEnabled(env), o.readyTimeoutMs ?? 60_000);
  return proc;
}

/** Leader election as the operator reads its environment (on unless BLOCKPULL_LEADER_ELECT says otherwise). */
function leaderElectionEnabled(env: Readonly<Record<string, string>>): boolean {
  try {
    return loadConfig(env).leaderElection.enabled;
  } catch {
    return true; // a configuration the operator refuses: it exits 2, which the wait reports
  }
}

/** One GET on loopback: the status and body, or why there is no answer. */
async function httpGet(port: number, route: string): Promise<{ status: number; body: string } | { error: string }> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${route}`, { signal: AbortSignal.timeout(2_000) });
    return { status: res.status, body: await res.text() };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

/**
 * Polls the operator's own endpoints until its controller runs: with leader election, first that
 * it leads (the blockpull_leader gauge on /metrics), then /readyz 200 (for a leader: its informers
 * synced); without, /readyz 200. In that order, so a standby's 200 is never taken for the leader's.
 * An operator that exits or is not running within timeoutMs is killed (if still there) and the
 * error says what was last seen, with the tail of its log.
 */
async function waitUntilRunning(
  proc: OperatorProcess,
  name: string,
  leaderElect: boolean,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exitCode: number | null | undefined;
  void proc.exited.then((code) => (exitCode = code));
  let last = 'no http server listening yet';
  for (;;) {
    if (exitCode !== undefined) {
      throw new Error(
        `operator ${name} exited (code ${exitCode}) before it was ready; last seen: ${last}; log ${proc.logPath}:\n${tail(proc.logPath, 40)}`,
      );
    }
    const ready = await lookReady(proc, leaderElect);
    if (ready === true) return;
    last = ready;
    if (Date.now() > deadline) {
      await proc.kill();
      throw new Error(
        `operator ${name} not ready after ${timeoutMs} ms; last seen: ${last}; log ${proc.logPath}:\n${tail(proc.logPath, 40)}`,
      );
    }
    await sleep(200);
  }
}

/** true when the controller runs; else what stands in the way. */
async function lookReady(proc: OperatorProcess, leaderElect: boolean): Promise<true | string> {
  const healthPort = proc.healthPort();
  if (healthPort === undefined) return 'no health server listening yet';
  if (leaderElect) {
    const metricsPort = proc.metricsPort();
    if (metricsPort === undefined) return 'no metrics server listening yet';
    const m = await httpGet(metricsPort, '/metrics');
    if ('error' in m) return `GET /metrics: ${m.error}`;
    if (!/^blockpull_leader 1$/m.test(m.body)) return 'not the leader yet (blockpull_leader is not 1)';
  }
  const r = await httpGet(healthPort, '/readyz');
  if ('error' in r) return `GET /readyz: ${r.error}`;
  return r.status === 200 ? true : `GET /readyz: ${r.status} ${r.body.trim().replaceAll('\n', '; ')}`;
}

// --- VMI + launcher Pod objects for a stand-in ------------------------------------------------

export async function ensureNamespace(kube: ClusterClient, namespace: string): Promise<void> {
  // No kube-controller-manager creates the "default" ServiceAccount here: Pods need it.
  await kube.kubectl(['apply', '-f', '-'], {
    input: [
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } },
      { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace } },
    ]
      .map((o) => stringify(o))
      .join('---\n'),
  });
}

export interface FakeVmiOptions {
  readonly namespace: string;
  readonly vmiName: string;
  /** The stand-in whose pod this is (its podName, registered for the local transport). */
  readonly launcher?: Launcher;
  /** Pod name when there is no stand-in. */
  readonly podName?: string;
  readonly disks: readonly string[];
  /** VMI status.phase (default Running). */
  readonly phase?: string;
  readonly runtimeUser?: number;
  /** Create the launcher Pod (default true). */
  readonly pod?: boolean;
  /** Node of the VMI (status.nodeName) and its launcher Pod (spec.nodeName); default STANDIN_NODE. */
  readonly nodeName?: string;
  /** resources.limits of the launcher Pod's compute container (e.g. ephemeral-storage). */
  readonly computeLimits?: Readonly<Record<string, string>>;
}

export function vmiManifest(o: {
  namespace: string;
  vmiName: string;
  disks: readonly string[];
}): Record<string, unknown> {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: o.vmiName, namespace: o.namespace },
    spec: {
      domain: {
        devices: { disks: o.disks.map((name) => ({ name, disk: { bus: 'virtio' } })) },
        resources: { requests: { memory: '64Mi' } },
      },
      volumes: o.disks.map((name) => ({ name, containerDisk: { image: 'quay.io/containerdisks/fedora:latest' } })),
    },
  };
}

/** The ownerReference KubeVirt puts on a virt-launcher pod. */
export function vmiOwnerReference(vmiName: string, vmiUid: string): Record<string, unknown> {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    name: vmiName,
    uid: vmiUid,
    controller: true,
    blockOwnerDeletion: true,
  };
}

/**
 * A Running virt-launcher Pod object for a VMI (no kubelet: bound to a node name, status set
 * through pods/status); returns its uid. `owned: false` makes a pod that only LOOKS like the
 * launcher (labels and node right, no controller reference): what a tenant could create.
 */
export async function createLauncherPod(
  kube: ClusterClient,
  o: {
    namespace: string;
    podName: string;
    vmiName: string;
    vmiUid: string;
    nodeName?: string;
    owned?: boolean;
    computeLimits?: Record<string, string>;
  },
): Promise<string> {
  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: o.podName,
      namespace: o.namespace,
      labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': o.vmiUid, 'vm.kubevirt.io/name': o.vmiName },
      // As KubeVirt makes it: controlled by the VMI (the operator accepts no other pod).
      ...(o.owned === false ? {} : { ownerReferences: [vmiOwnerReference(o.vmiName, o.vmiUid)] }),
    },
    spec: {
      nodeName: o.nodeName ?? STANDIN_NODE,
      automountServiceAccountToken: false,
      containers: [
        {
          name: 'compute',
          image: 'quay.io/kubevirt/virt-launcher:v1.6.0',
          command: ['/usr/bin/virt-launcher'],
          ...(o.computeLimits !== undefined ? { resources: { limits: o.computeLimits } } : {}),
        },
      ],
    },
  };
  await kube.kubectl(['apply', '-f', '-'], { input: stringify(pod) });
  await kube.kubectl([
    'patch',
    'pod',
    o.podName,
    '-n',
    o.namespace,
    '--subresource=status',
    '--type=merge',
    '-p',
    JSON.stringify({ status: { phase: 'Running' } }),
  ]);
  return (await kube.kubectl(['get', 'pod', o.podName, '-n', o.namespace, '-o', 'jsonpath={.metadata.uid}'])).trim();
}

/** Creates the VMI and (unless pod:false) its Running launcher Pod; returns the pod name. */
export async function createFakeVmi(kube: ClusterClient, o: FakeVmiOptions): Promise<string> {
  const ns = o.namespace;
  await kube.kubectl(['apply', '-f', '-'], { input: stringify(vmiManifest(o)) });
  const uid = (await kube.kubectl(['get', 'vmi', o.vmiName, '-n', ns, '-o', 'jsonpath={.metadata.uid}'])).trim();
  const podName = o.launcher?.podName ?? o.podName ?? `virt-launcher-${o.vmiName}-x`;
  const nodeName = o.nodeName ?? STANDIN_NODE;
  const activePods: Record<string, string> = {};
  if (o.pod ?? true) {
    const podUid = await createLauncherPod(kube, {
      namespace: ns,
      podName,
      vmiName: o.vmiName,
      vmiUid: uid,
      nodeName,
      ...(o.computeLimits !== undefined ? { computeLimits: o.computeLimits } : {}),
    });
    activePods[podUid] = nodeName;
  }
  const status = {
    phase: o.phase ?? 'Running',
    nodeName,
    runtimeUser: o.runtimeUser ?? 107,
    activePods,
    volumeStatus: o.disks.map((name, i) => ({ name, target: `vd${String.fromCharCode(97 + i)}` })),
  };
  await kube.kubectl(['patch', 'vmi', o.vmiName, '-n', ns, '--type=merge', '-p', JSON.stringify({ status })]);
  return podName;
}

// --- BlockPull objects ------------------------------------------------------------------------

export function blockPullManifest(o: {
  namespace: string;
  name: string;
  vmiName: string;
  disk: string;
  spec?: Record<string, unknown>;
}): string {
  return stringify({
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPull',
    metadata: { name: o.name, namespace: o.namespace },
    spec: { vmiName: o.vmiName, disk: o.disk, ...o.spec },
  });
}

/**
 * A BlockPull as the API server returns it: the operator's own type (operator/src/api/types.ts), as
 * its input (spec defaults not applied). Read as it is, not parsed: a spec sees what is stored.
 */
export type BlockPullView = z.input<typeof BlockPullSchema>;

export async function getBlockPull(
  kube: ClusterClient,
  namespace: string,
  name: string,
): Promise<BlockPullView | undefined> {
  const r = await kube.kubectlResult(['get', 'blockpull', name, '-n', namespace, '-o', 'json']);
  if (r.exitCode !== 0) {
    if (/NotFound|not found/.test(r.stderr)) return undefined;
    throw new Error(r.stderr);
  }
  return JSON.parse(r.stdout) as BlockPullView;
}

export async function waitForPhase(
  kube: ClusterClient,
  namespace: string,
  name: string,
  phases: readonly string[],
  timeoutMs = 60_000,
): Promise<BlockPullView> {
  let last: BlockPullView | undefined;
  try {
    return await waitFor(`BlockPull ${namespace}/${name} in ${phases.join('|')}`, timeoutMs, async () => {
      const bp = await getBlockPull(kube, namespace, name);
      last = bp;
      return bp?.status?.phase !== undefined && phases.includes(bp.status.phase) ? bp : undefined;
    });
  } catch (err) {
    // The status it was left in says why (a timeout alone does not).
    throw new Error(`${errorMessage(err)}; last status: ${JSON.stringify(last?.status ?? null)}`, { cause: err });
  }
}

/** Every phase each BlockPull of a namespace was seen in, polled every 200 ms until stop(). */
export interface PhaseWatch {
  readonly seen: ReadonlyMap<string, ReadonlySet<string>>;
  stop(): Promise<void>;
}

/**
 * Record the phases the namespace's BlockPulls pass through, so that a spec can assert one never
 * showed (Failed during a yield, say) even when it lasted less than the spec's own polls.
 */
export function watchPhases(kube: ClusterClient, namespace: string): PhaseWatch {
  const seen = new Map<string, Set<string>>();
  let watching = true;
  const loop = (async () => {
    while (watching) {
      const r = await kube.kubectlResult([
        'get',
        'bp',
        '-n',
        namespace,
        '-o',
        'jsonpath={range .items[*]}{.metadata.name}={.status.phase}{"\\n"}{end}',
      ]);
      for (const line of r.stdout.split('\n')) {
        const [name, phase] = line.split('=');
        if (name && phase) (seen.get(name) ?? seen.set(name, new Set()).get(name)!).add(phase);
      }
      await sleep(200);
    }
  })();
  return {
    seen,
    stop: async () => {
      watching = false;
      await loop;
    },
  };
}
