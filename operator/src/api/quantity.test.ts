import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { formatBytes, MAX_BANDWIDTH, MAX_BANDWIDTH_QUANTITY, parseQuantity, QuantityError } from './quantity.ts';

describe('parseQuantity', () => {
  it.each([
    [0, 0],
    [1048576, 1048576],
    ['0', 0],
    ['123', 123],
    ['1k', 1000],
    ['50Mi', 50 * 1024 * 1024],
    ['100M', 100_000_000],
    ['1.5Gi', 1610612736],
    ['2Ti', 2 * 1024 ** 4],
    ['1.25Ki', 1280],
    ['1.0', 1],
    ['1024Ti', 1125899906842624],
    [1125899906842624, 1125899906842624],
  ] as const)('%s → %d', (input, bytes) => {
    expect(parseQuantity(input)).toBe(bytes);
  });

  it.each([-1, 1.5, Number.MAX_SAFE_INTEGER + 2, '', '-1', '1 Mi', 'Mi', '1m', '1e3', '1.', '.5', '10Pi0', '1KB'])(
    'rejects %j',
    (input) => {
      expect(() => parseQuantity(input)).toThrow(QuantityError);
    },
  );

  it('rounds a fraction of a byte UP: "0.5" is 1 byte/s, never 0 = unlimited', () => {
    expect(parseQuantity('0.5')).toBe(1);
    expect(parseQuantity('0.0001k')).toBe(1);
    expect(parseQuantity('1.1')).toBe(2);
    expect(parseQuantity('1.0000001Ki')).toBe(1025);
    expect(parseQuantity('0.000')).toBe(0);
    expect(parseQuantity('1023.99999999999999999Ti')).toBe(2 ** 50);
  });

  it('refuses more than 1024Ti = 2^50 bytes/s, exact in a JS number', () => {
    expect(MAX_BANDWIDTH).toBe(2 ** 50);
    expect(Number.isSafeInteger(MAX_BANDWIDTH)).toBe(true);
    expect(parseQuantity(MAX_BANDWIDTH_QUANTITY)).toBe(MAX_BANDWIDTH);
    for (const v of [
      '99999999999999999999Ti',
      '1025Ti',
      '1125899906842625',
      '1126T',
      MAX_BANDWIDTH + 1,
      Number.MAX_SAFE_INTEGER,
    ]) {
      expect(() => parseQuantity(v), String(v)).toThrow(/at most 1024Ti = 1125899906842624 bytes per second/);
    }
  });

  it('the CRD enforces the same maximum', () => {
    const crd = readFileSync(new URL('../../../crds/blockpull.dev_blockpulls.yaml', import.meta.url), 'utf8');
    const doc = parse(crd) as {
      spec: {
        versions: {
          schema: {
            openAPIV3Schema: {
              properties: {
                spec: {
                  properties: {
                    bandwidth: { description: string; 'x-kubernetes-validations': { rule: string; message: string }[] };
                  };
                };
              };
            };
          };
        }[];
      };
    };
    const bw = doc.spec.versions[0]!.schema.openAPIV3Schema.properties.spec.properties.bandwidth;
    const rules = bw['x-kubernetes-validations'].map((v) => v.rule).join('\n');
    expect(rules).toContain(`self <= ${MAX_BANDWIDTH}`);
    expect(rules).toContain(`quantity(self).compareTo(quantity('${MAX_BANDWIDTH_QUANTITY}')) <= 0`);
    expect(bw.description).toContain(`at most ${MAX_BANDWIDTH_QUANTITY} = ${MAX_BANDWIDTH}`);
  });
});

describe('formatBytes', () => {
  it('uses binary units', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(50 * 1024 * 1024)).toBe('50.0 MiB');
  });
});
