/**
 * Completion of a pull: the job is gone AND the chain ends at the requested base.
 * Never cur == end alone (oVirt BZ 1442266, 1376580): a job can read cur == end before libvirt
 * has pivoted the chain, and a job that failed or was canceled also disappears.
 * (Waiting for a pull outside the operator, for specs and the bench: test/e2e/blockjob/wait-for-pull.ts.)
 */
import { chainAtGoal, type PullGoal } from './chain.ts';
import type { BlockJobInfo, DiskInfo } from './types.ts';

export { computeGoal, chainAtGoal, type PullGoal } from './chain.ts';

/** Complete = no block job on the disk AND the chain is exactly the goal (full pull: one layer). */
export function isPullComplete(job: BlockJobInfo | null, disk: DiskInfo, goal: PullGoal): boolean {
  return job === null && disk.target === goal.target && chainAtGoal(disk, goal);
}
