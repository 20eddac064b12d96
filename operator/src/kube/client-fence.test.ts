import { describe, expect, it } from 'vitest';
import { HttpMethod, RequestContext } from '@kubernetes/client-node';
import { FencedError, PooledKubeConfig, fenceWrites, writesFenced } from './client.ts';
import { testKubeConfig, UNREACHABLE_SERVER } from '../../../test/unit/support/kubeconfig.ts';

const kubeConfig = (): PooledKubeConfig => testKubeConfig(UNREACHABLE_SERVER, new PooledKubeConfig());

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
