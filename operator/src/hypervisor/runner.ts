/**
 * Command runners: how the operator runs a tool (virsh) next to a VM.
 *
 * Two transports implement this one interface: the local runner (child_process, for the
 * launcher stand-ins in tests and the demo) and pods/exec through the API server (production).
 * Commands are always argv arrays, never shell strings: names come from user objects.
 */

export interface RunOptions {
  /** Kill the command after this many milliseconds and reject with RunTimeoutError. */
  readonly timeoutMs?: number;
  /** Cancel the command; the promise rejects with the signal's reason. */
  readonly signal?: AbortSignal;
}

export interface RunResult {
  /** Exit status; non-zero is returned, not thrown: callers map tool errors to typed errors. */
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** A long-running command whose stdout is consumed line by line (virsh event --loop). */
export interface StreamHandle {
  /** stdout, split into lines without the trailing newline. Ends when the command ends. */
  readonly lines: AsyncIterable<string>;
  /** Resolves when the command has exited (after stop() too). */
  readonly done: Promise<RunResult>;
  /** Ask the command to end. Idempotent. */
  stop(): void;
}

export interface CommandRunner {
  /** Human-readable description for logs and errors, e.g. "local" or "exec ns/pod/compute". */
  readonly description: string;
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult>;
  stream(argv: readonly string[], options?: RunOptions): StreamHandle;
}

export class RunTimeoutError extends Error {
  constructor(argv: readonly string[], timeoutMs: number) {
    super(`command timed out after ${timeoutMs} ms: ${argv.join(' ')}`);
    this.name = 'RunTimeoutError';
  }
}

/** The runner could not start the command at all (binary missing, pod gone, exec refused). */
export class RunTransportError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RunTransportError';
  }
}
