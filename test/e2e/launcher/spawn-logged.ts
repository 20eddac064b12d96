/**
 * Start a daemon detached (its own process group, so stop() can signal the group) with stdout and
 * stderr appended to a log file; resolves once the process exists (rejects if it cannot be spawned,
 * e.g. the binary is missing). The caller owns the child: it must stop it.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { open } from 'node:fs/promises';

export async function spawnLogged(
  command: string,
  args: readonly string[],
  logPath: string,
  options: Omit<SpawnOptions, 'detached' | 'stdio'> = {},
): Promise<ChildProcess> {
  const log = await open(logPath, 'a');
  try {
    const child = spawn(command, args, { ...options, detached: true, stdio: ['ignore', log.fd, log.fd] });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    return child;
  } finally {
    await log.close();
  }
}
