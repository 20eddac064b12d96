import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  isRelease,
  lddMissing,
  lddStatic,
  parseDpkgVersions,
  parseVirshVersion,
  upstreamRelease,
  versionProblems,
} from './image-checks.ts';
import { launcherDebian } from './images.ts';

/** dpkg-query / ldd recorded in a trixie rootfs built by debootstrapRootfs (chroot), 2026-12-08. */
const fixture = (name: string): string => readFileSync(path.join(import.meta.dirname, 'testdata', name), 'utf8');

describe('installed versions against the suite', () => {
  const trixie = parseDpkgVersions(fixture('dpkg-query-trixie.txt'));

  it("parses dpkg-query's `${Package} ${Version}` lines", () => {
    expect(trixie).toEqual(
      new Map([
        ['libvirt-daemon', '11.3.0-3+deb13u3'],
        ['qemu-system-x86', '1:10.0.13+ds-0+deb13u1'],
      ]),
    );
  });

  it('reads the upstream release out of a Debian version (epoch and revision dropped)', () => {
    expect(upstreamRelease('1:10.0.13+ds-0+deb13u1')).toBe('10.0.13');
    expect(upstreamRelease('11.3.0-3+deb13u3')).toBe('11.3.0');
    expect(upstreamRelease('9.0.0-4+deb12u2')).toBe('9.0.0');
    expect(() => upstreamRelease('+ds')).toThrow(/not a Debian version/);
  });

  it('a release matches major.minor, not a prefix of another number', () => {
    expect(isRelease('11.3.0', '11.3')).toBe(true);
    expect(isRelease('11.3', '11.3')).toBe(true);
    expect(isRelease('11.30.0', '11.3')).toBe(false);
    expect(isRelease('1.3.0', '11.3')).toBe(false);
  });

  it("trixie's rootfs passes as trixie and fails as bookworm", () => {
    expect(versionProblems(trixie, launcherDebian('v1.8.4'))).toEqual([]);
    expect(versionProblems(trixie, launcherDebian('v1.7.0'))).toEqual([
      'libvirt-daemon 11.3.0-3+deb13u3 is not 9.0.* (Debian bookworm)',
      'qemu-system-x86 1:10.0.13+ds-0+deb13u1 is not 7.2.* (Debian bookworm)',
    ]);
  });

  it('a package that is missing is a problem', () => {
    expect(versionProblems(new Map([['libvirt-daemon', '11.3.0-3']]), launcherDebian('v1.8.4'))).toEqual([
      'qemu-system-x86 is not installed',
    ]);
  });
});

describe('ldd inside the rootfs', () => {
  it("libvirtd 11.3's libraries are all found", () => {
    const out = fixture('ldd-libvirtd-11.3.txt');
    expect(out).toContain('libvirt.so.0 => /lib/x86_64-linux-gnu/libvirt.so.0');
    expect(lddMissing(out)).toEqual([]);
    expect(lddStatic(out)).toBe(false);
  });

  it('a library ldd did not find is named (ldd exits 0 then)', () => {
    expect(lddMissing(fixture('ldd-not-found.txt'))).toEqual(['libz3.so.4']);
  });

  it('a static binary needs nothing', () => {
    expect(lddStatic(fixture('ldd-static.txt'))).toBe(true);
    expect(lddStatic('\tnot a dynamic executable\n')).toBe(true);
    expect(lddMissing(fixture('ldd-static.txt'))).toEqual([]);
  });
});

describe('parseVirshVersion', () => {
  // Recorded from the real launchers' compute containers (real-kubevirt.e2e, 2026-12-08): KubeVirt
  // v1.8.4 on the trixie image, v1.7.0 on the bookworm image.
  it('reads the library, the compile-time library and the hypervisor (libvirt 11.3, trixie)', () => {
    expect(parseVirshVersion(fixture('virsh-version-libvirt-11.3.txt'))).toEqual({
      compiledAgainst: '11.3.0',
      library: '11.3.0',
      hypervisor: '10.0.13',
    });
  });
  it('the same from libvirt 9.0 (bookworm)', () => {
    expect(parseVirshVersion(fixture('virsh-version-libvirt-9.0.txt'))).toEqual({
      compiledAgainst: '9.0.0',
      library: '9.0.0',
      hypervisor: '7.2.22',
    });
  });
  it('fails when a line is missing (no hypervisor: virsh could not reach the daemon)', () => {
    const noDaemon = fixture('virsh-version-libvirt-9.0.txt').split('\n').slice(0, 2).join('\n');
    expect(() => parseVirshVersion(noDaemon)).toThrow(/Running hypervisor: QEMU/);
  });
});
