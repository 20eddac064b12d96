/** Mount points under a directory, and unmounting them (node run dirs, image rootfs builds). */
import { readFileSync } from 'node:fs';
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
