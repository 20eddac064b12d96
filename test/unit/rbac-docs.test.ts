// The permissions table of docs/operations.md states files/rbac-rules.yaml: every rule's
// group, resources and verbs are a row of the table, and every row of the ClusterRole is a rule.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const root = join(import.meta.dirname, '..', '..');
const rules = parse(readFileSync(join(root, 'charts', 'blockpull-operator', 'files', 'rbac-rules.yaml'), 'utf8')) as {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}[];
const doc = readFileSync(join(root, 'docs', 'operations.md'), 'utf8');
const section = doc.slice(doc.indexOf('## Permissions'), doc.indexOf('\n## ', doc.indexOf('## Permissions') + 3));

/** "group|resource,resource|verb,verb" of a rule, and of a table row (core = ""; "core, events.k8s.io" = two groups). */
const norm = (groups: string[], resources: string[], verbs: string[]): string[] =>
  groups.map((g) => `${g}|${[...resources].sort().join(',')}|${[...verbs].sort().join(',')}`);
const strip = (s: string): string[] =>
  s
    .replace(/\(.*\)/, '')
    .split(',')
    .map((x) => x.replace(/`/g, '').trim())
    .filter(Boolean);

function tableRows(): string[] {
  const out: string[] = [];
  for (const line of section.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 5 || cells[1] === 'API group' || cells[1]?.startsWith('---')) continue;
    if (cells[2]?.includes('Role, release namespace')) continue; // the Lease Role, not the ClusterRole
    const groups = strip(cells[1]!).map((g) => (g === 'core' ? '' : g));
    out.push(...norm(groups, strip(cells[2]!), strip(cells[3]!)));
  }
  return out.sort();
}

describe('docs/operations.md permissions table', () => {
  it('states every rule of files/rbac-rules.yaml, and no other', () => {
    // core and events.k8s.io events share one row of the table.
    const fromFile = rules.flatMap((r) => norm(r.apiGroups, r.resources, r.verbs)).sort();
    expect(tableRows()).toEqual(fromFile);
  });

  it('grants the policy controller its kinds, their status, and BlockPull create and delete', () => {
    const has = (group: string, resource: string, verb: string): boolean =>
      rules.some((r) => r.apiGroups.includes(group) && r.resources.includes(resource) && r.verbs.includes(verb));
    for (const res of ['blockpullpolicies', 'clusterblockpullpolicies']) {
      expect(has('blockpull.dev', res, 'watch')).toBe(true);
      expect(has('blockpull.dev', `${res}/status`, 'patch')).toBe(true);
    }
    expect(has('blockpull.dev', 'blockpulls', 'create')).toBe(true);
    expect(has('blockpull.dev', 'blockpulls', 'delete')).toBe(true);
    expect(has('', 'namespaces', 'watch')).toBe(true);
    expect(rules.every((r) => !r.verbs.includes('*') && !r.resources.includes('*'))).toBe(true);
    expect(rules.some((r) => r.resources.includes('secrets'))).toBe(false);
  });
});
