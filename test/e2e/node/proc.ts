/**
 * Small process helpers for the node tooling: run a tool with an argv array, start a daemon
 * with its output in a log file, stop it (TERM, then KILL), install Debian packages idempotently.
 * No shell strings anywhere: every command is an argv array.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, createWriteStream, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { processStartTime } from '../support/lock.ts';
import { isOurs, type DaemonRecord } from '../cluster/processes.ts';

export interface ToolResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface ToolOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly input?: string | Buffer;
  readonly timeoutMs?: number;
  /** Resolve with a non-zero exit instead of rejecting. */
  readonly allowFailure?: boolean;
}

export class ToolError extends Error {
  readonly result: ToolResult;
  constructor(argv: readonly string[], result: ToolResult) {
    super(`${argv.join(' ')} exited ${result.exitCode}: ${(result.stderr || result.stdout).trim().slice(-2000)}`);
    this.name = 'ToolError';
    this.result = result;
  }
}

/** Run argv to completion; reject on non-zero exit unless allowFailure. */
export function tool(argv: readonly string[], options: ToolOptions = {}): Promise<ToolResult> {
  const [file, ...args] = argv;
  if (file === undefined) throw new Error('empty argv');
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      env: options.env ?? process.env,
      cwd: options.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    let timer: NodeJS.Timeout | undefined;
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
    }
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const result: ToolResult = {
        exitCode: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (signal ? `\n(killed by ${signal})` : ''),
      };
      if (result.exitCode !== 0 && !options.allowFailure) reject(new ToolError(argv, result));
      else resolve(result);
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

export interface Daemon {
  readonly name: string;
  readonly pid: number;
  /** What identifies this process later, from another process too (pid + /proc start time + argv[0] + marker). */
  readonly record: DaemonRecord;
  readonly logPath: string;
  readonly child: ChildProcess;
  /** Resolves once the process has exited. */
  readonly exited: Promise<void>;
  isRunning(): boolean;
  /** SIGTERM, wait up to graceMs, then SIGKILL. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

export interface DaemonOptions {
  readonly env?: NodeJS.ProcessEnv;
  /**
   * Keep running after this process exits: own process group, output written straight to the log
   * file (no pipe through us), not referenced by our event loop. Default false.
   */
  readonly detached?: boolean;
  /** A string in the command line that ties the process to its owner (e.g. the node's run dir). */
  readonly marker: string;
}

/** Start a long-running process; stdout and stderr go to logPath. */
export function startDaemon(name: string, argv: readonly string[], logPath: string, options: DaemonOptions): Daemon {
  const [file, ...args] = argv;
  if (file === undefined) throw new Error('empty argv');
  if (!argv.some((a) => a.includes(options.marker))) throw new Error(`${name}: marker ${options.marker} is not in its command line`);
  let child: ChildProcess;
  let log: { end(): void } | undefined;
  if (options.detached) {
    const fd = openSync(logPath, 'a');
    try {
      child = spawn(file, args, { env: options.env ?? process.env, stdio: ['ignore', fd, fd], detached: true });
    } finally {
      closeSync(fd);
    }
    child.unref();
  } else {
    const stream = createWriteStream(logPath, { flags: 'a' });
    log = stream;
    child = spawn(file, args, { env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.pipe(stream, { end: false });
    child.stderr?.pipe(stream, { end: false });
  }
  let running = true;
  const exited = new Promise<void>((resolve) => {
    child.on('exit', () => {
      running = false;
      resolve();
    });
    child.on('error', () => {
      running = false;
      resolve();
    });
  });
  void exited.then(() => log?.end());
  if (child.pid === undefined) throw new Error(`${name}: could not start ${file}`);
  const pid = child.pid;
  const record: DaemonRecord = { name, pid, start: processStartTime(pid) ?? 'exited', binary: file, marker: options.marker, logFile: logPath };
  return {
    name,
    pid,
    record,
    logPath,
    child,
    exited,
    isRunning: () => running,
    async stop(graceMs = 10_000) {
      if (!running) return;
      child.kill('SIGTERM');
      const done = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (!done) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/** apt-get lives in one place for all test tooling. */
export { ensureDebianPackages } from '../support/debian.ts';

/** Processes whose command line contains every needle (read from /proc; for cleanup checks). */
export function findProcesses(needles: readonly string[]): { pid: number; cmdline: string[] }[] {
  const found: { pid: number; cmdline: string[] }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    let cmdline: string[];
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter((s) => s !== '');
    } catch {
      continue;
    }
    const joined = cmdline.join(' ');
    if (cmdline.length > 0 && needles.every((n) => joined.includes(n))) found.push({ pid, cmdline });
  }
  return found;
}

/** Mount points at or below dir (from /proc/self/mountinfo), deepest first. */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const points: string[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const mp = fields[4];
    if (mp === undefined) continue;
    const decoded = mp.replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (decoded === dir || decoded.startsWith(prefix)) points.push(decoded);
  }
  return points.sort((a, b) => b.length - a.length);
}

/** Unmount everything at or below dir (lazy unmount as a last resort). */
export async function unmountAllUnder(dir: string): Promise<void> {
  for (let round = 0; round < 5; round++) {
    const points = mountsUnder(dir);
    if (points.length === 0) return;
    for (const p of points) {
      const r = await tool(['umount', p], { allowFailure: true });
      if (r.exitCode !== 0) await tool(['umount', '-l', p], { allowFailure: true });
    }
  }
}

/** Kill a process by pid: TERM, wait, KILL. */
export async function killPid(pid: number, graceMs = 5000): Promise<void> {
  const alive = (): boolean => {
    try {
      process.kill(pid, 0);
      // a zombie still answers kill(0); treat it as gone
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return !/\) Z /.test(stat);
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (alive() && Date.now() < deadline) await sleep(100);
  if (alive()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    while (alive()) await sleep(50);
  }
}

/** Network namespace inode of a process (to tell our netns files apart). */
export function netnsOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`);
  } catch {
    return undefined;
  }
}

/**
 * Stop a process recorded earlier (possibly by another, now dead, process): only if it still is the
 * one recorded (pid + start time + argv[0] + marker), TERM, then KILL after graceMs, wait until gone.
 */
export async function stopRecordedProcess(rec: DaemonRecord, graceMs = 10_000): Promise<boolean> {
  if (!isOurs(rec)) return false;
  const signal = (s: NodeJS.Signals): void => {
    try {
      process.kill(rec.pid, s);
    } catch {
      /* gone */
    }
  };
  signal('SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isOurs(rec) && Date.now() < deadline) await sleep(50);
  if (isOurs(rec)) {
    signal('SIGKILL');
    const hard = Date.now() + 10_000;
    while (isOurs(rec)) {
      if (Date.now() > hard) throw new Error(`${rec.name} (pid ${rec.pid}) survived SIGKILL`);
      await sleep(50);
    }
  }
  return true;
}
