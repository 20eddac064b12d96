/** What `wait` (and `start --wait`) concludes from what it sees, and the exit codes (pure). */
import type { BlockPull } from '../../operator/src/api/types.ts';
import { stateOf } from './render.ts';

export const EXIT = {
  /** Done; for wait: the pull is Completed (or its plan, spec.dryRun, is written). */
  ok: 0,
  /** wait: the pull Failed, or was deleted before it completed. */
  failed: 1,
  /** wait, abort: the --timeout passed first. */
  timeout: 2,
  /** Anything else: a usage error, the API server refused or could not be reached. */
  error: 3,
  /** Interrupted (Ctrl-C), as a shell reports SIGINT. */
  interrupted: 130,
} as const;

export type Verdict =
  | { readonly done: false }
  | { readonly done: true; readonly exitCode: (typeof EXIT)['ok'] | (typeof EXIT)['failed']; readonly line: string };

/** `undefined`: the object is gone. */
export function waitVerdict(bp: BlockPull | undefined, key: string): Verdict {
  if (bp === undefined)
    return { done: true, exitCode: EXIT.failed, line: `blockpull ${key} was deleted before it completed` };
  const phase = bp.status?.phase;
  const message = bp.status?.message !== undefined && bp.status.message !== '' ? `: ${bp.status.message}` : '';
  if (phase === 'Completed' || phase === 'Planned')
    return { done: true, exitCode: EXIT.ok, line: `blockpull ${key} ${stateOf(bp)}${message}` };
  if (phase === 'Failed')
    return { done: true, exitCode: EXIT.failed, line: `blockpull ${key} ${stateOf(bp)}${message}` };
  return { done: false };
}

/** The line a timeout ends with: where the pull was. */
export function timeoutLine(bp: BlockPull | undefined, key: string, timeoutMs: number): string {
  const where = bp !== undefined ? `${stateOf(bp)}${bp.status?.message ? `: ${bp.status.message}` : ''}` : 'not found';
  return `timed out after ${timeoutMs / 1000}s waiting for blockpull ${key} (${where})`;
}
