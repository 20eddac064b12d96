import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tail } from './tail.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'blockpull-tail-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('tail', () => {
  it('returns the last lines, a trailing newline not counting as a line', async () => {
    const file = path.join(dir, 'x.log');
    await writeFile(file, Array.from({ length: 50 }, (_, i) => `line ${i + 1}`).join('\n') + '\n');
    expect(tail(file, 3)).toBe('line 48\nline 49\nline 50');
    expect(tail(file).split('\n')).toHaveLength(30);
    expect(tail(file, 100).split('\n')).toHaveLength(50);
  });

  it('says so when there is no log', () => {
    expect(tail(path.join(dir, 'missing.log'))).toBe('(no log)');
  });
});
