/**
 * `npm run bench:cache [-- --count 10000]`: heap bytes per cached BlockPull, in one process.
 *
 * Builds `--count` waiting BlockPulls as the API server returns them (status from decide() for a
 * VMI not found: status.message and six conditions), serialised to JSON, then keeps them twice
 * and measures the live heap after a full GC each time:
 * - parsed only: JSON.parse + the BlockPull schema, as the cache held them before interning;
 * - cache form: BlockPulls.cacheForm, what the informer caches now (parsed, strings shared, kube/intern.ts).
 * No API server is needed: cacheForm makes no request.
 */
import { KubeConfig } from '@kubernetes/client-node';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { parseBlockPull, type BlockPull } from '../../../operator/src/api/types.ts';
import { BlockPulls } from '../../../operator/src/controller/blockpulls.ts';
import { decide } from '../../unit/support/decide.ts';
import { StatusWriter } from '../../../operator/src/controller/status-writer.ts';
import { createKubeClients } from '../../../operator/src/kube/client.ts';

const { values } = parseArgs({ options: { count: { type: 'string', default: '10000' } } });
const count = z.coerce.number().int().min(100).max(100_000).parse(values.count);
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error('run with node --expose-gc (npm run bench:cache does)');

function apiObject(i: number): string {
  const raw = {
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPull',
    metadata: {
      name: `wait-${i}`,
      namespace: 'scale',
      uid: `${i.toString(16).padStart(8, '0')}-aaaa-bbbb-cccc-123456789abc`,
      resourceVersion: String(100_000 + i),
      generation: 1,
      creationTimestamp: '2026-12-01T10:00:00Z',
    },
    spec: { vmiName: `vm-wait-${i}`, disk: 'rootdisk' },
  };
  const d = decide({
    now: new Date(Date.UTC(2026, 11, 1, 10, 0, i % 60)),
    bp: parseBlockPull(raw),
    launcher: { kind: 'vmiNotFound', message: `VMI vm-wait-${i} not found in namespace scale` },
    diskHolder: null,
    slots: {
      running: 0,
      runningOnNode: 0,
      runningInNamespace: 0,
      namespacesWanting: 1,
      maxConcurrentPulls: 4,
      maxPullsPerNode: 2,
    },
    pollIntervalMs: 500,
    waitRequeueMs: 5_000,
  });
  return JSON.stringify({ ...raw, status: d.status });
}

/** Live heap bytes that `make` adds while its result is kept. */
function heapOf(make: () => unknown[]): { bytes: number; kept: number } {
  gc!();
  const before = process.memoryUsage().heapUsed;
  const kept = make();
  gc!();
  const bytes = process.memoryUsage().heapUsed - before;
  return { bytes, kept: kept.length };
}

const texts = Array.from({ length: count }, (_, i) => apiObject(i));
// cacheForm makes no request: a kubeconfig whose server is never contacted.
const kc = new KubeConfig();
kc.loadFromOptions({
  clusters: [{ name: 'none', server: 'https://127.0.0.1:9' }],
  users: [{ name: 'none' }],
  contexts: [{ name: 'none', cluster: 'none', user: 'none' }],
  currentContext: 'none',
});
const clients = createKubeClients(kc);
const writer = new StatusWriter({
  clients,
  statusUpdateIntervalMs: 2_000,
  enqueue: () => undefined,
  now: () => new Date(),
});
const blockPulls = new BlockPulls({ get: () => undefined, list: () => [] }, writer, clients);

const parsed = heapOf(() => texts.map((t): BlockPull => parseBlockPull(JSON.parse(t))));
const cached = heapOf(() => texts.map((t): unknown => blockPulls.cacheForm(JSON.parse(t) as object)));
const per = (b: number): string => (b / count).toFixed(0);
const mib = (b: number): string => (b / 1_048_576).toFixed(1);
process.stdout.write(
  `bench:cache: ${count} waiting BlockPulls (JSON ${texts[0]!.length} bytes each)\n` +
    `  parsed only:  ${per(parsed.bytes)} bytes each, ${mib(parsed.bytes)} MiB\n` +
    `  cache form:   ${per(cached.bytes)} bytes each, ${mib(cached.bytes)} MiB\n` +
    `RESULT bench:cache cache form / parsed only = ${(cached.bytes / parsed.bytes).toFixed(2)}\n`,
);
