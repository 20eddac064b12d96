/**
 * installCrashHandlers in a real child Node process: an unhandled rejection and an uncaught
 * exception each end it with exit status 1 and one fatal pino line naming the error.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const crashModule = fileURLToPath(new URL('./crash.ts', import.meta.url));
const logModule = fileURLToPath(new URL('./log.ts', import.meta.url));

function runChild(trigger: string): { status: number | null; lines: Record<string, unknown>[]; stderr: string } {
  const script = `
    const { installCrashHandlers } = await import(${JSON.stringify(crashModule)});
    const { createLogger } = await import(${JSON.stringify(logModule)});
    installCrashHandlers(createLogger({ level: 'info' }));
    setTimeout(() => { console.log(JSON.stringify({ survived: true })); }, 300);
    ${trigger}
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
  const lines = r.stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { status: r.status, lines, stderr: r.stderr };
}

describe('installCrashHandlers (child process)', () => {
  it('an unhandled rejection: fatal log line, exit 1, nothing runs afterwards', () => {
    const r = runChild(`Promise.reject(new Error('lost promise'));`);
    expect(r.status, r.stderr).toBe(1);
    expect(r.lines).toHaveLength(1);
    expect(r.lines[0]).toMatchObject({ level: 'fatal', kind: 'unhandledRejection', err: { message: 'lost promise' } });
  });

  it('an uncaught exception: fatal log line, exit 1', () => {
    const r = runChild(`setTimeout(() => { throw new TypeError('boom in a timer'); }, 10);`);
    expect(r.status, r.stderr).toBe(1);
    expect(r.lines).toHaveLength(1);
    expect(r.lines[0]).toMatchObject({
      level: 'fatal',
      kind: 'uncaughtException',
      err: { type: 'TypeError', message: 'boom in a timer' },
    });
  });
});
