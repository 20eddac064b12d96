import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { writeOciArchive } from './oci.ts';
import { CAP_NET_BIND_SERVICE, decodeFileCapabilities, parsePaxRecords, readTarEntries, type TarEntry } from './tar.ts';

const execFileP = promisify(execFile);
const XATTR = 'SCHILY.xattr.security.capability';

describe('file capabilities in tar', () => {
  it('decodes vfs_cap_data revision 2 (cap_net_bind_service+ep)', () => {
    const v = Buffer.alloc(20);
    v.writeUInt32LE(0x02000001, 0); // revision 2, effective
    v.writeUInt32LE(1 << CAP_NET_BIND_SERVICE, 4);
    expect(decodeFileCapabilities(v)).toEqual({ effective: true, permitted: [10], inheritable: [] });
    v.writeUInt32LE(0x02000000, 0);
    v.writeUInt32LE(1, 16); // inheritable bit 32
    expect(decodeFileCapabilities(v)).toEqual({ effective: false, permitted: [10], inheritable: [32] });
    expect(() => decodeFileCapabilities(Buffer.alloc(8))).toThrow(/too short/);
    v.writeUInt32LE(0x01000000, 0);
    expect(() => decodeFileCapabilities(v)).toThrow(/revision/);
  });
  it('parses PAX records with binary values and byte-counted lengths', () => {
    const value = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x0a, 0x3d, 0x20]);
    const key = Buffer.from(` ${XATTR}=`);
    const body = Buffer.concat([key, value, Buffer.from('\n')]);
    let len = body.length + 1;
    len += String(len).length - 1;
    const record = Buffer.concat([Buffer.from(String(len)), body]);
    expect(record.length).toBe(len);
    const records = parsePaxRecords(Buffer.concat([record, Buffer.from('12 path=a/b\n')]));
    expect(records.get(XATTR)).toEqual(value);
    expect(records.get('path')?.toString()).toBe('a/b');
    expect(() => parsePaxRecords(Buffer.from('99 path=x\n'))).toThrow(/length/);
  });
});

const isRoot = process.getuid?.() === 0;

describe('writeOciArchive layers', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bp-oci-test-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.skipIf(!isRoot)(
    'carry the security.capability xattr of a file (setcap cap_net_bind_service+ep) as a PAX record',
    async () => {
      const rootfs = path.join(dir, 'rootfs');
      mkdirSync(path.join(rootfs, 'usr', 'bin'), { recursive: true });
      const withCap = path.join(rootfs, 'usr', 'bin', 'virt-launcher-monitor');
      writeFileSync(withCap, '#!/bin/sh\n', { mode: 0o755 });
      writeFileSync(path.join(rootfs, 'usr', 'bin', 'plain'), '#!/bin/sh\n', { mode: 0o755 });
      await execFileP('setcap', ['cap_net_bind_service+ep', withCap]);
      const archive = path.join(dir, 'img.oci.tar');
      const written = await writeOciArchive(rootfs, 'localhost/blockpull/captest:1', {}, archive);

      const outer = readTarEntries(readFileSync(archive));
      const blob = (digest: string): TarEntry => {
        const e = outer.find((x) => x.name === `blobs/sha256/${digest.replace('sha256:', '')}`);
        if (!e) throw new Error(`no blob ${digest} in the archive`);
        return e;
      };
      const index = z
        .object({ manifests: z.array(z.object({ digest: z.string() })) })
        .parse(JSON.parse(outer.find((e) => e.name === 'index.json')?.data.toString() ?? '{}'));
      const manifest = z
        .object({ layers: z.array(z.object({ digest: z.string() })).length(1) })
        .parse(JSON.parse(blob(index.manifests[0]?.digest ?? '').data.toString()));
      expect(manifest.layers[0]?.digest).toBe(written.layerDigest);
      const layer = readTarEntries(gunzipSync(blob(written.layerDigest).data));

      const monitor = layer.find((e) => e.name === './usr/bin/virt-launcher-monitor');
      const xattr = monitor?.pax.get(XATTR);
      expect(xattr, 'virt-launcher-monitor has no security.capability record').toBeDefined();
      expect(decodeFileCapabilities(xattr ?? Buffer.alloc(0))).toEqual({
        effective: true,
        permitted: [CAP_NET_BIND_SERVICE],
        inheritable: [],
      });
      expect(layer.find((e) => e.name === './usr/bin/plain')?.pax.has(XATTR)).toBe(false);
    },
  );
});
