/**
 * Minimal QMP client: one unix socket connection, greeting + qmp_capabilities negotiation,
 * requests matched to responses by id, an event stream. Every message is validated with zod.
 */
import net from 'node:net';
import { z } from 'zod';

const greetingSchema = z.object({
  QMP: z.looseObject({ version: z.unknown(), capabilities: z.array(z.unknown()).optional() }),
});
const returnSchema = z.object({ return: z.unknown(), id: z.string().optional() });
const errorSchema = z.object({ error: z.object({ class: z.string(), desc: z.string() }), id: z.string().optional() });
const eventSchema = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }).optional(),
});

export interface QmpEvent {
  readonly event: string;
  readonly data: Readonly<Record<string, unknown>>;
  readonly timestamp?: { readonly seconds: number; readonly microseconds: number };
}

/** An error QEMU answered with ({"error": {"class", "desc"}}). */
export class QmpError extends Error {
  readonly errorClass: string;
  readonly command: string;
  constructor(command: string, errorClass: string, desc: string) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.name = 'QmpError';
    this.command = command;
    this.errorClass = errorClass;
  }
}

/** The connection failed or closed. */
export class QmpConnectionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QmpConnectionError';
  }
}

interface Pending {
  readonly command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
}

export class QmpClient {
  readonly socketPath: string;
  #socket: net.Socket;
  #buffer = '';
  #nextId = 1;
  #pending = new Map<string, Pending>();
  #listeners = new Set<(ev: QmpEvent) => void>();
  #closeListeners = new Set<(err?: Error) => void>();
  #greeting: ((msg: unknown) => void) | undefined;
  #closed = false;
  #closeError: Error | undefined;

  private constructor(socketPath: string, socket: net.Socket) {
    this.socketPath = socketPath;
    this.#socket = socket;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Connect, read the greeting, negotiate capabilities. */
  static async connect(socketPath: string, options: { timeoutMs?: number } = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    const socket = net.createConnection({ path: socketPath });
    const client = new QmpClient(socketPath, socket);
    const greeting = new Promise<unknown>((resolve, reject) => {
      const t = setTimeout(
        () => reject(new QmpConnectionError(`no QMP greeting on ${socketPath} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      client.#greeting = (msg) => {
        clearTimeout(t);
        resolve(msg);
      };
      socket.once('error', (err) => {
        clearTimeout(t);
        reject(new QmpConnectionError(`cannot connect to QMP socket ${socketPath}: ${err.message}`, { cause: err }));
      });
    });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => client.#onData(chunk));
    socket.on('error', (err) =>
      client.#onClose(new QmpConnectionError(`QMP socket ${socketPath}: ${err.message}`, { cause: err })),
    );
    socket.on('close', () => client.#onClose());
    try {
      const msg = await greeting;
      if (!greetingSchema.safeParse(msg).success)
        throw new QmpConnectionError(`unexpected QMP greeting: ${JSON.stringify(msg)}`);
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (line === '') continue;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch {
        this.#onClose(new QmpConnectionError(`invalid JSON from QMP: ${line.slice(0, 200)}`));
        this.#socket.destroy();
        return;
      }
      this.#dispatch(msg);
    }
  }

  #dispatch(msg: unknown): void {
    if (this.#greeting !== undefined) {
      const g = this.#greeting;
      this.#greeting = undefined;
      g(msg);
      return;
    }
    const ev = eventSchema.safeParse(msg);
    if (ev.success) {
      const e: QmpEvent = {
        event: ev.data.event,
        data: ev.data.data ?? {},
        ...(ev.data.timestamp === undefined ? {} : { timestamp: ev.data.timestamp }),
      };
      for (const l of this.#listeners) l(e);
      return;
    }
    const ret = returnSchema.safeParse(msg);
    const err = ret.success ? undefined : errorSchema.safeParse(msg);
    const id = ret.success ? ret.data.id : err?.success ? err.data.id : undefined;
    const pending = id === undefined ? undefined : this.#pending.get(id);
    if (pending === undefined || id === undefined) return; // a reply to nobody: ignore
    this.#pending.delete(id);
    if (ret.success) pending.resolve(ret.data.return);
    else if (err?.success) pending.reject(new QmpError(pending.command, err.data.error.class, err.data.error.desc));
  }

  #onClose(err?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    const e = err ?? new QmpConnectionError(`QMP connection ${this.socketPath} closed`);
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
    for (const l of this.#closeListeners) l(err);
  }

  /** Run a command; resolves with its "return" value, rejects with QmpError or QmpConnectionError. */
  execute(
    command: string,
    args?: Readonly<Record<string, unknown>>,
    options: { timeoutMs?: number } = {},
  ): Promise<unknown> {
    if (this.#closed)
      return Promise.reject(this.#closeError ?? new QmpConnectionError(`QMP connection ${this.socketPath} is closed`));
    const id = `bp-${this.#nextId++}`;
    const timeoutMs = options.timeoutMs ?? 30_000;
    return new Promise<unknown>((resolve, reject) => {
      const t = setTimeout(() => {
        this.#pending.delete(id);
        reject(new QmpConnectionError(`QMP ${command} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, {
        command,
        resolve: (v) => {
          clearTimeout(t);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      this.#socket.write(
        `${JSON.stringify({ execute: command, ...(args === undefined ? {} : { arguments: args }), id })}\n`,
      );
    });
  }

  onEvent(listener: (ev: QmpEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  onClose(listener: (err?: Error) => void): () => void {
    this.#closeListeners.add(listener);
    return () => this.#closeListeners.delete(listener);
  }

  close(): void {
    this.#socket.destroy();
    this.#onClose();
  }
}
