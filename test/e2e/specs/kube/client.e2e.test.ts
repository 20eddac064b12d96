/**
 * kube/client.ts helpers against the real API server, on a throw-away CRD with a status
 * subresource: GET returns undefined on 404, merge patches (not client-node's default JSON
 * Patch), optimistic concurrency (resourceVersion → 409 isConflict), status written only through
 * the status subresource, finalizers replaced under resourceVersion, errors described from the
 * API's Status body, and withTimeout aborting a request.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  createKubeClients,
  describeApiError,
  getCustomObject,
  isConflict,
  isNotFound,
  loadKubeConfig,
  mergePatchCustomObject,
  mergePatchCustomObjectStatus,
  setFinalizers,
  withTimeout,
  type KubeClients,
  type ResourceRef,
} from '../../../../operator/src/kube/client.ts';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';

const suffix = randomBytes(3).toString('hex');
const group = `plumbc${suffix}.test.blockpull.dev`;
const ref: ResourceRef = { group, version: 'v1', plural: 'gadgets' };
const ns = `plumb-client-${suffix}`;
const crd = {
  apiVersion: 'apiextensions.k8s.io/v1',
  kind: 'CustomResourceDefinition',
  metadata: { name: `gadgets.${group}` },
  spec: {
    group,
    scope: 'Namespaced',
    names: { plural: 'gadgets', singular: 'gadget', kind: 'Gadget' },
    versions: [
      {
        name: 'v1',
        served: true,
        storage: true,
        subresources: { status: {} },
        schema: {
          openAPIV3Schema: {
            type: 'object',
            properties: {
              spec: { type: 'object', properties: { size: { type: 'integer' }, color: { type: 'string' } } },
              status: { type: 'object', properties: { phase: { type: 'string' }, progress: { type: 'integer' } } },
            },
          },
        },
      },
    ],
  },
};

interface Gadget {
  metadata: { name: string; resourceVersion: string; generation: number; finalizers?: string[] };
  spec?: { size?: number; color?: string };
  status?: { phase?: string; progress?: number };
}

let clients: KubeClients;
let kubectl: ClusterClient;

beforeAll(async () => {
  clients = createKubeClients(loadKubeConfig(inject('kubeconfigPath')));
  kubectl = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
  await clients.core.createNamespace({ body: { metadata: { name: ns } } });
  await kubectl.kubectl(['apply', '-f', '-'], { input: JSON.stringify(crd) });
  await kubectl.kubectl(['wait', '--for=condition=Established', `crd/gadgets.${group}`, '--timeout=60s']);
});

afterAll(async () => {
  if (kubectl === undefined) return;
  await kubectl.kubectl(['delete', '-n', ns, 'gadgets', '--all', '--wait=false']).catch(() => undefined);
  await kubectl
    .kubectl(['delete', `crd/gadgets.${group}`, '--ignore-not-found', '--wait=false'])
    .catch(() => undefined);
  await clients.core.deleteNamespace({ name: ns }).catch(() => undefined);
});

describe('kube client helpers (real API server)', () => {
  it('get, merge patch, optimistic concurrency, status subresource, finalizers', async () => {
    expect(await getCustomObject(clients, ref, ns, 'g1')).toBeUndefined();
    for (let i = 0; ; i++) {
      try {
        await clients.custom.createNamespacedCustomObject({
          ...ref,
          namespace: ns,
          body: {
            apiVersion: `${group}/v1`,
            kind: 'Gadget',
            metadata: { name: 'g1' },
            spec: { size: 1, color: 'red' },
          },
        });
        break;
      } catch (err) {
        if (i > 50) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const g0 = (await getCustomObject(clients, ref, ns, 'g1')) as Gadget;
    expect(g0.spec).toEqual({ size: 1, color: 'red' });

    // Merge patch: only the named field changes
    const g1 = (await mergePatchCustomObject(clients, ref, ns, 'g1', { spec: { size: 2 } })) as Gadget;
    expect(g1.spec).toEqual({ size: 2, color: 'red' });
    expect(g1.metadata.generation).toBe(2);

    // A stale resourceVersion is a 409 conflict
    const stale = await mergePatchCustomObject(clients, ref, ns, 'g1', {
      metadata: { resourceVersion: g0.metadata.resourceVersion },
      spec: { size: 3 },
    }).catch((e: unknown) => e);
    expect(isConflict(stale)).toBe(true);
    expect(describeApiError(stale)).toMatch(/^HTTP 409 Conflict: .*the object has been modified/);

    // Status only through the subresource: status in a main-resource patch is ignored,
    // spec in a status patch is ignored, and a status write does not bump the generation
    await mergePatchCustomObject(clients, ref, ns, 'g1', { status: { phase: 'Sneaky' } });
    expect(((await getCustomObject(clients, ref, ns, 'g1')) as Gadget).status).toBeUndefined();
    const s1 = (await mergePatchCustomObjectStatus(clients, ref, ns, 'g1', {
      status: { phase: 'Running', progress: 10 },
      spec: { size: 99 },
    })) as Gadget;
    expect(s1.status).toEqual({ phase: 'Running', progress: 10 });
    expect(s1.spec?.size).toBe(2);
    expect(s1.metadata.generation).toBe(2);
    const s2 = (await mergePatchCustomObjectStatus(clients, ref, ns, 'g1', { status: { progress: null } })) as Gadget;
    expect(s2.status).toEqual({ phase: 'Running' }); // null deletes a field
    const staleStatus = await mergePatchCustomObjectStatus(clients, ref, ns, 'g1', {
      metadata: { resourceVersion: g1.metadata.resourceVersion },
      status: { phase: 'Completed' },
    }).catch((e: unknown) => e);
    expect(isConflict(staleStatus)).toBe(true);

    // Finalizers are replaced under the resourceVersion we read
    const f1 = (await setFinalizers(clients, ref, ns, 'g1', s2.metadata.resourceVersion, [
      'blockpull.dev/abort-job',
    ])) as Gadget;
    expect(f1.metadata.finalizers).toEqual(['blockpull.dev/abort-job']);
    expect(
      isConflict(await setFinalizers(clients, ref, ns, 'g1', s2.metadata.resourceVersion, []).catch((e: unknown) => e)),
    ).toBe(true);
    await clients.custom.deleteNamespacedCustomObject({ ...ref, namespace: ns, name: 'g1' });
    expect(((await getCustomObject(clients, ref, ns, 'g1')) as Gadget | undefined)?.metadata.name).toBe('g1'); // held by the finalizer
    await setFinalizers(clients, ref, ns, 'g1', f1.metadata.resourceVersion, []).catch(async (e: unknown) => {
      if (!isConflict(e)) throw e;
      const cur = (await getCustomObject(clients, ref, ns, 'g1')) as Gadget;
      await setFinalizers(clients, ref, ns, 'g1', cur.metadata.resourceVersion, []);
    });
    for (let i = 0; i < 50 && (await getCustomObject(clients, ref, ns, 'g1')) !== undefined; i++)
      await new Promise((r) => setTimeout(r, 100));
    expect(await getCustomObject(clients, ref, ns, 'g1')).toBeUndefined();
    expect(
      isNotFound(await mergePatchCustomObject(clients, ref, ns, 'g1', { spec: { size: 1 } }).catch((e: unknown) => e)),
    ).toBe(true);
  });

  it('withTimeout aborts a request that takes too long', async () => {
    // A watch-less long poll: list with a 1 ms timeout cannot complete in time
    const err = await clients.core.listNamespace({}, withTimeout(1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(String((err as Error).name) + String((err as Error).message)).toMatch(/Timeout|abort/i);
    // and a generous one does not get in the way
    const ok = await clients.core.listNamespace({}, withTimeout(10_000));
    expect(ok.items.some((n) => n.metadata?.name === ns)).toBe(true);
  });
});
