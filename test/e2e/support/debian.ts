/**
 * Debian packages a test needs, installed when missing: the one place the test tooling calls
 * apt-get. Idempotent (an installed package is left alone), safe when several callers install
 * at once (waits for the dpkg lock), and `apt-get update` runs only when an install fails
 * (stale or empty package lists on a fresh machine).
 */
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
  if (process.getuid?.() !== 0) throw new Error(`Debian packages missing and not root to install them: ${missing.join(' ')}`);
  const install = ['install', '-y', '-q', '--no-install-recommends', ...missing];
  try {
    await aptGet(install);
  } catch {
    await aptGet(['update', '-q']);
    await aptGet(install);
  }
}
