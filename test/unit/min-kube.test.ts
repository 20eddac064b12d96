// The declared minimum Kubernetes is the release the compatibility spec (test/e2e/specs/compat/)
// runs on every suite run: the chart's kubeVersion, the README's requirement line and the
// compatibility table of docs/kubevirt.md must all name it, so none can claim an untested release.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { COMPAT_K8S_VERSION } from '../e2e/cluster/versions.ts';

const root = join(import.meta.dirname, '..', '..');
const read = (...p: string[]): string => readFileSync(join(root, ...p), 'utf8');
const minor = /^v1\.(\d+)\.\d+$/.exec(COMPAT_K8S_VERSION)?.[1];

describe('the minimum Kubernetes', () => {
  it('COMPAT_K8S_VERSION is a v1.Y.Z release', () => {
    expect(minor).toMatch(/^\d+$/);
  });

  it("is the chart's kubeVersion floor", () => {
    const chart = z
      .object({ kubeVersion: z.string() })
      .parse(parse(read('charts', 'blockpull-operator', 'Chart.yaml')));
    expect(chart.kubeVersion).toBe(`>=1.${minor}.0-0`);
  });

  it("is the README's requirement, with the release it is proven on", () => {
    const line = read('README.md')
      .split('\n')
      .find((l) => l.startsWith('Requirements:'));
    expect(line).toContain(`Kubernetes ≥ 1.${minor} `);
    expect(line).toContain(COMPAT_K8S_VERSION);
  });

  it('docs/kubevirt.md has a Kubernetes row for that release, run by the compat spec', () => {
    const rows = read('docs', 'kubevirt.md')
      .split('\n')
      .filter((l) => l.startsWith('| Kubernetes |'));
    const row = rows.find((r) => r.includes(COMPAT_K8S_VERSION));
    expect(row).toBeDefined();
    expect(row).toContain('specs/compat/min-kube.e2e.test.ts');
  });
});
