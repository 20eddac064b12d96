import { ApiException, type CustomObjectsApi, type V1APIResourceList } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { servedResource } from './discovery.ts';

const refs = [
  { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinesnapshots' },
  { group: 'snapshot.kubevirt.io', version: 'v1alpha1', plural: 'virtualmachinesnapshots' },
];
const list = (...names: string[]): V1APIResourceList => ({
  groupVersion: 'x',
  resources: names.map((name) => ({ name, namespaced: true, kind: 'K', singularName: '', verbs: [] })),
});
const notFound = () => new ApiException(404, 'Not Found', '{"kind":"Status","code":404}', {});

function fake(
  answers: Record<string, (() => V1APIResourceList) | undefined>,
  calls: string[],
): Pick<CustomObjectsApi, 'getAPIResources'> {
  return {
    getAPIResources: (p: { group: string; version: string }) => {
      const gv = `${p.group}/${p.version}`;
      calls.push(gv);
      const a = answers[gv];
      return a === undefined ? Promise.reject(notFound()) : Promise.resolve(a());
    },
  };
}

describe('servedResource (API discovery)', () => {
  it('the first version served that has the resource; none: undefined', async () => {
    const calls: string[] = [];
    expect(
      await servedResource(
        fake({ 'snapshot.kubevirt.io/v1alpha1': () => list('virtualmachinesnapshots') }, calls),
        refs,
        new AbortController().signal,
      ),
    ).toEqual(refs[1]);
    expect(calls).toEqual(['snapshot.kubevirt.io/v1beta1', 'snapshot.kubevirt.io/v1alpha1']);
    // A group/version served without the resource counts as absent.
    expect(
      await servedResource(
        fake({ 'snapshot.kubevirt.io/v1beta1': () => list('virtualmachinerestores') }, []),
        refs,
        new AbortController().signal,
      ),
    ).toBeUndefined();
    expect(await servedResource(fake({}, []), refs, new AbortController().signal)).toBeUndefined();
  });

  it('an API server that does not answer is asked again, never taken for "not served"; an abort ends the wait', async () => {
    let failures = 2;
    const retried: string[] = [];
    const custom = fake(
      {
        'snapshot.kubevirt.io/v1beta1': () => {
          if (failures-- > 0) throw new ApiException(503, 'unavailable', '', {});
          return list('virtualmachinesnapshots');
        },
      },
      [],
    );
    expect(
      await servedResource(custom, refs, new AbortController().signal, {
        initialBackoffMs: 1,
        onRetry: (m) => retried.push(m),
      }),
    ).toEqual(refs[0]);
    expect(retried).toHaveLength(2);
    const ac = new AbortController();
    const down = { getAPIResources: () => Promise.reject(new Error('ECONNREFUSED')) } as unknown as Pick<
      CustomObjectsApi,
      'getAPIResources'
    >;
    const p = servedResource(down, refs, ac.signal, { initialBackoffMs: 60_000 });
    setTimeout(() => ac.abort(new Error('stopped')), 20);
    await expect(p).rejects.toThrow('stopped');
  });
});
