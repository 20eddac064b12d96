/**
 * ExecRunner: a CommandRunner over pods/exec (client-node's Exec websocket) into a container of
 * a pod, by default `compute` of a virt-launcher pod. This is the production transport.
 *
 * - argv is passed as the exec `command` array: no shell, no quoting.
 * - stdout/stderr are collected through Writable streams.
 * - Exec.exec() resolves when the websocket is open, not when the command ends. The exit status
 *   arrives as a metav1.Status on channel 3 (parseExecStatus): Success → 0; Failure with reason
 *   NonZeroExitCode → the ExitCode cause; any other Failure (e.g. the binary does not exist in
 *   the container, the container is gone) → RunTransportError. A socket that closes without a
 *   status is a RunTransportError too.
 * - Failing to open the websocket (pod not found 404, forbidden 403, API server unreachable) →
 *   RunTransportError.
 * - timeoutMs / signal close the websocket. Note: closing the exec stream does not reliably
 *   kill the process in the container (the container runtime keeps it until it writes to the
 *   closed pipe); only use timeouts on short commands, and stop() on `virsh event --loop`, which
 *   dies with SIGPIPE on its next event line.
 */
import { Writable } from 'node:stream';
import { Exec, type KubeConfig, type V1Status } from '@kubernetes/client-node';
import { z } from 'zod';
import { RunTimeoutError, RunTransportError, type CommandRunner, type RunOptions, type RunResult, type StreamHandle } from './runner.ts';

/** Exit code reported by stream().done when the command was stopped before it sent a status. */
export const STOPPED_EXIT_CODE = 143;

const execStatusSchema = z.looseObject({
  status: z.string().optional(),
  reason: z.string().optional(),
  message: z.string().optional(),
  details: z
    .looseObject({
      causes: z.array(z.looseObject({ reason: z.string().optional(), message: z.string().optional() })).optional(),
    })
    .optional(),
});

export type ExecOutcome = { readonly kind: 'exit'; readonly exitCode: number } | { readonly kind: 'error'; readonly message: string };

/** Map the V1Status from the exec status channel to an exit code or a transport error. */
export function parseExecStatus(status: unknown): ExecOutcome {
  const r = execStatusSchema.safeParse(status);
  if (!r.success) return { kind: 'error', message: `unparseable exec status: ${JSON.stringify(status)}` };
  const s = r.data;
  if (s.status === 'Success') return { kind: 'exit', exitCode: 0 };
  if (s.status === 'Failure' && s.reason === 'NonZeroExitCode') {
    const cause = s.details?.causes?.find((c) => c.reason === 'ExitCode');
    const code = cause?.message !== undefined && /^[0-9]+$/.test(cause.message.trim()) ? Number(cause.message.trim()) : NaN;
    if (Number.isInteger(code)) return { kind: 'exit', exitCode: code };
    return { kind: 'error', message: `exec failed with NonZeroExitCode but no ExitCode cause: ${s.message ?? ''}` };
  }
  return { kind: 'error', message: `exec failed: ${s.reason ?? s.status ?? 'unknown'}${s.message ? `: ${s.message}` : ''}` };
}

/** The part of client-node's Exec the runner uses (tests may substitute a fake socket server). */
export interface ExecLike {
  exec(
    namespace: string,
    podName: string,
    containerName: string,
    command: string | string[],
    stdout: Writable | null,
    stderr: Writable | null,
    stdin: null,
    tty: boolean,
    statusCallback?: (status: V1Status) => void,
  ): Promise<{ close(): void; on(event: 'close', cb: () => void): unknown; on(event: 'error', cb: (err: Error) => void): unknown; readyState: number }>;
}

export interface ExecRunnerOptions {
  readonly kc: KubeConfig;
  readonly namespace: string;
  readonly pod: string;
  /** Default "compute" (KubeVirt's virt-launcher container). */
  readonly container?: string;
  /** Substitute the Exec implementation (default: new Exec(kc)). */
  readonly exec?: ExecLike;
}

class Collector extends Writable {
  readonly chunks: Buffer[] = [];
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (error?: Error | null) => void): void {
    this.chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    cb();
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

/** Splits written bytes into lines and hands them to `onLine`. */
class LineSplitter extends Writable {
  #rest = '';
  readonly #onLine: (line: string) => void;
  constructor(onLine: (line: string) => void) {
    super();
    this.#onLine = onLine;
  }
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (error?: Error | null) => void): void {
    this.#rest += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
    let i: number;
    while ((i = this.#rest.indexOf('\n')) >= 0) {
      this.#onLine(this.#rest.slice(0, i).replace(/\r$/, ''));
      this.#rest = this.#rest.slice(i + 1);
    }
    cb();
  }
  flushRest(): void {
    if (this.#rest !== '') this.#onLine(this.#rest);
    this.#rest = '';
  }
}

/** A simple async line queue: push lines, end(); iterate with for await. */
class LineQueue implements AsyncIterable<string> {
  readonly #lines: string[] = [];
  #ended = false;
  #wake: (() => void) | undefined;
  push(line: string): void {
    this.#lines.push(line);
    this.#wake?.();
  }
  end(): void {
    this.#ended = true;
    this.#wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    for (;;) {
      const line = this.#lines.shift();
      if (line !== undefined) {
        yield line;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
      this.#wake = undefined;
    }
  }
}

export class ExecRunner implements CommandRunner {
  readonly description: string;
  readonly #o: ExecRunnerOptions;
  readonly #exec: ExecLike;
  readonly #container: string;

  constructor(options: ExecRunnerOptions) {
    this.#o = options;
    this.#container = options.container ?? 'compute';
    this.#exec = options.exec ?? new Exec(options.kc);
    this.description = `exec ${options.namespace}/${options.pod}/${this.#container}`;
  }

  /**
   * Run argv with the given stdout/stderr sinks; resolves with the exit code when the socket
   * closes. `stop` (from timeout/abort/stop()) closes the socket.
   */
  #start(
    argv: readonly string[],
    stdout: Writable,
    stderr: Writable,
    options: RunOptions,
    stoppedCode: number | undefined,
  ): { exitCode: Promise<number>; stop: (reason: unknown) => void } {
    let socket: Awaited<ReturnType<ExecLike['exec']>> | undefined;
    let stopReason: unknown;
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let settle: ((v: number) => void) | undefined;
    let fail: ((e: unknown) => void) | undefined;
    const exitCode = new Promise<number>((resolve, reject) => {
      settle = resolve;
      fail = reject;
    });
    const cleanup = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    };
    const stop = (reason: unknown) => {
      if (stopped) return;
      stopped = true;
      stopReason = reason;
      socket?.close();
      if (socket === undefined) return; // the connect callback below finishes
    };
    const onAbort = () => stop(options.signal?.reason ?? new Error('aborted'));
    if (options.signal?.aborted) {
      cleanup();
      return { exitCode: Promise.reject(options.signal.reason as Error), stop: () => {} };
    }
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const timeoutMs = options.timeoutMs;
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => stop(new RunTimeoutError(argv, timeoutMs)), timeoutMs);
    }

    let outcome: ExecOutcome | undefined;
    const finish = () => {
      cleanup();
      if (outcome !== undefined) {
        if (outcome.kind === 'exit') settle?.(outcome.exitCode);
        else fail?.(new RunTransportError(`${this.description}: ${outcome.message}`));
      } else if (stopped) {
        if (stoppedCode !== undefined && !(stopReason instanceof RunTimeoutError)) settle?.(stoppedCode);
        else fail?.(stopReason);
      } else {
        fail?.(new RunTransportError(`${this.description}: connection closed without an exit status: ${argv.join(' ')}`));
      }
    };

    this.#exec
      .exec(this.#o.namespace, this.#o.pod, this.#container, [...argv], stdout, stderr, null, false, (status) => {
        outcome = parseExecStatus(status);
      })
      .then(
        (ws) => {
          socket = ws;
          ws.on('close', finish);
          ws.on('error', () => {
            /* close follows */
          });
          if (stopped || ws.readyState >= 2) {
            ws.close();
            if (ws.readyState === 3) finish();
          }
        },
        (err: unknown) => {
          cleanup();
          const msg = err instanceof Error ? err.message : String(err);
          fail?.(new RunTransportError(`${this.description}: cannot exec ${argv[0] ?? ''}: ${msg}`, { cause: err }));
        },
      );
    return { exitCode, stop };
  }

  async run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const stdout = new Collector();
    const stderr = new Collector();
    const { exitCode } = this.#start(argv, stdout, stderr, options, undefined);
    const code = await exitCode;
    return { exitCode: code, stdout: stdout.text(), stderr: stderr.text() };
  }

  stream(argv: readonly string[], options: RunOptions = {}): StreamHandle {
    const lines = new LineQueue();
    const splitter = new LineSplitter((l) => lines.push(l));
    const stderr = new Collector();
    const { exitCode, stop } = this.#start(argv, splitter, stderr, options, STOPPED_EXIT_CODE);
    const done = exitCode.then(
      (code) => {
        splitter.flushRest();
        lines.end();
        return { exitCode: code, stdout: '', stderr: stderr.text() };
      },
      (err: unknown) => {
        splitter.flushRest();
        lines.end();
        throw err;
      },
    );
    // A caller that only iterates the lines must not crash the process with an unhandled
    // rejection when the transport fails: the rejection stays observable through `done`.
    done.catch(() => undefined);
    return { lines, done, stop: () => stop(new Error('stopped')) };
  }
}
