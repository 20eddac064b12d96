// The chart's Grafana dashboard (grafanaDashboard.enabled=true: a ConfigMap with the sidecar label
// grafana_dashboard: "1") checked against a REAL Prometheus (built from the Go module proxy) on
// loopback that scrapes a REAL operator process while it runs a real block pull on a launcher
// stand-in (libvirtd + QEMU) and fails another: every panel's every query returns a series. The
// per-BlockPull series exist only while the pull runs and are gone after it ends. Also: `kubectl
// wait --for=condition=Ready` returns when the real operator completes the pull.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { e2eCluster } from '../../setup/cluster.ts';
import type { ClusterClient } from '../../cluster/client.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { sleep, waitFor } from '../../support/wait.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';
import { CHART_DIR, helmTemplate, one } from '../../ship/chart.ts';
import { ensureHelm } from '../../ship/helm.ts';
import {
  ensurePrometheus,
  operatorMetricNames,
  startPrometheus,
  type PrometheusServer,
} from '../../ship/prometheus.ts';

const NS = 'dash-e2e';
const VMI = 'vm-dash';
/** The job name the chart's ServiceMonitor gives the operator's metrics (release "blockpull"). */
const JOB = 'blockpull-blockpull-operator-metrics';
/** What Grafana puts for $__rate_interval with a 1 s scrape interval (at least 4 scrapes). */
const RATE_INTERVAL = '5s';

const Target = z.object({ refId: z.string(), expr: z.string(), legendFormat: z.string().optional() });
const Panel = z.object({ id: z.number(), type: z.string(), title: z.string(), targets: z.array(Target).min(1) });
const Dashboard = z.object({
  uid: z.string(),
  title: z.string(),
  panels: z.array(Panel),
  templating: z.object({
    list: z.array(z.object({ name: z.string(), type: z.string(), definition: z.string().optional() })),
  }),
});
type Dashboard = z.infer<typeof Dashboard>;

/** The query as Grafana sends it, with the dashboard's variables filled in. */
const expand = (expr: string): string => expr.replaceAll('$__rate_interval', RATE_INTERVAL).replaceAll('$job', JOB);

let kube: ClusterClient;
let tmp: string;
let registryDir: string;
let launcher: Launcher | undefined;
let operator: OperatorProcess | undefined;
let prom: PrometheusServer | undefined;
let dashboard: Dashboard;

beforeAll(async () => {
  kube = e2eCluster();
  await ensureHelm({ log: (l) => process.stderr.write(`[helm] ${l}\n`) });
  const tools = await ensurePrometheus({ log: (l) => process.stderr.write(`[prometheus] ${l}\n`) });
  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-dash-'));
  registryDir = await mkdtemp('/var/tmp/bp-launchers-');
  const saKubeconfig = await operatorServiceAccount(kube);
  await ensureNamespace(kube, NS);
  launcher = await startLauncher({
    namespace: NS,
    vmiName: VMI,
    registryDir,
    disks: [{ name: 'dash', layers: 3, sizeMiB: 64, allocatedMiB: 33 }],
  });
  // "ghost" is in the VMI but not in the domain: its BlockPull fails with DiskNotFound.
  await createFakeVmi(kube, { namespace: NS, vmiName: VMI, launcher, disks: ['dash', 'ghost'] });
  // Only this spec's namespace: the shared e2e cluster holds other specs' BlockPulls (Failed ones
  // too), which would change the per-phase counts asserted below.
  operator = await startOperator({
    kubeconfig: saKubeconfig,
    registryDir,
    name: 'dash-op',
    env: { BLOCKPULL_WATCH_NAMESPACE: NS },
  });
  const port = operator.metricsPort();
  if (port === undefined) throw new Error('the operator logged no metrics port');
  // The chart's own alert rules (release "blockpull": their default selector is this job and namespace).
  const { result, objects } = await helmTemplate('blockpull', 'blockpull-system', {
    grafanaDashboard: { enabled: true },
    prometheusRule: { enabled: true },
  });
  expect(result.exitCode).toBe(0);
  const ruleGroups = z
    .object({ spec: z.object({ groups: z.array(z.unknown()) }) })
    .parse(one(objects, 'PrometheusRule')).spec.groups;
  prom = await startPrometheus({
    tools,
    dir: path.join(tmp, 'prometheus'),
    job: JOB,
    targets: [`127.0.0.1:${port}`],
    labels: { namespace: 'blockpull-system' },
    ruleGroups,
  });
  const cm = z.object({ data: z.record(z.string(), z.string()) }).parse(one(objects, 'ConfigMap'));
  dashboard = Dashboard.parse(JSON.parse(cm.data['blockpull-operator.json'] ?? ''));
}, 3_600_000);

afterAll(async () => {
  if (kube !== undefined && operator !== undefined)
    await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
  await operator?.stop();
  await prom?.stop();
  await launcher?.stop();
  if (registryDir) await rm(registryDir, { recursive: true, force: true });
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('Grafana dashboard in the chart', () => {
  it('is off by default; on: a ConfigMap with the sidecar label holding files/grafana-dashboard.json', async () => {
    const off = await helmTemplate('blockpull', 'blockpull-system');
    expect(off.objects.filter((o) => o.kind === 'ConfigMap')).toEqual([]);
    const { objects } = await helmTemplate('blockpull', 'blockpull-system', {
      grafanaDashboard: { enabled: true, namespace: 'monitoring', annotations: { grafana_folder: 'KubeVirt' } },
    });
    const cm = z
      .object({
        metadata: z.object({
          name: z.string(),
          namespace: z.string(),
          labels: z.record(z.string(), z.string()),
          annotations: z.record(z.string(), z.string()),
        }),
        data: z.record(z.string(), z.string()),
      })
      .parse(one(objects, 'ConfigMap'));
    expect(cm.metadata).toMatchObject({
      name: 'blockpull-blockpull-operator-dashboard',
      namespace: 'monitoring',
      annotations: { grafana_folder: 'KubeVirt' },
    });
    expect(cm.metadata.labels['grafana_dashboard']).toBe('1');
    expect(JSON.parse(cm.data['blockpull-operator.json'] ?? '')).toEqual(
      JSON.parse(await readFile(path.join(CHART_DIR, 'files', 'grafana-dashboard.json'), 'utf8')),
    );
  });

  it('has the required panels, and queries only metrics the operator exports', async () => {
    const titles = dashboard.panels.map((p) => p.title);
    for (const t of [
      'Pulls by phase',
      'Bytes per second',
      'Progress of running pulls',
      'Failed BlockPulls',
      'Reconcile latency',
      'Reconcile error ratio',
      'Reconciles by result',
      'Work queue depth',
      'Leader',
      'Informer health',
    ]) {
      expect(titles).toContain(t);
    }
    const exported = await operatorMetricNames();
    const named = dashboard.panels.flatMap((p) =>
      p.targets.flatMap((t) =>
        [...t.expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{/g)].map((m) => ({ panel: p.title, metric: m[1] ?? '' })),
      ),
    );
    expect(named.length).toBeGreaterThanOrEqual(dashboard.panels.length);
    expect(named.filter((n) => !exported.has(n.metric))).toEqual([]);
  });

  it('every panel query returns a series from a real Prometheus scraping a real operator during a pull; per-pull series end with the pull', async () => {
    const p = prom!;
    // The Grafana variable $job: label_values(blockpull_leader, job).
    const job = dashboard.templating.list.find((v) => v.name === 'job');
    expect(job?.definition).toBe('label_values(blockpull_leader, job)');
    await waitFor(
      'Prometheus scraped the operator',
      30_000,
      async () => (await p.labelValues('job', 'blockpull_leader')).includes(JOB) || undefined,
    );

    // One pull that fails (failures panel), one that runs throttled (progress panels).
    await writeFile(
      path.join(tmp, 'ghost.yaml'),
      blockPullManifest({ namespace: NS, name: 'dash-ghost', vmiName: VMI, disk: 'ghost' }),
    );
    await kube.kubectl(['apply', '-f', path.join(tmp, 'ghost.yaml')]);
    await waitForPhase(kube, NS, 'dash-ghost', ['Failed']);
    await writeFile(
      path.join(tmp, 'dash.yaml'),
      blockPullManifest({ namespace: NS, name: 'dash', vmiName: VMI, disk: 'dash', spec: { bandwidth: '1Mi' } }),
    );
    await kube.kubectl(['apply', '-f', path.join(tmp, 'dash.yaml')]);
    await waitFor('dash Running with progress', 60_000, async () => {
      const bp = await getBlockPull(kube, NS, 'dash');
      return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0 ? bp : undefined;
    });

    // Every target of every panel, as Grafana would send it, until all return a series (rates need
    // a few scrapes; the phase gauge is refreshed every 5 s).
    const started = Date.now();
    let empty: string[] = [];
    const counts = new Map<string, number>();
    for (;;) {
      empty = [];
      for (const panel of dashboard.panels) {
        for (const t of panel.targets) {
          const result = await p.query(expand(t.expr));
          counts.set(`${panel.title} [${t.refId}]`, result.length);
          if (result.length === 0) empty.push(`${panel.title} [${t.refId}]: ${expand(t.expr)}`);
        }
      }
      const bp = await getBlockPull(kube, NS, 'dash');
      if (empty.length === 0 || bp?.status?.phase !== 'Running' || Date.now() - started > 45_000) break;
      await sleep(1000);
    }
    console.log(
      `panel queries after ${((Date.now() - started) / 1000).toFixed(1)} s (series per query):\n${[...counts].map(([k, v]) => `  ${k}: ${v}`).join('\n')}`,
    );
    expect(empty).toEqual([]);
    const progress = await p.query('blockpull_pull_progress_ratio');
    expect(progress.map((s) => `${s.metric['blockpull_namespace']}/${s.metric['blockpull_name']}`)).toEqual([
      `${NS}/dash`,
    ]);
    expect((await p.query(expand('max(blockpull_jobs{job=~"$job", phase="Failed"})')))[0]?.value?.[1]).toBe('1');

    // The chart's alert rules on the same real series: all evaluate cleanly; BlockPullFailed is
    // active (pending for its 1 m, then firing) for the Failed BlockPull; the others stay inactive.
    const rules = await waitFor('BlockPullFailed active', 30_000, async () => {
      const r = await p.alertRules();
      return r.find((x) => x.name === 'BlockPullFailed')?.state !== 'inactive' ? r : undefined;
    });
    console.log(
      `alert rules on the real operator: ${rules.map((r) => `${r.name}=${r.state ?? '?'}/${r.health}`).join(', ')}`,
    );
    expect(rules.map((r) => r.name).sort()).toEqual([
      'BlockPullFailed',
      'BlockPullInformerStalled',
      'BlockPullNoLeader',
      'BlockPullNoProgress',
      'BlockPullOperatorDown',
      'BlockPullReconcileErrors',
    ]);
    expect(rules.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.lastError ?? r.health}`)).toEqual([]);
    expect(rules.filter((r) => r.state !== 'inactive').map((r) => r.name)).toEqual(['BlockPullFailed']);

    // Let it finish (unlimited), and wait for Ready as a script would.
    await kube.kubectl(['patch', 'bp', 'dash', '-n', NS, '--type=merge', '-p', '{"spec":{"bandwidth":0}}']);
    const waitStarted = Date.now();
    const out = await kube.kubectl(['-n', NS, 'wait', 'bp/dash', '--for=condition=Ready', '--timeout=180s'], {
      timeoutMs: 200_000,
    });
    console.log(
      `kubectl wait --for=condition=Ready returned after ${((Date.now() - waitStarted) / 1000).toFixed(1)} s: ${out.trim()}`,
    );
    expect(out).toContain('condition met');
    expect((await getBlockPull(kube, NS, 'dash'))?.status?.phase).toBe('Completed');

    // The per-pull series are gone from the operator's /metrics, and then from Prometheus (stale).
    const metricsText = await (await fetch(`http://127.0.0.1:${operator!.metricsPort()}/metrics`)).text();
    expect(metricsText).not.toMatch(/^blockpull_pull_progress_ratio\{/m);
    expect(metricsText).not.toMatch(/^blockpull_pull_last_progress_timestamp_seconds\{/m);
    expect(metricsText).toMatch(/^# TYPE blockpull_pull_progress_ratio gauge$/m);
    await waitFor('per-pull series stale in Prometheus', 30_000, async () =>
      (await p.query('blockpull_pull_progress_ratio')).length === 0 ? true : undefined,
    );
    expect(await p.query('blockpull_pull_last_progress_timestamp_seconds')).toEqual([]);
  });
});
