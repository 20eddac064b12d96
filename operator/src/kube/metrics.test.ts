/**
 * The per-BlockPull series (running pulls only, removed when they stop): bounded cardinality.
 * Read through the registry's own exposition text, as Prometheus scrapes it.
 */
import { describe, expect, it } from 'vitest';
import { createMetrics } from './metrics.ts';

const seriesOf = async (text: Promise<string>, name: string): Promise<string[]> =>
  (await text).split('\n').filter((l) => l.startsWith(`${name}{`));

describe('per-BlockPull metrics', () => {
  it('exist only while a pull runs; progress ratio and last-progress time follow the bytes', async () => {
    const m = createMetrics({ collectDefault: false });
    const t0 = Date.parse('2026-11-27T10:00:00Z');
    m.setRunningPull('vms', 'a', { currentBytes: 0, totalBytes: 0 }, t0);
    m.setRunningPull('vms', 'b', { currentBytes: 256, totalBytes: 1024 }, t0);
    expect(await seriesOf(m.registry.metrics(), 'blockpull_pull_progress_ratio')).toEqual([
      'blockpull_pull_progress_ratio{blockpull_namespace="vms",blockpull_name="a"} 0',
      'blockpull_pull_progress_ratio{blockpull_namespace="vms",blockpull_name="b"} 0.25',
    ]);
    // No progress: the last-progress time stays; progress: it moves.
    m.setRunningPull('vms', 'a', { currentBytes: 0, totalBytes: 0 }, t0 + 60_000);
    m.setRunningPull('vms', 'b', { currentBytes: 512, totalBytes: 1024 }, t0 + 60_000);
    expect(await seriesOf(m.registry.metrics(), 'blockpull_pull_last_progress_timestamp_seconds')).toEqual([
      `blockpull_pull_last_progress_timestamp_seconds{blockpull_namespace="vms",blockpull_name="a"} ${t0 / 1000}`,
      `blockpull_pull_last_progress_timestamp_seconds{blockpull_namespace="vms",blockpull_name="b"} ${t0 / 1000 + 60}`,
    ]);
    m.removePull('vms', 'a');
    m.removePull('vms', 'b');
    m.removePull('vms', 'never-ran');
    expect(await seriesOf(m.registry.metrics(), 'blockpull_pull_progress_ratio')).toEqual([]);
    expect(await seriesOf(m.registry.metrics(), 'blockpull_pull_last_progress_timestamp_seconds')).toEqual([]);
  });

  it('a pull that runs again after a pause starts a fresh last-progress time', async () => {
    const m = createMetrics({ collectDefault: false });
    const t0 = Date.parse('2026-11-27T10:00:00Z');
    m.setRunningPull('vms', 'a', { currentBytes: 100, totalBytes: 1000 }, t0);
    m.removePull('vms', 'a');
    m.setRunningPull('vms', 'a', { currentBytes: 100, totalBytes: 1000 }, t0 + 600_000);
    expect(await seriesOf(m.registry.metrics(), 'blockpull_pull_last_progress_timestamp_seconds')).toEqual([
      `blockpull_pull_last_progress_timestamp_seconds{blockpull_namespace="vms",blockpull_name="a"} ${t0 / 1000 + 600}`,
    ]);
  });

  it('cardinality stays bounded by the pulls running at once', async () => {
    const m = createMetrics({ collectDefault: false });
    for (let i = 0; i < 500; i++) {
      m.setRunningPull('vms', `p${i}`, { currentBytes: i, totalBytes: 1000 }, 1000 * i);
      if (i >= 4) m.removePull('vms', `p${i - 4}`); // p(i-3)..p(i) run: 4 at once
    }
    expect((await seriesOf(m.registry.metrics(), 'blockpull_pull_progress_ratio')).length).toBe(4);
  });
});

describe('reconcile results', () => {
  it('start at 0 for success, error and requeue (error rates exist before the first error)', async () => {
    const m = createMetrics({ collectDefault: false });
    expect(await seriesOf(m.registry.metrics(), 'blockpull_reconcile_total')).toEqual([
      'blockpull_reconcile_total{result="success"} 0',
      'blockpull_reconcile_total{result="error"} 0',
      'blockpull_reconcile_total{result="requeue"} 0',
    ]);
  });
});
