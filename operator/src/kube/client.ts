/**
 * Kubernetes client setup and the few write helpers the controller needs.
 *
 * client-node 2.x: calls take one object parameter and resolve to the body; failures are
 * ApiException with `code` (HTTP status) and `body` (usually the response text, a JSON
 * metav1.Status). Patches on CustomObjectsApi default to JSON Patch: the helpers here send
 * merge patches via setHeaderOptions('Content-Type', PatchStrategy.MergePatch).
 */
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
import { z } from 'zod';

/** Load a kubeconfig file, or the in-cluster service account when `path` is undefined. */
export function loadKubeConfig(path?: string): KubeConfig {
  const kc = new KubeConfig();
  if (path !== undefined) {
    kc.loadFromFile(path);
  } else {
    kc.loadFromCluster();
  }
  if (kc.getCurrentCluster() === null) {
    throw new Error(path !== undefined ? `kubeconfig ${path} has no current cluster` : 'no in-cluster configuration found');
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
  return err instanceof Error ? err.message : String(err);
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
