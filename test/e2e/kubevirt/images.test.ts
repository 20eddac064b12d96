import { describe, expect, it } from 'vitest';
import { KUBEVIRT_LAUNCHER_PACKAGES, launcherDebian } from './images.ts';
import { pinnedKubevirtVersions } from './binaries.ts';

describe('launcherDebian: the Debian of the launcher image, by KubeVirt version', () => {
  it('1.7 on bookworm: libvirt 9.0, QEMU 7.2', () => {
    expect(launcherDebian('v1.7.0')).toEqual({
      suite: 'bookworm',
      packages: KUBEVIRT_LAUNCHER_PACKAGES,
      libvirt: '9.0',
      qemu: '7.2',
    });
  });

  it('1.8 and later on trixie: libvirt 11.3, QEMU 10.0', () => {
    for (const v of ['v1.8.0', 'v1.8.4', '1.9.0', 'v1.10.1', 'v2.0.0'])
      expect(launcherDebian(v), v).toMatchObject({ suite: 'trixie', libvirt: '11.3', qemu: '10.0' });
  });

  it('the same packages on both suites: virt-launcher 1.8 links libnbd statically, and no libnbd0', () => {
    expect(launcherDebian('v1.8.4').packages).toEqual(launcherDebian('v1.7.0').packages);
    expect(launcherDebian('v1.8.4').packages.some((p) => p.startsWith('libnbd'))).toBe(false);
    expect(launcherDebian('v1.8.4').packages).toContain('libvirt-daemon');
    expect(launcherDebian('v1.8.4').packages).toContain('qemu-system-x86');
  });

  it('every pinned version has a launcher Debian, and the two pinned ones differ', () => {
    const suites = pinnedKubevirtVersions().map((v) => launcherDebian(v).suite);
    expect(suites.length).toBeGreaterThan(0);
    if (pinnedKubevirtVersions().includes('v1.8.4')) expect(new Set(suites)).toEqual(new Set(['bookworm', 'trixie']));
  });

  it('refuses what it does not know', () => {
    expect(() => launcherDebian('v1.6.3')).toThrow(/before 1.7/);
    expect(() => launcherDebian('latest')).toThrow(/not a KubeVirt version/);
  });
});
