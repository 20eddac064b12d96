/**
 * Kubernetes Quantity → bytes, for spec.bandwidth. Accepts what the CRD accepts: a
 * non-negative integer, or a decimal number with an optional binary (Ki, Mi, Gi, Ti) or
 * decimal (k, M, G, T) suffix, at most MAX_BANDWIDTH. A fraction of a byte is rounded UP
 * (`0.5` → 1 byte/s): rounding down would turn a tiny limit into 0 = unlimited.
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

/**
 * The largest bandwidth the operator supports: 1024Ti = 2^50 bytes/s (1 PiB/s). Exact in a JS
 * number (below 2^53), within libvirt's unsigned long long bytes/s and QEMU's int64 speed, and
 * passed to virsh as that integer with --bytes. The CRD enforces it (crds/, quantity.test.ts checks).
 */
export const MAX_BANDWIDTH = 1024 ** 5;
/** MAX_BANDWIDTH as a Quantity, as the CRD and docs/api.md state it. */
export const MAX_BANDWIDTH_QUANTITY = '1024Ti';

export class QuantityError extends Error {
  constructor(value: unknown, why = 'use e.g. 1048576, "50Mi", "100M"') {
    super(`not a valid bandwidth quantity: ${JSON.stringify(value)} (${why})`);
    this.name = 'QuantityError';
  }
}

const TOO_LARGE = `at most ${MAX_BANDWIDTH_QUANTITY} = ${MAX_BANDWIDTH} bytes per second`;

/** Bytes per second from a number or a Quantity string; throws QuantityError. */
export function parseQuantity(value: number | string): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw new QuantityError(value);
    if (value > MAX_BANDWIDTH) throw new QuantityError(value, TOO_LARGE);
    return value;
  }
  const m = /^(?<int>[0-9]+)(?:\.(?<frac>[0-9]+))?(?<suffix>Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(value);
  if (!m?.groups) throw new QuantityError(value);
  const { int: intPart = '', frac: digits = '', suffix = '' } = m.groups;
  const mantissa = BigInt(intPart + digits);
  const scale = 10n ** BigInt(digits.length);
  const multiplier = MULTIPLIERS[suffix];
  if (multiplier === undefined) throw new QuantityError(value);
  const bytes = (mantissa * multiplier + scale - 1n) / scale;
  if (bytes > BigInt(MAX_BANDWIDTH)) throw new QuantityError(value, TOO_LARGE);
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
