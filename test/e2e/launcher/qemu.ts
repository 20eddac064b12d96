/**
 * A standalone QEMU (no libvirt) with a QMP socket, for the QMP driver's tests: TCG, CPUs stopped
 * (-S), qcow2 chains built like the launcher's, each disk as -drive id=<target> + virtio-blk id=ua-<name>.
 */
import { randomBytes } from 'node:crypto';
import { access, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { buildChain } from './disk-chain.ts';
import type { LauncherDisk, LauncherDiskSpec } from './launcher.ts';
import { ensureHypervisorPackages } from './packages.ts';
import { run, startDaemon, stopDaemon, type Daemon } from '../support/process.ts';

export interface StandaloneQemu {
  readonly socketPath: string;
  readonly dir: string;
  readonly pid: number;
  readonly disks: readonly LauncherDisk[];
  /** qemu-img convert of a disk's chain now (call flush first if QEMU wrote to it). */
  reference(diskName: string): Promise<string>;
  /** qemu-img compare: true = identical. Flush first (see flushCommand). */
  compare(diskName: string, refPath: string): Promise<boolean>;
  stop(): Promise<void>;
}

/** HMP command line that makes QEMU write a drive's cached qcow2 metadata to the file. */
export function flushCommand(target: string): string {
  return `qemu-io ${target} "flush"`;
}

export async function startStandaloneQemu(options: {
  disks: readonly LauncherDiskSpec[];
  baseDir?: string;
}): Promise<StandaloneQemu> {
  await ensureHypervisorPackages();
  const dir = path.join(options.baseDir ?? '/var/tmp', `bpq-${randomBytes(4).toString('hex')}`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const socketPath = path.join(dir, 'qmp.sock');
  const disks: LauncherDisk[] = [];
  let qemu: Daemon | undefined;
  const stop = async (): Promise<void> => {
    if (qemu?.isRunning()) await stopDaemon(qemu.record, 0); // SIGKILL: nothing to save
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const args = [
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-machine',
      'pc,accel=tcg',
      '-m',
      '64',
      '-S',
      '-qmp',
      `unix:${socketPath},server=on,wait=off`,
    ];
    for (const [i, spec] of options.disks.entries()) {
      const built = await buildChain({
        dir,
        name: spec.name,
        layers: spec.layers,
        sizeMiB: spec.sizeMiB,
        ...(spec.allocatedMiB === undefined ? {} : { allocatedMiB: spec.allocatedMiB }),
      });
      const target = `vd${String.fromCharCode(97 + i)}`;
      disks.push({
        name: spec.name,
        alias: `ua-${spec.name}`,
        target,
        chain: built.chain,
        sizeBytes: built.sizeBytes,
        pullBytes: built.pullBytes,
      });
      args.push(
        '-drive',
        `file=${built.chain[0] ?? ''},format=qcow2,if=none,id=${target}`,
        '-device',
        `virtio-blk-pci,drive=${target},id=ua-${spec.name}`,
      );
    }
    const q = await startDaemon('qemu', ['qemu-system-x86_64', ...args], path.join(dir, 'qemu.log'), {
      marker: socketPath,
    });
    qemu = q;
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (!q.isRunning())
        throw new Error(`qemu exited early (${q.child.exitCode ?? q.child.signalCode}); see ${dir}/qemu.log`);
      if (
        await access(socketPath).then(
          () => true,
          () => false,
        )
      )
        break;
      if (Date.now() > deadline) throw new Error('QMP socket did not appear within 20 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  const byName = (n: string): LauncherDisk => {
    const d = disks.find((x) => x.name === n);
    if (d === undefined) throw new Error(`no disk ${n}`);
    return d;
  };
  let refs = 0;
  return {
    socketPath,
    dir,
    pid: qemu.pid,
    disks,
    async reference(diskName) {
      const ref = path.join(dir, `ref-${diskName}-${++refs}.qcow2`);
      await run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'qcow2', byName(diskName).chain[0] ?? '', ref]);
      return ref;
    },
    async compare(diskName, refPath) {
      // qemu-img compare: 0 identical, 1 different, anything else an error.
      return (
        (
          await run(
            ['qemu-img', 'compare', '-U', '-q', '-f', 'qcow2', '-F', 'qcow2', byName(diskName).chain[0] ?? '', refPath],
            { allowExit: [1] },
          )
        ).exitCode === 0
      );
    },
    stop,
  };
}
