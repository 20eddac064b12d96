/**
 * Compares a CRD's openAPIV3Schema with the JSON schema of a zod schema (the operator's mirror
 * of it): property names, types, enums, required lists and numeric/length bounds. Shared by the
 * API tests of every kind (operator/src/api/*.test.ts).
 */
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

export type Json = Record<string, unknown>;

/** The CRD file of crds/ (parsed), its first version and that version's openAPIV3Schema. */
export function loadCrd(file: string): { crd: Json; spec: Json; version: Json; schema: Json } {
  const crd = parse(readFileSync(new URL(`../../../crds/${file}`, import.meta.url), 'utf8')) as Json;
  const spec = crd.spec as Json;
  const version = (spec.versions as Json[])[0]!;
  return { crd, spec, version, schema: (version.schema as Json).openAPIV3Schema as Json };
}

function typeOf(s: Json): string {
  if (s['x-kubernetes-int-or-string'] === true) return 'int-or-string';
  if (Array.isArray(s.anyOf)) {
    const types = (s.anyOf as Json[]).map((x) => x.type as string).sort();
    if (types.join(',') === 'integer,string') return 'int-or-string';
    return types.join('|');
  }
  return String(s.type);
}

/** Compare one node; pushes human-readable differences. */
export function compareSchemas(path: string, c: Json, zs: Json, diffs: string[]): void {
  const ct = typeOf(c);
  const zt = typeOf(zs);
  if (ct !== zt) diffs.push(`${path}: type crd=${ct} zod=${zt}`);
  if (JSON.stringify(c.enum ?? null) !== JSON.stringify(zs.enum ?? null)) {
    diffs.push(`${path}: enum crd=${JSON.stringify(c.enum)} zod=${JSON.stringify(zs.enum)}`);
  }
  for (const k of ['minimum', 'maximum', 'minLength', 'maxLength', 'minItems', 'maxItems', 'pattern'] as const) {
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
      else compareSchemas(`${path}.${n}`, cp[n]!, zp[n]!, diffs);
    }
    // zod lists a field with a default as not required on input, as the API server does.
    const cr = [...((c.required as string[] | undefined) ?? [])].sort();
    const zr = [...((zs.required as string[] | undefined) ?? [])].filter((n) => path !== '' || n === 'spec').sort();
    if (JSON.stringify(cr) !== JSON.stringify(zr))
      diffs.push(`${path}: required crd=${cr.join(',')} zod=${zr.join(',')}`);
  }
  if (ct === 'array') compareSchemas(`${path}[]`, c.items as Json, zs.items as Json, diffs);
}

/** Paths of the fields without a description (kubectl explain shows nothing for them). */
export function missingDescriptions(path: string, c: Json, out: string[]): void {
  if (path !== '.metadata' && typeof c.description !== 'string') out.push(path || '(root)');
  for (const [n, child] of Object.entries((c.properties ?? {}) as Record<string, Json>))
    missingDescriptions(`${path}.${n}`, child, out);
  if (c.items) missingDescriptions(`${path}[]`, c.items as Json, out);
}
