import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BlockJobDriver } from '../hypervisor/types.ts';
import {
  DRIVER_CACHE_SIZE,
  DriverCache,
  ExecTransport,
  LauncherUnavailableError,
  LocalTransport,
  registrationPath,
} from './transport.ts';

const address = (pod: string) => ({ namespace: 'ns', pod, container: 'compute', uri: 'qemu:///system' });
const registration = { namespace: 'ns', pod: 'virt-launcher-vm1-abcde', uri: 'qemu:///session', uid: 1000, gid: 1000 };

describe('LocalTransport', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bp-transport-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a missing registration means the launcher is unavailable', async () => {
    await expect(new LocalTransport(dir).driverFor(address('nope'))).rejects.toBeInstanceOf(LauncherUnavailableError);
  });

  it('a registration that is not JSON (e.g. half written) means the launcher is unavailable (a wait), not a failed reconcile', async () => {
    await writeFile(registrationPath(dir, 'ns', registration.pod), '{"namespace": "ns", "pod');
    const err: unknown = await new LocalTransport(dir).driverFor(address(registration.pod)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LauncherUnavailableError);
    expect((err as Error).message).toMatch(/invalid launcher registration .*virt-launcher-vm1-abcde\.json/);
  });

  it('a registration naming another pod or failing the schema is refused', async () => {
    const t = new LocalTransport(dir);
    await writeFile(registrationPath(dir, 'ns', registration.pod), JSON.stringify({ ...registration, pod: 'other' }));
    await expect(t.driverFor(address(registration.pod))).rejects.toThrow(/names ns\/other/);
    await writeFile(registrationPath(dir, 'ns', registration.pod), JSON.stringify({ ...registration, uid: -1 }));
    await expect(t.driverFor(address(registration.pod))).rejects.toBeInstanceOf(LauncherUnavailableError);
  });

  it('keeps one driver per registration and a new one when the registration changes', async () => {
    const t = new LocalTransport(dir);
    const file = registrationPath(dir, 'ns', registration.pod);
    await writeFile(file, JSON.stringify(registration));
    const a = await t.driverFor(address(registration.pod));
    expect(await t.driverFor(address(registration.pod))).toBe(a);
    await writeFile(file, JSON.stringify({ ...registration, uri: 'qemu:///system' }));
    const b = await t.driverFor(address(registration.pod));
    expect(b).not.toBe(a);
    expect((b as unknown as { uri: string }).uri).toBe('qemu:///system');
  });
});

describe('ExecTransport', () => {
  it('keeps one driver per pod and URI, and does not keep every pod it ever saw', async () => {
    const t = new ExecTransport(new KubeConfig());
    const first = await t.driverFor(address('pod-0'));
    expect(await t.driverFor(address('pod-0'))).toBe(first);
    expect(await t.driverFor({ ...address('pod-0'), uri: 'qemu+unix:///session' })).not.toBe(first);
    for (let i = 1; i <= DRIVER_CACHE_SIZE + 1; i++) await t.driverFor(address(`pod-${i}`));
    expect(await t.driverFor(address('pod-0'))).not.toBe(first);
  });
});

describe('DriverCache', () => {
  const fake = (): BlockJobDriver => ({}) as BlockJobDriver;

  it('drops the least recently used driver beyond its bound', () => {
    const c = new DriverCache(2);
    const a = c.get('a', fake);
    const b = c.get('b', fake);
    expect(c.get('a', fake)).toBe(a); // a is now the most recently used
    c.get('c', fake);
    expect(c.size).toBe(2);
    expect(c.get('a', fake)).toBe(a);
    expect(c.get('b', fake)).not.toBe(b);
  });
});
