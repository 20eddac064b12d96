import { describe, expect, it } from 'vitest';
import { memoryLine, operatorTotalsOf, sumMetric } from './operator-metrics.ts';

const text = [
  '# HELP blockpull_reconcile_total Reconciles',
  'blockpull_reconcile_total{controller="blockpull",result="ok"} 10',
  'blockpull_reconcile_total{controller="policy",result="ok"} 4',
  'blockpull_status_writes_total 7',
  'workqueue_queue_duration_seconds_sum{name="blockpull"} 1.5',
  'workqueue_queue_duration_seconds_sum{name="policy"} 0.25',
  'workqueue_queue_duration_seconds_count{name="policy"} 5',
  'process_resident_memory_bytes 104857600',
  'nodejs_heap_size_total_bytes 52428800',
  'nodejs_heap_size_used_bytes 41943040',
  'nodejs_external_memory_bytes 2097152',
  'nodejs_heap_space_size_used_bytes{space="old"} 31457280',
  'nodejs_heap_space_size_used_bytes{space="new"} 1024',
].join('\n');

describe("the operator's /metrics", () => {
  it('sums a counter over its labels, or those with a label', () => {
    expect(sumMetric(text, 'blockpull_reconcile_total')).toBe(14);
    expect(sumMetric(text, 'blockpull_reconcile_total', 'controller="policy"')).toBe(4);
    expect(sumMetric(text, 'absent_total')).toBe(0);
  });

  it("reads the totals of one work queue and the operator's memory", () => {
    const t = operatorTotalsOf(text, 'policy');
    expect(t).toMatchObject({ writes: 7, reconciles: 14, queueWaitSum: 0.25, queueWaitCount: 5 });
    expect(t.memory).toMatchObject({ rss: 104857600, 'used old': 31457280 });
    expect(memoryLine(t.memory)).toBe(
      'RSS 100 MiB = heap 50 (used 40: old 30) + external 2 + the rest (code, stacks, native)',
    );
  });
});
