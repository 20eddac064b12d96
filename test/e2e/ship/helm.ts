// A real `helm` for the chart tests. Debian 12 has no helm package, so it is built from the Go
// module proxy through the pinned wrapper module in ./helm-go (go.mod + go.sum, `tool` directive),
// cached by version in <cache>/bin/helm-<version>/helm, where <cache> is ../support/cache.ts's root
// ($BLOCKPULL_CACHE_DIR or ~/.cache/blockpull-operator). Concurrent callers (several processes) serialise on a lock file
// (../support/lock.ts); a lock left by a dead process is taken over.
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheRoot } from '../support/cache.ts';
import { withLock } from '../support/lock.ts';
import { goBinary } from '../support/paths.ts';
import { run } from '../support/process.ts';

export const HELM_VERSION = 'v3.22.0';
const wrapperDir = join(dirname(fileURLToPath(import.meta.url)), 'helm-go');

export function helmPath(version = HELM_VERSION): string {
  return join(cacheRoot(), 'bin', `helm-${version}`, 'helm');
}

/**
 * The link flags of helm's own Makefile: its version, and the Kubernetes version `helm template`
 * and `helm lint` assume without a cluster (major = client-go major + 1, minor = client-go minor).
 */
async function helmLdflags(): Promise<string> {
  const goMod = await readFile(join(wrapperDir, 'go.mod'), 'utf8');
  const m = /^\s*k8s\.io\/client-go v(\d+)\.(\d+)\.\d+/m.exec(goMod);
  if (!m?.[1] || !m[2]) throw new Error(`helm-go/go.mod: no k8s.io/client-go requirement`);
  const major = String(Number(m[1]) + 1);
  const minor = m[2];
  return [
    '-s',
    '-w',
    `-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}`,
    `-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${major}`,
    `-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor}`,
    `-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${major}`,
    `-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}`,
  ].join(' ');
}

/** Returns the path of a working helm binary of the pinned version, building it when missing. */
export async function ensureHelm(options: { log?: (line: string) => void } = {}): Promise<string> {
  const target = helmPath();
  const ldflags = await helmLdflags();
  const stamp = join(dirname(target), 'build.json');
  const ok = async (): Promise<boolean> => {
    if (!existsSync(target)) return false;
    const built = await readFile(stamp, 'utf8').catch(() => '');
    if (built !== JSON.stringify({ version: HELM_VERSION, ldflags })) return false;
    const v = await run([target, 'version', '--short'], { allowExit: true, timeoutMs: 30_000 });
    return v.exitCode === 0 && v.stdout.startsWith(HELM_VERSION);
  };
  if (await ok()) return target;
  // A lock file beside the version's directory (not `<dir>.lock`: older runs used that name for a lock directory).
  await mkdir(dirname(dirname(target)), { recursive: true });
  return withLock(
    `${dirname(target)}.build.lock`,
    async () => {
      if (await ok()) return target;
      const go = goBinary();
      await mkdir(dirname(target), { recursive: true });
      const tmp = `${target}.tmp-${process.pid}`;
      const started = Date.now();
      options.log?.(`building helm ${HELM_VERSION} from the Go module proxy into ${target}`);
      const res = await run([go, 'build', '-trimpath', '-ldflags', ldflags, '-o', tmp, 'helm.sh/helm/v3/cmd/helm'], {
        allowExit: true,
        cwd: wrapperDir,
        env: { ...process.env, GOFLAGS: '-buildvcs=false -mod=readonly', GOTOOLCHAIN: 'local', CGO_ENABLED: '0' },
        timeoutMs: 30 * 60_000,
      });
      if (res.exitCode !== 0) {
        await rm(tmp, { force: true });
        throw new Error(`go build helm ${HELM_VERSION} failed (exit ${res.exitCode}):\n${res.stderr}`);
      }
      await rename(tmp, target);
      await writeFile(stamp, JSON.stringify({ version: HELM_VERSION, ldflags }));
      options.log?.(`built helm ${HELM_VERSION} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      if (!(await ok()))
        throw new Error(`built ${target} but \`helm version --short\` does not report ${HELM_VERSION}`);
      return target;
    },
    { timeoutMs: 30 * 60_000, onWait: (lock) => options.log?.(`waiting for another helm build (${lock})`) },
  );
}

// `node test/e2e/ship/helm.ts` builds (or finds) helm and prints its path.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const path = await ensureHelm({ log: (l) => console.error(l) });
  console.log(path);
}
