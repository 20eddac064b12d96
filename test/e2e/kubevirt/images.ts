/**
 * The two images real KubeVirt needs on the test node, built locally (no registry) with the project's
 * image machinery (../images: debootstrap rootfs, oci.ts archive, content-keyed cache) and imported
 * into the node's containerd like every other test image (Containerd.importImage(archivePath)):
 *
 * - virt-launcher: laid out like upstream's (cmd/virt-launcher/BUILD.bazel in the KubeVirt module):
 *   /usr/bin/{virt-launcher,virt-launcher-monitor,virt-freezer,virt-probe,virt-tail,container-disk}
 *   (the paths the rendered launcher pod runs: compute, guest-console-log, container-disk-binary,
 *   volume*-init), KubeVirt's /etc/libvirt/{qemu.conf,virtqemud.conf}, /etc/libvirt/hooks/qemu and
 *   /etc/nsswitch.conf, users root and qemu (107), entrypoint /usr/bin/virt-launcher, and the file
 *   capability cap_net_bind_service+ep on /usr/bin/virt-launcher-monitor (a PAX xattr record in the
 *   layer: oci.ts). What differs, and why: libvirt and QEMU are Debian's instead of CentOS Stream's,
 *   by KubeVirt version (launcherDebian): 1.7 on Debian 12 (libvirt 9.0, QEMU 7.2), 1.8+ on Debian 13
 *   (libvirt 11.3, QEMU 10.0; upstream's 1.8 launcher has libvirt 11.9+, QEMU 10.1); neither Debian
 *   has the modular virtqemud, so /usr/sbin/virtqemud is a script that runs libvirtd (image/virtqemud); only the QEMU connection driver is kept (the others would
 *   manage host networks/storage); /etc/libvirt/virtlogd.conf is ours (image/virtlogd.conf); user
 *   libvirt-qemu exists because Debian's QEMU driver refuses to load without it (trixie's packages make it, bookworm's do not); getcap is added.
 * - containerDisk: /disk/disk.qcow2 (uid/gid 107, like upstream's `ADD --chown=107:107`) holding known
 *   data (CONTAINER_DISK_WRITES, written with qemu-io) and an empty /usr/bin: the rendered pod mounts
 *   the launcher's container-disk binary there (virt-bin-share-dir) and runs it as the volume container.
 *   containerDiskReference is a host copy of the same qcow2, for `qemu-img compare` after a flatten.
 *
 * The launcher build checks what it made (image-checks.ts): the libvirt and QEMU versions dpkg
 * installed are the suite's, and ldd inside the rootfs finds every library of virt-launcher (built
 * against the host's libvirt-dev), libvirtd, virsh, QEMU and the QEMU driver.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, chown, copyFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { addUser, cachedImage, ensureUser, LAUNCHER_PACKAGES, type BuiltImage } from '../images/images.ts';
import { debootstrapRootfs, hostDebianSource, imageCacheDir } from '../images/rootfs.ts';
import { qemuIoWrite } from '../launcher/disk-chain.ts';
import { run } from '../support/process.ts';
import { ensureHypervisorPackages } from '../launcher/packages.ts';
import { ensureDebianPackages } from '../support/debian.ts';
import { withLock } from '../support/lock.ts';
import { ensureKubevirtBinaries, kubevirtSourceDir, type KubevirtBinaries } from './binaries.ts';
import { checkLauncherRootfs } from './image-checks.ts';

/** KubeVirt's non-root user (uid and gid). */
export const QEMU_UID = 107;
/** Debian's QEMU driver runs as libvirt-qemu by default and fails to load without that user. */
export const LIBVIRT_QEMU_UID = 64055;

/** Debian packages of the launcher image: the stand-in's libvirt + QEMU set, and getcap (libcap2-bin) to check the file capability in a running container. */
export const KUBEVIRT_LAUNCHER_PACKAGES = [...LAUNCHER_PACKAGES, 'libcap2-bin'] as const;

/** The Debian a launcher image is built from, and the libvirt / QEMU releases (major.minor) it must then have. */
export interface LauncherDebian {
  readonly suite: 'bookworm' | 'trixie';
  readonly packages: readonly string[];
  /** libvirt-daemon's upstream release, e.g. "11.3" (checked at build time and by the specs). */
  readonly libvirt: string;
  /** qemu-system-x86's upstream release, e.g. "10.0". */
  readonly qemu: string;
}

/**
 * The launcher image's Debian by KubeVirt version: 1.7 on bookworm (libvirt 9.0, QEMU 7.2), 1.8 and
 * later on trixie (libvirt 11.3, QEMU 10.0), nearer upstream's 1.8 launcher (libvirt 11.9, QEMU 10.1).
 * The same packages on both: virt-launcher 1.8 links libnbd statically (libnbd.ts), so no libnbd0.
 */
export function launcherDebian(version: string): LauncherDebian {
  const m = /^v?(\d+)\.(\d+)\.\d+(?:[-+].*)?$/.exec(version);
  if (!m) throw new Error(`not a KubeVirt version: ${version}`);
  const [major, minor] = [Number(m[1]), Number(m[2])];
  if (major === 1 && minor < 7) throw new Error(`KubeVirt ${version}: no launcher image before 1.7`);
  if (major === 1 && minor === 7)
    return { suite: 'bookworm', packages: KUBEVIRT_LAUNCHER_PACKAGES, libvirt: '9.0', qemu: '7.2' };
  return { suite: 'trixie', packages: KUBEVIRT_LAUNCHER_PACKAGES, libvirt: '11.3', qemu: '10.0' };
}
/** Where the rendered launcher pod runs KubeVirt's binaries from. */
const LAUNCHER_BINARIES = [
  'virt-launcher',
  'virt-launcher-monitor',
  'virt-freezer',
  'virt-probe',
  'virt-tail',
  'container-disk',
] as const;
const KEEP_DRIVER = 'libvirt_driver_qemu.so';

/** The containerDisk's qcow2: virtual size and what is written into it (qemu-io write -P). */
export const CONTAINER_DISK_SIZE_MIB = 128;
const MiB = 1024 * 1024;
export const CONTAINER_DISK_WRITES: readonly {
  readonly offset: number;
  readonly length: number;
  readonly pattern: number;
}[] = [
  { offset: 0, length: 16 * MiB, pattern: 0x5a },
  { offset: 48 * MiB, length: 16 * MiB, pattern: 0xa5 },
  { offset: 100 * MiB, length: 4 * MiB, pattern: 0x3c },
];

export interface KubevirtImages {
  readonly launcher: BuiltImage;
  /** What the launcher image was built from (its libvirt and QEMU releases). */
  readonly launcherDebian: LauncherDebian;
  readonly containerDisk: BuiltImage;
  /** A host copy of the containerDisk's qcow2 (read-only), for qemu-img compare. */
  readonly containerDiskReference: string;
}

export interface EnsureKubevirtImagesOptions {
  readonly binaries?: KubevirtBinaries;
  readonly env?: NodeJS.ProcessEnv;
  readonly log?: (message: string) => void;
}

const here = import.meta.dirname;
const VIRTQEMUD_SCRIPT = path.join(here, 'image', 'virtqemud');
const VIRTLOGD_CONF = path.join(here, 'image', 'virtlogd.conf');

async function fileHash(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** KubeVirt's own files the launcher image carries: (path in the module, path in the image, mode). */
const UPSTREAM_FILES = [
  ['cmd/virt-launcher/qemu.conf', 'etc/libvirt/qemu.conf', 0o644],
  ['cmd/virt-launcher/virtqemud.conf', 'etc/libvirt/virtqemud.conf', 0o644],
  ['cmd/virt-launcher/qemu', 'etc/libvirt/hooks/qemu', 0o755],
  ['cmd/virt-launcher/nsswitch.conf', 'etc/nsswitch.conf', 0o644],
] as const;

export async function launcherImage(
  bins: KubevirtBinaries,
  log: (m: string) => void = () => undefined,
): Promise<BuiltImage> {
  const debian = launcherDebian(bins.version);
  const source = await kubevirtSourceDir(bins.version);
  const binaryHashes = Object.fromEntries(
    await Promise.all(LAUNCHER_BINARIES.map(async (b) => [b, await fileHash(path.join(bins.binDir, b))] as const)),
  );
  const upstream = Object.fromEntries(
    await Promise.all(
      UPSTREAM_FILES.map(async ([from]) => [from, await readFile(path.join(source, from), 'utf8')] as const),
    ),
  );
  const ours = { virtqemud: await readFile(VIRTQEMUD_SCRIPT, 'utf8'), virtlogd: await readFile(VIRTLOGD_CONF, 'utf8') };
  const keyParts = {
    version: bins.version,
    // The suite is part of the key: a bookworm image of the same binaries is another image.
    src: { mirror: hostDebianSource().mirror, suite: debian.suite },
    packages: debian.packages,
    binaryHashes,
    upstream,
    ours,
    users: [QEMU_UID, LIBVIRT_QEMU_UID],
    keep: KEEP_DRIVER,
  };
  return cachedImage('kubevirt-virt-launcher', undefined, keyParts, async (workDir) => {
    await ensureDebianPackages(['libcap2-bin']); // setcap on the host
    const rootfs = path.join(workDir, 'rootfs');
    const t0 = Date.now();
    await debootstrapRootfs(rootfs, debian.packages, { suite: debian.suite });
    log(`launcher rootfs (Debian ${debian.suite}) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const usrBin = path.join(rootfs, 'usr', 'bin');
    for (const b of LAUNCHER_BINARIES) {
      await copyFile(path.join(bins.binDir, b), path.join(usrBin, b));
      await chmod(path.join(usrBin, b), 0o755);
    }
    // virt-launcher-monitor gives virtqemud NET_BIND_SERVICE (ambient) in the non-root pod, whose
    // container adds only that capability: the file capability makes it available to the process.
    await run(['setcap', 'cap_net_bind_service+ep', path.join(usrBin, 'virt-launcher-monitor')]);
    for (const [from, to, mode] of UPSTREAM_FILES) {
      const dest = path.join(rootfs, to);
      await mkdir(path.dirname(dest), { recursive: true });
      await writeFile(dest, upstream[from] ?? '');
      await chmod(dest, mode);
    }
    await writeFile(path.join(rootfs, 'etc', 'libvirt', 'virtlogd.conf'), ours.virtlogd);
    const virtqemud = path.join(rootfs, 'usr', 'sbin', 'virtqemud');
    await writeFile(virtqemud, ours.virtqemud);
    await chmod(virtqemud, 0o755);
    const drivers = path.join(rootfs, 'usr', 'lib', 'x86_64-linux-gnu', 'libvirt', 'connection-driver');
    const present = await readdir(drivers);
    if (!present.includes(KEEP_DRIVER)) throw new Error(`${KEEP_DRIVER} missing from the image's ${drivers}`);
    for (const d of present) if (d !== KEEP_DRIVER) await rm(path.join(drivers, d), { force: true });
    addUser(rootfs, 'qemu', QEMU_UID, '/home/qemu');
    ensureUser(rootfs, 'libvirt-qemu', LIBVIRT_QEMU_UID, '/var/lib/libvirt');
    // Directories the pod mounts emptyDirs on, and upstream's empty qemu-kvm modules dir.
    // /var/run is a symlink to /run (absolute): write below rootfs/run, never through the link.
    for (const d of [
      'home/qemu',
      'run/libvirt',
      'run/kubevirt',
      'run/kubevirt-private',
      'run/kubevirt-ephemeral-disks',
    ]) {
      await mkdir(path.join(rootfs, d), { recursive: true });
      await chown(path.join(rootfs, d), QEMU_UID, QEMU_UID);
    }
    await mkdir(path.join(rootfs, 'usr', 'lib64', 'qemu-kvm'), { recursive: true });
    await checkLauncherRootfs(
      rootfs,
      debian,
      LAUNCHER_BINARIES.map((b) => `/usr/bin/${b}`),
      log,
    );
    return {
      rootfs,
      config: {
        entrypoint: ['/usr/bin/virt-launcher'],
        labels: {
          'org.opencontainers.image.title': `KubeVirt ${bins.version} virt-launcher (blockpull-operator test bed: Debian ${debian.suite} libvirt ${debian.libvirt} + QEMU ${debian.qemu})`,
        },
      },
    };
  });
}

/** The containerDisk qcow2 on the host (made once per content key, under a lock; read-only). */
async function containerDiskReference(key: string): Promise<string> {
  const file = path.join(imageCacheDir(), `kubevirt-containerdisk-${key}.qcow2`);
  const exists = async (): Promise<boolean> => (await stat(file).catch(() => undefined))?.isFile() === true;
  if (await exists()) return file;
  await mkdir(imageCacheDir(), { recursive: true });
  return withLock(`${file}.lock`, async () => {
    if (await exists()) return file;
    const tmp = `${file}.tmp-${process.pid}`;
    await rm(tmp, { force: true });
    await run(['qemu-img', 'create', '-q', '-f', 'qcow2', tmp, `${CONTAINER_DISK_SIZE_MIB}M`]);
    await qemuIoWrite(tmp, CONTAINER_DISK_WRITES);
    await chmod(tmp, 0o444);
    await rename(tmp, file);
    return file;
  });
}

export async function containerDiskImage(): Promise<{ image: BuiltImage; reference: string }> {
  await ensureHypervisorPackages(); // qemu-img, qemu-io
  const { stdout: qemuImg } = await run(['qemu-img', '--version']);
  const parts = {
    qemuImg: qemuImg.split('\n')[0] ?? '',
    size: CONTAINER_DISK_SIZE_MIB,
    writes: CONTAINER_DISK_WRITES,
    uid: QEMU_UID,
  };
  const key = createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16);
  const reference = await containerDiskReference(key);
  const image = await cachedImage(
    'kubevirt-containerdisk',
    undefined,
    { ...parts, reference: path.basename(reference) },
    async (workDir) => {
      const rootfs = path.join(workDir, 'rootfs');
      await mkdir(path.join(rootfs, 'disk'), { recursive: true });
      await mkdir(path.join(rootfs, 'usr', 'bin'), { recursive: true });
      await mkdir(path.join(rootfs, 'tmp'), { recursive: true });
      await chmod(path.join(rootfs, 'tmp'), 0o1777);
      const disk = path.join(rootfs, 'disk', 'disk.qcow2');
      await copyFile(reference, disk);
      await chmod(disk, 0o440);
      await chown(path.join(rootfs, 'disk'), QEMU_UID, QEMU_UID);
      await chown(disk, QEMU_UID, QEMU_UID);
      return {
        rootfs,
        config: { labels: { 'org.opencontainers.image.title': 'containerDisk (blockpull-operator test bed)' } },
      };
    },
  );
  return { image, reference };
}

/** Builds (first time) or finds the cached virt-launcher and containerDisk images. */
export async function ensureKubevirtImages(opts: EnsureKubevirtImagesOptions = {}): Promise<KubevirtImages> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`[kubevirt] ${m}\n`));
  const bins = opts.binaries ?? (await ensureKubevirtBinaries({ ...(opts.env ? { env: opts.env } : {}), log }));
  const launcher = await launcherImage(bins, log);
  log(
    `virt-launcher image ${launcher.name}: ${launcher.cached ? 'cached' : 'built'} in ${(launcher.buildMs / 1000).toFixed(1)} s`,
  );
  const { image: containerDisk, reference } = await containerDiskImage();
  log(
    `containerDisk image ${containerDisk.name}: ${containerDisk.cached ? 'cached' : 'built'} in ${(containerDisk.buildMs / 1000).toFixed(1)} s`,
  );
  return { launcher, launcherDebian: launcherDebian(bins.version), containerDisk, containerDiskReference: reference };
}

if (import.meta.main) {
  const images = await ensureKubevirtImages();
  process.stdout.write(`${JSON.stringify(images, null, 2)}\n`);
}
