// Helpers to render the Helm chart with the real helm and read what it produced.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { z } from 'zod';
import { REPO_ROOT } from '../support/paths.ts';
import { ensureHelm } from './helm.ts';
import { run, type RunResult } from '../support/process.ts';

export const CHART_DIR = join(REPO_ROOT, 'charts', 'blockpull-operator');

export const K8sObject = z.looseObject({
  apiVersion: z.string(),
  kind: z.string(),
  metadata: z.looseObject({ name: z.string(), namespace: z.string().optional() }),
});
export type K8sObject = z.infer<typeof K8sObject>;

export const PolicyRule = z.object({
  apiGroups: z.array(z.string()),
  resources: z.array(z.string()),
  verbs: z.array(z.string()),
  resourceNames: z.array(z.string()).optional(),
});
export type PolicyRule = z.infer<typeof PolicyRule>;

export async function readRulesFile(name: 'rbac-rules.yaml' | 'leader-election-rules.yaml'): Promise<PolicyRule[]> {
  return z.array(PolicyRule).parse(parse(await readFile(join(CHART_DIR, 'files', name), 'utf8')));
}

export interface Rendered {
  readonly result: RunResult;
  readonly objects: K8sObject[];
  readonly yaml: string;
}

/** `helm template` with the given values (written to a temp file, like a user's -f values.yaml). */
export async function helmTemplate(
  release: string,
  namespace: string,
  values: Record<string, unknown> = {},
  extraArgs: readonly string[] = [],
): Promise<Rendered> {
  const helm = await ensureHelm();
  const dir = await mkdtemp(join(tmpdir(), 'blockpull-values-'));
  try {
    const valuesFile = join(dir, 'values.yaml');
    await writeFile(valuesFile, stringify(values));
    const result = await run(
      [helm, 'template', release, CHART_DIR, '--namespace', namespace, '--values', valuesFile, ...extraArgs],
      { allowExit: true, timeoutMs: 60_000 },
    );
    const objects =
      result.exitCode === 0
        ? parseAllDocuments(result.stdout)
            .map((d) => d.toJS() as unknown)
            .filter((o) => o !== null)
            .map((o) => K8sObject.parse(o))
        : [];
    return { result, objects, yaml: result.stdout };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function find(objects: readonly K8sObject[], kind: string): K8sObject[] {
  return objects.filter((o) => o.kind === kind);
}

export function one(objects: readonly K8sObject[], kind: string): K8sObject {
  const found = find(objects, kind);
  if (found.length !== 1) throw new Error(`expected exactly one ${kind}, found ${found.length}`);
  return found[0] as K8sObject;
}

const EnvVar = z.looseObject({ name: z.string(), value: z.string().optional() });
export const DeploymentShape = z.looseObject({
  spec: z.looseObject({
    replicas: z.number(),
    template: z.looseObject({
      spec: z.looseObject({
        serviceAccountName: z.string(),
        securityContext: z.record(z.string(), z.unknown()),
        containers: z.array(
          z.looseObject({
            name: z.string(),
            image: z.string(),
            env: z.array(EnvVar),
            ports: z.array(z.looseObject({ name: z.string(), containerPort: z.number() })),
            securityContext: z.record(z.string(), z.unknown()),
            livenessProbe: z.looseObject({
              httpGet: z.looseObject({ path: z.string(), port: z.union([z.string(), z.number()]) }),
            }),
            readinessProbe: z.looseObject({
              httpGet: z.looseObject({ path: z.string(), port: z.union([z.string(), z.number()]) }),
            }),
            resources: z.looseObject({
              requests: z.record(z.string(), z.unknown()),
              limits: z.record(z.string(), z.unknown()),
            }),
          }),
        ),
      }),
    }),
  }),
});

export function envOf(deployment: K8sObject): Map<string, string | undefined> {
  const d = DeploymentShape.parse(deployment);
  const c = d.spec.template.spec.containers[0];
  if (!c) throw new Error('no container');
  return new Map(c.env.map((e) => [e.name, e.value]));
}
