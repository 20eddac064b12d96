/**
 * The operator's API clients share one keep-alive connection pool: counted on the server side
 * (a local HTTP server standing in for the API server; a kubeconfig with skipTLSVerify takes the
 * same client-node code path as TLS: a dispatcher with connect options per request). The TLS
 * variant against a real kube-apiserver is test/e2e/specs/kube/client-pool.e2e.test.ts.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createKubeClients, getCustomObject, loadKubeConfig, type KubeClients } from './client.ts';

interface Seen {
  method: string;
  url: string;
  authorization: string | undefined;
  impersonate: string | undefined;
}

let server: http.Server;
let port: number;
let connections = 0;
const openSockets = new Set<Socket>();
let seen: Seen[] = [];
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-client-test-'));
  server = http.createServer((req, res) => {
    seen.push({
      method: req.method ?? '',
      url: req.url ?? '',
      authorization: req.headers.authorization,
      impersonate: req.headers['impersonate-user'] as string | undefined,
    });
    const url = new URL(req.url ?? '/', 'http://x');
    const name = url.pathname.split('/').at(-1) ?? '';
    res.setHeader('content-type', 'application/json');
    if (url.pathname.startsWith('/apis/blockpull.dev/')) {
      res.end(
        JSON.stringify({
          apiVersion: 'blockpull.dev/v1alpha1',
          kind: 'BlockPull',
          metadata: { name, namespace: 'ns' },
        }),
      );
    } else if (url.pathname.startsWith('/apis/coordination.k8s.io/')) {
      res.end(
        JSON.stringify({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name, namespace: 'ns' } }),
      );
    } else {
      res.end(JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name } }));
    }
  });
  server.on('connection', (socket) => {
    connections++;
    openSockets.add(socket);
    socket.on('close', () => openSockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await rm(tmp, { recursive: true, force: true });
});

beforeEach(async () => {
  server.closeAllConnections(); // the previous test's pool (another user: another pool)
  await expect.poll(() => openSockets.size).toBe(0);
  connections = 0;
  seen = [];
});

/** A kubeconfig file for the local server; `user` is the kubeconfig's user entry. */
async function kubeconfigFile(
  name: string,
  user: Record<string, unknown>,
  cluster: Record<string, unknown> = {},
): Promise<string> {
  const file = path.join(tmp, `${name}.kubeconfig`);
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      { name: 'c', cluster: { server: `http://127.0.0.1:${port}`, 'insecure-skip-tls-verify': true, ...cluster } },
    ],
    users: [{ name: `u-${name}`, user }],
    contexts: [{ name: 'ctx', context: { cluster: 'c', user: `u-${name}` } }],
    'current-context': 'ctx',
  };
  await writeFile(file, JSON.stringify(config));
  return file;
}

/** One GET through each of the four API clients. */
async function oneOfEach(clients: KubeClients, i: number): Promise<void> {
  await clients.core.readNamespace({ name: `ns-${i}` });
  await getCustomObject(
    clients,
    { group: 'blockpull.dev', version: 'v1alpha1', plural: 'blockpulls' },
    'ns',
    `bp-${i}`,
  );
  await clients.coordination.readNamespacedLease({ namespace: 'ns', name: `lease-${i}` });
  await clients.events.listNamespacedEvent({ namespace: 'ns' }).catch(() => undefined); // body is not an EventList: only the request counts
}

describe('loadKubeConfig: one keep-alive connection pool for every API call', () => {
  it('100 sequential calls through four API clients reuse the pool (one or two connections)', async () => {
    const clients = createKubeClients(loadKubeConfig(await kubeconfigFile('seq', { token: 'tok-seq' })));
    for (let i = 0; i < 25; i++) await oneOfEach(clients, i);
    process.stdout.write(`client pool: ${seen.length} requests, ${connections} connection(s) opened\n`);
    expect(seen).toHaveLength(100);
    // client-node 2.0.x alone: a new undici Agent, hence a new connection, per request (100).
    // undici may open a second one when a request is dispatched before the previous response's
    // connection is back in the pool; it alternates between the two.
    expect(connections).toBeLessThanOrEqual(2);
  });

  it('concurrent calls open at most one connection each, and a second burst reuses them', async () => {
    const clients = createKubeClients(loadKubeConfig(await kubeconfigFile('burst', { token: 'tok-burst' })));
    await Promise.all(Array.from({ length: 8 }, (_, i) => clients.core.readNamespace({ name: `a-${i}` })));
    const afterFirst = connections;
    await Promise.all(Array.from({ length: 8 }, (_, i) => clients.core.readNamespace({ name: `b-${i}` })));
    process.stdout.write(
      `client pool: 2 bursts of 8 concurrent GETs, ${afterFirst} then ${connections} connection(s)\n`,
    );
    expect(afterFirst).toBeGreaterThanOrEqual(1);
    expect(afterFirst).toBeLessThanOrEqual(8);
    // The second burst runs on the first burst's connections (a connection still finishing its
    // previous response may make undici open one more).
    expect(connections - afterFirst).toBeLessThanOrEqual(2);
  });

  it('two KubeConfigs of the process for the same server and user share the pool', async () => {
    const file = await kubeconfigFile('shared', { token: 'tok-shared' });
    const a = createKubeClients(loadKubeConfig(file));
    const b = createKubeClients(loadKubeConfig(file));
    for (let i = 0; i < 5; i++) {
      await a.core.readNamespace({ name: `a-${i}` });
      await b.core.readNamespace({ name: `b-${i}` });
    }
    expect(connections).toBeLessThanOrEqual(2); // one pool: as for one KubeConfig (20 with client-node alone)
  });

  it('authentication still runs per request: bearer token, impersonation, basic auth', async () => {
    const token = createKubeClients(loadKubeConfig(await kubeconfigFile('tok', { token: 'tok-1', as: 'someone' })));
    await token.core.readNamespace({ name: 'x' });
    await token.core.readNamespace({ name: 'y' });
    const basic = createKubeClients(
      loadKubeConfig(await kubeconfigFile('basic', { username: 'alice', password: 's3cret' })),
    );
    await basic.core.readNamespace({ name: 'z' });
    expect(seen.map((s) => [s.url, s.authorization, s.impersonate])).toEqual([
      ['/api/v1/namespaces/x', 'Bearer tok-1', 'someone'],
      ['/api/v1/namespaces/y', 'Bearer tok-1', 'someone'],
      ['/api/v1/namespaces/z', `Basic ${Buffer.from('alice:s3cret').toString('base64')}`, undefined],
    ]);
  });

  it('rotated CA material: a new pool, the old one closed', async () => {
    const caFile = path.join(tmp, 'ca.pem');
    await writeFile(caFile, 'ca-one');
    const clients = createKubeClients(
      loadKubeConfig(await kubeconfigFile('rotate', { token: 't' }, { 'certificate-authority': caFile })),
    );
    for (let i = 0; i < 10; i++) await clients.core.readNamespace({ name: `r-${i}` });
    const before = connections;
    expect(before).toBeLessThanOrEqual(2);
    await writeFile(caFile, 'ca-two');
    for (let i = 0; i < 10; i++) await clients.core.readNamespace({ name: `s-${i}` });
    expect(connections).toBeGreaterThan(before);
    expect(connections).toBeLessThanOrEqual(before + 2);
    // The old pool's idle connections are closed: only the new pool's stay open.
    await expect.poll(() => openSockets.size, { timeout: 5_000 }).toBeLessThanOrEqual(connections - before);
  });
});
