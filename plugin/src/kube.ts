/**
 * The plugin's only I/O with Kubernetes: the user's kubeconfig (kubectl's rules: --kubeconfig,
 * else KUBECONFIG, else ~/.kube/config; --context; the context's namespace), and the BlockPull
 * calls: create, get, list, merge-patch the spec, delete, and a watch that keeps a live view; and
 * the disk names of a VMI (plan without --disk).
 * It acts with the user's own credentials; nothing here knows the operator's.
 */
import {
  ApiException,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  Watch,
  setHeaderOptions,
} from '@kubernetes/client-node';
import {
  API_VERSION,
  BLOCKPULL_REF,
  KIND,
  parseBlockPull,
  type BlockPull,
  type BlockPullSpec,
} from '../../operator/src/api/types.ts';
import type { Globals } from './args.ts';
import { z } from 'zod';
import { CliError, describeError } from './errors.ts';

export interface Target {
  /** The namespace of the verb: -n, else the context's, else `default`. */
  readonly namespace: string;
  readonly context: string;
  readonly server: string;
}

export function loadConfig(g: Globals, env: NodeJS.ProcessEnv = process.env): { kc: KubeConfig; target: Target } {
  const kc = new KubeConfig();
  try {
    if (g.kubeconfig !== undefined) kc.loadFromFile(g.kubeconfig);
    else kc.loadFromDefault();
  } catch (err) {
    const from = g.kubeconfig ?? (env['KUBECONFIG'] ? `KUBECONFIG=${env['KUBECONFIG']}` : '~/.kube/config');
    throw new CliError(`cannot load the kubeconfig (${from}): ${err instanceof Error ? err.message : String(err)}`);
  }
  if (g.context !== undefined) {
    if (kc.getContextObject(g.context) === null) {
      const known = kc.getContexts().map((c) => c.name);
      throw new CliError(
        `context ${JSON.stringify(g.context)} not found in the kubeconfig${known.length > 0 ? ` (contexts: ${known.join(', ')})` : ''}`,
      );
    }
    kc.setCurrentContext(g.context);
  }
  const cluster = kc.getCurrentCluster();
  if (cluster === null)
    throw new CliError('no cluster in the kubeconfig: set --kubeconfig, KUBECONFIG or ~/.kube/config, and --context');
  const context = kc.getCurrentContext();
  const namespace = g.namespace ?? kc.getContextObject(context)?.namespace ?? 'default';
  return { kc, target: { namespace, context, server: cluster.server } };
}

/** A BlockPull as parsed, with the object as the API server sent it (for -o json|yaml). */
export interface Seen {
  readonly bp: BlockPull;
  readonly raw: Record<string, unknown>;
}

export type WatchEvent =
  | { readonly type: 'sync'; readonly items: readonly Seen[] }
  | { readonly type: 'upsert'; readonly item: Seen }
  | { readonly type: 'deleted'; readonly key: string };

export interface BlockPulls {
  create(
    namespace: string,
    name: string,
    spec: Partial<BlockPullSpec> & Pick<BlockPullSpec, 'vmiName' | 'disk'>,
  ): Promise<BlockPull>;
  /** undefined when there is no such BlockPull. */
  get(namespace: string, name: string): Promise<Seen | undefined>;
  /** namespace undefined: every namespace. */
  list(namespace: string | undefined): Promise<Seen[]>;
  patchSpec(namespace: string, name: string, spec: Partial<BlockPullSpec>): Promise<BlockPull>;
  delete(namespace: string, name: string): Promise<void>;
  /**
   * Watches BlockPulls (of a namespace or all, one name or all) until `signal` aborts: first a
   * `sync` with every object, then changes. A watch the server ends (or the client's idle timeout)
   * is made again from a fresh list. Rejects only when the API server keeps refusing.
   */
  watch(
    namespace: string | undefined,
    name: string | undefined,
    onEvent: (e: WatchEvent) => void,
    signal: AbortSignal,
  ): Promise<void>;
  /** The names of the VMI's disks (spec.domain.devices.disks), in its order. */
  vmiDisks(namespace: string, vmi: string): Promise<string[]>;
}

/** The VirtualMachineInstance's disks, as far as the plugin reads them. */
const VmiDisksSchema = z.object({
  spec: z
    .object({
      domain: z
        .object({
          devices: z
            .object({
              disks: z
                .array(z.object({ name: z.string() }))
                .max(256)
                .optional(),
            })
            .optional(),
        })
        .optional(),
    })
    .optional(),
});
const VMI_REF = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances' } as const;

const keyOf = (o: { metadata?: { namespace?: string; name?: string } }): string =>
  `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;

function parse(obj: unknown): BlockPull {
  try {
    return parseBlockPull(obj);
  } catch (err) {
    const key = typeof obj === 'object' && obj !== null ? keyOf(obj) : '?';
    throw new CliError(
      `blockpull ${key} does not match this plugin's API version ${API_VERSION}: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`,
      { cause: err },
    );
  }
}

function stripManaged(o: unknown): Record<string, unknown> {
  const obj = { ...(o as Record<string, unknown>) };
  const md = obj['metadata'];
  if (typeof md === 'object' && md !== null) {
    const { managedFields: _m, ...rest } = md as Record<string, unknown>;
    obj['metadata'] = rest;
  }
  return obj;
}

const isNotFound = (err: unknown): boolean => err instanceof ApiException && err.code === 404;

export function blockPulls(kc: KubeConfig): BlockPulls {
  const api = kc.makeApiClient(CustomObjectsApi);
  const ref = BLOCKPULL_REF;
  const listRaw = async (
    namespace: string | undefined,
    name?: string,
  ): Promise<{ items: Record<string, unknown>[]; resourceVersion: string }> => {
    const fieldSelector = name !== undefined ? `metadata.name=${name}` : undefined;
    const r = (
      namespace !== undefined
        ? await api.listNamespacedCustomObject({
            ...ref,
            namespace,
            ...(fieldSelector !== undefined ? { fieldSelector } : {}),
          })
        : await api.listClusterCustomObject({ ...ref, ...(fieldSelector !== undefined ? { fieldSelector } : {}) })
    ) as { items?: unknown[]; metadata?: { resourceVersion?: string } };
    return { items: (r.items ?? []).map(stripManaged), resourceVersion: r.metadata?.resourceVersion ?? '' };
  };
  const self: BlockPulls = {
    async create(namespace, name, spec) {
      const body = { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace }, spec };
      return parse(await api.createNamespacedCustomObject({ ...ref, namespace, body }));
    },
    async get(namespace, name) {
      try {
        const raw = stripManaged(await api.getNamespacedCustomObject({ ...ref, namespace, name }));
        return { bp: parse(raw), raw };
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
    async list(namespace) {
      return (await listRaw(namespace)).items.map((raw) => ({ bp: parse(raw), raw }));
    },
    async patchSpec(namespace, name, spec) {
      const options = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
      return parse(await api.patchNamespacedCustomObject({ ...ref, namespace, name, body: { spec } }, options));
    },
    async vmiDisks(namespace, vmi) {
      let raw: unknown;
      try {
        raw = await api.getNamespacedCustomObject({ ...VMI_REF, namespace, name: vmi });
      } catch (err) {
        if (isNotFound(err)) throw new CliError(`virtualmachineinstance ${namespace}/${vmi} not found`, { cause: err });
        if (err instanceof ApiException && err.code === 403) {
          throw new CliError(
            `cannot read virtualmachineinstance ${namespace}/${vmi} to list its disks (forbidden): name the disk with --disk`,
            { cause: err },
          );
        }
        throw err;
      }
      const parsed = VmiDisksSchema.safeParse(raw);
      if (!parsed.success) throw new CliError(`virtualmachineinstance ${namespace}/${vmi} has no readable disk list`);
      return (parsed.data.spec?.domain?.devices?.disks ?? []).map((d) => d.name);
    },
    async delete(namespace, name) {
      await api.deleteNamespacedCustomObject({ ...ref, namespace, name, propagationPolicy: 'Background' });
    },
    async watch(namespace, name, onEvent, signal) {
      const watcher = new Watch(kc);
      const path =
        namespace !== undefined
          ? `/apis/${ref.group}/${ref.version}/namespaces/${namespace}/${ref.plural}`
          : `/apis/${ref.group}/${ref.version}/${ref.plural}`;
      let failures = 0;
      let listedOnce = false;
      while (!signal.aborted) {
        let list: { items: Record<string, unknown>[]; resourceVersion: string };
        try {
          list = await listRaw(namespace, name);
          failures = 0;
        } catch (err) {
          // The first list's error is the user's to see; later ones (a restart) are retried a few times.
          if (++failures > 5 || !listedOnce) throw err;
          await pause(1000 * failures, signal);
          continue;
        }
        listedOnce = true;
        onEvent({ type: 'sync', items: list.items.map((raw) => ({ bp: parse(raw), raw })) });
        const query = {
          resourceVersion: list.resourceVersion,
          allowWatchBookmarks: true,
          ...(name !== undefined ? { fieldSelector: `metadata.name=${name}` } : {}),
        };
        const started = Date.now();
        await watchOnce(watcher, path, query, onEvent, signal);
        // A watch that ends at once (the server closing it early, a network blip) is not made again in a tight loop.
        if (Date.now() - started < 1000) await pause(1000, signal);
      }
    },
  };
  return self;
}

/**
 * One watch request, until the server or the idle timeout ends it, or `signal` aborts. An object
 * that does not parse ends the whole watch with that error (client-node would swallow it).
 */
async function watchOnce(
  watcher: Watch,
  path: string,
  query: Record<string, string | boolean>,
  onEvent: (e: WatchEvent) => void,
  signal: AbortSignal,
): Promise<void> {
  let failure: unknown;
  let controller: AbortController | undefined;
  let onAbort: (() => void) | undefined;
  await new Promise<void>((resolve) => {
    onAbort = () => {
      controller?.abort();
      resolve();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    const onWatchEvent = (type: string, obj: unknown): void => {
      if (failure !== undefined) return;
      try {
        if (type === 'ADDED' || type === 'MODIFIED') {
          const raw = stripManaged(obj);
          onEvent({ type: 'upsert', item: { bp: parse(raw), raw } });
        } else if (type === 'DELETED')
          onEvent({ type: 'deleted', key: keyOf(obj as { metadata?: { namespace?: string; name?: string } }) });
        // ERROR (e.g. 410 Gone) and BOOKMARK: the watch ends or goes on; a fresh list follows its end.
      } catch (err) {
        failure = err;
        controller?.abort();
        resolve();
      }
    };
    const onDone = (err: unknown): void => {
      // The API server refused the watch itself (e.g. 403: list allowed, watch not): nothing to retry.
      const code = typeof err === 'object' && err !== null ? (err as { statusCode?: unknown }).statusCode : undefined;
      if (typeof code === 'number' && code >= 400 && code < 500) {
        failure = new CliError(
          `the API server refused to watch ${path} (HTTP ${code}: ${err instanceof Error ? err.message : ''})`,
        );
      }
      resolve();
    };
    watcher
      .watch(path, query, onWatchEvent, onDone)
      .then((c) => {
        controller = c;
        if (signal.aborted || failure !== undefined) c.abort();
      })
      .catch(() => resolve());
  });
  if (onAbort !== undefined) signal.removeEventListener('abort', onAbort);
  if (failure !== undefined) throw failure instanceof Error ? failure : new CliError(describeError(failure));
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
