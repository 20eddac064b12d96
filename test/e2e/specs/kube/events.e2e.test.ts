/**
 * EventRecorder against the real API server: events.k8s.io/v1 Events about an object, repeats
 * aggregated into one Event's series, visible to kubectl (core/v1 view) as well.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createKubeClients, loadKubeConfig, type KubeClients } from '../../../../operator/src/kube/client.ts';
import { EventRecorder, type InvolvedObject } from '../../../../operator/src/kube/events.ts';
import { clusterClient } from '../../cluster/client.ts';
import { createLogger } from '../../../../operator/src/log.ts';

const logger = createLogger({ level: 'warn', destination: process.stderr });

const ns = `plumb-ev-${randomBytes(3).toString('hex')}`;
let clients: KubeClients;
let subject: InvolvedObject;

beforeAll(async () => {
  clients = createKubeClients(loadKubeConfig(inject('kubeconfigPath')));
  await clients.core.createNamespace({ body: { metadata: { name: ns } } });
  const cm = await clients.core.createNamespacedConfigMap({
    namespace: ns,
    body: { metadata: { name: 'subject' }, data: { a: 'b' } },
  });
  subject = { apiVersion: 'v1', kind: 'ConfigMap', namespace: ns, name: 'subject', uid: cm.metadata?.uid as string };
});

afterAll(async () => {
  await clients?.core.deleteNamespace({ name: ns }).catch(() => undefined);
});

async function eventsAbout(uid: string) {
  const list = await clients.events.listNamespacedEvent({ namespace: ns });
  return list.items.filter((e) => e.regarding?.uid === uid);
}

describe('EventRecorder (real API server)', () => {
  it('creates an Event about the object, then aggregates repeats into its series', async () => {
    const rec = new EventRecorder({ events: clients.events, reportingInstance: 'op-test-0', logger });
    await rec.normal(subject, 'PullStarted', 'StartPull', 'Started block pull of disk rootdisk (vda)');
    let evs = await eventsAbout(subject.uid);
    expect(evs).toHaveLength(1);
    expect(evs[0]).toMatchObject({
      reason: 'PullStarted',
      action: 'StartPull',
      type: 'Normal',
      note: 'Started block pull of disk rootdisk (vda)',
      reportingController: 'blockpull.dev/blockpull-operator',
      reportingInstance: 'op-test-0',
      regarding: { kind: 'ConfigMap', name: 'subject', namespace: ns, uid: subject.uid },
    });
    expect(evs[0]?.series).toBeUndefined();

    // Concurrent repeats are serialised into one series
    await Promise.all([
      rec.warning(subject, 'DiskBusy', 'Wait', 'disk vda is busy with another block job'),
      rec.warning(subject, 'DiskBusy', 'Wait', 'disk vda is busy with another block job'),
      rec.warning(subject, 'DiskBusy', 'Wait', 'disk vda is busy with another block job'),
    ]);
    await rec.normal(subject, 'PullStarted', 'StartPull', 'Started block pull of disk rootdisk (vda)');
    evs = await eventsAbout(subject.uid);
    expect(evs).toHaveLength(2);
    const busy = evs.find((e) => e.reason === 'DiskBusy');
    const started = evs.find((e) => e.reason === 'PullStarted');
    expect(busy?.type).toBe('Warning');
    expect(busy?.series?.count).toBe(3);
    expect(started?.series?.count).toBe(2);
    expect(started?.series?.lastObservedTime).toBeTruthy();

    // kubectl (core/v1 view) shows it, with the count
    const kubectl = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    const out = await kubectl.kubectl([
      'get',
      'events',
      '-n',
      ns,
      '--field-selector',
      `involvedObject.uid=${subject.uid}`,
      '-o',
      'json',
    ]);
    const core = JSON.parse(out) as { items: { reason: string; count?: number; series?: { count: number } }[] };
    expect(core.items.map((e) => e.reason).sort()).toEqual(['DiskBusy', 'PullStarted']);
    expect(core.items.find((e) => e.reason === 'DiskBusy')?.series?.count).toBe(3);
  });

  it('starts a new Event when the aggregated one is gone, and never throws on failure', async () => {
    const rec = new EventRecorder({ events: clients.events, reportingInstance: 'op-test-1', logger });
    await rec.normal(subject, 'Completed', 'None', 'chain is flat');
    const [first] = (await eventsAbout(subject.uid)).filter((e) => e.reason === 'Completed');
    await clients.events.deleteNamespacedEvent({ namespace: ns, name: first?.metadata?.name as string });
    await rec.normal(subject, 'Completed', 'None', 'chain is flat');
    const again = (await eventsAbout(subject.uid)).filter((e) => e.reason === 'Completed');
    expect(again).toHaveLength(1);
    expect(again[0]?.metadata?.name).not.toBe(first?.metadata?.name);
    // An object in a namespace that does not exist: the write fails, the promise still resolves
    await expect(
      rec.normal({ ...subject, namespace: 'no-such-namespace-x' }, 'X', 'None', 'y'),
    ).resolves.toBeUndefined();
    // Long notes are cut to the API's 1 kB limit instead of being rejected
    await rec.normal(subject, 'LongNote', 'None', 'x'.repeat(5000));
    const long = (await eventsAbout(subject.uid)).find((e) => e.reason === 'LongNote');
    expect(long?.note?.length).toBe(1024);
  });
});
