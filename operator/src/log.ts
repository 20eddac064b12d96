/**
 * pino JSON logger. One root logger per process; modules take child loggers
 * (`logger.child({ component: 'informer' })`), and everything about one BlockPull logs through
 * `forBlockPull(logger, ns, name)` so every line carries `blockpull`, `namespace` and `name`.
 */
import { pino, type Logger, type DestinationStream, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

export interface LoggerOptions {
  readonly level?: LevelWithSilent;
  /** Where lines go; stdout by default (tests pass a stream to inspect lines). */
  readonly destination?: DestinationStream;
  /** Fixed fields on every line. */
  readonly base?: Record<string, unknown>;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      level: options.level ?? 'info',
      base: { app: 'blockpull-operator', ...options.base },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        // "level":"info" instead of 30: readable by humans and log pipelines alike.
        level: (label) => ({ level: label }),
      },
      serializers: { err: pino.stdSerializers.err, error: pino.stdSerializers.err },
    },
    options.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}

/** The key a BlockPull is known by in logs, queues and events: "namespace/name". */
export function objectKey(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

/** A child logger bound to one BlockPull: `{ blockpull: 'ns/name', namespace, name }` on every line. */
export function forBlockPull(logger: Logger, namespace: string, name: string): Logger {
  return logger.child({ blockpull: objectKey(namespace, name), namespace, name });
}

/** Same, from a work-queue key "ns/name". */
export function forBlockPullKey(logger: Logger, key: string): Logger {
  const i = key.indexOf('/');
  if (i < 0) return logger.child({ blockpull: key, name: key });
  return forBlockPull(logger, key.slice(0, i), key.slice(i + 1));
}

/** The message of anything thrown, for logs and status: an Error's message, else its string form. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A logger that drops everything (unit tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
