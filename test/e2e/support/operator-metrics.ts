/**
 * What the benches read of the operator's own /metrics (prom-client's text format): counters
 * summed over their labels, the work queue's waits, and its view of its memory. One reader for
 * every bench (scale, fleet), so each figure is read the same way.
 */

export interface OperatorTotals {
  /** blockpull_status_writes_total, every controller. */
  readonly writes: number;
  /** blockpull_reconcile_total, every controller. */
  readonly reconciles: number;
  /** Events the operator dropped because its event queue was full (kube/events.ts). */
  readonly eventsDropped: number;
  /** The work queue `queue`: seconds waited in it, summed, and how many items were handed out. */
  readonly queueWaitSum: number;
  readonly queueWaitCount: number;
  /** The operator's own view of its memory (process.memoryUsage and v8 heap spaces), bytes. */
  readonly memory: Record<string, number>;
}

/** The sum of every sample of `name` whose labels contain `labels` (e.g. 'name="policy"'). */
export function sumMetric(text: string, name: string, labels = ''): number {
  let n = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*${labels}[^}]*\\})? ([0-9.e+]+)$`, 'gm')))
    n += Number(m[1]);
  return n;
}

/** The operator's /metrics text ('' without a port: not up yet). */
export async function scrapeOperator(port: number | undefined): Promise<string> {
  if (port === undefined) return '';
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

export function operatorTotalsOf(text: string, queue = 'blockpull'): OperatorTotals {
  const sum = (name: string, labels = ''): number => sumMetric(text, name, labels);
  const memory: Record<string, number> = {
    rss: sum('process_resident_memory_bytes'),
    heapTotal: sum('nodejs_heap_size_total_bytes'),
    heapUsed: sum('nodejs_heap_size_used_bytes'),
    external: sum('nodejs_external_memory_bytes'),
  };
  for (const m of text.matchAll(/^nodejs_heap_space_size_used_bytes\{space="(\w+)"\} ([0-9.e+]+)$/gm))
    memory[`used ${m[1]}`] = Number(m[2]);
  return {
    writes: sum('blockpull_status_writes_total'),
    reconciles: sum('blockpull_reconcile_total'),
    eventsDropped: sum('blockpull_events_dropped_total'),
    queueWaitSum: sum('workqueue_queue_duration_seconds_sum', `name="${queue}"`),
    queueWaitCount: sum('workqueue_queue_duration_seconds_count', `name="${queue}"`),
    memory,
  };
}

export async function operatorTotals(port: number | undefined, queue = 'blockpull'): Promise<OperatorTotals> {
  return operatorTotalsOf(await scrapeOperator(port), queue);
}

const mib = (b: number | undefined): string => ((b ?? 0) / 1048576).toFixed(0);

/** "RSS n MiB = heap ... + external ... + the rest", from OperatorTotals.memory. */
export function memoryLine(m: Record<string, number>): string {
  return `RSS ${mib(m['rss'])} MiB = heap ${mib(m['heapTotal'])} (used ${mib(m['heapUsed'])}: ${Object.keys(m)
    .filter((k) => k.startsWith('used ') && (m[k] ?? 0) > 1048576)
    .map((k) => `${k.slice(5)} ${mib(m[k])}`)
    .join(', ')}) + external ${mib(m['external'])} + the rest (code, stacks, native)`;
}
