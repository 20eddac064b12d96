/**
 * Generates the KubeVirt wrapper Go module (go.mod + go.sum) that builds KubeVirt's binaries.
 *
 *   node test/e2e/kubevirt/gen-go-mod.ts --kubevirt v1.7.0 [--out dir]
 *   node test/e2e/kubevirt/gen-go-mod.ts --kubevirt v1.8.4 --out test/e2e/kubevirt/go-v1.8
 *
 * Without --out it rewrites the committed module in test/e2e/kubevirt/go/, which pins the default
 * version; go-v<major.minor>/ pin the other versions the test bed builds (binaries.ts reads them all).
 * binaries.ts uses the same function for a BLOCKPULL_KUBEVIRT_VERSION that no committed module pins.
 * A version whose go.mod requires libguestfs.org/libnbd (1.8+) gets the bindings from libnbd.ts in
 * <dir>/libnbd/golang first (`go mod tidy` reads that module); in the repo that copy is removed again.
 */
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { normalizeVersion } from '../cluster/go-mod.ts';
import { downloadModule, runGo } from '../cluster/gen-go-mod.ts';
import { KUBEVIRT_MODULE, LIBNBD_REPLACE_DIR, needsLibnbd, renderKubevirtGoMod } from './go-mod.ts';
import { ensureLibnbd } from './libnbd.ts';

/** The committed wrapper module of the default KubeVirt version. */
export const KUBEVIRT_GO_MODULE_DIR = path.join(import.meta.dirname, 'go');

/**
 * When the wrapper module in `dir` replaces libnbd with local bindings, copies them there (from
 * libnbd.ts's cache) and returns the environment its go commands need (pkg-config finds the static
 * libnbd); {} otherwise.
 */
export async function placeLibnbd(
  dir: string,
  log?: (m: string) => void,
  env?: NodeJS.ProcessEnv,
): Promise<NodeJS.ProcessEnv> {
  if (!needsLibnbd(await readFile(path.join(dir, 'go.mod'), 'utf8'))) return {};
  const nbd = await ensureLibnbd({ ...(log ? { log } : {}), ...(env ? { env } : {}) });
  const target = path.join(dir, LIBNBD_REPLACE_DIR);
  await rm(target, { recursive: true, force: true });
  await mkdir(path.dirname(target), { recursive: true });
  await cp(nbd.goBindings, target, { recursive: true });
  return { PKG_CONFIG_PATH: nbd.pkgConfigDir };
}

/** Writes <dir>/go.mod for KubeVirt `version` and runs `go mod tidy` (which writes go.sum). */
export async function writeKubevirtModule(dir: string, version: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const info = await downloadModule(KUBEVIRT_MODULE, normalizeVersion(version, 'KubeVirt'), dir);
  await writeFile(path.join(dir, 'go.mod'), renderKubevirtGoMod(version, await readFile(info.GoMod, 'utf8')));
  await placeLibnbd(dir);
  await runGo(['mod', 'tidy'], dir);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { kubevirt: { type: 'string' }, out: { type: 'string' } } });
  if (!values.kubevirt) throw new Error('usage: gen-go-mod.ts --kubevirt vX.Y.Z [--out dir]');
  const out = values.out ?? KUBEVIRT_GO_MODULE_DIR;
  await writeKubevirtModule(out, values.kubevirt);
  // Not committed: binaries.ts copies the bindings next to the go.mod it builds from.
  await rm(path.join(out, path.dirname(LIBNBD_REPLACE_DIR)), { recursive: true, force: true });
  process.stdout.write(`wrote ${out} (KubeVirt ${normalizeVersion(values.kubevirt, 'KubeVirt')})\n`);
}

if (import.meta.main) {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
