/**
 * Which of a resource's versions the API server serves (API discovery: GET /apis/<group>/<version>,
 * allowed to every authenticated user by system:discovery). For optional watches: a kind whose CRD
 * is not installed is not watched at all (an informer on it would fail and restart forever).
 */
import type { CustomObjectsApi } from '@kubernetes/client-node';
import { describeApiError, isNotFound, withTimeout, type ResourceRef } from './client.ts';

const DISCOVERY_TIMEOUT_MS = 10_000;

/**
 * The first of `refs` (versions of one resource, preferred first) that the API server serves, or
 * undefined when none is (404: the group/version is not served, or it lacks the resource). Any
 * other error (no answer, 5xx, 403) is retried with backoff until it answers or `signal` aborts
 * (then it rejects): a kind is never taken for absent because the API server was away.
 */
export async function servedResource(
  custom: Pick<CustomObjectsApi, 'getAPIResources'>,
  refs: readonly ResourceRef[],
  signal: AbortSignal,
  options: {
    readonly initialBackoffMs?: number;
    readonly maxBackoffMs?: number;
    readonly onRetry?: (message: string) => void;
  } = {},
): Promise<ResourceRef | undefined> {
  let backoff = options.initialBackoffMs ?? 1_000;
  for (;;) {
    try {
      for (const ref of refs) {
        try {
          const list = await custom.getAPIResources(
            { group: ref.group, version: ref.version },
            withTimeout(DISCOVERY_TIMEOUT_MS),
          );
          if (list.resources.some((r) => r.name === ref.plural)) return ref;
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
      return undefined;
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      options.onRetry?.(describeApiError(err));
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, backoff);
        signal.addEventListener(
          'abort',
          () => {
            clearTimeout(t);
            resolve();
          },
          { once: true },
        );
      });
      if (signal.aborted) throw signal.reason;
      backoff = Math.min(backoff * 2, options.maxBackoffMs ?? 30_000);
    }
  }
}
