// The real kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus/status: what Flux `wait: true`,
// kubectl apply-sets, kpt and cli-utils use to judge custom resources), as a tiny checker built from
// the Go module proxy through the pinned wrapper module ./kstatus-go (main.go reads a JSON array of
// objects on stdin and prints status.Compute's verdict for each).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ensureGoTool, requiredVersion, type GoTool } from './go-tool.ts';
import { run } from '../support/process.ts';

const wrapperDir = join(import.meta.dirname, 'kstatus-go');
/** The cli-utils version pinned in kstatus-go/go.mod. */
export const KSTATUS_VERSION = requiredVersion(
  readFileSync(join(wrapperDir, 'go.mod'), 'utf8'),
  'sigs.k8s.io/cli-utils',
);

const tool: GoTool = {
  name: 'kstatus-check',
  version: KSTATUS_VERSION,
  wrapperDir,
  packages: ['.'],
  binaries: ['kstatus-go'],
};

/** kstatus's verdicts (status.Status). */
export const KSTATUS = ['InProgress', 'Failed', 'Current', 'Terminating', 'NotFound', 'Unknown'] as const;
const ResultSchema = z.array(z.object({ status: z.enum(KSTATUS), message: z.string() }));
export type KstatusResult = z.infer<typeof ResultSchema>[number];

export async function ensureKstatus(options: { log?: (line: string) => void } = {}): Promise<string> {
  return join(await ensureGoTool(tool, options), 'kstatus-go');
}

/** What kstatus computes for each object (same order). */
export async function kstatus(binary: string, objects: readonly unknown[]): Promise<KstatusResult[]> {
  const r = await run([binary], { allowExit: true, input: JSON.stringify(objects), timeoutMs: 60_000 });
  if (r.exitCode !== 0) throw new Error(`kstatus-check exited ${r.exitCode}: ${r.stderr.slice(0, 4000)}`);
  const results = ResultSchema.parse(JSON.parse(r.stdout));
  if (results.length !== objects.length)
    throw new Error(`kstatus-check returned ${results.length} results for ${objects.length} objects`);
  return results;
}

// `node test/e2e/ship/kstatus.ts` builds (or finds) the checker and prints its path.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(await ensureKstatus({ log: (l) => console.error(l) }));
}
