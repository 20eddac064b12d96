/**
 * Root filesystems from Debian packages, no registry: busybox-static for tiny images,
 * debootstrap (minbase + extra packages) for real ones. The mirror is the host's own (read from
 * apt's sources), and so is the suite (/etc/os-release) unless a caller asks for another one
 * (the KubeVirt 1.8 launcher image: trixie on a bookworm host).
 */
import {
  chmodSync,
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { cacheRoot } from '../support/cache.ts';
import { downloadDebianPackage, ensureDebianPackages } from '../support/debian.ts';
import { mountsUnder, removeUnmounted, unmountAllUnder } from '../support/mounts.ts';
import { run } from '../support/process.ts';

/** Where built images (OCI archives) and downloaded .debs are cached: <cache root>/images. */
export function imageCacheDir(): string {
  return join(cacheRoot(), 'images');
}

export interface DebianSource {
  readonly mirror: string;
  readonly suite: string;
}

/** The host's Debian mirror (first deb URI for the codename's main suite) and codename. */
export function hostDebianSource(): DebianSource {
  const osRelease = readFileSync('/etc/os-release', 'utf8');
  const suite = /^VERSION_CODENAME=(\S+)$/m.exec(osRelease)?.[1] ?? 'bookworm';
  const files: string[] = [];
  if (existsSync('/etc/apt/sources.list')) files.push('/etc/apt/sources.list');
  if (existsSync('/etc/apt/sources.list.d')) {
    for (const f of readdirSync('/etc/apt/sources.list.d').sort()) files.push(join('/etc/apt/sources.list.d', f));
  }
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const uri = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
        const suites = /^Suites:\s*(.+)$/m.exec(stanza)?.[1]?.split(/\s+/) ?? [];
        if (uri && suites.includes(suite) && /^Types:.*\bdeb\b/m.test(stanza)) return { mirror: uri, suite };
      }
    } else {
      for (const line of text.split('\n')) {
        const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+.*\bmain\b/.exec(line.trim());
        if (m?.[1] && m[2] === suite) return { mirror: m[1], suite };
      }
    }
  }
  return { mirror: 'http://deb.debian.org/debian', suite };
}

/**
 * A busybox-static rootfs: /bin/busybox plus one symlink per applet, /etc/passwd, /tmp.
 * About 2 MB. Returns the directory (caller removes it).
 */
export async function busyboxRootfs(workDir: string): Promise<string> {
  const dl = mkdtempSync(join(workDir, 'busybox-deb-'));
  const rootfs = join(workDir, 'rootfs-busybox');
  rmSync(rootfs, { recursive: true, force: true });
  try {
    const deb = await downloadDebianPackage('busybox-static', dl);
    const extracted = join(dl, 'x');
    await run(['dpkg-deb', '-x', deb, extracted]);
    for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root', 'var/run', 'usr/bin'])
      mkdirSync(join(rootfs, d), { recursive: true });
    chmodSync(join(rootfs, 'tmp'), 0o1777);
    const busybox = join(rootfs, 'bin', 'busybox');
    writeFileSync(busybox, readFileSync(join(extracted, 'bin', 'busybox')));
    chmodSync(busybox, 0o755);
    const list = await run([busybox, '--list']);
    for (const applet of list.stdout.split('\n').map((s) => s.trim())) {
      if (applet === '' || applet === 'busybox' || !/^[\w.[-]+$/.test(applet)) continue;
      symlinkSync('busybox', join(rootfs, 'bin', applet));
    }
    writeFileSync(
      join(rootfs, 'etc', 'passwd'),
      'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
    );
    writeFileSync(join(rootfs, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
    return rootfs;
  } finally {
    rmSync(dl, { recursive: true, force: true });
  }
}

/** The .debs of one suite, kept between image builds: <cache root>/images/debs-<suite>. */
export function debCacheDir(suite: string): string {
  if (!/^[a-z][a-z0-9-]*$/.test(suite)) throw new Error(`not a Debian suite name: ${suite}`);
  return join(imageCacheDir(), `debs-${suite}`);
}

export interface DebootstrapPlanInput {
  readonly target: string;
  readonly suite: string;
  /** The host's own suite: only that one can take the packages in debootstrap's --include. */
  readonly hostSuite: string;
  readonly mirror: string;
  readonly packages: readonly string[];
  readonly debCache: string;
}

export interface DebootstrapPlan {
  readonly debootstrap: readonly string[];
  /** Run inside the chroot after debootstrap (another suite's packages), else empty. */
  readonly chroot: readonly (readonly string[])[];
}

/**
 * The commands for a rootfs of `suite`. The host's suite: one debootstrap with --include. Another
 * suite: a plain minbase debootstrap, then apt-get inside the chroot. A one-step --include of
 * trixie's libvirt on a bookworm host fails (`systemd pre-depends on libsystemd-shared ...
 * unpacked, but has never been configured`: debootstrap's own ordering of the extra packages);
 * apt in the finished chroot orders them itself.
 */
export function debootstrapPlan(p: DebootstrapPlanInput): DebootstrapPlan {
  const oneStep = p.suite === p.hostSuite;
  const argv = ['debootstrap', '--variant=minbase', `--cache-dir=${p.debCache}`];
  if (oneStep && p.packages.length > 0) argv.push(`--include=${p.packages.join(',')}`);
  argv.push(p.suite, p.target, p.mirror);
  if (oneStep || p.packages.length === 0) return { debootstrap: argv, chroot: [] };
  const chroot = (args: readonly string[]): string[] => ['chroot', p.target, ...args];
  return {
    debootstrap: argv,
    chroot: [
      chroot(['apt-get', 'update', '-q']),
      chroot(['apt-get', 'install', '-y', '-q', '--no-install-recommends', ...p.packages]),
    ],
  };
}

/** Environment of the apt-get runs inside the chroot (the host's PATH has directories the chroot lacks). */
const CHROOT_ENV = {
  PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
  DEBIAN_FRONTEND: 'noninteractive',
  LANG: 'C.UTF-8',
  HOME: '/root',
};

/** Hard links (copies across filesystems) of the .debs in `from` that `to` lacks: never a mount into the chroot. */
function shareDebs(from: string, to: string): number {
  if (!existsSync(from)) return 0;
  mkdirSync(to, { recursive: true });
  let n = 0;
  for (const f of readdirSync(from)) {
    if (!f.endsWith('.deb') || existsSync(join(to, f))) continue;
    try {
      linkSync(join(from, f), join(to, f));
    } catch {
      copyFileSync(join(from, f), join(to, f));
    }
    n++;
  }
  return n;
}

export interface DebootstrapOptions {
  /** The Debian suite (default: the host's). Another suite is made in two steps (debootstrapPlan). */
  readonly suite?: string;
}

/**
 * debootstrap --variant=minbase with extra packages into a fresh directory. Downloaded .debs are
 * kept in the cache per suite (debCacheDir: debootstrap --cache-dir, and for the chroot's apt-get
 * hard links in and out of its archive directory) so later images reuse them.
 */
export async function debootstrapRootfs(
  target: string,
  packages: readonly string[],
  opts: DebootstrapOptions = {},
): Promise<void> {
  await ensureDebianPackages(['debootstrap']);
  const src = hostDebianSource();
  const suite = opts.suite ?? src.suite;
  const debCache = debCacheDir(suite);
  mkdirSync(debCache, { recursive: true });
  await removeUnmounted(target);
  mkdirSync(target, { recursive: true });
  const plan = debootstrapPlan({ target, suite, hostSuite: src.suite, mirror: src.mirror, packages, debCache });
  const archives = join(target, 'var', 'cache', 'apt', 'archives');
  const policyRcD = join(target, 'usr', 'sbin', 'policy-rc.d');
  try {
    await run([...plan.debootstrap], { timeoutMs: 1_800_000 });
    if (plan.chroot.length > 0) {
      // No service starts in the chroot; /proc for the maintainer scripts (a fresh proc mount, no bind mount).
      writeFileSync(policyRcD, '#!/bin/sh\nexit 101\n');
      chmodSync(policyRcD, 0o755);
      await run(['mount', '-t', 'proc', 'proc', join(target, 'proc')]);
      shareDebs(debCache, archives);
      for (const argv of plan.chroot) await run([...argv], { env: CHROOT_ENV, timeoutMs: 1_800_000 });
      shareDebs(archives, debCache);
      rmSync(policyRcD, { force: true });
    }
  } finally {
    // debootstrap mounts /proc and /sys inside the target while it runs; never leave them
    await unmountAllUnder(target);
  }
  const left = mountsUnder(target);
  if (left.length > 0) throw new Error(`mounts left in the rootfs ${target}: ${left.join(', ')}`);
  // apt lists and caches are not needed in an image
  rmSync(archives, { recursive: true, force: true });
  rmSync(join(target, 'var', 'lib', 'apt', 'lists'), { recursive: true, force: true });
  mkdirSync(join(target, 'var', 'lib', 'apt', 'lists', 'partial'), { recursive: true });
  mkdirSync(join(archives, 'partial'), { recursive: true });
}
