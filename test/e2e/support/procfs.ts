/** What the benches read about a process or the machine from /proc (Linux only). */
import { readFileSync } from 'node:fs';
import os from 'node:os';

/** Clock ticks per second of /proc/<pid>/stat on Linux (USER_HZ). */
const USER_HZ = 100;

/**
 * CPU seconds a process has used (utime + stime), with `children` also those of the children it
 * has reaped (cutime + cstime); 0 when it is gone.
 */
export function cpuSeconds(pid: number | undefined, children = false): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12]) + (children ? Number(f[13]) + Number(f[14]) : 0)) / USER_HZ;
  } catch {
    return 0;
  }
}

/** A kB field of /proc/<pid>/status (VmRSS, VmHWM) in MiB; 0 when the process is gone. */
export function statusMiB(pid: number | undefined, field: 'VmRSS' | 'VmHWM'): number {
  if (pid === undefined) return 0;
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/** Proportional set size (shared pages split among their users) in MiB, from smaps_rollup; 0 when gone. */
export function pssMiB(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/** Busy and total jiffies of the whole machine (/proc/stat), for its utilization over a window. */
export function machineJiffies(): { busy: number; total: number } {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.reduce((a, b) => a + b, 0);
  const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0);
  return { busy: total - idle, total };
}

/** MemAvailable of the machine in MiB (/proc/meminfo). */
export function memAvailableMiB(): number {
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

/** The peak VmRSS of a process, sampled every `intervalMs` (VmHWM misses none, but a restart resets it). */
export class RssSampler {
  #peak = 0;
  #pid: number | undefined;
  readonly #timer: NodeJS.Timeout;

  constructor(pid: number | undefined, intervalMs = 250) {
    this.#pid = pid;
    this.#timer = setInterval(() => (this.#peak = Math.max(this.#peak, statusMiB(this.#pid, 'VmRSS'))), intervalMs);
    this.#timer.unref();
  }

  /** Sample another process from now on (the operator restarted); the peak so far is kept. */
  follow(pid: number | undefined): void {
    this.#pid = pid;
  }

  /** MiB. */
  get peak(): number {
    return this.#peak;
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

/** The machine's load averages over 1, 5 and 15 minutes, "1.23 0.98 0.50", printed beside every figure. */
export function loadAverages(): string {
  return os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
}
