import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { processStartTime, withLock } from './lock.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'blockpull-lock-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('withLock', () => {
  it('serializes holders and releases the file', async () => {
    const lock = path.join(dir, 'x.lock');
    const events: string[] = [];
    const holder = (name: string, ms: number) =>
      withLock(lock, async () => {
        events.push(`${name}+`);
        await sleep(ms);
        events.push(`${name}-`);
        return name;
      });
    const waits: string[] = [];
    const [a, b] = await Promise.all([
      holder('a', 300),
      sleep(50).then(() =>
        withLock(
          lock,
          () => {
            events.push('b+', 'b-');
            return Promise.resolve('b');
          },
          { onWait: (p) => waits.push(p) },
        ),
      ),
    ]);
    expect([a, b]).toEqual(['a', 'b']);
    expect(events).toEqual(['a+', 'a-', 'b+', 'b-']);
    expect(waits).toEqual([lock]);
    expect(existsSync(lock)).toBe(false);
  });

  it('takes over a lock whose owner died, and a torn lock file', async () => {
    const child = spawn(process.execPath, ['-e', '0']);
    const pid = child.pid ?? 0;
    const start = processStartTime(pid) ?? 'unknown';
    await new Promise((r) => child.on('close', r));
    expect(processStartTime(pid)).toBeUndefined();
    const lock = path.join(dir, 'dead.lock');
    await writeFile(lock, JSON.stringify({ pid, start }));
    expect(await withLock(lock, () => Promise.resolve('took it'), { timeoutMs: 5000 })).toBe('took it');
    await writeFile(lock, '{"pid":');
    expect(await withLock(lock, () => Promise.resolve('torn'), { timeoutMs: 5000 })).toBe('torn');
  });

  it('waits while the recorded owner lives, then times out', async () => {
    const lock = path.join(dir, 'live.lock');
    await writeFile(lock, JSON.stringify({ pid: process.pid, start: processStartTime(process.pid) }));
    await expect(withLock(lock, () => Promise.resolve('never'), { timeoutMs: 1500 })).rejects.toThrow(
      /timed out waiting for lock/,
    );
    expect(existsSync(lock)).toBe(true);
  });
});
