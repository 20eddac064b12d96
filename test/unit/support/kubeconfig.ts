/** Kubeconfigs for unit tests: one cluster, one user, one context. */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';

/** Where nothing listens: requests fail at once (ECONNREFUSED). */
export const UNREACHABLE_SERVER = 'https://127.0.0.1:1';

/** `kc` (a new KubeConfig by default) loaded with one context for `server`, a bearer token `x`. */
export function testKubeConfig<K extends KubeConfig = KubeConfig>(
  server: string = UNREACHABLE_SERVER,
  kc: K = new KubeConfig() as K,
): K {
  kc.loadFromOptions({
    clusters: [{ name: 'c', server, skipTLSVerify: true }],
    users: [{ name: 'u', token: 'x' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  return kc;
}

/** The URL of a listening test HTTP server on loopback. */
export function serverUrl(server: Server): string {
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}
