/** metav1.Condition helpers: set a condition keeping lastTransitionTime when the status is unchanged. */
import type { ChainReason, Condition, ConditionType, Reason } from './types.ts';

/** A condition to set: a BlockPull's types and reasons by default, a policy's with its own. */
export interface ConditionInput<T extends string = ConditionType, R extends string = Reason | ChainReason> {
  readonly type: T;
  readonly status: 'True' | 'False' | 'Unknown';
  readonly reason: R;
  readonly message: string;
}

export function setCondition<T extends string = ConditionType, R extends string = Reason | ChainReason>(
  conditions: readonly Condition[] | undefined,
  input: ConditionInput<T, R>,
  generation: number | undefined,
  now: Date,
): Condition[] {
  const list = [...(conditions ?? [])];
  const i = list.findIndex((c) => c.type === input.type);
  const old = i >= 0 ? list[i] : undefined;
  const next: Condition = {
    type: input.type,
    status: input.status,
    reason: input.reason,
    // Not cut here: controller/status-limits.ts cuts every message to the CRD's bound, with a marker.
    message: input.message,
    lastTransitionTime:
      old && old.status === input.status ? old.lastTransitionTime : now.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    ...(generation !== undefined ? { observedGeneration: generation } : {}),
  };
  if (i >= 0) list[i] = next;
  else list.push(next);
  return list;
}

export function getCondition(conditions: readonly Condition[] | undefined, type: ConditionType): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

/** Kubernetes timestamps: RFC 3339 with second precision. */
export function timestamp(now: Date): string {
  return now.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
