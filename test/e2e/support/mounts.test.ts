import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { mountsUnder, removeUnmounted } from './mounts.ts';
import { run } from './process.ts';

const isRoot = process.getuid?.() === 0;
const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) {
    await run(['umount', '-R', d], { allowExit: true });
    if (mountsUnder(d).length === 0) rmSync(d, { recursive: true, force: true });
  }
});

describe('removeUnmounted', () => {
  it('removes a plain directory tree, and a missing one is no error', async () => {
    const d = mkdtempSync(path.join(os.tmpdir(), 'rm-unmounted-'));
    dirs.push(d);
    mkdirSync(path.join(d, 'a', 'b'), { recursive: true });
    writeFileSync(path.join(d, 'a', 'b', 'f'), 'x');
    await removeUnmounted(d);
    expect(existsSync(d)).toBe(false);
    await expect(removeUnmounted(d)).resolves.toBeUndefined();
  });

  it.skipIf(!isRoot)('unmounts a bind mount inside before removing: the bind source keeps its files', async () => {
    const source = mkdtempSync(path.join(os.tmpdir(), 'rm-unmounted-src-'));
    const tree = mkdtempSync(path.join(os.tmpdir(), 'rm-unmounted-tree-'));
    dirs.push(tree, source);
    writeFileSync(path.join(source, 'cached.deb'), 'keep me');
    const point = path.join(tree, 'var', 'cache', 'apt', 'archives');
    mkdirSync(point, { recursive: true });
    await run(['mount', '--bind', source, point]);
    expect(mountsUnder(tree)).toEqual([point]);
    await removeUnmounted(tree);
    expect(existsSync(tree)).toBe(false);
    expect(readFileSync(path.join(source, 'cached.deb'), 'utf8')).toBe('keep me');
  });
});
