/**
 * PolicyController.reconcile over stubbed caches and API calls (no cluster): one look creates the
 * BlockPulls through the API server with the policy as controller owner; the status is written at
 * most once every 2 s per policy (a look sooner asks to be requeued for the rest of the interval).
 */
import { KubeConfig, type EventsV1Api, type KubernetesObject } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { createKubeClients } from '../kube/client.ts';
import { EventRecorder } from '../kube/events.ts';
import { silentLogger } from '../log.ts';
import { slimVmiForPolicy } from './cache.ts';
import { PolicyController, STATUS_WRITE_INTERVAL_MS } from './controller.ts';

function kubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: 'https://127.0.0.1:1', skipTLSVerify: true }],
    users: [{ name: 'u', token: 'x' }],
    contexts: [{ name: 'ctx', cluster: 'c', user: 'u' }],
    currentContext: 'ctx',
  });
  return kc;
}

const policyObj = {
  apiVersion: 'blockpull.dev/v1alpha1',
  kind: 'BlockPullPolicy',
  metadata: {
    name: 'fleet',
    namespace: 'ns',
    uid: 'pol-uid',
    generation: 1,
    creationTimestamp: '2026-12-07T10:00:00Z',
  },
  spec: { vmiSelector: { matchLabels: { fleet: 'ci' } }, maxConcurrent: 1 },
} as unknown as KubernetesObject;
const vmi = (name: string): KubernetesObject =>
  slimVmiForPolicy({
    metadata: { name, namespace: 'ns', uid: `${name}-uid`, labels: { fleet: 'ci' } },
    spec: {
      domain: { devices: { disks: [{ name: 'rootdisk', disk: {} }] } },
      volumes: [{ name: 'rootdisk', containerDisk: { image: 'x' } }],
    },
  } as KubernetesObject);

describe('PolicyController.reconcile', () => {
  it('creates owned BlockPulls through the API server; writes the status at most once per 2 s', async () => {
    const clients = createKubeClients(kubeConfig());
    const created: Record<string, unknown>[] = [];
    const statusWrites: unknown[] = [];
    Object.assign(clients.custom, {
      createNamespacedCustomObject: (req: { body: Record<string, unknown> }) => {
        created.push(req.body);
        return Promise.resolve(req.body);
      },
      patchNamespacedCustomObjectStatus: (req: { body: unknown }) => {
        statusWrites.push(req.body);
        return Promise.resolve({});
      },
    });
    const c = new PolicyController({ clients, logger: silentLogger() });
    const vmis = [vmi('a'), vmi('b')];
    Object.assign(c.policies, {
      get: (ns: string | undefined, name: string) => (ns === 'ns' && name === 'fleet' ? policyObj : undefined),
      list: () => [policyObj],
    });
    Object.assign(c.clusterPolicies, { list: () => [] });
    Object.assign(c.vmis, {
      list: () => vmis,
      get: (_ns: string, name: string) => vmis.find((v) => v.metadata?.name === name),
    });
    Object.assign(c.pulls, { byIndex: () => [], list: () => [] });
    Object.assign(c.namespaces, { list: () => [] });

    const first = await c.reconcile('BlockPullPolicy/ns/fleet');
    expect(created.map((b) => [(b.metadata as { name: string }).name, (b.spec as { paused: boolean }).paused])).toEqual(
      [
        [expect.stringMatching(/^a-rootdisk-[0-9a-f]{10}$/), false],
        [expect.stringMatching(/^b-rootdisk-[0-9a-f]{10}$/), true],
      ],
    );
    expect((created[0]!.metadata as { ownerReferences: unknown[] }).ownerReferences).toEqual([
      {
        apiVersion: 'blockpull.dev/v1alpha1',
        kind: 'BlockPullPolicy',
        name: 'fleet',
        uid: 'pol-uid',
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
    expect(statusWrites).toHaveLength(1);
    expect(first).toBeNull();
    // The cache still holds no status (as right after a write): looks within 2 s write nothing more.
    const second = await c.reconcile('BlockPullPolicy/ns/fleet');
    await c.reconcile('BlockPullPolicy/ns/fleet');
    expect(statusWrites).toHaveLength(1);
    expect(second).toBeGreaterThan(0);
    expect(second).toBeLessThanOrEqual(STATUS_WRITE_INTERVAL_MS);
    await new Promise((r) => setTimeout(r, STATUS_WRITE_INTERVAL_MS + 50));
    await c.reconcile('BlockPullPolicy/ns/fleet');
    expect(statusWrites).toHaveLength(2);
  });

  it('a policy gone from the cache is left to the garbage collector and the orphan sweep', async () => {
    const c = new PolicyController({ clients: createKubeClients(kubeConfig()), logger: silentLogger() });
    Object.assign(c.policies, { get: () => undefined, list: () => [] });
    expect(await c.reconcile('BlockPullPolicy/ns/gone')).toBeNull();
  });

  it("a cluster policy's Events are written in default, about the cluster-scoped policy", async () => {
    const clients = createKubeClients(kubeConfig());
    Object.assign(clients.custom, {
      createNamespacedCustomObject: (req: { body: unknown }) => Promise.resolve(req.body),
      patchClusterCustomObjectStatus: () => Promise.resolve({}),
    });
    const events: { namespace: string; body: { reason: string; regarding: Record<string, unknown> } }[] = [];
    const api = {
      createNamespacedEvent: (req: (typeof events)[number]) => {
        events.push(req);
        return Promise.resolve({ metadata: { name: 'ev' } });
      },
    } as unknown as EventsV1Api;
    const recorder = new EventRecorder({ events: api, reportingInstance: 'op-0', logger: silentLogger() });
    const written: Promise<void>[] = [];
    const record = recorder.event.bind(recorder);
    Object.assign(recorder, {
      event: (...args: Parameters<typeof record>) => {
        const p = record(...args);
        written.push(p);
        return p;
      },
    });
    const c = new PolicyController({ clients, logger: silentLogger(), events: recorder });
    const cluster = {
      apiVersion: 'blockpull.dev/v1alpha1',
      kind: 'ClusterBlockPullPolicy',
      metadata: { name: 'fleet', uid: 'cpol-uid', generation: 1, creationTimestamp: '2026-12-07T10:00:00Z' },
      spec: { vmiSelector: {}, namespaceSelector: { matchLabels: { team: 'ci' } } },
    } as unknown as KubernetesObject;
    const vmis = [vmi('a')];
    Object.assign(c.policies, { list: () => [] });
    Object.assign(c.clusterPolicies, {
      get: (ns: string | undefined, name: string) => (ns === undefined && name === 'fleet' ? cluster : undefined),
      list: () => [cluster],
    });
    Object.assign(c.vmis, {
      list: (ns?: string) => (ns === 'ns' ? vmis : []),
      get: (_ns: string, name: string) => vmis.find((v) => v.metadata?.name === name),
    });
    Object.assign(c.pulls, { byIndex: () => [], list: () => [] });
    Object.assign(c.namespaces, { list: () => [{ metadata: { name: 'ns', labels: { team: 'ci' } } }] });

    await c.reconcile('ClusterBlockPullPolicy/fleet');
    await Promise.all(written);
    expect(events.map((e) => [e.namespace, e.body.reason])).toEqual([['default', 'BlockPullsCreated']]);
    expect(events[0]!.body.regarding).toEqual({
      apiVersion: 'blockpull.dev/v1alpha1',
      kind: 'ClusterBlockPullPolicy',
      name: 'fleet',
      uid: 'cpol-uid',
    });
  });
});
