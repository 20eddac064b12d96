/**
 * Which Kubernetes Events a reconcile records, PURE (beside decide.ts; table tests in
 * event-choice.test.ts): from the status before, the decision, its final form (after a failed
 * action: decideActionError's) and whether a running job was adopted just now.
 *
 * - an action taken is announced by its own reason (PullStarted or Retrying, BandwidthChanged,
 *   and for an abort why: the BlockPull was deleted, an invalid bandwidth, a migration, a pause);
 * - a job adopted now is announced once (Adopted; with BandwidthChanged if its bandwidth is set);
 * - otherwise a change of phase or reason is announced by the new reason: a Warning for Failed
 *   and for the reasons in WARNING_REASONS, Normal else; Created and Adopted are not repeated;
 * - a new ChainAtGoal finding on a Completed BlockPull (its VMI moved) by the condition's reason.
 */
import { assertNever } from '../api/assert-never.ts';
import { getCondition } from '../api/conditions.ts';
import { CHAIN_CONDITION, isTerminal, type BlockPullStatus, type Reason } from '../api/types.ts';
import type { EventDelivery, EventType } from '../kube/events.ts';
import type { Decision } from './decide.ts';

export interface ChosenEvent {
  readonly type: EventType;
  readonly reason: string;
  /** The events.k8s.io action: what the operator did (StartPull, Abort, ...) or the phase observed. */
  readonly action: string;
  readonly message: string;
  /**
   * `essential`: the Event of a terminal transition (Completed, Failed, RetryLimitExceeded) or of
   * an abort on delete. Those are the Events a user or an alert looks for after the fact, and at
   * most a few per BlockPull exist, so the recorder never drops them (kube/events.ts); Events of
   * waits and progress are best effort and may be dropped under a burst.
   */
  readonly delivery: EventDelivery;
}

export interface EventInput {
  /** The status the reconcile read. */
  readonly before: BlockPullStatus | undefined;
  /** The BlockPull is being deleted. */
  readonly deleting: boolean;
  readonly decision: Decision;
  /** The decision as written: `decision`, or decideActionError's after the action failed. */
  readonly final: Decision;
  /** A running job this process did not start was announced as adopted just now. */
  readonly adoptedNow: boolean;
}

/** Reasons announced as Warnings when the phase or reason changes to them (and every Failed). */
export const WARNING_REASONS: ReadonlySet<string> = new Set<Reason>([
  'DiskBusy',
  'HypervisorUnreachable',
  'JobFailed',
  'InsufficientSpace',
]);

/** Reasons never announced on a change (Created: nothing happened yet; Adopted: announced on its own). */
const QUIET_REASONS: ReadonlySet<string> = new Set<Reason>(['Created', 'Adopted']);

/** Why an abort was asked, by the decided reason (deletion apart); anything else is a pause. */
const ABORT_EVENT: ReadonlyMap<string, { readonly type: EventType; readonly reason: string }> = new Map<
  Reason,
  { readonly type: EventType; readonly reason: string }
>([
  ['InvalidBandwidth', { type: 'Warning', reason: 'InvalidBandwidth' }],
  ['MigrationInProgress', { type: 'Normal', reason: 'MigrationInProgress' }],
  ['SnapshotInProgress', { type: 'Normal', reason: 'SnapshotInProgress' }],
  ['BackupInProgress', { type: 'Normal', reason: 'BackupInProgress' }],
  ['VolumesChangeInProgress', { type: 'Normal', reason: 'VolumesChangeInProgress' }],
]);

export function chooseEvents(input: EventInput): ChosenEvent[] {
  const essential = isTerminal(input.final.status.phase) && !isTerminal(input.before?.phase);
  return eventsOf(input).map((e) => ({
    ...e,
    delivery: essential || (input.deleting && e.action === 'Abort') ? 'essential' : 'bestEffort',
  }));
}

function eventsOf({ before, deleting, decision, final, adoptedNow }: EventInput): Omit<ChosenEvent, 'delivery'>[] {
  const reason = final.status.reason;
  const message = final.status.message ?? '';
  // A failed action was not taken: only the change it led to is announced.
  const action = final === decision ? decision.action : ({ type: 'none' } as const);
  const bandwidthChanged = (): Omit<ChosenEvent, 'delivery'>[] =>
    action.type === 'setBandwidth'
      ? [
          {
            type: 'Normal',
            reason: 'BandwidthChanged',
            action: 'SetBandwidth',
            message: `bandwidth set to ${action.bandwidth} bytes/s`,
          },
        ]
      : [];
  if (adoptedNow) {
    return [
      {
        type: 'Normal',
        reason: 'Adopted',
        action: 'Adopt',
        message: `this operator process took over a block job it did not start: ${message}`,
      },
      ...bandwidthChanged(),
    ];
  }
  switch (action.type) {
    case 'startPull':
      return [
        { type: 'Normal', reason: reason === 'Retrying' ? 'Retrying' : 'PullStarted', action: 'StartPull', message },
      ];
    case 'setBandwidth':
      return bandwidthChanged();
    case 'abort': {
      if (deleting)
        return [
          { type: 'Normal', reason: 'Aborting', action: 'Abort', message: 'BlockPull deleted: aborting its block job' },
        ];
      const why = ABORT_EVENT.get(reason ?? '') ?? { type: 'Normal', reason: 'Paused' };
      return [{ ...why, action: 'Abort', message }];
    }
    case 'none':
    case 'addFinalizer':
    case 'removeFinalizer':
      // No Event of the action itself: the transition's, below.
      break;
    default:
      assertNever(action);
  }
  const changed = reason !== before?.reason || final.status.phase !== before?.phase;
  // A Completed BlockPull's VMI moved to another launcher pod: said once per new finding.
  const chain = getCondition(final.status.conditions, CHAIN_CONDITION);
  const chainBefore = getCondition(before?.conditions, CHAIN_CONDITION);
  if (
    !changed &&
    chain !== undefined &&
    (chain.status !== chainBefore?.status || chain.message !== chainBefore.message)
  )
    return [{ type: 'Normal', reason: chain.reason, action: final.status.phase ?? 'Observe', message: chain.message }];
  if (!changed || reason === undefined || QUIET_REASONS.has(reason)) return [];
  const warning = final.status.phase === 'Failed' || WARNING_REASONS.has(reason);
  return [{ type: warning ? 'Warning' : 'Normal', reason, action: final.status.phase ?? 'Observe', message }];
}
