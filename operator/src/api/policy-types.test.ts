/**
 * Keeps the policy zod schemas in step with their CRDs (the source of truth), as types.test.ts
 * does for BlockPull, and the two kinds' specs in step with each other (one spec, two scopes).
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { compareSchemas, loadCrd, missingDescriptions, type Json } from '../../../test/unit/support/crd-schema.ts';
import {
  BlockPullPolicySchema,
  CLUSTER_POLICY_KIND,
  CLUSTER_POLICY_REF,
  ClusterBlockPullPolicySchema,
  POLICY_KIND,
  POLICY_REF,
  parsePolicy,
} from './policy-types.ts';
import { GROUP, VERSION } from './types.ts';

const kinds = [
  {
    file: 'blockpull.dev_blockpullpolicies.yaml',
    kind: POLICY_KIND,
    ref: POLICY_REF,
    scope: 'Namespaced',
    short: 'bpp',
    schema: BlockPullPolicySchema,
  },
  {
    file: 'blockpull.dev_clusterblockpullpolicies.yaml',
    kind: CLUSTER_POLICY_KIND,
    ref: CLUSTER_POLICY_REF,
    scope: 'Cluster',
    short: 'cbpp',
    schema: ClusterBlockPullPolicySchema,
  },
] as const;

const props = (s: Json, key: string): Json => (s.properties as Record<string, Json>)[key]!;

describe.each(kinds)('$kind CRD and zod schema', ({ file, kind, ref, scope, short, schema }) => {
  const { spec, version, schema: crdSchema } = loadCrd(file);
  const zodSchema = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Json;

  it('names the API as the code does', () => {
    expect(spec.group).toBe(GROUP);
    expect(spec.scope).toBe(scope);
    expect(version.name).toBe(VERSION);
    expect((spec.names as Json).kind).toBe(kind);
    expect((spec.names as Json).plural).toBe(ref.plural);
    expect((spec.names as Json).shortNames).toEqual([short]);
    expect(version.subresources).toEqual({ status: {} });
    const columns = (version.additionalPrinterColumns as Json[])
      .filter((c) => c.priority === undefined)
      .map((c) => c.name);
    expect(columns).toEqual(['SELECTED', 'ACTIVE', 'DONE', 'FAILED', 'CONFLICTS', 'READY', 'AGE']);
  });

  it('has the same fields, types, enums, bounds and required lists', () => {
    const diffs: string[] = [];
    compareSchemas('', crdSchema, zodSchema, diffs);
    expect(diffs).toEqual([]);
  });

  it('detects drift (the comparison can fail)', () => {
    const drifted = structuredClone(crdSchema);
    const specProps = props(drifted, 'spec').properties as Record<string, Json>;
    specProps.maxConcurrent = { ...specProps.maxConcurrent, maximum: 5 };
    delete specProps.dryRun;
    const diffs: string[] = [];
    compareSchemas('', drifted, zodSchema, diffs);
    expect(diffs).toEqual(['.spec.maxConcurrent: maximum crd=5 zod=10000', '.spec.dryRun: only in zod']);
  });

  it('documents every field (kubectl explain)', () => {
    const out: string[] = [];
    missingDescriptions('', crdSchema, out);
    expect(out).toEqual([]);
  });
});

describe('one spec for both kinds', () => {
  it('the cluster kind has the namespaced spec plus a required namespaceSelector, and the same status', () => {
    const ns = loadCrd(kinds[0].file).schema;
    const cluster = structuredClone(loadCrd(kinds[1].file).schema);
    const cspec = props(cluster, 'spec');
    expect(cspec.required).toEqual(['vmiSelector', 'namespaceSelector']);
    // namespaceSelector is a label selector like vmiSelector, described for namespaces.
    const strip = (s: Json): string => JSON.stringify(s, (k, v: unknown) => (k === 'description' ? undefined : v));
    expect(strip(props(cspec, 'namespaceSelector'))).toBe(strip(props(props(ns, 'spec'), 'vmiSelector')));
    delete (cspec.properties as Record<string, Json>).namespaceSelector;
    cspec.required = ['vmiSelector'];
    expect(cspec).toEqual(props(ns, 'spec'));
    expect(props(cluster, 'status')).toEqual(props(ns, 'status'));
  });

  it('parses a minimal policy of each kind with defaults, and rejects a bad one', () => {
    const p = parsePolicy(POLICY_KIND, {
      metadata: { name: 'p', namespace: 'ns', uid: 'u' },
      spec: { vmiSelector: { matchLabels: { fleet: 'ci' } } },
    });
    expect(p.spec).toEqual({
      vmiSelector: { matchLabels: { fleet: 'ci' } },
      minChainLength: 2,
      maxConcurrent: 4,
      paused: false,
      migrationPolicy: 'Yield',
      dryRun: false,
    });
    const c = parsePolicy(CLUSTER_POLICY_KIND, {
      metadata: { name: 'c', uid: 'u' },
      spec: { vmiSelector: {}, namespaceSelector: { matchLabels: { team: 'a' } } },
    });
    expect(c.spec.namespaceSelector).toEqual({ matchLabels: { team: 'a' } });
    expect(() =>
      parsePolicy(CLUSTER_POLICY_KIND, { metadata: { name: 'c', uid: 'u' }, spec: { vmiSelector: {} } }),
    ).toThrow(/namespaceSelector/);
    expect(() =>
      parsePolicy(POLICY_KIND, {
        metadata: { name: 'p', namespace: 'ns', uid: 'u' },
        spec: { vmiSelector: {}, window: { start: '25:00', end: '06:00', timeZone: 'UTC' } },
      }),
    ).toThrow(/start/);
  });
});
