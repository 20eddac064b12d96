/**
 * Kubernetes client setup and the few write helpers the controller needs.
 *
 * client-node 2.x: calls take one object parameter and resolve to the body; failures are
 * ApiException with `code` (HTTP status) and `body` (usually the response text, a JSON
 * metav1.Status). Patches on CustomObjectsApi default to JSON Patch: the helpers here send
 * merge patches via setHeaderOptions('Content-Type', PatchStrategy.MergePatch).
 */
import https from 'node:https';
import {
  ApiException,
  Observable,
  type ConfigurationOptions,
  type ObservableMiddleware,
  type RequestContext,
  type ResponseContext,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  EventsV1Api,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { Agent, ProxyAgent, type Dispatcher } from 'undici';
import { z } from 'zod';
import { errorMessage } from '../log.ts';

// --- the fence -----------------------------------------------------------------------------

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
let fenced = false;

/** A mutating request refused because this process lost its leadership. */
export class FencedError extends Error {
  constructor(method: string, url: string) {
    super(`refused ${method} ${url}: this process lost its leader lease`);
    this.name = 'FencedError';
  }
}

/**
 * Refuse every mutating request of the process from now on. Called when the leader lease is
 * lost: the process exits at once, but a write queued before the exit must not reach the API
 * server, where a new leader may already be writing the truth. There is no way back.
 */
export function fenceWrites(): void {
  fenced = true;
}

export function writesFenced(): boolean {
  return fenced;
}

// --- one connection pool ------------------------------------------------------------------

/**
 * How long an idle keep-alive connection is kept. Below the API server's own idle timeout
 * (Go net/http IdleTimeout, 90 s in k8s.io/apiserver's secure serving), so the client, not the
 * server, closes idle connections and a request never races a server-side close.
 */
export const KEEP_ALIVE_TIMEOUT_MS = 30_000;

interface Pool {
  /** TLS material and settings the pool's connections were made with (compared on every request). */
  readonly material: readonly unknown[];
  readonly dispatcher: Dispatcher;
}

/** The process's pools: one per API server, proxy and user (in practice: one). */
const pools = new Map<string, Pool>();

function sameMaterial(a: readonly unknown[], b: readonly unknown[]): boolean {
  return (
    a.length === b.length &&
    a.every((x, i) => (Buffer.isBuffer(x) && Buffer.isBuffer(b[i]) ? x.equals(b[i]) : x === b[i]))
  );
}

/**
 * A KubeConfig whose API calls share one keep-alive connection pool (undici Agent) for the
 * whole process.
 *
 * client-node 2.0.x (KubeConfig.applySecurityAuthentication -> createDispatcher) builds a new
 * undici Agent for every request: every call pays a TCP + TLS handshake and leaves its socket
 * open until that Agent's keep-alive timer closes it (docs/upstream-client-node-agent-per-request.md).
 * This override keeps client-node's per-request authentication (tokens, exec plugins, the
 * in-cluster token file, impersonation, basic auth: everything applyToHTTPSOptions does) and
 * hands every request the same Agent. Informer watches and log/metrics calls go through the same
 * method, so they share the pool (a watch holds one connection while it is open, as HTTP/1.1
 * requires). Exec (WebSocket) keeps client-node's own cached https.Agent.
 *
 * The CA, client certificate and key are still read where client-node reads them (files per
 * request); when their content changes (rotation), a new pool is made and the old one is closed
 * once its requests (and watches) are done. A socks proxy keeps client-node's own path.
 */
export class PooledKubeConfig extends KubeConfig {
  override async applySecurityAuthentication(context: RequestContext): Promise<void> {
    if (fenced && MUTATING.has(String(context.getHttpMethod()).toUpperCase()))
      throw new FencedError(String(context.getHttpMethod()), context.getUrl());
    const cluster = this.getCurrentCluster();
    if (cluster?.proxyUrl?.startsWith('socks') === true) return super.applySecurityAuthentication(context);
    const opts: https.RequestOptions = {};
    await this.applyToHTTPSOptions(opts);
    if (typeof opts.auth === 'string')
      context.setHeaderParam('Authorization', `Basic ${Buffer.from(opts.auth).toString('base64')}`);
    for (const [k, v] of Object.entries(opts.headers ?? {}))
      if (v !== undefined) context.setHeaderParam(k, Array.isArray(v) ? v.join(', ') : String(v));
    const agentOptions: https.AgentOptions = {
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      ...(opts.cert !== undefined ? { cert: opts.cert } : {}),
      ...(opts.key !== undefined ? { key: opts.key } : {}),
      ...(opts.pfx !== undefined ? { pfx: opts.pfx } : {}),
      ...(opts.passphrase !== undefined ? { passphrase: opts.passphrase } : {}),
      ...(opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: opts.rejectUnauthorized } : {}),
      ...(opts.servername !== undefined ? { servername: opts.servername } : {}),
    };
    const dispatcher = pooledDispatcher(this, cluster, agentOptions);
    if (dispatcher !== undefined) context.setDispatcher(dispatcher);
  }
}

function pooledDispatcher(
  kc: KubeConfig,
  cluster: ReturnType<KubeConfig['getCurrentCluster']>,
  agentOptions: https.AgentOptions,
): Dispatcher | undefined {
  const o = kc.createDispatcherOptions(cluster, agentOptions);
  if (o.type === 'none' || o.type === 'socks') return undefined; // 'none': undici's global pool; 'socks' is not reached (see above)
  const key = JSON.stringify([cluster?.server ?? '', cluster?.proxyUrl ?? '', kc.getCurrentUser()?.name ?? '']);
  const a = agentOptions;
  const material = [a.ca, a.cert, a.key, a.pfx, a.passphrase, a.rejectUnauthorized, a.servername].map((x) =>
    typeof x === 'string' ? Buffer.from(x) : x,
  );
  const existing = pools.get(key);
  if (existing !== undefined && sameMaterial(existing.material, material)) return existing.dispatcher;
  const pool = { keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS, keepAliveMaxTimeout: KEEP_ALIVE_TIMEOUT_MS };
  const dispatcher: Dispatcher =
    o.type === 'proxy'
      ? new ProxyAgent({ ...pool, uri: o.uri, requestTls: o.requestTls, connect: o.connect })
      : new Agent({ ...pool, connect: o.connect });
  pools.set(key, { material, dispatcher });
  // Rotated credentials: the old pool finishes its requests (watches included), then closes.
  if (existing !== undefined) existing.dispatcher.close().catch(() => undefined);
  return dispatcher;
}

/** Load a kubeconfig file, or the in-cluster service account when `path` is undefined. */
export function loadKubeConfig(path?: string): KubeConfig {
  const kc = new PooledKubeConfig();
  if (path !== undefined) {
    kc.loadFromFile(path);
  } else {
    kc.loadFromCluster();
  }
  if (kc.getCurrentCluster() === null) {
    throw new Error(
      path !== undefined ? `kubeconfig ${path} has no current cluster` : 'no in-cluster configuration found',
    );
  }
  return kc;
}

export interface KubeClients {
  readonly kc: KubeConfig;
  readonly core: CoreV1Api;
  readonly coordination: CoordinationV1Api;
  readonly events: EventsV1Api;
  readonly custom: CustomObjectsApi;
}

export function createKubeClients(kc: KubeConfig): KubeClients {
  return {
    kc,
    core: kc.makeApiClient(CoreV1Api),
    coordination: kc.makeApiClient(CoordinationV1Api),
    events: kc.makeApiClient(EventsV1Api),
    custom: kc.makeApiClient(CustomObjectsApi),
  };
}

/** group/version/plural of a custom resource. */
export interface ResourceRef {
  readonly group: string;
  readonly version: string;
  readonly plural: string;
}

/**
 * Per-call options that abort the HTTP request when `signal` aborts (e.g. AbortSignal.timeout(ms)):
 * client-node calls have no deadline of their own, and a request to an unreachable API server
 * can hang for minutes. Pass as the second argument of any API call.
 */
export function withSignal(signal: AbortSignal, options?: ConfigurationOptions): ConfigurationOptions {
  // The object-parameter API runs Observable middleware (client-node's rxjs stub), like setHeaderOptions.
  const middleware: ObservableMiddleware = {
    pre: (ctx: RequestContext) => {
      ctx.setSignal(signal);
      return new Observable(Promise.resolve(ctx));
    },
    post: (rsp: ResponseContext) => new Observable(Promise.resolve(rsp)),
  };
  return { ...options, middleware: [...(options?.middleware ?? []), middleware], middlewareMergeStrategy: 'append' };
}

/** withSignal(AbortSignal.timeout(ms)). */
export function withTimeout(ms: number, options?: ConfigurationOptions): ConfigurationOptions {
  return withSignal(AbortSignal.timeout(Math.max(1, Math.ceil(ms))), options);
}

// --- errors -------------------------------------------------------------------------------

const statusBody = z.looseObject({
  kind: z.literal('Status').optional(),
  message: z.string().optional(),
  reason: z.string().optional(),
  code: z.number().optional(),
});

/** HTTP status of an ApiException (or anything with a numeric `code`), else undefined. */
export function apiErrorCode(err: unknown): number | undefined {
  if (err instanceof ApiException) return err.code;
  if (typeof err === 'object' && err !== null) {
    const c = (err as { code?: unknown; statusCode?: unknown }).code ?? (err as { statusCode?: unknown }).statusCode;
    if (typeof c === 'number') return c;
  }
  return undefined;
}

export function isApiError(err: unknown, code?: number): boolean {
  const c = apiErrorCode(err);
  return c !== undefined && (code === undefined || c === code);
}

export const isNotFound = (err: unknown): boolean => isApiError(err, 404);
export const isConflict = (err: unknown): boolean => isApiError(err, 409);
export const isAlreadyExists = (err: unknown): boolean => isApiError(err, 409);

/** The metav1.Status of an ApiException's body, parsed; undefined if it is not one. */
export function apiErrorStatus(err: unknown): z.infer<typeof statusBody> | undefined {
  if (!(err instanceof ApiException)) return undefined;
  let body: unknown = err.body;
  if (typeof body === 'string') {
    try {
      body = JSON.parse(body);
    } catch {
      return undefined;
    }
  }
  const r = statusBody.safeParse(body);
  return r.success ? r.data : undefined;
}

/** A short, human message for logs and status: "409 Conflict: the object has been modified". */
export function describeApiError(err: unknown): string {
  if (err instanceof ApiException) {
    const st = apiErrorStatus(err);
    const detail = st?.message ?? (typeof err.body === 'string' ? err.body.slice(0, 300) : '');
    return `HTTP ${err.code}${st?.reason ? ` ${st.reason}` : ''}${detail ? `: ${detail}` : ''}`;
  }
  return errorMessage(err);
}

// --- custom objects -----------------------------------------------------------------------

const mergePatchOptions = () => setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** GET a namespaced custom object; undefined when it does not exist. */
export async function getCustomObject(
  clients: KubeClients,
  ref: ResourceRef,
  namespace: string,
  name: string,
): Promise<unknown> {
  try {
    return (await clients.custom.getNamespacedCustomObject({ ...ref, namespace, name })) as unknown;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/**
 * JSON merge patch (RFC 7386) of a custom object: its main resource (metadata, spec), or with
 * `subresource: 'status'` its status subresource (`patch` is `{ status: {...} }`). Null values
 * delete fields; arrays are replaced whole. Include `metadata.resourceVersion` in the patch for
 * optimistic concurrency (409 on conflict).
 */
export async function mergePatchCustomObject(
  clients: KubeClients,
  ref: ResourceRef,
  namespace: string,
  name: string,
  patch: Record<string, unknown>,
  subresource: 'main' | 'status' = 'main',
): Promise<unknown> {
  const request = { ...ref, namespace, name, body: patch };
  const response: unknown =
    subresource === 'status'
      ? await clients.custom.patchNamespacedCustomObjectStatus(request, mergePatchOptions())
      : await clients.custom.patchNamespacedCustomObject(request, mergePatchOptions());
  return response;
}

/** mergePatchCustomObject through the status subresource. */
export function mergePatchCustomObjectStatus(
  clients: KubeClients,
  ref: ResourceRef,
  namespace: string,
  name: string,
  patch: Record<string, unknown>,
): Promise<unknown> {
  return mergePatchCustomObject(clients, ref, namespace, name, patch, 'status');
}

/** JSON merge patch of a cluster-scoped custom object's status subresource (`patch` is `{ status: {...} }`). */
export async function mergePatchClusterCustomObjectStatus(
  clients: KubeClients,
  ref: ResourceRef,
  name: string,
  patch: Record<string, unknown>,
): Promise<unknown> {
  const response: unknown = await clients.custom.patchClusterCustomObjectStatus(
    { ...ref, name, body: patch },
    mergePatchOptions(),
  );
  return response;
}

/**
 * Replace the finalizers list with a merge patch guarded by resourceVersion, so a concurrent
 * change (e.g. another finalizer added) yields 409 instead of being overwritten.
 */
export async function setFinalizers(
  clients: KubeClients,
  ref: ResourceRef,
  namespace: string,
  name: string,
  resourceVersion: string,
  finalizers: readonly string[],
): Promise<unknown> {
  return mergePatchCustomObject(clients, ref, namespace, name, {
    metadata: { resourceVersion, finalizers: [...finalizers] },
  });
}
