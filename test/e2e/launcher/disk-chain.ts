/**
 * qcow2 backing chains on the host: buildChain runs the recipe's commands (launcher/recipe.ts, also
 * what the launcher pod runs) and hands the images to the QEMU user; migratedChain plays the target
 * of a KubeVirt block migration. chainInDomainXml is the test bed's one reading of a chain as
 * libvirt reports it.
 */
import { chown } from 'node:fs/promises';
import path from 'node:path';
import { findDisk, parseDomainDisks } from '../../../operator/src/hypervisor/virsh-parse.ts';
import type { ChainLayer } from '../../../operator/src/hypervisor/types.ts';
import { run } from '../support/process.ts';
import { MiB, planChain, qemuIoArgv, type ChainPlanSpec, type Write } from './recipe.ts';

export interface ChainSpec extends ChainPlanSpec {
  /** Owner of the images (the QEMU user). */
  readonly uid?: number;
  readonly gid?: number;
}

export interface BuiltChain {
  /** Top first. */
  readonly chain: readonly string[];
  readonly sizeBytes: number;
  /** Bytes a full pull copies into the top image. */
  readonly pullBytes: number;
  /** Every write made while building, by chain position. */
  readonly writes: readonly {
    readonly position: number;
    readonly offset: number;
    readonly length: number;
    readonly pattern: number;
  }[];
}

export async function qemuIoWrite(image: string, writes: readonly Write[], format = 'qcow2'): Promise<void> {
  const argv = qemuIoArgv(image, writes, format);
  if (argv) await run(argv, { maxOutput: 16 * MiB });
}

export async function buildChain(spec: ChainSpec): Promise<BuiltChain> {
  const plan = planChain(spec);
  for (const layer of plan.layers) {
    for (const argv of layer.commands) await run(argv, { maxOutput: 16 * MiB });
    if (spec.uid !== undefined) await chown(layer.file, spec.uid, spec.gid ?? spec.uid);
  }
  return { chain: plan.chain, sizeBytes: plan.sizeBytes, pullBytes: plan.pullBytes, writes: plan.writes };
}

export interface MigratedChainSpec {
  readonly dir: string;
  readonly name: string;
  /** The source disk's chain, top first (the source's QEMU should have flushed its top: Launcher.flush). */
  readonly source: readonly string[];
  readonly uid?: number;
  readonly gid?: number;
}

/**
 * The chain a KubeVirt block migration (VIR_MIGRATE_NON_SHARED_INC) leaves on the target, at
 * other paths: the backing images are copies of the source's (for a containerDisk: the same
 * image, pulled on the new node), and the top is a new overlay holding only what the source's
 * top held (`qemu-img convert -B`: data unallocated in the source's top is left to the backing
 * chain), which is what libvirt's copy of the top level gives.
 */
export async function migratedChain(spec: MigratedChainSpec): Promise<BuiltChain> {
  const { dir, name, source } = spec;
  if (source.length < 1) throw new RangeError('a chain needs at least one layer');
  const paths: string[] = []; // bottom first while building
  for (let i = 0; i < source.length; i++) {
    const src = source[source.length - 1 - i]!;
    const file = path.join(dir, `${name}-m${i}.qcow2`);
    const lower = paths[i - 1];
    if (i < source.length - 1) {
      // A backing image: the same bytes, pointed at the copy below it.
      await run(['cp', '--', src, file]);
      if (lower !== undefined) await run(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', lower, file]);
    } else if (lower === undefined) {
      await run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'qcow2', src, file]);
    } else {
      await run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'qcow2', '-B', lower, '-F', 'qcow2', src, file]);
    }
    if (spec.uid !== undefined) await chown(file, spec.uid, spec.gid ?? spec.uid);
    paths.push(file);
  }
  const { stdout } = await run(['qemu-img', 'info', '-U', '--output=json', '-f', 'qcow2', paths[paths.length - 1]!]);
  const size = (JSON.parse(stdout) as { 'virtual-size'?: number })['virtual-size'] ?? 0;
  return { chain: paths.reverse(), sizeBytes: size, pullBytes: 0, writes: [] };
}

/**
 * The backing chain (top first) of disk `disk` (a KubeVirt volume name: alias ua-<disk>) in a live
 * domain XML (`virsh dumpxml`), read as the operator's VirshDriver reads it (virsh-parse.ts); empty
 * when the domain has no such disk. For XML fetched another way than through the driver (kubectl
 * exec into a launcher pod); specs on the host use the driver's getDisk itself.
 */
export function chainInDomainXml(xml: string, disk: string): readonly ChainLayer[] {
  return findDisk(parseDomainDisks(xml), { name: disk })?.chain ?? [];
}
