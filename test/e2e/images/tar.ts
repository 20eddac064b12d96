/**
 * A reader of (uncompressed) tar archives, enough to check what an image layer carries: entry names,
 * types, owners, modes and PAX records (e.g. `SCHILY.xattr.security.capability`, the file capability
 * GNU tar --xattrs stores and containerd applies when it unpacks the layer). Pure, bounded by the buffer.
 */
export interface TarEntry {
  readonly name: string;
  /** '0' file, '5' directory, '2' symlink, ... */
  readonly type: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly size: number;
  /** PAX extended header records that apply to this entry (values as bytes: xattrs are binary). */
  readonly pax: ReadonlyMap<string, Buffer>;
  /** The entry's content (a view into the archive buffer). */
  readonly data: Buffer;
}

const BLOCK = 512;

function field(h: Buffer, off: number, len: number): string {
  const raw = h.subarray(off, off + len);
  const end = raw.indexOf(0);
  return raw.subarray(0, end === -1 ? len : end).toString('utf8');
}

function octal(h: Buffer, off: number, len: number): number {
  const s = field(h, off, len).trim();
  return s === '' ? 0 : parseInt(s, 8);
}

/** PAX records: "<len> <key>=<value>\n", len counting the whole record in bytes. */
export function parsePaxRecords(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space === -1) throw new Error(`bad PAX record at ${pos}`);
    const len = parseInt(data.subarray(pos, space).toString('ascii'), 10);
    if (!Number.isInteger(len) || len <= 0 || pos + len > data.length)
      throw new Error(`bad PAX record length at ${pos}`);
    const record = data.subarray(space + 1, pos + len - 1); // without the trailing newline
    const eq = record.indexOf(0x3d);
    if (eq === -1) throw new Error(`PAX record without "=" at ${pos}`);
    out.set(record.subarray(0, eq).toString('utf8'), Buffer.from(record.subarray(eq + 1)));
    pos += len;
  }
  return out;
}

export function readTarEntries(tar: Buffer): TarEntry[] {
  const entries: TarEntry[] = [];
  let pos = 0;
  let pending: Map<string, Buffer> | undefined;
  let longName: string | undefined;
  while (pos + BLOCK <= tar.length) {
    const h = tar.subarray(pos, pos + BLOCK);
    if (h.every((b) => b === 0)) break; // end of archive
    const size = octal(h, 124, 12);
    const type = field(h, 156, 1) || '0';
    const data = tar.subarray(pos + BLOCK, pos + BLOCK + size);
    if (data.length < size) throw new Error(`truncated tar entry at ${pos}`);
    pos += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
    if (type === 'x') {
      pending = parsePaxRecords(data);
      continue;
    }
    if (type === 'g') continue; // global header: not used by our archives
    if (type === 'L') {
      longName = data.toString('utf8').replace(/\0+$/, '');
      continue;
    }
    const prefix = field(h, 257, 6).startsWith('ustar') ? field(h, 345, 155) : '';
    const pax = pending ?? new Map<string, Buffer>();
    const paxPath = pax.get('path')?.toString('utf8');
    const name = paxPath ?? longName ?? (prefix ? `${prefix}/${field(h, 0, 100)}` : field(h, 0, 100));
    entries.push({ name, type, mode: octal(h, 100, 8), uid: octal(h, 108, 8), gid: octal(h, 116, 8), size, pax, data });
    pending = undefined;
    longName = undefined;
  }
  return entries;
}

/** The capability sets of a `security.capability` xattr value (struct vfs_cap_data, revision 2 or 3). */
export interface FileCapabilities {
  readonly effective: boolean;
  /** Capability numbers, e.g. 10 = CAP_NET_BIND_SERVICE. */
  readonly permitted: readonly number[];
  readonly inheritable: readonly number[];
}

export function decodeFileCapabilities(value: Buffer): FileCapabilities {
  if (value.length < 20) throw new Error(`security.capability value of ${value.length} bytes: too short`);
  const magic = value.readUInt32LE(0);
  const revision = magic & 0xff000000;
  if (revision !== 0x02000000 && revision !== 0x03000000)
    throw new Error(`unknown vfs_cap_data revision 0x${revision.toString(16)}`);
  const bits = (lo: number, hi: number): number[] => {
    const out: number[] = [];
    for (let i = 0; i < 32; i++) if ((lo >>> i) & 1) out.push(i);
    for (let i = 0; i < 32; i++) if ((hi >>> i) & 1) out.push(32 + i);
    return out;
  };
  return {
    effective: (magic & 0x1) === 1,
    permitted: bits(value.readUInt32LE(4), value.readUInt32LE(12)),
    inheritable: bits(value.readUInt32LE(8), value.readUInt32LE(16)),
  };
}

export const CAP_NET_BIND_SERVICE = 10;
