/**
 * kube-apiserver's own request counters (apiserver_request_total, from GET /metrics): what the
 * scale bench reports as "API requests by verb and resource", independent of the operator.
 */

/** Adds `n` requests under `key` (a bench's own requests, subtracted from the API server's counts by diffCounts). */
export function addCount(counts: RequestCounts, key: string, n = 1): void {
  counts.set(key, (counts.get(key) ?? 0) + n);
}

/** "VERB resource[/subresource]" -> count, summed over codes, scopes and other labels. */
export type RequestCounts = Map<string, number>;

const LINE = /^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

export function parseRequestTotals(text: string): RequestCounts {
  const out: RequestCounts = new Map();
  for (const line of text.split('\n')) {
    const m = LINE.exec(line);
    if (m === null) continue;
    const labels: Record<string, string> = {};
    for (const l of m[1]!.matchAll(LABEL)) labels[l[1]!] = l[2]!;
    const resource = labels['resource'] ?? '';
    if (resource === '') continue; // non-resource paths (/metrics, /readyz, /openapi)
    const key = `${labels['verb'] ?? '?'} ${resource}${labels['subresource'] ? `/${labels['subresource']}` : ''}`;
    out.set(key, (out.get(key) ?? 0) + Number(m[2]));
  }
  return out;
}

/** after - before, minus what the caller itself sent (`own`), keeping positive entries. */
export function diffCounts(before: RequestCounts, after: RequestCounts, own: RequestCounts = new Map()): RequestCounts {
  const out: RequestCounts = new Map();
  for (const [k, v] of after) {
    const d = v - (before.get(k) ?? 0) - (own.get(k) ?? 0);
    if (d > 0) out.set(k, d);
  }
  return out;
}

export function total(c: RequestCounts, filter: (key: string) => boolean = () => true): number {
  let n = 0;
  for (const [k, v] of c) if (filter(k)) n += v;
  return n;
}

/** Sorted "VERB resource: n" lines, largest first. */
export function formatCounts(c: RequestCounts): string[] {
  return [...c.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([k, v]) => `${k}: ${v}`);
}

/**
 * A filter of the operator's own requests: neither the leader election's (GET+PUT leases every
 * retry period, whatever the fleet) nor the API server's own (its endpoints reconciler; watches of
 * resources the operator does not read, re-opened by the API server's internal informers).
 * `watched`: the resources the operator watches (their WATCH requests are its own).
 */
export function operatorRequests(watched: readonly string[]): (key: string) => boolean {
  const watches = new Set(watched.map((r) => `WATCH ${r}`));
  return (key) =>
    !key.endsWith(' leases') && !key.endsWith(' endpoints') && (!key.startsWith('WATCH ') || watches.has(key));
}
