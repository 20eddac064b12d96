/**
 * Debian packages the hypervisor tests need; installed when missing (idempotent).
 * `apt-get update` runs only when the install fails (stale or empty package lists).
 */
import { execFile } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export const HYPERVISOR_PACKAGES = ['libvirt-daemon', 'libvirt-daemon-driver-qemu', 'libvirt-clients', 'qemu-system-x86', 'qemu-utils'] as const;

/** A binary each package provides: when all exist, nothing is installed. */
const PROBES = ['/usr/sbin/libvirtd', '/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so', '/usr/bin/virsh', '/usr/bin/qemu-system-x86_64', '/usr/bin/qemu-img', '/usr/bin/qemu-io'];

async function exists(p: string): Promise<boolean> {
  try {
    await access(p, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

async function apt(args: readonly string[]): Promise<void> {
  await execFileP('apt-get', ['-o', 'DPkg::Lock::Timeout=600', ...args], {
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    maxBuffer: 64 * 1024 * 1024,
  });
}

let pending: Promise<void> | undefined;

/** Install libvirt, QEMU and qemu-utils from Debian unless already present. */
export function ensureHypervisorPackages(): Promise<void> {
  pending ??= (async () => {
    const present = await Promise.all(PROBES.map(exists));
    if (present.every(Boolean)) return;
    const install = ['install', '-y', '--no-install-recommends', ...HYPERVISOR_PACKAGES];
    try {
      await apt(install);
    } catch {
      await apt(['update']);
      await apt(install);
    }
    const after = await Promise.all(PROBES.map(exists));
    const missing = PROBES.filter((_, i) => !after[i]);
    if (missing.length > 0) throw new Error(`hypervisor packages installed but still missing: ${missing.join(', ')}`);
  })().catch((err: unknown) => {
    pending = undefined;
    throw err;
  });
  return pending;
}
