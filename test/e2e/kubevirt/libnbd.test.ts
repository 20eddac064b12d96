import { describe, expect, it } from 'vitest';
import {
  LIBNBD_CONFIGURE_ARGS,
  LIBNBD_SOURCE,
  libnbdPkgConfig,
  RENAMED_EXPORT,
  renameCallbackExport,
  upstreamVersion,
} from './libnbd.ts';

describe('libnbd from Debian source', () => {
  it('reads the upstream version out of a Debian version', () => {
    expect(upstreamVersion('1.22.2-1')).toBe('1.22.2');
    expect(upstreamVersion('1:1.14.2-1+deb12u1')).toBe('1.14.2');
    expect(upstreamVersion('1.22.2')).toBe('1.22.2');
    expect(() => upstreamVersion('libnbd')).toThrow(/not a Debian version/);
  });
  it('pins a release with 64-bit block status (1.18+), which KubeVirt 1.8 calls', () => {
    const [major = 0, minor = 0] = upstreamVersion(LIBNBD_SOURCE.version).split('.').map(Number);
    expect(major > 1 || (major === 1 && minor >= 18)).toBe(true);
  });
  it('links the static library alone: no shared build, no optional dependency', () => {
    expect(LIBNBD_CONFIGURE_ARGS).toContain('--disable-shared');
    expect(LIBNBD_CONFIGURE_ARGS).toContain('--without-gnutls');
    expect(LIBNBD_CONFIGURE_ARGS).toContain('--without-libxml2');
    const pc = libnbdPkgConfig('/cache/build/libnbd-1.22.2-1', '1.22.2');
    expect(pc).toContain('prefix=/cache/build/libnbd-1.22.2-1\n');
    expect(pc).toContain('Version: 1.22.2\n');
    expect(pc).toMatch(/^Libs: -L\$\{libdir\} -lnbd$/m);
    expect(pc).toMatch(/^Cflags: -I\$\{includedir\}$/m);
  });
});

describe('renameCallbackExport (libvirt-go exports freeCallbackId too)', () => {
  // Shapes from libnbd 1.22's golang/callbacks.go and wrappers.go.
  const callbacks =
    '//export freeCallbackId\nfunc freeCallbackId(goCallbackId int) {\n\tpanic("Callback arrived after freeCallbackId was called")\n}\n';
  const wrappers = '  extern void freeCallbackId (long);\n  freeCallbackId (*p);\n  registerCallbackId (x);\n';
  it('renames the export, the Go function and the C declarations and calls', () => {
    const out = renameCallbackExport(callbacks) + renameCallbackExport(wrappers);
    expect(out).not.toMatch(/\bfreeCallbackId\b/);
    expect(out).toContain(`//export ${RENAMED_EXPORT}\nfunc ${RENAMED_EXPORT}(goCallbackId int)`);
    expect(out).toContain(`extern void ${RENAMED_EXPORT} (long);\n  ${RENAMED_EXPORT} (*p);`);
  });
  it('leaves other identifiers alone', () => {
    expect(renameCallbackExport('registerCallbackId(x); myfreeCallbackIds')).toBe(
      'registerCallbackId(x); myfreeCallbackIds',
    );
  });
});
