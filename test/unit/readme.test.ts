// The README is the user's entry point: its Quick start must hold exactly the two commands, it stays
// under 15,000 characters and links every page of docs/. The reference lives in docs/: docs/api.md
// must cover every field of the CRD, every phase and reason; docs/operations.md every BLOCKPULL_*
// variable and every metric, so the pages cannot silently fall behind the code. Every relative link
// in README.md and docs/ points at a file (and heading) that exists.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { BlockPullSpecSchema, PHASES, REASONS } from '../../operator/src/api/types.ts';
import { ENV_VARS } from '../../operator/src/config.ts';
import { POLICY_REASONS } from '../../operator/src/api/policy-types.ts';

const root = join(import.meta.dirname, '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const api = readFileSync(join(root, 'docs', 'api.md'), 'utf8');
const operations = readFileSync(join(root, 'docs', 'operations.md'), 'utf8');

interface SchemaNode {
  type?: string;
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
}
const SchemaNode: z.ZodType<SchemaNode> = z.lazy(() =>
  z.looseObject({
    type: z.string().optional(),
    properties: z.record(z.string(), SchemaNode).optional(),
    items: SchemaNode.optional(),
  }),
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

  it('docs/api.md documents every field of the BlockPull CRD', () => {
    const crd = z
      .object({
        spec: z.object({ versions: z.array(z.object({ schema: z.object({ openAPIV3Schema: SchemaNode }) })) }),
      })
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
    for (const p of paths) expect(api, `docs/api.md documents ${p}`).toContain(`\`${p}`);
    for (const k of itemKeys) expect(api, `docs/api.md names array item field ${k}`).toContain(`\`${k}\``);
  });

  it('docs/api.md documents every field of both policy CRDs and every policy reason', () => {
    const section = api.slice(api.indexOf('## BlockPullPolicy and ClusterBlockPullPolicy'));
    expect(section.length).toBeGreaterThan(1000);
    for (const file of ['blockpull.dev_blockpullpolicies.yaml', 'blockpull.dev_clusterblockpullpolicies.yaml']) {
      const crd = z
        .object({
          spec: z.object({ versions: z.array(z.object({ schema: z.object({ openAPIV3Schema: SchemaNode }) })) }),
        })
        .parse(parse(readFileSync(join(root, 'crds', file), 'utf8')));
      const schema = crd.spec.versions[0]?.schema.openAPIV3Schema;
      const paths: string[] = [];
      const itemKeys = new Set<string>();
      for (const top of ['spec', 'status'] as const) {
        const node = schema?.properties?.[top];
        if (node) fieldPaths(node, top, paths, itemKeys, false);
      }
      expect(paths.length).toBeGreaterThan(30);
      // The section names fields without the spec./status. prefix (its tables say which).
      const leaves = new Set([...paths.map((p) => p.split('.').slice(1).join('.')), ...itemKeys]);
      for (const leaf of leaves) {
        const last = leaf.split('.').at(-1) ?? leaf;
        expect(section, `${file}: docs/api.md names ${leaf}`).toMatch(new RegExp(`\`(${leaf}|${last})\``));
      }
    }
    for (const reason of POLICY_REASONS.filter((r) => r !== 'Created'))
      expect(section, reason).toContain(`\`${reason}\``);
  });

  it('docs/api.md documents every phase and every reason (as rows of its table)', () => {
    for (const phase of PHASES) expect(api).toContain(`\`${phase}\``);
    for (const reason of REASONS) expect(api, reason).toMatch(new RegExp(`\\| \`${reason}\` \\|`));
  });

  it('docs/operations.md documents every BLOCKPULL_* variable the operator reads', () => {
    for (const name of ENV_VARS) expect(operations, name).toContain(`\`${name}`);
  });

  it('docs/operations.md documents every metric the operator exports', () => {
    const source = readFileSync(join(root, 'operator', 'src', 'kube', 'metrics.ts'), 'utf8');
    const names = [...source.matchAll(/name: '([a-z_]+)'/g)].map((m) => m[1] ?? '');
    expect(names.length).toBeGreaterThan(5);
    for (const n of names) expect(operations, n).toContain(n);
  });

  it('examples/ holds full, partial, throttled and paused BlockPulls that the operator parses', () => {
    const files = readdirSync(join(root, 'examples'))
      .filter((f) => f.endsWith('.yaml'))
      .sort();
    expect(files).toEqual([
      'blockpull-full.yaml',
      'blockpull-partial.yaml',
      'blockpull-paused.yaml',
      'blockpull-throttled.yaml',
    ]);
    const specs = Object.fromEntries(
      files.map((f) => {
        const doc = z
          .object({ apiVersion: z.literal('blockpull.dev/v1alpha1'), kind: z.literal('BlockPull'), spec: z.unknown() })
          .parse(parse(readFileSync(join(root, 'examples', f), 'utf8')));
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

/** The markdown pages: README.md and every .md under docs/, as paths relative to the root. */
function pages(): string[] {
  const out = ['README.md'];
  const walk = (dir: string): void => {
    for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name));
      else if (e.name.endsWith('.md')) out.push(join(dir, e.name));
    }
  };
  walk('docs');
  return out.sort();
}

/** A page's text outside fenced code blocks (a `# comment` in a sh block is no heading, a `[x](y)` no link). */
function prose(text: string): string {
  return text.replaceAll(/^```[\s\S]*?^```/gm, '');
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered. */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of prose(text).matchAll(/^#{1,6} +(.+?) *#*$/gm)) {
    const base = (m[1] ?? '')
      .toLowerCase()
      .replaceAll(/[^\p{L}\p{N}\p{M}\s_-]/gu, '')
      .replaceAll(' ', '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** The relative links of a page: `[text](target)` outside code, without http(s)/mailto. */
function relativeLinks(text: string): string[] {
  const noCode = prose(text).replaceAll(/`[^`\n]*`/g, '');
  return [...noCode.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1] ?? '').filter((t) => !/^[a-z]+:/i.test(t));
}

describe('README.md and docs/', () => {
  it('README.md is the front door: under 15,000 characters', () => {
    expect(readme.length).toBeLessThan(15_000);
  });

  it('README.md links every page of docs/ (and the runbooks index)', () => {
    const wanted = [
      ...readdirSync(join(root, 'docs'))
        .filter((f) => f.endsWith('.md'))
        .map((f) => `docs/${f}`),
      ...readdirSync(join(root, 'docs'), { withFileTypes: true })
        .filter((e) => e.isDirectory() && existsSync(join(root, 'docs', e.name, 'README.md')))
        .map((e) => `docs/${e.name}/README.md`),
    ];
    expect(wanted).toContain('docs/api.md');
    const linked = new Set(relativeLinks(readme).map((t) => t.split('#')[0]));
    for (const page of wanted) expect(linked, `README.md links ${page}`).toContain(page);
  });

  it('every relative link in README.md and docs/ points at a file, and a heading of it if it names one', () => {
    const all = pages();
    expect(all.length).toBeGreaterThan(8);
    let checked = 0;
    for (const page of all) {
      const text = readFileSync(join(root, page), 'utf8');
      for (const link of relativeLinks(text)) {
        const [file = '', anchor] = link.split('#', 2);
        const target = file === '' ? page : relative(root, join(root, dirname(page), decodeURIComponent(file)));
        expect(existsSync(join(root, target)), `${page}: ${link} (${target}) exists`).toBe(true);
        if (anchor !== undefined && target.endsWith('.md')) {
          expect(
            anchors(readFileSync(join(root, target), 'utf8')),
            `${page}: ${link} names a heading of ${target}`,
          ).toContain(anchor);
        }
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(20);
  });

  it("the tour's dry-run BlockPull is one the operator parses, with spec.dryRun", () => {
    const block = /<!-- tour: plan [^>]*-->\s*```sh\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(block, "README.md has the tour's plan block").toBeDefined();
    const yaml = /<<'EOF'\n([\s\S]*?)^EOF$/m.exec(block ?? '')?.[1];
    const doc = z
      .object({
        apiVersion: z.literal('blockpull.dev/v1alpha1'),
        kind: z.literal('BlockPull'),
        metadata: z.object({ name: z.string(), namespace: z.string() }),
        spec: z.unknown(),
      })
      .parse(parse(yaml ?? ''));
    expect(BlockPullSpecSchema.parse(doc.spec).dryRun).toBe(true);
    // The commands after it name that very object.
    for (const line of (block ?? '').split('\n').filter((l) => l.startsWith('kubectl -n'))) {
      expect(line).toContain(`-n ${doc.metadata.namespace} `);
      expect(line).toContain(`bp/${doc.metadata.name}`);
    }
  });
});
