/**
 * An informer with a watchdog, over client-node's ListWatch (what makeInformer builds).
 *
 * client-node's informer re-lists on 410 Gone but STOPS FOR GOOD on any other error (a failed
 * list, a watch answered 403/404/500, a connection refused). This wrapper:
 * - restarts it after an error with exponential backoff (initialBackoffMs doubling up to
 *   maxBackoffMs; reset once it is healthy again), counting restarts in
 *   `blockpull_informer_restarts_total{resource}`;
 * - raises an alert (an error log line with `alert: 'InformerStalled'` and the gauge
 *   `blockpull_informer_stalled{resource}` = 1) when it has not been healthy for stallAfterMs;
 * - exposes the cache (get by namespace/name, list), hasSynced() (the first list has been
 *   applied: like client-go, it stays true afterwards), healthy(), and add/update/delete
 *   handlers; `enqueueOnChange(queue)` feeds "namespace/name" keys into a WorkQueue;
 * - optional resync: every resyncPeriodMs the update handlers are called for every cached
 *   object (client-node has no resync of its own).
 *
 * "Healthy" = the last list succeeded and a watch request is open, with no error since.
 *
 * Catching up after an API server outage: while it waits to restart, the watchdog asks the API
 * server's /readyz (public; one cheap GET every probeIntervalMs). Once the API server has been
 * seen down (a probe failed, or the informer's error was a connection failure, a 5xx or a 429)
 * and /readyz answers 200 again, the informer restarts at once instead of at the end of a
 * backoff that grew during the outage (up to maxBackoffMs). An error the API server answers
 * while ready (403, 404: e.g. a CRD deleted) keeps the plain backoff, so no hot loop.
 */
import { objectKey } from '../api/object-key.ts';
import {
  Health,
  ListWatch,
  Watch,
  type CoreV1Api,
  type CustomObjectsApi,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  type V1Namespace,
  type V1Pod,
} from '@kubernetes/client-node';
import type { Logger } from '../log.ts';
import type { ResourceRef } from './client.ts';
import { describeApiError, withTimeout } from './client.ts';

export type ObjectHandler<T> = (obj: T) => void;

/** One page of a list (limit, and the continue token of the page before). */
export interface ListPage {
  readonly limit: number;
  readonly continue?: string;
}

/**
 * Page size of the informers' lists, as client-go's pager (500): the response of one page is held
 * at a time, not that of 10,000 objects (the peak RSS of a restart with 10,000 BlockPulls).
 */
export const LIST_PAGE_SIZE = 500;

export interface InformerSource<T extends KubernetesObject> {
  /** Watch path, e.g. /apis/blockpull.dev/v1alpha1/blockpulls or /api/v1/namespaces/ns/pods. */
  readonly path: string;
  /** Lists the same collection as `path`: one page when `page` is given (a source may ignore it and list all). */
  readonly list: (page?: ListPage) => Promise<KubernetesListObject<T>>;
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
}

export interface InformerMetrics {
  readonly informerRestarts: { inc(labels: { resource: string }): void };
  readonly informerStalled: { set(labels: { resource: string }, v: number): void };
  readonly informerHealthy: { set(labels: { resource: string }, v: number): void };
}

export interface WatchdogInformerOptions<T extends KubernetesObject> {
  readonly kc: KubeConfig;
  readonly source: InformerSource<T>;
  /** Name for logs and metric labels, e.g. "blockpulls". */
  readonly resource: string;
  readonly logger?: Logger;
  readonly metrics?: InformerMetrics;
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** Alert when not healthy for this long. Default 60 s. */
  readonly stallAfterMs?: number;
  /** Call update handlers for every cached object this often; 0/undefined = never. */
  readonly resyncPeriodMs?: number;
  /** While waiting to restart: how often /readyz is asked (default 500 ms). */
  readonly probeIntervalMs?: number;
  /** Is the API server ready? Default: GET /readyz through `kc` (2 s timeout). */
  readonly probe?: () => Promise<boolean>;
  /**
   * Applied to every listed or watched object before it is cached (keep only what the operator
   * reads: the cache of 10,000 VMIs or pods is the operator's memory). Must keep metadata's
   * name, namespace and resourceVersion.
   */
  readonly transform?: (obj: T) => T;
}

/** An index function: the values an object is filed under (e.g. its VMI's "namespace/name"). */
export type IndexFunc<T> = (obj: T) => readonly string[];

/** Drop what no reader of a cache needs: managedFields and kubectl's last-applied copy. */
export function stripMetadata<T extends KubernetesObject>(obj: T): T {
  const md = obj.metadata;
  if (md === undefined) return obj;
  const annotations = md.annotations;
  const { managedFields: _managed, ...rest } = md;
  if (annotations !== undefined && 'kubectl.kubernetes.io/last-applied-configuration' in annotations) {
    const { 'kubectl.kubernetes.io/last-applied-configuration': _applied, ...kept } = annotations;
    rest.annotations = kept;
  }
  return { ...obj, metadata: rest };
}

/** A list's continue token (metadata.continue; client-node's typed lists call it _continue), if more pages follow. */
function continueToken(list: KubernetesListObject<KubernetesObject>): string | undefined {
  const md = list.metadata as { continue?: unknown; _continue?: unknown } | undefined;
  const token = md?.continue ?? md?._continue;
  return typeof token === 'string' && token !== '' ? token : undefined;
}

/** The HTTP status of a list/watch error, if the API server answered at all. */
function httpStatusOf(err: unknown): number | undefined {
  if (err === null || typeof err !== 'object') return undefined;
  const e = err as { statusCode?: unknown; code?: unknown };
  if (typeof e.statusCode === 'number') return e.statusCode;
  if (typeof e.code === 'number') return e.code;
  return undefined;
}

/** An error that says the API server was not (fully) there: no answer, a 5xx, or 429. */
export function isOutageError(err: unknown): boolean {
  const status = httpStatusOf(err);
  return status === undefined || status >= 500 || status === 429;
}

/** GET /readyz with the operator's credentials (allowed to everyone by system:public-info-viewer). */
export function readyzProbe(kc: KubeConfig, timeoutMs = 2_000): () => Promise<boolean> {
  const health = new Health(kc);
  return async () => {
    try {
      return await health.readyz({ signal: AbortSignal.timeout(timeoutMs) });
    } catch {
      return false;
    }
  };
}

export interface InformerHandlers<T> {
  add?: ObjectHandler<T>;
  update?: ObjectHandler<T>;
  delete?: ObjectHandler<T>;
}

export class WatchdogInformer<T extends KubernetesObject> {
  readonly resource: string;
  readonly #options: WatchdogInformerOptions<T>;
  readonly #lw: ListWatch<T>;
  readonly #log: Logger | undefined;
  readonly #initialBackoff: number;
  readonly #maxBackoff: number;
  readonly #stallAfter: number;
  readonly #updateHandlers: ObjectHandler<T>[] = [];
  readonly #recoveredHandlers: (() => void)[] = [];
  /** An error happened since the informer was last healthy. */
  #erredSinceHealthy = false;
  #synced = false;
  #healthy = false;
  #unhealthySince = performance.now();
  #stalled = false;
  #backoff: number;
  #restarts = 0;
  #lastError: string | undefined;
  #started = false;
  #stopped = false;
  #restartTimer: NodeJS.Timeout | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  /** The API server was seen down since the informer was last healthy (see the header). */
  #sawOutage = false;
  readonly #probe: () => Promise<boolean>;
  readonly #probeIntervalMs: number;
  #checkTimer: NodeJS.Timeout | undefined;
  #resyncTimer: NodeJS.Timeout | undefined;
  readonly #syncWaiters: (() => void)[] = [];
  /** Indexes: name -> (value -> keys), and name -> (key -> values) to unfile an object. */
  readonly #indexFns = new Map<string, IndexFunc<T>>();
  readonly #indexes = new Map<string, Map<string, Set<string>>>();
  readonly #indexed = new Map<string, Map<string, readonly string[]>>();

  constructor(options: WatchdogInformerOptions<T>) {
    this.#options = options;
    this.resource = options.resource;
    this.#log = options.logger?.child({ component: 'informer', resource: options.resource });
    this.#initialBackoff = options.initialBackoffMs ?? 1_000;
    this.#maxBackoff = options.maxBackoffMs ?? 30_000;
    this.#stallAfter = options.stallAfterMs ?? 60_000;
    this.#backoff = this.#initialBackoff;
    this.#probe = options.probe ?? readyzProbe(options.kc);
    this.#probeIntervalMs = options.probeIntervalMs ?? 500;

    const real = new Watch(options.kc);
    // Our Watch stand-in: the ListWatch calls watch() only after it has applied a list, so the
    // first call means "synced"; an open watch means healthy. Bookmarks keep quiet watches alive.
    const watch = {
      watch: async (
        path: string,
        params: Record<string, string | number | boolean | undefined>,
        callback: (phase: string, obj: unknown, watchObj?: unknown) => void,
        done: (err: unknown) => void,
      ): Promise<AbortController> => {
        this.#markSynced();
        const transform = options.transform;
        const cb =
          transform === undefined
            ? callback
            : (phase: string, obj: unknown, watchObj?: unknown) =>
                callback(
                  phase,
                  phase === 'ADDED' || phase === 'MODIFIED' || phase === 'DELETED' ? transform(obj as T) : obj,
                  watchObj,
                );
        const controller = await real.watch(path, { ...params, allowWatchBookmarks: true }, cb, done);
        if (!controller.signal.aborted) this.#markHealthy();
        return controller;
      },
    };
    // Listed page by page, each page transformed as it arrives (only one page's raw objects live at
    // a time). The pages are one snapshot: the last one's resourceVersion is the list's.
    const listFn = async (): Promise<KubernetesListObject<T>> => {
      const transform = options.transform ?? ((o: T) => o);
      const items: T[] = [];
      let token: string | undefined;
      let page: KubernetesListObject<T>;
      do {
        try {
          page = await options.source.list({
            limit: LIST_PAGE_SIZE,
            ...(token !== undefined ? { continue: token } : {}),
          });
        } catch (err) {
          // The snapshot expired between two pages (410 Gone): list it whole, as client-go's pager does.
          if (token === undefined || httpStatusOf(err) !== 410) throw err;
          items.length = 0;
          page = await options.source.list();
        }
        for (const o of page.items) items.push(transform(o));
        token = continueToken(page);
      } while (token !== undefined);
      return { ...page, items };
    };
    this.#lw = new ListWatch<T>(
      options.source.path,
      watch as unknown as Watch,
      listFn,
      false,
      options.source.labelSelector,
      options.source.fieldSelector,
    );
    this.#lw.on('error', (err?: unknown) => this.#onError(err));
    // Indexes are kept before any handler runs, so a handler sees them up to date.
    this.#lw.on('add', (obj: T) => this.#fileObject(obj));
    this.#lw.on('delete', (obj: T) => this.#unfileObject(objectKey(obj)));
    this.#lw.on('update', (obj: T) => {
      this.#fileObject(obj);
      for (const h of this.#updateHandlers) h(obj);
    });
  }

  /** Register handlers (before or after start). */
  addEventHandler(handlers: InformerHandlers<T>): void {
    if (handlers.add) this.#lw.on('add', handlers.add);
    if (handlers.update) this.#updateHandlers.push(handlers.update);
    if (handlers.delete) this.#lw.on('delete', handlers.delete);
  }

  /**
   * Keep an index of the cache: `fn` gives the values an object is filed under. Register before
   * start (objects cached earlier are filed now too).
   */
  addIndex(name: string, fn: IndexFunc<T>): void {
    this.#indexFns.set(name, fn);
    this.#indexes.set(name, new Map());
    this.#indexed.set(name, new Map());
    for (const obj of this.#lw.list()) this.#fileObject(obj);
  }

  /** The cached objects filed under `value` in index `name` (no copy of the whole cache). */
  byIndex(name: string, value: string): T[] {
    const keys = this.#indexes.get(name)?.get(value);
    if (keys === undefined) return [];
    const out: T[] = [];
    for (const k of keys) {
      const obj = this.getByKey(k);
      if (obj !== undefined) out.push(obj);
    }
    return out;
  }

  /** The values of index `name` and how many objects each holds. */
  indexValues(name: string): ReadonlyMap<string, ReadonlySet<string>> {
    return this.#indexes.get(name) ?? new Map();
  }

  #fileObject(obj: T): void {
    if (this.#indexFns.size === 0) return;
    const key = objectKey(obj);
    for (const [name, fn] of this.#indexFns) {
      const values = fn(obj);
      const byKey = this.#indexed.get(name)!;
      const old = byKey.get(key);
      if (old !== undefined && old.length === values.length && old.every((v, i) => v === values[i])) continue;
      this.#unfile(name, key);
      const index = this.#indexes.get(name)!;
      for (const v of values) {
        let set = index.get(v);
        if (set === undefined) index.set(v, (set = new Set()));
        set.add(key);
      }
      if (values.length > 0) byKey.set(key, values);
    }
  }

  #unfileObject(key: string): void {
    for (const name of this.#indexFns.keys()) this.#unfile(name, key);
  }

  #unfile(name: string, key: string): void {
    const byKey = this.#indexed.get(name)!;
    const old = byKey.get(key);
    if (old === undefined) return;
    byKey.delete(key);
    const index = this.#indexes.get(name)!;
    for (const v of old) {
      const set = index.get(v);
      set?.delete(key);
      if (set?.size === 0) index.delete(v);
    }
  }

  /** Called each time the informer is healthy again after an error (an outage, a restart). */
  onRecovered(handler: () => void): void {
    this.#recoveredHandlers.push(handler);
  }

  /** Enqueue the object's key on add, update and delete (and on resync). */
  enqueueOnChange(queue: { add(key: string): void }, keyOf: (obj: T) => string | undefined = objectKey): void {
    const h = (obj: T) => {
      const k = keyOf(obj);
      if (k !== undefined && k !== '') queue.add(k);
    };
    this.addEventHandler({ add: h, update: h, delete: h });
  }

  /** Start listing and watching; resolves after the first attempt (success or not). */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    this.#stopped = false;
    this.#options.metrics?.informerHealthy.set({ resource: this.resource }, 0);
    this.#options.metrics?.informerStalled.set({ resource: this.resource }, 0);
    const checkEvery = Math.max(50, Math.min(5_000, Math.floor(this.#stallAfter / 4)));
    this.#checkTimer = setInterval(() => this.#checkStall(), checkEvery);
    if (this.#options.resyncPeriodMs) {
      this.#resyncTimer = setInterval(() => this.#resync(), this.#options.resyncPeriodMs);
    }
    this.#unhealthySince = performance.now();
    this.#log?.info({ path: this.#options.source.path }, 'informer starting');
    await this.#startListWatch();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#started = false;
    clearTimeout(this.#restartTimer);
    this.#restartTimer = undefined;
    clearTimeout(this.#probeTimer);
    this.#probeTimer = undefined;
    clearInterval(this.#checkTimer);
    clearInterval(this.#resyncTimer);
    this.#setHealthy(false);
    await this.#lw.stop();
    for (const w of this.#syncWaiters.splice(0)) w();
  }

  hasSynced(): boolean {
    return this.#synced;
  }

  healthy(): boolean {
    return this.#healthy;
  }

  /** How many times the watchdog restarted the informer. */
  restarts(): number {
    return this.#restarts;
  }

  lastError(): string | undefined {
    return this.#lastError;
  }

  /** Resolves once synced (or when the informer is stopped / the signal aborts). */
  waitForSync(signal?: AbortSignal): Promise<boolean> {
    if (this.#synced) return Promise.resolve(true);
    return new Promise((resolve) => {
      const onAbort = () => resolve(false);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#syncWaiters.push(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve(this.#synced);
      });
    });
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.#lw.get(name, namespace);
  }

  getByKey(key: string): T | undefined {
    const i = key.indexOf('/');
    return i < 0 ? this.#lw.get(key) : this.#lw.get(key.slice(i + 1), key.slice(0, i));
  }

  list(namespace?: string): readonly T[] {
    return this.#lw.list(namespace);
  }

  async #startListWatch(): Promise<void> {
    try {
      await this.#lw.start();
    } catch (err) {
      // ListWatch reports most failures through the error callback; anything thrown is one too.
      this.#onError(err);
    }
  }

  #markSynced(): void {
    if (this.#synced) return;
    this.#synced = true;
    this.#log?.info({ objects: this.#lw.list().length }, 'informer synced');
    for (const w of this.#syncWaiters.splice(0)) w();
  }

  #markHealthy(): void {
    if (this.#stopped) return;
    if (!this.#healthy && this.#stalled) {
      this.#log?.info({ restarts: this.#restarts }, 'informer recovered');
    }
    this.#setHealthy(true);
    this.#backoff = this.#initialBackoff;
    this.#sawOutage = false;
    if (this.#erredSinceHealthy) {
      this.#erredSinceHealthy = false;
      for (const h of this.#recoveredHandlers) h();
    }
    this.#stalled = false;
    this.#options.metrics?.informerStalled.set({ resource: this.resource }, 0);
  }

  #setHealthy(v: boolean): void {
    if (this.#healthy && !v) this.#unhealthySince = performance.now();
    this.#healthy = v;
    this.#options.metrics?.informerHealthy.set({ resource: this.resource }, v ? 1 : 0);
  }

  #onError(err: unknown): void {
    if (this.#stopped) return;
    this.#lastError = describeApiError(err);
    this.#setHealthy(false);
    this.#erredSinceHealthy = true;
    if (isOutageError(err)) this.#sawOutage = true;
    if (this.#restartTimer !== undefined) return; // a restart is already scheduled
    const delay = this.#backoff;
    this.#backoff = Math.min(this.#backoff * 2, this.#maxBackoff);
    this.#log?.warn({ error: this.#lastError, restartInMs: delay }, 'informer stopped on an error; restarting');
    this.#restartTimer = setTimeout(() => this.#restartNow(), delay);
    this.#scheduleProbe();
  }

  #restartNow(): void {
    clearTimeout(this.#restartTimer);
    this.#restartTimer = undefined;
    clearTimeout(this.#probeTimer);
    this.#probeTimer = undefined;
    if (this.#stopped) return;
    this.#restarts += 1;
    this.#options.metrics?.informerRestarts.inc({ resource: this.resource });
    void this.#startListWatch();
  }

  /** While a restart waits: ask /readyz; back from an outage -> restart now, backoff reset. */
  #scheduleProbe(): void {
    if (this.#probeTimer !== undefined || this.#stopped) return;
    this.#probeTimer = setTimeout(() => {
      void this.#probe().then((ready) => {
        this.#probeTimer = undefined;
        if (this.#stopped || this.#restartTimer === undefined) return;
        if (!ready) {
          this.#sawOutage = true;
        } else if (this.#sawOutage) {
          this.#sawOutage = false;
          this.#backoff = this.#initialBackoff;
          this.#log?.info({ error: this.#lastError }, 'API server ready again; restarting the informer now');
          this.#restartNow();
          return;
        }
        this.#scheduleProbe();
      });
    }, this.#probeIntervalMs);
  }

  #checkStall(): void {
    if (this.#stopped || this.#healthy || this.#stalled) return;
    const down = performance.now() - this.#unhealthySince;
    if (down >= this.#stallAfter) {
      this.#stalled = true;
      this.#options.metrics?.informerStalled.set({ resource: this.resource }, 1);
      this.#log?.error(
        { alert: 'InformerStalled', downForMs: Math.round(down), restarts: this.#restarts, error: this.#lastError },
        'informer has not been healthy for longer than the stall threshold',
      );
    }
  }

  #resync(): void {
    if (!this.#synced) return;
    for (const obj of this.#lw.list()) for (const h of this.#updateHandlers) h(obj);
  }
}

// --- sources ------------------------------------------------------------------------------

/** A list that hangs would stall the informer without an error to restart on: bound it. */
export const LIST_TIMEOUT_MS = 60_000;

/** All objects of a custom resource, cluster-wide or in one namespace. */
export function customResourceSource<T extends KubernetesObject>(
  custom: CustomObjectsApi,
  ref: ResourceRef,
  namespace?: string,
): InformerSource<T> {
  const base = `/apis/${ref.group}/${ref.version}`;
  return {
    path: namespace ? `${base}/namespaces/${namespace}/${ref.plural}` : `${base}/${ref.plural}`,
    list: async (page) => {
      const paging =
        page !== undefined
          ? { limit: page.limit, ...(page.continue !== undefined ? { _continue: page.continue } : {}) }
          : {};
      return (
        namespace
          ? await custom.listNamespacedCustomObject({ ...ref, namespace, ...paging }, withTimeout(LIST_TIMEOUT_MS))
          : await custom.listClusterCustomObject({ ...ref, ...paging }, withTimeout(LIST_TIMEOUT_MS))
      ) as KubernetesListObject<T>;
    },
  };
}

/** Pods, cluster-wide or in one namespace, optionally filtered by a label selector. */
export function podSource(core: CoreV1Api, namespace?: string, labelSelector?: string): InformerSource<V1Pod> {
  return {
    path: namespace ? `/api/v1/namespaces/${namespace}/pods` : '/api/v1/pods',
    list: async (page) => {
      const params = {
        ...(labelSelector ? { labelSelector } : {}),
        ...(page !== undefined
          ? { limit: page.limit, ...(page.continue !== undefined ? { _continue: page.continue } : {}) }
          : {}),
      };
      return namespace
        ? await core.listNamespacedPod({ namespace, ...params }, withTimeout(LIST_TIMEOUT_MS))
        : await core.listPodForAllNamespaces(params, withTimeout(LIST_TIMEOUT_MS));
    },
    ...(labelSelector ? { labelSelector } : {}),
  };
}

/** Namespaces (cluster-scoped; read for their labels, e.g. a namespaceSelector). */
export function namespaceSource(core: CoreV1Api): InformerSource<V1Namespace> {
  return {
    path: '/api/v1/namespaces',
    list: async (page) =>
      await core.listNamespace(
        page !== undefined
          ? { limit: page.limit, ...(page.continue !== undefined ? { _continue: page.continue } : {}) }
          : {},
        withTimeout(LIST_TIMEOUT_MS),
      ),
  };
}

/**
 * Starts every informer and waits until all have synced: true once synced, false if the signal
 * aborted first. If one fails to start, the others (and it: it may have set up part of its
 * loop) are stopped and its error is thrown, so that no list/watch or watchdog timer is left
 * running behind a controller that did not start.
 */
export async function startAndSync(
  informers: readonly WatchdogInformer<KubernetesObject>[],
  signal: AbortSignal,
): Promise<boolean> {
  const starts = await Promise.allSettled(informers.map((i) => i.start()));
  const failed = starts.find((r) => r.status === 'rejected');
  if (failed !== undefined) {
    await Promise.allSettled(informers.map((i) => i.stop()));
    throw failed.reason;
  }
  return (await Promise.all(informers.map((i) => i.waitForSync(signal)))).every(Boolean);
}
