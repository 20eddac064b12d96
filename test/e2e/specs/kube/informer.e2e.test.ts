/**
 * WatchdogInformer against the real API server, on a throw-away CRD of its own:
 * - lists and watches, keeps a cache, feeds keys into a WorkQueue, hasSynced();
 * - forced error: the CRD is deleted, so the informer's list/watch gets 404 and client-node's
 *   informer stops for good; the watchdog restarts it with backoff (counted in metrics), raises
 *   the stall alert (log line + gauge) after stallAfterMs, and once the CRD is back it recovers
 *   by itself: healthy again, new objects arrive, the alert clears.
 * - for contrast, a bare client-node informer in the same situation stays stopped.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { makeInformer, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { WatchdogInformer, customResourceSource } from '../../../../operator/src/kube/informer.ts';
import { WorkQueue } from '../../../../operator/src/kube/workqueue.ts';
import {
  createKubeClients,
  loadKubeConfig,
  type KubeClients,
  type ResourceRef,
} from '../../../../operator/src/kube/client.ts';
import { createMetrics } from '../../../../operator/src/kube/metrics.ts';
import { createLogger } from '../../../../operator/src/log.ts';
import { waitFor } from '../../support/wait.ts';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';

const suffix = randomBytes(3).toString('hex');
const group = `plumb${suffix}.test.blockpull.dev`;
const ref: ResourceRef = { group, version: 'v1', plural: 'widgets' };
const crdName = `widgets.${group}`;
const ns = `plumb-inf-${suffix}`;
const crd = {
  apiVersion: 'apiextensions.k8s.io/v1',
  kind: 'CustomResourceDefinition',
  metadata: { name: crdName },
  spec: {
    group,
    scope: 'Namespaced',
    names: { plural: 'widgets', singular: 'widget', kind: 'Widget' },
    versions: [
      {
        name: 'v1',
        served: true,
        storage: true,
        schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } },
      },
    ],
  },
};

let clients: KubeClients;
let kubectl: ClusterClient;

async function createCrd(): Promise<void> {
  await kubectl.kubectl(['apply', '-f', '-'], { input: JSON.stringify(crd) });
  await kubectl.kubectl(['wait', '--for=condition=Established', `crd/${crdName}`, '--timeout=60s']);
}

async function deleteCrd(): Promise<void> {
  await kubectl.kubectl(['delete', `crd/${crdName}`, '--ignore-not-found', '--wait=true', '--timeout=60s']);
}

async function createWidget(name: string): Promise<void> {
  // A freshly (re)created CRD may take a moment to be served for writes
  for (let i = 0; ; i++) {
    try {
      await clients.custom.createNamespacedCustomObject({
        ...ref,
        namespace: ns,
        body: { apiVersion: `${group}/v1`, kind: 'Widget', metadata: { name }, size: 1 },
      });
      return;
    } catch (err) {
      if (i > 50) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

beforeAll(async () => {
  clients = createKubeClients(loadKubeConfig(inject('kubeconfigPath')));
  kubectl = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
  await clients.core.createNamespace({ body: { metadata: { name: ns } } });
  await createCrd();
});

afterAll(async () => {
  if (kubectl === undefined) return;
  await deleteCrd().catch(() => undefined);
  await clients.core.deleteNamespace({ name: ns }).catch(() => undefined);
});

describe('WatchdogInformer (real API server)', () => {
  it('syncs, caches, enqueues; survives a forced error with restarts, a stall alert, and recovery', async () => {
    await createWidget('w1');
    const logLines: Record<string, unknown>[] = [];
    const logger = createLogger({
      level: 'debug',
      destination: new Writable({
        write(chunk: Buffer, _e, cb) {
          for (const l of chunk.toString().split('\n')) if (l) logLines.push(JSON.parse(l) as Record<string, unknown>);
          cb();
        },
      }),
    });
    const metrics = createMetrics({ collectDefault: false });
    const queue = new WorkQueue<string>({ name: 'widgets' });
    const deleted: string[] = [];
    const inf = new WatchdogInformer<KubernetesObject>({
      kc: clients.kc,
      source: customResourceSource(clients.custom, ref, ns),
      resource: 'widgets',
      logger,
      metrics,
      initialBackoffMs: 200,
      maxBackoffMs: 800,
      stallAfterMs: 2_000,
    });
    inf.enqueueOnChange(queue);
    inf.addEventHandler({ delete: (o) => deleted.push(o.metadata?.name ?? '') });
    expect(inf.hasSynced()).toBe(false);
    await inf.start();
    try {
      expect(await inf.waitForSync()).toBe(true);
      expect(inf.hasSynced()).toBe(true);
      await waitFor('healthy', 5_000, () => inf.healthy(), 25);
      expect(inf.get(ns, 'w1')?.metadata?.name).toBe('w1');
      expect(await queue.get()).toBe(`${ns}/w1`);
      queue.done(`${ns}/w1`);

      // Watch events: add and update arrive as keys, the cache follows
      await createWidget('w2');
      expect(await queue.get()).toBe(`${ns}/w2`);
      queue.done(`${ns}/w2`);
      await clients.custom.patchNamespacedCustomObject({
        ...ref,
        namespace: ns,
        name: 'w2',
        body: [{ op: 'replace', path: '/size', value: 2 }],
      });
      expect(await queue.get()).toBe(`${ns}/w2`);
      queue.done(`${ns}/w2`);
      await waitFor('cache update', 5_000, () => (inf.get(ns, 'w2') as { size?: number } | undefined)?.size === 2, 25);
      expect(
        inf
          .list(ns)
          .map((o) => o.metadata?.name)
          .sort(),
      ).toEqual(['w1', 'w2']);

      // A bare client-node informer for contrast (it must stop for good on the same error)
      const bare = makeInformer<KubernetesObject>(
        clients.kc,
        `/apis/${group}/v1/namespaces/${ns}/widgets`,
        async () =>
          (await clients.custom.listNamespacedCustomObject({
            ...ref,
            namespace: ns,
          })) as KubernetesListObject<KubernetesObject>,
      );
      let bareErrors = 0;
      const bareAdds: string[] = [];
      bare.on('error', () => bareErrors++);
      bare.on('add', (o) => bareAdds.push(o.metadata?.name ?? ''));
      await bare.start();

      // Forced error: the resource disappears (404 on list and watch)
      const tDown = performance.now();
      await deleteCrd();
      await waitFor('unhealthy after CRD deletion', 30_000, () => !inf.healthy(), 25);
      await waitFor('watchdog restarts', 10_000, () => inf.restarts() >= 2, 25);
      await waitFor(
        'stall alert',
        10_000,
        () => logLines.some((l) => l['alert'] === 'InformerStalled' && l['resource'] === 'widgets'),
        25,
      );
      const stalledAt = performance.now() - tDown;
      expect(stalledAt).toBeGreaterThanOrEqual(2_000);
      expect(await metrics.registry.getSingleMetricAsString('blockpull_informer_stalled')).toContain(
        'blockpull_informer_stalled{resource="widgets"} 1',
      );
      expect(inf.lastError()).toMatch(/404|Not Found/i);
      expect(deleted.sort()).toEqual(['w1', 'w2']); // the CRD's objects went away with it
      expect(bareErrors).toBeGreaterThan(0);
      const restartsWhileDown = inf.restarts();

      // The resource comes back: the watchdog's next restart succeeds without outside help
      await createCrd();
      await createWidget('w3');
      await waitFor('recovered', 15_000, () => inf.healthy(), 25);
      await waitFor('new object after recovery', 10_000, () => inf.get(ns, 'w3') !== undefined, 25);
      const keys = new Set<string>();
      while (queue.len() > 0) {
        const k = (await queue.get()) as string;
        keys.add(k);
        queue.done(k);
      }
      expect(keys.has(`${ns}/w3`)).toBe(true);
      expect(await metrics.registry.getSingleMetricAsString('blockpull_informer_stalled')).toContain(
        'blockpull_informer_stalled{resource="widgets"} 0',
      );
      expect(await metrics.registry.getSingleMetricAsString('blockpull_informer_restarts_total')).toContain(
        `blockpull_informer_restarts_total{resource="widgets"} ${inf.restarts()}`,
      );
      expect(inf.restarts()).toBeGreaterThanOrEqual(restartsWhileDown);
      expect(logLines.some((l) => l['msg'] === 'informer recovered')).toBe(true);
      // Backoff: restarts while down were spaced 200, 400, 800, 800... ms, not a hot loop
      const downFor = performance.now() - tDown;
      expect(inf.restarts()).toBeLessThanOrEqual(Math.ceil(downFor / 200));

      // The bare informer did not recover: it never saw w3
      await new Promise((r) => setTimeout(r, 1_000));
      expect(bareAdds).not.toContain('w3');
      await bare.stop();
      console.log(
        `stall alert after ${Math.round(stalledAt)} ms; ${inf.restarts()} watchdog restarts over ${Math.round(downFor)} ms`,
      );
    } finally {
      await inf.stop();
      queue.shutDown();
    }
  });
});
