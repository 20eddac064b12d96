/** Where things are: the repository root, the project's Node, and the Go toolchain. */
import { accessSync, constants } from 'node:fs';
import path from 'node:path';

export const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..', '..');
/** The project's Node 24 (the `node` devDependency). */
export const NODE_BIN = path.join(REPO_ROOT, 'node_modules', '.bin', 'node');

/** The Go toolchain: $BLOCKPULL_GO, else `go` on PATH, else /usr/local/go/bin/go. */
export function goBinary(env: NodeJS.ProcessEnv = process.env): string {
  const candidates = [
    env['BLOCKPULL_GO'],
    ...(env['PATH'] ?? '')
      .split(':')
      .filter(Boolean)
      .map((d) => path.join(d, 'go')),
    '/usr/local/go/bin/go',
  ];
  for (const c of candidates) {
    if (!c) continue;
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  throw new Error('no Go toolchain found: install Go (>= 1.24) at /usr/local/go or set BLOCKPULL_GO to the go binary');
}
