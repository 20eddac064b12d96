/**
 * watch events wake exactly the BlockPulls they concern, through the cache indexes:
 * a VMI event the BlockPulls naming it, a launcher pod event those of the VMI it claims (by uid),
 * Completed ones included (their VMI may have moved to another pod), nothing else. A small HTTP server plays the API server (lists, then watches that we feed).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../kube/metrics.ts';
import { createLogger } from '../log.ts';
import { BP_BY_VMI } from './indexes.ts';
import { serverUrl, testKubeConfig } from '../../../test/unit/support/kubeconfig.ts';
import { testController } from '../../../test/unit/support/reconciler.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const bp = (name: string, vmiName: string) => ({
  apiVersion: 'blockpull.dev/v1alpha1',
  kind: 'BlockPull',
  metadata: { name, namespace: 'ns', resourceVersion: '1' },
  spec: { vmiName, disk: 'd' },
});
const vmi = (name: string, uid: string, rv: string) => ({
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachineInstance',
  metadata: { name, namespace: 'ns', uid, resourceVersion: rv },
  status: { phase: 'Running' },
});
const pod = (name: string, vmiUid: string, rv: string) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    name,
    namespace: 'ns',
    resourceVersion: rv,
    labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': vmiUid },
  },
  spec: { nodeName: 'n1', containers: [{ name: 'compute' }] },
});

describe('Controller wakes by index', () => {
  it(
    'a VMI event wakes the BlockPulls naming it; a pod event those of the VMI it claims',
    { timeout: 20_000 },
    async () => {
      const lists: Record<string, unknown[]> = {
        // b is Completed: a new launcher pod of its VMI (a migration) must wake it too.
        blockpulls: [
          bp('a1', 'vm1'),
          bp('a2', 'vm1'),
          { ...bp('b', 'vm2'), status: { phase: 'Completed', reason: 'Completed' } },
          bp('c', 'vm3'),
        ],
        virtualmachineinstances: [vmi('vm2', 'uid-2', '1')],
        pods: [],
      };
      const watches = new Map<string, http.ServerResponse>();
      const server = http.createServer((req, res) => {
        const url = new URL(req.url ?? '/', 'http://x');
        const resource = url.pathname.split('/').pop() ?? '';
        res.writeHead(200, { 'Content-Type': 'application/json' });
        if (url.searchParams.get('watch') === 'true') {
          res.flushHeaders();
          watches.set(resource, res);
          return;
        }
        res.end(
          JSON.stringify({
            apiVersion: 'v1',
            kind: 'List',
            metadata: { resourceVersion: '1' },
            items: lists[resource] ?? [],
          }),
        );
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const kc = testKubeConfig(serverUrl(server));
      const controller = testController(kc);
      const woken: string[] = [];
      const add = controller.queue.add.bind(controller.queue);
      controller.queue.add = (key: string) => {
        woken.push(key);
        add(key);
      };
      const informers = [controller.blockPulls, controller.vmis, controller.pods];
      const send = (resource: string, type: string, object: unknown) =>
        watches.get(resource)!.write(`${JSON.stringify({ type, object })}\n`);
      try {
        for (const inf of informers) await inf.start();
        const t0 = performance.now();
        while (watches.size < 3 && performance.now() - t0 < 5_000) await sleep(10);
        expect(watches.size).toBe(3);
        woken.length = 0; // the BlockPull adds of the first list

        send('virtualmachineinstances', 'ADDED', vmi('vm1', 'uid-1', '2'));
        const t1 = performance.now();
        while (woken.length < 2 && performance.now() - t1 < 3_000) await sleep(10);
        await sleep(50);
        expect(woken.sort()).toEqual(['ns/a1', 'ns/a2']);

        woken.length = 0;
        send('pods', 'ADDED', pod('virt-launcher-vm2-x', 'uid-2', '3'));
        const t2 = performance.now();
        while (woken.length < 1 && performance.now() - t2 < 3_000) await sleep(10);
        await sleep(50);
        expect(woken).toEqual(['ns/b']);

        // A pod claiming no known VMI wakes nothing; the cached pod keeps only what is read.
        woken.length = 0;
        send('pods', 'ADDED', pod('stray', 'uid-unknown', '4'));
        await sleep(200);
        expect(woken).toEqual([]);
        expect(controller.pods.get('ns', 'virt-launcher-vm2-x')).toEqual({
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: {
            name: 'virt-launcher-vm2-x',
            namespace: 'ns',
            resourceVersion: '3',
            labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': 'uid-2' },
          },
          spec: { nodeName: 'n1', containers: [{ name: 'compute' }] },
        });
      } finally {
        for (const inf of informers) await inf.stop();
        controller.queue.shutDown();
        server.closeAllConnections();
        await new Promise((r) => server.close(r));
      }
    },
  );
});

describe('blockpull_jobs{phase}', () => {
  it(
    'is counted at each scrape from the phase index: it follows watch events at once, no timer, no walk of the cache',
    { timeout: 20_000 },
    async () => {
      const withStatus = (name: string, rv: string, phase: string) => ({
        ...bp(name, 'vm'),
        metadata: { name, namespace: 'ns', resourceVersion: rv },
        status: { phase },
      });
      const watches = new Map<string, http.ServerResponse>();
      const server = http.createServer((req, res) => {
        const url = new URL(req.url ?? '/', 'http://x');
        res.writeHead(200, { 'Content-Type': 'application/json' });
        if (url.searchParams.get('watch') === 'true') {
          res.flushHeaders();
          watches.set(url.pathname.split('/').pop() ?? '', res);
          return;
        }
        const items = url.pathname.endsWith('/blockpulls')
          ? [bp('p1', 'vm'), bp('p2', 'vm'), withStatus('r', '1', 'Running')]
          : [];
        res.end(JSON.stringify({ apiVersion: 'v1', kind: 'List', metadata: { resourceVersion: '1' }, items }));
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const kc = testKubeConfig(serverUrl(server));
      const metrics = createMetrics({ collectDefault: false });
      const controller = testController(kc, { metrics });
      const jobs = async (): Promise<Record<string, number>> => {
        const out: Record<string, number> = {};
        for (const m of (await metrics.registry.metrics()).matchAll(/^blockpull_jobs\{phase="(\w+)"\} (\d+)$/gm))
          out[m[1]!] = Number(m[2]);
        return out;
      };
      try {
        // The controller's run() (its workers) is not started: only the cache feeds the gauge.
        await controller.blockPulls.start();
        const t0 = performance.now();
        while (!watches.has('blockpulls') && performance.now() - t0 < 5_000) await sleep(10);
        expect(await jobs()).toEqual({ Pending: 2, Running: 1 });

        watches
          .get('blockpulls')!
          .write(`${JSON.stringify({ type: 'MODIFIED', object: withStatus('r', '2', 'Completed') })}\n`);
        watches
          .get('blockpulls')!
          .write(`${JSON.stringify({ type: 'MODIFIED', object: withStatus('p1', '3', 'Running') })}\n`);
        watches.get('blockpulls')!.write(`${JSON.stringify({ type: 'DELETED', object: bp('p2', 'vm') })}\n`);
        const t1 = performance.now();
        while (controller.blockPulls.list().length > 2 && performance.now() - t1 < 3_000) await sleep(10);
        await sleep(50);
        // A phase that emptied is reported as 0, not dropped (alerts compare against it).
        expect(await jobs()).toEqual({ Pending: 0, Running: 1, Completed: 1 });
      } finally {
        await controller.blockPulls.stop();
        controller.queue.shutDown();
        server.closeAllConnections();
        await new Promise((r) => server.close(r));
      }
    },
  );
});

describe('the BlockPull cache', () => {
  it(
    'holds each BlockPull once, as the reconciler parses it; one that does not parse, as it came',
    { timeout: 20_000 },
    async () => {
      const managedFields = [{ manager: 'kubectl', operation: 'Update' }];
      const valid = {
        ...bp('ok', 'vm'),
        metadata: { name: 'ok', namespace: 'ns', uid: 'u1', resourceVersion: '1', managedFields, labels: { a: 'b' } },
        spec: { vmiName: 'vm', disk: 'd', notInTheSchema: 1 },
      };
      const invalid = {
        ...bp('bad', 'vm'),
        metadata: { name: 'bad', namespace: 'ns', uid: 'u2', resourceVersion: '1', managedFields },
        spec: { vmiName: 'vm' },
      };
      const server = http.createServer((req, res) => {
        const url = new URL(req.url ?? '/', 'http://x');
        res.writeHead(200, { 'Content-Type': 'application/json' });
        if (url.searchParams.get('watch') === 'true') {
          res.flushHeaders();
          return;
        }
        const items = url.pathname.endsWith('/blockpulls') ? [valid, invalid] : [];
        res.end(JSON.stringify({ apiVersion: 'v1', kind: 'List', metadata: { resourceVersion: '1' }, items }));
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const kc = testKubeConfig(serverUrl(server));
      const controller = testController(kc);
      try {
        await controller.blockPulls.start();
        expect(await controller.blockPulls.waitForSync()).toBe(true);
        // The parsed form: the schema's defaults filled in, what it does not know not kept (nor managedFields).
        expect(controller.blockPulls.get('ns', 'ok')).toEqual({
          apiVersion: 'blockpull.dev/v1alpha1',
          kind: 'BlockPull',
          metadata: { name: 'ok', namespace: 'ns', uid: 'u1', resourceVersion: '1', labels: { a: 'b' } },
          spec: { vmiName: 'vm', disk: 'd', maxRetries: 3, migrationPolicy: 'Yield', paused: false, dryRun: false },
        });
        // Not parseable (no spec.disk): cached as it came, without managedFields; the reconciler reports it.
        expect(controller.blockPulls.get('ns', 'bad')).toEqual({
          ...invalid,
          metadata: { name: 'bad', namespace: 'ns', uid: 'u2', resourceVersion: '1' },
        });
        // Indexes read the cached form.
        expect(
          controller.blockPulls
            .byIndex(BP_BY_VMI, 'ns/vm')
            .map((o) => o.metadata?.name)
            .sort(),
        ).toEqual(['bad', 'ok']);
      } finally {
        await controller.blockPulls.stop();
        controller.queue.shutDown();
        server.closeAllConnections();
        await new Promise((r) => server.close(r));
      }
    },
  );
});

describe("KubeVirt's optional kinds (VirtualMachineSnapshot, VirtualMachineBackup)", () => {
  const snapshot = (name: string, vm: string, rv: string, phase = 'InProgress') => ({
    apiVersion: 'snapshot.kubevirt.io/v1beta1',
    kind: 'VirtualMachineSnapshot',
    metadata: { name, namespace: 'ns', resourceVersion: rv },
    spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: vm } },
    status: { phase },
  });

  async function fakeApi(served: Record<string, string[]>) {
    const watches = new Map<string, http.ServerResponse>();
    const requests: string[] = [];
    const server = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      requests.push(url.pathname);
      const discovery = /^\/apis\/([^/]+)\/([^/]+)$/.exec(url.pathname);
      if (discovery !== null) {
        const resources = served[`${discovery[1]}/${discovery[2]}`];
        if (resources === undefined) {
          res.writeHead(404, { 'Content-Type': 'application/json' });
          res.end(
            JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'NotFound', code: 404 }),
          );
          return;
        }
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(
          JSON.stringify({
            kind: 'APIResourceList',
            apiVersion: 'v1',
            groupVersion: `${discovery[1]}/${discovery[2]}`,
            resources: resources.map((name) => ({
              name,
              namespaced: true,
              kind: 'X',
              verbs: ['list'],
              singularName: '',
            })),
          }),
        );
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      const resource = url.pathname.split('/').pop() ?? '';
      if (url.searchParams.get('watch') === 'true') {
        res.flushHeaders();
        watches.set(resource, res);
        return;
      }
      res.end(
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'List',
          metadata: { resourceVersion: '1' },
          items: resource === 'blockpulls' ? [bp('a', 'vm1'), bp('b', 'vm2')] : [],
        }),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [
        { name: 'c', server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true },
      ],
      users: [{ name: 'u', token: 'x' }],
      contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
      currentContext: 'x',
    });
    const lines: Record<string, unknown>[] = [];
    const logger = createLogger({
      level: 'info',
      destination: { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) },
    });
    const controller = testController(kc, { logger });
    const close = async (): Promise<void> => {
      controller.queue.shutDown();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    };
    return { controller, watches, requests, lines, close };
  }

  it(
    'not served (KubeVirt 1.7): not watched, no list or watch of them, said once in the log',
    { timeout: 20_000 },
    async () => {
      const api = await fakeApi({});
      try {
        await api.controller.discoverWatches(new AbortController().signal);
        await api.controller.discoverWatches(new AbortController().signal);
        expect(api.controller.optionalInformers()).toEqual({});
        expect(api.requests.sort()).toEqual([
          '/apis/backup.kubevirt.io/v1alpha1',
          '/apis/snapshot.kubevirt.io/v1alpha1',
          '/apis/snapshot.kubevirt.io/v1beta1',
        ]);
        const said = api.lines.filter((l) => Array.isArray(l['notWatched']));
        expect(said).toHaveLength(1);
        expect(said[0]?.['notWatched']).toEqual([
          'virtualmachinesnapshots.snapshot.kubevirt.io',
          'virtualmachinebackups.backup.kubevirt.io',
        ]);
      } finally {
        await api.close();
      }
    },
  );

  it(
    'served: watched at the version served; a snapshot event wakes the BlockPulls of its VM',
    { timeout: 20_000 },
    async () => {
      const api = await fakeApi({
        'snapshot.kubevirt.io/v1alpha1': ['virtualmachinesnapshots'],
        'backup.kubevirt.io/v1alpha1': ['virtualmachinebackups', 'virtualmachinebackups/status'],
      });
      const { controller, watches } = api;
      const woken: string[] = [];
      const add = controller.queue.add.bind(controller.queue);
      controller.queue.add = (key: string) => {
        woken.push(key);
        add(key);
      };
      await controller.discoverWatches(new AbortController().signal);
      const { snapshots, backups } = controller.optionalInformers();
      expect(snapshots).toBeDefined();
      expect(backups).toBeDefined();
      expect(api.lines.find((l) => Array.isArray(l['watched']))?.['watched']).toEqual(
        expect.arrayContaining([
          'virtualmachinesnapshots.snapshot.kubevirt.io/v1alpha1',
          'virtualmachinebackups.backup.kubevirt.io/v1alpha1',
        ]),
      );
      const informers = [controller.blockPulls, snapshots!];
      try {
        for (const inf of informers) await inf.start();
        const t0 = performance.now();
        while (watches.size < 2 && performance.now() - t0 < 5_000) await sleep(10);
        woken.length = 0;
        watches
          .get('virtualmachinesnapshots')!
          .write(`${JSON.stringify({ type: 'ADDED', object: snapshot('s1', 'vm2', '2') })}\n`);
        const t1 = performance.now();
        while (woken.length < 1 && performance.now() - t1 < 3_000) await sleep(10);
        await sleep(50);
        expect(woken).toEqual(['ns/b']);
      } finally {
        for (const inf of informers) await inf.stop();
        await api.close();
      }
    },
  );
});
