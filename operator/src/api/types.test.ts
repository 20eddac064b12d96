/**
 * Keeps the zod schemas in step with the CRD (the source of truth): walks the CRD's
 * openAPIV3Schema and z.toJSONSchema(BlockPull) side by side and compares property names,
 * types, enums, required lists and numeric/length bounds. Also checks every CRD field has a
 * description (kubectl explain).
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  compareSchemas as compare,
  loadCrd,
  missingDescriptions,
  type Json,
} from '../../../test/unit/support/crd-schema.ts';
import { BlockPullSchema, GROUP, KIND, PHASES, PLURAL, VERSION, parseBlockPull } from './types.ts';

const { spec, version, schema: crdSchema } = loadCrd('blockpull.dev_blockpulls.yaml');
const zodSchema = z.toJSONSchema(BlockPullSchema, { io: 'input', unrepresentable: 'any' }) as Json;

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
