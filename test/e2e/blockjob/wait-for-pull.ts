/**
 * Wait for a pull to complete through a BlockJobDriver, outside the operator (the operator never
 * waits: it reconciles, decide.ts with isPullComplete). Used by the hypervisor specs and
 * `npm run bench:hypervisor`: events wake the loop early, polling is the fallback, and every
 * wake-up re-reads the job and the chain (completion = isPullComplete, never cur == end).
 */
import { isPullComplete, type PullGoal } from '../../../operator/src/hypervisor/completion.ts';
import { HypervisorError, isHypervisorError } from '../../../operator/src/hypervisor/errors.ts';
import type {
  BlockJobDriver,
  BlockJobEventKind,
  BlockJobInfo,
  DiskInfo,
} from '../../../operator/src/hypervisor/types.ts';

export interface WaitOptions {
  readonly signal?: AbortSignal;
  /** Poll interval; Nova polls every 0.5 s. */
  readonly pollIntervalMs?: number;
  /** Give up after this long (default: no limit). */
  readonly timeoutMs?: number;
  /** How long libvirt may stay unreachable (daemon restart) before the wait fails. Default 120 s. */
  readonly unreachableGraceMs?: number;
  /** Called with every job observation while the job runs. */
  readonly onProgress?: (job: BlockJobInfo) => void;
  /** Use the driver's event stream to wake up early (default true); polling runs regardless. */
  readonly useEvents?: boolean;
}

export interface PullResult {
  readonly disk: DiskInfo;
  /** The last job observation before it disappeared (undefined if it was never seen running). */
  readonly lastJob?: BlockJobInfo;
  /** Events that woke the waiter (for diagnostics and tests). */
  readonly eventsSeen: number;
}

export class WaitTimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WaitTimeoutError';
  }
}

/**
 * Wait until the pull on goal.target is complete; events wake the loop early, polling is the
 * fallback (and the only source of truth: every wake-up re-reads the job and the chain).
 * Rejects with HypervisorError JobCanceled / JobFailed when the job disappears short of the goal.
 */
export async function waitForPullCompletion(
  driver: BlockJobDriver,
  domain: string,
  goal: PullGoal,
  options: WaitOptions = {},
): Promise<PullResult> {
  const pollMs = options.pollIntervalMs ?? 500;
  const graceMs = options.unreachableGraceMs ?? 120_000;
  const started = Date.now();
  let wake: (() => void) | undefined;
  let lastEvent: BlockJobEventKind | undefined;
  let eventsSeen = 0;
  const sub =
    options.useEvents === false
      ? undefined
      : driver.watchEvents(domain, (ev) => {
          if (ev.target !== goal.target) return;
          eventsSeen++;
          lastEvent = ev.kind;
          wake?.();
        });
  const onAbort = (): void => wake?.();
  options.signal?.addEventListener('abort', onAbort);
  let lastJob: BlockJobInfo | undefined;
  let unreachableSince: number | undefined;
  let goneShortOfGoal = 0;
  try {
    for (;;) {
      if (options.signal?.aborted) throw options.signal.reason;
      if (options.timeoutMs !== undefined && Date.now() - started > options.timeoutMs) {
        throw new WaitTimeoutError(`pull on ${domain}/${goal.target} not complete after ${options.timeoutMs} ms`);
      }
      let settledEarly = false;
      try {
        const job = await driver.getJob(domain, goal.target);
        unreachableSince = undefined;
        if (job !== null) {
          goneShortOfGoal = 0;
          lastJob = job;
          options.onProgress?.(job);
        } else {
          const disk = await driver.getDisk(domain, { target: goal.target });
          if (isPullComplete(null, disk, goal))
            return { disk, ...(lastJob === undefined ? {} : { lastJob }), eventsSeen };
          // The job is gone but the chain is not at the goal. Look once more after a short pause:
          // the job list and the XML are read in two calls.
          goneShortOfGoal++;
          if (goneShortOfGoal >= 2 || lastEvent === 'failed' || lastEvent === 'canceled') {
            const chain = disk.chain.map((l) => l.path).join(' <- ');
            if (lastEvent === 'canceled')
              throw new HypervisorError(
                'JobCanceled',
                `pull on ${domain}/${goal.target} was canceled; chain is ${chain}`,
              );
            throw new HypervisorError(
              'JobFailed',
              `pull on ${domain}/${goal.target} ended short of its goal (${goal.expectedPaths.join(' <- ')}); chain is ${chain}`,
            );
          }
          settledEarly = true;
        }
      } catch (err) {
        if (!isHypervisorError(err, 'Unreachable')) throw err;
        unreachableSince ??= Date.now();
        if (Date.now() - unreachableSince > graceMs) throw err;
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, settledEarly ? Math.min(pollMs, 200) : pollMs);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      wake = undefined;
    }
  } finally {
    sub?.stop();
    options.signal?.removeEventListener('abort', onAbort);
  }
}
