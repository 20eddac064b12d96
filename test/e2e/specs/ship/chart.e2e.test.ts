// The Helm chart, rendered by a real helm (built from the Go module proxy, pinned) and applied to
// the real control plane of the e2e global setup; its RBAC proven with the chart's own
// ServiceAccount token: what the operator must do is allowed, what it must not do is refused; and
// its exec ValidatingAdmissionPolicy: the token may exec only the operator's own commands.
import { mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import { canI as canIAs, createServiceAccountKubeconfig } from '../../cluster/service-account.ts';
import { installCrds, VMBACKUP_CRD_FILE, VMSNAPSHOT_CRD_FILE } from '../../cluster/crds.ts';
import { ENV_VARS, loadConfig } from '../../../../operator/src/config.ts';
import {
  CHART_DIR,
  DeploymentShape,
  envOf,
  find,
  helmTemplate,
  one,
  PolicyRule,
  readRulesFile,
  type K8sObject,
} from '../../ship/chart.ts';
import { ensureHelm } from '../../ship/helm.ts';
import {
  allowedExecCases,
  deniedExecCases,
  EXEC_POLICY_MESSAGES,
  isPolicyDenial,
  probeExec,
} from '../../ship/exec-policy.ts';
import { VIRSH_SUBCOMMANDS } from '../../../../operator/src/hypervisor/commands.ts';
import { KILL_ON_DISCONNECT_PREFIX } from '../../../../operator/src/kubevirt/exec-runner.ts';
import { ROOT_URI, SESSION_URI } from '../../../../operator/src/kubevirt/launcher.ts';
import { run } from '../../support/process.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { parse, stringify } from 'yaml';
import { z } from 'zod';

const NS = 'blockpull-system';
const RELEASE = 'bp';
const SA = 'bp-blockpull-operator';
/**
 * What helm install learns from an API server that serves the v1 policy API (1.30 and later):
 * offline, helm template knows group versions only, not kinds, and leaves the exec policy out.
 */
const WITH_VAP = ['--api-versions', 'admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy'];
const CelPolicy = z.looseObject({
  metadata: z.looseObject({ name: z.string() }),
  spec: z.looseObject({
    failurePolicy: z.string(),
    matchConstraints: z.unknown(),
    matchConditions: z.array(z.object({ name: z.string(), expression: z.string() })),
    variables: z.array(z.object({ name: z.string(), expression: z.string() })),
    validations: z.array(z.object({ expression: z.string(), reason: z.string(), message: z.string() })),
  }),
});

let kube: ClusterClient;
let helm: string;

beforeAll(async () => {
  kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
  helm = await ensureHelm({ log: (l) => process.stderr.write(`[helm] ${l}\n`) });
}, 1_800_000);

describe('helm lint and template', () => {
  it('helm lint --strict passes with default and with non-default values', async () => {
    const lint = await run([helm, 'lint', '--strict', CHART_DIR], { allowExit: true });
    expect(lint.stderr + lint.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
    expect(lint.exitCode).toBe(0);
    const lint2 = await run(
      [
        helm,
        'lint',
        '--strict',
        CHART_DIR,
        '--set',
        'replicaCount=3,metrics.serviceMonitor.enabled=true,operator.logLevel=debug,prometheusRule.enabled=true,grafanaDashboard.enabled=true',
      ],
      { allowExit: true },
    );
    expect(lint2.exitCode).toBe(0);
    // (helm lint has no --api-versions: the exec policy's template is proven by helm template and the API server below.)
    const lint3 = await run([helm, 'lint', '--strict', CHART_DIR, '--set', 'execPolicy.enabled=false'], {
      allowExit: true,
    });
    expect(lint3.exitCode, lint3.stdout).toBe(0);
  });

  it('default values render the documented objects', async () => {
    const { result, objects } = await helmTemplate(RELEASE, NS);
    expect(result.stderr).toBe('');
    expect(result.exitCode).toBe(0);
    expect(objects.map((o) => o.kind).sort()).toEqual(
      [
        'ClusterRole',
        'ClusterRoleBinding',
        'Deployment',
        'PodDisruptionBudget',
        'Role',
        'RoleBinding',
        'Service',
        'ServiceAccount',
      ].sort(),
    );
    for (const o of objects)
      if (!o.kind.startsWith('Cluster')) expect(o.metadata.namespace, `${o.kind} namespace`).toBe(NS);

    const dep = DeploymentShape.parse(one(objects, 'Deployment'));
    expect(dep.spec.replicas).toBe(2);
    const pod = dep.spec.template.spec;
    expect(pod.serviceAccountName).toBe(SA);
    expect(pod.securityContext).toMatchObject({
      runAsNonRoot: true,
      runAsUser: 65532,
      seccompProfile: { type: 'RuntimeDefault' },
    });
    const c = pod.containers[0];
    expect(c?.image).toBe('blockpull-operator:0.1.0');
    expect(c?.securityContext).toMatchObject({
      runAsNonRoot: true,
      runAsUser: 65532,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    });
    expect(c?.ports.map((p) => [p.name, p.containerPort])).toEqual([
      ['metrics', 8080],
      ['health', 8081],
    ]);
    expect(c?.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'health' });
    expect(c?.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'health' });
    expect(Object.keys(c?.resources.requests ?? {}).sort()).toEqual(['cpu', 'memory']);
    expect(c?.resources.limits).toHaveProperty('memory');

    const env = envOf(one(objects, 'Deployment'));
    expect(env.get('BLOCKPULL_LEADER_ELECT')).toBe('true');
    expect(env.get('BLOCKPULL_TRANSPORT')).toBe('exec');
    expect(env.get('BLOCKPULL_HEALTH_PORT')).toBe('8081');
    expect(env.get('BLOCKPULL_METRICS_PORT')).toBe('8080');
    expect(env.get('BLOCKPULL_LEASE_NAME')).toBe('bp-blockpull-operator-leader');
    // Every BLOCKPULL_* variable the chart sets is one the operator reads (operator/src/config.ts).
    for (const name of env.keys()) if (name.startsWith('BLOCKPULL_')) expect(ENV_VARS, name).toContain(name);
    // And the operator accepts every value as rendered (YAML numbers of 1e6 and more became
    // "1.048576e+06" once, which the operator refused at start).
    const literal = Object.fromEntries(
      [...env].filter(([k, v]) => k.startsWith('BLOCKPULL_') && typeof v === 'string'),
    );
    expect(() => loadConfig({ ...literal, BLOCKPULL_POD_NAME: 'p', BLOCKPULL_POD_NAMESPACE: 'ns' })).not.toThrow();

    const svc = one(objects, 'Service') as K8sObject & { spec: { ports: { port: number; targetPort: string }[] } };
    expect(svc.spec.ports).toEqual([{ name: 'metrics', port: 8080, targetPort: 'metrics', protocol: 'TCP' }]);
    expect((one(objects, 'PodDisruptionBudget') as K8sObject & { spec: unknown }).spec).toMatchObject({
      maxUnavailable: 1,
    });
  });

  it('where the API server serves the v1 ValidatingAdmissionPolicy, the exec policy and its binding are rendered; execPolicy.enabled=false leaves them out', async () => {
    const { result, objects } = await helmTemplate(RELEASE, NS, {}, WITH_VAP);
    expect(result.stderr).toBe('');
    expect(objects.map((o) => o.kind).sort()).toEqual(
      [
        'ClusterRole',
        'ClusterRoleBinding',
        'Deployment',
        'PodDisruptionBudget',
        'Role',
        'RoleBinding',
        'Service',
        'ServiceAccount',
        'ValidatingAdmissionPolicy',
        'ValidatingAdmissionPolicyBinding',
      ].sort(),
    );
    const off = await helmTemplate(RELEASE, NS, { execPolicy: { enabled: false } }, WITH_VAP);
    expect(off.result.exitCode).toBe(0);
    expect(off.objects.map((o) => o.kind).filter((k) => k.startsWith('ValidatingAdmissionPolicy'))).toEqual([]);

    // The rendered CEL carries the operator's own constants.
    const policy = CelPolicy.parse(one(objects, 'ValidatingAdmissionPolicy'));
    const binding = one(objects, 'ValidatingAdmissionPolicyBinding') as K8sObject & { spec: unknown };
    expect(policy.metadata.name).toBe(`${SA}-exec`);
    expect(binding.spec).toEqual({ policyName: `${SA}-exec`, validationActions: ['Deny'] });
    expect(policy.spec.failurePolicy).toBe('Fail');
    expect(policy.spec.matchConstraints).toEqual({
      resourceRules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['CONNECT'], resources: ['pods/exec'] }],
    });
    expect(policy.spec.matchConditions).toEqual([
      {
        name: 'blockpull-operator-service-account',
        expression: `request.userInfo.username == "system:serviceaccount:${NS}:${SA}"`,
      },
    ]);
    const variable = (name: string) => policy.spec.variables.find((v) => v.name === name)?.expression ?? '';
    // helm's toJson escapes <, > and & as \u003c, \u003e, \u0026 (CEL reads them back as the same characters).
    const goJson = (v: unknown) => JSON.stringify(v).replace(/[<>&]/g, (ch) => `\\u00${ch.charCodeAt(0).toString(16)}`);
    expect(variable('wrapped')).toContain(
      `[variables.cmd[0], variables.cmd[1], variables.cmd[2], variables.cmd[3]] == ${goJson(KILL_ON_DISCONNECT_PREFIX)}`,
    );
    expect(variable('virsh')).toContain(`variables.cmd[8] in ${goJson(VIRSH_SUBCOMMANDS)}`);
    expect(variable('virsh')).toContain(`variables.cmd[7] in ${goJson([ROOT_URI, SESSION_URI])}`);
    expect(policy.spec.validations.map((v) => [v.reason, v.message])).toEqual([
      ['Forbidden', EXEC_POLICY_MESSAGES.container],
      ['Forbidden', EXEC_POLICY_MESSAGES.wrapper],
      ['Forbidden', expect.stringContaining(EXEC_POLICY_MESSAGES.command)],
    ]);
    // A custom ServiceAccount name and namespace are what the policy matches.
    const custom = await helmTemplate('prod', 'ops', { serviceAccount: { name: 'custom-sa' } }, WITH_VAP);
    expect(CelPolicy.parse(one(custom.objects, 'ValidatingAdmissionPolicy')).spec.matchConditions[0]?.expression).toBe(
      'request.userInfo.username == "system:serviceaccount:ops:custom-sa"',
    );
  });

  it('the ClusterRole holds exactly files/rbac-rules.yaml, the Role exactly the lease rules; no wildcards', async () => {
    const { objects } = await helmTemplate(RELEASE, NS);
    const clusterRole = one(objects, 'ClusterRole') as K8sObject & { rules: unknown };
    const role = one(objects, 'Role') as K8sObject & { rules: unknown };
    expect(clusterRole.rules).toEqual(await readRulesFile('rbac-rules.yaml'));
    expect(role.rules).toEqual(await readRulesFile('leader-election-rules.yaml'));
    expect(role.metadata.namespace).toBe(NS);
    const all = JSON.stringify([clusterRole.rules, role.rules]);
    expect(all).not.toContain('*');
    expect(all).not.toContain('secrets');
    // delete only of BlockPulls (a policy deletes those it no longer needs), nothing else.
    const deleting = z
      .array(PolicyRule)
      .parse([clusterRole.rules, role.rules].flat())
      .filter((r) => r.verbs.includes('delete'));
    expect(deleting).toEqual([expect.objectContaining({ apiGroups: ['blockpull.dev'], resources: ['blockpulls'] })]);
    expect(JSON.stringify(clusterRole.rules)).not.toContain('leases');
    const binding = one(objects, 'ClusterRoleBinding') as K8sObject & { subjects: unknown };
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: SA, namespace: NS }]);
  });

  it('non-default values are honoured', async () => {
    const { result, objects } = await helmTemplate('prod', 'ops', {
      replicaCount: 3,
      image: {
        repository: 'registry.example/blockpull-operator',
        digest: `sha256:${'a'.repeat(64)}`,
        pullPolicy: 'Always',
      },
      leaderElection: {
        enabled: true,
        leaseName: 'custom-lease',
        leaseDurationMs: 30000,
        renewDeadlineMs: 20000,
        retryPeriodMs: 4000,
      },
      operator: { workers: 8, maxConcurrentPulls: 10, maxPullsPerNode: 3, logLevel: 'debug', watchNamespace: 'vms' },
      metrics: { serviceMonitor: { enabled: true, interval: '15s', labels: { release: 'kube-prometheus' } } },
      podDisruptionBudget: { enabled: false },
      serviceAccount: { name: 'custom-sa', annotations: { 'example.com/role': 'x' } },
      extraEnv: [{ name: 'NODE_OPTIONS', value: '--max-old-space-size=200' }],
      nodeSelector: { 'kubernetes.io/os': 'linux' },
    });
    expect(result.stderr).toBe('');
    expect(result.exitCode).toBe(0);
    expect(find(objects, 'PodDisruptionBudget')).toHaveLength(0);
    const sm = one(objects, 'ServiceMonitor') as K8sObject & {
      spec: { endpoints: { port: string; interval: string }[] };
    };
    expect(sm.metadata.labels).toMatchObject({ release: 'kube-prometheus' });
    expect(sm.spec.endpoints[0]).toMatchObject({ port: 'metrics', interval: '15s' });
    const dep = DeploymentShape.parse(one(objects, 'Deployment'));
    expect(dep.spec.replicas).toBe(3);
    expect(dep.spec.template.spec.serviceAccountName).toBe('custom-sa');
    expect(dep.spec.template.spec.containers[0]?.image).toBe(
      `registry.example/blockpull-operator@sha256:${'a'.repeat(64)}`,
    );
    const env = envOf(one(objects, 'Deployment'));
    expect(Object.fromEntries(env)).toMatchObject({
      BLOCKPULL_LEASE_NAME: 'custom-lease',
      BLOCKPULL_LEASE_DURATION_MS: '30000',
      BLOCKPULL_RENEW_DEADLINE_MS: '20000',
      BLOCKPULL_RETRY_PERIOD_MS: '4000',
      BLOCKPULL_WORKERS: '8',
      BLOCKPULL_MAX_CONCURRENT_PULLS: '10',
      BLOCKPULL_MAX_PULLS_PER_NODE: '3',
      BLOCKPULL_LOG_LEVEL: 'debug',
      BLOCKPULL_WATCH_NAMESPACE: 'vms',
      NODE_OPTIONS: '--max-old-space-size=200',
    });
    const role = one(objects, 'RoleBinding') as K8sObject & { subjects: unknown };
    expect(role.subjects).toEqual([{ kind: 'ServiceAccount', name: 'custom-sa', namespace: 'ops' }]);
  });

  const invalid: [string, Record<string, unknown>, RegExp][] = [
    ['replicaCount 0', { replicaCount: 0 }, /replicaCount/],
    ['an unknown top-level key', { replicas: 2 }, /additional properties 'replicas' not allowed|replicas/],
    ['root user', { securityContext: { runAsNonRoot: false } }, /runAsNonRoot/],
    ['a writable root filesystem', { securityContext: { readOnlyRootFilesystem: false } }, /readOnlyRootFilesystem/],
    ['privilege escalation', { securityContext: { allowPrivilegeEscalation: true } }, /allowPrivilegeEscalation/],
    ['added capabilities', { securityContext: { capabilities: { drop: ['ALL'], add: ['SYS_ADMIN'] } } }, /add/],
    ['an unknown log level', { operator: { logLevel: 'loud' } }, /logLevel/],
    ['a digest that is not sha256', { image: { digest: 'latest' } }, /digest/],
    ['a non-numeric worker count', { operator: { workers: 'many' } }, /workers/],
    ['two replicas without leader election', { leaderElection: { enabled: false } }, /leaderElection\.enabled/],
    ['equal health and metrics ports', { healthPort: 9000, metricsPort: 9000 }, /must differ/],
    ['alerts: no-progress minutes 0', { prometheusRule: { noProgressMinutes: 0 } }, /noProgressMinutes/],
    ['alerts: no-progress minutes as text', { prometheusRule: { noProgressMinutes: '15m' } }, /noProgressMinutes/],
    ['alerts: an error ratio above 1', { prometheusRule: { reconcileErrorRatio: 2 } }, /reconcileErrorRatio/],
    ['alerts: an error ratio of 0', { prometheusRule: { reconcileErrorRatio: 0 } }, /reconcileErrorRatio/],
    ['alerts: a selector that is not PromQL matchers', { prometheusRule: { selector: 'job=blockpull}' } }, /selector/],
    [
      'alerts: a runbook base that is not a URL',
      { prometheusRule: { runbookBaseUrl: 'docs/runbooks' } },
      /runbookBaseUrl/,
    ],
    [
      'alerts: an alert label overriding severity',
      { prometheusRule: { alertLabels: { severity: 'info' } } },
      /severity/,
    ],
    ['alerts: an unknown key', { prometheusRule: { enable: true } }, /enable/],
    [
      'dashboard: a label value too long',
      { grafanaDashboard: { labels: { grafana_dashboard: 'x'.repeat(64) } } },
      /grafanaDashboard/,
    ],
    ['dashboard: a bad namespace', { grafanaDashboard: { namespace: 'Monitoring' } }, /namespace/],
    ['dashboard: enabled as a number', { grafanaDashboard: { enabled: 1 } }, /enabled/],
    ['exec policy: enabled as text', { execPolicy: { enabled: 'always' } }, /execPolicy|enabled/],
    ['exec policy: an unknown key', { execPolicy: { enable: true } }, /enable/],
  ];
  it.each(invalid)('rejects %s', async (_what, values, message) => {
    const { result } = await helmTemplate(RELEASE, NS, values);
    expect(result.exitCode).not.toBe(0);
    expect(result.stderr).toMatch(message);
  });

  it('values.yaml documents every key the schema allows at the top level', async () => {
    const schema = z
      .object({ properties: z.record(z.string(), z.unknown()) })
      .parse(JSON.parse(await readFile(join(CHART_DIR, 'values.schema.json'), 'utf8')));
    const values = z
      .record(z.string(), z.unknown())
      .parse(parse(await readFile(join(CHART_DIR, 'values.yaml'), 'utf8')));
    expect(Object.keys(values).sort()).toEqual(
      Object.keys(schema.properties)
        .filter((k) => k !== 'global')
        .sort(),
    );
  });
});

describe('the chart on the control plane', () => {
  let saKubeconfig: string;
  const asOperator = (args: readonly string[], input?: string) =>
    kube.kubectlResult(args, { kubeconfig: saKubeconfig, ...(input !== undefined ? { input } : {}) });
  const canI = (...args: string[]): Promise<boolean> => canIAs(kube, saKubeconfig, args);

  beforeAll(async () => {
    await kube
      .kubectl(['create', 'namespace', NS, '--dry-run=client', '-o', 'yaml'])
      .then((y) => kube.kubectl(['apply', '-f', '-'], { input: y }));
    const { result, yaml } = await helmTemplate(RELEASE, NS, {}, WITH_VAP);
    expect(result.exitCode).toBe(0);
    // A real server-side apply of every rendered object (the Deployment's pods need a node: none here).
    await kube.kubectl(['apply', '--server-side', '--field-manager=helm-test', '-f', '-'], { input: yaml });
    saKubeconfig = await createServiceAccountKubeconfig(kube, NS, SA);
  }, 300_000);

  it('every rendered object exists on the API server', async () => {
    const { objects } = await helmTemplate(RELEASE, NS, {}, WITH_VAP);
    expect(objects.map((o) => o.kind)).toContain('ValidatingAdmissionPolicy');
    for (const o of objects) {
      const args = [
        'get',
        `${o.kind}.${o.apiVersion.includes('/') ? o.apiVersion.split('/')[0] : ''}`.replace(/\.$/, ''),
        o.metadata.name,
        '-o',
        'name',
      ];
      if (o.metadata.namespace) args.push('-n', o.metadata.namespace);
      expect((await kube.kubectl(args)).trim()).toMatch(new RegExp(`/${o.metadata.name}$`));
    }
  });

  it('non-default renders pass server-side validation (dry-run); the ServiceMonitor needs its CRD', async () => {
    await kube
      .kubectl(['create', 'namespace', 'ops', '--dry-run=client', '-o', 'yaml'])
      .then((y) => kube.kubectl(['apply', '-f', '-'], { input: y }));
    const { result, objects } = await helmTemplate('prod', 'ops', {
      replicaCount: 3,
      operator: { watchNamespace: 'vms', logLevel: 'debug' },
      metrics: { serviceMonitor: { enabled: true } },
      podDisruptionBudget: { maxUnavailable: '50%' },
    });
    expect(result.exitCode).toBe(0);
    const withoutSm = objects.filter((o) => o.kind !== 'ServiceMonitor');
    const ok = await kube.kubectlResult(['apply', '--dry-run=server', '-f', '-'], {
      input: withoutSm.map((o) => stringify(o)).join('---\n'),
    });
    expect(ok.stderr).toBe('');
    expect(ok.exitCode).toBe(0);
    expect(ok.stdout).toMatch(/deployment\.apps\/prod-blockpull-operator (created|configured) \(server dry run\)/);
    const sm = await kube.kubectlResult(['apply', '--dry-run=server', '-f', '-'], {
      input: stringify(one(objects, 'ServiceMonitor')),
    });
    expect(sm.exitCode).not.toBe(0);
    expect(sm.stderr).toMatch(/no matches for kind "ServiceMonitor"|ensure CRDs are installed/);
  });

  it('the server rejects a Deployment whose securityContext was tampered with (schema is not the only guard)', async () => {
    // Sanity check that the dry-run above can fail: an invalid object is refused by the server.
    const { objects } = await helmTemplate(RELEASE, NS);
    const dep = structuredClone(one(objects, 'Deployment')) as K8sObject & { spec: { replicas: unknown } };
    dep.spec.replicas = 'two';
    const r = await kube.kubectlResult(['apply', '--dry-run=server', '-f', '-'], { input: stringify(dep) });
    expect(r.exitCode).not.toBe(0);
  });

  it('helm install and uninstall work against the API server (as a user would install it)', async () => {
    const ns = 'helm-install-test';
    const kc = ['--kubeconfig', kube.kubeconfigPath];
    const install = await run(
      [helm, 'upgrade', '--install', 'hi', CHART_DIR, '--namespace', ns, '--create-namespace', ...kc],
      { allowExit: true, timeoutMs: 120_000 },
    );
    expect(install.stderr).toBe('');
    expect(install.exitCode).toBe(0);
    expect(install.stdout).toMatch(/STATUS: deployed/);
    // helm install asks the API server: it serves the v1 policy API, so the exec policy is on.
    expect(
      (
        await kube.kubectl([
          'get',
          'validatingadmissionpolicybinding',
          'hi-blockpull-operator-exec',
          '-o',
          'jsonpath={.spec.policyName}',
        ])
      ).trim(),
    ).toBe('hi-blockpull-operator-exec');
    const status = await run([helm, 'status', 'hi', '--namespace', ns, '-o', 'json', ...kc], { allowExit: true });
    expect(z.object({ info: z.object({ status: z.string() }) }).parse(JSON.parse(status.stdout)).info.status).toBe(
      'deployed',
    );
    expect(
      (
        await kube.kubectl(['get', 'deployment', 'hi-blockpull-operator', '-n', ns, '-o', 'jsonpath={.spec.replicas}'])
      ).trim(),
    ).toBe('2');
    // The CRD already exists (crds/ of the chart): helm leaves it alone; it is the same CRD.
    expect((await kube.kubectl(['get', 'crd', 'blockpulls.blockpull.dev', '-o', 'name'])).trim()).toBe(
      'customresourcedefinition.apiextensions.k8s.io/blockpulls.blockpull.dev',
    );
    const uninstall = await run([helm, 'uninstall', 'hi', '--namespace', ns, '--wait', ...kc], {
      allowExit: true,
      timeoutMs: 120_000,
    });
    expect(uninstall.exitCode, uninstall.stderr).toBe(0);
    const gone = await kube.kubectlResult(['get', 'clusterrole', 'hi-blockpull-operator']);
    expect(gone.stderr).toMatch(/NotFound/);
    const policyGone = await kube.kubectlResult(['get', 'validatingadmissionpolicy', 'hi-blockpull-operator-exec']);
    expect(policyGone.stderr).toMatch(/NotFound/);
    await kube.kubectl(['delete', 'namespace', ns, '--wait=false']);
  });

  /** Read only on KubeVirt's optional kinds (checked while they are served, in the test above). */
  const deniedOptional: string[][] = [
    ['create', 'virtualmachinesnapshots.snapshot.kubevirt.io', '-n', 'vms'],
    ['patch', 'virtualmachinesnapshots.snapshot.kubevirt.io', '-n', 'vms'],
    ['delete', 'virtualmachinesnapshots.snapshot.kubevirt.io', '-n', 'vms'],
    ['create', 'virtualmachinebackups.backup.kubevirt.io', '-n', 'vms'],
    ['update', 'virtualmachinebackups.backup.kubevirt.io', '-n', 'vms'],
    ['delete', 'virtualmachinebackups.backup.kubevirt.io', '-n', 'vms'],
  ];
  it("the README's install block runs as written (helm and kubectl on PATH), and its release uninstalls", async () => {
    const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
    const block = /<!-- install \(test\/e2e[^>]*-->\s*```sh\n([\s\S]*?)```/.exec(readme)?.[1];
    if (!block) throw new Error('README.md has no install block');
    // `helm` and `kubectl` as the block calls them: the pinned helm and the e2e kubectl, by those names.
    const bin = await mkdtemp(join(tmpdir(), 'bp-readme-install-'));
    try {
      await symlink(helm, join(bin, 'helm'));
      await symlink(kube.kubectlPath, join(bin, 'kubectl'));
      const env = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, KUBECONFIG: kube.kubeconfigPath };
      const r = await run(['bash', '-e', '-c', block], { cwd: REPO_ROOT, env, allowExit: true, timeoutMs: 180_000 });
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/STATUS: deployed/);
      expect(r.stdout).toContain('blockpulls.blockpull.dev');
      expect(
        (
          await kube.kubectl([
            'get',
            'deployment',
            'blockpull-blockpull-operator',
            '-n',
            'blockpull-system',
            '-o',
            'jsonpath={.spec.template.spec.containers[0].image}',
          ])
        ).trim(),
      ).toMatch(/^REGISTRY\/blockpull-operator(:|@)/);
      const uninstall = await run(
        [
          helm,
          'uninstall',
          'blockpull',
          '--namespace',
          'blockpull-system',
          '--wait',
          '--kubeconfig',
          kube.kubeconfigPath,
        ],
        { allowExit: true, timeoutMs: 120_000 },
      );
      expect(uninstall.exitCode, uninstall.stderr).toBe(0);
      expect((await kube.kubectlResult(['get', 'clusterrole', 'blockpull-blockpull-operator'])).stderr).toMatch(
        /NotFound/,
      );
    } finally {
      await rm(bin, { recursive: true, force: true });
    }
  });

  it('the ServiceAccount CAN do what the operator needs', async () => {
    const allowed: string[][] = [
      ['list', 'blockpulls.blockpull.dev', '--all-namespaces'],
      ['watch', 'blockpulls.blockpull.dev', '-n', 'vms'],
      ['update', 'blockpulls.blockpull.dev', '-n', 'vms'],
      ['patch', 'blockpulls.blockpull.dev', '--subresource=status', '-n', 'vms'],
      ['update', 'blockpulls.blockpull.dev', '--subresource=finalizers', '-n', 'vms'],
      ['create', 'blockpulls.blockpull.dev', '-n', 'vms'],
      ['delete', 'blockpulls.blockpull.dev', '-n', 'vms'],
      ['watch', 'blockpullpolicies.blockpull.dev', '--all-namespaces'],
      ['patch', 'blockpullpolicies.blockpull.dev', '--subresource=status', '-n', 'vms'],
      ['watch', 'clusterblockpullpolicies.blockpull.dev'],
      ['patch', 'clusterblockpullpolicies.blockpull.dev', '--subresource=status'],
      ['watch', 'namespaces'],
      ['watch', 'virtualmachineinstances.kubevirt.io', '--all-namespaces'],
      ['get', 'virtualmachineinstances.kubevirt.io', '-n', 'vms'],
      ['watch', 'virtualmachineinstancemigrations.kubevirt.io', '--all-namespaces'],
      ['list', 'virtualmachineinstancemigrations.kubevirt.io', '-n', 'vms'],
      ['get', 'virtualmachineinstancemigrations.kubevirt.io', '-n', 'vms'],
      ['watch', 'virtualmachinesnapshots.snapshot.kubevirt.io', '--all-namespaces'],
      ['list', 'virtualmachinesnapshots.snapshot.kubevirt.io', '-n', 'vms'],
      ['get', 'virtualmachinesnapshots.snapshot.kubevirt.io', '-n', 'vms'],
      ['watch', 'virtualmachinebackups.backup.kubevirt.io', '--all-namespaces'],
      ['list', 'virtualmachinebackups.backup.kubevirt.io', '-n', 'vms'],
      ['get', 'virtualmachinebackups.backup.kubevirt.io', '-n', 'vms'],
      ['list', 'pods', '--all-namespaces'],
      ['create', 'pods', '--subresource=exec', '-n', 'vms'],
      ['get', 'pods', '--subresource=exec', '-n', 'vms'],
      ['create', 'events', '-n', 'vms'],
      ['create', 'events.events.k8s.io', '-n', 'vms'],
      ['get', 'leases.coordination.k8s.io', '-n', NS],
      ['create', 'leases.coordination.k8s.io', '-n', NS],
      ['update', 'leases.coordination.k8s.io', '-n', NS],
    ];
    // kubectl auth can-i resolves a resource by discovery: the optional KubeVirt kinds are served
    // for this check only (test-only CRDs; the operator itself works without them).
    await installCrds(kube, [VMSNAPSHOT_CRD_FILE, VMBACKUP_CRD_FILE]);
    try {
      for (const a of allowed) expect(await canI(...a), `can-i ${a.join(' ')}`).toBe(true);
      for (const a of deniedOptional) expect(await canI(...a), `can-i ${a.join(' ')}`).toBe(false);
    } finally {
      await kube.kubectl([
        'delete',
        '-f',
        VMSNAPSHOT_CRD_FILE,
        '-f',
        VMBACKUP_CRD_FILE,
        '--ignore-not-found',
        '--wait=true',
      ]);
    }
    // And for real: list BlockPulls in all namespaces with the token.
    const list = await asOperator(['get', 'blockpulls.blockpull.dev', '--all-namespaces', '-o', 'name']);
    expect(list.stderr).toBe('');
    expect(list.exitCode).toBe(0);
  });

  it('the ServiceAccount CANNOT do what it must not', async () => {
    const denied: string[][] = [
      ['delete', 'pods', '-n', 'vms'],
      ['create', 'pods', '-n', 'vms'],
      ['get', 'secrets', '-n', NS],
      ['list', 'secrets', '--all-namespaces'],
      ['get', 'configmaps', '-n', 'vms'],
      ['create', 'blockpullpolicies.blockpull.dev', '-n', 'vms'],
      ['update', 'blockpullpolicies.blockpull.dev', '-n', 'vms'],
      ['delete', 'clusterblockpullpolicies.blockpull.dev'],
      ['update', 'namespaces'],
      ['update', 'virtualmachineinstances.kubevirt.io', '-n', 'vms'],
      ['delete', 'virtualmachineinstances.kubevirt.io', '-n', 'vms'],
      ['create', 'virtualmachineinstancemigrations.kubevirt.io', '-n', 'vms'],
      ['update', 'virtualmachineinstancemigrations.kubevirt.io', '-n', 'vms'],
      ['patch', 'virtualmachineinstancemigrations.kubevirt.io', '-n', 'vms'],
      ['delete', 'virtualmachineinstancemigrations.kubevirt.io', '-n', 'vms'],
      ['create', 'leases.coordination.k8s.io', '-n', 'default'],
      ['update', 'leases.coordination.k8s.io', '-n', 'kube-system'],
      ['delete', 'leases.coordination.k8s.io', '-n', NS],
      ['create', 'pods', '--subresource=attach', '-n', 'vms'],
      ['create', 'pods', '--subresource=portforward', '-n', 'vms'],
      ['create', 'serviceaccounts', '--subresource=token', '-n', NS],
      ['*', '*'],
    ];
    for (const a of denied) expect(await canI(...a), `can-i ${a.join(' ')}`).toBe(false);
  });

  it('real requests with the token: secrets and pod deletion are Forbidden, leases only in its namespace', async () => {
    const secrets = await asOperator(['get', 'secrets', '-n', NS]);
    expect(secrets.exitCode).not.toBe(0);
    expect(secrets.stderr).toMatch(/forbidden/i);
    const del = await asOperator(['delete', 'pod', 'any-pod', '-n', 'default']);
    expect(del.exitCode).not.toBe(0);
    expect(del.stderr).toMatch(/forbidden/i);
    const lease = (ns: string) =>
      JSON.stringify({
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: 'ship-test-lease', namespace: ns },
        spec: { holderIdentity: 'ship-test' },
      });
    await kube.kubectlResult(['delete', 'lease', 'ship-test-lease', '-n', NS, '--ignore-not-found']);
    const own = await asOperator(['create', '-f', '-'], lease(NS));
    expect(own.stderr).toBe('');
    expect(own.exitCode).toBe(0);
    const foreign = await asOperator(['create', '-f', '-'], lease('default'));
    expect(foreign.exitCode).not.toBe(0);
    expect(foreign.stderr).toMatch(/forbidden/i);
    await kube.kubectl(['delete', 'lease', 'ship-test-lease', '-n', NS]);
  });

  describe('the exec policy, with the chart ServiceAccount token', () => {
    const POD = 'ship-exec-target';
    const DOMAIN = `${NS}_vm`;
    beforeAll(async () => {
      const pod = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: POD, namespace: NS },
        spec: {
          serviceAccountName: SA,
          automountServiceAccountToken: false,
          containers: [
            { name: 'compute', image: 'example.invalid/none:1' },
            { name: 'sidecar', image: 'example.invalid/none:1' },
          ],
        },
      };
      await kube.kubectl(['apply', '-f', '-'], { input: JSON.stringify(pod) });
    });
    afterAll(async () => {
      await kube.kubectl(['delete', 'pod', POD, '-n', NS, '--wait=false']);
    });
    // The pod has no node: a request the policy admits fails after admission, with this.
    const NO_HOST = `pod ${POD} does not have a host assigned`;

    it.each(allowedExecCases(DOMAIN).map((c) => [c.what, c] as const))(
      'admits what the operator runs: %s',
      async (_what, c) => {
        const r = await probeExec(saKubeconfig, NS, POD, c);
        expect(r.message).not.toContain('ValidatingAdmissionPolicy');
        expect([r.status, r.message]).toEqual([400, NO_HOST]);
      },
    );

    it.each(deniedExecCases(DOMAIN).map((c) => [c.what, c] as const))(
      'refuses %s with the policy message',
      async (_what, c) => {
        const r = await probeExec(saKubeconfig, NS, POD, c);
        expect(isPolicyDenial(r, c.message), `${r.status} ${r.message}`).toBe(true);
      },
    );

    it('kubectl exec as the operator: a bare command is refused with the message; the wrapped virsh passes admission; attach is Forbidden', async () => {
      const bare = await asOperator(['exec', '-n', NS, POD, '-c', 'compute', '--', 'virsh', 'version']);
      expect(bare.exitCode).not.toBe(0);
      expect(bare.stderr).toContain(EXEC_POLICY_MESSAGES.wrapper);
      const destroy = await asOperator([
        'exec',
        '-n',
        NS,
        POD,
        '-c',
        'compute',
        '--',
        ...KILL_ON_DISCONNECT_PREFIX,
        'virsh',
        '-q',
        '-c',
        SESSION_URI,
        'destroy',
        DOMAIN,
      ]);
      expect(destroy.exitCode).not.toBe(0);
      expect(destroy.stderr).toContain(EXEC_POLICY_MESSAGES.command);
      const ok = await asOperator([
        'exec',
        '-n',
        NS,
        POD,
        '-c',
        'compute',
        '--',
        ...KILL_ON_DISCONNECT_PREFIX,
        'virsh',
        '-q',
        '-c',
        SESSION_URI,
        'dumpxml',
        '--domain',
        DOMAIN,
      ]);
      expect(ok.exitCode).not.toBe(0);
      expect(ok.stderr).not.toMatch(/forbidden|ValidatingAdmissionPolicy/i);
      expect(ok.stderr).toContain(NO_HOST);
      const attach = await asOperator(['attach', '-n', NS, POD, '-c', 'compute']);
      expect(attach.exitCode).not.toBe(0);
      expect(attach.stderr).toMatch(/forbidden/i);
    });

    it('other users are not affected: an admin runs a bare sh in another container', async () => {
      const admin = await kube.kubectlResult(['exec', '-n', NS, POD, '-c', 'sidecar', '--', 'sh']);
      expect(admin.exitCode).not.toBe(0);
      expect(admin.stderr).not.toMatch(/forbidden|ValidatingAdmissionPolicy/i);
      expect(admin.stderr).toContain(NO_HOST);
    });
  });
});
