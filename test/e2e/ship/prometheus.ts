// Real Prometheus tools for the alert and dashboard tests: `promtool` (test rules, check rules) and
// the `prometheus` server, built from the Go module proxy through the pinned wrapper module
// ./prometheus-go (Prometheus 3.x is the Go module version v0.3XX.Y) and cached like helm.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createMetrics } from '../../../operator/src/kube/metrics.ts';
import { ensureGoTool, requiredVersion, type GoTool } from './go-tool.ts';
import { run } from './helm.ts';

const wrapperDir = join(import.meta.dirname, 'prometheus-go');
/** The Go module version pinned in prometheus-go/go.mod, e.g. v0.316.0 (= Prometheus 3.16.0). */
export const PROMETHEUS_MODULE_VERSION = requiredVersion(readFileSync(join(wrapperDir, 'go.mod'), 'utf8'), 'github.com/prometheus/prometheus');
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
    const r = await run([join(dir, 'promtool'), '--version'], { timeoutMs: 30_000 });
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

// `node test/e2e/ship/prometheus.ts` builds (or finds) prometheus and promtool and prints their paths.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const t = await ensurePrometheus({ log: (l) => console.error(l) });
  console.log(t.prometheus);
  console.log(t.promtool);
}
