// Debian packages the ship tests need, installed idempotently (as root, like CI): a package
// already installed is left alone; otherwise `apt-get update` (once per process) and install.
import { run } from './helm.ts';

let updated = false;

export async function isInstalled(pkg: string): Promise<boolean> {
  const r = await run(['dpkg-query', '-W', '-f=${Status}', pkg], { timeoutMs: 30_000 });
  return r.exitCode === 0 && r.stdout.includes('install ok installed');
}

export async function ensureDebianPackages(packages: readonly string[]): Promise<void> {
  const missing: string[] = [];
  for (const p of packages) if (!(await isInstalled(p))) missing.push(p);
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`Debian packages missing and not root to install them: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const lock = ['-o', 'DPkg::Lock::Timeout=600'];
  if (!updated) {
    const u = await run(['apt-get', ...lock, 'update', '-q'], { env, timeoutMs: 900_000 });
    if (u.exitCode !== 0) throw new Error(`apt-get update failed:\n${u.stderr}`);
    updated = true;
  }
  const r = await run(['apt-get', ...lock, 'install', '-y', '-q', '--no-install-recommends', ...missing], { env, timeoutMs: 900_000 });
  if (r.exitCode !== 0) throw new Error(`apt-get install ${missing.join(' ')} failed:\n${r.stderr}`);
}
