// Real Prometheus tools for the alert and dashboard tests: `promtool` (test rules, check rules) and
// the `prometheus` server, built from the Go module proxy through the pinned wrapper module
// ./prometheus-go (Prometheus 3.x is the Go module version v0.3XX.Y) and cached like helm.
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { z } from 'zod';
import { fileURLToPath } from 'node:url';
import { createMetrics } from '../../../operator/src/kube/metrics.ts';
import { ensureGoTool, requiredVersion, type GoTool } from './go-tool.ts';
import { run, startDaemon } from '../support/process.ts';
import { freePorts } from '../support/ports.ts';

const wrapperDir = join(import.meta.dirname, 'prometheus-go');
/** The Go module version pinned in prometheus-go/go.mod, e.g. v0.316.0 (= Prometheus 3.16.0). */
export const PROMETHEUS_MODULE_VERSION = requiredVersion(
  readFileSync(join(wrapperDir, 'go.mod'), 'utf8'),
  'github.com/prometheus/prometheus',
);
/** v0.316.0 -> 3.16.0 (the release the module version stands for). */
export const PROMETHEUS_VERSION = ((): string => {
  const m = /^v0\.(\d+)(\d\d)\.(\d+)$/.exec(PROMETHEUS_MODULE_VERSION);
  if (!m) throw new Error(`unexpected Prometheus module version ${PROMETHEUS_MODULE_VERSION}`);
  return `${m[1]}.${Number(m[2])}.${m[3]}`;
})();

const tool: GoTool = {
  name: 'prometheus',
  version: PROMETHEUS_VERSION,
  wrapperDir,
  packages: ['github.com/prometheus/prometheus/cmd/prometheus', 'github.com/prometheus/prometheus/cmd/promtool'],
  binaries: ['prometheus', 'promtool'],
  // As Prometheus's own build (.promu.yml) stamps it, so `--version` names the release.
  ldflags: `-X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION} -X github.com/prometheus/common/version.Branch=HEAD`,
  async check(dir) {
    const r = await run([join(dir, 'promtool'), '--version'], { allowExit: true, timeoutMs: 30_000 });
    return r.exitCode === 0 && r.stdout.includes(`version ${PROMETHEUS_VERSION}`);
  },
};

export interface PrometheusTools {
  readonly prometheus: string;
  readonly promtool: string;
}

export async function ensurePrometheus(options: { log?: (line: string) => void } = {}): Promise<PrometheusTools> {
  const dir = await ensureGoTool(tool, options);
  return { prometheus: join(dir, 'prometheus'), promtool: join(dir, 'promtool') };
}

/**
 * The series names the operator exports, from its real metrics registry (createMetrics(), what
 * /metrics serves): histograms as _bucket/_sum/_count. Alert rules, their tests and dashboard
 * queries may name only these (and Prometheus's own `up`).
 */
export async function operatorMetricNames(): Promise<Set<string>> {
  const text = await createMetrics().registry.metrics(); // the exposition text /metrics serves
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name = '', type] = m;
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
    else if (type === 'summary') for (const s of ['', '_sum', '_count']) names.add(name + s);
    else names.add(name);
  }
  return names;
}

/** A free TCP port on loopback (bound and released). */

const QueryResponse = z.object({
  status: z.literal('success'),
  data: z.object({
    resultType: z.string(),
    result: z.array(
      z.object({ metric: z.record(z.string(), z.string()), value: z.tuple([z.number(), z.string()]).optional() }),
    ),
  }),
});
export type Sample = z.infer<typeof QueryResponse>['data']['result'][number];

const RulesResponse = z.object({
  data: z.object({
    groups: z.array(
      z.object({
        rules: z.array(
          z.object({
            type: z.string(),
            name: z.string(),
            state: z.string().optional(),
            health: z.string(),
            lastError: z.string().optional(),
          }),
        ),
      }),
    ),
  }),
});
export type AlertRuleState = z.infer<typeof RulesResponse>['data']['groups'][number]['rules'][number];

export interface PrometheusServer {
  readonly url: string;
  readonly logPath: string;
  /** An instant query (now); rejects on a query error (bad PromQL). */
  query(expr: string): Promise<Sample[]>;
  /** Values of a label over the series matching `match` (what Grafana's label_values() asks). */
  labelValues(label: string, match: string): Promise<string[]>;
  /** The loaded alerting rules: name, state (inactive, pending, firing), health and last error. */
  alertRules(): Promise<AlertRuleState[]>;
  stop(): Promise<void>;
}

/**
 * A real Prometheus on loopback scraping `targets` every second as job `job` (with extra target
 * labels, e.g. the namespace a ServiceMonitor would add). Data and log in `dir`.
 */
export async function startPrometheus(o: {
  tools: PrometheusTools;
  dir: string;
  job: string;
  targets: readonly string[];
  labels?: Readonly<Record<string, string>>;
  /** Rule groups to load (a rules file's `groups`), evaluated every second. */
  ruleGroups?: readonly unknown[];
}): Promise<PrometheusServer> {
  await mkdir(o.dir, { recursive: true });
  const config = join(o.dir, 'prometheus.yml');
  const rulesFile = join(o.dir, 'rules.yml');
  if (o.ruleGroups) await writeFile(rulesFile, stringify({ groups: o.ruleGroups }));
  await writeFile(
    config,
    stringify({
      global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
      scrape_configs: [{ job_name: o.job, static_configs: [{ targets: [...o.targets], labels: { ...o.labels } }] }],
      ...(o.ruleGroups ? { rule_files: [rulesFile] } : {}),
    }),
  );
  const port = (await freePorts(1))[0]!;
  const url = `http://127.0.0.1:${port}`;
  const logPath = join(o.dir, 'prometheus.log');
  const prometheus = await startDaemon(
    'prometheus',
    [
      o.tools.prometheus,
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(o.dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    logPath,
    { marker: config },
  );
  const stop = async (): Promise<void> => {
    await prometheus.stop(10_000);
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (!prometheus.isRunning()) throw new Error(`prometheus exited ${prometheus.child.exitCode}; log ${logPath}`);
    const ok = await fetch(`${url}/-/ready`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`prometheus not ready within 60 s; log ${logPath}`);
    }
    await sleep(250);
  }
  return {
    url,
    logPath,
    async query(expr) {
      const r = await fetch(`${url}/api/v1/query?${new URLSearchParams({ query: expr }).toString()}`);
      const body: unknown = await r.json();
      if (!r.ok) throw new Error(`query ${expr}: HTTP ${r.status} ${JSON.stringify(body).slice(0, 500)}`);
      return QueryResponse.parse(body).data.result;
    },
    async labelValues(label, match) {
      const r = await fetch(
        `${url}/api/v1/label/${encodeURIComponent(label)}/values?${new URLSearchParams({ 'match[]': match }).toString()}`,
      );
      return z.object({ data: z.array(z.string()) }).parse(await r.json()).data;
    },
    async alertRules() {
      const r = await fetch(`${url}/api/v1/rules?type=alert`);
      return RulesResponse.parse(await r.json()).data.groups.flatMap((g) => g.rules);
    },
    stop,
  };
}

// `node test/e2e/ship/prometheus.ts` builds (or finds) prometheus and promtool and prints their paths.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const t = await ensurePrometheus({ log: (l) => console.error(l) });
  console.log(t.prometheus);
  console.log(t.promtool);
}
