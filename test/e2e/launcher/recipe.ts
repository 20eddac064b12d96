/**
 * The virt-launcher stand-in's recipe, in one place for both stand-ins: the qcow2 chain of each disk
 * as a list of commands (argv arrays) and the libvirt domain XML. The host stand-in (launcher.ts,
 * through disk-chain.ts) runs the commands with support/process.ts; the launcher pod
 * (node/launcher-pod.ts) hands the same commands and XML to the image's entrypoint
 * (images/launcher/launcher-standin.sh), which runs them as they are.
 *
 * Data layout of an n-layer chain (position 0 = top, n-1 = bottom) with A MiB allocated:
 * - the backing layers (positions 1..n-1) share A: layer at position p writes its part, a contiguous
 *   region, with pattern 0x10+p; the bottom part starts at offset 0;
 * - every layer, the top included, also writes 1 MiB at offset 0 with its own pattern, so the top
 *   shadows the layers below it (the chain order matters for the data);
 * - a flat disk (n = 1) gets all of A in its single layer.
 * So a full pull copies about A - 1 MiB (what the backing layers hold and the top does not).
 * No guest OS: the domain runs TCG with its CPUs paused (block jobs need none).
 */
import path from 'node:path';

export const MiB = 1024 * 1024;
/** qemu-io writes in requests of this size (one request allocates a buffer of that size). */
const WRITE_CHUNK_MiB = 64;

export interface ChainPlanSpec {
  readonly dir: string;
  /** File name prefix, e.g. the disk name. */
  readonly name: string;
  readonly layers: number;
  readonly sizeMiB: number;
  /** MiB of data written across the chain (default: half the size). */
  readonly allocatedMiB?: number;
  /** Directory of the top image (position 0), e.g. a small filesystem of its own; default `dir`. */
  readonly topDir?: string;
}

export interface Write {
  readonly offset: number;
  readonly length: number;
  readonly pattern: number;
}

export interface ChainPlan {
  /** The images, bottom first, each with the commands that make it (in this order). */
  readonly layers: readonly { readonly file: string; readonly commands: readonly (readonly string[])[] }[];
  /** Top first. */
  readonly chain: readonly string[];
  readonly sizeBytes: number;
  /** Bytes a full pull copies into the top image. */
  readonly pullBytes: number;
  /** Every write, by chain position. */
  readonly writes: readonly (Write & { readonly position: number })[];
}

export function layerPattern(position: number): number {
  return 0x10 + position;
}

/** The qemu-io command that makes these writes (undefined: none). */
export function qemuIoArgv(image: string, writes: readonly Write[], format = 'qcow2'): string[] | undefined {
  const cmds: string[] = [];
  for (const w of writes) {
    for (let off = 0; off < w.length; off += WRITE_CHUNK_MiB * MiB) {
      const len = Math.min(WRITE_CHUNK_MiB * MiB, w.length - off);
      cmds.push('-c', `write -q -P 0x${w.pattern.toString(16)} ${w.offset + off} ${len}`);
    }
  }
  return cmds.length === 0 ? undefined : ['qemu-io', '-f', format, ...cmds, image];
}

export function planChain(spec: ChainPlanSpec): ChainPlan {
  const { dir, name, layers, sizeMiB } = spec;
  if (layers < 1) throw new RangeError('a chain needs at least one layer');
  const allocatedMiB = spec.allocatedMiB ?? Math.floor(sizeMiB / 2);
  if (allocatedMiB > sizeMiB) throw new RangeError(`allocatedMiB ${allocatedMiB} exceeds sizeMiB ${sizeMiB}`);
  const planned: { file: string; commands: string[][] }[] = []; // bottom first
  const writes: (Write & { position: number })[] = [];
  const backingLayers = Math.max(layers - 1, 1);
  const partMiB = Math.floor(allocatedMiB / backingLayers);
  for (let i = 0; i < layers; i++) {
    const position = layers - 1 - i;
    const file = path.join(position === 0 && spec.topDir !== undefined ? spec.topDir : dir, `${name}-${i}.qcow2`);
    const lower = planned[i - 1]?.file;
    const commands: string[][] = [
      [
        'qemu-img',
        'create',
        '-q',
        '-f',
        'qcow2',
        ...(lower === undefined ? [] : ['-F', 'qcow2', '-b', lower]),
        file,
        `${sizeMiB}M`,
      ],
    ];
    const pattern = layerPattern(position);
    const layerWrites: Write[] = [];
    const isBacking = layers === 1 || position >= 1;
    if (isBacking && partMiB > 0) layerWrites.push({ offset: i * partMiB * MiB, length: partMiB * MiB, pattern });
    layerWrites.push({ offset: 0, length: MiB, pattern });
    const io = qemuIoArgv(file, layerWrites);
    if (io) commands.push(io);
    for (const w of layerWrites) writes.push({ position, ...w });
    planned.push({ file, commands });
  }
  const pullBytes = layers === 1 ? 0 : Math.max(partMiB * backingLayers - 1, 0) * MiB;
  return { layers: planned, chain: planned.map((l) => l.file).reverse(), sizeBytes: sizeMiB * MiB, pullBytes, writes };
}

/** KubeVirt's device name of the i-th disk. */
export function targetName(i: number): string {
  if (i >= 26) throw new RangeError('at most 26 disks');
  return `vd${String.fromCharCode(97 + i)}`;
}

function xmlEscape(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/'/g, '&apos;')
    .replace(/"/g, '&quot;');
}

/** The transient domain: one virtio disk per chain (source = its top, alias ua-<disk>), TCG, no other devices. */
export function domainXml(
  name: string,
  memoryMiB: number,
  disks: readonly { readonly chain: readonly string[]; readonly target: string; readonly alias: string }[],
): string {
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

/** Where the launcher pod keeps disk <name>'s chain (an emptyDir, as KubeVirt's ephemeral disks). */
export const POD_DISK_DATA = '/var/run/kubevirt-ephemeral-disks/disk-data';

/**
 * The recipe for the launcher pod: the commands that make every disk's chain under POD_DISK_DATA
 * (its directory emptied first), and the domain XML; `steps` is what the entrypoint reads from
 * LAUNCHER_STEPS: one command per line, its arguments separated by tabs.
 */
export function podRecipe(o: {
  namespace: string;
  vmiName: string;
  disks: readonly { name: string; layers: number; sizeMiB: number; allocatedMiB?: number }[];
  memoryMiB?: number;
}): { steps: string; domainXml: string; commands: string[][] } {
  const commands: string[][] = [];
  const disks = o.disks.map((d, i) => {
    const dir = path.join(POD_DISK_DATA, d.name);
    const plan = planChain({
      dir,
      name: d.name,
      layers: d.layers,
      sizeMiB: d.sizeMiB,
      ...(d.allocatedMiB === undefined ? {} : { allocatedMiB: d.allocatedMiB }),
    });
    commands.push(['rm', '-rf', '--', dir], ['mkdir', '-p', '--', dir]);
    for (const l of plan.layers) commands.push(...l.commands.map((c) => [...c]));
    return { chain: plan.chain, target: targetName(i), alias: `ua-${d.name}` };
  });
  for (const c of commands) {
    for (const a of c)
      if (a === '' || /[\t\n]/.test(a))
        throw new Error(`launcher pod step argument ${JSON.stringify(a)} is empty or has a tab or newline`);
  }
  return {
    steps: commands.map((c) => c.join('\t')).join('\n'),
    domainXml: domainXml(`${o.namespace}_${o.vmiName}`, o.memoryMiB ?? 64, disks),
    commands,
  };
}
