/**
 * Kubernetes Quantity → bytes, for spec.bandwidth. Accepts what the CRD accepts: a
 * non-negative integer, or a decimal number with an optional binary (Ki, Mi, Gi, Ti) or
 * decimal (k, M, G, T) suffix. Fractions of a byte are rounded down.
 */

export const QUANTITY_PATTERN = /^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$/;

const MULTIPLIERS: Readonly<Record<string, bigint>> = {
  '': 1n,
  k: 1000n,
  M: 1000n ** 2n,
  G: 1000n ** 3n,
  T: 1000n ** 4n,
  Ki: 1024n,
  Mi: 1024n ** 2n,
  Gi: 1024n ** 3n,
  Ti: 1024n ** 4n,
};

export class QuantityError extends Error {
  constructor(value: unknown) {
    super(`not a valid bandwidth quantity: ${JSON.stringify(value)} (use e.g. 1048576, "50Mi", "100M")`);
    this.name = 'QuantityError';
  }
}

/** Bytes per second from a number or a Quantity string; throws QuantityError. */
export function parseQuantity(value: number | string): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw new QuantityError(value);
    return value;
  }
  const m = /^(?<int>[0-9]+)(?:\.(?<frac>[0-9]+))?(?<suffix>Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(value);
  if (!m?.groups) throw new QuantityError(value);
  const { int: intPart = '', frac: digits = '', suffix = '' } = m.groups;
  const mantissa = BigInt(intPart + digits);
  const scale = 10n ** BigInt(digits.length);
  const multiplier = MULTIPLIERS[suffix];
  if (multiplier === undefined) throw new QuantityError(value);
  const bytes = (mantissa * multiplier) / scale;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new QuantityError(value);
  return Number(bytes);
}

/** Human-readable bytes (binary units), for messages. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
