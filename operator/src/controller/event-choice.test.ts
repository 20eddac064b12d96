/** Table tests of the pure Event choice: one row per kind of reconcile outcome. */
import { describe, expect, it } from 'vitest';
import type { BlockPullStatus } from '../api/types.ts';
import type { Action, Decision } from './decide.ts';
import { chooseEvents, type EventInput } from './event-choice.ts';

const decision = (status: BlockPullStatus, action: Action = { type: 'none' }): Decision => ({
  status,
  action,
  requeueAfterMs: null,
});
const start: Action = { type: 'startPull', domain: 'ns_vm', target: 'vda', bandwidth: 0 };
const abort: Action = { type: 'abort', domain: 'ns_vm', target: 'vda' };
const speed: Action = { type: 'setBandwidth', domain: 'ns_vm', target: 'vda', bandwidth: 1024 };
const pending: BlockPullStatus = { phase: 'Pending', reason: 'VMINotFound', message: 'no VMI' };

const completed: BlockPullStatus = { phase: 'Completed', reason: 'Completed', message: 'pulled' };
const movedOn = (status: 'True' | 'False' | 'Unknown', message: string): BlockPullStatus => ({
  ...completed,
  message,
  conditions: [
    { type: 'ChainAtGoal', status, reason: 'LauncherChanged', message, lastTransitionTime: '2026-11-27T10:00:00Z' },
  ],
});

const row = (input: Partial<EventInput> & { decision: Decision }): EventInput => ({
  before: pending,
  deleting: false,
  final: input.decision,
  adoptedNow: false,
  ...input,
});

describe('chooseEvents', () => {
  const cases: [string, EventInput, ReturnType<typeof chooseEvents>][] = [
    [
      'start',
      row({ decision: decision({ phase: 'Running', reason: 'Pulling', message: 'started' }, start) }),
      [{ type: 'Normal', reason: 'PullStarted', action: 'StartPull', message: 'started', delivery: 'bestEffort' }],
    ],
    [
      'retry start',
      row({ decision: decision({ phase: 'Running', reason: 'Retrying', message: 'retry 1/3' }, start) }),
      [{ type: 'Normal', reason: 'Retrying', action: 'StartPull', message: 'retry 1/3', delivery: 'bestEffort' }],
    ],
    [
      'start refused: only the change it led to, as a Warning',
      (() => {
        const d = decision({ phase: 'Running', reason: 'Pulling', message: 'started' }, start);
        return row({ decision: d, final: decision({ phase: 'Pending', reason: 'DiskBusy', message: 'busy' }) });
      })(),
      [{ type: 'Warning', reason: 'DiskBusy', action: 'Pending', message: 'busy', delivery: 'bestEffort' }],
    ],
    [
      'bandwidth',
      row({ decision: decision({ phase: 'Running', reason: 'Pulling', message: 'm' }, speed) }),
      [
        {
          type: 'Normal',
          reason: 'BandwidthChanged',
          action: 'SetBandwidth',
          message: 'bandwidth set to 1024 bytes/s',
          delivery: 'bestEffort',
        },
      ],
    ],
    [
      'adopted, with its bandwidth set',
      row({
        decision: decision({ phase: 'Running', reason: 'Adopted', message: 'adopted the running pull' }, speed),
        adoptedNow: true,
      }),
      [
        {
          type: 'Normal',
          reason: 'Adopted',
          action: 'Adopt',
          message: 'this operator process took over a block job it did not start: adopted the running pull',
          delivery: 'bestEffort',
        },
        {
          type: 'Normal',
          reason: 'BandwidthChanged',
          action: 'SetBandwidth',
          message: 'bandwidth set to 1024 bytes/s',
          delivery: 'bestEffort',
        },
      ],
    ],
    [
      'abort on deletion',
      row({ deleting: true, decision: decision({ phase: 'Running', reason: 'Pulling' }, abort) }),
      [
        {
          type: 'Normal',
          reason: 'Aborting',
          action: 'Abort',
          message: 'BlockPull deleted: aborting its block job',
          delivery: 'essential',
        },
      ],
    ],
    [
      'abort for an invalid bandwidth',
      row({ decision: decision({ phase: 'Running', reason: 'InvalidBandwidth', message: 'bad' }, abort) }),
      [{ type: 'Warning', reason: 'InvalidBandwidth', action: 'Abort', message: 'bad', delivery: 'bestEffort' }],
    ],
    [
      'abort to yield to a migration',
      row({ decision: decision({ phase: 'Pending', reason: 'MigrationInProgress', message: 'yielding' }, abort) }),
      [{ type: 'Normal', reason: 'MigrationInProgress', action: 'Abort', message: 'yielding', delivery: 'bestEffort' }],
    ],
    [
      'abort to yield to a KubeVirt snapshot',
      row({ decision: decision({ phase: 'Pending', reason: 'SnapshotInProgress', message: 'yielding' }, abort) }),
      [{ type: 'Normal', reason: 'SnapshotInProgress', action: 'Abort', message: 'yielding', delivery: 'bestEffort' }],
    ],
    [
      'abort to yield to a KubeVirt backup',
      row({ decision: decision({ phase: 'Pending', reason: 'BackupInProgress', message: 'yielding' }, abort) }),
      [{ type: 'Normal', reason: 'BackupInProgress', action: 'Abort', message: 'yielding', delivery: 'bestEffort' }],
    ],
    [
      'abort to yield to a KubeVirt volume migration',
      row({
        decision: decision({ phase: 'Pending', reason: 'VolumesChangeInProgress', message: 'yielding' }, abort),
      }),
      [
        {
          type: 'Normal',
          reason: 'VolumesChangeInProgress',
          action: 'Abort',
          message: 'yielding',
          delivery: 'bestEffort',
        },
      ],
    ],
    [
      'abort to pause',
      row({ decision: decision({ phase: 'Paused', reason: 'Paused', message: 'paused at 5%' }, abort) }),
      [{ type: 'Normal', reason: 'Paused', action: 'Abort', message: 'paused at 5%', delivery: 'bestEffort' }],
    ],
    [
      'a change to Failed is a Warning',
      row({ decision: decision({ phase: 'Failed', reason: 'DiskNotFound', message: 'no disk' }) }),
      [{ type: 'Warning', reason: 'DiskNotFound', action: 'Failed', message: 'no disk', delivery: 'essential' }],
    ],
    [
      'a warning reason',
      row({ decision: decision({ phase: 'Pending', reason: 'InsufficientSpace', message: 'full' }) }),
      [{ type: 'Warning', reason: 'InsufficientSpace', action: 'Pending', message: 'full', delivery: 'bestEffort' }],
    ],
    [
      'a normal change',
      row({ decision: decision({ phase: 'Completed', reason: 'Completed', message: 'pulled' }) }),
      [{ type: 'Normal', reason: 'Completed', action: 'Completed', message: 'pulled', delivery: 'essential' }],
    ],
    [
      'a phase change with the same reason',
      row({
        before: { phase: 'Running', reason: 'Paused' },
        decision: decision({ phase: 'Paused', reason: 'Paused', message: 'p' }),
      }),
      [{ type: 'Normal', reason: 'Paused', action: 'Paused', message: 'p', delivery: 'bestEffort' }],
    ],
    [
      'the retry limit: a terminal transition, never dropped',
      row({
        before: { phase: 'Running', reason: 'Pulling' },
        decision: decision({ phase: 'Failed', reason: 'RetryLimitExceeded', message: 'ended short 4 times' }),
      }),
      [
        {
          type: 'Warning',
          reason: 'RetryLimitExceeded',
          action: 'Failed',
          message: 'ended short 4 times',
          delivery: 'essential',
        },
      ],
    ],
    [
      'deleting a Pending BlockPull: its wait is not essential',
      row({ deleting: true, decision: decision({ phase: 'Pending', reason: 'LauncherNotFound', message: 'no pod' }) }),
      [{ type: 'Normal', reason: 'LauncherNotFound', action: 'Pending', message: 'no pod', delivery: 'bestEffort' }],
    ],
    ['no change', row({ decision: decision(pending) }), []],
    [
      'Created is not announced',
      row({
        before: undefined,
        decision: decision({ phase: 'Pending', reason: 'Created', message: 'c' }, { type: 'addFinalizer' }),
      }),
      [],
    ],
    [
      'Adopted is announced only when adopted now',
      row({ before: undefined, decision: decision({ phase: 'Running', reason: 'Adopted', message: 'a' }) }),
      [],
    ],
    ['no reason', row({ before: undefined, decision: decision({}) }), []],
    [
      'a Completed BlockPull whose VMI moved: LauncherChanged once',
      row({ before: completed, decision: decision(movedOn('False', 'on pod b')) }),
      [{ type: 'Normal', reason: 'LauncherChanged', action: 'Completed', message: 'on pod b', delivery: 'bestEffort' }],
    ],
    [
      'the same finding again: no Event',
      row({ before: movedOn('False', 'on pod b'), decision: decision(movedOn('False', 'on pod b')) }),
      [],
    ],
    [
      'read at last on that pod (Unknown -> False): said again',
      row({ before: movedOn('Unknown', 'not read'), decision: decision(movedOn('False', 'on pod b')) }),
      [{ type: 'Normal', reason: 'LauncherChanged', action: 'Completed', message: 'on pod b', delivery: 'bestEffort' }],
    ],
  ];
  it.each(cases)('%s', (_name, input, expected) => {
    expect(chooseEvents(input)).toEqual(expected);
  });
});
