import { describe, expect, it } from 'vitest';
import { diffCounts, formatCounts, operatorRequests, parseRequestTotals, total } from './apiserver-metrics.ts';

const sample = (getBp: number, patch: number): string =>
  [
    '# HELP apiserver_request_total [STABLE] Counter of apiserver requests',
    `apiserver_request_total{code="200",component="apiserver",dry_run="",group="blockpull.dev",resource="blockpulls",scope="resource",subresource="",verb="GET",version="v1alpha1"} ${getBp}`,
    `apiserver_request_total{code="404",component="apiserver",dry_run="",group="blockpull.dev",resource="blockpulls",scope="resource",subresource="",verb="GET",version="v1alpha1"} 2`,
    `apiserver_request_total{code="200",component="apiserver",dry_run="",group="blockpull.dev",resource="blockpulls",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} ${patch}`,
    'apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="",scope="",subresource="/readyz",verb="GET",version=""} 40',
    'apiserver_request_duration_seconds_bucket{le="0.1",resource="blockpulls",verb="GET"} 5',
  ].join('\n');

describe('apiserver_request_total', () => {
  it('sums codes per verb and resource/subresource, skipping non-resource paths and other metrics', () => {
    const c = parseRequestTotals(sample(10, 3));
    expect([...c.entries()]).toEqual([
      ['GET blockpulls', 12],
      ['PATCH blockpulls/status', 3],
    ]);
  });

  it('diffs two scrapes, minus the caller’s own requests', () => {
    const d = diffCounts(
      parseRequestTotals(sample(10, 3)),
      parseRequestTotals(sample(25, 9)),
      new Map([['GET blockpulls', 5]]),
    );
    expect(formatCounts(d)).toEqual(['GET blockpulls: 10', 'PATCH blockpulls/status: 6']);
    expect(total(d)).toBe(16);
    expect(total(d, (k) => k.startsWith('PATCH'))).toBe(6);
  });

  it("keeps the operator's own requests: no lease renewals, no endpoints, only watches of what it watches", () => {
    const own = operatorRequests(['blockpulls', 'blockpullpolicies']);
    expect(
      ['GET leases', 'PUT leases', 'PUT endpoints', 'WATCH blockpulls', 'WATCH configmaps', 'POST blockpulls'].filter(
        own,
      ),
    ).toEqual(['WATCH blockpulls', 'POST blockpulls']);
  });
});
