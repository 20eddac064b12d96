/**
 * Root filesystems from Debian packages, no registry: busybox-static for tiny images,
 * debootstrap (minbase + extra packages) for real ones. The mirror and suite are the host's
 * own (read from apt's sources and /etc/os-release), so the images match the host's Debian.
 */
import {
  chmodSync,
  existsSync,
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
import { unmountAllUnder } from '../support/mounts.ts';
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

/**
 * debootstrap --variant=minbase with extra packages into a fresh directory. Downloaded .debs are
 * kept in the cache (debootstrap --cache-dir) so later images reuse them.
 */
export async function debootstrapRootfs(target: string, packages: readonly string[]): Promise<void> {
  await ensureDebianPackages(['debootstrap']);
  const src = hostDebianSource();
  const debCache = join(imageCacheDir(), 'debs');
  mkdirSync(debCache, { recursive: true });
  rmSync(target, { recursive: true, force: true });
  mkdirSync(target, { recursive: true });
  const argv = ['debootstrap', '--variant=minbase', `--cache-dir=${debCache}`];
  if (packages.length > 0) argv.push(`--include=${packages.join(',')}`);
  argv.push(src.suite, target, src.mirror);
  try {
    await run(argv, { timeoutMs: 1_800_000 });
    // apt lists and caches are not needed in an image
    rmSync(join(target, 'var', 'cache', 'apt', 'archives'), { recursive: true, force: true });
    rmSync(join(target, 'var', 'lib', 'apt', 'lists'), { recursive: true, force: true });
    mkdirSync(join(target, 'var', 'lib', 'apt', 'lists', 'partial'), { recursive: true });
    mkdirSync(join(target, 'var', 'cache', 'apt', 'archives', 'partial'), { recursive: true });
  } finally {
    // debootstrap mounts /proc and /sys inside the target while it runs; never leave them
    await unmountAllUnder(target);
  }
}
