// The chart's PrometheusRule (prometheusRule.enabled=true), rendered by the real helm and tested by
// the real `promtool check rules` / `promtool test rules` (Prometheus built from the Go module proxy,
// test/e2e/ship/prometheus-go). The input series use the operator's real metric names: a rule or a
// test series naming a metric the operator's own registry (createMetrics()) does not export fails.
// Every alert has severity, summary, description and a runbook_url to docs/runbooks/<Alert>.md.
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { z } from 'zod';
import { helmTemplate, one } from '../../ship/chart.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { ensureHelm } from '../../ship/helm.ts';
import { run } from '../../support/process.ts';
import { ensurePrometheus, operatorMetricNames, type PrometheusTools } from '../../ship/prometheus.ts';

const RELEASE = 'bp';
const NS = 'blockpull-system';
const JOB = `${RELEASE}-blockpull-operator-metrics`;
const RUNBOOKS = 'https://github.com/blockpull/blockpull-operator/blob/main/docs/runbooks';
/** The labels Prometheus gives the operator's samples when the chart's ServiceMonitor scrapes them. */
const TARGET = { job: JOB, namespace: NS, instance: '10.1.2.3:8080', pod: 'bp-blockpull-operator-7d9f-abcde' };

const Rule = z.object({
  alert: z.string(),
  expr: z.string(),
  for: z.string().optional(),
  labels: z.record(z.string(), z.string()),
  annotations: z.record(z.string(), z.string()),
});
const PrometheusRule = z.object({
  spec: z.object({ groups: z.array(z.object({ name: z.string(), rules: z.array(Rule) })) }),
});
type Rule = z.infer<typeof Rule>;

/** Metric names a PromQL expression selects (every selector in the chart's rules has a `{...}`). */
function metricNamesIn(expr: string): string[] {
  const names = new Set<string>();
  for (const m of expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{/g)) if (m[1]) names.add(m[1]);
  return [...names];
}
/** Prometheus's own series (not exported by the operator). */
const PROMETHEUS_OWN = new Set(['up']);

async function renderRules(values: Record<string, unknown> = {}): Promise<Rule[]> {
  const { result, objects } = await helmTemplate(RELEASE, NS, { prometheusRule: { enabled: true, ...values } });
  expect(result.stderr).toBe('');
  expect(result.exitCode).toBe(0);
  return PrometheusRule.parse(one(objects, 'PrometheusRule')).spec.groups.flatMap((g) => g.rules);
}

const series = (name: string, labels: Record<string, string>, values: string): { series: string; values: string } => ({
  series: `${name}{${Object.entries({ ...TARGET, ...labels })
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
    .join(',')}}`,
  values,
});

let tools: PrometheusTools;
let dir: string;
let exported: Set<string>;

beforeAll(async () => {
  await ensureHelm({ log: (l) => process.stderr.write(`[helm] ${l}\n`) });
  tools = await ensurePrometheus({ log: (l) => process.stderr.write(`[prometheus] ${l}\n`) });
  dir = await mkdtemp(join(tmpdir(), 'bp-alerts-'));
  exported = await operatorMetricNames();
}, 3_600_000);

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Writes the rules and a promtool test file (tests: [...]) and runs `promtool test rules`. */
async function promtoolTest(
  name: string,
  rules: Rule[],
  tests: unknown[],
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const rulesFile = join(dir, `${name}.rules.yaml`);
  const testFile = join(dir, `${name}.test.yaml`);
  await writeFile(rulesFile, stringify({ groups: [{ name: 'blockpull-operator', rules }] }));
  await writeFile(testFile, stringify({ rule_files: [rulesFile], evaluation_interval: '1m', tests }));
  // Every input series must be a metric the operator exports (or Prometheus's own `up`).
  const unknown = (tests as { input_series: { series: string }[] }[])
    .flatMap((t) => t.input_series.map((s) => s.series.replace(/\{.*$/, '')))
    .filter((n) => !exported.has(n) && !PROMETHEUS_OWN.has(n));
  expect(unknown, 'test series the operator does not export').toEqual([]);
  return run([tools.promtool, 'test', 'rules', testFile], { allowExit: true, timeoutMs: 120_000 });
}

describe('PrometheusRule alerts', () => {
  it('off by default; on: the six alerts, each with severity, summary, description and an existing runbook', async () => {
    const { objects } = await helmTemplate(RELEASE, NS);
    expect(objects.filter((o) => o.kind === 'PrometheusRule')).toEqual([]);
    const rules = await renderRules();
    expect(rules.map((r) => r.alert)).toEqual([
      'BlockPullFailed',
      'BlockPullNoProgress',
      'BlockPullOperatorDown',
      'BlockPullNoLeader',
      'BlockPullInformerStalled',
      'BlockPullReconcileErrors',
    ]);
    for (const r of rules) {
      expect(['warning', 'critical'], r.alert).toContain(r.labels.severity);
      expect(r.annotations.summary, r.alert).toBeTruthy();
      expect(r.annotations.description, r.alert).toBeTruthy();
      expect(r.annotations.runbook_url, r.alert).toBe(`${RUNBOOKS}/${r.alert}.md`);
      const runbook = join(REPO_ROOT, 'docs', 'runbooks', `${r.alert}.md`);
      expect(existsSync(runbook), runbook).toBe(true);
      const text = readFileSync(runbook, 'utf8');
      expect(text.split('\n')[0], `${runbook} title`).toBe(`# ${r.alert}`);
      for (const section of ['## What it means', '## Diagnose', '## Fix'])
        expect(text, `${runbook}: ${section}`).toContain(section);
      expect(text, `${runbook} diagnoses with kubectl`).toMatch(/kubectl /);
      expect(text, `${runbook} diagnoses with virsh`).toMatch(/virsh /);
    }
    // Without leader election there is no leader metric to alert on.
    const { objects: noLe } = await helmTemplate(RELEASE, NS, {
      replicaCount: 1,
      leaderElection: { enabled: false },
      prometheusRule: { enabled: true },
    });
    const noLeRules = PrometheusRule.parse(one(noLe, 'PrometheusRule')).spec.groups.flatMap((g) => g.rules);
    expect(noLeRules.map((r) => r.alert)).not.toContain('BlockPullNoLeader');
  });

  it('promtool check rules accepts them', async () => {
    const rules = await renderRules({
      alertLabels: { team: 'storage' },
      noProgressMinutes: 5,
      selector: 'job="blockpull"',
    });
    const file = join(dir, 'check.rules.yaml');
    await writeFile(file, stringify({ groups: [{ name: 'blockpull-operator', rules }] }));
    const r = await run([tools.promtool, 'check', 'rules', file], { allowExit: true, timeoutMs: 60_000 });
    expect(r.stderr + r.stdout).toContain('SUCCESS: 6 rules found');
    expect(r.exitCode).toBe(0);
    for (const rule of rules) {
      expect(rule.labels.team).toBe('storage');
      if (rule.alert !== 'BlockPullOperatorDown') expect(rule.expr).toContain('job="blockpull"');
    }
  });

  it('every metric a rule names is one the operator exports (names from its real registry)', async () => {
    const rules = await renderRules();
    const named = rules.flatMap((r) => metricNamesIn(r.expr).map((n) => ({ alert: r.alert, metric: n })));
    expect(named.length).toBeGreaterThanOrEqual(rules.length);
    expect(named.filter((n) => !exported.has(n.metric) && !PROMETHEUS_OWN.has(n.metric))).toEqual([]);
    // The check can fail: a misspelt metric is caught.
    expect(metricNamesIn('max(blockpull_jobs_total{phase="Failed"}) > 0').filter((n) => !exported.has(n))).toEqual([
      'blockpull_jobs_total',
    ]);
  });

  it('promtool test rules: each alert fires on its condition, and not on a healthy operator', async () => {
    const rules = await renderRules();
    const annotations = (alert: string, summary: string, description: string): Record<string, string> => ({
      summary,
      description,
      runbook_url: `${RUNBOOKS}/${alert}.md`,
    });
    const sel = `job="${JOB}", namespace="${NS}"`;
    const tests = [
      {
        name: 'BlockPullFailed: a BlockPull is Failed',
        interval: '1m',
        input_series: [
          series('blockpull_jobs', { phase: 'Failed' }, '0 0 1x10'),
          series('blockpull_jobs', { phase: 'Running' }, '1x12'),
        ],
        alert_rule_test: [
          { eval_time: '2m', alertname: 'BlockPullFailed', exp_alerts: [] },
          {
            eval_time: '5m',
            alertname: 'BlockPullFailed',
            exp_alerts: [
              {
                exp_labels: { severity: 'warning' },
                exp_annotations: annotations(
                  'BlockPullFailed',
                  '1 BlockPull(s) Failed',
                  '1 BlockPull(s) are in phase Failed (terminal): the disk was not flattened. kubectl get bp -A shows which; status.reason and status.message say why.',
                ),
              },
            ],
          },
        ],
      },
      {
        name: 'BlockPullNoProgress: one pull stuck for more than 15 minutes, one progressing',
        interval: '1m',
        input_series: [
          // The value is the Unix time of the last progress; promtool's clock starts at 0.
          series(
            'blockpull_pull_last_progress_timestamp_seconds',
            { blockpull_namespace: 'vms', blockpull_name: 'stuck' },
            '0+60x5 300x30',
          ),
          series(
            'blockpull_pull_last_progress_timestamp_seconds',
            { blockpull_namespace: 'vms', blockpull_name: 'moving' },
            '0+60x35',
          ),
        ],
        alert_rule_test: [
          { eval_time: '19m', alertname: 'BlockPullNoProgress', exp_alerts: [] },
          {
            eval_time: '21m',
            alertname: 'BlockPullNoProgress',
            exp_alerts: [
              {
                exp_labels: { severity: 'warning', blockpull_namespace: 'vms', blockpull_name: 'stuck' },
                exp_annotations: annotations(
                  'BlockPullNoProgress',
                  'BlockPull vms/stuck Running without progress for 15 minutes',
                  'BlockPull vms/stuck is Running but its bytes have not moved for 16m 0s (threshold 15 minutes): the block job may hang, be throttled to almost nothing (spec.bandwidth), or libvirt may be unreachable.',
                ),
              },
            ],
          },
        ],
      },
      {
        name: 'BlockPullOperatorDown: no replica scraped for 5 minutes',
        interval: '1m',
        input_series: [series('up', {}, '1 1 0x20')],
        alert_rule_test: [
          { eval_time: '5m', alertname: 'BlockPullOperatorDown', exp_alerts: [] },
          {
            eval_time: '8m',
            alertname: 'BlockPullOperatorDown',
            exp_alerts: [
              {
                // absent(x == 1) has no labels to take over (observed with promtool).
                exp_labels: { severity: 'critical' },
                exp_annotations: annotations(
                  'BlockPullOperatorDown',
                  'No blockpull-operator replica is up',
                  `Prometheus has scraped no blockpull-operator replica (${sel}) for 5 minutes: BlockPulls are not reconciled; running block jobs continue in QEMU but nobody records their end.`,
                ),
              },
            ],
          },
        ],
      },
      {
        name: 'BlockPullOperatorDown: one of two replicas down is fine',
        interval: '1m',
        input_series: [series('up', { pod: 'a' }, '1x20'), series('up', { pod: 'b' }, '1 1 0x18')],
        alert_rule_test: [{ eval_time: '15m', alertname: 'BlockPullOperatorDown', exp_alerts: [] }],
      },
      {
        name: 'BlockPullNoLeader: replicas up, none leads',
        interval: '1m',
        input_series: [
          series('blockpull_leader', { pod: 'a' }, '1 1 0x10'),
          series('blockpull_leader', { pod: 'b' }, '0x12'),
        ],
        alert_rule_test: [
          { eval_time: '3m', alertname: 'BlockPullNoLeader', exp_alerts: [] },
          {
            eval_time: '5m',
            alertname: 'BlockPullNoLeader',
            exp_alerts: [
              {
                exp_labels: { severity: 'critical' },
                exp_annotations: annotations(
                  'BlockPullNoLeader',
                  'blockpull-operator has no leader',
                  'Replicas are up but none has held the leader Lease bp-blockpull-operator-leader for 2 minutes: nothing reconciles BlockPulls.',
                ),
              },
            ],
          },
        ],
      },
      {
        name: 'BlockPullNoLeader: leadership moving to the standby is fine',
        interval: '1m',
        input_series: [
          series('blockpull_leader', { pod: 'a' }, '1 1 0x10'),
          series('blockpull_leader', { pod: 'b' }, '0 0 1x10'),
        ],
        alert_rule_test: [{ eval_time: '10m', alertname: 'BlockPullNoLeader', exp_alerts: [] }],
      },
      {
        name: 'BlockPullInformerStalled',
        interval: '1m',
        input_series: [
          series('blockpull_informer_stalled', { resource: 'blockpulls' }, '0x12'),
          series('blockpull_informer_stalled', { resource: 'virtualmachineinstances' }, '0 0 1x10'),
        ],
        alert_rule_test: [
          { eval_time: '2m', alertname: 'BlockPullInformerStalled', exp_alerts: [] },
          {
            eval_time: '4m',
            alertname: 'BlockPullInformerStalled',
            exp_alerts: [
              {
                exp_labels: { severity: 'warning', resource: 'virtualmachineinstances' },
                exp_annotations: annotations(
                  'BlockPullInformerStalled',
                  "blockpull-operator's virtualmachineinstances informer is stalled",
                  "The leader's list+watch of virtualmachineinstances has been failing beyond its stall threshold: its cache is stale, so changes are seen late or not at all. The watchdog keeps restarting it.",
                ),
              },
            ],
          },
        ],
      },
      {
        name: 'BlockPullReconcileErrors: a third of the reconciles fail',
        interval: '1m',
        input_series: [
          series('blockpull_reconcile_total', { result: 'success' }, '0+100x60'),
          series('blockpull_reconcile_total', { result: 'error' }, '0+50x60'),
          series('blockpull_reconcile_errors_total', { reason: 'ApiException' }, '0+50x60'),
        ],
        alert_rule_test: [
          { eval_time: '10m', alertname: 'BlockPullReconcileErrors', exp_alerts: [] },
          {
            eval_time: '40m',
            alertname: 'BlockPullReconcileErrors',
            exp_alerts: [
              {
                exp_labels: { severity: 'warning' },
                exp_annotations: annotations(
                  'BlockPullReconcileErrors',
                  'blockpull-operator reconcile errors are rising',
                  '33.33% of reconciles failed over the last 15 minutes (threshold 0.1): blockpull_reconcile_errors_total{reason} says which errors.',
                ),
              },
            ],
          },
        ],
      },
      {
        name: 'BlockPullReconcileErrors: 5% errors is below the threshold',
        interval: '1m',
        input_series: [
          series('blockpull_reconcile_total', { result: 'success' }, '0+95x60'),
          series('blockpull_reconcile_total', { result: 'error' }, '0+5x60'),
          series('blockpull_reconcile_errors_total', { reason: 'ApiException' }, '0+5x60'),
        ],
        alert_rule_test: [{ eval_time: '40m', alertname: 'BlockPullReconcileErrors', exp_alerts: [] }],
      },
    ];
    const r = await promtoolTest('default', rules, tests);
    console.log(r.stdout + r.stderr);
    expect(r.stdout + r.stderr).toContain('SUCCESS');
    expect(r.exitCode).toBe(0);
  });

  it('promtool test rules: noProgressMinutes is honoured, and a wrong expectation fails (promtool can fail)', async () => {
    const rules = await renderRules({ noProgressMinutes: 5 });
    const stuck = [
      series(
        'blockpull_pull_last_progress_timestamp_seconds',
        { blockpull_namespace: 'vms', blockpull_name: 'stuck' },
        '0+60x5 300x30',
      ),
    ];
    const fires = (at: string, exp: boolean): unknown => ({
      name: `5 minutes, at ${at}`,
      interval: '1m',
      input_series: stuck,
      alert_rule_test: [
        {
          eval_time: at,
          alertname: 'BlockPullNoProgress',
          exp_alerts: exp
            ? [
                {
                  exp_labels: { severity: 'warning', blockpull_namespace: 'vms', blockpull_name: 'stuck' },
                  exp_annotations: {
                    summary: 'BlockPull vms/stuck Running without progress for 5 minutes',
                    description:
                      'BlockPull vms/stuck is Running but its bytes have not moved for 6m 0s (threshold 5 minutes): the block job may hang, be throttled to almost nothing (spec.bandwidth), or libvirt may be unreachable.',
                    runbook_url: `${RUNBOOKS}/BlockPullNoProgress.md`,
                  },
                },
              ]
            : [],
        },
      ],
    });
    const ok = await promtoolTest('five', rules, [fires('9m', false), fires('11m', true)]);
    expect(ok.stdout + ok.stderr).toContain('SUCCESS');
    expect(ok.exitCode).toBe(0);
    const wrong = await promtoolTest('five-wrong', rules, [fires('9m', true)]);
    expect(wrong.exitCode).not.toBe(0);
    expect(wrong.stdout + wrong.stderr).toMatch(/FAILED/);
  });
});
