import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processStartTime } from './lock.ts';
import { crashDaemon, findProcesses, isOurs, recordOf, run, RunError, startDaemon, stopDaemon } from './process.ts';
import { waitFor } from './wait.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'bp-process-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const alive = (pid: number): boolean => processStartTime(pid) !== undefined;

describe('run', () => {
  it('returns output, passes input, and rejects a non-zero exit unless allowed', async () => {
    expect(await run(['sh', '-c', 'cat; echo err >&2', 'x'], { input: 'in' })).toEqual({
      exitCode: 0,
      stdout: 'in',
      stderr: 'err\n',
    });
    const e = await run(['sh', '-c', 'echo oops >&2; exit 3']).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(RunError);
    expect((e as RunError).result.exitCode).toBe(3);
    expect((e as RunError).message).toContain('oops');
    expect((await run(['sh', '-c', 'exit 3'], { allowExit: true })).exitCode).toBe(3);
    expect((await run(['sh', '-c', 'exit 1'], { allowExit: [1] })).exitCode).toBe(1);
    await expect(run(['sh', '-c', 'exit 2'], { allowExit: [1] })).rejects.toBeInstanceOf(RunError);
  });

  it('a timeout kills the command and rejects, even with allowExit', async () => {
    const t0 = Date.now();
    const e = (await run(['sleep', '30'], { timeoutMs: 200, allowExit: true }).catch(
      (err: unknown) => err,
    )) as RunError;
    expect(e).toBeInstanceOf(RunError);
    expect(e.timedOut).toBe(true);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('output beyond maxOutput kills the command and rejects', async () => {
    const e = (await run(['sh', '-c', 'yes | head -c 100000; sleep 30'], { maxOutput: 1000, allowExit: true }).catch(
      (err: unknown) => err,
    )) as RunError;
    expect(e.outputLimit).toBe(true);
    expect(e.result.stdout.length).toBeLessThanOrEqual(1000);
  });

  it('a missing binary rejects with the spawn error', async () => {
    await expect(run(['/nonexistent/binary'])).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('daemons', () => {
  it('stopDaemon signals the whole group and waits until every member is gone', async () => {
    const marker = path.join(dir, 'group');
    // The daemon forks a child that ignores SIGTERM: stop must wait for it and SIGKILL it.
    const d = await startDaemon(
      'sh',
      ['sh', '-c', `(trap '' TERM; sleep 60) & wait`, marker],
      path.join(dir, 'group.log'),
      { marker },
    );
    const child = await waitFor('the forked child', 5000, () =>
      findProcesses(['sleep 60']).find((p) => readPgid(p.pid) === d.pid && p.pid !== d.pid),
    );
    expect(await stopDaemon(d.record, 300)).toBe(true);
    expect(alive(d.pid)).toBe(false);
    expect(alive(child.pid)).toBe(false);
    expect(await stopDaemon(d.record)).toBe(false); // gone: nothing to do
  });

  it('never signals a process that is not the recorded one', async () => {
    const marker = path.join(dir, 'identity');
    const daemon = await startDaemon('sh', ['sh', '-c', 'sleep 60', marker], path.join(dir, 'identity.log'), {
      marker,
    });
    expect(isOurs(daemon.record)).toBe(true);
    expect(await stopDaemon({ ...daemon.record, start: '1' })).toBe(false); // reused pid: other start time
    expect(await stopDaemon({ ...daemon.record, marker: '/not/in/its/command/line' })).toBe(false);
    expect(alive(daemon.pid)).toBe(true);
    expect(recordOf(daemon.pid, 'sh', marker)).toMatchObject({ pid: daemon.pid, start: daemon.record.start });
    expect(recordOf(daemon.pid, 'sh', '/elsewhere')).toBeUndefined();
    await daemon.stop();
    expect(alive(daemon.pid)).toBe(false);
  });

  it('crashDaemon kills the daemon alone; its group lives on', async () => {
    const marker = path.join(dir, 'crash');
    const d = await startDaemon('sh', ['sh', '-c', 'sleep 60 & wait', marker], path.join(dir, 'crash.log'), { marker });
    const child = await waitFor('the forked child', 5000, () =>
      findProcesses(['sleep 60']).find((p) => readPgid(p.pid) === d.pid && p.pid !== d.pid),
    );
    await crashDaemon(d.record);
    expect(alive(d.pid)).toBe(false);
    expect(alive(child.pid)).toBe(true);
    process.kill(-d.pid, 'SIGKILL');
  });

  it('writes the output to the log and passes it to onOutput', async () => {
    const marker = path.join(dir, 'output');
    const seen: string[] = [];
    const d = await startDaemon('sh', ['sh', '-c', 'echo out; echo err >&2', marker], path.join(dir, 'output.log'), {
      marker,
      onOutput: (c) => seen.push(c),
    });
    expect(await d.exited).toEqual({ code: 0, signal: null });
    expect(seen.join('')).toMatch(/out/);
    expect(seen.join('')).toMatch(/err/);
    expect(await readFile(path.join(dir, 'output.log'), 'utf8')).toMatch(/out[\s\S]*err|err[\s\S]*out/);
  });
});

function readPgid(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
  } catch {
    return undefined;
  }
}
