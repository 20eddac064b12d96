/**
 * The controller: informers (BlockPulls, VMIs, VMI migrations, virt-launcher pods, and where
 * their CRDs are served VirtualMachineSnapshots and VirtualMachineBackups) with watchdogs feed a
 * rate-limited, deduplicating work queue; `workers` loops reconcile one key at a time each
 * (the queue never hands out one key twice at once). Runs until `signal` aborts; running
 * pulls are left alone on shutdown (the next leader adopts them).
 */
import { objectKey } from '../api/object-key.ts';
import type { KubernetesObject } from '@kubernetes/client-node';
import { BLOCKPULL_REF, isTerminal } from '../api/types.ts';
import type { EventRecorder } from '../kube/events.ts';
import type { KubeClients } from '../kube/client.ts';
import type { OperatorMetrics } from '../kube/metrics.ts';
import { errorMessage, forBlockPullKey, type Logger } from '../log.ts';
import { LAUNCHER_LABEL_SELECTOR, VMI_REF, VMIM_REF } from '../kubevirt/launcher.ts';
import { operationVmKey, VMBACKUP_REFS, VMSNAPSHOT_REFS } from '../kubevirt/chain-operations.ts';
import { servedResource } from '../kube/discovery.ts';
import type { ResourceRef } from '../kube/client.ts';
import type { CacheReader } from './blockpulls.ts';
import type { DriverProvider } from '../kubevirt/transport.ts';
import {
  blockPullIndexes,
  BP_BY_PHASE,
  BP_BY_VMI,
  operationIndexes,
  podIndexes,
  POD_BY_VMI_UID,
  slimOperation,
  slimPod,
  slimVmi,
  vmiIndexes,
  VMI_BY_UID,
} from './indexes.ts';
import { customResourceSource, podSource, startAndSync, stripMetadata, WatchdogInformer } from '../kube/informer.ts';
import { Reconciler } from './reconcile.ts';
import { runWorkers, WorkQueue } from '../kube/workqueue.ts';

export interface ControllerOptions {
  readonly clients: KubeClients;
  readonly drivers: DriverProvider;
  readonly logger: Logger;
  readonly metrics?: OperatorMetrics;
  readonly events?: EventRecorder;
  readonly workers: number;
  readonly pollIntervalMs: number;
  readonly statusUpdateIntervalMs: number;
  readonly maxConcurrentPulls: number;
  readonly maxPullsPerNode: number;
  readonly waitRequeueMs?: number;
  /** How long a worker waits for a read-only look at libvirt (BLOCKPULL_OBSERVE_TIMEOUT_MS). */
  readonly observeTimeoutMs?: number;
  /** How long an action (start, bandwidth change, abort) may take before it is ended (BLOCKPULL_ACTION_TIMEOUT_MS). */
  readonly actionTimeoutMs?: number;
  /** Pre-flight margins (BLOCKPULL_SPACE_MARGIN_MIB in bytes, BLOCKPULL_SPACE_MARGIN_PERCENT); default 0. */
  readonly spaceMarginBytes?: number;
  readonly spaceMarginPercent?: number;
  /** Watch only this namespace (undefined: all). */
  readonly namespace?: string;
}

/**
 * An optional watch: a kind of KubeVirt's that not every version has (VirtualMachineSnapshot,
 * VirtualMachineBackup: absent in KubeVirt 1.7). Looked up by API discovery when the controller
 * runs; watched only where served (a kind installed later is watched after a restart).
 */
interface OptionalWatch {
  readonly resource: string;
  readonly refs: readonly ResourceRef[];
  informer?: WatchdogInformer<KubernetesObject>;
  /** Discovery has answered. */
  discovered: boolean;
}

/** A cache reader over an optional watch: empty while it is not watched. */
function optionalReader(w: OptionalWatch): CacheReader & Required<Pick<CacheReader, 'byIndex'>> {
  return {
    get: (ns, name) => w.informer?.get(ns, name),
    list: (ns) => w.informer?.list(ns) ?? [],
    byIndex: (index, value) => w.informer?.byIndex(index, value) ?? [],
  };
}

export class Controller {
  readonly #options: ControllerOptions;
  readonly #log: Logger;
  readonly queue: WorkQueue<string>;
  readonly blockPulls: WatchdogInformer<KubernetesObject>;
  readonly vmis: WatchdogInformer<KubernetesObject>;
  readonly pods: WatchdogInformer<KubernetesObject>;
  readonly migrations: WatchdogInformer<KubernetesObject>;
  readonly reconciler: Reconciler;
  readonly #snapshots: OptionalWatch = {
    resource: 'virtualmachinesnapshots',
    refs: VMSNAPSHOT_REFS,
    discovered: false,
  };
  readonly #backups: OptionalWatch = { resource: 'virtualmachinebackups', refs: VMBACKUP_REFS, discovered: false };

  constructor(options: ControllerOptions) {
    this.#options = options;
    this.#log = options.logger.child({ component: 'controller' });
    const { clients, metrics } = options;
    this.queue = new WorkQueue<string>({
      name: 'blockpull',
      ...(metrics ? { hooks: metrics.workQueueHooks('blockpull') } : {}),
    });
    const common = { kc: clients.kc, logger: options.logger, ...(metrics ? { metrics } : {}) };
    // Caches keep only what is read (10,000 objects each), indexed to avoid scans.
    this.blockPulls = new WatchdogInformer({
      ...common,
      resource: 'blockpulls',
      source: customResourceSource(clients.custom, BLOCKPULL_REF, options.namespace),
      // Cached as the reconciler parses it: one copy per BlockPull (the reconciler exists by the time anything is listed).
      transform: (obj) => this.reconciler.cacheForm(stripMetadata(obj)),
    });
    this.vmis = new WatchdogInformer({
      ...common,
      resource: 'virtualmachineinstances',
      source: customResourceSource(clients.custom, VMI_REF, options.namespace),
      transform: slimVmi,
    });
    this.migrations = new WatchdogInformer({
      ...common,
      resource: 'virtualmachineinstancemigrations',
      source: customResourceSource(clients.custom, VMIM_REF, options.namespace),
    });
    this.pods = new WatchdogInformer({
      ...common,
      resource: 'pods',
      source: podSource(clients.core, options.namespace, LAUNCHER_LABEL_SELECTOR),
      transform: slimPod,
    });
    for (const [name, fn] of Object.entries(blockPullIndexes)) this.blockPulls.addIndex(name, fn);
    for (const [name, fn] of Object.entries(podIndexes)) this.pods.addIndex(name, fn);
    for (const [name, fn] of Object.entries(vmiIndexes)) this.vmis.addIndex(name, fn);
    // blockpull_jobs{phase}: the sizes of the phase index, read at each scrape (no timer, no walk of the cache).
    metrics?.jobsByPhaseFrom(() => {
      const counts: Record<string, number> = {};
      for (const [phase, keys] of this.blockPulls.indexValues(BP_BY_PHASE)) counts[phase] = keys.size;
      return counts;
    });
    this.reconciler = new Reconciler({
      clients,
      blockPulls: this.blockPulls,
      vmis: this.vmis,
      pods: this.pods,
      migrations: this.migrations,
      snapshots: optionalReader(this.#snapshots),
      backups: optionalReader(this.#backups),
      drivers: options.drivers,
      logger: options.logger,
      pollIntervalMs: options.pollIntervalMs,
      statusUpdateIntervalMs: options.statusUpdateIntervalMs,
      maxConcurrentPulls: options.maxConcurrentPulls,
      maxPullsPerNode: options.maxPullsPerNode,
      enqueue: (key) => this.queue.add(key),
      ...(options.waitRequeueMs !== undefined ? { waitRequeueMs: options.waitRequeueMs } : {}),
      ...(options.observeTimeoutMs !== undefined ? { observeTimeoutMs: options.observeTimeoutMs } : {}),
      ...(options.actionTimeoutMs !== undefined ? { actionTimeoutMs: options.actionTimeoutMs } : {}),
      ...(options.spaceMarginBytes !== undefined ? { spaceMarginBytes: options.spaceMarginBytes } : {}),
      ...(options.spaceMarginPercent !== undefined ? { spaceMarginPercent: options.spaceMarginPercent } : {}),
      ...(options.events ? { events: options.events } : {}),
      ...(metrics ? { metrics } : {}),
    });

    this.#wakeOnChanges();
  }

  /**
   * Which BlockPulls a watch event wakes: through the cache indexes, exactly those it concerns.
   */
  #wakeOnChanges(): void {
    // Every change wakes the BlockPull, except our own status write coming back (already requeued).
    const wake = (obj: KubernetesObject): void => {
      const key = objectKey(obj);
      if (key !== '') this.queue.add(key);
    };
    this.blockPulls.addEventHandler({
      add: wake,
      update: (obj) => {
        if (!this.reconciler.isOwnWrite(objectKey(obj), obj.metadata?.resourceVersion)) wake(obj);
      },
      delete: wake,
    });
    // A VMI change wakes the BlockPulls naming it (index, no scan); a launcher pod
    // change, those of the VMIs it claims (by uid: label kubevirt.io/created-by, ownerReferences).
    const wakeVmi = (namespace: string | undefined, name: string | undefined): void => {
      if (name === undefined) return;
      for (const b of this.blockPulls.byIndex(BP_BY_VMI, `${namespace ?? ''}/${name}`)) this.queue.add(objectKey(b));
    };
    const byVmi = (obj: KubernetesObject): void => wakeVmi(obj.metadata?.namespace, obj.metadata?.name);
    this.vmis.addEventHandler({ add: byVmi, update: byVmi, delete: byVmi });
    // A migration wakes the BlockPulls of the VMI it moves (spec.vmiName): a running pull yields at once.
    const byMigration = (obj: KubernetesObject): void => {
      const vmiName = (obj as { spec?: { vmiName?: unknown } }).spec?.vmiName;
      if (typeof vmiName === 'string') wakeVmi(obj.metadata?.namespace, vmiName);
    };
    this.migrations.addEventHandler({ add: byMigration, update: byMigration, delete: byMigration });
    const byPod = (obj: KubernetesObject): void => {
      for (const ref of podIndexes[POD_BY_VMI_UID]!(obj)) {
        for (const vmi of this.vmis.byIndex(VMI_BY_UID, ref)) wakeVmi(vmi.metadata?.namespace, vmi.metadata?.name);
      }
    };
    this.pods.addEventHandler({ add: byPod, update: byPod, delete: byPod });
    // Back from an outage: reconciles that failed meanwhile sit in the work queue's per-item
    // backoff (up to 1000 s), and a watch resumed from its resourceVersion replays only changes.
    // Look at every non-terminal BlockPull again now.
    const lookAgain = (): void => {
      for (const b of this.blockPulls.list()) {
        const phase = (b as { status?: { phase?: string } }).status?.phase;
        if (isTerminal(phase as never)) continue;
        const key = objectKey(b);
        this.queue.forget(key);
        this.queue.add(key);
      }
    };
    this.#lookAgain = lookAgain;
    for (const inf of this.#informers()) inf.onRecovered(lookAgain);
  }

  #lookAgain: (() => void) | undefined;

  /** A snapshot or backup event wakes the BlockPulls of the VM it acts on (the VMI has its name). */
  #wakeOnOperations(inf: WatchdogInformer<KubernetesObject>): void {
    const byVm = (obj: KubernetesObject): void => {
      const vm = operationVmKey(obj);
      if (vm === undefined) return;
      for (const b of this.blockPulls.byIndex(BP_BY_VMI, vm)) this.queue.add(objectKey(b));
    };
    inf.addEventHandler({ add: byVm, update: byVm, delete: byVm });
    if (this.#lookAgain !== undefined) inf.onRecovered(this.#lookAgain);
  }

  /**
   * Which optional kinds the API server serves (API discovery), each informer made for the
   * version served; logged once. Called by run(); the tests call it to drive the informers.
   */
  async discoverWatches(signal: AbortSignal): Promise<void> {
    const { clients, metrics } = this.#options;
    const common = { kc: clients.kc, logger: this.#options.logger, ...(metrics ? { metrics } : {}) };
    if (this.#snapshots.discovered && this.#backups.discovered) return;
    const watched: string[] = [];
    const notWatched: string[] = [];
    for (const w of [this.#snapshots, this.#backups]) {
      if (w.discovered) continue;
      const ref = await servedResource(clients.custom, w.refs, signal, {
        onRetry: (message) =>
          this.#log.warn({ resource: w.resource, error: message }, 'API discovery failed; retrying'),
      });
      w.discovered = true;
      if (ref === undefined) {
        notWatched.push(`${w.resource}.${w.refs[0]?.group ?? ''}`);
        continue;
      }
      watched.push(`${ref.plural}.${ref.group}/${ref.version}`);
      const inf = new WatchdogInformer<KubernetesObject>({
        ...common,
        resource: w.resource,
        source: customResourceSource(clients.custom, ref, this.#options.namespace),
        transform: slimOperation,
      });
      for (const [name, fn] of Object.entries(operationIndexes)) inf.addIndex(name, fn);
      this.#wakeOnOperations(inf);
      w.informer = inf;
    }
    this.#log.info(
      {
        watched: [
          'blockpulls.blockpull.dev',
          'virtualmachineinstances.kubevirt.io',
          'virtualmachineinstancemigrations.kubevirt.io',
          'pods',
          ...watched,
        ],
        notWatched,
      },
      notWatched.length > 0
        ? 'watching; not served by this cluster, so not watched (their operations are not waited for)'
        : 'watching',
    );
  }

  /** The informers of the optional watches, once discovered where served (undefined: not watched). */
  optionalInformers(): {
    readonly snapshots?: WatchdogInformer<KubernetesObject>;
    readonly backups?: WatchdogInformer<KubernetesObject>;
  } {
    return {
      ...(this.#snapshots.informer !== undefined ? { snapshots: this.#snapshots.informer } : {}),
      ...(this.#backups.informer !== undefined ? { backups: this.#backups.informer } : {}),
    };
  }

  #informers(): WatchdogInformer<KubernetesObject>[] {
    const optional = [this.#snapshots.informer, this.#backups.informer].filter(
      (i): i is WatchdogInformer<KubernetesObject> => i !== undefined,
    );
    return [this.blockPulls, this.vmis, this.migrations, this.pods, ...optional];
  }

  synced(): boolean {
    return this.#informers().every((i) => i.hasSynced());
  }

  /** Run until the signal aborts. */
  async run(signal: AbortSignal): Promise<void> {
    try {
      await this.discoverWatches(signal);
    } catch (err) {
      if (!signal.aborted) throw err;
      this.reconciler.stop();
      return;
    }
    const informers = this.#informers();
    let ok: boolean;
    try {
      ok = await startAndSync(informers, signal);
    } catch (err) {
      this.#log.error({ error: errorMessage(err) }, 'an informer failed to start; stopped the others');
      throw err;
    }
    if (ok) {
      this.#log.info({ workers: this.#options.workers }, 'caches synced; starting workers');
      // Everything cached is looked at once after a (re)start: running jobs are adopted.
      for (const b of this.blockPulls.list()) this.queue.add(objectKey(b));
      const metrics = this.#options.metrics;
      await runWorkers(
        this.queue,
        this.#options.workers,
        signal,
        async (key) => (await this.reconciler.reconcile(key)).requeueAfterMs,
        {
          onError: (key, err, worker) => {
            metrics?.reconcileErrors.inc({ reason: err instanceof Error ? err.name : 'Error' });
            forBlockPullKey(this.#log, key)
              .child({ worker })
              .warn({ error: errorMessage(err) }, 'reconcile failed; retrying with backoff');
          },
          onPass: (result, seconds) => {
            metrics?.reconcileTotal.inc({ result });
            metrics?.reconcileDuration.observe({ result }, seconds);
          },
        },
      );
    }
    this.reconciler.stop();
    await Promise.all(informers.map((i) => i.stop()));
    this.#log.info('controller stopped');
  }
}
