/**
 * A real node for the local control plane: containerd (see containerd.ts) + kubelet, plus
 * kube-controller-manager and kube-scheduler so Deployments and ReplicaSets work.
 *
 *   const cp = await startControlPlane({ extraApiserverArgs: nodeApiserverArgs(stateDir), stateDir })
 *   const node = await startNode(cp)      // resolves when the Node is Ready
 *   ...
 *   await node.stop()                     // no process, mount, netns, bridge or cgroup left
 *
 * Certificates: the node's own PKI dir gets a copy of the control plane's CA and issues
 *  - kubelet client cert   O=system:nodes, CN=system:node:<node>   (Node authorizer + NodeRestriction)
 *  - kubelet serving cert  SANs node IP, 127.0.0.1, node name      (the API server verifies it)
 *  - controller-manager    CN=system:kube-controller-manager
 *  - scheduler             CN=system:kube-scheduler
 * The kubelet authenticates its clients with x509 (that CA) and webhook token review, and authorizes
 * them with webhook SubjectAccessReview (no anonymous access). The API server reaches the kubelet
 * (exec, logs) as a client with a certificate from the same CA: see nodeApiserverArgs().
 *
 * Networking: CNI bridge + host-local IPAM from Debian's containernetworking-plugins (pods get an
 * address in a free 10.244.N.0/24 behind the bridge bpcni<id>). There is no kube-proxy and no cluster
 * DNS; the one Service pods need, `kubernetes` (in-cluster clients, e.g. the operator's Deployment),
 * is reached by one DNAT rule from its ClusterIP to the API server on 127.0.0.1 (route_localnet on
 * the bridge only): what kube-proxy would do for that Service, by hand.
 *
 * Everything host-wide is named by a per-node id (bridge, CNI network, cgroup root /blockpull-<id>),
 * so two nodes on one machine (two test runs) never touch each other's.
 */
import { copyFileSync, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { z } from 'zod';
import { issueCert } from '../cluster/certs.ts';
import type { ControlPlane } from '../cluster/control-plane.ts';
import { writeKubeconfig } from '../cluster/kubeconfig.ts';
import { processStartTime } from '../support/lock.ts';
import { tail } from '../support/tail.ts';
import { freePorts } from '../support/ports.ts';
import { pauseImage, type BuiltImage } from '../images/images.ts';
import { CNI_BRIDGE_PREFIX, leftovers as containerdLeftovers, startContainerd, type Containerd } from './containerd.ts';
import {
  cgroupHierarchies,
  NODE_RUN_PREFIX,
  NODE_RUN_ROOT,
  sweepStaleNodes,
  teardownNode,
  writeNodeRecord,
  type NodeRecord,
} from './node-state.ts';
import { mountsUnder } from '../support/mounts.ts';
import { findProcesses, killDaemonNow, run, startDaemon, type Daemon } from '../support/process.ts';
import { waitFor } from '../support/wait.ts';

export const NODE_NAME = 'blockpull-node';

/**
 * Extra kube-apiserver flags a node needs; pass them to startControlPlane({ extraApiserverArgs }).
 * (The control plane already authenticates to kubelets with its apiserver-kubelet-client cert.)
 * The API server verifies the kubelet's serving certificate with the cluster CA, dials the node's
 * InternalIP, and admits with ServiceAccount (left out by the control plane while no
 * controller-manager runs; it now does) and NodeRestriction.
 */
export function nodeApiserverArgs(controlPlaneStateDir: string): string[] {
  return [
    `--kubelet-certificate-authority=${join(controlPlaneStateDir, 'pki', 'ca.crt')}`,
    '--kubelet-preferred-address-types=InternalIP',
    '--disable-admission-plugins=',
    '--enable-admission-plugins=NodeRestriction',
  ];
}

const ServiceSchema = z.object({
  spec: z.object({ clusterIP: z.string(), ports: z.array(z.object({ port: z.number() })).min(1) }),
});

export interface NodeOptions {
  /** Default /var/tmp/bpnode-<random> (short: unix socket paths are limited to 107 bytes). */
  readonly runDir?: string;
  readonly nodeName?: string;
  /** Images (OCI archives) to import into containerd before the kubelet starts. The pause image always is. */
  readonly images?: readonly BuiltImage[];
  readonly readyTimeoutMs?: number;
  readonly log?: (message: string) => void;
  /**
   * Keep the node running after this process exits (`npm run cluster -- up --node`): daemons in their
   * own process groups, no exit handler. It is then stopped from its record (<runDir>/node.json) by
   * stopRecordedNode(), or swept once its control plane is gone. Default false: the node belongs to
   * this process, and the next start sweeps it if this process dies without stop().
   */
  readonly detached?: boolean;
  /** Skip the sweep of stale nodes of dead owners before starting. Default false. */
  readonly noSweep?: boolean;
}

export interface Node {
  readonly name: string;
  readonly ip: string;
  readonly runDir: string;
  /** Parent cgroup (in every hierarchy) of everything the kubelet creates. */
  readonly cgroupRoot: string;
  readonly podCidr: string;
  readonly containerd: Containerd;
  readonly kubeletPort: number;
  /** What node.json records (pids, bridge, rule, ...); enough to tear the node down from elsewhere. */
  readonly record: NodeRecord;
  readonly logs: {
    readonly kubelet: string;
    readonly controllerManager: string;
    readonly scheduler: string;
    readonly containerd: string;
  };
  /** Milliseconds from startNode() to the Node being Ready. */
  readonly startMs: number;
  importImage(image: BuiltImage): Promise<void>;
  stop(): Promise<void>;
}

const NodeStatus = z.object({
  status: z
    .object({
      conditions: z
        .array(
          z.object({
            type: z.string(),
            status: z.string(),
            reason: z.string().optional(),
            message: z.string().optional(),
          }),
        )
        .optional(),
    })
    .optional(),
});

/** The host's IPv4 address on its default route (what the kubelet reports as InternalIP). */
async function hostIp(): Promise<string> {
  const r = await run(['ip', '-j', '-4', 'route', 'get', '1.1.1.1'], { allowExit: true });
  const parsed = z.array(z.object({ prefsrc: z.string().optional() })).safeParse(JSON.parse(r.stdout || '[]'));
  const ip = parsed.success ? parsed.data[0]?.prefsrc : undefined;
  if (ip) return ip;
  const addrs = await run(['ip', '-j', '-4', 'addr', 'show', 'scope', 'global']);
  const list = z
    .array(z.object({ addr_info: z.array(z.object({ local: z.string() })) }))
    .parse(JSON.parse(addrs.stdout));
  const first = list.flatMap((i) => i.addr_info)[0]?.local;
  if (!first) throw new Error('no global IPv4 address for the node');
  return first;
}

function kubeletConfig(o: {
  nodeIp: string;
  port: number;
  healthzPort: number;
  caFile: string;
  servingCert: string;
  servingKey: string;
  endpoint: string;
  podLogsDir: string;
  cgroupRoot: string;
}): string {
  return stringify({
    apiVersion: 'kubelet.config.k8s.io/v1beta1',
    kind: 'KubeletConfiguration',
    address: o.nodeIp,
    port: o.port,
    readOnlyPort: 0,
    healthzBindAddress: '127.0.0.1',
    healthzPort: o.healthzPort,
    authentication: {
      anonymous: { enabled: false },
      webhook: { enabled: true, cacheTTL: '10s' },
      x509: { clientCAFile: o.caFile },
    },
    authorization: { mode: 'Webhook', webhook: { cacheAuthorizedTTL: '10s', cacheUnauthorizedTTL: '5s' } },
    tlsCertFile: o.servingCert,
    tlsPrivateKeyFile: o.servingKey,
    rotateCertificates: false,
    serverTLSBootstrap: false,
    containerRuntimeEndpoint: o.endpoint,
    imageServiceEndpoint: o.endpoint,
    // No systemd as PID 1 and a cgroup v1 hierarchy: the cgroupfs driver, and v1 explicitly allowed.
    cgroupDriver: 'cgroupfs',
    cgroupRoot: o.cgroupRoot,
    failCgroupV1: false,
    failSwapOn: false,
    podLogsDir: o.podLogsDir,
    resolvConf: '/etc/resolv.conf',
    clusterDomain: 'cluster.local',
    // A shared test machine: evict only when really out of resources; never garbage-collect
    // our locally built images (they cannot be pulled again).
    evictionHard: {
      'memory.available': '100Mi',
      'nodefs.available': '1%',
      'nodefs.inodesFree': '1%',
      'imagefs.available': '1%',
    },
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    maxPods: 30,
    nodeStatusUpdateFrequency: '5s',
    syncFrequency: '10s',
    serializeImagePulls: false,
    shutdownGracePeriod: '0s',
  });
}

/**
 * Starts a node in named steps: sweep nodes of dead runs, write the node's record (before anything
 * is made, so a crash at any later step leaves something the sweep can remove), issue its
 * certificates, start containerd and import the images, route the `kubernetes` Service, start
 * kube-controller-manager, kube-scheduler and the kubelet, and wait until the node is Ready.
 * If a step fails, everything made so far is removed.
 */
export async function startNode(cp: ControlPlane, options: NodeOptions = {}): Promise<Node> {
  const t0 = Date.now();
  const log = options.log ?? ((m: string) => process.stderr.write(`[node] ${m}\n`));
  if (!options.noSweep) {
    const swept = await sweepStaleNodes({ log });
    if (swept.length > 0)
      log(`swept ${swept.length} stale node(s) of dead runs (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
  const n = await recordNewNode(cp, options);
  const creds = await issueCredentials(n);

  // If this process exits before stop(), take the daemons with it (a SIGKILL leaves them: the next
  // start's sweep removes them, see node-state.ts).
  const onExit = (): void => {
    for (const d of n.daemons) killDaemonNow(d.record);
  };
  if (!n.detached) process.on('exit', onExit);
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    // Pods first (through the API, so the kubelet tears sandboxes down itself: CNI DEL), then the rest.
    const errors = await teardownNode(n.record, { useApi: true });
    process.removeListener('exit', onExit);
    const left = [
      ...errors,
      ...(await nodeLeftovers(n.runDir, {
        cgroupRoot: n.cgroupRoot,
        containerd: { bridge: n.record.bridge, network: n.record.network },
      })),
    ];
    if (left.length > 0) throw new Error(`node stop left: ${left.join('; ')}`);
  };

  try {
    const containerd = await startNodeContainerd(n, options.images ?? [], log, t0);
    await routeKubernetesService(n, containerd);
    const [cmPort, schedPort, kubeletPort, healthzPort] = (await freePorts(4)) as [number, number, number, number];
    const cm = await startControllerManager(n, creds, cmPort);
    const sched = await startScheduler(n, creds, schedPort);
    const kubelet = await startKubelet(n, creds, containerd, kubeletPort, healthzPort);
    await waitNodeReady(n, kubelet, options.readyTimeoutMs ?? 120_000);
    const startMs = Date.now() - t0;
    log(`node ${n.name} (${n.ip}) Ready in ${(startMs / 1000).toFixed(1)} s`);
    return {
      name: n.name,
      ip: n.ip,
      runDir: n.runDir,
      cgroupRoot: n.cgroupRoot,
      podCidr: containerd.podCidr,
      containerd,
      kubeletPort,
      record: n.record,
      logs: {
        kubelet: kubelet.logPath,
        controllerManager: cm.logPath,
        scheduler: sched.logPath,
        containerd: containerd.logPath,
      },
      startMs,
      async importImage(image: BuiltImage) {
        await containerd.importImage(image.archivePath);
      },
      stop,
    };
  } catch (e) {
    await stop().catch((stopError: unknown) => log(`cleanup after failed start: ${String(stopError)}`));
    throw e;
  }
}

/** What the steps of startNode share. */
interface NodeInProgress {
  readonly cp: ControlPlane;
  readonly name: string;
  readonly id: string;
  readonly runDir: string;
  readonly cgroupRoot: string;
  readonly detached: boolean;
  readonly pkiDir: string;
  readonly logsDir: string;
  readonly kubeletRoot: string;
  readonly podLogsDir: string;
  readonly ip: string;
  /** node.json: written again whenever something is added. */
  readonly record: NodeRecord;
  readonly daemons: Daemon[];
}

interface NodeCredentials {
  readonly caFile: string;
  readonly kubeletServing: { cert: string; key: string };
  readonly kubeletKubeconfig: string;
  readonly cmKubeconfig: string;
  readonly schedKubeconfig: string;
}

/** Step: the run dir and the node's record, written before anything else is made. */
async function recordNewNode(cp: ControlPlane, options: NodeOptions): Promise<NodeInProgress> {
  const name = options.nodeName ?? NODE_NAME;
  const id = randomBytes(3).toString('hex');
  const runDir = options.runDir ?? join(NODE_RUN_ROOT, `${NODE_RUN_PREFIX}${id}`);
  const cgroupRoot = `/blockpull-${id}`;
  const detached = options.detached ?? false;
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  // The record first: from here on, whatever this start makes can be found and removed from it.
  const record: NodeRecord = {
    version: 1,
    id,
    name,
    runDir,
    cgroupRoot,
    bridge: `${CNI_BRIDGE_PREFIX}${id}`,
    network: `blockpull-${id}`,
    owner: { pid: process.pid, start: processStartTime(process.pid) ?? '' },
    detached,
    controlPlane: {
      stateDir: cp.stateDir,
      server: cp.server,
      kubeconfigPath: cp.kubeconfigPath,
      kubectl: cp.kubectlPath,
    },
    daemons: [],
  };
  writeNodeRecord(record);
  const n = {
    cp,
    name,
    id,
    runDir,
    cgroupRoot,
    detached,
    pkiDir: join(runDir, 'pki'),
    logsDir: join(runDir, 'logs'),
    kubeletRoot: join(runDir, 'kubelet'),
    podLogsDir: join(runDir, 'pod-logs'),
    record,
    daemons: [],
  };
  for (const d of [n.pkiDir, n.logsDir, n.kubeletRoot, n.podLogsDir]) mkdirSync(d, { recursive: true, mode: 0o700 });
  return { ...n, ip: await hostIp() };
}

/** Step: client and serving certificates from the control plane's CA, and the kubeconfigs. */
async function issueCredentials(n: NodeInProgress): Promise<NodeCredentials> {
  const { cp, pkiDir, name, ip } = n;
  copyFileSync(cp.pki.caCert, join(pkiDir, 'ca.crt'));
  copyFileSync(cp.pki.caKey, join(pkiDir, 'ca.key'));
  const [kubeletClient, kubeletServing, cmCert, schedCert] = await Promise.all([
    issueCert(pkiDir, 'kubelet-client', `/O=system:nodes/CN=system:node:${name}`, 'client'),
    issueCert(pkiDir, 'kubelet-serving', `/CN=${name}`, 'server', [`IP:${ip}`, 'IP:127.0.0.1', `DNS:${name}`]),
    issueCert(pkiDir, 'controller-manager', '/CN=system:kube-controller-manager', 'client'),
    issueCert(pkiDir, 'scheduler', '/CN=system:kube-scheduler', 'client'),
  ]);
  rmSync(join(pkiDir, 'ca.key')); // only the control plane keeps the CA key
  const caFile = join(pkiDir, 'ca.crt');
  const kc = (file: string, user: string, cert: { cert: string; key: string }): Promise<string> =>
    writeKubeconfig(join(n.runDir, file), {
      server: cp.server,
      caFile,
      user,
      credentials: { kind: 'cert', certFile: cert.cert, keyFile: cert.key },
    });
  return {
    caFile,
    kubeletServing,
    kubeletKubeconfig: await kc('kubelet.kubeconfig', `system:node:${name}`, kubeletClient),
    cmKubeconfig: await kc('controller-manager.kubeconfig', 'system:kube-controller-manager', cmCert),
    schedKubeconfig: await kc('scheduler.kubeconfig', 'system:kube-scheduler', schedCert),
  };
}

/** A node daemon: own process group, log in <run>/logs/, recorded in node.json at once. */
async function startNodeDaemon(
  n: NodeInProgress,
  name: string,
  argv: readonly string[],
  env?: NodeJS.ProcessEnv,
): Promise<Daemon> {
  const d = await startDaemon(name, argv, join(n.logsDir, `${name}.log`), {
    keepRunning: n.detached,
    marker: n.runDir,
    ...(env ? { env } : {}),
  });
  n.daemons.push(d);
  n.record.daemons.push(d.record);
  writeNodeRecord(n.record);
  return d;
}

/** Step: containerd (recorded), the pause image and the given images imported. */
async function startNodeContainerd(
  n: NodeInProgress,
  extraImages: readonly BuiltImage[],
  log: (m: string) => void,
  t0: number,
): Promise<Containerd> {
  const containerd = await startContainerd({ runDir: join(n.runDir, 'containerd'), id: n.id, detached: n.detached });
  n.record.daemons.push(containerd.process);
  writeNodeRecord(n.record);
  const images = [await pauseImage(), ...extraImages];
  for (const img of images) await containerd.importImage(img.archivePath);
  log(`containerd ready, ${images.length} image(s) imported (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  return containerd;
}

/**
 * Step: the `kubernetes` Service for pods: DNAT its ClusterIP to the API server on loopback.
 * startContainerd made the bridge (with the pod CIDR's gateway; the CNI bridge plugin adopts it),
 * so route_localnet can be set on it alone; it goes away with the bridge.
 */
async function routeKubernetesService(n: NodeInProgress, containerd: Containerd): Promise<void> {
  writeFileSync(`/proc/sys/net/ipv4/conf/${containerd.bridge}/route_localnet`, '1');
  const svc = ServiceSchema.parse(
    JSON.parse(await n.cp.kubectl(['-n', 'default', 'get', 'service', 'kubernetes', '-o', 'json'])),
  );
  const api = new URL(n.cp.server);
  const rule = [
    'PREROUTING',
    '-i',
    containerd.bridge,
    '-d',
    `${svc.spec.clusterIP}/32`,
    '-p',
    'tcp',
    '--dport',
    String(svc.spec.ports[0]?.port ?? 443),
    '-m',
    'comment',
    '--comment',
    `blockpull-node-${n.id}`,
    '-j',
    'DNAT',
    '--to-destination',
    `${api.hostname}:${api.port}`,
  ];
  n.record.dnatRule = rule; // recorded first: a crash right after the -A still gets it removed
  writeNodeRecord(n.record);
  await run(['iptables', '-t', 'nat', '-A', ...rule]);
}

/** Step: kube-controller-manager (service-account tokens, the node's garbage collection). */
function startControllerManager(n: NodeInProgress, c: NodeCredentials, port: number): Promise<Daemon> {
  const { cp } = n;
  return startNodeDaemon(n, 'kube-controller-manager', [
    cp.binaries.kubeControllerManager,
    `--kubeconfig=${c.cmKubeconfig}`,
    `--authentication-kubeconfig=${c.cmKubeconfig}`,
    `--authorization-kubeconfig=${c.cmKubeconfig}`,
    '--bind-address=127.0.0.1',
    `--secure-port=${port}`,
    `--cert-dir=${join(n.runDir, 'controller-manager-certs')}`,
    '--leader-elect=false',
    '--use-service-account-credentials=true',
    `--service-account-private-key-file=${cp.pki.serviceAccountKey}`,
    `--root-ca-file=${c.caFile}`,
    `--cluster-signing-cert-file=${cp.pki.caCert}`,
    `--cluster-signing-key-file=${cp.pki.caKey}`,
    '--service-cluster-ip-range=10.0.0.0/24',
    '--allocate-node-cidrs=false',
    '--v=1',
  ]);
}

/** Step: kube-scheduler. */
function startScheduler(n: NodeInProgress, c: NodeCredentials, port: number): Promise<Daemon> {
  return startNodeDaemon(n, 'kube-scheduler', [
    n.cp.binaries.kubeScheduler,
    `--kubeconfig=${c.schedKubeconfig}`,
    `--authentication-kubeconfig=${c.schedKubeconfig}`,
    `--authorization-kubeconfig=${c.schedKubeconfig}`,
    '--bind-address=127.0.0.1',
    `--secure-port=${port}`,
    '--leader-elect=false',
    '--v=1',
  ]);
}

/** Step: the kubelet, its config file and its cgroup root. */
async function startKubelet(
  n: NodeInProgress,
  c: NodeCredentials,
  containerd: Containerd,
  port: number,
  healthzPort: number,
): Promise<Daemon> {
  const configPath = join(n.runDir, 'kubelet-config.yaml');
  writeFileSync(
    configPath,
    kubeletConfig({
      nodeIp: n.ip,
      port,
      healthzPort,
      caFile: c.caFile,
      servingCert: c.kubeletServing.cert,
      servingKey: c.kubeletServing.key,
      endpoint: containerd.endpoint,
      podLogsDir: n.podLogsDir,
      cgroupRoot: n.cgroupRoot,
    }),
  );
  for (const h of cgroupHierarchies()) mkdirSync(join(h, n.cgroupRoot), { recursive: true });
  return startNodeDaemon(
    n,
    'kubelet',
    [
      n.cp.binaries.kubelet,
      `--config=${configPath}`,
      `--kubeconfig=${c.kubeletKubeconfig}`,
      `--root-dir=${n.kubeletRoot}`,
      `--cert-dir=${join(n.runDir, 'kubelet-certs')}`,
      `--hostname-override=${n.name}`,
      `--node-ip=${n.ip}`,
      `--node-labels=blockpull.dev/test-node=true`,
      '--v=2',
    ],
    { ...process.env, PATH: `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` },
  );
}

/** Step: the Node object Ready (every daemon still running meanwhile). */
async function waitNodeReady(n: NodeInProgress, kubelet: Daemon, timeoutMs: number): Promise<void> {
  await waitFor(
    `node ${n.name} Ready`,
    timeoutMs,
    async () => {
      for (const d of n.daemons) if (!d.isRunning()) throw new Error(`${d.name} exited:\n${tail(d.logPath, 40)}`);
      const r = await n.cp.kubectlResult(['get', 'node', n.name, '-o', 'json'], { timeoutMs: 10_000 });
      if (r.exitCode !== 0) return false;
      const node = NodeStatus.parse(JSON.parse(r.stdout));
      return node.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
    },
    500,
  ).catch((e: unknown) => {
    const msg = e instanceof Error ? e.message : String(e);
    throw new Error(`${msg}\n--- kubelet log:\n${tail(kubelet.logPath, 40)}`);
  });
}

/** What a stopped node left behind (empty = clean). */
export async function nodeLeftovers(
  runDir: string,
  node: { cgroupRoot: string; containerd?: Pick<Containerd, 'bridge' | 'network'> | undefined },
): Promise<string[]> {
  const found = containerdLeftovers(join(runDir, 'containerd'), node.containerd);
  for (const p of findProcesses([runDir])) found.push(`process ${p.pid}: ${p.cmdline.join(' ')}`);
  for (const m of mountsUnder(runDir)) found.push(`mount ${m}`);
  for (const h of cgroupHierarchies())
    if (existsSync(join(h, node.cgroupRoot))) found.push(`cgroup ${join(h, node.cgroupRoot)}`);
  const id = node.cgroupRoot.replace(/^\/blockpull-/, '');
  const nat = await run(['iptables', '-t', 'nat', '-S', 'PREROUTING'], { allowExit: true });
  if (nat.stdout.includes(`blockpull-node-${id}`)) found.push(`iptables nat rule blockpull-node-${id}`);
  if (existsSync(runDir)) found.push(`directory ${runDir}`);
  return [...new Set(found)];
}
