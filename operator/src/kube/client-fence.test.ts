import { describe, expect, it } from 'vitest';
import { HttpMethod, RequestContext } from '@kubernetes/client-node';
import { FencedError, PooledKubeConfig, fenceWrites, writesFenced } from './client.ts';

function kubeConfig(): PooledKubeConfig {
  const kc = new PooledKubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: 'https://127.0.0.1:1', skipTLSVerify: true }],
    users: [{ name: 'u', token: 't' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  return kc;
}

describe('write fence', () => {
  it('refuses every mutating request once fenced, reads still go', async () => {
    const kc = kubeConfig();
    const put = new RequestContext('https://127.0.0.1:1/apis/x', HttpMethod.PUT);
    await expect(kc.applySecurityAuthentication(put)).resolves.toBeUndefined();
    expect(writesFenced()).toBe(false);
    fenceWrites();
    for (const m of [HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH, HttpMethod.DELETE]) {
      await expect(
        kc.applySecurityAuthentication(new RequestContext('https://127.0.0.1:1/apis/x', m)),
      ).rejects.toBeInstanceOf(FencedError);
    }
    await expect(
      kc.applySecurityAuthentication(new RequestContext('https://127.0.0.1:1/apis/x', HttpMethod.GET)),
    ).resolves.toBeUndefined();
  });
});
