/**
 * The one way the test bed runs a command and starts, identifies and stops a daemon. No shell
 * strings: every command is an argv array.
 *
 * run(argv, options) -> { exitCode, stdout, stderr }. One rule for every caller:
 * - a timeout kills the command (SIGKILL) and REJECTS with RunError (timedOut), whatever allowExit says;
 * - output beyond maxOutput (stdout and stderr each) kills it and rejects (outputLimit);
 * - a command that cannot be started (missing binary) rejects with the spawn error;
 * - a non-zero exit (or death by a signal: exit code 128 + signal number) rejects with RunError
 *   unless allowExit: true (any code) or allowExit lists it; then it is returned;
 * - a command still running when this process exits is killed (SIGKILL): an interrupted caller
 *   leaves no compiler or kubectl behind.
 *
 * startDaemon(name, argv, logPath, options) -> Daemon: its own process group (setsid), stdout and
 * stderr appended to logPath, identified by a DaemonRecord (pid + /proc start time + argv[0] + a
 * marker string in its command line), which can be written to a file and used by another process.
 * stopDaemon(record) signals only a process that still is the recorded one, signals its whole group
 * (SIGTERM, SIGKILL after graceMs) and waits until the process and every member of its group is gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, createWriteStream, openSync, readdirSync, readFileSync } from 'node:fs';
import { constants } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { processStartTime } from './lock.ts';
import { sleep } from './wait.ts';

// --- run -----------------------------------------------------------------------------------------

export interface RunResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  /** Kill and reject after this long. Default 10 min. */
  readonly timeoutMs?: number;
  readonly cwd?: string;
  /** The whole environment (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
  /** Written to stdin (then closed); default: stdin closed at once. */
  readonly input?: string | Buffer;
  /** Bytes of stdout, and of stderr, kept before the command is killed and the call rejects. Default 64 MiB. */
  readonly maxOutput?: number;
  /** Exit codes returned instead of rejected: true = any. */
  readonly allowExit?: boolean | readonly number[];
  readonly uid?: number;
  readonly gid?: number;
  /** The command writes to this process's stdout and stderr (a terminal stays a terminal); nothing is kept. */
  readonly inheritOutput?: boolean;
}

export const DEFAULT_RUN_TIMEOUT_MS = 10 * 60_000;
export const DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024;

export class RunError extends Error {
  readonly argv: readonly string[];
  readonly result: RunResult;
  readonly timedOut: boolean;
  readonly outputLimit: boolean;
  constructor(
    argv: readonly string[],
    result: RunResult,
    why: { timedOut?: boolean; outputLimit?: boolean; timeoutMs?: number } = {},
  ) {
    const what = why.timedOut
      ? `timed out after ${why.timeoutMs} ms`
      : why.outputLimit
        ? 'exceeded its output limit'
        : `exited ${result.exitCode}`;
    super(`${argv.join(' ')} ${what}: ${(result.stderr.trim() || result.stdout.trim()).slice(-2000)}`);
    this.name = 'RunError';
    this.argv = argv;
    this.result = result;
    this.timedOut = why.timedOut ?? false;
    this.outputLimit = why.outputLimit ?? false;
  }
}

const running = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const c of running) killGroup(c);
    });
  }
  running.add(child);
  child.once('close', () => running.delete(child));
  child.once('error', () => running.delete(child));
}

/**
 * For cleanup code that goes on whatever happens: `run(argv, { allowExit: true }).catch(resultOf)`
 * turns a timeout or output-limit RunError into its (killed) result; other errors still reject.
 */
export function resultOf(err: unknown): RunResult {
  if (err instanceof RunError) return err.result;
  throw err;
}

/**
 * SIGKILL a command and whatever it forked (run() starts each in its own process group): a
 * killed `sh -c 'a; sleep 30'` must not leave a child holding the output pipes open.
 */
function killGroup(child: ChildProcess): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

function exitAllowed(code: number, allow: RunOptions['allowExit']): boolean {
  if (code === 0 || allow === true) return true;
  return Array.isArray(allow) && allow.includes(code);
}

/** Runs argv to completion under the rules above. */
export function run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const [file, ...args] = argv;
  if (file === undefined) return Promise.reject(new Error('run: empty argv'));
  const timeoutMs = options.timeoutMs ?? DEFAULT_RUN_TIMEOUT_MS;
  const maxOutput = options.maxOutput ?? DEFAULT_MAX_OUTPUT;
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: options.inheritOutput === true ? ['pipe', 'inherit', 'inherit'] : ['pipe', 'pipe', 'pipe'],
      detached: true, // its own process group, so a kill reaches what it forked (killGroup)
      ...(options.uid !== undefined ? { uid: options.uid } : {}),
      ...(options.gid !== undefined ? { gid: options.gid } : {}),
    });
    track(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    let timedOut = false;
    let outputLimit = false;
    const collect = (into: Buffer[], b: Buffer, isOut: boolean): void => {
      const n = isOut ? (outBytes += b.length) : (errBytes += b.length);
      if (n > maxOutput) {
        if (!outputLimit) {
          outputLimit = true;
          killGroup(child);
        }
        return;
      }
      into.push(b);
    };
    child.stdout?.on('data', (b: Buffer) => collect(out, b, true));
    child.stderr?.on('data', (b: Buffer) => collect(err, b, false));
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const result: RunResult = {
        exitCode: code ?? (signal ? 128 + (constants.signals[signal] ?? 0) : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr:
          Buffer.concat(err).toString('utf8') + (signal && !timedOut && !outputLimit ? `\n(killed by ${signal})` : ''),
      };
      if (timedOut || outputLimit) reject(new RunError(argv, result, { timedOut, outputLimit, timeoutMs }));
      else if (!exitAllowed(result.exitCode, options.allowExit)) reject(new RunError(argv, result));
      else resolve(result);
    });
    child.stdin?.on('error', () => undefined); // the command may exit before reading its input (EPIPE)
    child.stdin?.end(options.input ?? '');
  });
}

// --- identity ------------------------------------------------------------------------------------

export const daemonRecord = z.object({
  name: z.string(),
  pid: z.number().int().positive(),
  /** /proc/<pid>/stat start time, so a reused pid is never mistaken for ours. */
  start: z.string(),
  binary: z.string(),
  /** A string that must occur in the command line (e.g. the state dir), a second identity check. */
  marker: z.string(),
  logFile: z.string(),
});
export type DaemonRecord = z.infer<typeof daemonRecord>;

export function readCmdline(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      .split('\0')
      .filter((s) => s !== '');
  } catch {
    return undefined;
  }
}

/** True if the process in the record still runs and is the one recorded (pid + start time + argv[0] + marker). */
export function isOurs(rec: DaemonRecord): boolean {
  if (processStartTime(rec.pid) !== rec.start) return false;
  const argv = readCmdline(rec.pid);
  return argv !== undefined && argv[0] === rec.binary && argv.some((a) => a.includes(rec.marker));
}

/**
 * The identity of a running process we did not start (e.g. one found by its command line), taken
 * now, so that stopDaemon() later signals it only if it is still that process. Undefined if gone.
 */
export function recordOf(pid: number, name: string, marker: string): DaemonRecord | undefined {
  const start = processStartTime(pid);
  const argv = readCmdline(pid);
  if (start === undefined || argv?.[0] === undefined || !argv.some((a) => a.includes(marker))) return undefined;
  return { name, pid, start, binary: argv[0], marker, logFile: '' };
}

export function listPids(): number[] {
  try {
    return readdirSync('/proc')
      .filter((n) => /^\d+$/.test(n))
      .map(Number);
  } catch {
    return [];
  }
}

// --- daemons -------------------------------------------------------------------------------------

export interface DaemonOptions {
  /** A string in the command line that ties the process to its owner (e.g. a state or run dir). */
  readonly marker: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly uid?: number;
  readonly gid?: number;
  /** Keep running after this process exits (not referenced by our event loop). Default false. */
  readonly keepRunning?: boolean;
  /**
   * Also see the output here, as it comes (e.g. to parse log lines): stdout and stderr are then
   * piped through this process into logPath instead of written there directly. Not with keepRunning.
   */
  readonly onOutput?: (chunk: string, stream: 'stdout' | 'stderr') => void;
}

export interface DaemonExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface Daemon {
  readonly name: string;
  readonly pid: number;
  /** What identifies this process later, from another process too. */
  readonly record: DaemonRecord;
  readonly logPath: string;
  readonly child: ChildProcess;
  /** Resolves once the process has exited (its group may still have members: stop() waits for them). */
  readonly exited: Promise<DaemonExit>;
  isRunning(): boolean;
  /** stopDaemon(record, graceMs, term). Idempotent. */
  stop(graceMs?: number, term?: 'group' | 'leader'): Promise<void>;
}

/**
 * Starts argv in its own process group with stdout and stderr appended to logPath; resolves once
 * the process exists (rejects if it cannot be spawned, e.g. a missing binary).
 */
export async function startDaemon(
  name: string,
  argv: readonly string[],
  logPath: string,
  options: DaemonOptions,
): Promise<Daemon> {
  const [file, ...args] = argv;
  if (file === undefined) throw new Error(`${name}: empty argv`);
  if (!argv.some((a) => a.includes(options.marker)))
    throw new Error(`${name}: marker ${options.marker} is not in its command line`);
  if (options.onOutput && options.keepRunning)
    throw new Error(`${name}: onOutput needs the output piped through this process: not with keepRunning`);
  const fd = openSync(logPath, 'a');
  let child: ChildProcess;
  try {
    child = spawn(file, args, {
      env: options.env ?? process.env,
      cwd: options.cwd,
      stdio: options.onOutput ? ['ignore', 'pipe', 'pipe'] : ['ignore', fd, fd],
      detached: true, // setsid: its own process group, so a stop reaches whatever it forked
      ...(options.uid !== undefined ? { uid: options.uid } : {}),
      ...(options.gid !== undefined ? { gid: options.gid } : {}),
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  let logClosed: Promise<void> = Promise.resolve();
  const onOutput = options.onOutput;
  if (onOutput) {
    const log = createWriteStream('', { fd });
    logClosed = new Promise((resolve) => log.on('close', () => resolve()));
    let open = 2;
    for (const stream of ['stdout', 'stderr'] as const) {
      const s = child[stream];
      s?.setEncoding('utf8').on('data', (chunk: string) => {
        log.write(chunk);
        onOutput(chunk, stream);
      });
      s?.on('close', () => {
        if (--open === 0) log.end();
      });
    }
  } else {
    closeSync(fd);
  }
  if (options.keepRunning) child.unref();
  let running = true;
  const exited = new Promise<DaemonExit>((resolve) => {
    child.on('exit', (code, signal) => {
      running = false;
      // The output up to the exit is in the log (and seen by onOutput) before this resolves; a
      // child that inherited the pipes cannot hold it up for more than 2 s.
      void Promise.race([logClosed, sleep(2000)]).then(() => resolve({ code, signal }));
    });
    child.on('error', () => {
      running = false;
      resolve({ code: null, signal: null });
    });
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${name}: could not start ${file}`);
  // A daemon that has already exited gets a start time no process has: its record is never "ours",
  // so nothing is ever signalled for it; the caller sees isRunning() false and `exited`.
  const start = processStartTime(pid) ?? 'exited';
  const record: DaemonRecord = { name, pid, start, binary: file, marker: options.marker, logFile: logPath };
  return {
    name,
    pid,
    record,
    logPath,
    child,
    exited,
    isRunning: () => running,
    stop: async (graceMs?: number, term?: 'group' | 'leader') => {
      await stopDaemon(record, graceMs, term);
    },
  };
}

function signalGroup(rec: DaemonRecord, signal: NodeJS.Signals): void {
  try {
    process.kill(-rec.pid, signal); // the group: the daemon and anything it forked
  } catch {
    try {
      process.kill(rec.pid, signal); // not a group leader (e.g. a process we did not start)
    } catch {
      // already gone
    }
  }
}

/** True while a live (not zombie) member of process group `pgid` is left. */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch {
    return false;
  }
  // kill(-pgid, 0) succeeds for zombies too: look for a live member.
  for (const pid of listPids()) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (f[2] === String(pgid) && f[0] !== 'Z' && f[0] !== 'X') return true;
    } catch {
      // raced with exit
    }
  }
  return false;
}

/** SIGKILL now, synchronously, if it still is ours: for 'exit' and signal handlers, where nothing can be awaited. */
export function killDaemonNow(rec: DaemonRecord): void {
  if (isOurs(rec)) signalGroup(rec, 'SIGKILL');
}

/**
 * Stops a recorded daemon (possibly started by another, now dead, process): only if it still is the
 * recorded one; SIGTERM, SIGKILL to the group after graceMs (graceMs 0: SIGKILL at once), then waits
 * until neither the process nor any member of its group is left. SIGTERM goes to the whole group,
 * or with term: 'leader' to the daemon alone, as a kubelet stops a container (the product under
 * test shuts its own children down). Returns false if it was not running (or not ours any more).
 */
export async function stopDaemon(
  rec: DaemonRecord,
  graceMs = 10_000,
  term: 'group' | 'leader' = 'group',
): Promise<boolean> {
  if (!isOurs(rec)) return false; // gone, or the pid now belongs to someone else: never signal that
  const alive = (): boolean => isOurs(rec) || groupAlive(rec.pid);
  if (graceMs > 0) {
    if (term === 'group') signalGroup(rec, 'SIGTERM');
    else process.kill(rec.pid, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (alive() && Date.now() < deadline) await sleep(50);
  }
  if (alive()) {
    signalGroup(rec, 'SIGKILL');
    const hard = Date.now() + 10_000;
    while (alive()) {
      if (Date.now() > hard) throw new Error(`${rec.name} (pid ${rec.pid}) survived SIGKILL`);
      await sleep(50);
    }
  }
  return true;
}

// --- finding processes ---------------------------------------------------------------------------

/**
 * Live processes (not this one) whose command line contains every one of `needles` (e.g. a state
 * or run dir: every daemon's flags name it), optionally only those whose program's basename is in
 * `programs`. For cleanup checks and sweeps; stop one with stopDaemon(recordOf(...)).
 */
export function findProcesses(
  needles: readonly string[],
  programs?: readonly string[],
): { pid: number; cmdline: string[] }[] {
  const found: { pid: number; cmdline: string[] }[] = [];
  for (const pid of listPids()) {
    if (pid === process.pid) continue;
    const cmdline = readCmdline(pid);
    if (cmdline === undefined || cmdline.length === 0 || processStartTime(pid) === undefined) continue;
    const joined = cmdline.join(' ');
    if (!needles.every((n) => joined.includes(n))) continue;
    if (programs && !programs.includes(path.basename(cmdline[0] ?? ''))) continue;
    found.push({ pid, cmdline });
  }
  return found;
}

/** Pids of findProcesses([needle], programs). */
export function processesMentioning(needle: string, programs?: readonly string[]): number[] {
  return findProcesses([needle], programs).map((p) => p.pid);
}

/**
 * A crash: SIGKILL to the daemon alone (if it still is the recorded one), and wait until it is gone.
 * What it started (its group) is left running, as a crash leaves it: e.g. QEMU after libvirtd dies.
 */
export async function crashDaemon(rec: DaemonRecord): Promise<void> {
  if (!isOurs(rec)) return;
  try {
    process.kill(rec.pid, 'SIGKILL');
  } catch {
    return; // gone meanwhile
  }
  const hard = Date.now() + 10_000;
  // Gone means its start time is gone (exited or a zombie), not just its command line: a process
  // being killed drops its memory, and with it /proc/<pid>/cmdline, a moment before it exits.
  while (processStartTime(rec.pid) === rec.start) {
    if (Date.now() > hard) throw new Error(`${rec.name} (pid ${rec.pid}) survived SIGKILL`);
    await sleep(20);
  }
}

/**
 * On SIGINT or SIGTERM, run `cleanup` and exit 130: a bench stopped by hand leaves no daemon,
 * mount or temporary directory behind.
 */
export function cleanupOnSignals(cleanup: () => Promise<unknown>): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.on(sig, () => void cleanup().finally(() => process.exit(130)));
}
