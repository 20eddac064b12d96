/**
 * Write an OCI image archive (oci-layout + index.json + blobs) from a root filesystem
 * directory, without a registry or an image builder: the layer is `tar` of the directory
 * (GNU tar, argv only), gzipped and hashed here; config, manifest and index are written here.
 * The archive imports with `ctr -n k8s.io images import` and is readable by buildah
 * (`oci-archive:<path>`).
 */
import { createHash } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { run } from '../support/process.ts';

export interface ImageConfig {
  readonly entrypoint?: readonly string[];
  readonly cmd?: readonly string[];
  readonly env?: readonly string[];
  readonly workingDir?: string;
  readonly user?: string;
  readonly labels?: Readonly<Record<string, string>>;
}

export interface WrittenImage {
  readonly name: string;
  readonly archivePath: string;
  readonly manifestDigest: string;
  readonly layerDigest: string;
  readonly diffId: string;
}

class Hasher extends Transform {
  readonly hash = createHash('sha256');
  size = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    cb(null, chunk);
  }
}

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** tar + gzip the directory into blobs/, returning the compressed digest/size and the diff id. */
async function writeLayer(rootfs: string, blobDir: string): Promise<{ digest: string; size: number; diffId: string }> {
  const tmp = join(blobDir, 'layer.tmp');
  const rawTar = join(blobDir, 'layer.tar.tmp');
  await run(
    [
      'tar',
      '--create',
      `--file=${rawTar}`,
      '--numeric-owner',
      '--xattrs',
      '--xattrs-include=security.capability',
      '--sort=name',
      '--mtime=@0',
      '--exclude=./proc/*',
      '--exclude=./sys/*',
      '--exclude=./dev/*',
      '--directory',
      rootfs,
      '.',
    ],
    { timeoutMs: 1_800_000 },
  );
  const raw = new Hasher();
  const gz = new Hasher();
  await pipeline(createReadStream(rawTar), raw, createGzip({ level: 1 }), gz, createWriteStream(tmp));
  rmSync(rawTar, { force: true });
  const digest = gz.hash.digest('hex');
  renameSync(tmp, join(blobDir, digest));
  return { digest: `sha256:${digest}`, size: gz.size, diffId: `sha256:${raw.hash.digest('hex')}` };
}

function writeBlob(blobDir: string, content: string): { digest: string; size: number } {
  const hex = sha256(content);
  writeFileSync(join(blobDir, hex), content);
  return { digest: `sha256:${hex}`, size: Buffer.byteLength(content) };
}

/**
 * Write `archivePath` (a tar of an OCI image layout) holding one image `name`
 * (e.g. "localhost/blockpull/test:1") with one layer made from `rootfs`.
 */
export async function writeOciArchive(
  rootfs: string,
  name: string,
  config: ImageConfig,
  archivePath: string,
): Promise<WrittenImage> {
  mkdirSync(dirname(archivePath), { recursive: true });
  const layout = mkdtempSync(join(dirname(archivePath), '.oci-'));
  try {
    const blobDir = join(layout, 'blobs', 'sha256');
    mkdirSync(blobDir, { recursive: true });
    const layer = await writeLayer(rootfs, blobDir);
    const imageConfig = {
      architecture: 'amd64',
      os: 'linux',
      created: '1970-01-01T00:00:00Z',
      config: {
        ...(config.entrypoint ? { Entrypoint: config.entrypoint } : {}),
        ...(config.cmd ? { Cmd: config.cmd } : {}),
        Env: config.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        ...(config.workingDir ? { WorkingDir: config.workingDir } : {}),
        ...(config.user ? { User: config.user } : {}),
        ...(config.labels ? { Labels: config.labels } : {}),
      },
      rootfs: { type: 'layers', diff_ids: [layer.diffId] },
      history: [{ created: '1970-01-01T00:00:00Z', created_by: 'blockpull-operator test/e2e/images' }],
    };
    const cfg = writeBlob(blobDir, JSON.stringify(imageConfig));
    const manifest = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfg.digest, size: cfg.size },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.size }],
    };
    const man = writeBlob(blobDir, JSON.stringify(manifest));
    const tag = name.slice(name.lastIndexOf(':') + 1);
    const index = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: man.digest,
          size: man.size,
          platform: { architecture: 'amd64', os: 'linux' },
          annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': tag },
        },
      ],
    };
    writeFileSync(join(layout, 'index.json'), JSON.stringify(index));
    writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    const tmpArchive = `${archivePath}.tmp`;
    await run(['tar', '--create', `--file=${tmpArchive}`, '--directory', layout, 'oci-layout', 'index.json', 'blobs']);
    renameSync(tmpArchive, archivePath);
    return { name, archivePath, manifestDigest: man.digest, layerDigest: layer.digest, diffId: layer.diffId };
  } finally {
    rmSync(layout, { recursive: true, force: true });
  }
}

export function fileSize(path: string): number {
  return statSync(path).size;
}
