/**
 * What the launcher image build checks in its rootfs before it is packed, and the parsers of what
 * those checks (and the specs) read:
 * - dpkg's installed versions of libvirt and QEMU are the releases the suite should give
 *   (launcherDebian: 9.0 / 7.2 on bookworm, 11.3 / 10.0 on trixie): a wrong suite or a mirror
 *   serving something else fails the build, not a spec half an hour later;
 * - `ldd` inside the rootfs (chroot: the image's own loader and libraries) finds every library of
 *   virt-launcher (cgo, built against the host's libvirt-dev), libvirtd, virsh, QEMU and the QEMU
 *   driver module; a static binary ("not a dynamic executable") needs none.
 */
import { run } from '../support/process.ts';
import type { LauncherDebian } from './images.ts';

/** The packages whose versions the build checks, and which release of launcherDebian each must have. */
export const CHECKED_PACKAGES = { 'libvirt-daemon': 'libvirt', 'qemu-system-x86': 'qemu' } as const;

/** Files of the image that ldd must resolve completely (KubeVirt's own binaries are added by the caller). */
export const LDD_CHECKED_FILES = [
  '/usr/sbin/libvirtd',
  '/usr/bin/virsh',
  '/usr/bin/qemu-system-x86_64',
  '/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so',
] as const;

/** `dpkg-query -W -f '${Package} ${Version}\n' ...`: package -> Debian version. */
export function parseDpkgVersions(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const [pkg, version, ...rest] = line.trim().split(/\s+/);
    if (pkg && version && rest.length === 0) m.set(pkg, version);
  }
  return m;
}

/** The upstream release in a Debian version: `1:10.0.6+ds-0+deb13u2` -> `10.0.6`, `11.3.0-3+deb13u3` -> `11.3.0`. */
export function upstreamRelease(debianVersion: string): string {
  const m = /^(?:\d+:)?(\d+(?:\.\d+)*)/.exec(debianVersion);
  if (!m?.[1]) throw new Error(`not a Debian version: ${debianVersion}`);
  return m[1];
}

/** Whether `release` (e.g. 11.3.0) is of `wanted` (e.g. 11.3): equal, or wanted followed by a dot. */
export function isRelease(release: string, wanted: string): boolean {
  return release === wanted || release.startsWith(`${wanted}.`);
}

/** What is wrong with the installed versions (empty: libvirt and QEMU are the suite's). */
export function versionProblems(installed: ReadonlyMap<string, string>, debian: LauncherDebian): string[] {
  const problems: string[] = [];
  for (const [pkg, which] of Object.entries(CHECKED_PACKAGES)) {
    const v = installed.get(pkg);
    const wanted = debian[which];
    if (v === undefined) problems.push(`${pkg} is not installed`);
    else if (!isRelease(upstreamRelease(v), wanted))
      problems.push(`${pkg} ${v} is not ${wanted}.* (Debian ${debian.suite})`);
  }
  return problems;
}

/** The libraries `ldd <one file>` did not find. */
export function lddMissing(out: string): string[] {
  const missing: string[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*(\S+)\s+=>\s+not found\s*$/.exec(line);
    if (m?.[1]) missing.push(m[1]);
  }
  return missing;
}

/** `ldd` said the file is static (it then exits 1 and lists nothing). */
export function lddStatic(out: string): boolean {
  return /^\s*(?:not a dynamic executable|statically linked)\s*$/m.test(out);
}

export interface VirshVersion {
  /** "Compiled against library": the virsh binary's libvirt. */
  readonly compiledAgainst: string;
  /** "Using library": the libvirt library virsh loaded. */
  readonly library: string;
  /** "Running hypervisor": what the daemon's driver reports (QEMU's version). */
  readonly hypervisor: string;
}

/** `virsh version` (`Using library: libvirt 11.3.0`, `Running hypervisor: QEMU 10.0.2`, ...). */
export function parseVirshVersion(out: string): VirshVersion {
  const field = (label: string, product: string): string => {
    const m = new RegExp(`^${label}: ${product} (\\S+)\\s*$`, 'm').exec(out);
    if (!m?.[1]) throw new Error(`virsh version: no "${label}: ${product} ..." line in:\n${out}`);
    return m[1];
  };
  return {
    compiledAgainst: field('Compiled against library', 'libvirt'),
    library: field('Using library', 'libvirt'),
    hypervisor: field('Running hypervisor', 'QEMU'),
  };
}

/** chroot into the rootfs with a plain PATH (the host's has directories the image lacks). */
async function inRootfs(rootfs: string, argv: readonly string[]): Promise<{ stdout: string; exitCode: number }> {
  const r = await run(['chroot', rootfs, ...argv], {
    env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' },
    allowExit: true,
  });
  return { stdout: `${r.stdout}${r.stderr}`, exitCode: r.exitCode };
}

/**
 * The build's checks of a launcher rootfs (see the top of this file); `binaries` are KubeVirt's own
 * files in the image (absolute paths inside it). Throws with every problem found.
 */
export async function checkLauncherRootfs(
  rootfs: string,
  debian: LauncherDebian,
  binaries: readonly string[],
  log: (m: string) => void,
): Promise<void> {
  const q = await inRootfs(rootfs, [
    'dpkg-query',
    '-W',
    '-f=${Package} ${Version}\\n',
    ...Object.keys(CHECKED_PACKAGES),
  ]);
  const installed = parseDpkgVersions(q.stdout);
  const problems = versionProblems(installed, debian);
  log(`launcher rootfs (Debian ${debian.suite}): ${[...installed].map(([p, v]) => `${p} ${v}`).join(', ')}`);
  for (const file of [...binaries, ...LDD_CHECKED_FILES]) {
    const l = await inRootfs(rootfs, ['ldd', file]);
    const missing = lddMissing(l.stdout);
    if (missing.length > 0) problems.push(`ldd ${file}: not found: ${missing.join(', ')}`);
    else if (l.exitCode !== 0 && !lddStatic(l.stdout)) problems.push(`ldd ${file} failed: ${l.stdout.trim()}`);
  }
  if (problems.length > 0) throw new Error(`launcher rootfs check failed:\n${problems.join('\n')}`);
}
