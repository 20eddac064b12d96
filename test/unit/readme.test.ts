// The README is the user's entry point: its Quick start must hold exactly the two commands, and
// its API reference must cover every field of the CRD, every phase and reason, every BLOCKPULL_*
// variable and every metric, so it cannot silently fall behind the code.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { BlockPullSpecSchema, PHASES, REASONS } from '../../operator/src/api/types.ts';
import { ENV_VARS } from '../../operator/src/config.ts';

const root = join(import.meta.dirname, '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');

interface SchemaNode {
  type?: string;
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
}
const SchemaNode: z.ZodType<SchemaNode> = z.lazy(() =>
  z.looseObject({ type: z.string().optional(), properties: z.record(z.string(), SchemaNode).optional(), items: SchemaNode.optional() }),
);

/** Field paths of the CRD schema: `spec.base.position`; array items contribute their key names. */
function fieldPaths(node: SchemaNode, prefix: string, paths: string[], itemKeys: Set<string>, inArray: boolean): void {
  for (const [key, child] of Object.entries(node.properties ?? {})) {
    const path = `${prefix}.${key}`;
    if (inArray) itemKeys.add(key);
    else paths.push(path);
    fieldPaths(child, path, paths, itemKeys, inArray);
    if (child.items) fieldPaths(child.items, `${path}[]`, paths, itemKeys, true);
  }
}

describe('README.md', () => {
  it('Quick start: the first fenced block holds exactly ./scripts/demo and ./scripts/test', () => {
    const section = readme.split(/^## Quick start$/m)[1];
    expect(section, 'a "## Quick start" section').toBeDefined();
    const block = /```[^\n]*\n([\s\S]*?)```/.exec(section ?? '')?.[1];
    expect(block?.split('\n').filter((l) => l !== '')).toEqual(['./scripts/demo', './scripts/test']);
    for (const script of ['scripts/demo', 'scripts/test']) {
      expect(existsSync(join(root, script)), script).toBe(true);
      expect(statSync(join(root, script)).mode & 0o111, `${script} is executable`).not.toBe(0);
    }
    // The second command is the one CI runs.
    expect(readFileSync(join(root, '.ci', 'run'), 'utf8')).toMatch(/^exec \.\/scripts\/test\b/m);
  });

  it('documents every field of the BlockPull CRD', () => {
    const crd = z
      .object({ spec: z.object({ versions: z.array(z.object({ schema: z.object({ openAPIV3Schema: SchemaNode }) })) }) })
      .parse(parse(readFileSync(join(root, 'crds', 'blockpull.dev_blockpulls.yaml'), 'utf8')));
    const schema = crd.spec.versions[0]?.schema.openAPIV3Schema;
    expect(schema).toBeDefined();
    const paths: string[] = [];
    const itemKeys = new Set<string>();
    for (const top of ['spec', 'status'] as const) {
      const node = schema?.properties?.[top];
      expect(node, top).toBeDefined();
      if (node) fieldPaths(node, top, paths, itemKeys, false);
    }
    expect(paths.length).toBeGreaterThan(25);
    for (const p of paths) expect(readme, `README documents ${p}`).toContain(`\`${p}`);
    for (const k of itemKeys) expect(readme, `README names array item field ${k}`).toContain(`\`${k}\``);
  });

  it('documents every phase and every reason', () => {
    for (const phase of PHASES) expect(readme).toContain(`\`${phase}\``);
    for (const reason of REASONS) expect(readme, reason).toMatch(new RegExp(`\\| \`${reason}\` \\|`));
  });

  it('documents every BLOCKPULL_* variable the operator reads', () => {
    for (const name of ENV_VARS) expect(readme, name).toContain(`\`${name}`);
  });

  it('documents every metric the operator exports', () => {
    const source = readFileSync(join(root, 'operator', 'src', 'kube', 'metrics.ts'), 'utf8');
    const names = [...source.matchAll(/name: '([a-z_]+)'/g)].map((m) => m[1] ?? '');
    expect(names.length).toBeGreaterThan(5);
    for (const n of names) expect(readme, n).toContain(n);
  });

  it('examples/ holds full, partial, throttled and paused BlockPulls that the operator parses', () => {
    const files = readdirSync(join(root, 'examples')).filter((f) => f.endsWith('.yaml')).sort();
    expect(files).toEqual(['blockpull-full.yaml', 'blockpull-partial.yaml', 'blockpull-paused.yaml', 'blockpull-throttled.yaml']);
    const specs = Object.fromEntries(
      files.map((f) => {
        const doc = z.object({ apiVersion: z.literal('blockpull.dev/v1alpha1'), kind: z.literal('BlockPull'), spec: z.unknown() }).parse(parse(readFileSync(join(root, 'examples', f), 'utf8')));
        return [f, BlockPullSpecSchema.parse(doc.spec)];
      }),
    );
    expect(specs['blockpull-full.yaml']?.base).toBeUndefined();
    expect(specs['blockpull-partial.yaml']?.base).toEqual({ position: 2 });
    expect(specs['blockpull-throttled.yaml']?.bandwidth).toBe('50Mi');
    expect(specs['blockpull-paused.yaml']?.paused).toBe(true);
    for (const f of files) expect(readme).toContain(`examples/${f}`);
  });
});
