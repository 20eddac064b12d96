/**
 * Lease leader election against the real kube-apiserver (the e2e control plane): acquisition,
 * hand-over on release, take-over after expiry (timed), one leader among racing candidates,
 * and a leader that loses its Lease stops leading at once.
 * Short timings (lease 2 s, renew 1.5 s, retry 0.3 s) keep the test quick; the algorithm is the
 * same as with the defaults.
 */
import { randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createKubeClients, loadKubeConfig, type KubeClients } from '../../../../operator/src/kube/client.ts';
import { LeaderElector, type LeaderElectorOptions } from '../../../../operator/src/kube/leader-election.ts';
import { createMetrics } from '../../../../operator/src/kube/metrics.ts';
import { waitFor } from '../../support/wait.ts';

const LEASE_MS = 2_000;
const RENEW_MS = 1_500;
const RETRY_MS = 300;
const ns = `plumb-le-${randomBytes(3).toString('hex')}`;

let clients: KubeClients;

beforeAll(async () => {
  clients = createKubeClients(loadKubeConfig(inject('kubeconfigPath')));
  await clients.core.createNamespace({ body: { metadata: { name: ns } } });
});

afterAll(async () => {
  await clients?.core.deleteNamespace({ name: ns }).catch(() => undefined);
});

interface Candidate {
  elector: LeaderElector;
  stop(): Promise<'lost' | 'stopped'>;
  result: Promise<'lost' | 'stopped'>;
  started: number[];
  stoppedAt: number[];
  leadingSignal: AbortSignal | undefined;
}

function candidate(identity: string, leaseName: string, extra: Partial<LeaderElectorOptions> = {}): Candidate {
  const ac = new AbortController();
  const c: Partial<Candidate> & { started: number[]; stoppedAt: number[] } = { started: [], stoppedAt: [] };
  const elector = new LeaderElector({
    coordination: clients.coordination,
    namespace: ns,
    leaseName,
    identity,
    leaseDurationMs: LEASE_MS,
    renewDeadlineMs: RENEW_MS,
    retryPeriodMs: RETRY_MS,
    onStartedLeading: (signal) => {
      c.started.push(performance.now());
      c.leadingSignal = signal;
    },
    onStoppedLeading: () => {
      c.stoppedAt.push(performance.now());
    },
    ...extra,
  });
  c.elector = elector;
  c.result = elector.run(ac.signal);
  c.stop = async () => {
    ac.abort();
    return c.result as Promise<'lost' | 'stopped'>;
  };
  return c as Candidate;
}

async function readLease(name: string) {
  return clients.coordination.readNamespacedLease({ name, namespace: ns });
}

describe('LeaderElector (real API server)', () => {
  it('acquires a new Lease, keeps renewing it, and a standby waits', async () => {
    const metrics = createMetrics({ collectDefault: false });
    const a = candidate('cand-a', 'lease-1', { metrics });
    await waitFor('a leads', 5_000, () => a.elector.isLeader(), 20);
    const b = candidate('cand-b', 'lease-1');
    const lease = await readLease('lease-1');
    expect(lease.spec?.holderIdentity).toBe('cand-a');
    expect(lease.spec?.leaseDurationSeconds).toBe(2);
    const renew1 = new Date(lease.spec?.renewTime as Date).getTime();
    // Stays leader well past the lease duration: renewals work; the standby never leads.
    await new Promise((r) => setTimeout(r, 3 * LEASE_MS));
    expect(a.elector.isLeader()).toBe(true);
    expect(b.elector.isLeader()).toBe(false);
    expect(b.elector.observedLeader()).toBe('cand-a');
    expect(b.elector.isParticipating()).toBe(true);
    const later = await readLease('lease-1');
    expect(new Date(later.spec?.renewTime as Date).getTime()).toBeGreaterThan(renew1);
    expect((await metrics.registry.getSingleMetricAsString('blockpull_leader')).trim()).toMatch(/blockpull_leader 1$/);

    // Release on stop: the standby takes over within about one retry period, not a lease duration.
    const tStop = performance.now();
    expect(await a.stop()).toBe('stopped');
    expect(a.leadingSignal?.aborted).toBe(true);
    expect(a.stoppedAt).toHaveLength(1);
    expect((await metrics.registry.getSingleMetricAsString('blockpull_leader')).trim()).toMatch(/blockpull_leader 0$/);
    await waitFor('b leads', 5_000, () => b.elector.isLeader(), 20);
    const handover = performance.now() - tStop;
    expect(handover).toBeLessThan(LEASE_MS);
    const taken = await readLease('lease-1');
    expect(taken.spec?.holderIdentity).toBe('cand-b');
    expect(taken.spec?.leaseTransitions).toBe(1);
    expect(await b.stop()).toBe('stopped');
    const released = await readLease('lease-1');
    expect(released.spec?.holderIdentity ?? '').toBe('');
    console.log(`hand-over after release: ${Math.round(handover)} ms`);
  });

  it('without release (a crashed leader), a candidate takes over only after the lease duration', async () => {
    const a = candidate('crash-a', 'lease-2', { releaseOnCancel: false });
    await waitFor('a leads', 5_000, () => a.elector.isLeader(), 20);
    await a.stop(); // stops renewing, keeps the Lease: like a killed process
    expect((await readLease('lease-2')).spec?.holderIdentity).toBe('crash-a');
    const t0 = performance.now();
    const b = candidate('crash-b', 'lease-2');
    await waitFor('b leads', 4 * LEASE_MS, () => b.elector.isLeader(), 20);
    const took = performance.now() - t0;
    console.log(`take-over after expiry: ${Math.round(took)} ms (lease ${LEASE_MS} ms)`);
    // Measured on b's clock from its first observation: >= leaseDuration, < leaseDuration + 2 retries + slack
    expect(took).toBeGreaterThanOrEqual(LEASE_MS - 50);
    expect(took).toBeLessThan(LEASE_MS + 2 * RETRY_MS * 1.2 + 1_000);
    await b.stop();
  });

  it('with the default (controller-runtime) timings, a crashed leader is replaced after ~15 s', async () => {
    const defaults = { leaseDurationMs: undefined, renewDeadlineMs: undefined, retryPeriodMs: undefined };
    const a = candidate('default-a', 'lease-defaults', { ...defaults, releaseOnCancel: false });
    await waitFor('a leads', 5_000, () => a.elector.isLeader(), 20);
    expect((await readLease('lease-defaults')).spec?.leaseDurationSeconds).toBe(15);
    await a.stop();
    const t0 = performance.now();
    const b = candidate('default-b', 'lease-defaults', defaults);
    await waitFor('b leads', 25_000, () => b.elector.isLeader(), 20);
    const took = performance.now() - t0;
    console.log(`default timings: take-over after ${Math.round(took)} ms (lease 15000 ms, retry 2000 ms)`);
    expect(took).toBeGreaterThanOrEqual(15_000 - 50);
    expect(took).toBeLessThan(15_000 + 2 * 2_000 * 1.2 + 1_000);
    await b.stop();
  });

  it('racing candidates: exactly one leader at any time', async () => {
    const cands = ['race-a', 'race-b', 'race-c'].map((id) => candidate(id, 'lease-3'));
    let maxLeaders = 0;
    let sawLeader = false;
    const until = performance.now() + 3_000;
    while (performance.now() < until) {
      const n = cands.filter((c) => c.elector.isLeader()).length;
      maxLeaders = Math.max(maxLeaders, n);
      if (n === 1) sawLeader = true;
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(sawLeader).toBe(true);
    expect(maxLeaders).toBe(1);
    const leader = cands.find((c) => c.elector.isLeader());
    expect((await readLease('lease-3')).spec?.holderIdentity).toBe(leader?.elector.identity);
    // Stop the leader: another takes over, still never two at once
    const rest = cands.filter((c) => c !== leader);
    const stopping = leader?.stop();
    const until2 = performance.now() + 2_000;
    while (performance.now() < until2) {
      const n = cands.filter((c) => c.elector.isLeader()).length;
      maxLeaders = Math.max(maxLeaders, n);
      await new Promise((r) => setTimeout(r, 10));
    }
    await stopping;
    expect(maxLeaders).toBe(1);
    expect(rest.filter((c) => c.elector.isLeader())).toHaveLength(1);
    for (const c of rest) await c.stop();
  });

  it('a leader whose Lease is taken away stops leading at once (signal aborted, run() returns lost)', async () => {
    const a = candidate('victim', 'lease-4');
    await waitFor('a leads', 5_000, () => a.elector.isLeader(), 20);
    const lease = await readLease('lease-4');
    await clients.coordination.replaceNamespacedLease({
      name: 'lease-4',
      namespace: ns,
      body: { ...lease, spec: { ...lease.spec, holderIdentity: 'intruder', leaseDurationSeconds: 60 } },
    });
    const t0 = performance.now();
    expect(await a.result).toBe('lost');
    const lostAfter = performance.now() - t0;
    expect(a.elector.isLeader()).toBe(false);
    expect(a.leadingSignal?.aborted).toBe(true);
    expect(a.stoppedAt).toHaveLength(1);
    expect(lostAfter).toBeLessThan(RETRY_MS * 1.2 + 1_000);
    // It did not give the intruder's Lease away
    expect((await readLease('lease-4')).spec?.holderIdentity).toBe('intruder');
    await a.stop();
  });

  it('a leader whose API server stops answering (connections hang) loses leadership at the renew deadline', async () => {
    const hole = await tcpForwarder(clients.kc);
    const a = candidate('hung', 'lease-6', { coordination: hole.clients.coordination });
    try {
      await waitFor('a leads', 5_000, () => a.elector.isLeader(), 20);
      hole.freeze();
      const t0 = performance.now();
      expect(await a.result).toBe('lost');
      const after = performance.now() - t0;
      console.log(
        `leadership lost ${Math.round(after)} ms after the API server stopped answering (renew deadline ${RENEW_MS} ms)`,
      );
      expect(after).toBeGreaterThanOrEqual(RENEW_MS - RETRY_MS);
      expect(after).toBeLessThan(RENEW_MS + 2 * RETRY_MS + 1_000);
    } finally {
      hole.close();
      await a.stop();
    }
  });

  it('a leader that cannot reach the API server loses leadership after the renew deadline', async () => {
    // The elector talks to the API server through a TCP forwarder; closing it (and its
    // connections) cuts the leader off for real.
    const cut = await tcpForwarder(clients.kc);
    const a = candidate('cut-off', 'lease-5', { coordination: cut.clients.coordination });
    try {
      await waitFor('a leads', 5_000, () => a.elector.isLeader(), 20);
      cut.close();
      const t0 = performance.now();
      expect(await a.result).toBe('lost');
      const after = performance.now() - t0;
      console.log(
        `leadership lost ${Math.round(after)} ms after the API server became unreachable (renew deadline ${RENEW_MS} ms)`,
      );
      expect(after).toBeGreaterThanOrEqual(RENEW_MS - RETRY_MS);
      expect(after).toBeLessThan(RENEW_MS + 2 * RETRY_MS + 1_000);
      expect(a.leadingSignal?.aborted).toBe(true);
      expect(a.elector.isLeader()).toBe(false);
      expect(a.elector.isParticipating()).toBe(false); // run() has returned: no longer a candidate
    } finally {
      cut.close();
      await a.stop();
    }
  });
});

/**
 * A TCP forwarder to the API server, and clients that use it. close() refuses and drops
 * connections; freeze() keeps every connection open but forwards nothing more (a black hole).
 */
async function tcpForwarder(kc: KubeConfig): Promise<{ clients: KubeClients; close(): void; freeze(): void }> {
  const cluster = kc.getCurrentCluster();
  if (cluster === null) throw new Error('no cluster');
  const target = new URL(cluster.server);
  const sockets = new Set<Socket>();
  const pairs: [Socket, Socket][] = [];
  let frozen = false;
  const server = createServer((downstream) => {
    sockets.add(downstream);
    downstream.on('error', () => downstream.destroy());
    if (frozen) {
      downstream.pause(); // accepted, never answered
      return;
    }
    const upstream = connect(Number(target.port || 443), target.hostname);
    sockets.add(upstream);
    pairs.push([downstream, upstream]);
    downstream.pipe(upstream).pipe(downstream);
    const drop = () => {
      downstream.destroy();
      upstream.destroy();
    };
    downstream.on('close', drop);
    upstream.on('error', drop).on('close', drop);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const forwarded = new KubeConfig();
  forwarded.loadFromOptions({
    clusters: kc.clusters.map((c) =>
      c.name === cluster.name ? { ...c, server: `${target.protocol}//127.0.0.1:${port}` } : c,
    ),
    users: kc.users,
    contexts: kc.contexts,
    currentContext: kc.currentContext,
  });
  let closed = false;
  return {
    clients: createKubeClients(forwarded),
    close() {
      if (closed) return;
      closed = true;
      server.close();
      for (const s of sockets) s.destroy();
    },
    freeze() {
      frozen = true;
      for (const [d, u] of pairs) {
        d.unpipe(u);
        u.unpipe(d);
        d.pause();
        u.pause();
      }
    },
  };
}
