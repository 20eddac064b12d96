/**
 * Parsers for virsh output: domain XML (backing chains), `blockjob --raw --bytes`, `event` lines,
 * and stderr -> typed HypervisorError. Pure functions, unit-tested against observed output.
 */
import { XMLParser } from 'fast-xml-parser';
import { z } from 'zod';
import { HypervisorError, type HypervisorErrorCode } from './errors.ts';
import type { BlockJobEvent, BlockJobEventKind, BlockJobInfo, ChainLayer, DiskInfo, DiskRef } from './types.ts';

const xmlParser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  parseAttributeValue: false,
  parseTagValue: false,
  isArray: (name, jpath) => jpath === 'domain.devices.disk' || name === 'disk',
});

// Only the parts of the domain XML we read; everything else passes through.
const attrString = z.string().optional();
// <dataStore> (libvirt 10.10+): a qcow2 image's external data file, inside its <source>.
const dataStoreSchema = z
  .looseObject({
    format: z.looseObject({ '@_type': attrString }).optional(),
    source: z.looseObject({ '@_file': attrString, '@_dev': attrString, '@_name': attrString }).optional(),
  })
  .optional();
const sourceSchema = z
  .looseObject({
    '@_file': attrString,
    '@_dev': attrString,
    '@_name': attrString,
    '@_index': attrString,
    dataStore: z.union([dataStoreSchema, z.string()]).optional(),
  })
  .optional();
type BackingStoreXml = {
  '@_type'?: string | undefined;
  '@_index'?: string | undefined;
  format?: { '@_type'?: string | undefined } | undefined;
  source?: z.infer<typeof sourceSchema>;
  backingStore?: BackingStoreXml | string | undefined;
};
const backingStoreSchema: z.ZodType<BackingStoreXml | string> = z.union([
  z.string(), // <backingStore/> = end of chain
  z.looseObject({
    '@_type': attrString,
    '@_index': attrString,
    format: z.looseObject({ '@_type': attrString }).optional(),
    source: sourceSchema,
    get backingStore() {
      return backingStoreSchema.optional();
    },
  }),
]);
const diskSchema = z.looseObject({
  '@_type': attrString,
  '@_device': attrString,
  driver: z.looseObject({ '@_type': attrString }).optional(),
  source: sourceSchema,
  backingStore: backingStoreSchema.optional(),
  target: z.looseObject({ '@_dev': z.string() }),
  alias: z.looseObject({ '@_name': z.string() }).optional(),
});
const domainSchema = z.object({
  domain: z.looseObject({
    name: z.string().optional(),
    devices: z.looseObject({ disk: z.array(diskSchema).default([]) }).optional(),
  }),
});

function sourcePath(source: z.infer<typeof sourceSchema>): string | undefined {
  return source?.['@_file'] ?? source?.['@_dev'] ?? source?.['@_name'];
}

/** The image's data file (<source><dataStore>), if it has one. */
function dataFileOf(source: z.infer<typeof sourceSchema>): ChainLayer['dataFile'] {
  const ds = source?.dataStore;
  if (ds === undefined || typeof ds === 'string') return undefined;
  const path = ds.source?.['@_file'] ?? ds.source?.['@_dev'] ?? ds.source?.['@_name'];
  if (path === undefined) return undefined;
  return { path, format: ds.format?.['@_type'] ?? 'raw' };
}

function parseIndex(s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const n = Number(s);
  return Number.isInteger(n) ? n : undefined;
}

/** All disks of a live domain XML, each with its backing chain (top first). */
export function parseDomainDisks(xml: string): DiskInfo[] {
  let doc: unknown;
  try {
    doc = xmlParser.parse(xml);
  } catch (err) {
    throw new HypervisorError('CommandFailed', `cannot parse domain XML: ${String(err)}`, { cause: err });
  }
  const parsed = domainSchema.safeParse(doc);
  if (!parsed.success) throw new HypervisorError('CommandFailed', `unexpected domain XML: ${parsed.error.message}`);
  const disks: DiskInfo[] = [];
  for (const d of parsed.data.domain.devices?.disk ?? []) {
    if (d['@_device'] !== undefined && d['@_device'] !== 'disk' && d['@_device'] !== 'lun') continue;
    const topPath = sourcePath(d.source);
    if (topPath === undefined) continue; // empty drive
    const chain: ChainLayer[] = [];
    const topIndex = parseIndex(d.source?.['@_index']);
    const topData = dataFileOf(d.source);
    chain.push({
      position: 0,
      ...(topIndex === undefined ? {} : { index: topIndex }),
      path: topPath,
      format: d.driver?.['@_type'] ?? 'raw',
      ...(topData === undefined ? {} : { dataFile: topData }),
    });
    let bs = d.backingStore;
    while (bs !== undefined && typeof bs !== 'string') {
      const p = sourcePath(bs.source);
      if (p === undefined) break;
      const idx = parseIndex(bs['@_index']);
      const data = dataFileOf(bs.source);
      chain.push({
        position: chain.length,
        ...(idx === undefined ? {} : { index: idx }),
        path: p,
        format: bs.format?.['@_type'] ?? 'raw',
        ...(data === undefined ? {} : { dataFile: data }),
      });
      bs = bs.backingStore;
    }
    disks.push({ target: d.target['@_dev'], ...(d.alias === undefined ? {} : { alias: d.alias['@_name'] }), chain });
  }
  return disks;
}

/** KubeVirt's alias of a disk: ua-<disk name>. */
export function kubevirtAlias(name: string): string {
  return `ua-${name}`;
}

export function findDisk(disks: readonly DiskInfo[], ref: DiskRef): DiskInfo | undefined {
  if ('name' in ref) {
    const alias = kubevirtAlias(ref.name);
    return disks.find((d) => d.alias === alias);
  }
  return disks.find((d) => d.target === ref.target);
}

const blockJobRawSchema = z.object({
  type: z.string().min(1),
  cur: z.coerce.number().int().nonnegative(),
  end: z.coerce.number().int().nonnegative(),
  bandwidth: z.coerce.number().int().nonnegative().default(0),
});

/**
 * `virsh blockjob D T --raw --bytes`: lines " type=Block Pull", " bandwidth=N", " cur=N", " end=N";
 * no job = empty output (a blank line).
 */
export function parseBlockJobRaw(stdout: string): BlockJobInfo | null {
  const fields: Record<string, string> = {};
  for (const raw of stdout.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new HypervisorError('CommandFailed', `unexpected blockjob output line: ${JSON.stringify(line)}`);
    fields[line.slice(0, eq)] = line.slice(eq + 1);
  }
  if (Object.keys(fields).length === 0) return null;
  const parsed = blockJobRawSchema.safeParse(fields);
  if (!parsed.success)
    throw new HypervisorError('CommandFailed', `unexpected blockjob output: ${JSON.stringify(stdout)}`);
  return parsed.data;
}

const EVENT_RE =
  /event 'block-job-2' for domain '(?<domain>.+)': (?<jobType>.+) for (?<target>\S+) (?<status>completed|failed|canceled|ready)\s*$/;

/**
 * One line of `virsh event --event block-job-2 --loop [--timestamp]`, e.g.
 * `2026-11-27 10:37:02.199+0000: event 'block-job-2' for domain 'D': Block Pull for vda completed`.
 * Other lines (blank, "events received: N") give null.
 */
export function parseBlockJobEventLine(line: string): BlockJobEvent | null {
  const m = EVENT_RE.exec(line);
  if (m?.groups === undefined) return null;
  const { domain, jobType, target, status } = m.groups as Record<'domain' | 'jobType' | 'target' | 'status', string>;
  return { domain, target, kind: status as BlockJobEventKind, jobType };
}

const ERROR_PATTERNS: readonly (readonly [RegExp, HypervisorErrorCode])[] = [
  [
    /failed to connect|Failed to connect socket|unable to connect|Cannot recv data|End of file while reading data|Connection reset|no connection driver available|client socket is closed|not connected/i,
    'Unreachable',
  ],
  [/no active block job|block job .*is not active|No active/i, 'NoJob'],
  [/Domain not found|failed to get domain|no domain with matching/i, 'DomainNotFound'],
  [/already in active block job|block job .* already|is busy|in use by block job|device is locked/i, 'DiskBusy'],
  [/could not find image|failed to find|invalid base|does not contain|not in chain|is not a backing/i, 'InvalidBase'],
  [
    /disk .* not found|no disk with|invalid path|not found in domain|no device found|does not exist in domain/i,
    'DiskNotFound',
  ],
];

/** Map a failed virsh command's stderr to a typed error. */
export function virshError(argv: readonly string[], exitCode: number, stderr: string): HypervisorError {
  const msg = stderr
    .trim()
    .replace(/^error: /gm, '')
    .replace(/\n+/g, '; ');
  const code = ERROR_PATTERNS.find(([re]) => re.test(stderr))?.[1] ?? 'CommandFailed';
  return new HypervisorError(code, `virsh ${argv.slice(1).join(' ')} exited ${exitCode}: ${msg || '(no message)'}`);
}

// --- pre-flight space check ---------------------------------------------------------------

/** Output bounds: a launcher printing more than this is refused, not parsed. */
export const OUTPUT_BOUNDS = { small: 4096, domstats: 4 * 1024 * 1024 } as const;

function bounded(stdout: string, limit: number, what: string): string {
  if (stdout.length > limit)
    throw new HypervisorError(
      'CommandFailed',
      `${what}: output of ${stdout.length} characters exceeds the bound of ${limit}`,
    );
  return stdout;
}

const byteCount = z.coerce.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

const blockStatSchema = z.object({
  name: z.string().min(1),
  path: z.string().optional(),
  backingIndex: byteCount.optional(),
  allocation: byteCount.optional(),
  capacity: byteCount.optional(),
  physical: byteCount.optional(),
});
export type BlockStat = z.infer<typeof blockStatSchema>;

const BLOCK_STAT_LINE = /^block\.(\d+)\.(name|path|backingIndex|allocation|capacity|physical)=(.*)$/;

/**
 * `virsh domstats --block --backing DOM`: one entry per image of every disk's chain
 * (block.N.name = target, path, backingIndex, allocation, capacity, physical). Other fields
 * are ignored; an entry that does not parse is an error.
 */
export function parseDomstatsBlock(stdout: string): BlockStat[] {
  const raw = new Map<number, Record<string, string>>();
  for (const line of bounded(stdout, OUTPUT_BOUNDS.domstats, 'virsh domstats').split('\n')) {
    const m = BLOCK_STAT_LINE.exec(line.trim());
    if (m === null) continue;
    const i = Number(m[1]);
    const fields = raw.get(i) ?? {};
    fields[m[2]!] = m[3]!;
    raw.set(i, fields);
  }
  const out: BlockStat[] = [];
  for (const [i, fields] of [...raw.entries()].sort((a, b) => a[0] - b[0])) {
    const parsed = blockStatSchema.safeParse(fields);
    if (!parsed.success)
      throw new HypervisorError('CommandFailed', `unexpected domstats entry block.${i}: ${JSON.stringify(fields)}`);
    out.push(parsed.data);
  }
  return out;
}

const statFsSchema = z.tuple([byteCount, byteCount.min(1), byteCount]);

/**
 * `stat -f -c '%a %S %b' -- PATH`: blocks free for unprivileged users, the fundamental block size
 * and the total blocks -> free and total bytes of the filesystem.
 */
export function parseStatFs(stdout: string): { availableBytes: number; totalBytes: number } {
  const parts = bounded(stdout, OUTPUT_BOUNDS.small, 'stat -f').trim().split(/\s+/);
  const parsed = statFsSchema.safeParse(parts);
  if (!parsed.success)
    throw new HypervisorError('CommandFailed', `unexpected stat -f output: ${JSON.stringify(stdout.slice(0, 200))}`);
  const [avail, size, total] = parsed.data;
  const availableBytes = avail * size;
  const totalBytes = total * size;
  if (!Number.isSafeInteger(availableBytes) || !Number.isSafeInteger(totalBytes) || availableBytes > totalBytes) {
    throw new HypervisorError('CommandFailed', `stat -f: sizes out of range: ${JSON.stringify(stdout.slice(0, 200))}`);
  }
  return { availableBytes, totalBytes };
}

/** `stat -c %m -- PATH`: the mount point holding PATH (one absolute path). */
export function parseMountPoint(stdout: string): string {
  const text = bounded(stdout, OUTPUT_BOUNDS.small, 'stat -c %m').replace(/\n$/, '');
  if (!text.startsWith('/') || text.includes('\n'))
    throw new HypervisorError('CommandFailed', `unexpected stat -c %m output: ${JSON.stringify(text.slice(0, 200))}`);
  return text;
}

/** `du -s -B1 -x -- DIR`: "<bytes>\t<dir>" -> bytes. */
export function parseDuBytes(stdout: string): number {
  const m = /^(\d+)\t/.exec(bounded(stdout, OUTPUT_BOUNDS.small, 'du'));
  const parsed = byteCount.safeParse(m?.[1]);
  if (!parsed.success)
    throw new HypervisorError('CommandFailed', `unexpected du output: ${JSON.stringify(stdout.slice(0, 200))}`);
  return parsed.data;
}

const MONITOR_JOB_COMPLETED_RE = /event BLOCK_JOB_COMPLETED for domain '(?<domain>.+)': (?<json>\{.*\})\s*$/;
const jobCompletedSchema = z.looseObject({
  device: z.string(),
  type: z.string(),
  error: z.string().max(4096).optional(),
});

/**
 * One line of `virsh qemu-monitor-event --domain D --event BLOCK_JOB_COMPLETED --loop --timestamp`
 * for a stream job that ended with an error, e.g.
 * `... event BLOCK_JOB_COMPLETED for domain 'D': {"device":"pull-vda-libvirt-1-format",...,"type":"stream","error":"No space left on device"}`.
 * libvirt names its pull jobs pull-<target>-<node>; other lines (and successes) give null.
 */
export function parseMonitorJobCompletedLine(line: string): BlockJobEvent | null {
  if (line.length > OUTPUT_BOUNDS.small * 4) return null;
  const m = MONITOR_JOB_COMPLETED_RE.exec(line);
  if (m?.groups === undefined) return null;
  let json: unknown;
  try {
    json = JSON.parse(m.groups['json']!);
  } catch {
    return null;
  }
  const parsed = jobCompletedSchema.safeParse(json);
  if (!parsed.success || parsed.data.type !== 'stream' || parsed.data.error === undefined) return null;
  const target = /^pull-([a-z]+[0-9]*)-/.exec(parsed.data.device)?.[1];
  if (target === undefined) return null;
  return { domain: m.groups['domain']!, target, kind: 'failed', jobType: 'Block Pull', error: parsed.data.error };
}
