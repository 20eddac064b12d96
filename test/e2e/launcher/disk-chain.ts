/**
 * qcow2 backing chains with a distinct data pattern in every layer (qemu-io write -P).
 *
 * Layout of an n-layer chain (position 0 = top, n-1 = bottom) with A MiB allocated:
 * - the backing layers (positions 1..n-1) share A: layer at position p writes its part, a contiguous
 *   region, with pattern 0x10+p; the bottom part starts at offset 0;
 * - every layer, the top included, also writes 1 MiB at offset 0 with its own pattern, so the top
 *   shadows the layers below it (the chain order matters for the data);
 * - a flat disk (n = 1) gets all of A in its single layer.
 * So a full pull copies about A - 1 MiB (what the backing layers hold and the top does not).
 */
import { chown } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../support/process.ts';

const MiB = 1024 * 1024;
/** qemu-io writes in requests of this size (one request allocates a buffer of that size). */
const WRITE_CHUNK_MiB = 64;

export interface ChainSpec {
  readonly dir: string;
  /** File name prefix, e.g. the disk name. */
  readonly name: string;
  readonly layers: number;
  readonly sizeMiB: number;
  /** MiB of data written across the chain (default: half the size). */
  readonly allocatedMiB?: number;
  /** Directory of the top image (position 0), e.g. a small filesystem of its own; default `dir`. */
  readonly topDir?: string;
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
  readonly writes: readonly { readonly position: number; readonly offset: number; readonly length: number; readonly pattern: number }[];
}

export function layerPattern(position: number): number {
  return 0x10 + position;
}

export async function qemuIoWrite(image: string, writes: readonly { offset: number; length: number; pattern: number }[], format = 'qcow2'): Promise<void> {
  const cmds: string[] = [];
  for (const w of writes) {
    for (let off = 0; off < w.length; off += WRITE_CHUNK_MiB * MiB) {
      const len = Math.min(WRITE_CHUNK_MiB * MiB, w.length - off);
      cmds.push('-c', `write -q -P 0x${w.pattern.toString(16)} ${w.offset + off} ${len}`);
    }
  }
  if (cmds.length === 0) return;
  await run(['qemu-io', '-f', format, ...cmds, image], { maxOutput: 16 * MiB });
}

export async function buildChain(spec: ChainSpec): Promise<BuiltChain> {
  const { dir, name, layers, sizeMiB } = spec;
  if (layers < 1) throw new RangeError('a chain needs at least one layer');
  const allocatedMiB = spec.allocatedMiB ?? Math.floor(sizeMiB / 2);
  if (allocatedMiB > sizeMiB) throw new RangeError(`allocatedMiB ${allocatedMiB} exceeds sizeMiB ${sizeMiB}`);
  const paths: string[] = []; // bottom first while building
  const writes: { position: number; offset: number; length: number; pattern: number }[] = [];
  const backingLayers = Math.max(layers - 1, 1);
  const partMiB = Math.floor(allocatedMiB / backingLayers);
  for (let i = 0; i < layers; i++) {
    const position = layers - 1 - i;
    const file = path.join(position === 0 && spec.topDir !== undefined ? spec.topDir : dir, `${name}-${i}.qcow2`);
    const lower = paths[i - 1];
    const create = ['create', '-q', '-f', 'qcow2', ...(lower === undefined ? [] : ['-F', 'qcow2', '-b', lower]), file, `${sizeMiB}M`];
    await run(['qemu-img', ...create]);
    const pattern = layerPattern(position);
    const layerWrites: { offset: number; length: number; pattern: number }[] = [];
    const isBacking = layers === 1 || position >= 1;
    if (isBacking && partMiB > 0) layerWrites.push({ offset: i * partMiB * MiB, length: partMiB * MiB, pattern });
    layerWrites.push({ offset: 0, length: MiB, pattern });
    await qemuIoWrite(file, layerWrites);
    for (const w of layerWrites) writes.push({ position, ...w });
    if (spec.uid !== undefined) await chown(file, spec.uid, spec.gid ?? spec.uid);
    paths.push(file);
  }
  const pullBytes = layers === 1 ? 0 : Math.max(partMiB * backingLayers - 1, 0) * MiB;
  return { chain: paths.reverse(), sizeBytes: sizeMiB * MiB, pullBytes, writes };
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
