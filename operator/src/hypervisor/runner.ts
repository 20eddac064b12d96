/**
 * Command runners: how the operator runs a tool (virsh) next to a VM.
 *
 * Two transports implement this one interface: the local runner (child_process, for the
 * launcher stand-ins in tests and the demo) and pods/exec through the API server (production).
 * Commands are always argv arrays, never shell strings: names come from user objects.
 *
 * Output is untrusted (a launcher pod is a tenant's): every runner caps what it keeps. stdout and
 * stderr of run(), each line of stream(), the lines stream() has queued and not yet handed out,
 * and stream()'s stderr are each at most `maxOutputBytes` (default DEFAULT_MAX_OUTPUT_BYTES). A
 * command that goes beyond is killed and the call fails with RunOutputLimitError (stream():
 * `done` rejects with it and the lines end).
 */
import { StringDecoder } from 'node:string_decoder';

/**
 * Default cap of each output of one command: 1 MiB. `virsh dumpxml` of a real domain is tens of
 * KiB (each disk image adds a few hundred bytes plus its path); `virsh blockjob` and event lines
 * are a few hundred bytes. Only an absurd chain (hundreds of images with paths of kilobytes)
 * would need more: raise BLOCKPULL_MAX_COMMAND_OUTPUT_BYTES then. Kept small because every
 * flood leaves up to this much garbage per output until the next GC (measured: 14 floods of
 * 300 MiB added ~9 MiB RSS at 1 MiB, ~25 MiB at 4 MiB).
 */
export const DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024;

export interface RunOptions {
  /** Kill the command after this many milliseconds and reject with RunTimeoutError. */
  readonly timeoutMs?: number;
  /** Cancel the command; the promise rejects with the signal's reason. */
  readonly signal?: AbortSignal;
  /** Cap of stdout and of stderr (each), of a stream line and of the unread lines (default DEFAULT_MAX_OUTPUT_BYTES). */
  readonly maxOutputBytes?: number;
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

/** Which output crossed its limit. */
export type OutputLimitWhat = 'stdout' | 'stderr' | 'a stdout line' | 'unread stdout lines';

/** A command wrote more than the runner keeps (see maxOutputBytes); it was killed. */
export class RunOutputLimitError extends Error {
  readonly limitBytes: number;
  readonly what: OutputLimitWhat;
  constructor(argv: readonly string[], what: OutputLimitWhat, limitBytes: number) {
    super(
      `${what} of the command exceeded the limit of ${limitBytes} bytes; the command was killed: ${argv.join(' ').slice(0, 512)}`,
    );
    this.name = 'RunOutputLimitError';
    this.limitBytes = limitBytes;
    this.what = what;
  }
}

/** Keeps chunks up to a byte limit; `push` returns false (and keeps nothing more) once beyond it. */
export class BoundedBuffer {
  readonly #limit: number;
  readonly #chunks: Buffer[] = [];
  #bytes = 0;
  #overflowed = false;
  constructor(limitBytes: number) {
    this.#limit = limitBytes;
  }
  get overflowed(): boolean {
    return this.#overflowed;
  }
  push(chunk: Buffer | string): boolean {
    if (this.#overflowed) return false;
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (this.#bytes + b.length > this.#limit) {
      this.#overflowed = true;
      this.#chunks.length = 0;
      return false;
    }
    this.#chunks.push(b);
    this.#bytes += b.length;
    return true;
  }
  text(): string {
    return Buffer.concat(this.#chunks).toString('utf8');
  }
}

/**
 * Splits bytes into lines (without the newline or a trailing \r) for stream(). A line longer
 * than `maxLineBytes`, or more than `maxQueuedBytes` of lines handed to `onLine` that the caller
 * has not released yet, makes `push` return the problem; nothing more is split after that.
 */
export class BoundedLineSplitter {
  readonly #decoder = new StringDecoder('utf8');
  readonly #maxLineBytes: number;
  readonly #onLine: (line: string) => void;
  #rest = '';
  #failed = false;
  constructor(maxLineBytes: number, onLine: (line: string) => void) {
    this.#maxLineBytes = maxLineBytes;
    this.#onLine = onLine;
  }
  /** undefined while within bounds; else which bound was crossed. */
  push(chunk: Buffer | string): 'a stdout line' | undefined {
    if (this.#failed) return undefined;
    this.#rest += typeof chunk === 'string' ? chunk : this.#decoder.write(chunk);
    let i: number;
    while ((i = this.#rest.indexOf('\n')) >= 0) {
      const line = this.#rest.slice(0, i).replace(/\r$/, '');
      this.#rest = this.#rest.slice(i + 1);
      if (Buffer.byteLength(line) > this.#maxLineBytes) return this.#fail();
      this.#onLine(line);
    }
    // A partial line cannot be longer than the limit either (a flood without newlines).
    if (this.#rest.length > this.#maxLineBytes || Buffer.byteLength(this.#rest) > this.#maxLineBytes)
      return this.#fail();
    return undefined;
  }
  #fail(): 'a stdout line' {
    this.#failed = true;
    this.#rest = '';
    return 'a stdout line';
  }
  /** At the end of the output: the last line if it had no newline. */
  flush(): void {
    if (this.#failed) return;
    this.#rest += this.#decoder.end();
    if (this.#rest !== '') this.#onLine(this.#rest);
    this.#rest = '';
  }
}

/** An async line queue for stream(): push lines, end(); iterate with for await. Tracks unread bytes. */
export class LineQueue implements AsyncIterable<string> {
  readonly #lines: string[] = [];
  #bytes = 0;
  #ended = false;
  #wake: (() => void) | undefined;
  /** Bytes of lines pushed and not yet handed out. */
  get unreadBytes(): number {
    return this.#bytes;
  }
  push(line: string): void {
    if (this.#ended) return;
    this.#lines.push(line);
    this.#bytes += Buffer.byteLength(line);
    this.#notify();
  }
  /** End the lines; `discard` drops what was not read yet (after a limit was crossed). */
  end(discard = false): void {
    this.#ended = true;
    if (discard) {
      this.#lines.length = 0;
      this.#bytes = 0;
    }
    this.#notify();
  }
  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    for (;;) {
      const line = this.#lines.shift();
      if (line !== undefined) {
        this.#bytes -= Buffer.byteLength(line);
        yield line;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }
}
