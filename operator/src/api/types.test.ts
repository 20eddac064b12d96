/**
 * Keeps the zod schemas in step with the CRD (the source of truth): walks the CRD's
 * openAPIV3Schema and z.toJSONSchema(BlockPull) side by side and compares property names,
 * types, enums, required lists and numeric/length bounds. Also checks every CRD field has a
 * description (kubectl explain).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { BlockPullSchema, GROUP, KIND, PHASES, PLURAL, VERSION, parseBlockPull } from './types.ts';

type Json = Record<string, unknown>;
const crd = parse(
  readFileSync(new URL('../../../crds/blockpull.dev_blockpulls.yaml', import.meta.url), 'utf8'),
) as Json;
const spec = crd.spec as Json;
const version = (spec.versions as Json[])[0]!;
const crdSchema = (version.schema as Json).openAPIV3Schema as Json;
const zodSchema = z.toJSONSchema(BlockPullSchema, { io: 'input', unrepresentable: 'any' }) as Json;

function typeOf(s: Json): string {
  if (s['x-kubernetes-int-or-string'] === true) return 'int-or-string';
  if (Array.isArray(s.anyOf)) {
    const types = (s.anyOf as Json[]).map((x) => x.type as string).sort();
    if (types.join(',') === 'integer,string') return 'int-or-string';
    return types.join('|');
  }
  return String(s.type);
}

/** Compare one node; returns human-readable differences. */
function compare(path: string, c: Json, zs: Json, diffs: string[]): void {
  const ct = typeOf(c);
  const zt = typeOf(zs);
  if (ct !== zt) diffs.push(`${path}: type crd=${ct} zod=${zt}`);
  if (JSON.stringify(c.enum ?? null) !== JSON.stringify(zs.enum ?? null)) {
    diffs.push(`${path}: enum crd=${JSON.stringify(c.enum)} zod=${JSON.stringify(zs.enum)}`);
  }
  for (const k of ['minimum', 'maximum', 'minLength', 'maxLength', 'maxItems', 'pattern'] as const) {
    if (c[k] === undefined) continue;
    // RegExp#source (what zod emits) escapes '/'; compare patterns in that normal form.
    const cv = k === 'pattern' ? new RegExp(c[k] as string).source : c[k];
    if (cv !== zs[k]) diffs.push(`${path}: ${k} crd=${JSON.stringify(c[k])} zod=${JSON.stringify(zs[k])}`);
  }
  if (ct === 'object' && c.properties) {
    const cp = c.properties as Record<string, Json>;
    const zp = (zs.properties ?? {}) as Record<string, Json>;
    const names = new Set([...Object.keys(cp), ...Object.keys(zp)]);
    for (const n of names) {
      if (path === '' && (n === 'metadata' || n === 'apiVersion' || n === 'kind')) continue;
      if (!(n in cp)) diffs.push(`${path}.${n}: only in zod`);
      else if (!(n in zp)) diffs.push(`${path}.${n}: only in the CRD`);
      else compare(`${path}.${n}`, cp[n]!, zp[n]!, diffs);
    }
    // zod lists a field with a default as not required on input, as the API server does.
    const cr = [...((c.required as string[] | undefined) ?? [])].sort();
    const zr = [...((zs.required as string[] | undefined) ?? [])].filter((n) => path !== '' || n === 'spec').sort();
    if (JSON.stringify(cr) !== JSON.stringify(zr))
      diffs.push(`${path}: required crd=${cr.join(',')} zod=${zr.join(',')}`);
  }
  if (ct === 'array') compare(`${path}[]`, c.items as Json, zs.items as Json, diffs);
}

function missingDescriptions(path: string, c: Json, out: string[]): void {
  if (path !== '.metadata' && typeof c.description !== 'string') out.push(path || '(root)');
  for (const [n, child] of Object.entries((c.properties ?? {}) as Record<string, Json>))
    missingDescriptions(`${path}.${n}`, child, out);
  if (c.items) missingDescriptions(`${path}[]`, c.items as Json, out);
}

describe('CRD and zod schema', () => {
  it('names the API as the code does', () => {
    expect(spec.group).toBe(GROUP);
    expect(version.name).toBe(VERSION);
    expect((spec.names as Json).kind).toBe(KIND);
    expect((spec.names as Json).plural).toBe(PLURAL);
    expect((spec.names as Json).shortNames).toEqual(['bp']);
    expect(version.subresources).toEqual({ status: {} });
    const columns = (version.additionalPrinterColumns as Json[])
      .filter((c) => c.priority === undefined)
      .map((c) => c.name);
    expect(columns).toEqual(['VMI', 'DISK', 'PHASE', 'PROGRESS', 'AGE']);
  });

  it('has the same fields, types, enums, bounds and required lists', () => {
    const diffs: string[] = [];
    compare('', crdSchema, zodSchema, diffs);
    expect(diffs).toEqual([]);
  });

  it('detects drift (the comparison can fail)', () => {
    const diffs: string[] = [];
    const drifted = structuredClone(crdSchema);
    const statusProps = ((drifted.properties as Json).status as Json).properties as Record<string, Json>;
    statusProps.phase = { ...statusProps.phase, enum: [...PHASES, 'Unknown'] };
    delete statusProps.attempts;
    compare('', drifted, zodSchema, diffs);
    expect(diffs).toEqual([
      '.status.phase: enum crd=' + JSON.stringify([...PHASES, 'Unknown']) + ' zod=' + JSON.stringify(PHASES),
      '.status.attempts: only in zod',
    ]);
  });

  it('documents every field (kubectl explain)', () => {
    const out: string[] = [];
    missingDescriptions('', crdSchema, out);
    expect(out).toEqual([]);
  });

  it('parses a minimal object with defaults and rejects a bad one', () => {
    const bp = parseBlockPull({
      metadata: { name: 'a', namespace: 'ns', uid: 'u' },
      spec: { vmiName: 'vm', disk: 'rootdisk' },
    });
    expect(bp.spec.paused).toBe(false);
    expect(bp.spec.maxRetries).toBe(3);
    expect(() =>
      parseBlockPull({ metadata: { name: 'a', namespace: 'ns', uid: 'u' }, spec: { vmiName: 'VM', disk: 'd' } }),
    ).toThrow(/vmiName/);
    expect(() =>
      parseBlockPull({
        metadata: { name: 'a', namespace: 'ns', uid: 'u' },
        spec: { vmiName: 'vm', disk: 'd', base: { position: 1, path: '/x' } },
      }),
    ).toThrow(/exactly one/);
  });
});
