/**
 * Generates the KubeVirt wrapper Go module (go.mod + go.sum) that builds KubeVirt's binaries.
 *
 *   node test/e2e/kubevirt/gen-go-mod.ts --kubevirt v1.7.0 [--out dir]
 *
 * Without --out it rewrites the committed module in test/e2e/kubevirt/go/, which pins the default
 * version (binaries.ts reads it). binaries.ts uses the same function for BLOCKPULL_KUBEVIRT_VERSION.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { normalizeVersion } from '../cluster/go-mod.ts';
import { downloadModule, runGo } from '../cluster/gen-go-mod.ts';
import { KUBEVIRT_MODULE, renderKubevirtGoMod } from './go-mod.ts';

export const KUBEVIRT_GO_MODULE_DIR = path.join(import.meta.dirname, 'go');

/** Writes <dir>/go.mod for KubeVirt `version` and runs `go mod tidy` (which writes go.sum). */
export async function writeKubevirtModule(dir: string, version: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const info = await downloadModule(KUBEVIRT_MODULE, normalizeVersion(version, 'KubeVirt'), dir);
  await writeFile(path.join(dir, 'go.mod'), renderKubevirtGoMod(version, await readFile(info.GoMod, 'utf8')));
  await runGo(['mod', 'tidy'], dir);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { kubevirt: { type: 'string' }, out: { type: 'string' } } });
  if (!values.kubevirt) throw new Error('usage: gen-go-mod.ts --kubevirt vX.Y.Z [--out dir]');
  const out = values.out ?? KUBEVIRT_GO_MODULE_DIR;
  await writeKubevirtModule(out, values.kubevirt);
  process.stdout.write(`wrote ${out} (KubeVirt ${normalizeVersion(values.kubevirt, 'KubeVirt')})\n`);
}

if (import.meta.main) {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
