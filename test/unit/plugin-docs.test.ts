// docs/plugin.md and the krew manifest against the plugin itself: every `kubectl blockpull` command
// the page shows parses, every verb is documented, and the manifest names the package's bin.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { parseArgs, VERBS } from '../../plugin/src/args.ts';
import { EXIT } from '../../plugin/src/verdict.ts';

const root = join(import.meta.dirname, '..', '..');
const page = readFileSync(join(root, 'docs', 'plugin.md'), 'utf8');
/** argv of every `kubectl blockpull` line in a page's code blocks (words; no quoting is used there). */
function commandsOf(text: string): string[][] {
  return [...text.matchAll(/```[^\n]*\n([\s\S]*?)```/g)]
    .map((m) => m[1]!)
    .flatMap((b) => b.split('\n'))
    .map((l) =>
      l
        .replace(/^\$ /, '')
        .replace(/\s+#.*$/, '')
        .replace(/\s*&&.*$/, '')
        .trim(),
    )
    .filter((l) => l.startsWith('kubectl blockpull '))
    .map((l) => l.split(/\s+/).slice(2));
}
const commands = commandsOf(page);

describe("README.md's plugin commands", () => {
  it('parse, one per verb it names (the plugin e2e spec runs each verb)', () => {
    const readme = commandsOf(readFileSync(join(root, 'README.md'), 'utf8'));
    expect(readme.map((argv) => parseArgs(argv).command.verb)).toEqual(['plan', 'start', 'status']);
  });
});

describe('docs/plugin.md', () => {
  it('every kubectl blockpull command it shows parses', () => {
    expect(commands.length).toBeGreaterThanOrEqual(12);
    for (const argv of commands) expect(() => parseArgs(argv), argv.join(' ')).not.toThrow();
    const verbs = new Set(commands.map((argv) => parseArgs(argv).command.verb));
    for (const v of ['start', 'status', 'pause', 'resume', 'abort', 'wait', 'plan', 'help'])
      expect(verbs, v).toContain(v);
  });

  it('documents every verb and every exit code', () => {
    const verbCells = page
      .split('\n## Verbs')[1]!
      .split('\n')
      .filter((l) => l.startsWith('| `'))
      .map((l) => l.split(' | ')[0]!);
    for (const v of VERBS)
      expect(
        verbCells.some((c) => new RegExp(`\`${v}[ \`]`).test(c)),
        v,
      ).toBe(true);
    const table = page.split('## Exit codes')[1]?.split('\n## ')[0] ?? '';
    for (const code of Object.values(EXIT)) expect(table, String(code)).toMatch(new RegExp(`^\\| ${code} \\|`, 'm'));
  });
});

describe('deploy/krew/blockpull.yaml', () => {
  it("names the npm package's bin and version, for the platforms Node runs a shebang script on", () => {
    const pkg = z
      .object({ name: z.string(), version: z.string(), bin: z.record(z.string(), z.string()) })
      .parse(JSON.parse(readFileSync(join(root, 'plugin', 'package.json'), 'utf8')));
    const manifest = z
      .object({
        apiVersion: z.literal('krew.googlecontainertools.github.com/v1alpha2'),
        kind: z.literal('Plugin'),
        metadata: z.object({ name: z.literal('blockpull') }),
        spec: z.object({
          version: z.string(),
          shortDescription: z.string().max(50),
          platforms: z
            .array(
              z.object({
                uri: z.string().url(),
                sha256: z.string().regex(/^[0-9a-f]{64}$/),
                bin: z.string(),
                files: z.array(z.object({ from: z.string(), to: z.string() })),
              }),
            )
            .min(1),
        }),
      })
      .parse(parse(readFileSync(join(root, 'deploy', 'krew', 'blockpull.yaml'), 'utf8')));
    expect(pkg.bin['kubectl-blockpull']).toBeDefined();
    expect(manifest.spec.version).toBe(`v${pkg.version}`);
    for (const p of manifest.spec.platforms) {
      expect(p.bin).toBe(pkg.bin['kubectl-blockpull']);
      expect(p.uri).toContain(`kubectl-blockpull-v${pkg.version}.tar.gz`);
    }
    const main = readFileSync(join(root, 'plugin', 'src', 'main.ts'), 'utf8');
    expect(main.startsWith('#!/usr/bin/env node\n')).toBe(true);
  });
});
