/**
 * The images the test node runs, built locally (no registry) and cached by content:
 *  - test:     busybox-static from Debian (a few MB), for plain pods
 *  - pause:    the same busybox rootfs, as containerd's sandbox ("pause") image
 *  - launcher: Debian + libvirt + QEMU + the virt-launcher stand-in entrypoint (uid 107)
 * Each is an OCI archive under ~/.cache/blockpull-operator/images/, named by a hash of
 * everything that goes into it; the image tag is that hash, so a changed input is a new image.
 */
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeOciArchive, type ImageConfig } from './oci.ts';
import { removeUnmounted } from '../support/mounts.ts';
import { debianCandidateVersion } from '../support/debian.ts';
import { busyboxRootfs, imageCacheDir, debootstrapRootfs, hostDebianSource } from './rootfs.ts';

/** The pause image's name: containerd's sandbox_image (node/containerd.ts). */
export const SANDBOX_IMAGE = 'localhost/blockpull/pause:local';

/** Bump when the way images are made changes (invalidates every cached archive). */
const BUILDER_VERSION = '1';

export interface BuiltImage {
  /** Full image reference as containerd and pods know it. */
  readonly name: string;
  readonly archivePath: string;
  /** true when the archive came from the cache. */
  readonly cached: boolean;
  readonly buildMs: number;
}

function key(parts: unknown): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16);
}

export async function cachedImage(
  repo: string,
  fixedName: string | undefined,
  keyParts: unknown,
  build: (workDir: string) => Promise<{ rootfs: string; config: ImageConfig }>,
): Promise<BuiltImage> {
  const t0 = Date.now();
  const hash = key({ BUILDER_VERSION, repo, keyParts });
  const name = fixedName ?? `localhost/blockpull/${repo}:${hash}`;
  const archivePath = join(imageCacheDir(), `${repo}-${hash}.oci.tar`);
  if (existsSync(archivePath)) return { name, archivePath, cached: true, buildMs: Date.now() - t0 };
  mkdirSync(imageCacheDir(), { recursive: true });
  const workDir = mkdtempSync(join(imageCacheDir(), `.build-${repo}-`));
  try {
    const { rootfs, config } = await build(workDir);
    await writeOciArchive(rootfs, name, config, archivePath);
  } finally {
    await removeUnmounted(workDir);
  }
  return { name, archivePath, cached: false, buildMs: Date.now() - t0 };
}

/** A tiny image: busybox-static. Default command: a shell. */
export async function testImage(): Promise<BuiltImage> {
  const version = await debianCandidateVersion('busybox-static');
  return cachedImage('test', undefined, { busybox: version }, async (workDir) => ({
    rootfs: await busyboxRootfs(workDir),
    config: { cmd: ['/bin/sh'] },
  }));
}

/**
 * The pod sandbox image. Kubernetes' pause is a tiny C program that sleeps and reaps zombies;
 * here busybox sh does the same (it waits on its children and exits on TERM).
 */
export async function pauseImage(): Promise<BuiltImage> {
  const version = await debianCandidateVersion('busybox-static');
  const script = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";
  return cachedImage('pause', SANDBOX_IMAGE, { busybox: version, script }, async (workDir) => {
    const rootfs = await busyboxRootfs(workDir);
    writeFileSync(join(rootfs, 'pause'), `#!/bin/sh\n${script}\n`);
    chmodSync(join(rootfs, 'pause'), 0o755);
    return { rootfs, config: { entrypoint: ['/pause'] } };
  });
}

export const LAUNCHER_PACKAGES = [
  'libvirt-daemon',
  'libvirt-daemon-driver-qemu',
  'libvirt-clients',
  'qemu-system-x86',
  'qemu-utils',
] as const;
/** KubeVirt's non-root virt-launcher user ("qemu"). */
export const LAUNCHER_UID = 107;
const here = dirname(fileURLToPath(import.meta.url));
const LAUNCHER_ENTRYPOINT = join(here, 'launcher', 'launcher-standin.sh');

/** The virt-launcher stand-in image (see launcher/launcher-standin.sh). */
export async function launcherImage(): Promise<BuiltImage> {
  const entrypoint = readFileSync(LAUNCHER_ENTRYPOINT, 'utf8');
  const src = hostDebianSource();
  return cachedImage(
    'virt-launcher-standin',
    undefined,
    { src, packages: LAUNCHER_PACKAGES, entrypoint },
    async (workDir) => {
      const rootfs = join(workDir, 'rootfs');
      await debootstrapRootfs(rootfs, LAUNCHER_PACKAGES);
      addUser(rootfs, 'qemu', LAUNCHER_UID, '/var/lib/launcher');
      // /var/run is a symlink to /run (absolute): write below rootfs/run, never through the link.
      for (const d of ['run/libvirt', 'run/kubevirt-ephemeral-disks', 'run/kubevirt-private', 'var/lib/launcher']) {
        mkdirSync(join(rootfs, d), { recursive: true });
        chownSync(join(rootfs, d), LAUNCHER_UID, LAUNCHER_UID);
      }
      const bin = join(rootfs, 'usr', 'local', 'bin', 'launcher-standin');
      copyFileSync(LAUNCHER_ENTRYPOINT, bin);
      chmodSync(bin, 0o755);
      return {
        rootfs,
        config: {
          entrypoint: ['/usr/local/bin/launcher-standin'],
          user: `${LAUNCHER_UID}:${LAUNCHER_UID}`,
          env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/var/lib/launcher'],
          labels: { 'org.opencontainers.image.title': 'virt-launcher stand-in (blockpull-operator tests)' },
        },
      };
    },
  );
}

export function addUser(rootfs: string, name: string, id: number, home: string): void {
  const passwd = join(rootfs, 'etc', 'passwd');
  const group = join(rootfs, 'etc', 'group');
  const users = readFileSync(passwd, 'utf8');
  const groups = readFileSync(group, 'utf8');
  const taken = (text: string): boolean =>
    text.split('\n').some((l) => l.split(':')[2] === String(id) || l.split(':')[0] === name);
  if (taken(users) || taken(groups)) throw new Error(`uid/gid ${id} or name ${name} already used in the image`);
  writeFileSync(passwd, `${users.trimEnd()}\n${name}:x:${id}:${id}:${name}:${home}:/bin/bash\n`);
  writeFileSync(group, `${groups.trimEnd()}\n${name}:x:${id}:\n`);
}

/**
 * The user `name` with uid `id`: kept when the packages made it already (trixie's libvirt makes
 * libvirt-qemu, bookworm's without libvirt-daemon-system does not), else added (addUser).
 */
export function ensureUser(rootfs: string, name: string, id: number, home: string): void {
  const entry = readFileSync(join(rootfs, 'etc', 'passwd'), 'utf8')
    .split('\n')
    .map((l) => l.split(':'))
    .find((f) => f[0] === name);
  if (entry === undefined) return addUser(rootfs, name, id, home);
  if (entry[2] !== String(id)) throw new Error(`user ${name} in the image has uid ${entry[2] ?? '?'}, not ${id}`);
}
