/**
 * Transport: how the operator reaches libvirt next to a VM, chosen by configuration.
 * - exec (production): `virsh` in the launcher pod's `compute` container through pods/exec,
 *   with the URI chosen from the VMI's runtimeUser.
 * - local (tests, demo): the launcher pod is mapped onto a registered stand-in
 *   (<registryDir>/<namespace>.<pod>.json = { namespace, pod, uri, uid, gid }); virsh runs
 *   locally as the registered uid with the registered URI.
 * Drivers are cached per pod/URI (and per registration content).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { z } from 'zod';
import { ExecRunner } from '../hypervisor/exec-runner.ts';
import { LocalRunner } from '../hypervisor/local-runner.ts';
import type { BlockJobDriver } from '../hypervisor/types.ts';
import { VirshDriver } from '../hypervisor/virsh-driver.ts';

export interface LauncherAddress {
  readonly namespace: string;
  readonly pod: string;
  readonly container: string;
  /** URI from the VMI's runtimeUser (exec transport). */
  readonly uri: string;
}

/** The launcher cannot be reached by this transport (e.g. no stand-in registered). */
export class LauncherUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LauncherUnavailableError';
  }
}

export interface DriverProvider {
  readonly kind: 'exec' | 'local';
  driverFor(address: LauncherAddress): Promise<BlockJobDriver>;
}

export class ExecTransport implements DriverProvider {
  readonly kind = 'exec';
  readonly #kc: KubeConfig;
  readonly #drivers = new Map<string, BlockJobDriver>();
  constructor(kc: KubeConfig) {
    this.#kc = kc;
  }
  driverFor(a: LauncherAddress): Promise<BlockJobDriver> {
    const key = `${a.namespace}/${a.pod}/${a.container}|${a.uri}`;
    let d = this.#drivers.get(key);
    if (d === undefined) {
      d = new VirshDriver(new ExecRunner({ kc: this.#kc, namespace: a.namespace, pod: a.pod, container: a.container }), a.uri);
      this.#drivers.set(key, d);
    }
    return Promise.resolve(d);
  }
}

export const RegistrationSchema = z.object({
  namespace: z.string().min(1),
  pod: z.string().min(1),
  uri: z.string().min(1),
  uid: z.number().int().min(0),
  gid: z.number().int().min(0),
  /** Optional environment for virsh (HOME, XDG_* of the launcher user). */
  env: z.record(z.string(), z.string()).optional(),
});
export type Registration = z.infer<typeof RegistrationSchema>;

export function registrationPath(dir: string, namespace: string, pod: string): string {
  return path.join(dir, `${namespace}.${pod}.json`);
}

export class LocalTransport implements DriverProvider {
  readonly kind = 'local';
  readonly #dir: string;
  readonly #drivers = new Map<string, BlockJobDriver>();
  constructor(registryDir: string) {
    this.#dir = registryDir;
  }
  async driverFor(a: LauncherAddress): Promise<BlockJobDriver> {
    const file = registrationPath(this.#dir, a.namespace, a.pod);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      throw new LauncherUnavailableError(`pod ${a.namespace}/${a.pod} has no registered launcher stand-in (${file})`);
    }
    const parsed = RegistrationSchema.safeParse(JSON.parse(text) as unknown);
    if (!parsed.success) throw new LauncherUnavailableError(`invalid launcher registration ${file}: ${parsed.error.message}`);
    const reg = parsed.data;
    if (reg.namespace !== a.namespace || reg.pod !== a.pod) {
      throw new LauncherUnavailableError(`launcher registration ${file} names ${reg.namespace}/${reg.pod}`);
    }
    const key = JSON.stringify(reg);
    let d = this.#drivers.get(key);
    if (d === undefined) {
      const env: Record<string, string> = {
        PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        HOME: '/tmp',
        LC_ALL: 'C',
        ...reg.env,
      };
      d = new VirshDriver(new LocalRunner({ uid: reg.uid, gid: reg.gid, env, description: `local ${reg.namespace}/${reg.pod} uid=${reg.uid}` }), reg.uri);
      this.#drivers.set(key, d);
    }
    return d;
  }
}
