/** One way to build a Reconciler, and a Controller, in unit tests: the settings the tests share, overridable. */
import type { KubeConfig } from '@kubernetes/client-node';
import { Controller, type ControllerOptions } from '../../../operator/src/controller/controller.ts';
import { createKubeClients, type KubeClients } from '../../../operator/src/kube/client.ts';
import { createLogger, silentLogger } from '../../../operator/src/log.ts';
import { Reconciler, type ReconcilerOptions } from '../../../operator/src/controller/reconcile.ts';

type CacheReader = ReconcilerOptions['blockPulls'];
type PodCache = ReconcilerOptions['pods'];

/** What a test must say: the API clients, the caches and how a launcher is reached. */
type Required = Pick<ReconcilerOptions, 'clients' | 'blockPulls' | 'vmis' | 'pods' | 'drivers'>;

/** The settings the tests share: a silent logger, a 500 ms poll, a 2 s progress throttle, 4 slots (2 per node). */
export const TEST_RECONCILER_DEFAULTS = {
  logger: createLogger({ level: 'silent' }),
  pollIntervalMs: 500,
  statusUpdateIntervalMs: 2000,
  maxConcurrentPulls: 4,
  maxPullsPerNode: 2,
  enqueue: () => undefined,
} as const satisfies Partial<ReconcilerOptions>;

export function testReconciler(options: Required & Partial<ReconcilerOptions>): Reconciler {
  return new Reconciler({ ...TEST_RECONCILER_DEFAULTS, ...options });
}

/** An informer cache that holds nothing. */
export const EMPTY_CACHE: PodCache = { get: () => undefined, list: () => [], byIndex: () => [] };

/** Caches holding one VMI and its launcher pod (launcherFixture), and no BlockPull. */
export function launcherCaches(
  vmi: Record<string, unknown>,
  pod: Record<string, unknown>,
): { blockPulls: CacheReader; vmis: CacheReader; pods: PodCache } {
  return {
    blockPulls: { get: () => undefined, list: () => [] },
    vmis: { get: () => vmi, list: () => [vmi] },
    pods: { get: () => pod, list: () => [pod], byIndex: () => [pod] },
  };
}

/**
 * A Controller for `kc` with one worker, one slot, a 500 ms poll and a 1 s throttle, silent, with
 * no launcher to reach (the tests are about its informers and wake-ups).
 */
export function testController(kc: KubeConfig, options: Partial<ControllerOptions> = {}): Controller {
  return new Controller({
    clients: createKubeClients(kc),
    drivers: { kind: 'local', driverFor: () => Promise.reject(new Error('no launcher in this test')) },
    logger: silentLogger(),
    workers: 1,
    pollIntervalMs: 500,
    statusUpdateIntervalMs: 1000,
    maxConcurrentPulls: 1,
    maxPullsPerNode: 1,
    ...options,
  });
}

/**
 * A fake API server holding one BlockPull: a GET returns a copy; a status patch (the status
 * writer's JSON patch: the resourceVersion test, then the /status replace) stores the status; a
 * merge patch of the object stores its finalizers; every write bumps the resourceVersion. It checks
 * no resourceVersion: the persisted-intent tests in reconcile.test.ts play the conflicts.
 */
export function oneObjectApi(initial: Record<string, unknown>): {
  readonly clients: KubeClients;
  readonly stored: () => Record<string, unknown>;
  readonly writes: { status: number; finalizers: number };
} {
  let obj = structuredClone(initial);
  let rv = Number((obj['metadata'] as { resourceVersion?: string }).resourceVersion ?? '1');
  const writes = { status: 0, finalizers: 0 };
  const bumped = (change: Record<string, unknown>): Record<string, unknown> => {
    obj = { ...obj, ...change };
    obj['metadata'] = {
      ...(obj['metadata'] as object),
      ...(change['metadata'] as object),
      resourceVersion: String(++rv),
    };
    return structuredClone(obj);
  };
  const clients = {
    custom: {
      getNamespacedCustomObject: () => Promise.resolve(structuredClone(obj)),
      patchNamespacedCustomObjectStatus: ({ body }: { body: { value: unknown }[] }) => {
        writes.status++;
        return Promise.resolve(bumped({ status: body[1]?.value }));
      },
      patchNamespacedCustomObject: ({ body }: { body: { metadata: { finalizers: string[] } } }) => {
        writes.finalizers++;
        return Promise.resolve(bumped({ metadata: { finalizers: body.metadata.finalizers } }));
      },
    },
  } as unknown as KubeClients;
  return { clients, stored: () => obj, writes };
}
