/**
 * A real local control plane: etcd + kube-apiserver on loopback, fresh data dir, generated PKI,
 * RBAC authorization (Node,RBAC; never AlwaysAllow), readiness by polling /readyz.
 *
 * State lives in a state dir (default <repo>/.cache/cluster): state.json (pids, ports), pki/, data/,
 * logs/, admin.kubeconfig. A start first cleans up a stale run recorded there (processes verified by
 * pid + start time + command line before they are killed). stop() SIGTERMs each process group,
 * SIGKILLs after a grace period and waits until the ports are free.
 * In non-detached mode (tests) signal and exit handlers kill the daemons if the caller dies.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { ensureBinaries, type ApiserverBinaries, type ClusterBinaries } from './binaries.ts';
import { createPki, type Pki } from './certs.ts';
import { clusterClient, type ClusterClient } from './client.ts';
import { writeKubeconfig } from './kubeconfig.ts';
import { processStartTime } from '../support/lock.ts';
import { freePorts, waitPortsFree } from '../support/ports.ts';
import {
  daemonRecord,
  isOurs,
  killDaemonNow,
  readCmdline,
  startDaemon,
  stopDaemon,
  type DaemonRecord,
} from '../support/process.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { tail } from '../support/tail.ts';

/** `npm run cluster -- up` uses this state dir; its admin kubeconfig is <dir>/admin.kubeconfig. */
export const DEFAULT_STATE_DIR = path.join(REPO_ROOT, '.cache', 'cluster');
export const SERVICE_CLUSTER_IP_RANGE = '10.0.0.0/24';

/** `B`: the binaries it was started with (all five Kubernetes commands, unless a caller gave fewer). */
export interface ControlPlane<B extends ApiserverBinaries = ClusterBinaries> extends ClusterClient {
  readonly stateDir: string;
  readonly kubeconfigPath: string;
  /** https://127.0.0.1:<port> */
  readonly server: string;
  /** Directory with kube-apiserver and kubectl (and kubelet, kube-controller-manager, kube-scheduler of a full build). */
  readonly binDir: string;
  readonly binaries: B;
  readonly pki: Pki;
  readonly etcdEndpoint: string;
  readonly ports: { readonly etcdClient: number; readonly etcdPeer: number; readonly apiserver: number };
  readonly processes: readonly DaemonRecord[];
  /** The API server's audit log (JSON lines), when started with StartOptions.audit. */
  readonly auditLogPath: string | undefined;
  stop(): Promise<void>;
}

/** One rule of an audit policy (audit.k8s.io/v1), as the API server reads it. */
export interface AuditRule {
  readonly level: 'None' | 'Metadata' | 'Request' | 'RequestResponse';
  readonly verbs?: readonly string[];
  readonly users?: readonly string[];
  readonly resources?: readonly { readonly group: string; readonly resources: readonly string[] }[];
}

/** An audit log entry, the fields the tests read (audit.k8s.io/v1 Event). */
export interface AuditEvent {
  readonly auditID: string;
  readonly stage: string;
  readonly verb: string;
  readonly requestURI: string;
  readonly user: { readonly username: string };
  readonly objectRef?: {
    readonly resource?: string;
    readonly subresource?: string;
    readonly namespace?: string;
    readonly name?: string;
    readonly apiGroup?: string;
  };
  readonly responseStatus?: { readonly code?: number };
  readonly requestReceivedTimestamp: string;
  readonly stageTimestamp: string;
}

/** The audit log's entries so far (a missing file is no entry). */
export async function readAuditLog(file: string): Promise<AuditEvent[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as AuditEvent);
}

export interface StartOptions<B extends ApiserverBinaries = ClusterBinaries> {
  /** Default DEFAULT_STATE_DIR. Everything in it is recreated at start (a stale run recorded there is stopped first). */
  readonly stateDir?: string;
  /** Keep the daemons running after this process exits (the CLI's `up`). Default false. */
  readonly detached?: boolean;
  /** Default: ensureBinaries() (the versions of versions.ts). */
  readonly binaries?: B;
  readonly extraApiserverArgs?: readonly string[];
  readonly readyTimeoutMs?: number;
  readonly log?: (message: string) => void;
  /**
   * Turn the API server's audit log on: these rules (a last rule `level: None` is added), logged
   * at the ResponseComplete stage only, as JSON lines in <stateDir>/logs/audit.log
   * (ControlPlane.auditLogPath), written before the response is sent (blocking mode).
   */
  readonly audit?: { readonly rules: readonly AuditRule[] };
}

const stateFile = z.object({
  version: z.literal(1),
  ownerPid: z.number(),
  /** /proc start time of the owner: with ownerPid, tells whether the run's owner still lives. */
  ownerStart: z.string().optional(),
  detached: z.boolean(),
  server: z.string(),
  kubeconfigPath: z.string(),
  etcdEndpoint: z.string(),
  ports: z.object({ etcdClient: z.number(), etcdPeer: z.number(), apiserver: z.number() }),
  k8sBinDir: z.string(),
  startedAt: z.string(),
  processes: z.array(daemonRecord),
});
export type ClusterState = z.infer<typeof stateFile>;

export async function readState(stateDir: string): Promise<ClusterState | undefined> {
  let text: string;
  try {
    text = await readFile(path.join(stateDir, 'state.json'), 'utf8');
  } catch {
    return undefined;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined; // torn write of a crashed run: nothing verifiable to stop
  }
  const parsed = stateFile.safeParse(json);
  return parsed.success ? parsed.data : undefined;
}

async function writeState(stateDir: string, state: ClusterState): Promise<void> {
  const file = path.join(stateDir, 'state.json');
  await writeFile(`${file}.tmp`, JSON.stringify(state, null, 2));
  await rename(`${file}.tmp`, file);
}

/** Stops the processes a state dir records (only those verified as ours) and waits for their ports. */
export async function stopRecorded(stateDir: string): Promise<{ stopped: string[] }> {
  const state = await readState(stateDir);
  const stopped: string[] = [];
  if (state) {
    // apiserver first, then etcd (reverse start order)
    for (const rec of [...state.processes].reverse()) {
      if (isOurs(rec)) {
        await stopDaemon(rec);
        stopped.push(`${rec.name} (pid ${rec.pid})`);
      }
    }
    await waitPortsFree([state.ports.apiserver, state.ports.etcdClient, state.ports.etcdPeer]);
  }
  await rm(path.join(stateDir, 'state.json'), { force: true });
  await rm(path.join(stateDir, 'data'), { recursive: true, force: true });
  return { stopped };
}

/**
 * For per-run state dirs under `root` (`<root>/run-<pid>`, one per test run, so concurrent runs in one
 * checkout never stop each other's control plane): stops and removes the runs whose owner is gone.
 */
export async function cleanupStaleRuns(root: string, log: (m: string) => void = () => undefined): Promise<void> {
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^run-(\d+)$/.exec(name);
    if (!m) continue;
    const dir = path.join(root, name);
    const state = await readState(dir);
    const ownerPid = state?.ownerPid ?? Number(m[1]);
    const ownerStart = processStartTime(ownerPid);
    const ownerAlive = ownerStart !== undefined && (state?.ownerStart === undefined || state.ownerStart === ownerStart);
    if (ownerAlive && ownerPid !== process.pid) continue;
    const { stopped } = await stopRecorded(dir);
    if (stopped.length > 0) log(`stopped a stale run in ${dir}: ${stopped.join(', ')}`);
    await rm(dir, { recursive: true, force: true });
  }
}

function httpsGet(url: string, pki: LoadedPki, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(
      url,
      { ca: pki.caPem, cert: pki.adminCertPem, key: pki.adminKeyPem, timeout: timeoutMs },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

interface LoadedPki extends Pki {
  readonly caPem: Buffer;
  readonly adminCertPem: Buffer;
  readonly adminKeyPem: Buffer;
}

async function loadPki(pki: Pki): Promise<LoadedPki> {
  return {
    ...pki,
    caPem: await readFile(pki.caCert),
    adminCertPem: await readFile(pki.adminCert),
    adminKeyPem: await readFile(pki.adminKey),
  };
}

async function waitReady(
  server: string,
  pki: LoadedPki,
  procs: readonly DaemonRecord[],
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    for (const p of procs) {
      if (!isOurs(p))
        throw new Error(`${p.name} exited during startup; last log lines (${p.logFile}):\n${tail(p.logFile)}`);
    }
    try {
      const r = await httpsGet(`${server}/readyz`, pki, 2000);
      if (r.status === 200) return;
      last = `HTTP ${r.status}: ${r.body.slice(0, 500)}`;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    if (Date.now() > deadline)
      throw new Error(
        `kube-apiserver not ready after ${timeoutMs} ms (${last}); log: ${procs.at(-1)?.logFile ?? ''}\n${tail(procs.at(-1)?.logFile ?? '')}`,
      );
    await sleep(200);
  }
}

async function waitEtcdReady(endpoint: string, pki: Pki, proc: DaemonRecord, timeoutMs: number): Promise<void> {
  const loaded: LoadedPki = {
    ...pki,
    caPem: await readFile(pki.caCert),
    adminCertPem: await readFile(pki.etcdClientCert),
    adminKeyPem: await readFile(pki.etcdClientKey),
  };
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    if (!isOurs(proc))
      throw new Error(`etcd exited during startup; last log lines (${proc.logFile}):\n${tail(proc.logFile)}`);
    try {
      const r = await httpsGet(`${endpoint}/health`, loaded, 2000);
      if (r.status === 200 && /"health":\s*"true"/.test(r.body)) return;
      last = `HTTP ${r.status}: ${r.body}`;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    if (Date.now() > deadline)
      throw new Error(`etcd not healthy after ${timeoutMs} ms (${last})\n${tail(proc.logFile)}`);
    await sleep(100);
  }
}

/** A control-plane daemon: its own process group, kept running (stopped through its record). */
async function daemon(name: string, argv: readonly string[], logFile: string, stateDir: string): Promise<DaemonRecord> {
  return (await startDaemon(name, argv, logFile, { marker: stateDir, keepRunning: true })).record;
}

/** Kills recorded daemons synchronously if this process exits or is signalled before stop(). */
function installCrashGuards(procs: () => readonly DaemonRecord[]): () => void {
  const killAll = (): void => {
    for (const p of [...procs()].reverse()) killDaemonNow(p);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  const onSignal = (signal: NodeJS.Signals): void => {
    killAll();
    // Re-deliver with default behaviour if nobody else (e.g. vitest) handles this signal.
    if (process.listenerCount(signal) <= 1) {
      remove();
      process.kill(process.pid, signal);
    }
  };
  process.on('exit', killAll);
  for (const s of signals) process.on(s, onSignal);
  const remove = (): void => {
    process.removeListener('exit', killAll);
    for (const s of signals) process.removeListener(s, onSignal);
  };
  return remove;
}

export function startControlPlane(options?: StartOptions): Promise<ControlPlane>;
export function startControlPlane<B extends ApiserverBinaries>(
  options: StartOptions<B> & { readonly binaries: B },
): Promise<ControlPlane<B>>;
export async function startControlPlane(
  options: StartOptions<ApiserverBinaries> = {},
): Promise<ControlPlane<ApiserverBinaries>> {
  const started = Date.now();
  const log = options.log ?? ((m: string) => process.stderr.write(`[cluster] ${m}\n`));
  const stateDir = path.resolve(options.stateDir ?? DEFAULT_STATE_DIR);
  const binaries: ApiserverBinaries = options.binaries ?? (await ensureBinaries({ log }));
  await mkdir(stateDir, { recursive: true, mode: 0o700 });

  const stale = await stopRecorded(stateDir);
  if (stale.stopped.length > 0) log(`stopped a stale run in ${stateDir}: ${stale.stopped.join(', ')}`);

  const pki = await loadPki(await createPki(path.join(stateDir, 'pki')));
  const logsDir = path.join(stateDir, 'logs');
  await rm(logsDir, { recursive: true, force: true }); // logs of this start only (retries append)
  await mkdir(logsDir, { recursive: true });

  let auditArgs: string[] = [];
  let auditLogPath: string | undefined;
  if (options.audit !== undefined) {
    const policyFile = path.join(stateDir, 'audit-policy.json');
    auditLogPath = path.join(logsDir, 'audit.log');
    const policy = {
      apiVersion: 'audit.k8s.io/v1',
      kind: 'Policy',
      omitStages: ['RequestReceived', 'ResponseStarted'],
      rules: [...options.audit.rules, { level: 'None' }],
    };
    await writeFile(policyFile, JSON.stringify(policy, null, 2));
    auditArgs = [
      `--audit-policy-file=${policyFile}`,
      `--audit-log-path=${auditLogPath}`,
      '--audit-log-format=json',
      '--audit-log-mode=blocking',
    ];
  }

  const procs: DaemonRecord[] = [];
  const removeGuards = installCrashGuards(() => procs);
  const stopAll = async (): Promise<void> => {
    for (const p of [...procs].reverse()) await stopDaemon(p);
  };

  try {
    for (let attempt = 1; ; attempt++) {
      const [etcdClient, etcdPeer, apiserver] = (await freePorts(3)) as [number, number, number];
      const ports = { etcdClient, etcdPeer, apiserver };
      const dataDir = path.join(stateDir, 'data');
      await rm(dataDir, { recursive: true, force: true });
      await mkdir(dataDir, { recursive: true, mode: 0o700 });
      const etcdEndpoint = `https://127.0.0.1:${etcdClient}`;
      const server = `https://127.0.0.1:${apiserver}`;
      const kubeconfigPath = path.join(stateDir, 'admin.kubeconfig');
      try {
        const etcd = await daemon(
          'etcd',
          [
            binaries.etcd,
            '--name=default',
            `--data-dir=${path.join(dataDir, 'etcd')}`,
            `--listen-client-urls=${etcdEndpoint}`,
            `--advertise-client-urls=${etcdEndpoint}`,
            `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
            `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
            `--initial-cluster=default=http://127.0.0.1:${etcdPeer}`,
            `--cert-file=${pki.etcdServerCert}`,
            `--key-file=${pki.etcdServerKey}`,
            `--trusted-ca-file=${pki.caCert}`,
            '--client-cert-auth',
            '--unsafe-no-fsync', // throwaway data; fsync dominates start time on slow disks
            '--log-level=warn',
          ],
          path.join(logsDir, 'etcd.log'),
          stateDir,
        );
        procs.push(etcd);
        await waitEtcdReady(etcdEndpoint, pki, etcd, 30_000);

        const apiserverProc = await daemon(
          'kube-apiserver',
          [
            binaries.kubeApiserver,
            `--etcd-servers=${etcdEndpoint}`,
            `--etcd-cafile=${pki.caCert}`,
            `--etcd-certfile=${pki.etcdClientCert}`,
            `--etcd-keyfile=${pki.etcdClientKey}`,
            '--bind-address=127.0.0.1',
            '--advertise-address=127.0.0.1',
            `--secure-port=${apiserver}`,
            `--cert-dir=${path.join(stateDir, 'pki', 'apiserver')}`,
            `--tls-cert-file=${pki.apiserverCert}`,
            `--tls-private-key-file=${pki.apiserverKey}`,
            `--client-ca-file=${pki.caCert}`,
            '--authorization-mode=Node,RBAC',
            `--kubelet-client-certificate=${pki.kubeletClientCert}`,
            `--kubelet-client-key=${pki.kubeletClientKey}`,
            '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
            `--service-account-key-file=${pki.serviceAccountPub}`,
            `--service-account-signing-key-file=${pki.serviceAccountKey}`,
            `--service-cluster-ip-range=${SERVICE_CLUSTER_IP_RANGE}`,
            '--allow-privileged=true',
            // No kube-controller-manager runs by default, so no namespace gets a "default" ServiceAccount;
            // the ServiceAccount admission plugin would then reject every Pod. A caller that starts a
            // controller-manager passes its own --disable-admission-plugins in extraApiserverArgs (a list
            // flag: repeated flags append, so the default is left out then, not overridden).
            ...((options.extraApiserverArgs ?? []).some((a) => a.startsWith('--disable-admission-plugins'))
              ? []
              : ['--disable-admission-plugins=ServiceAccount']),
            '--profiling=false',
            ...auditArgs,
            ...(options.extraApiserverArgs ?? []),
          ],
          path.join(logsDir, 'kube-apiserver.log'),
          stateDir,
        );
        procs.push(apiserverProc);
        await writeKubeconfig(kubeconfigPath, {
          server,
          caFile: pki.caCert,
          user: 'admin',
          credentials: { kind: 'cert', certFile: pki.adminCert, keyFile: pki.adminKey },
        });
        await writeState(stateDir, {
          version: 1,
          ownerPid: process.pid,
          ownerStart: processStartTime(process.pid),
          detached: options.detached ?? false,
          server,
          kubeconfigPath,
          etcdEndpoint,
          ports,
          k8sBinDir: binaries.k8sBinDir,
          startedAt: new Date().toISOString(),
          processes: procs,
        });
        await waitReady(server, pki, procs, options.readyTimeoutMs ?? 90_000);
      } catch (err) {
        await stopAll();
        procs.length = 0;
        const inUse = /address already in use/i.test(
          `${tail(path.join(logsDir, 'etcd.log'), 5)}\n${tail(path.join(logsDir, 'kube-apiserver.log'), 5)}`,
        );
        if (inUse && attempt < 3) {
          log(`port race on attempt ${attempt}; retrying with other ports`);
          continue;
        }
        throw err;
      }

      if (options.detached) removeGuards();
      log(
        `control plane ready in ${((Date.now() - started) / 1000).toFixed(1)} s: ${server} (kubeconfig ${kubeconfigPath})`,
      );
      let stopped = false;
      return {
        stateDir,
        server,
        binDir: binaries.k8sBinDir,
        binaries,
        pki,
        etcdEndpoint,
        ports,
        processes: [...procs],
        auditLogPath,
        ...clusterClient(kubeconfigPath, binaries.kubectl),
        async stop() {
          if (stopped) return;
          stopped = true;
          try {
            await stopRecorded(stateDir);
            await stopAll(); // in case the state file was removed by hand
            await waitPortsFree([ports.apiserver, ports.etcdClient, ports.etcdPeer]);
          } finally {
            removeGuards();
          }
        },
      };
    }
  } catch (err) {
    removeGuards();
    await rm(path.join(stateDir, 'state.json'), { force: true });
    throw err;
  }
}

/** The admin client credentials of a state dir's PKI (for /readyz). */
async function adminPki(stateDir: string): Promise<LoadedPki> {
  const dir = path.join(stateDir, 'pki');
  return loadPki({
    dir,
    caCert: path.join(dir, 'ca.crt'),
    caKey: path.join(dir, 'ca.key'),
    etcdServerCert: '',
    etcdServerKey: '',
    etcdClientCert: '',
    etcdClientKey: '',
    apiserverCert: '',
    apiserverKey: '',
    adminCert: path.join(dir, 'admin.crt'),
    adminKey: path.join(dir, 'admin.key'),
    kubeletClientCert: '',
    kubeletClientKey: '',
    serviceAccountKey: '',
    serviceAccountPub: '',
  });
}

export interface StoppedApiserver {
  /** Start it again with the same flags and port (etcd kept its data); resolves once /readyz is 200. */
  start(options?: { readyTimeoutMs?: number }): Promise<void>;
}

/**
 * An API server outage: stops the kube-apiserver of the control plane recorded in `stateDir`
 * (SIGTERM, like a restart; etcd keeps running) and returns how to start it again. The new
 * process is recorded in state.json, so the control plane's stop() stops it.
 */
export async function stopApiserver(stateDir: string): Promise<StoppedApiserver> {
  const state = await readState(stateDir);
  const rec = state?.processes.find((p) => p.name === 'kube-apiserver');
  if (state === undefined || rec === undefined || !isOurs(rec))
    throw new Error(`no running kube-apiserver recorded in ${stateDir}`);
  const argv = readCmdline(rec.pid);
  if (argv === undefined || argv.length === 0)
    throw new Error(`cannot read the command line of kube-apiserver (pid ${rec.pid})`);
  await stopDaemon(rec);
  await waitPortsFree([state.ports.apiserver]);
  return {
    async start(options = {}) {
      const proc = (await startDaemon('kube-apiserver', argv, rec.logFile, { marker: rec.marker, keepRunning: true }))
        .record;
      const current = (await readState(stateDir)) ?? state;
      await writeState(stateDir, {
        ...current,
        processes: current.processes.map((p) => (p.name === 'kube-apiserver' ? proc : p)),
      });
      await waitReady(state.server, await adminPki(stateDir), [proc], options.readyTimeoutMs ?? 90_000);
    },
  };
}

/** The control plane recorded in a state dir (started earlier, e.g. by `npm run cluster -- up`), if it runs. */
export async function attachControlPlane(
  stateDir = DEFAULT_STATE_DIR,
): Promise<{ state: ClusterState; running: boolean; ready: boolean } | undefined> {
  const state = await readState(stateDir);
  if (!state) return undefined;
  const running = state.processes.every((p) => isOurs(p));
  let ready = false;
  if (running && existsSync(path.join(stateDir, 'pki', 'ca.crt'))) {
    const pki = await adminPki(stateDir);
    try {
      ready = (await httpsGet(`${state.server}/readyz`, pki, 2000)).status === 200;
    } catch {
      ready = false;
    }
  }
  return { state, running, ready };
}
