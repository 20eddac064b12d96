/**
 * Act: the policy's decision carried out through the API server: BlockPulls created (with the
 * policy as controller owner), their spec patched (paused, bandwidth, migrationPolicy), deleted
 * (guarded by uid; their finalizer aborts a running job); and the status written. Every write
 * is idempotent: a create answered AlreadyExists, a patch or delete of a BlockPull gone are no
 * errors (the names are deterministic, the next look sees the truth).
 */
import { API_VERSION, BLOCKPULL_REF, KIND } from '../api/types.ts';
import { CLUSTER_POLICY_REF, POLICY_KIND, POLICY_REF, type Policy, type PolicyStatus } from '../api/policy-types.ts';
import {
  describeApiError,
  isAlreadyExists,
  isConflict,
  isNotFound,
  mergePatchClusterCustomObjectStatus,
  mergePatchCustomObject,
  mergePatchCustomObjectStatus,
  withTimeout,
  type KubeClients,
} from '../kube/client.ts';
import type { Logger } from '../log.ts';
import type { PolicyDecision } from './decide.ts';

/** One API call may take this long before it is ended (and the policy looked at again). */
export const WRITE_TIMEOUT_MS = 10_000;

export interface ActResult {
  readonly created: number;
  readonly changed: number;
  readonly removed: number;
  /** Deletions by why (VMIGone, TTLExpired, ...), for the policy's Event. */
  readonly removedWhy: Readonly<Record<string, number>>;
  readonly errors: readonly string[];
}

/** Runs `fn` over `items`, `width` at a time (a fleet's first look creates hundreds of BlockPulls). */
async function eachLimited<T>(items: readonly T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  });
  await Promise.all(lanes);
}

export async function act(
  clients: KubeClients,
  policy: Policy,
  d: PolicyDecision,
  log: Logger,
  width = 8,
): Promise<ActResult> {
  const errors: string[] = [];
  let created = 0;
  let changed = 0;
  let removed = 0;
  const removedWhy: Record<string, number> = {};
  const ownerReferences = [
    {
      apiVersion: API_VERSION,
      kind: policy.kind,
      name: policy.metadata.name,
      uid: policy.metadata.uid,
      controller: true,
      // Foreground deletion of the policy waits for its BlockPulls (and their finalizers' aborts).
      blockOwnerDeletion: true,
    },
  ];
  await eachLimited(d.create, width, async (c) => {
    try {
      await clients.custom.createNamespacedCustomObject(
        {
          ...BLOCKPULL_REF,
          namespace: c.namespace,
          body: {
            apiVersion: API_VERSION,
            kind: KIND,
            metadata: { name: c.name, namespace: c.namespace, labels: c.labels, ownerReferences },
            spec: c.spec,
          },
        },
        withTimeout(WRITE_TIMEOUT_MS),
      );
      created++;
    } catch (err) {
      if (!isAlreadyExists(err)) errors.push(`create ${c.namespace}/${c.name}: ${describeApiError(err)}`);
    }
  });
  await eachLimited(d.change, width, async (c) => {
    try {
      await mergePatchCustomObject(clients, BLOCKPULL_REF, c.namespace, c.name, { spec: c.spec });
      changed++;
    } catch (err) {
      if (!isNotFound(err)) errors.push(`patch ${c.namespace}/${c.name}: ${describeApiError(err)}`);
    }
  });
  await eachLimited(d.remove, width, async (r) => {
    try {
      await clients.custom.deleteNamespacedCustomObject(
        {
          ...BLOCKPULL_REF,
          namespace: r.namespace,
          name: r.name,
          propagationPolicy: 'Background',
          body: { preconditions: { uid: r.uid } },
        },
        withTimeout(WRITE_TIMEOUT_MS),
      );
      removed++;
      removedWhy[r.why] = (removedWhy[r.why] ?? 0) + 1;
      log.info({ blockPull: `${r.namespace}/${r.name}`, why: r.why }, 'deleted a BlockPull of the policy');
    } catch (err) {
      // 409: the uid precondition failed, a new object of that name is not ours to delete.
      if (!isNotFound(err) && !isConflict(err))
        errors.push(`delete ${r.namespace}/${r.name}: ${describeApiError(err)}`);
    }
  });
  return { created, changed, removed, removedWhy, errors };
}

/**
 * The merge patch that makes the status `next`: every field of the last written status that
 * `next` lacks is set to null (a merge patch keeps what it does not name).
 */
export function statusPatch(prev: PolicyStatus | undefined, next: PolicyStatus): Record<string, unknown> {
  const status: Record<string, unknown> = { ...next };
  for (const k of Object.keys(prev ?? {})) if (!(k in next)) status[k] = null;
  return { status };
}

export async function writeStatus(clients: KubeClients, policy: Policy, next: PolicyStatus): Promise<void> {
  const patch = statusPatch(policy.status, next);
  if (policy.kind === POLICY_KIND)
    await mergePatchCustomObjectStatus(
      clients,
      POLICY_REF,
      policy.metadata.namespace ?? '',
      policy.metadata.name,
      patch,
    );
  else await mergePatchClusterCustomObjectStatus(clients, CLUSTER_POLICY_REF, policy.metadata.name, patch);
}
