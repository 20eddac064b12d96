/**
 * WatchdogInformer's indexes and transform, against a small HTTP server that answers
 * the watch with chosen events: objects are filed when listed, moved when modified, unfiled when
 * deleted; the cache holds the transformed objects (list and watch alike).
 */
import http from 'node:http';
import type { KubernetesObject } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { BP_BY_VMI, BP_RUNNING_BY_NODE, blockPullIndexes } from './indexes.ts';
import { stripMetadata, WatchdogInformer } from '../kube/informer.ts';
import { serverUrl, testKubeConfig } from '../../../test/unit/support/kubeconfig.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function bp(
  name: string,
  vmiName: string,
  rv: string,
  status?: Record<string, unknown>,
): KubernetesObject & Record<string, unknown> {
  return {
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPull',
    metadata: {
      name,
      namespace: 'ns',
      resourceVersion: rv,
      managedFields: [{ manager: 'kubectl', fieldsV1: { big: 'x'.repeat(100) } }],
    },
    spec: { vmiName, disk: 'rootdisk' },
    ...(status !== undefined ? { status } : {}),
  };
}

describe('WatchdogInformer indexes', () => {
  it('files listed objects, moves them on MODIFIED, unfiles them on DELETED; caches transformed objects', async () => {
    let watchRes: http.ServerResponse | undefined;
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.flushHeaders();
      watchRes = res;
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const kc = testKubeConfig(serverUrl(server));
    const inf = new WatchdogInformer<KubernetesObject>({
      kc,
      resource: 'blockpulls',
      source: {
        path: '/apis/blockpull.dev/v1alpha1/blockpulls',
        list: () =>
          Promise.resolve({
            apiVersion: 'v1',
            kind: 'List',
            metadata: { resourceVersion: '3' },
            items: [
              bp('a', 'vm1', '1'),
              bp('b', 'vm1', '2'),
              bp('c', 'vm2', '3', { phase: 'Running', launcher: { node: 'n1' } }),
            ],
          }),
      },
      transform: stripMetadata,
      probe: () => Promise.resolve(true),
    });
    for (const [name, fn] of Object.entries(blockPullIndexes)) inf.addIndex(name, fn);
    const names = (objs: readonly KubernetesObject[]) => objs.map((o) => o.metadata?.name).sort();
    const send = (type: string, object: unknown) => watchRes!.write(`${JSON.stringify({ type, object })}\n`);
    try {
      await inf.start();
      const t0 = performance.now();
      while ((watchRes === undefined || !inf.healthy()) && performance.now() - t0 < 3_000) await sleep(10);
      expect(names(inf.byIndex(BP_BY_VMI, 'ns/vm1'))).toEqual(['a', 'b']);
      expect(names(inf.byIndex(BP_BY_VMI, 'ns/vm2'))).toEqual(['c']);
      expect([...inf.indexValues(BP_RUNNING_BY_NODE).entries()].map(([k, v]) => [k, [...v]])).toEqual([
        ['n1', ['ns/c']],
      ]);
      expect(inf.getByKey('ns/a')?.metadata?.managedFields).toBeUndefined();

      // b moves to vm2 and runs on n2; c ends; a is deleted.
      send('MODIFIED', bp('b', 'vm2', '4', { phase: 'Running', launcher: { node: 'n2' } }));
      send('MODIFIED', bp('c', 'vm2', '5', { phase: 'Completed' }));
      send('DELETED', bp('a', 'vm1', '6'));
      const t1 = performance.now();
      while (inf.getByKey('ns/a') !== undefined && performance.now() - t1 < 3_000) await sleep(10);
      expect(inf.byIndex(BP_BY_VMI, 'ns/vm1')).toEqual([]);
      expect(inf.indexValues(BP_BY_VMI).has('ns/vm1')).toBe(false);
      expect(names(inf.byIndex(BP_BY_VMI, 'ns/vm2'))).toEqual(['b', 'c']);
      expect([...inf.indexValues(BP_RUNNING_BY_NODE).entries()].map(([k, v]) => [k, [...v]])).toEqual([
        ['n2', ['ns/b']],
      ]);
      // Watched objects are transformed too.
      expect(inf.getByKey('ns/b')?.metadata?.managedFields).toBeUndefined();
      expect(inf.getByKey('ns/b')?.metadata?.resourceVersion).toBe('4');
    } finally {
      await inf.stop();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
