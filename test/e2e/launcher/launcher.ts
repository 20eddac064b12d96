/**
 * virt-launcher stand-in: one libvirt session daemon per simulated pod, run as a non-root user
 * (like KubeVirt's uid 107), with a transient domain `<ns>_<vmi>` whose disks are qcow2 chains
 * aliased `ua-<disk>`. TCG, CPUs paused: no guest OS is needed for block jobs.
 *
 * Contract (docs/ARCHITECTURE.md): startLauncher(options) -> Launcher; stop() removes everything.
 */
import { randomBytes } from 'node:crypto';
import { chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { LocalRunner } from '../../../operator/src/hypervisor/local-runner.ts';
import { buildChain, migratedChain, qemuIoWrite } from './disk-chain.ts';
import { domainXml, targetName } from './recipe.ts';
import { ensureHypervisorPackages } from './packages.ts';
import { ensureQemuUser } from './user.ts';
import {
  crashDaemon,
  recordOf,
  run,
  startDaemon as startProcess,
  stopDaemon,
  type Daemon,
} from '../support/process.ts';
import { waitFor } from '../support/wait.ts';

export interface LauncherDiskSpec {
  /** KubeVirt disk name: alias ua-<name>. */
  readonly name: string;
  readonly layers: number;
  readonly sizeMiB: number;
  /** MiB of data written across the chain (default half the size); see recipe.ts for the layout. */
  readonly allocatedMiB?: number;
  /**
   * Put the top image (the active layer a pull writes into) on a filesystem of its own of this
   * many MiB (a tmpfs with size=, mounted by the stand-in and unmounted by stop()), like an
   * emptyDir that is nearly full. Needs root.
   */
  readonly topFsMiB?: number;
  /**
   * Play the target of a KubeVirt block migration: instead of building a chain, copy this source
   * chain (top first; flush the source first) as disk-chain.ts migratedChain does: copies of the
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

const mapSchema = z.array(
  z.looseObject({ start: z.number(), length: z.number(), depth: z.number(), data: z.boolean() }),
);

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/**
 * Starts a stand-in in named steps: its directories, its disks (qcow2 chains, a tmpfs under the top
 * image if asked), the session libvirtd, the paused domain, and the registration file for the local
 * transport. If a step fails, everything made so far is removed.
 */
export async function startLauncher(options: LauncherOptions): Promise<Launcher> {
  const { namespace, vmiName } = options;
  if (!DNS_LABEL.test(namespace) || !DNS_LABEL.test(vmiName))
    throw new Error(`namespace and VMI name must be DNS labels: ${namespace}/${vmiName}`);
  await ensureHypervisorPackages();
  const s = new StandIn(options, await ensureQemuUser());
  try {
    await s.makeDirectories();
    for (const [i, spec] of options.disks.entries()) await s.addDisk(spec, targetName(i));
    await s.startDaemon();
    await s.createDomain(options.memoryMiB ?? 64);
    await s.register();
  } catch (err) {
    await s.stop().catch(() => undefined);
    throw err;
  }
  return s;
}

/** One stand-in: its paths, its libvirtd, its disks; the Launcher startLauncher() returns. */
class StandIn implements Launcher {
  readonly namespace: string;
  readonly podName: string;
  readonly domain: string;
  readonly uri: string;
  readonly socketPath: string;
  readonly uid: number;
  readonly gid: number;
  readonly runner: LocalRunner;
  readonly dir: string;
  readonly disks: LauncherDisk[] = [];
  readonly registrationPath?: string;
  readonly #runDir: string;
  readonly #home: string;
  readonly #imgDir: string;
  readonly #refDir: string;
  readonly #env: Record<string, string>;
  #daemon: Daemon | undefined;
  #stopped = false;
  /** tmpfs mounts made for topFsMiB, unmounted by stop(). */
  readonly #mounts: string[] = [];
  #refCounter = 0;

  constructor(options: LauncherOptions, user: { uid: number; gid: number }) {
    this.namespace = options.namespace;
    this.podName = options.podName ?? `virt-launcher-${options.vmiName}-${randomBytes(3).toString('hex').slice(0, 5)}`;
    this.uid = user.uid;
    this.gid = user.gid;
    this.dir = path.join(options.baseDir ?? '/var/tmp', `bpl-${randomBytes(4).toString('hex')}`);
    this.#runDir = path.join(this.dir, 'run');
    this.#home = path.join(this.dir, 'home');
    this.#imgDir = path.join(this.dir, 'images');
    this.#refDir = path.join(this.dir, 'refs');
    this.socketPath = path.join(this.#runDir, 'libvirt', 'libvirt-sock');
    this.uri = `qemu+unix:///session?socket=${this.socketPath}`;
    this.domain = `${options.namespace}_${options.vmiName}`;
    this.#env = {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: this.#home,
      XDG_RUNTIME_DIR: this.#runDir,
      XDG_CONFIG_HOME: path.join(this.#home, '.config'),
      XDG_CACHE_HOME: path.join(this.#home, '.cache'),
      XDG_DATA_HOME: path.join(this.#home, '.local', 'share'),
      LANG: 'C',
    };
    this.runner = new LocalRunner({
      uid: this.uid,
      gid: this.gid,
      env: this.#env,
      description: `launcher ${this.namespace}/${this.podName} uid=${this.uid}`,
    });
    const registryDir = options.registryDir ?? process.env.BLOCKPULL_LOCAL_LAUNCHERS_DIR;
    if (registryDir !== undefined && registryDir !== '')
      this.registrationPath = path.join(registryDir, `${this.namespace}.${this.podName}.json`);
  }

  // --- the steps of startLauncher ---------------------------------------------------------------

  /** The stand-in's directories, owned by the QEMU user (refs/ stays root's). */
  async makeDirectories(): Promise<void> {
    for (const d of [this.dir, this.#runDir, this.#home, this.#imgDir]) {
      await mkdir(d, { recursive: true, mode: 0o700 });
      await chown(d, this.uid, this.gid);
    }
    await mkdir(this.#refDir, { recursive: true, mode: 0o700 });
  }

  /** A disk: its chain (built, or copied from a migration source), on a tmpfs of its own if topFsMiB. */
  async addDisk(spec: LauncherDiskSpec, target: string): Promise<void> {
    const { uid, gid } = this;
    let topFs: string | undefined;
    if (spec.topFsMiB !== undefined) {
      topFs = path.join(this.dir, `fs-${spec.name}`);
      await mkdir(topFs, { mode: 0o700 });
      await run([
        'mount',
        '-t',
        'tmpfs',
        '-o',
        `size=${spec.topFsMiB}m,mode=0700,uid=${uid},gid=${gid}`,
        `bpl-${spec.name}`,
        topFs,
      ]);
      this.#mounts.push(topFs);
    }
    const built =
      spec.migratedFrom !== undefined
        ? await migratedChain({ dir: this.#imgDir, name: spec.name, source: spec.migratedFrom, uid, gid })
        : await buildChain({
            dir: this.#imgDir,
            name: spec.name,
            layers: spec.layers,
            sizeMiB: spec.sizeMiB,
            ...(spec.allocatedMiB === undefined ? {} : { allocatedMiB: spec.allocatedMiB }),
            ...(topFs === undefined ? {} : { topDir: topFs }),
            uid,
            gid,
          });
    this.disks.push({
      name: spec.name,
      alias: `ua-${spec.name}`,
      target,
      chain: built.chain,
      sizeBytes: built.sizeBytes,
      pullBytes: built.pullBytes,
      ...(topFs === undefined ? {} : { topFs }),
    });
  }

  /** The session libvirtd as the QEMU user; resolves once virsh gets an answer. Also: start it again after killDaemon(). */
  readonly startDaemon = async (): Promise<void> => {
    if (this.#daemon?.isRunning()) throw new Error('libvirtd already running');
    const log = path.join(this.dir, 'libvirtd.log');
    // libvirtd takes no arguments here (its paths come from the environment): the identity check is
    // pid + start time + argv[0].
    const d = await startProcess('libvirtd', ['libvirtd'], log, {
      marker: 'libvirtd',
      uid: this.uid,
      gid: this.gid,
      env: this.#env,
      cwd: this.#home,
    });
    this.#daemon = d;
    await waitFor(
      'libvirtd to answer',
      30_000,
      async () => {
        if (!d.isRunning()) {
          const tail = await readFile(log, 'utf8').catch(() => '');
          throw new Error(`libvirtd exited (${d.child.exitCode ?? d.child.signalCode}): ${tail.slice(-2000)}`);
        }
        const r = await this.runner
          .run(['virsh', '-q', '-c', this.uri, 'version'], { timeoutMs: 10_000 })
          .catch(() => undefined);
        return r?.exitCode === 0;
      },
      100,
    );
  };

  /** The transient domain <namespace>_<vmi> with the disks, CPUs paused. */
  async createDomain(memoryMiB: number): Promise<void> {
    const xmlPath = path.join(this.#home, 'domain.xml');
    await writeFile(xmlPath, domainXml(this.domain, memoryMiB, this.disks));
    await chown(xmlPath, this.uid, this.gid);
    await this.#virsh(['create', xmlPath, '--paused'], 60_000);
  }

  /** The registration file the operator's local transport reads (if a registry dir is set). */
  async register(): Promise<void> {
    if (this.registrationPath === undefined) return;
    await mkdir(path.dirname(this.registrationPath), { recursive: true });
    // env: optional (the local transport merges it into virsh's environment).
    const registration = {
      namespace: this.namespace,
      pod: this.podName,
      uri: this.uri,
      uid: this.uid,
      gid: this.gid,
      env: { HOME: this.#home, XDG_RUNTIME_DIR: this.#runDir },
    };
    await writeFile(this.registrationPath, `${JSON.stringify(registration, null, 2)}\n`);
  }

  // --- the Launcher ------------------------------------------------------------------------------

  readonly killDaemon = async (): Promise<void> => {
    if (this.#daemon?.isRunning()) await crashDaemon(this.#daemon.record); // SIGKILL to libvirtd alone: QEMU keeps running
  };

  readonly stop = async (): Promise<void> => {
    if (this.#stopped) return;
    this.#stopped = true;
    const errors: unknown[] = [];
    const before = await this.#helperPids();
    if (this.#daemon?.isRunning()) {
      await this.#virsh(['destroy', this.domain], 30_000).catch(() => undefined); // absent domain: fine
      await stopDaemon(this.#daemon.record, 10_000);
    }
    // QEMU and virtlogd survive the daemon: stop them by their pid files (identity-checked).
    const after = await this.#helperPids();
    const seen = new Set<number>();
    for (const p of [...before, ...after]) {
      if (seen.has(p.pid)) continue;
      seen.add(p.pid);
      const rec = recordOf(p.pid, p.name, p.name);
      try {
        if (rec) await stopDaemon(rec, 0);
      } catch (err) {
        errors.push(err);
      }
    }
    for (const m of this.#mounts.splice(0).reverse()) {
      await run(['umount', m]).catch(async () => run(['umount', '-l', m]).catch((e: unknown) => errors.push(e)));
    }
    if (this.registrationPath !== undefined)
      await rm(this.registrationPath, { force: true }).catch((e: unknown) => errors.push(e));
    await rm(this.dir, { recursive: true, force: true }).catch((e: unknown) => errors.push(e));
    if (errors.length > 0) throw new AggregateError(errors, `launcher ${this.domain}: stop incomplete`);
  };

  readonly reference = async (diskName: string): Promise<string> => {
    const d = this.#disk(diskName);
    const ref = path.join(this.#refDir, `${diskName}-${++this.#refCounter}.qcow2`);
    await this.#flush(d);
    // -U: QEMU holds the image locks; the CPUs are paused, so the content is stable.
    await run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'qcow2', d.chain[0] ?? '', ref]);
    return ref;
  };

  readonly compare = async (diskName: string, refPath: string): Promise<boolean> => {
    const d = this.#disk(diskName);
    await this.#flush(d);
    // qemu-img compare: 0 identical, 1 different, anything else an error.
    return (
      (
        await run(['qemu-img', 'compare', '-U', '-q', '-f', 'qcow2', '-F', 'qcow2', d.chain[0] ?? '', refPath], {
          allowExit: [1],
        })
      ).exitCode === 0
    );
  };

  readonly flush = async (diskName: string): Promise<void> => {
    await this.#flush(this.#disk(diskName));
  };

  readonly topDataBytes = async (diskName: string): Promise<number> => {
    const d = this.#disk(diskName);
    await this.#flush(d);
    const { stdout } = await run(['qemu-img', 'map', '-U', '--output=json', '-f', 'qcow2', d.chain[0] ?? ''], {
      maxOutput: 64 * 1024 * 1024,
    });
    const extents = mapSchema.parse(JSON.parse(stdout));
    return extents.filter((e) => e.depth === 0 && e.data).reduce((n, e) => n + e.length, 0);
  };

  readonly guestWrite = async (diskName: string, offset: number, length: number, pattern: number): Promise<void> => {
    const d = this.#disk(diskName);
    const io = `write -P 0x${pattern.toString(16)} ${offset} ${length}`;
    const out = await this.#virsh([
      'qemu-monitor-command',
      this.domain,
      '--hmp',
      `qemu-io -d /machine/peripheral/${d.alias}/virtio-backend "${io}"`,
    ]);
    if (/error|fail|not found|denied/i.test(out)) throw new Error(`guest write on ${d.alias} failed: ${out.trim()}`);
  };

  // --- helpers -----------------------------------------------------------------------------------

  async #virsh(args: readonly string[], timeoutMs = 30_000): Promise<string> {
    const r = await this.runner.run(['virsh', '-q', '-c', this.uri, ...args], { timeoutMs });
    if (r.exitCode !== 0) throw new Error(`virsh ${args.join(' ')} exited ${r.exitCode}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  #disk(name: string): LauncherDisk {
    const d = this.disks.find((x) => x.name === name);
    if (d === undefined) throw new Error(`launcher ${this.domain} has no disk ${name}`);
    return d;
  }

  /**
   * Make QEMU write its cached qcow2 metadata (L2 tables, refcounts) to the file, so that a reader
   * outside QEMU (qemu-img -U) sees what the guest sees. No-op when the daemon or domain is down.
   */
  async #flush(d: LauncherDisk): Promise<void> {
    if (!this.#daemon?.isRunning()) return;
    const state = await this.#virsh(['domstate', this.domain]).catch(() => '');
    if (state.trim() === '' || state.includes('shut off')) return;
    const out = await this.#virsh([
      'qemu-monitor-command',
      this.domain,
      '--hmp',
      `qemu-io -d /machine/peripheral/${d.alias}/virtio-backend "flush"`,
    ]);
    if (out.trim() !== '') throw new Error(`flush of ${d.alias} failed: ${out.trim()}`);
  }

  /**
   * Processes the session daemon started that outlive it: QEMU (daemonized by libvirt) and
   * virtlogd (spawned on demand with --timeout=120). Read from their pid files, checked by name.
   */
  async #helperPids(): Promise<{ pid: number; name: string }[]> {
    const files: [string, string][] = [
      [path.join(this.#runDir, 'libvirt', 'qemu', 'run', `${this.domain}.pid`), 'qemu-system'],
      [path.join(this.#runDir, 'libvirt', 'virtlogd.pid'), 'virtlogd'],
      [path.join(this.#runDir, 'libvirt', 'virtlockd.pid'), 'virtlockd'],
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
  }
}

/** Apply the same writes to a copy of a reference (the expected image after guest writes). */
export async function referenceWithWrites(
  refPath: string,
  writes: readonly { offset: number; length: number; pattern: number }[],
): Promise<string> {
  const out = `${refPath.replace(/\.qcow2$/, '')}-w${randomBytes(3).toString('hex')}.qcow2`;
  await run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'qcow2', refPath, out]);
  await qemuIoWrite(out, writes);
  return out;
}
