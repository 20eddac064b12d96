/** Mount points under a directory, unmounting them, and removing a directory only once nothing is mounted in it. */
import { existsSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { run } from './process.ts';

/** Mount points at or below dir (from /proc/self/mountinfo), deepest first. */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const points: string[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const mp = fields[4];
    if (mp === undefined) continue;
    const decoded = mp.replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (decoded === dir || decoded.startsWith(prefix)) points.push(decoded);
  }
  return points.sort((a, b) => b.length - a.length);
}

/** Unmount everything at or below dir (lazy unmount as a last resort). */
export async function unmountAllUnder(dir: string): Promise<void> {
  for (let round = 0; round < 5; round++) {
    const points = mountsUnder(dir);
    if (points.length === 0) return;
    for (const p of points) {
      const r = await run(['umount', p], { allowExit: true });
      if (r.exitCode !== 0) await run(['umount', '-l', p], { allowExit: true });
    }
  }
}

/**
 * rm -rf of dir, refused while anything is mounted at or below it: a recursive remove walks into a
 * bind mount and empties its source (a cache bind-mounted into a chroot would be lost). Unmounts
 * first, then checks /proc/self/mountinfo again (dir resolved: mountinfo has real paths).
 */
export async function removeUnmounted(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  const real = realpathSync(dir);
  await unmountAllUnder(real);
  const left = mountsUnder(real);
  if (left.length > 0) throw new Error(`not removing ${dir}: still mounted below it: ${left.join(', ')}`);
  rmSync(real, { recursive: true, force: true });
}
