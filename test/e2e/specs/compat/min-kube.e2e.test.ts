// The oldest Kubernetes the project declares, run for real: a kube-apiserver and kubectl of that
// release (COMPAT_K8S_VERSION, or BLOCKPULL_COMPAT_K8S_VERSION to try another), built from the Go
// module proxy and cached like the pinned ones, on a control plane of its own. On it: every CRD of
// crds/ is accepted (an API server refuses a CRD whose CEL rule does not compile in its CEL
// environment, so a function that release lacks fails here), a sample of the CEL rules refuse with
// their messages through that kubectl, the chart installs with helm as a user installs it (RBAC,
// Deployment, and the exec ValidatingAdmissionPolicy exactly where the server serves its v1 API), the
// chart's ServiceAccount token is allowed and refused what the chart says, pods/exec is admitted or
// refused at admission as the chart promises for that release, and the operator itself starts there
// and writes a BlockPull's status. No node runs here: exec is checked at admission (the pod has no
// node), not run in a container.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ensureApiserverBinaries, type ApiserverBinaries } from '../../cluster/binaries.ts';
import { startControlPlane, type ControlPlane } from '../../cluster/control-plane.ts';
import { installCrds, operatorCrdFiles, VMI_CRD_FILE, VMIM_CRD_FILE } from '../../cluster/crds.ts';
import { canI as canIAs, createServiceAccountKubeconfig } from '../../cluster/service-account.ts';
import { compatK8sVersion } from '../../cluster/versions.ts';
import { CHART_DIR } from '../../ship/chart.ts';
import { ensureHelm } from '../../ship/helm.ts';
import { allowedExecCases, deniedExecCases, isPolicyDenial, probeExec } from '../../ship/exec-policy.ts';
import {
  blockPullManifest,
  ensureNamespace,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { run } from '../../support/process.ts';
import { waitFor } from '../../support/wait.ts';

const VERSION = compatK8sVersion();
const MINOR = Number(/^v1\.(\d+)\./.exec(VERSION)?.[1]);
const NS = 'blockpull-system';
const RELEASE = 'bp';
const SA = 'bp-blockpull-operator';
const VMS = 'compat-vms';

const log = (m: string): void => {
  process.stderr.write(`[compat ${VERSION}] ${m}\n`);
};

let bins: ApiserverBinaries;
let cp: ControlPlane<ApiserverBinaries>;
let stateDir: string;
let helm: string;
let registryDir: string;
let operator: OperatorProcess | undefined;

beforeAll(async () => {
  const t0 = Date.now();
  bins = await ensureApiserverBinaries(VERSION, { log });
  log(`kube-apiserver and kubectl ${VERSION} ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  helm = await ensureHelm({ log });
  stateDir = await mkdtemp(path.join(os.tmpdir(), 'bp-compat-'));
  registryDir = await mkdtemp(path.join(os.tmpdir(), 'bp-compat-launchers-'));
  cp = await startControlPlane({ stateDir, binaries: bins, log });
}, 3_600_000);

afterAll(async () => {
  await operator?.stop();
  await cp?.stop();
  for (const dir of [stateDir, registryDir]) if (dir) await rm(dir, { recursive: true, force: true });
});

const VersionInfo = z.object({
  clientVersion: z.object({ gitVersion: z.string() }),
  serverVersion: z.object({ gitVersion: z.string() }),
});

const ResourceList = z.object({ resources: z.array(z.object({ name: z.string(), kind: z.string() })) });

describe(`Kubernetes ${VERSION}`, () => {
  it('the API server and kubectl are that release', async () => {
    const v = VersionInfo.parse(JSON.parse(await cp.kubectl(['version', '-o', 'json'])));
    expect([v.serverVersion.gitVersion, v.clientVersion.gitVersion]).toEqual([VERSION, VERSION]);
  });

  it('accepts every CRD of crds/, each on its own (its CEL rules compile there), and serves it', async () => {
    const files = await operatorCrdFiles();
    expect(files.length).toBeGreaterThan(0);
    for (const file of files) {
      // One file at a time: a refusal names the file, and the API server's message names the rule.
      const r = await cp.kubectlResult(['apply', '--server-side', '--field-manager=compat-e2e', '-f', file]);
      expect(r.exitCode, `${path.basename(file)} refused by kube-apiserver ${VERSION}:\n${r.stderr}`).toBe(0);
    }
    await installCrds(cp, files);
    // The operator's watches need the KubeVirt kinds: the same test-only CRDs as the other specs.
    await installCrds(cp, [VMI_CRD_FILE, VMIM_CRD_FILE]);
    expect((await cp.kubectl(['get', 'crd', 'blockpulls.blockpull.dev', '-o', 'name'])).trim()).toBe(
      'customresourcedefinition.apiextensions.k8s.io/blockpulls.blockpull.dev',
    );
  });

  it('refuses a CRD whose rule does not compile there (what the check above would meet)', async () => {
    const crd = {
      apiVersion: 'apiextensions.k8s.io/v1',
      kind: 'CustomResourceDefinition',
      metadata: { name: 'probes.compat.blockpull.dev' },
      spec: {
        group: 'compat.blockpull.dev',
        scope: 'Namespaced',
        names: { plural: 'probes', singular: 'probe', kind: 'Probe' },
        versions: [
          {
            name: 'v1',
            served: true,
            storage: true,
            schema: {
              openAPIV3Schema: {
                type: 'object',
                properties: {
                  spec: {
                    type: 'string',
                    maxLength: 10,
                    'x-kubernetes-validations': [{ rule: 'self.noSuchFunction()', message: 'never' }],
                  },
                },
              },
            },
          },
        ],
      },
    };
    const r = await cp.kubectlResult(['apply', '--server-side', '--field-manager=compat-e2e', '-f', '-'], {
      input: JSON.stringify(crd),
    });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/compilation failed/);
  });

  describe('the CRD CEL rules, through kubectl', () => {
    const create = (name: string, spec: Record<string, unknown>) =>
      cp.kubectlResult(['create', '-f', '-'], {
        input: blockPullManifest({ namespace: VMS, name, vmiName: 'vm1', disk: 'd', spec }),
      });
    const patch = (name: string, spec: Record<string, unknown>) =>
      cp.kubectlResult(['patch', 'blockpull', name, '-n', VMS, '--type=merge', '-p', JSON.stringify({ spec })]);

    beforeAll(async () => {
      await ensureNamespace(cp, VMS);
    });

    it.each([
      ['an integer', { bandwidth: 1048576 }],
      ['a binary Quantity', { bandwidth: '50Mi' }],
      ['a decimal fraction', { bandwidth: '1.5G' }],
      ['the 1024Ti bound itself', { bandwidth: '1024Ti' }],
      ['a base by position', { base: { position: 1 } }],
    ])('accepts %s', async (what, spec) => {
      const name = `ok-${what.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}`.replace(/-$/, '');
      const r = await create(name, spec);
      expect(r.exitCode, r.stderr).toBe(0);
    });

    it.each([
      [
        'a base with both position and path',
        { base: { position: 1, path: '/x' } },
        'base needs exactly one of position or path',
      ],
      [
        'a bandwidth that is no Quantity',
        { bandwidth: '5 MB' },
        'bandwidth must be a non-negative integer or a Quantity',
      ],
      ['a negative bandwidth', { bandwidth: -5 }, 'bandwidth must be a non-negative integer or a Quantity'],
      // quantity() and compareTo() evaluated by this server's CEL library:
      ['a Quantity above 1024Ti', { bandwidth: '1025Ti' }, 'bandwidth must be at most 1024Ti'],
      ['an integer above 1024Ti', { bandwidth: 1125899906842625 }, 'bandwidth must be at most 1024Ti'],
    ])('refuses %s with its message', async (_what, spec, message) => {
      const r = await create('refused', spec);
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toContain(message);
    });

    it('transition rules: vmiName, base and dryRun are immutable; bandwidth may change', async () => {
      expect((await create('immutable', { base: { position: 1 } })).exitCode).toBe(0);
      for (const [spec, message] of [
        [{ vmiName: 'other' }, 'vmiName is immutable'],
        [{ base: { position: 2 } }, 'base is immutable'],
        [{ base: null }, 'base is immutable (cannot be added or removed after creation)'],
        [{ dryRun: true }, 'dryRun is immutable'],
      ] as const) {
        const r = await patch('immutable', spec);
        expect(r.exitCode, JSON.stringify(spec)).not.toBe(0);
        expect(r.stderr).toContain(message);
      }
      const ok = await patch('immutable', { bandwidth: '10Mi' });
      expect(ok.exitCode, ok.stderr).toBe(0);
    });
  });

  describe('the chart, installed with helm', () => {
    let saKubeconfig: string | undefined;
    let servesPolicy: boolean;
    // Never the admin's credentials instead: without the token (helm install failed) there is nothing to check.
    const token = (): string => {
      if (saKubeconfig === undefined) throw new Error('no token of the chart ServiceAccount: helm install failed');
      return saKubeconfig;
    };
    const canI = (...args: string[]): Promise<boolean> => canIAs(cp, token(), args);

    beforeAll(async () => {
      // Discovery, as helm's capabilities read it: the kinds of admissionregistration.k8s.io/v1.
      const list = ResourceList.parse(
        JSON.parse(await cp.kubectl(['get', '--raw', '/apis/admissionregistration.k8s.io/v1'])),
      );
      servesPolicy = list.resources.some((r) => r.kind === 'ValidatingAdmissionPolicy');
      log(`admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy served: ${servesPolicy}`);
    });

    it('the v1 ValidatingAdmissionPolicy is served from 1.30 on, as the docs say', () => {
      expect(servesPolicy).toBe(MINOR >= 30);
    });

    it('helm install deploys; RBAC and the Deployment exist; the exec policy exactly where it is served', async () => {
      const install = await run(
        [
          helm,
          'upgrade',
          '--install',
          RELEASE,
          CHART_DIR,
          '--namespace',
          NS,
          '--create-namespace',
          '--kubeconfig',
          cp.kubeconfigPath,
        ],
        { allowExit: true, timeoutMs: 180_000 },
      );
      // helm checks the chart's kubeVersion against the server first: a refusal would be here.
      expect(install.exitCode, install.stderr).toBe(0);
      expect(install.stdout).toMatch(/STATUS: deployed/);
      const names = [
        ['clusterrole', SA],
        ['clusterrolebinding', SA],
        ['role', `${SA}-leader-election`, '-n', NS],
        ['serviceaccount', SA, '-n', NS],
        ['deployment', SA, '-n', NS],
        ['service', `${SA}-metrics`, '-n', NS],
        ['poddisruptionbudget', SA, '-n', NS],
      ];
      for (const [kind, name, ...rest] of names) {
        const r = await cp.kubectlResult(['get', kind ?? '', name ?? '', ...rest, '-o', 'name']);
        expect(r.exitCode, `${kind} ${name}: ${r.stderr}`).toBe(0);
      }
      expect((await cp.kubectl(['get', 'deployment', SA, '-n', NS, '-o', 'jsonpath={.spec.replicas}'])).trim()).toBe(
        '2',
      );
      const policy = await cp.kubectlResult(['get', 'validatingadmissionpolicy', `${SA}-exec`, '-o', 'name']);
      const binding = await cp.kubectlResult(['get', 'validatingadmissionpolicybinding', `${SA}-exec`, '-o', 'name']);
      if (servesPolicy) {
        expect(policy.exitCode, policy.stderr).toBe(0);
        expect(binding.exitCode, binding.stderr).toBe(0);
      } else {
        // Not served at v1: the kind is unknown to kubectl (or served only at v1beta1 behind a gate, empty).
        expect(policy.exitCode).not.toBe(0);
        expect(binding.exitCode).not.toBe(0);
      }
      saKubeconfig = await createServiceAccountKubeconfig(cp, NS, SA);
    });

    it("the chart's ServiceAccount can do what the operator needs, and not what it must not", async () => {
      const allowed: string[][] = [
        ['list', 'blockpulls.blockpull.dev', '--all-namespaces'],
        ['patch', 'blockpulls.blockpull.dev', '--subresource=status', '-n', VMS],
        ['update', 'blockpulls.blockpull.dev', '--subresource=finalizers', '-n', VMS],
        ['create', 'blockpulls.blockpull.dev', '-n', VMS],
        ['watch', 'clusterblockpullpolicies.blockpull.dev'],
        ['watch', 'virtualmachineinstances.kubevirt.io', '--all-namespaces'],
        ['create', 'pods', '--subresource=exec', '-n', VMS],
        ['create', 'events.events.k8s.io', '-n', VMS],
        ['update', 'leases.coordination.k8s.io', '-n', NS],
      ];
      const denied: string[][] = [
        ['delete', 'pods', '-n', VMS],
        ['get', 'secrets', '-n', NS],
        ['delete', 'blockpullpolicies.blockpull.dev', '-n', VMS],
        ['update', 'virtualmachineinstances.kubevirt.io', '-n', VMS],
        ['create', 'leases.coordination.k8s.io', '-n', 'default'],
        ['create', 'pods', '--subresource=attach', '-n', VMS],
      ];
      for (const a of allowed) expect(await canI(...a), `can-i ${a.join(' ')}`).toBe(true);
      for (const a of denied) expect(await canI(...a), `can-i ${a.join(' ')}`).toBe(false);
    });

    describe('pods/exec with the token, at admission (the pod has no node)', () => {
      const POD = 'compat-exec-target';
      const DOMAIN = `${NS}_vm`;
      const NO_HOST = `pod ${POD} does not have a host assigned`;
      beforeAll(async () => {
        const pod = {
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: { name: POD, namespace: NS },
          spec: {
            serviceAccountName: SA,
            automountServiceAccountToken: false,
            containers: [{ name: 'compute', image: 'example.invalid/none:1' }],
          },
        };
        await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(pod) });
      });

      it("admits every command the operator runs (it reaches the pod's missing node)", async () => {
        for (const c of allowedExecCases(DOMAIN)) {
          const r = await probeExec(token(), NS, POD, c);
          expect([r.status, r.message], c.what).toEqual([400, NO_HOST]);
        }
      });

      it('refuses other commands with the policy message where the policy is served; admits them where not (RBAC only)', async () => {
        for (const c of deniedExecCases(DOMAIN)) {
          const r = await probeExec(token(), NS, POD, c);
          if (servesPolicy) {
            expect(isPolicyDenial(r, c.message), `${c.what}: ${r.status} ${r.message}`).toBe(true);
          } else {
            // Below 1.30 the chart cannot guard exec (docs/operations.md): RBAC alone decides, and
            // admits them; they then fail for the pod's missing node or the request's own fault.
            expect(r.status, `${c.what}: ${r.message}`).not.toBe(403);
            expect(r.message).not.toContain('ValidatingAdmissionPolicy');
          }
        }
        if (!servesPolicy) {
          const destroy = deniedExecCases(DOMAIN).find((c) => c.what === 'virsh destroy');
          if (!destroy) throw new Error('exec-policy.ts has no "virsh destroy" case');
          expect((await probeExec(token(), NS, POD, destroy)).message).toBe(NO_HOST);
        }
      });
    });
  });

  it('the operator starts there (leader Lease, informers synced) and writes a BlockPull status', async () => {
    const kubeconfig = await operatorServiceAccount(cp);
    operator = await startOperator({ kubeconfig, registryDir, name: `compat-${VERSION}` });
    await cp.kubectl(['apply', '-f', '-'], {
      input: blockPullManifest({ namespace: VMS, name: 'no-vmi', vmiName: 'nope', disk: 'd' }),
    });
    const bp = await waitForPhase(cp, VMS, 'no-vmi', ['Pending'], 60_000);
    expect(bp.status?.reason).toBe('VMINotFound');
    // The Event of the new reason, through events.k8s.io/v1 as the operator writes it.
    const reasons = await waitFor('an Event on BlockPull no-vmi', 30_000, async () => {
      const out = await cp.kubectl([
        'get',
        'events',
        '-n',
        VMS,
        '--field-selector',
        'involvedObject.name=no-vmi',
        '-o',
        'jsonpath={.items[*].reason}',
      ]);
      return out.trim() === '' ? undefined : out;
    });
    expect(reasons).toContain('VMINotFound');
  });
});
