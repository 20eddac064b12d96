/**
 * Debian packages: the one place the test tooling calls apt-get and apt-cache (install what a test
 * needs, a package's candidate version, download a .deb for an image). Installs are idempotent (an
 * installed package is left alone), safe when several callers install at once (waits for the dpkg
 * lock), and `apt-get update` runs only when an install or download fails (stale or empty package
 * lists on a fresh machine). Source packages of another suite (downloadDebianSource) use a private apt
 * state, so the host's own package lists stay on its suite.
 */
import { readdirSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
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

/** Where a private apt state keeps its files (lists, cache, sources), under stateDir. */
export interface PrivateApt {
  /** Options that point apt-get at the private state instead of the host's. */
  readonly options: readonly string[];
  readonly sourcesList: string;
}

/**
 * apt-get options for a private apt state under stateDir: its own sources list (and no
 * sources.list.d), package lists and archive cache; dpkg's status stays the host's (nothing is
 * installed from it). Downloads run as root: the state is in root's cache, which `_apt` cannot read.
 */
export function privateApt(stateDir: string): PrivateApt {
  const sourcesList = join(stateDir, 'sources.list');
  return {
    sourcesList,
    options: [
      '-o',
      `Dir::Etc::SourceList=${sourcesList}`,
      '-o',
      `Dir::Etc::SourceParts=${join(stateDir, 'sources.list.d')}`,
      '-o',
      `Dir::State::Lists=${join(stateDir, 'lists')}`,
      '-o',
      `Dir::Cache=${join(stateDir, 'cache')}`,
      '-o',
      'APT::Sandbox::User=root',
    ],
  };
}

/** A one-line deb-src entry for suite's main component, signed by Debian's archive keyring. */
export function debSrcLine(mirror: string, suite: string): string {
  return `deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror} ${suite} main\n`;
}

export interface DebianSourceOptions {
  /** The Debian suite to take the source package from (e.g. trixie), whatever the host runs. */
  readonly suite: string;
  /** The archive (the host's own mirror: hostDebianSource().mirror). */
  readonly mirror: string;
  /** The private apt state for that suite (kept between calls: `apt-get update` runs when it has no lists). */
  readonly stateDir: string;
  /** Where the source package's files (.dsc, .orig.tar.*, .debian.tar.*) are written. */
  readonly dir: string;
}

/**
 * `apt-get source --download-only pkg=version` from another suite, through a private apt state
 * (privateApt): the host's sources and lists are not touched. Returns the .dsc's path.
 */
export async function downloadDebianSource(pkg: string, version: string, o: DebianSourceOptions): Promise<string> {
  const apt = privateApt(o.stateDir);
  for (const d of ['lists/partial', 'cache/archives/partial', 'sources.list.d'])
    await mkdir(join(o.stateDir, d), { recursive: true });
  await mkdir(o.dir, { recursive: true });
  await writeFile(apt.sourcesList, debSrcLine(o.mirror, o.suite));
  const update = (): Promise<void> => aptGet([...apt.options, 'update', '-q']);
  if ((await readdir(join(o.stateDir, 'lists'))).every((f) => f === 'partial' || f === 'lock')) await update();
  const source = [...apt.options, 'source', '--download-only', '-q', `${pkg}=${version}`];
  try {
    await run(['apt-get', ...source], { cwd: o.dir, env: APT_ENV, timeoutMs: 600_000 });
  } catch {
    await update(); // lists from an older run may not name this version any more
    await run(['apt-get', ...source], { cwd: o.dir, env: APT_ENV, timeoutMs: 600_000 });
  }
  const dsc = (await readdir(o.dir)).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.dsc'));
  if (!dsc) throw new Error(`apt-get source ${pkg}=${version} (${o.suite}) produced no .dsc in ${o.dir}`);
  return join(o.dir, dsc);
}
