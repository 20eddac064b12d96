import { describe, expect, it } from 'vitest';
import { debCacheDir, debootstrapPlan, imageCacheDir } from './rootfs.ts';

const base = {
  target: '/cache/images/.build-x/rootfs',
  hostSuite: 'bookworm',
  mirror: 'http://deb.debian.org/debian',
  packages: ['libvirt-daemon', 'qemu-system-x86'],
};

describe('debootstrapPlan', () => {
  it("the host's suite: one debootstrap with the packages in --include, nothing in the chroot", () => {
    const p = debootstrapPlan({ ...base, suite: 'bookworm', debCache: debCacheDir('bookworm') });
    expect(p.debootstrap).toEqual([
      'debootstrap',
      '--variant=minbase',
      `--cache-dir=${imageCacheDir()}/debs-bookworm`,
      '--include=libvirt-daemon,qemu-system-x86',
      'bookworm',
      base.target,
      base.mirror,
    ]);
    expect(p.chroot).toEqual([]);
  });

  it('another suite: plain minbase debootstrap, then apt-get update and install inside the chroot', () => {
    const p = debootstrapPlan({ ...base, suite: 'trixie', debCache: debCacheDir('trixie') });
    expect(p.debootstrap).toEqual([
      'debootstrap',
      '--variant=minbase',
      `--cache-dir=${imageCacheDir()}/debs-trixie`,
      'trixie',
      base.target,
      base.mirror,
    ]);
    expect(p.debootstrap.some((a) => a.startsWith('--include'))).toBe(false);
    expect(p.chroot).toEqual([
      ['chroot', base.target, 'apt-get', 'update', '-q'],
      [
        'chroot',
        base.target,
        'apt-get',
        'install',
        '-y',
        '-q',
        '--no-install-recommends',
        'libvirt-daemon',
        'qemu-system-x86',
      ],
    ]);
  });

  it('another suite without packages needs no chroot step', () => {
    expect(debootstrapPlan({ ...base, packages: [], suite: 'trixie', debCache: '/c' }).chroot).toEqual([]);
  });
});

describe('debCacheDir', () => {
  it('one directory per suite under the image cache', () => {
    expect(debCacheDir('trixie')).toBe(`${imageCacheDir()}/debs-trixie`);
    expect(debCacheDir('bookworm')).not.toBe(debCacheDir('trixie'));
  });
  it('refuses what is not a suite name (it becomes a path)', () => {
    expect(() => debCacheDir('../debs')).toThrow(/not a Debian suite/);
    expect(() => debCacheDir('')).toThrow(/not a Debian suite/);
  });
});
