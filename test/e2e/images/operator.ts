/**
 * The operator image, built from the project's own Dockerfile by buildah (Debian's package; no
 * Docker engine, no registry). The Dockerfile's base, node:24-bookworm-slim, cannot be pulled here,
 * so a local stand-in of the same name is built first: Debian (debootstrap minbase, the host's
 * suite) + the project's own Node 24 binary (node_modules/node/bin/node, the npm package "node")
 * + npm (the npm package, fetched with `npm pack`), laid out like the official image
 * (/usr/local/bin/{node,npm,npx}, user node 1000). The Dockerfile's NODE_IMAGE build argument
 * (pinned by digest upstream) is pointed at that local tag.
 *
 * Both are cached as OCI archives by content: the base by its inputs, the operator image by the
 * Dockerfile, .dockerignore, package files, tsconfigs and every file under operator/src.
 */
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { ensureDebianPackages } from '../support/debian.ts';
import { unmountAllUnder } from '../support/mounts.ts';
import { run } from '../support/process.ts';
import type { BuiltImage } from './images.ts';
import { REPO_ROOT } from '../support/paths.ts';
import { writeOciArchive } from './oci.ts';
import { imageCacheDir, debootstrapRootfs, hostDebianSource } from './rootfs.ts';

const BUILDER_VERSION = '1';
/** The name the Dockerfile's FROM uses (its digest pin is overridden by --build-arg NODE_IMAGE). */
export const NODE_BASE_NAME = 'docker.io/library/node:24-bookworm-slim';
export const OPERATOR_REPOSITORY = 'localhost/blockpull-operator';
const NPM_MAJOR = '11';

function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

function hashTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out[relative(REPO_ROOT, p)] = sha256File(p);
    }
  };
  walk(dir);
  return out;
}

function projectNodeBinary(): string {
  const p = join(REPO_ROOT, 'node_modules', 'node', 'bin', 'node');
  if (!existsSync(p)) throw new Error(`${p} missing: run npm ci`);
  return p;
}

/** The local stand-in for node:24-bookworm-slim. */
export async function nodeBaseImage(): Promise<BuiltImage> {
  const t0 = Date.now();
  const nodeBin = projectNodeBinary();
  const nodeVersion = (await run([nodeBin, '--version'])).stdout.trim();
  const npmVersion = (await run(['npm', 'view', `npm@${NPM_MAJOR}`, 'version', '--json'], { cwd: REPO_ROOT })).stdout;
  const versions = JSON.parse(npmVersion) as unknown;
  const npmLatest = Array.isArray(versions) ? String(versions.at(-1)) : String(versions);
  const key = createHash('sha256')
    .update(JSON.stringify({ BUILDER_VERSION, src: hostDebianSource(), node: sha256File(nodeBin), npm: npmLatest }))
    .digest('hex')
    .slice(0, 16);
  const archivePath = join(imageCacheDir(), `node-base-${key}.oci.tar`);
  if (existsSync(archivePath)) return { name: NODE_BASE_NAME, archivePath, cached: true, buildMs: Date.now() - t0 };
  mkdirSync(imageCacheDir(), { recursive: true });
  const work = mkdtempSync(join(imageCacheDir(), '.build-node-base-'));
  try {
    const rootfs = join(work, 'rootfs');
    await debootstrapRootfs(rootfs, ['ca-certificates']);
    const bin = join(rootfs, 'usr', 'local', 'bin');
    const lib = join(rootfs, 'usr', 'local', 'lib', 'node_modules');
    mkdirSync(bin, { recursive: true });
    mkdirSync(lib, { recursive: true });
    writeFileSync(join(bin, 'node'), readFileSync(nodeBin));
    chmodSync(join(bin, 'node'), 0o755);
    await run(['npm', 'pack', `npm@${npmLatest}`, '--pack-destination', work], { cwd: work });
    const tgz = readdirSync(work).find((f) => /^npm-.*\.tgz$/.test(f));
    if (!tgz) throw new Error('npm pack produced no tarball');
    mkdirSync(join(lib, 'npm'));
    await run(['tar', '-xzf', join(work, tgz), '-C', join(lib, 'npm'), '--strip-components=1', '--no-same-owner']);
    symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', join(bin, 'npm'));
    symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', join(bin, 'npx'));
    const passwd = join(rootfs, 'etc', 'passwd');
    const group = join(rootfs, 'etc', 'group');
    writeFileSync(passwd, `${readFileSync(passwd, 'utf8').trimEnd()}\nnode:x:1000:1000::/home/node:/bin/bash\n`);
    writeFileSync(group, `${readFileSync(group, 'utf8').trimEnd()}\nnode:x:1000:\n`);
    mkdirSync(join(rootfs, 'home', 'node'), { recursive: true });
    await run(['chown', '1000:1000', join(rootfs, 'home', 'node')]);
    await writeOciArchive(
      rootfs,
      NODE_BASE_NAME,
      {
        env: [
          'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
          `NODE_VERSION=${nodeVersion.replace(/^v/, '')}`,
        ],
        cmd: ['node'],
      },
      archivePath,
    );
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return { name: NODE_BASE_NAME, archivePath, cached: false, buildMs: Date.now() - t0 };
}

/** Inputs of the Dockerfile build (what .dockerignore admits), hashed. */
function operatorInputs(): Record<string, string> {
  const files: Record<string, string> = {};
  for (const f of [
    'Dockerfile',
    '.dockerignore',
    'package.json',
    'package-lock.json',
    'tsconfig.json',
    'tsconfig.build.json',
  ]) {
    files[f] = sha256File(join(REPO_ROOT, f));
  }
  return { ...files, ...hashTree(join(REPO_ROOT, 'operator', 'src')) };
}

/** buildah with its own storage (root, runroot) so nothing touches the host's container storage. */
function buildah(storage: string, args: readonly string[]): string[] {
  return [
    'buildah',
    '--root',
    join(storage, 'root'),
    '--runroot',
    join(storage, 'run'),
    '--storage-driver',
    'overlay',
    ...args,
  ];
}

/** The operator image from the project's Dockerfile, tagged localhost/blockpull-operator:<content hash>. */
export async function operatorImage(options: { log?: (m: string) => void } = {}): Promise<BuiltImage> {
  const t0 = Date.now();
  const log = options.log ?? ((m: string) => process.stderr.write(`[images] ${m}\n`));
  const base = await nodeBaseImage();
  const key = createHash('sha256')
    .update(JSON.stringify({ BUILDER_VERSION, base: base.archivePath, inputs: operatorInputs() }))
    .digest('hex')
    .slice(0, 16);
  const name = `${OPERATOR_REPOSITORY}:${key}`;
  const archivePath = join(imageCacheDir(), `operator-${key}.oci.tar`);
  if (existsSync(archivePath)) return { name, archivePath, cached: true, buildMs: Date.now() - t0 };
  await ensureDebianPackages(['buildah']);
  const storage = mkdtempSync(join('/var/tmp', 'bp-buildah-'));
  try {
    log(`building ${name} from the Dockerfile with buildah (base ${NODE_BASE_NAME} from ${base.archivePath})`);
    await run(buildah(storage, ['pull', '--quiet', `oci-archive:${base.archivePath}`]), { timeoutMs: 600_000 }).then(
      async (r) => {
        const id = r.stdout.trim().split('\n').at(-1) ?? '';
        await run(buildah(storage, ['tag', id, NODE_BASE_NAME]));
      },
    );
    // The machine may reach the npm registry through a TLS-intercepting egress proxy whose CA the
    // host's npm trusts (npm config cafile, else Node's NODE_EXTRA_CA_CERTS, which npm runs under).
    // Trust it in the build's RUN steps only: bind-mounted for the build (buildah -v), never copied
    // into the image.
    const caVolumes: string[] = [];
    const npmCafile = (
      await run(['npm', 'config', 'get', 'cafile'], { cwd: REPO_ROOT, allowExit: true })
    ).stdout.trim();
    const cafile = npmCafile !== '' && npmCafile !== 'null' ? npmCafile : (process.env['NODE_EXTRA_CA_CERTS'] ?? '');
    if (cafile !== '' && existsSync(cafile)) {
      const npmrc = join(storage, 'npmrc');
      writeFileSync(npmrc, 'cafile=/etc/blockpull-build-ca.crt\n');
      caVolumes.push(
        '--volume',
        `${cafile}:/etc/blockpull-build-ca.crt:ro`,
        '--volume',
        `${npmrc}:/usr/local/etc/npmrc:ro`,
      );
    }
    await run(
      buildah(storage, [
        'build',
        ...caVolumes,
        '--isolation',
        'chroot',
        '--network',
        'host',
        '--pull-never',
        '--layers=false',
        '--build-arg',
        `NODE_IMAGE=${NODE_BASE_NAME}`,
        '--build-arg',
        `REVISION=${key}`,
        '--format',
        'oci',
        '--file',
        join(REPO_ROOT, 'Dockerfile'),
        '--tag',
        name,
        REPO_ROOT,
      ]),
      { timeoutMs: 1_200_000, cwd: REPO_ROOT },
    );
    const tmp = `${archivePath}.tmp`;
    rmSync(tmp, { force: true });
    await run(buildah(storage, ['push', '--quiet', name, `oci-archive:${tmp}:${name}`]), { timeoutMs: 600_000 });
    renameSync(tmp, archivePath);
    log(`${name}: ${(statSync(archivePath).size / 1e6).toFixed(0)} MB in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  } finally {
    await run(buildah(storage, ['rm', '--all']), { allowExit: true });
    await unmountAllUnder(storage);
    rmSync(storage, { recursive: true, force: true });
  }
  return { name, archivePath, cached: false, buildMs: Date.now() - t0 };
}
