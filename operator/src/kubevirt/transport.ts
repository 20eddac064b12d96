/**
 * Transport: how the operator reaches libvirt next to a VM, chosen by configuration.
 * - exec (production): `virsh` in the launcher pod's `compute` container through pods/exec,
 *   with the URI chosen from the VMI's runtimeUser.
 * - local (tests, demo): the launcher pod is mapped onto a registered stand-in
 *   (<registryDir>/<namespace>.<pod>.json = { namespace, pod, uri, uid, gid }); virsh runs
 *   locally as the registered uid with the registered URI.
 * Drivers are cached per pod/URI (and per registration content) in a DriverCache, so that the
 * reconciler keeps one event subscription per job; the cache is bounded (launcher pods come and
 * go with every VM restart and migration).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { z } from 'zod';
import { ExecRunner } from './exec-runner.ts';
import { LocalRunner } from '../hypervisor/local-runner.ts';
import type { BlockJobDriver } from '../hypervisor/types.ts';
import { VirshDriver } from '../hypervisor/virsh-driver.ts';
import type { LauncherPod } from './launcher.ts';

/** The launcher cannot be reached by this transport (e.g. no stand-in registered). */
export class LauncherUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LauncherUnavailableError';
  }
}

export interface DriverProvider {
  readonly kind: 'exec' | 'local';
  /** The driver for a launcher pod (the exec transport uses its URI; the local one its registration's). */
  driverFor(launcher: Pick<LauncherPod, 'namespace' | 'pod' | 'container' | 'uri'>): Promise<BlockJobDriver>;
}

/** Default bound of a DriverCache: far more launcher pods than one operator drives at once. */
export const DRIVER_CACHE_SIZE = 1024;

/**
 * Drivers by key, least recently used dropped beyond `max`. Dropping one costs at most a new
 * event subscription (the reconciler resubscribes when the driver of a job changes).
 */
export class DriverCache {
  readonly #max: number;
  readonly #drivers = new Map<string, BlockJobDriver>();
  constructor(max = DRIVER_CACHE_SIZE) {
    this.#max = max;
  }
  get size(): number {
    return this.#drivers.size;
  }
  get(key: string, make: () => BlockJobDriver): BlockJobDriver {
    let d = this.#drivers.get(key);
    if (d === undefined) d = make();
    else this.#drivers.delete(key);
    this.#drivers.set(key, d); // most recently used last
    for (const oldest of this.#drivers.keys()) {
      if (this.#drivers.size <= this.#max) break;
      this.#drivers.delete(oldest);
    }
    return d;
  }
}

/** Options of both transports. */
export interface TransportOptions {
  /** Cap of each output of every command (runner.ts; default DEFAULT_MAX_OUTPUT_BYTES). */
  readonly maxOutputBytes?: number;
}

export class ExecTransport implements DriverProvider {
  readonly kind = 'exec';
  readonly #kc: KubeConfig;
  readonly #drivers = new DriverCache();
  readonly #options: TransportOptions;
  constructor(kc: KubeConfig, options: TransportOptions = {}) {
    this.#kc = kc;
    this.#options = options;
  }
  driverFor(a: Pick<LauncherPod, 'namespace' | 'pod' | 'container' | 'uri'>): Promise<BlockJobDriver> {
    const key = `${a.namespace}/${a.pod}/${a.container}|${a.uri}`;
    return Promise.resolve(
      this.#drivers.get(
        key,
        () =>
          new VirshDriver(
            new ExecRunner({
              kc: this.#kc,
              namespace: a.namespace,
              pod: a.pod,
              container: a.container,
              ...maxOutput(this.#options),
            }),
            a.uri,
          ),
      ),
    );
  }
}

function maxOutput(o: TransportOptions): { maxOutputBytes?: number } {
  return o.maxOutputBytes === undefined ? {} : { maxOutputBytes: o.maxOutputBytes };
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
  readonly #drivers = new DriverCache();
  readonly #options: TransportOptions;
  constructor(registryDir: string, options: TransportOptions = {}) {
    this.#dir = registryDir;
    this.#options = options;
  }
  async driverFor(a: Pick<LauncherPod, 'namespace' | 'pod' | 'container' | 'uri'>): Promise<BlockJobDriver> {
    const file = registrationPath(this.#dir, a.namespace, a.pod);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      throw new LauncherUnavailableError(`pod ${a.namespace}/${a.pod} has no registered launcher stand-in (${file})`);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      // e.g. a registration being written right now: wait like for any other unusable one.
      throw new LauncherUnavailableError(`invalid launcher registration ${file}: ${(err as Error).message}`);
    }
    const parsed = RegistrationSchema.safeParse(json);
    if (!parsed.success)
      throw new LauncherUnavailableError(`invalid launcher registration ${file}: ${parsed.error.message}`);
    const reg = parsed.data;
    if (reg.namespace !== a.namespace || reg.pod !== a.pod) {
      throw new LauncherUnavailableError(`launcher registration ${file} names ${reg.namespace}/${reg.pod}`);
    }
    return this.#drivers.get(JSON.stringify(reg), () => {
      const env: Record<string, string> = {
        PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        HOME: '/tmp',
        LC_ALL: 'C',
        ...reg.env,
      };
      return new VirshDriver(
        new LocalRunner({
          uid: reg.uid,
          gid: reg.gid,
          env,
          description: `local ${reg.namespace}/${reg.pod} uid=${reg.uid}`,
          ...maxOutput(this.#options),
        }),
        reg.uri,
      );
    });
  }
}
