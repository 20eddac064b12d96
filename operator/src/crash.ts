/**
 * Crash loudly instead of running half-broken (like controller-runtime): an unhandled promise
 * rejection or an uncaught exception is logged at fatal level and the process exits 1, so the
 * kubelet restarts it and the next leader (or this one) adopts running pulls.
 */
import type { Logger } from './log.ts';

export function installCrashHandlers(
  logger: Logger,
  exit: (code: number) => never = (code) => process.exit(code),
): void {
  const crash =
    (kind: 'unhandledRejection' | 'uncaughtException') =>
    (err: unknown): void => {
      try {
        logger.fatal({ kind, err }, `${kind}: exiting`);
      } finally {
        exit(1);
      }
    };
  process.on('unhandledRejection', crash('unhandledRejection'));
  process.on('uncaughtException', crash('uncaughtException'));
}
