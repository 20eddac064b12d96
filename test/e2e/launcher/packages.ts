/**
 * Debian packages the hypervisor tests need; installed when missing (idempotent).
 * Files are probed first: when every binary is there, dpkg is not even asked.
 */
import { access, constants } from 'node:fs/promises';
import { ensureDebianPackages } from '../support/debian.ts';

export const HYPERVISOR_PACKAGES = [
  'libvirt-daemon',
  'libvirt-daemon-driver-qemu',
  'libvirt-clients',
  'qemu-system-x86',
  'qemu-utils',
] as const;

/** A binary each package provides: when all exist, nothing is installed. */
const PROBES = [
  '/usr/sbin/libvirtd',
  '/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so',
  '/usr/bin/virsh',
  '/usr/bin/qemu-system-x86_64',
  '/usr/bin/qemu-img',
  '/usr/bin/qemu-io',
];

async function exists(p: string): Promise<boolean> {
  try {
    await access(p, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

let pending: Promise<void> | undefined;

/** Install libvirt, QEMU and qemu-utils from Debian unless already present. */
export function ensureHypervisorPackages(): Promise<void> {
  pending ??= (async () => {
    const present = await Promise.all(PROBES.map(exists));
    if (present.every(Boolean)) return;
    await ensureDebianPackages(HYPERVISOR_PACKAGES);
    const after = await Promise.all(PROBES.map(exists));
    const missing = PROBES.filter((_, i) => !after[i]);
    if (missing.length > 0) throw new Error(`hypervisor packages installed but still missing: ${missing.join(', ')}`);
  })().catch((err: unknown) => {
    pending = undefined;
    throw err;
  });
  return pending;
}
