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
 * - timeoutMs / signal / stop() end the command in the container too: see
 *   KILL_ON_DISCONNECT_SCRIPT (closing the websocket alone leaves it running). While the
 *   websocket is still connecting they settle at once (a hung connect never hangs a caller)
 *   and the socket is closed when it opens.
 * - Output beyond maxOutputBytes (runner.ts) ends the command the same way and fails the call
 *   with RunOutputLimitError; what arrives meanwhile is dropped.
 */
import { PassThrough, Writable, type Readable } from 'node:stream';
import { Exec, type KubeConfig, type V1Status } from '@kubernetes/client-node';
import { z } from 'zod';
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
} from '../hypervisor/runner.ts';
import { FencedError, writesFenced } from '../kube/client.ts';

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

export type ExecOutcome =
  { readonly kind: 'exit'; readonly exitCode: number } | { readonly kind: 'error'; readonly message: string };

/** Map the V1Status from the exec status channel to an exit code or a transport error. */
export function parseExecStatus(status: unknown): ExecOutcome {
  const r = execStatusSchema.safeParse(status);
  if (!r.success) return { kind: 'error', message: `unparseable exec status: ${JSON.stringify(status)}` };
  const s = r.data;
  if (s.status === 'Success') return { kind: 'exit', exitCode: 0 };
  if (s.status === 'Failure' && s.reason === 'NonZeroExitCode') {
    const cause = s.details?.causes?.find((c) => c.reason === 'ExitCode');
    const code =
      cause?.message !== undefined && /^[0-9]+$/.test(cause.message.trim()) ? Number(cause.message.trim()) : NaN;
    if (Number.isInteger(code)) return { kind: 'exit', exitCode: code };
    return { kind: 'error', message: `exec failed with NonZeroExitCode but no ExitCode cause: ${s.message ?? ''}` };
  }
  return {
    kind: 'error',
    message: `exec failed: ${s.reason ?? s.status ?? 'unknown'}${s.message ? `: ${s.message}` : ''}`,
  };
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
    stdin: Readable | null,
    tty: boolean,
    statusCallback?: (status: V1Status) => void,
  ): Promise<{
    close(): void;
    on(event: 'close', cb: () => void): unknown;
    on(event: 'error', cb: (err: Error) => void): unknown;
    readyState: number;
  }>;
}

export interface ExecRunnerOptions {
  readonly kc: KubeConfig;
  readonly namespace: string;
  readonly pod: string;
  /** Default "compute" (KubeVirt's virt-launcher container). */
  readonly container?: string;
  /** Substitute the Exec implementation (default: new Exec(kc)). */
  readonly exec?: ExecLike;
  /**
   * Wrap every command so that it is killed when the exec session ends (KILL_ON_DISCONNECT_SCRIPT;
   * needs `sh` and `cat` in the container, as virt-launcher's compute has). Default true.
   */
  readonly killOnDisconnect?: boolean;
  /** After stop/timeout/abort, how long to wait for the wrapper's exit status before closing the socket. Default 5000. */
  readonly stopGraceMs?: number;
  /** Default cap of each output of a command (RunOptions.maxOutputBytes); default DEFAULT_MAX_OUTPUT_BYTES. */
  readonly maxOutputBytes?: number;
}

/** Printed by the wrapper when the binary does not exist in the container (→ RunTransportError). */
export const NOT_FOUND_MARKER = 'blockpull-exec: command not found';

/**
 * Closing a pods/exec websocket does NOT end the command in the container (measured on a real
 * kubelet + containerd: a loop writing every 0.2 s was still running 10 s after the close). So
 * commands run under this fixed wrapper: the command runs in the background with stdin from
 * /dev/null; `cat` waits on the session's stdin, which ends when we stop or when the session
 * is gone for any reason (operator crash included), and then the command gets SIGTERM. The
 * wrapper exits with the command's status; a binary missing in the container is reported with
 * NOT_FOUND_MARKER and becomes a RunTransportError, as without the wrapper. The user's argv is passed as positional parameters
 * ("$@"), never spliced into the script: no shell interpretation of names.
 */
export const KILL_ON_DISCONNECT_SCRIPT = [
  `command -v "$1" >/dev/null 2>&1 || { echo "${NOT_FOUND_MARKER}: $1" >&2; exit 127; }`,
  // Background jobs of a non-interactive shell get stdin from /dev/null: keep the session's on fd 3.
  'exec 3<&0',
  '"$@" </dev/null 3<&- &',
  'child=$!',
  '( cat <&3 >/dev/null 2>&1; kill -TERM "$child" 2>/dev/null ) >/dev/null 2>&1 &',
  'exec 3<&-',
  'wait "$child"',
  'status=$?',
  'exit "$status"',
].join('\n');

/** What every wrapped command starts with: `sh -c <KILL_ON_DISCONNECT_SCRIPT> blockpull-exec`, then the argv. */
export const KILL_ON_DISCONNECT_PREFIX = ['sh', '-c', KILL_ON_DISCONNECT_SCRIPT, 'blockpull-exec'] as const;

/**
 * What a failed connect says. client-node rejects with the websocket's ErrorEvent, not an Error:
 * its `message` is what the API server answered (e.g. "Unexpected server response: 403" for a
 * refusal by RBAC or an admission policy).
 */
export function connectErrorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'object' && err !== null && 'message' in err && typeof err.message === 'string')
    return err.message;
  return String(err);
}

/** A Writable sink for the exec session's output: hands chunks to `onChunk`, then drops them. */
class Sink extends Writable {
  readonly #onChunk: (chunk: Buffer) => void;
  constructor(onChunk: (chunk: Buffer) => void) {
    super();
    this.#onChunk = onChunk;
  }
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: (error?: Error | null) => void): void {
    this.#onChunk(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    cb();
  }
}

export class ExecRunner implements CommandRunner {
  readonly description: string;
  readonly #options: ExecRunnerOptions;
  readonly #exec: ExecLike;
  readonly #container: string;

  constructor(options: ExecRunnerOptions) {
    this.#options = options;
    this.#container = options.container ?? 'compute';
    this.#exec = options.exec ?? new Exec(options.kc);
    this.description = `exec ${options.namespace}/${options.pod}/${this.#container}`;
  }

  /**
   * Run argv with the given stdout/stderr sinks; resolves with the exit code when the socket
   * closes. `stop` (timeout, abort, stop()) ends the command: with the kill-on-disconnect
   * wrapper by closing its stdin (the wrapper kills the command and reports its status), and
   * after `stopGraceMs` (or without the wrapper, at once) by closing the socket.
   */
  #start(
    argv: readonly string[],
    stdout: Writable,
    stderr: Writable,
    options: RunOptions,
    stoppedCode: number | undefined,
  ): { exitCode: Promise<number>; stop: (reason: unknown) => void } {
    const wrap = this.#options.killOnDisconnect ?? true;
    const command = wrap ? [...KILL_ON_DISCONNECT_PREFIX, ...argv] : [...argv];
    // With the wrapper, stdin is the command's lifeline: it is never written, only ended.
    const stdin = wrap ? new PassThrough() : null;
    let socket: Awaited<ReturnType<ExecLike['exec']>> | undefined;
    let stopReason: unknown;
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let graceTimer: NodeJS.Timeout | undefined;
    let settle: ((v: number) => void) | undefined;
    let fail: ((e: unknown) => void) | undefined;
    const exitCode = new Promise<number>((resolve, reject) => {
      settle = resolve;
      fail = reject;
    });
    const cleanup = () => {
      clearTimeout(timer);
      clearTimeout(graceTimer);
      options.signal?.removeEventListener('abort', onAbort);
    };
    const closeSocket = () => socket?.close();
    const stop = (reason: unknown) => {
      if (stopped) return;
      stopped = true;
      stopReason = reason;
      if (socket === undefined) {
        // Still connecting (an API server can be slow to upgrade, or never answer): settle now,
        // so a timeout is a timeout; the socket is closed as soon as it opens (below).
        finish();
        return;
      }
      if (stdin !== null) {
        stdin.end();
        graceTimer = setTimeout(closeSocket, this.#options.stopGraceMs ?? 5_000);
      } else {
        closeSocket();
      }
    };
    const onAbort = () => stop(options.signal?.reason ?? new Error('aborted'));
    if (options.signal?.aborted) {
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
      stdin?.destroy();
      // run(): a timeout or abort rejects even if the (killed) command reported a status.
      if (
        stopped &&
        (stoppedCode === undefined ||
          stopReason instanceof RunTimeoutError ||
          stopReason instanceof RunOutputLimitError)
      ) {
        fail?.(stopReason);
      } else if (outcome !== undefined) {
        if (outcome.kind === 'exit') settle?.(outcome.exitCode);
        else fail?.(new RunTransportError(`${this.description}: ${outcome.message}`));
      } else if (stopped) {
        settle?.(stoppedCode as number);
      } else {
        fail?.(
          new RunTransportError(`${this.description}: connection closed without an exit status: ${argv.join(' ')}`),
        );
      }
    };

    // A pods/exec session is a websocket upgrade (a GET), so the client's write fence does not see
    // it; it runs virsh in the launcher, a write of its own: refused here once the fence is up.
    if (writesFenced()) {
      cleanup();
      stdin?.destroy();
      fail?.(
        new RunTransportError(
          `${this.description}: cannot exec ${argv[0] ?? ''}: ${new FencedError('exec', `pods/${this.#options.pod}/exec`).message}`,
        ),
      );
      return { exitCode, stop };
    }
    this.#exec
      .exec(
        this.#options.namespace,
        this.#options.pod,
        this.#container,
        command,
        stdout,
        stderr,
        stdin,
        false,
        (status) => {
          outcome = parseExecStatus(status);
        },
      )
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
          stdin?.destroy();
          fail?.(
            new RunTransportError(`${this.description}: cannot exec ${argv[0] ?? ''}: ${connectErrorMessage(err)}`, {
              cause: err,
            }),
          );
        },
      );
    return { exitCode, stop };
  }

  #limit(options: RunOptions): number {
    return options.maxOutputBytes ?? this.#options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
  }

  async run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const limit = this.#limit(options);
    const stdout = new BoundedBuffer(limit);
    const stderr = new BoundedBuffer(limit);
    // Output arrives only after #start returned: by then `session.stop` is set.
    const session: { stop?: (reason: unknown) => void } = {};
    const overflow = (what: OutputLimitWhat): void => session.stop?.(new RunOutputLimitError(argv, what, limit));
    const started = this.#start(
      argv,
      new Sink((b) => {
        if (!stdout.push(b)) overflow('stdout');
      }),
      new Sink((b) => {
        if (!stderr.push(b)) overflow('stderr');
      }),
      options,
      undefined,
    );
    session.stop = started.stop;
    const code = await started.exitCode;
    const err = stderr.text();
    if (code === 127 && err.startsWith(`${NOT_FOUND_MARKER}: `)) {
      throw new RunTransportError(`${this.description}: ${err.trim()}`);
    }
    return { exitCode: code, stdout: stdout.text(), stderr: err };
  }

  stream(argv: readonly string[], options: RunOptions = {}): StreamHandle {
    const limit = this.#limit(options);
    const lines = new LineQueue();
    const splitter = new BoundedLineSplitter(limit, (l) => lines.push(l));
    const stderr = new BoundedBuffer(limit);
    const session: { stop?: (reason: unknown) => void } = {};
    let overflowed = false;
    // Beyond a limit: the lines end and the command is stopped; done rejects.
    const overflow = (what: OutputLimitWhat): void => {
      if (overflowed) return;
      overflowed = true;
      lines.end(what === 'unread stdout lines'); // lines split before the limit was crossed stay readable
      session.stop?.(new RunOutputLimitError(argv, what, limit));
    };
    const stdoutSink = new Sink((b) => {
      if (overflowed) return;
      const crossed = splitter.push(b);
      if (crossed !== undefined) overflow(crossed);
      else if (lines.unreadBytes > limit) overflow('unread stdout lines');
    });
    const stderrSink = new Sink((b) => {
      if (!stderr.push(b)) overflow('stderr');
    });
    const started = this.#start(argv, stdoutSink, stderrSink, options, STOPPED_EXIT_CODE);
    session.stop = started.stop;
    const done = started.exitCode.then(
      (code) => {
        splitter.flush();
        lines.end();
        const err = stderr.text();
        if (code === 127 && err.startsWith(`${NOT_FOUND_MARKER}: `))
          throw new RunTransportError(`${this.description}: ${err.trim()}`);
        return { exitCode: code, stdout: '', stderr: err };
      },
      (err: unknown) => {
        if (!overflowed) splitter.flush();
        lines.end();
        throw err;
      },
    );
    // A caller that only iterates the lines must not crash the process with an unhandled
    // rejection when the transport fails: the rejection stays observable through `done`.
    done.catch(() => undefined);
    return { lines, done, stop: () => started.stop(new Error('stopped')) };
  }
}
