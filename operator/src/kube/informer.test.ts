/**
 * WatchdogInformer's catch-up after an outage, without a server: the list fails as chosen, the
 * /readyz probe is injected. The real API server restart is test/e2e/specs/kube/informer-outage.e2e.test.ts.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { isOutageError, LIST_PAGE_SIZE, WatchdogInformer, type ListPage } from './informer.ts';
import { testKubeConfig } from '../../../test/unit/support/kubeconfig.ts';

const kubeConfig = (server = 'http://127.0.0.1:9'): KubeConfig => testKubeConfig(server);

const httpError = (statusCode: number): Error => Object.assign(new Error(`HTTP ${statusCode}`), { statusCode });

/** An informer whose list fails with `error`; the probe answers from `ready()`. Backoff 10 s. */
function failing(error: Error, ready: () => boolean) {
  let lists = 0;
  const inf = new WatchdogInformer<KubernetesObject>({
    kc: kubeConfig(),
    resource: 'things',
    source: {
      path: '/api/v1/things',
      list: () => {
        lists += 1;
        return Promise.reject(error);
      },
    },
    initialBackoffMs: 10_000,
    probeIntervalMs: 50,
    probe: () => Promise.resolve(ready()),
  });
  return { inf, lists: () => lists };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('isOutageError', () => {
  it('no answer, 5xx and 429 are outages; 4xx answers are not', () => {
    expect(isOutageError(new TypeError('fetch failed'))).toBe(true);
    expect(isOutageError(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(isOutageError(httpError(503))).toBe(true);
    expect(isOutageError(httpError(429))).toBe(true);
    expect(isOutageError({ code: 500 })).toBe(true);
    expect(isOutageError(httpError(404))).toBe(false);
    expect(isOutageError(httpError(403))).toBe(false);
    expect(isOutageError({ code: 410 })).toBe(false);
  });
});

describe('WatchdogInformer: restart as soon as the API server is ready again', () => {
  it('after an outage error: restarts when /readyz answers 200, not at the end of the backoff', async () => {
    let ready = false;
    const { inf, lists } = failing(new TypeError('fetch failed'), () => ready);
    await inf.start();
    try {
      expect(lists()).toBe(1);
      await sleep(300);
      expect(inf.restarts()).toBe(0); // still down: the 10 s backoff holds
      ready = true;
      const t0 = performance.now();
      while (inf.restarts() === 0 && performance.now() - t0 < 2_000) await sleep(10);
      expect(inf.restarts()).toBe(1);
      expect(performance.now() - t0).toBeLessThan(1_000);
      expect(lists()).toBe(2);
    } finally {
      await inf.stop();
    }
  });

  it('an API server seen not ready, then ready: restart even when the last error was an answer (404 before the CRDs are served)', async () => {
    let ready = false;
    const { inf } = failing(httpError(404), () => ready);
    await inf.start();
    try {
      await sleep(200); // the probe sees it not ready
      ready = true;
      const t0 = performance.now();
      while (inf.restarts() === 0 && performance.now() - t0 < 2_000) await sleep(10);
      expect(inf.restarts()).toBe(1);
    } finally {
      await inf.stop();
    }
  });

  it('onRecovered: not at the first start; once healthy again after an error', async () => {
    // A server that answers every watch with 200 and keeps it open: the informer gets healthy.
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.flushHeaders();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const make = (failing: { on: boolean }) => {
      const inf = new WatchdogInformer<KubernetesObject>({
        kc: kubeConfig(`http://127.0.0.1:${port}`),
        resource: 'things',
        source: {
          path: '/api/v1/things',
          list: () =>
            failing.on
              ? Promise.reject(new TypeError('fetch failed'))
              : Promise.resolve({ apiVersion: 'v1', kind: 'List', metadata: { resourceVersion: '1' }, items: [] }),
        },
        initialBackoffMs: 10_000,
        probeIntervalMs: 50,
        probe: () => Promise.resolve(!failing.on),
      });
      let recovered = 0;
      inf.onRecovered(() => recovered++);
      return { inf, recovered: () => recovered };
    };
    const waitHealthy = async (inf: WatchdogInformer<KubernetesObject>) => {
      const t0 = performance.now();
      while (!inf.healthy() && performance.now() - t0 < 3_000) await sleep(10);
      expect(inf.healthy()).toBe(true);
    };
    const first = make({ on: false });
    const failing = { on: true };
    const second = make(failing);
    try {
      await first.inf.start();
      await waitHealthy(first.inf);
      expect(first.recovered()).toBe(0);
      await second.inf.start();
      await sleep(200);
      expect(second.inf.healthy()).toBe(false);
      expect(second.recovered()).toBe(0);
      failing.on = false;
      await waitHealthy(second.inf);
      expect(second.recovered()).toBe(1);
    } finally {
      await first.inf.stop();
      await second.inf.stop();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('an error answered while the API server is ready (404: CRD deleted) keeps the plain backoff: no hot loop', async () => {
    const { inf, lists } = failing(httpError(404), () => true);
    await inf.start();
    try {
      await sleep(1_000);
      expect(inf.restarts()).toBe(0);
      expect(lists()).toBe(1);
    } finally {
      await inf.stop();
    }
  });
});

describe('WatchdogInformer lists page by page', () => {
  const thing = (name: string): KubernetesObject => ({
    apiVersion: 'v1',
    kind: 'Thing',
    metadata: { name, namespace: 'ns', resourceVersion: '7' },
  });
  /** 5 things in pages of `limit`; a continue token says where the next page starts. */
  const all = ['a', 'b', 'c', 'd', 'e'].map(thing);
  const paged = (page?: ListPage) => {
    if (page === undefined) return { apiVersion: 'v1', kind: 'List', metadata: { resourceVersion: '7' }, items: all };
    const from = page.continue !== undefined ? Number(page.continue) : 0;
    const next = from + Math.min(page.limit, 2);
    return {
      apiVersion: 'v1',
      kind: 'List',
      metadata: { resourceVersion: '7', ...(next < all.length ? { continue: String(next) } : {}) },
      items: all.slice(from, next),
    };
  };

  it('asks LIST_PAGE_SIZE at a time, transforms each page as it comes, and caches every page', async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.flushHeaders();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const asked: (ListPage | undefined)[] = [];
    const transformed: string[] = [];
    const inf = new WatchdogInformer<KubernetesObject>({
      kc: kubeConfig(`http://127.0.0.1:${(server.address() as AddressInfo).port}`),
      resource: 'things',
      source: {
        path: '/api/v1/things',
        list: (page) => {
          asked.push(page);
          // Each page is transformed before the next one is asked for.
          expect(transformed).toHaveLength(page?.continue !== undefined ? Number(page.continue) : 0);
          return Promise.resolve(paged(page));
        },
      },
      transform: (o) => {
        transformed.push(o.metadata!.name!);
        return { ...o, metadata: { ...o.metadata, labels: { slim: 'yes' } } };
      },
    });
    try {
      await inf.start();
      expect(await inf.waitForSync()).toBe(true);
      expect(asked).toEqual([
        { limit: LIST_PAGE_SIZE },
        { limit: LIST_PAGE_SIZE, continue: '2' },
        { limit: LIST_PAGE_SIZE, continue: '4' },
      ]);
      expect(transformed).toEqual(['a', 'b', 'c', 'd', 'e']);
      expect(inf.list().map((o) => [o.metadata?.name, o.metadata?.labels?.['slim']])).toEqual(
        ['a', 'b', 'c', 'd', 'e'].map((n) => [n, 'yes']),
      );
    } finally {
      await inf.stop();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('a continue token that expired (410 Gone) lists the whole collection again, keeping nothing of the pages before', async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.flushHeaders();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const asked: (ListPage | undefined)[] = [];
    const inf = new WatchdogInformer<KubernetesObject>({
      kc: kubeConfig(`http://127.0.0.1:${(server.address() as AddressInfo).port}`),
      resource: 'things',
      source: {
        path: '/api/v1/things',
        list: (page) => {
          asked.push(page);
          return page?.continue !== undefined ? Promise.reject(httpError(410)) : Promise.resolve(paged(page));
        },
      },
    });
    try {
      await inf.start();
      expect(await inf.waitForSync()).toBe(true);
      expect(asked).toEqual([{ limit: LIST_PAGE_SIZE }, { limit: LIST_PAGE_SIZE, continue: '2' }, undefined]);
      expect(inf.list().map((o) => o.metadata?.name)).toEqual(['a', 'b', 'c', 'd', 'e']);
      expect(inf.restarts()).toBe(0);
    } finally {
      await inf.stop();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
