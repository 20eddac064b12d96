// The Helm chart ships the CRDs in charts/blockpull-operator/crds/; the top-level crds/ is the
// source of truth. This test fails when the two directories differ in any file or byte.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

const root = join(import.meta.dirname, '..', '..');
const topDir = join(root, 'crds');
const chartDir = join(root, 'charts', 'blockpull-operator', 'crds');
const yamlFiles = (dir: string): string[] =>
  readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort();

describe('chart CRDs', () => {
  it('the chart holds the same CRD files as crds/', () => {
    expect(yamlFiles(topDir).length).toBeGreaterThan(0);
    expect(yamlFiles(chartDir)).toEqual(yamlFiles(topDir));
  });

  it.each(yamlFiles(topDir))(
    '%s is byte-identical in the chart (copy it: cp crds/* charts/blockpull-operator/crds/)',
    (file) => {
      const top = readFileSync(join(topDir, file), 'utf8');
      const chart = readFileSync(join(chartDir, file), 'utf8');
      expect(chart).toBe(top);
    },
  );

  it('the chart CRDs are CustomResourceDefinitions of group blockpull.dev', () => {
    for (const file of yamlFiles(chartDir)) {
      const docs = parseAllDocuments(readFileSync(join(chartDir, file), 'utf8')).map(
        (d) => d.toJS() as Record<string, unknown>,
      );
      expect(docs.length).toBeGreaterThan(0);
      for (const doc of docs) {
        expect(doc.kind).toBe('CustomResourceDefinition');
        expect((doc.spec as { group?: string }).group).toBe('blockpull.dev');
      }
    }
  });

  // kubectl resolves a name to a category before a resource's singular name: a category or short
  // name KubeVirt's resources answer to would hijack e.g. `kubectl patch kubevirt kubevirt`.
  it('no category or short name is one a KubeVirt resource answers to', () => {
    const kubevirtNames = [
      'kubevirt',
      'kubevirts',
      'kv',
      'kvs',
      'vmi',
      'vmis',
      'vm',
      'vms',
      'vmim',
      'vmims',
      'virtualmachineinstance',
      'virtualmachine',
      'all',
    ];
    for (const file of yamlFiles(topDir)) {
      for (const doc of parseAllDocuments(readFileSync(join(topDir, file), 'utf8')).map(
        (d) => d.toJS() as { spec: { names: { categories?: string[]; shortNames?: string[] } } },
      )) {
        const claimed = [...(doc.spec.names.categories ?? []), ...(doc.spec.names.shortNames ?? [])];
        expect(
          claimed.filter((n) => kubevirtNames.includes(n)),
          file,
        ).toEqual([]);
      }
    }
  });
});
