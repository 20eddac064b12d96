/**
 * LocalRunner: CommandRunner over child_process.spawn (argv only, never a shell).
 *
 * Every command runs in its own process group so that a cancel, a timeout or stop() kills the
 * whole child (virsh and anything it spawned), not just the direct child.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  BoundedBuffer,
  BoundedLineSplitter,
  DEFAULT_MAX_OUTPUT_BYTES,
  LineQueue,
  RunOutputLimitError,
  RunTimeoutError,
  RunTransportError,
  type CommandRunner,
  type OutputLimitWhat,
  type RunOptions,
  type RunResult,
  type StreamHandle,
} from './runner.ts';

export interface LocalRunnerOptions {
  /** Run as this user/group (the caller must be allowed to switch, i.e. root). */
  readonly uid?: number;
  readonly gid?: number;
  /** Environment of the child; default: the operator's own environment. */
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  /** Overrides the description used in logs and errors. */
  readonly description?: string;
  /** Grace period between SIGTERM and SIGKILL when a command is stopped (ms, default 2000). */
  readonly killGraceMs?: number;
  /** Default cap of each output of a command (RunOptions.maxOutputBytes); default DEFAULT_MAX_OUTPUT_BYTES. */
  readonly maxOutputBytes?: number;
}

/** Exit status of a child that ended by a signal: the shell convention 128 + n. */
const SIGNAL_NUMBERS: Readonly<Record<string, number>> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGKILL: 9,
  SIGTERM: 15,
  SIGPIPE: 13,
  SIGABRT: 6,
};

function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  if (signal !== null) return 128 + (SIGNAL_NUMBERS[signal] ?? 0);
  return -1;
}

export class LocalRunner implements CommandRunner {
  readonly description: string;
  readonly #options: LocalRunnerOptions;

  constructor(options: LocalRunnerOptions = {}) {
    this.#options = options;
    this.description = options.description ?? (options.uid === undefined ? 'local' : `local uid=${options.uid}`);
  }

  #spawn(argv: readonly string[]): ChildProcess {
    const [file, ...args] = argv;
    if (file === undefined || file === '') throw new RunTransportError('empty argv');
    const o = this.#options;
    return spawn(file, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // own process group: kill(-pid) reaches the whole child
      ...(o.uid === undefined ? {} : { uid: o.uid }),
      ...(o.gid === undefined ? {} : { gid: o.gid }),
      ...(o.env === undefined ? {} : { env: { ...o.env } }),
      ...(o.cwd === undefined ? {} : { cwd: o.cwd }),
    });
  }

  /** Signal the child's whole process group; then SIGKILL after the grace period. */
  #kill(child: ChildProcess, firstSignal: NodeJS.Signals): void {
    const pid = child.pid;
    if (pid === undefined) return;
    const send = (sig: NodeJS.Signals): void => {
      try {
        process.kill(-pid, sig);
      } catch {
        try {
          child.kill(sig);
        } catch {
          /* already gone */
        }
      }
    };
    send(firstSignal);
    if (firstSignal !== 'SIGKILL') {
      const t = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) send('SIGKILL');
      }, this.#options.killGraceMs ?? 2000);
      t.unref();
      child.once('exit', () => clearTimeout(t));
    }
  }

  run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    return new Promise<RunResult>((resolve, reject) => {
      const { signal, timeoutMs } = options;
      if (signal?.aborted) {
        reject(signal.reason as Error);
        return;
      }
      let child: ChildProcess;
      let failure: Error | undefined;
      try {
        child = this.#spawn(argv);
      } catch (err) {
        reject(
          err instanceof RunTransportError
            ? err
            : new RunTransportError(`cannot start ${argv[0]}: ${String(err)}`, { cause: err }),
        );
        return;
      }
      const limit = options.maxOutputBytes ?? this.#options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
      const stdout = new BoundedBuffer(limit);
      const stderr = new BoundedBuffer(limit);
      // Beyond the limit: kill the command, keep nothing more (a flood must not grow the heap).
      const overflow = (what: 'stdout' | 'stderr'): void => {
        if (failure !== undefined) return;
        failure = new RunOutputLimitError(argv, what, limit);
        this.#kill(child, 'SIGKILL');
        // Stop reading at once: what the child writes until the kill lands is not even read.
        child.stdout?.destroy();
        child.stderr?.destroy();
      };
      child.stdout?.on('data', (b: Buffer) => {
        if (!stdout.push(b)) overflow('stdout');
      });
      child.stderr?.on('data', (b: Buffer) => {
        if (!stderr.push(b)) overflow('stderr');
      });
      let settled = false;
      const onAbort = (): void => {
        failure ??= signal?.reason instanceof Error ? signal.reason : new Error(String(signal?.reason ?? 'aborted'));
        this.#kill(child, 'SIGKILL');
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              failure ??= new RunTimeoutError(argv, timeoutMs);
              this.#kill(child, 'SIGKILL');
            }, timeoutMs);
      const finish = (fn: () => void): void => {
        if (settled) return;
        settled = true;
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      child.on('error', (err) => {
        finish(() => reject(new RunTransportError(`cannot start ${argv[0]}: ${err.message}`, { cause: err })));
      });
      // 'close' fires after stdio has ended, so the output is complete.
      child.on('close', (code, sig) => {
        finish(() => {
          if (failure !== undefined) reject(failure);
          else resolve({ exitCode: exitStatus(code, sig), stdout: stdout.text(), stderr: stderr.text() });
        });
      });
    });
  }

  stream(argv: readonly string[], options: RunOptions = {}): StreamHandle {
    const limit = options.maxOutputBytes ?? this.#options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    const queue = new LineQueue();
    let child: ChildProcess | undefined;
    let stopped = false;
    let failure: RunOutputLimitError | undefined;
    let resolveDone!: (r: RunResult) => void;
    let rejectDone!: (e: unknown) => void;
    const done = new Promise<RunResult>((res, rej) => {
      resolveDone = res;
      rejectDone = rej;
    });
    done.catch(() => undefined); // callers that only read lines must not see an unhandled rejection

    const stop = (): void => {
      if (stopped) return;
      stopped = true;
      if (child !== undefined && child.exitCode === null && child.signalCode === null) this.#kill(child, 'SIGTERM');
    };

    try {
      if (options.signal?.aborted) throw options.signal.reason;
      child = this.#spawn(argv);
    } catch (err) {
      queue.end();
      rejectDone(err instanceof Error ? err : new RunTransportError(String(err)));
      return { lines: queue, done, stop };
    }
    const c = child;
    const stderr = new BoundedBuffer(limit);
    // Beyond a limit: the lines end, the command is killed and `done` rejects.
    const overflow = (what: OutputLimitWhat): void => {
      if (failure !== undefined) return;
      failure = new RunOutputLimitError(argv, what, limit);
      queue.end(what === 'unread stdout lines'); // lines split before the limit was crossed stay readable
      stopped = true;
      this.#kill(c, 'SIGKILL');
      c.stdout?.destroy();
      c.stderr?.destroy();
    };
    const splitter = new BoundedLineSplitter(limit, (line) => queue.push(line));
    c.stdout?.on('data', (b: Buffer) => {
      if (failure !== undefined) return;
      const crossed = splitter.push(b);
      if (crossed !== undefined) overflow(crossed);
      else if (queue.unreadBytes > limit) overflow('unread stdout lines');
    });
    c.stderr?.on('data', (b: Buffer) => {
      if (!stderr.push(b)) overflow('stderr');
    });
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            stop();
          }, options.timeoutMs);
    const onAbort = (): void => stop();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    c.on('error', (err) => {
      if (timer !== undefined) clearTimeout(timer);
      queue.end();
      rejectDone(new RunTransportError(`cannot start ${argv[0]}: ${err.message}`, { cause: err }));
    });
    c.on('close', (code, sig) => {
      if (timer !== undefined) clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      if (failure !== undefined) {
        rejectDone(failure);
        return;
      }
      splitter.flush();
      queue.end();
      resolveDone({ exitCode: exitStatus(code, sig), stdout: '', stderr: stderr.text() });
    });
    return { lines: queue, done, stop };
  }
}
