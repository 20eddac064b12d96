/**
 * virt-launcher stand-in: one libvirt session daemon per simulated pod, run as a non-root user
 * (like KubeVirt's uid 107), with a transient domain `<ns>_<vmi>` whose disks are qcow2 chains
 * aliased `ua-<disk>`. TCG, CPUs paused: no guest OS is needed for block jobs.
 *
 * Contract (docs/ARCHITECTURE.md): startLauncher(options) -> Launcher; stop() removes everything.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import { LocalRunner } from '../../../operator/src/hypervisor/local-runner.ts';
import { buildChain, migratedChain, qemuIoWrite } from './images.ts';
import { spawnLogged } from './spawn-logged.ts';
import { ensureHypervisorPackages } from './packages.ts';
import { ensureQemuUser } from './user.ts';

const execFileP = promisify(execFile);

export interface LauncherDiskSpec {
  /** KubeVirt disk name: alias ua-<name>. */
  readonly name: string;
  readonly layers: number;
  readonly sizeMiB: number;
  /** MiB of data written across the chain (default half the size); see images.ts for the layout. */
  readonly allocatedMiB?: number;
  /**
   * Put the top image (the active layer a pull writes into) on a filesystem of its own of this
   * many MiB (a tmpfs with size=, mounted by the stand-in and unmounted by stop()), like an
   * emptyDir that is nearly full. Needs root.
   */
  readonly topFsMiB?: number;
  /**
   * Play the target of a KubeVirt block migration: instead of building a chain, copy this source
   * chain (top first; flush the source first) as images.ts migratedChain does: copies of the
   * backing images and a new top holding what the source's top held, all at this launcher's paths.
   * `layers`, `sizeMiB` and `allocatedMiB` are then ignored.
   */
  readonly migratedFrom?: readonly string[];
}

export interface LauncherOptions {
  readonly namespace: string;
  readonly vmiName: string;
  /** Default virt-launcher-<vmi>-<random>. */
  readonly podName?: string;
  readonly disks: readonly LauncherDiskSpec[];
  /** Where to register for the operator's local transport; default env BLOCKPULL_LOCAL_LAUNCHERS_DIR (unset: no registration). */
  readonly registryDir?: string;
  /** Parent of the per-launcher directory (default /var/tmp; keep it short: unix socket paths are limited). */
  readonly baseDir?: string;
  readonly memoryMiB?: number;
}

export interface LauncherDisk {
  readonly name: string;
  readonly alias: string;
  readonly target: string;
  /** Top first. */
  readonly chain: readonly string[];
  readonly sizeBytes: number;
  /** Bytes a full pull copies (allocated in the backing layers, not shadowed by the top). */
  readonly pullBytes: number;
  /** The small filesystem holding the top image (topFsMiB), if any. */
  readonly topFs?: string;
}

export interface Launcher {
  readonly namespace: string;
  readonly podName: string;
  readonly domain: string;
  readonly uri: string;
  readonly socketPath: string;
  readonly uid: number;
  readonly gid: number;
  /** LocalRunner as the launcher's user, with its HOME and XDG_RUNTIME_DIR. */
  readonly runner: LocalRunner;
  readonly dir: string;
  readonly disks: readonly LauncherDisk[];
  /** Path of the registration file, if registered. */
  readonly registrationPath?: string;
  /** qemu-img convert of the disk's current chain, made now (qcow2, flat). */
  reference(diskName: string): Promise<string>;
  /** qemu-img compare of the disk's current top (with its chain) against a reference: true = identical. */
  compare(diskName: string, refPath: string): Promise<boolean>;
  /** Make QEMU write its cached qcow2 metadata for this disk, so qemu-img sees the current data. */
  flush(diskName: string): Promise<void>;
  /** Bytes of guest data held by the disk's top image itself (qemu-img map, depth 0). */
  topDataBytes(diskName: string): Promise<number>;
  /** A guest-like write through the device's BlockBackend (HMP qemu-io on ua-<disk>/virtio-backend). */
  guestWrite(diskName: string, offset: number, length: number, pattern: number): Promise<void>;
  /** Kill the libvirt daemon (SIGKILL, like a crash); QEMU keeps running. */
  killDaemon(): Promise<void>;
  /** Start the daemon again (after killDaemon); resolves once it answers. */
  startDaemon(): Promise<void>;
  stop(): Promise<void>;
}

const mapSchema = z.array(z.looseObject({ start: z.number(), length: z.number(), depth: z.number(), data: z.boolean() }));

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function targetName(i: number): string {
  if (i >= 26) throw new RangeError('at most 26 disks');
  return `vd${String.fromCharCode(97 + i)}`;
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

function domainXml(name: string, memoryMiB: number, disks: readonly LauncherDisk[]): string {
  const diskXml = disks
    .map(
      (d) => `    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${xmlEscape(d.chain[0] ?? '')}'/>
      <target dev='${d.target}' bus='virtio'/>
      <alias name='${xmlEscape(d.alias)}'/>
    </disk>`,
    )
    .join('\n');
  return `<domain type='qemu'>
  <name>${xmlEscape(name)}</name>
  <memory unit='MiB'>${memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${diskXml}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

async function waitFor(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Running; a zombie (left to an init that may not reap it) counts as gone. */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

export async function startLauncher(options: LauncherOptions): Promise<Launcher> {
  const { namespace, vmiName } = options;
  if (!DNS_LABEL.test(namespace) || !DNS_LABEL.test(vmiName)) throw new Error(`namespace and VMI name must be DNS labels: ${namespace}/${vmiName}`);
  const podName = options.podName ?? `virt-launcher-${vmiName}-${randomBytes(3).toString('hex').slice(0, 5)}`;
  await ensureHypervisorPackages();
  const user = await ensureQemuUser();
  const { uid, gid } = user;
  const dir = path.join(options.baseDir ?? '/var/tmp', `bpl-${randomBytes(4).toString('hex')}`);
  const runDir = path.join(dir, 'run');
  const home = path.join(dir, 'home');
  const imgDir = path.join(dir, 'images');
  const refDir = path.join(dir, 'refs');
  const socketPath = path.join(runDir, 'libvirt', 'libvirt-sock');
  const uri = `qemu+unix:///session?socket=${socketPath}`;
  const domain = `${namespace}_${vmiName}`;
  const env: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: home,
    XDG_RUNTIME_DIR: runDir,
    XDG_CONFIG_HOME: path.join(home, '.config'),
    XDG_CACHE_HOME: path.join(home, '.cache'),
    XDG_DATA_HOME: path.join(home, '.local', 'share'),
    LANG: 'C',
  };
  const runner = new LocalRunner({ uid, gid, env, description: `launcher ${namespace}/${podName} uid=${uid}` });
  const registryDir = options.registryDir ?? process.env.BLOCKPULL_LOCAL_LAUNCHERS_DIR;
  const registrationPath = registryDir === undefined || registryDir === '' ? undefined : path.join(registryDir, `${namespace}.${podName}.json`);

  let daemon: ChildProcess | undefined;
  let stopped = false;
  const disks: LauncherDisk[] = [];
  /** tmpfs mounts made for topFsMiB, unmounted by stop(). */
  const mounts: string[] = [];

  const virsh = async (args: readonly string[], timeoutMs = 30_000): Promise<string> => {
    const r = await runner.run(['virsh', '-q', '-c', uri, ...args], { timeoutMs });
    if (r.exitCode !== 0) throw new Error(`virsh ${args.join(' ')} exited ${r.exitCode}: ${r.stderr.trim()}`);
    return r.stdout;
  };

  const startDaemon = async (): Promise<void> => {
    if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) throw new Error('libvirtd already running');
    const d = await spawnLogged('libvirtd', [], path.join(dir, 'libvirtd.log'), { uid, gid, env, cwd: home });
    daemon = d;
    await waitFor('libvirtd to answer', 30_000, async () => {
      if (d.exitCode !== null || d.signalCode !== null) {
        const tail = await readFile(path.join(dir, 'libvirtd.log'), 'utf8').catch(() => '');
        throw new Error(`libvirtd exited (${d.exitCode ?? d.signalCode}): ${tail.slice(-2000)}`);
      }
      const r = await runner.run(['virsh', '-q', '-c', uri, 'version'], { timeoutMs: 10_000 }).catch(() => undefined);
      return r?.exitCode === 0;
    });
  };

  const killDaemon = async (): Promise<void> => {
    const d = daemon;
    if (d?.pid === undefined || d.exitCode !== null || d.signalCode !== null) return;
    const exited = new Promise<void>((r) => d.once('exit', () => r()));
    d.kill('SIGKILL');
    await exited;
  };

  /**
   * Processes the session daemon started that outlive it: QEMU (daemonized by libvirt) and
   * virtlogd (spawned on demand with --timeout=120). Read from their pid files, checked by name.
   */
  const helperPids = async (): Promise<{ pid: number; name: string }[]> => {
    const files: [string, string][] = [
      [path.join(runDir, 'libvirt', 'qemu', 'run', `${domain}.pid`), 'qemu-system'],
      [path.join(runDir, 'libvirt', 'virtlogd.pid'), 'virtlogd'],
      [path.join(runDir, 'libvirt', 'virtlockd.pid'), 'virtlockd'],
    ];
    const found: { pid: number; name: string }[] = [];
    for (const [file, name] of files) {
      try {
        const pid = Number((await readFile(file, 'utf8')).trim());
        if (!Number.isInteger(pid) || pid <= 0) continue;
        const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
        if (cmdline.includes(name)) found.push({ pid, name });
      } catch {
        /* no pid file */
      }
    }
    return found;
  };

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const errors: unknown[] = [];
    const before = await helperPids();
    if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) {
      await virsh(['destroy', domain], 30_000).catch(() => undefined); // absent domain: fine
      const d = daemon;
      const exited = new Promise<void>((r) => d.once('exit', () => r()));
      d.kill('SIGTERM');
      const t = setTimeout(() => d.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    // QEMU and virtlogd survive the daemon: kill them by their pid files.
    const after = await helperPids();
    const pids = [...new Set([...before, ...after].map((p) => p.pid))];
    for (const pid of pids) {
      if (!alive(pid)) continue;
      try {
        process.kill(pid, 'SIGKILL');
        await waitFor(`qemu ${pid} to exit`, 10_000, () => Promise.resolve(!alive(pid)));
      } catch (err) {
        errors.push(err);
      }
    }
    for (const m of mounts.splice(0).reverse()) {
      await execFileP('umount', [m]).catch(async () => execFileP('umount', ['-l', m]).catch((e: unknown) => errors.push(e)));
    }
    if (registrationPath !== undefined) await rm(registrationPath, { force: true }).catch((e: unknown) => errors.push(e));
    await rm(dir, { recursive: true, force: true }).catch((e: unknown) => errors.push(e));
    if (errors.length > 0) throw new AggregateError(errors, `launcher ${domain}: stop incomplete`);
  };

  const diskByName = (name: string): LauncherDisk => {
    const d = disks.find((x) => x.name === name);
    if (d === undefined) throw new Error(`launcher ${domain} has no disk ${name}`);
    return d;
  };

  /**
   * Make QEMU write its cached qcow2 metadata (L2 tables, refcounts) to the file, so that a reader
   * outside QEMU (qemu-img -U) sees what the guest sees. No-op when the daemon or domain is down.
   */
  const flush = async (d: LauncherDisk): Promise<void> => {
    if (daemon === undefined || daemon.exitCode !== null || daemon.signalCode !== null) return;
    const state = await virsh(['domstate', domain]).catch(() => '');
    if (state.trim() === '' || state.includes('shut off')) return;
    const out = await virsh(['qemu-monitor-command', domain, '--hmp', `qemu-io -d /machine/peripheral/${d.alias}/virtio-backend "flush"`]);
    if (out.trim() !== '') throw new Error(`flush of ${d.alias} failed: ${out.trim()}`);
  };

  let refCounter = 0;
  try {
    for (const d of [dir, runDir, home, imgDir]) {
      await mkdir(d, { recursive: true, mode: 0o700 });
      await chown(d, uid, gid);
    }
    await mkdir(refDir, { recursive: true, mode: 0o700 });
    for (const [i, spec] of options.disks.entries()) {
      let topFs: string | undefined;
      if (spec.topFsMiB !== undefined) {
        topFs = path.join(dir, `fs-${spec.name}`);
        await mkdir(topFs, { mode: 0o700 });
        await execFileP('mount', ['-t', 'tmpfs', '-o', `size=${spec.topFsMiB}m,mode=0700,uid=${uid},gid=${gid}`, `bpl-${spec.name}`, topFs]);
        mounts.push(topFs);
      }
      const built = spec.migratedFrom !== undefined ? await migratedChain({ dir: imgDir, name: spec.name, source: spec.migratedFrom, uid, gid }) : await buildChain({
        dir: imgDir,
        name: spec.name,
        layers: spec.layers,
        sizeMiB: spec.sizeMiB,
        ...(spec.allocatedMiB === undefined ? {} : { allocatedMiB: spec.allocatedMiB }),
        ...(topFs === undefined ? {} : { topDir: topFs }),
        uid,
        gid,
      });
      disks.push({ name: spec.name, alias: `ua-${spec.name}`, target: targetName(i), chain: built.chain, sizeBytes: built.sizeBytes, pullBytes: built.pullBytes, ...(topFs === undefined ? {} : { topFs }) });
    }
    await startDaemon();
    const xmlPath = path.join(home, 'domain.xml');
    await writeFile(xmlPath, domainXml(domain, options.memoryMiB ?? 64, disks));
    await chown(xmlPath, uid, gid);
    await virsh(['create', xmlPath, '--paused'], 60_000);
    if (registrationPath !== undefined) {
      await mkdir(path.dirname(registrationPath), { recursive: true });
      // env: optional (the local transport merges it into virsh's environment).
      const registration = { namespace, pod: podName, uri, uid, gid, env: { HOME: home, XDG_RUNTIME_DIR: runDir } };
      await writeFile(registrationPath, `${JSON.stringify(registration, null, 2)}\n`);
    }
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }

  return {
    namespace,
    podName,
    domain,
    uri,
    socketPath,
    uid,
    gid,
    runner,
    dir,
    disks,
    ...(registrationPath === undefined ? {} : { registrationPath }),
    async reference(diskName) {
      const d = diskByName(diskName);
      const ref = path.join(refDir, `${diskName}-${++refCounter}.qcow2`);
      await flush(d);
      // -U: QEMU holds the image locks; the CPUs are paused, so the content is stable.
      await execFileP('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', d.chain[0] ?? '', ref]);
      return ref;
    },
    async compare(diskName, refPath) {
      const d = diskByName(diskName);
      await flush(d);
      try {
        await execFileP('qemu-img', ['compare', '-U', '-q', '-f', 'qcow2', '-F', 'qcow2', d.chain[0] ?? '', refPath]);
        return true;
      } catch (err) {
        if ((err as { code?: unknown }).code === 1) return false;
        throw err;
      }
    },
    async flush(diskName) {
      await flush(diskByName(diskName));
    },
    async topDataBytes(diskName) {
      const d = diskByName(diskName);
      await flush(d);
      const { stdout } = await execFileP('qemu-img', ['map', '-U', '--output=json', '-f', 'qcow2', d.chain[0] ?? ''], { maxBuffer: 64 * 1024 * 1024 });
      const extents = mapSchema.parse(JSON.parse(stdout));
      return extents.filter((e) => e.depth === 0 && e.data).reduce((n, e) => n + e.length, 0);
    },
    async guestWrite(diskName, offset, length, pattern) {
      const d = diskByName(diskName);
      const io = `write -P 0x${pattern.toString(16)} ${offset} ${length}`;
      const out = await virsh(['qemu-monitor-command', domain, '--hmp', `qemu-io -d /machine/peripheral/${d.alias}/virtio-backend "${io}"`]);
      if (/error|fail|not found|denied/i.test(out)) throw new Error(`guest write on ${d.alias} failed: ${out.trim()}`);
    },
    killDaemon,
    startDaemon,
    stop,
  };
}

/** Apply the same writes to a copy of a reference (the expected image after guest writes). */
export async function referenceWithWrites(refPath: string, writes: readonly { offset: number; length: number; pattern: number }[]): Promise<string> {
  const out = `${refPath.replace(/\.qcow2$/, '')}-w${randomBytes(3).toString('hex')}.qcow2`;
  await execFileP('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', refPath, out]);
  await qemuIoWrite(out, writes);
  return out;
}
