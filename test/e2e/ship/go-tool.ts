// Upstream Go tools the tests run for real (the kstatus checker, prometheus and promtool), built from
// the Go module proxy through a pinned wrapper module (go.mod + go.sum beside this file) and cached
// in <cache>/bin/<name>-<version>/ (<cache> = ../support/cache.ts's root), like ./helm.ts builds helm.
// The cache is keyed by the wrapper module's content (go.mod, go.sum, *.go) and the link flags, so
// a changed pin rebuilds. Concurrent callers serialise on a lock file (../support/lock.ts).
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { cacheRoot } from '../support/cache.ts';
import { withLock } from '../support/lock.ts';
import { run } from '../support/process.ts';
import { goBinary } from '../support/paths.ts';

export interface GoTool {
  /** Directory name in the cache: <cache>/bin/<name>-<version>. */
  readonly name: string;
  readonly version: string;
  /** The wrapper module's directory (go.mod, go.sum, optional *.go of a tiny main package). */
  readonly wrapperDir: string;
  /** Packages to build, e.g. ['github.com/prometheus/prometheus/cmd/promtool'] or ['.']. */
  readonly packages: readonly string[];
  /** The binaries `go build -o <dir>/` writes (the last element of each package path; '.' = the module's last element). */
  readonly binaries: readonly string[];
  readonly ldflags?: string;
  /** Extra build tags. */
  readonly tags?: readonly string[];
  /** Proves a built binary works (e.g. `--version`); throws or returns false otherwise. */
  readonly check?: (dir: string) => Promise<boolean>;
}

async function wrapperHash(tool: GoTool): Promise<string> {
  const h = createHash('sha256');
  const files = (await readdir(tool.wrapperDir))
    .filter((f) => f === 'go.mod' || f === 'go.sum' || f.endsWith('.go'))
    .sort();
  for (const f of files)
    h.update(f)
      .update('\0')
      .update(await readFile(join(tool.wrapperDir, f)))
      .update('\0');
  h.update(JSON.stringify({ packages: tool.packages, ldflags: tool.ldflags ?? '', tags: tool.tags ?? [] }));
  return h.digest('hex');
}

/** Returns the directory holding the tool's binaries, building them when missing or stale. */
export async function ensureGoTool(tool: GoTool, options: { log?: (line: string) => void } = {}): Promise<string> {
  const dir = join(cacheRoot(), 'bin', `${tool.name}-${tool.version}`);
  const stamp = join(dir, 'build.json');
  const want = JSON.stringify({ version: tool.version, wrapper: await wrapperHash(tool) });
  const ok = async (): Promise<boolean> => {
    if (!tool.binaries.every((b) => existsSync(join(dir, b)))) return false;
    if ((await readFile(stamp, 'utf8').catch(() => '')) !== want) return false;
    return tool.check ? tool.check(dir) : true;
  };
  if (await ok()) return dir;
  await mkdir(dirname(dir), { recursive: true });
  return withLock(
    `${dir}.build.lock`,
    async () => {
      if (await ok()) return dir;
      const go = goBinary();
      const tmp = `${dir}.tmp-${process.pid}`;
      await rm(tmp, { recursive: true, force: true });
      await mkdir(tmp, { recursive: true });
      const started = Date.now();
      options.log?.(`building ${tool.name} ${tool.version} from the Go module proxy into ${dir}`);
      const res = await run(
        [
          go,
          'build',
          '-trimpath',
          ...(tool.ldflags ? ['-ldflags', tool.ldflags] : []),
          ...(tool.tags?.length ? ['-tags', tool.tags.join(',')] : []),
          '-o',
          `${tmp}/`,
          ...tool.packages,
        ],
        {
          allowExit: true,
          cwd: tool.wrapperDir,
          env: { ...process.env, GOFLAGS: '-buildvcs=false -mod=readonly', GOTOOLCHAIN: 'local', CGO_ENABLED: '0' },
          timeoutMs: 60 * 60_000,
        },
      );
      if (res.exitCode !== 0) {
        await rm(tmp, { recursive: true, force: true });
        throw new Error(
          `go build ${tool.name} ${tool.version} failed (exit ${res.exitCode}):\n${res.stderr.slice(-8000)}`,
        );
      }
      await writeFile(join(tmp, 'build.json'), want);
      await rm(dir, { recursive: true, force: true });
      await rename(tmp, dir);
      options.log?.(`built ${tool.name} ${tool.version} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      if (!(await ok())) throw new Error(`built ${tool.name} ${tool.version} into ${dir} but it does not work`);
      return dir;
    },
    { timeoutMs: 60 * 60_000, onWait: (lock) => options.log?.(`waiting for another ${tool.name} build (${lock})`) },
  );
}

/** The version of `modulePath` the wrapper module's go.mod requires (the pin, read where it is stated). */
export function requiredVersion(goMod: string, modulePath: string): string {
  const escaped = modulePath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  const m = new RegExp(`^\\s*(?:require\\s+)?${escaped}\\s+(v\\S+)`, 'm').exec(goMod);
  if (!m?.[1]) throw new Error(`go.mod requires no ${modulePath}`);
  return m[1];
}
