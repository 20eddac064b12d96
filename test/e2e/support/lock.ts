/**
 * A cross-process lock file: `<path>` holds the owner's pid and start time; a lock whose owner is gone
 * (crashed build, pid reused by another process) is taken over. The one cross-process lock of the test
 * tooling: e.g. two concurrent callers of ensureBinaries() or ensureHelm() build once (the second waits
 * and then finds the result); node sweeps and CIDR picks take turns.
 */
import { readFileSync } from 'node:fs';
import { open, readFile, rm } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';

/** The start time of a process (field 22 of /proc/<pid>/stat, in clock ticks), or undefined if it is gone. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') return undefined; // zombie: exited
    return fields[19];
  } catch {
    return undefined;
  }
}

const owner = z.object({ pid: z.number().int().positive(), start: z.string() });

async function ownerAlive(lockPath: string): Promise<boolean> {
  let text: string;
  try {
    text = await readFile(lockPath, 'utf8');
  } catch {
    return false; // released meanwhile
  }
  const parsed = owner.safeParse(safeJson(text));
  if (!parsed.success) return false; // torn write by a crashed owner
  return processStartTime(parsed.data.pid) === parsed.data.start;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

export interface LockOptions {
  /** Give up waiting for another owner after this long (default 90 minutes: a cold build on 2 cores). */
  readonly timeoutMs?: number;
  /** Called once when the lock is held by another live process. */
  readonly onWait?: (lockPath: string) => void;
}

/** Runs `fn` while holding the lock file `lockPath`. */
export async function withLock<T>(lockPath: string, fn: () => Promise<T>, options: LockOptions = {}): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 90 * 60_000);
  let told = false;
  const me = JSON.stringify({ pid: process.pid, start: processStartTime(process.pid) ?? '' });
  for (;;) {
    try {
      const fh = await open(lockPath, 'wx');
      try {
        await fh.writeFile(me);
      } finally {
        await fh.close();
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (!(await ownerAlive(lockPath))) {
      // Stale. Two waiters may both see it stale; rm + 'wx' lets exactly one of them win the next round.
      // A lock written a moment ago whose content is not yet flushed looks torn: give it a grace period.
      await sleep(200);
      if (!(await ownerAlive(lockPath))) await rm(lockPath, { force: true });
      continue;
    }
    if (!told) {
      options.onWait?.(lockPath);
      told = true;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for lock ${lockPath}`);
    await sleep(1000);
  }
  try {
    return await fn();
  } finally {
    await rm(lockPath, { force: true });
  }
}
