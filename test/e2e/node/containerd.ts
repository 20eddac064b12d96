/**
 * containerd for the test node: Debian's containerd + runc + CNI plugins, started with our own
 * config (root, state, socket and CNI config under one run dir), the CRI plugin on, overlayfs
 * snapshotter, cgroupfs (no systemd as PID 1 here; the hierarchy is cgroup v1 with a v2 "unified"
 * mount beside it). stop() leaves no process, mount, network namespace or bridge behind.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { withLock } from '../support/lock.ts';
import { tail } from '../support/tail.ts';
import { waitFor } from '../support/wait.ts';
import { ensureDebianPackages } from '../support/debian.ts';
import { mountsUnder, unmountAllUnder } from '../support/mounts.ts';
import {
  findProcesses,
  isOurs,
  recordOf,
  resultOf,
  run,
  startDaemon,
  stopDaemon,
  type Daemon,
  type DaemonRecord,
  type RunResult,
} from '../support/process.ts';
import { SANDBOX_IMAGE } from '../images/images.ts';

export const CONTAINERD_PACKAGES = [
  'containerd',
  'runc',
  'containernetworking-plugins',
  'iproute2',
  'iptables',
] as const;

/** Prefix of the CNI bridge names (an interface name has at most 15 bytes). */
export const CNI_BRIDGE_PREFIX = 'bpcni';

export interface ContainerdOptions {
  /** Everything of this containerd lives below this directory. */
  readonly runDir: string;
  /** Pod CIDR (a /24) for the bridge CNI config (host-local IPAM); default: a free 10.244.N.0/24. The bridge is created with its gateway address. */
  readonly podCidr?: string;
  /**
   * Short id that names this instance's bridge (bpcni<id>) and CNI network (blockpull-<id>), so
   * two nodes on one machine never share them. Default: random.
   */
  readonly id?: string;
  /** Keep containerd running after this process exits (see startDaemon). Default false. */
  readonly detached?: boolean;
}

export interface Containerd {
  readonly runDir: string;
  /** unix socket path (CRI and containerd API). */
  readonly socket: string;
  readonly endpoint: string;
  readonly logPath: string;
  readonly version: string;
  readonly bridge: string;
  readonly network: string;
  readonly podCidr: string;
  /** The containerd process, identifiable from another process (for a later teardown). */
  readonly process: DaemonRecord;
  /** Run `ctr --address <socket> ...args`. */
  ctr(args: readonly string[], options?: { allowExit?: boolean; timeoutMs?: number }): Promise<RunResult>;
  /** Import an OCI/docker archive into the k8s.io namespace; returns the image names. */
  importImage(archivePath: string): Promise<string[]>;
  stop(): Promise<void>;
}

function containerdConfig(runDir: string): string {
  const root = join(runDir, 'root');
  const state = join(runDir, 'state');
  const socket = join(runDir, 'containerd.sock');
  const cniConf = join(runDir, 'cni', 'net.d');
  // TOML written by hand: few keys, all strings we control (no user input).
  return [
    'version = 2',
    `root = ${JSON.stringify(root)}`,
    `state = ${JSON.stringify(state)}`,
    'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
    '[grpc]',
    `  address = ${JSON.stringify(socket)}`,
    '[ttrpc]',
    `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
    '[debug]',
    '  level = "info"',
    '[metrics]',
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(join(runDir, 'opt'))}`,
    '[plugins."io.containerd.grpc.v1.cri"]',
    `  sandbox_image = ${JSON.stringify(SANDBOX_IMAGE)}`,
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    '  netns_mounts_under_state_dir = true',
    '  enable_selinux = false',
    '  disable_apparmor = true',
    // This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its oom_score_adj (the
    // kubelet asks -998 for sandboxes): clamp requests to containerd's own score, as rootless setups do.
    '  restrict_oom_score_adj = true',
    '  max_container_log_line_size = 16384',
    '  [plugins."io.containerd.grpc.v1.cri".containerd]',
    '    snapshotter = "overlayfs"',
    '    default_runtime_name = "runc"',
    '    discard_unpacked_layers = false',
    '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
    '      runtime_type = "io.containerd.runc.v2"',
    '      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
    '        SystemdCgroup = false',
    '        BinaryName = "/usr/sbin/runc"',
    `        Root = ${JSON.stringify(join(runDir, 'runc'))}`,
    '  [plugins."io.containerd.grpc.v1.cri".cni]',
    '    bin_dir = "/usr/lib/cni"',
    `    conf_dir = ${JSON.stringify(cniConf)}`,
    '    max_conf_num = 1',
    '',
  ].join('\n');
}

/** CNI: a Linux bridge with host-local IPAM, plus loopback. No masquerade: pods talk to the host. */
function cniConfig(network: string, bridge: string, podCidr: string): string {
  return JSON.stringify(
    {
      cniVersion: '0.4.0',
      name: network,
      plugins: [
        {
          type: 'bridge',
          bridge,
          isGateway: true,
          ipMasq: false,
          hairpinMode: true,
          ipam: { type: 'host-local', ranges: [[{ subnet: podCidr }]], routes: [{ dst: '0.0.0.0/0' }] },
        },
      ],
    },
    null,
    2,
  );
}

const TaskList = z.array(z.object({ id: z.string(), pid: z.number() }));

function parseTasks(text: string): z.infer<typeof TaskList> {
  // `ctr tasks ls` prints: TASK  PID  STATUS
  const rows = text
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 2 && f[0] !== '')
    .map((f) => ({ id: f[0] ?? '', pid: Number(f[1]) }));
  return TaskList.parse(rows);
}

/** The first 10.244.N.0/24 that no route or address on this machine uses. */
export async function freePodCidr(): Promise<string> {
  const used = (await run(['ip', '-4', 'route', 'show'])).stdout + (await run(['ip', '-4', 'addr', 'show'])).stdout;
  for (let n = 0; n < 256; n++) {
    const cidr = `10.244.${n}.0/24`;
    if (!used.includes(`10.244.${n}.`)) return cidr;
  }
  throw new Error('no free pod CIDR in 10.244.0.0/16');
}

/**
 * Picks a free pod CIDR and claims it at once by creating the node's bridge with the CIDR's gateway
 * address (the CNI bridge plugin adopts both), under a host-wide lock: two nodes started at the same
 * time on one machine (two test runs) never get the same subnet. Before, the subnet only showed up
 * in the routing table with the first pod, so a node that had no pod yet was invisible to the next.
 */
export async function claimPodCidr(bridge: string, requested?: string): Promise<string> {
  return withLock(
    join('/var/tmp', 'bpnode-cidr.lock'),
    async () => {
      const cidr = requested ?? (await freePodCidr());
      const gateway = cidr.replace(/\.0\/24$/, '.1/24');
      if (gateway === cidr) throw new Error(`pod CIDR ${cidr}: a /24 ending in .0 expected`);
      await run(['ip', 'link', 'add', bridge, 'type', 'bridge']);
      await run(['ip', 'addr', 'add', gateway, 'dev', bridge]);
      await run(['ip', 'link', 'set', bridge, 'up']);
      return cidr;
    },
    { timeoutMs: 60_000 },
  );
}

export async function startContainerd(options: ContainerdOptions): Promise<Containerd> {
  await ensureDebianPackages(CONTAINERD_PACKAGES);
  const runDir = options.runDir;
  const id = options.id ?? randomBytes(3).toString('hex');
  if (!/^[a-z0-9]{1,10}$/.test(id)) throw new Error(`containerd id ${id}: 1-10 lowercase letters or digits`);
  const bridge = `${CNI_BRIDGE_PREFIX}${id}`;
  const network = `blockpull-${id}`;
  const podCidr = await claimPodCidr(bridge, options.podCidr);
  mkdirSync(join(runDir, 'cni', 'net.d'), { recursive: true });
  writeFileSync(join(runDir, 'config.toml'), containerdConfig(runDir));
  writeFileSync(join(runDir, 'cni', 'net.d', '10-blockpull.conflist'), cniConfig(network, bridge, podCidr));
  const socket = join(runDir, 'containerd.sock');
  const logPath = join(runDir, 'containerd.log');
  const version = (await run(['containerd', '--version'])).stdout.trim();

  // host-local IPAM keeps its leases in /var/lib/cni/networks/<network name>.
  const daemon: Daemon = await startDaemon(
    'containerd',
    ['containerd', '--config', join(runDir, 'config.toml')],
    logPath,
    {
      env: { ...process.env, PATH: `/usr/sbin:/usr/bin:/sbin:/bin` },
      keepRunning: options.detached ?? false,
      marker: runDir,
    },
  );

  const ctr = (args: readonly string[], o: { allowExit?: boolean; timeoutMs?: number } = {}): Promise<RunResult> =>
    run(['ctr', '--address', socket, ...args], { allowExit: o.allowExit, timeoutMs: o.timeoutMs ?? 300_000 });

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await teardownContainerd({ runDir, bridge, network, process: daemon.record });
  };

  try {
    await waitFor('containerd socket', 60_000, async () => {
      if (!daemon.isRunning()) throw new Error(`containerd exited:\n${tail(logPath)}`);
      if (!existsSync(socket)) return false;
      const r = await ctr(['version'], { allowExit: true, timeoutMs: 5000 });
      return r.exitCode === 0;
    });
    // The CRI plugin must have loaded (it reports errors, not exits, when it cannot).
    const plugins = await ctr(['plugins', 'ls']);
    const cri = plugins.stdout.split('\n').find((l) => /\bcri\b/.test(l) && l.includes('io.containerd.grpc.v1'));
    if (!cri || !/\bok\b/.test(cri))
      throw new Error(`containerd CRI plugin not ok: ${cri ?? 'absent'}\n${tail(logPath)}`);
    const overlay = plugins.stdout
      .split('\n')
      .find((l) => l.includes('io.containerd.snapshotter.v1') && /\boverlayfs\b/.test(l));
    if (!overlay || !/\bok\b/.test(overlay)) throw new Error(`overlayfs snapshotter not ok: ${overlay ?? 'absent'}`);
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    runDir,
    socket,
    endpoint: `unix://${socket}`,
    logPath,
    version,
    bridge,
    network,
    podCidr,
    process: daemon.record,
    ctr,
    async importImage(archivePath: string): Promise<string[]> {
      const r = await ctr(['-n', 'k8s.io', 'images', 'import', '--snapshotter', 'overlayfs', archivePath], {
        timeoutMs: 600_000,
      });
      const names = [...r.stdout.matchAll(/^unpacking (\S+) /gm), ...r.stdout.matchAll(/^(\S+)\s+saved/gm)].map(
        (m) => m[1] ?? '',
      );
      return names.filter(Boolean);
    },
    stop,
  };
}

/**
 * Stop a containerd started by startContainerd and remove everything it made, from its record alone
 * (so also for a run whose owner died): its tasks (through containerd while it runs, else with runc
 * directly), containerd, its shims, mounts below runDir, the bridge, the CNI leases, runDir.
 */
export async function teardownContainerd(c: {
  runDir: string;
  bridge: string;
  network: string;
  process?: DaemonRecord | undefined;
}): Promise<void> {
  const socket = join(c.runDir, 'containerd.sock');
  const ctr = (args: readonly string[]): Promise<RunResult> =>
    run(['ctr', '--address', socket, ...args], { allowExit: true, timeoutMs: 20_000 }).catch(resultOf);
  const alive = c.process !== undefined && isOurs(c.process);
  // 1. Kill every task (container) this containerd runs, in every namespace.
  if (alive && existsSync(socket)) {
    const nsList = await ctr(['namespaces', 'ls', '-q']);
    for (const ns of nsList.stdout
      .split('\n')
      .map((s) => s.trim())
      .filter(Boolean)) {
      const tasks = await ctr(['-n', ns, 'tasks', 'ls']);
      for (const t of parseTasks(tasks.stdout)) await ctr(['-n', ns, 'tasks', 'kill', '-s', 'SIGKILL', t.id]);
      for (const t of parseTasks(tasks.stdout)) {
        await waitFor(
          `task ${t.id} to stop`,
          15_000,
          async () => {
            const r = await ctr(['-n', ns, 'tasks', 'delete', t.id]);
            return r.exitCode === 0 || /not found/.test(r.stderr);
          },
          300,
        ).catch(() => undefined);
      }
    }
  }
  // 2. Stop containerd itself.
  if (c.process) await stopDaemon(c.process, 15_000);
  // 3. Containers left (containerd was gone, e.g. its owner was SIGKILLed): runc state is ours, per namespace.
  const runcRoot = join(c.runDir, 'runc');
  if (existsSync(runcRoot)) {
    for (const ns of readdirSync(runcRoot)) {
      const root = join(runcRoot, ns);
      const list = await run(['runc', '--root', root, 'list', '-q'], { allowExit: true, timeoutMs: 20_000 }).catch(
        resultOf,
      );
      for (const id of list.stdout
        .split('\n')
        .map((s) => s.trim())
        .filter(Boolean)) {
        await run(['runc', '--root', root, 'delete', '--force', id], { allowExit: true, timeoutMs: 30_000 }).catch(
          resultOf,
        );
      }
    }
  }
  // 4. Shims started for this containerd (they outlive it by design).
  for (const p of findProcesses(['containerd-shim', socket])) {
    const rec = recordOf(p.pid, 'containerd-shim', socket);
    if (rec) await stopDaemon(rec, 5000);
  }
  // 5. Mounts (rootfs overlays, sandbox netns bind mounts, shm) below the run dir.
  await unmountAllUnder(c.runDir);
  // 6. Network: the bridge, and host-local leases of our network.
  await run(['ip', 'link', 'del', c.bridge], { allowExit: true });
  rmSync(join('/var/lib/cni/networks', c.network), { recursive: true, force: true });
  // 7. Files. The root holds only content imported this run (images are cached as archives).
  if (mountsUnder(c.runDir).length === 0) rmSync(c.runDir, { recursive: true, force: true });
}

/** Leftovers of any containerd started from runDir: for tests that assert a clean stop. */
export function leftovers(runDir: string, c?: Pick<Containerd, 'bridge' | 'network'>): string[] {
  const found: string[] = [];
  for (const p of findProcesses([runDir])) found.push(`process ${p.pid}: ${p.cmdline.join(' ')}`);
  for (const m of mountsUnder(runDir)) found.push(`mount ${m}`);
  if (c && existsSync(`/sys/class/net/${c.bridge}`)) found.push(`network device ${c.bridge}`);
  if (c && existsSync(join('/var/lib/cni/networks', c.network)))
    found.push(`CNI leases /var/lib/cni/networks/${c.network}`);
  if (existsSync(runDir)) found.push(`directory ${runDir}: ${readdirSync(runDir).join(', ')}`);
  return found;
}
