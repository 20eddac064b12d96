import { afterEach, describe, expect, it } from 'vitest';
import { createMetrics } from './metrics.ts';
import { leaderAwareReadiness, startHealthServer, startMetricsServer, type RunningServer } from './server.ts';
import { WorkQueue } from './workqueue.ts';

const servers: RunningServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

async function get(port: number, path: string) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, text: await r.text(), type: r.headers.get('content-type') };
}

describe('metrics server', () => {
  it('serves the registry in Prometheus format, including work-queue hooks', async () => {
    const m = createMetrics({ collectDefault: false });
    const q = new WorkQueue<string>({ name: 'blockpulls', hooks: m.workQueueHooks('blockpulls') });
    q.add('a');
    q.add('b');
    m.reconcileDuration.observe({ result: 'success' }, 0.02);
    m.reconcileErrors.inc({ reason: 'VMINotFound' });
    m.bytesStreamed.inc(1024);
    m.setJobsByPhase({ Running: 2, Completed: 1 });
    m.setJobsByPhase({ Completed: 3 });
    m.leader.set(1);
    m.informerRestarts.inc({ resource: 'blockpulls' });
    const s = await startMetricsServer({ port: 0, host: '127.0.0.1', registry: m.registry });
    servers.push(s);
    const r = await get(s.port, '/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toContain('text/plain');
    expect(r.text).toContain('workqueue_depth{name="blockpulls"} 2');
    expect(r.text).toContain('workqueue_adds_total{name="blockpulls"} 2');
    expect(r.text).toContain('blockpull_reconcile_duration_seconds_count{result="success"} 1');
    expect(r.text).toContain('blockpull_reconcile_errors_total{reason="VMINotFound"} 1');
    expect(r.text).toContain('blockpull_bytes_streamed_total 1024');
    expect(r.text).toContain('blockpull_jobs{phase="Running"} 0');
    expect(r.text).toContain('blockpull_jobs{phase="Completed"} 3');
    expect(r.text).toContain('blockpull_leader 1');
    expect(r.text).toContain('blockpull_informer_restarts_total{resource="blockpulls"} 1');
    expect((await get(s.port, '/nope')).status).toBe(404);
    q.shutDown();
  });
});

describe('health server', () => {
  it('/healthz is ok while the event loop runs, 500 after it was blocked', async () => {
    const s = await startHealthServer({
      port: 0,
      host: '127.0.0.1',
      readiness: {},
      maxEventLoopLagMs: 300,
      lagWindowMs: 1500,
    });
    servers.push(s);
    expect(await get(s.port, '/healthz')).toMatchObject({ status: 200, text: 'ok\n' });
    // Block the loop for 800 ms; the heartbeat notices, and the next probe reports it
    const until = Date.now() + 800;
    while (Date.now() < until) {
      /* busy */
    }
    await new Promise((r) => setTimeout(r, 300));
    const r = await fetch(`http://127.0.0.1:${s.port}/healthz`);
    expect(r.status).toBe(500);
    expect(await r.text()).toMatch(/event loop blocked for \d+ ms/);
    await new Promise((r) => setTimeout(r, 1600));
    expect((await get(s.port, '/healthz')).status).toBe(200);
  });

  it('/readyz reports every check and fails if one fails', async () => {
    let synced = false;
    const s = await startHealthServer({
      port: 0,
      host: '127.0.0.1',
      readiness: { informers: () => synced || 'blockpulls not synced', other: () => true },
    });
    servers.push(s);
    let r = await get(s.port, '/readyz');
    expect(r.status).toBe(503);
    expect(r.text).toContain('[-]informers failed: blockpulls not synced');
    expect(r.text).toContain('[+]other ok');
    synced = true;
    r = await get(s.port, '/readyz');
    expect(r.status).toBe(200);
    expect(r.text).toContain('[+]informers ok');
    expect(s.readiness().ok).toBe(true);
  });

  it('leaderAwareReadiness: leader needs synced informers, standby needs to participate', () => {
    const e = {
      leader: false,
      part: false,
      isLeader() {
        return this.leader;
      },
      isParticipating() {
        return this.part;
      },
    };
    let synced = false;
    const check = leaderAwareReadiness(e, () => synced);
    expect(check()).toMatch(/standby/);
    e.part = true;
    expect(check()).toBe(true);
    e.leader = true;
    expect(check()).toMatch(/leader: informers not synced/);
    synced = true;
    expect(check()).toBe(true);
    const noElection = leaderAwareReadiness(undefined, () => false);
    expect(noElection()).toBe('informers not synced');
  });
});
