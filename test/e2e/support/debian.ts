/**
 * Debian packages: the one place the test tooling calls apt-get and apt-cache (install what a test
 * needs, a package's candidate version, download a .deb for an image). Installs are idempotent (an
 * installed package is left alone), safe when several callers install at once (waits for the dpkg
 * lock), and `apt-get update` runs only when an install or download fails (stale or empty package
 * lists on a fresh machine).
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { run, RunError } from './process.ts';

const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
const LOCK_WAIT = ['-o', 'DPkg::Lock::Timeout=900'];

export async function isDebianPackageInstalled(pkg: string): Promise<boolean> {
  try {
    const { stdout } = await run(['dpkg-query', '-W', '-f=${Status}', pkg]);
    return stdout.includes('install ok installed');
  } catch {
    return false;
  }
}

async function aptGet(args: readonly string[]): Promise<void> {
  try {
    await run(['apt-get', ...LOCK_WAIT, ...args], { env: APT_ENV, maxOutput: 64 * 1024 * 1024, timeoutMs: 1_800_000 });
  } catch (err) {
    const stderr = err instanceof RunError ? err.result.stderr : '';
    throw new Error(`apt-get ${args.join(' ')} failed:\n${stderr.slice(-2000)}`, { cause: err });
  }
}

export async function ensureDebianPackages(packages: readonly string[]): Promise<void> {
  const installed = await Promise.all(packages.map(isDebianPackageInstalled));
  const missing = packages.filter((_, i) => !installed[i]);
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0)
    throw new Error(`Debian packages missing and not root to install them: ${missing.join(' ')}`);
  const install = ['install', '-y', '-q', '--no-install-recommends', ...missing];
  try {
    await aptGet(install);
  } catch {
    await aptGet(['update', '-q']);
    await aptGet(install);
  }
}

/** Version of a Debian package as apt would install it (for cache keys). */
export async function debianCandidateVersion(pkg: string): Promise<string> {
  const r = await run(['apt-cache', 'policy', pkg]);
  const v = /Candidate:\s*(\S+)/.exec(r.stdout)?.[1];
  if (!v || v === '(none)') throw new Error(`no candidate version for ${pkg}; run apt-get update`);
  return v;
}

/** `apt-get download` of one package into dir (package lists refreshed once if it fails); returns the .deb's path. */
export async function downloadDebianPackage(pkg: string, dir: string): Promise<string> {
  const r = await run(['apt-get', 'download', pkg], { cwd: dir, allowExit: true });
  if (r.exitCode !== 0) {
    await run(['apt-get', 'update', '-o', 'DPkg::Lock::Timeout=900']);
    await run(['apt-get', 'download', pkg], { cwd: dir });
  }
  const deb = readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
  return join(dir, deb);
}
