/**
 * The local control plane is a real Kubernetes API server: CRD structural schemas and CEL rules are
 * enforced with the server's own messages, the status subresource ignores spec, RBAC denies (403) until
 * a Role is bound (200), and start/stop/CLI leave no process or port behind.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { inject, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { z } from 'zod';
import { ensureBinaries } from '../../cluster/binaries.ts';
import { clusterClient } from '../../cluster/client.ts';
import { readState, startControlPlane, stopRecorded } from '../../cluster/control-plane.ts';
import { listeningPorts } from '../../support/ports.ts';
import { processesMentioning, run as runCommand } from '../../support/process.ts';
import { createServiceAccountKubeconfig } from '../../cluster/service-account.ts';
import { pinnedVersions, resolveVersions } from '../../cluster/versions.ts';

const cluster = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
const run = `${Date.now().toString(36)}`;

const WIDGET_CRD = {
  apiVersion: 'apiextensions.k8s.io/v1',
  kind: 'CustomResourceDefinition',
  metadata: { name: 'widgets.e2e.blockpull.dev' },
  spec: {
    group: 'e2e.blockpull.dev',
    scope: 'Namespaced',
    names: { kind: 'Widget', plural: 'widgets', singular: 'widget', listKind: 'WidgetList' },
    versions: [
      {
        name: 'v1',
        served: true,
        storage: true,
        subresources: { status: {} },
        schema: {
          openAPIV3Schema: {
            type: 'object',
            properties: {
              spec: {
                type: 'object',
                required: ['size'],
                properties: { size: { type: 'integer', minimum: 1 }, color: { type: 'string' } },
                'x-kubernetes-validations': [
                  { rule: "self.color != 'forbidden'", message: 'color must not be forbidden' },
                ],
              },
              status: { type: 'object', properties: { phase: { type: 'string' }, observedSize: { type: 'integer' } } },
            },
          },
        },
      },
    ],
  },
};

const widget = z.object({
  metadata: z.object({ generation: z.number(), resourceVersion: z.string() }),
  spec: z.object({ size: z.number(), color: z.string().optional() }),
  status: z.object({ phase: z.string().optional(), observedSize: z.number().optional() }).optional(),
});

function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** GET with a bearer token straight to the API server, to see the real HTTP status. */
async function getWithToken(kubeconfigPath: string, urlPath: string): Promise<{ status: number; body: string }> {
  const kc = z
    .object({
      clusters: z.array(
        z.object({ cluster: z.object({ server: z.string(), 'certificate-authority-data': z.string() }) }),
      ),
      users: z.array(z.object({ user: z.object({ token: z.string() }) })),
    })
    .parse(parse(await readFile(kubeconfigPath, 'utf8')));
  const c = kc.clusters[0]?.cluster;
  const token = kc.users[0]?.user.token;
  if (!c || !token) throw new Error('incomplete service-account kubeconfig');
  return new Promise((resolve, reject) => {
    https
      .get(
        `${c.server}${urlPath}`,
        { ca: Buffer.from(c['certificate-authority-data'], 'base64'), headers: { Authorization: `Bearer ${token}` } },
        (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (d: string) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      )
      .on('error', reject);
  });
}

describe('control plane: API semantics', () => {
  it('runs the pinned Kubernetes version with RBAC authorization', async () => {
    const version = z
      .object({ serverVersion: z.object({ gitVersion: z.string() }) })
      .parse(JSON.parse(await cluster.kubectl(['version', '-o', 'json'])));
    if (!process.env['BLOCKPULL_KUBECONFIG']) expect(version.serverVersion.gitVersion).toBe(resolveVersions().k8s);
    const apis = await cluster.kubectl(['api-versions']);
    expect(apis).toContain('rbac.authorization.k8s.io/v1');
  });

  it('serves the VMI CRD: accepts a real VMI manifest (unknown fields kept), rejects wrong types', async () => {
    const ns = `vmi-${run}`;
    await cluster.kubectl(['create', 'namespace', ns]);
    const vmi = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'testvm', namespace: ns },
      spec: {
        domain: {
          resources: { requests: { memory: '128Mi' } },
          devices: { disks: [{ name: 'rootdisk', disk: { bus: 'virtio' } }] },
        },
        volumes: [{ name: 'rootdisk', persistentVolumeClaim: { claimName: 'root-pvc' } }],
      },
      status: {
        phase: 'Running',
        nodeName: 'node-a',
        runtimeUser: 107,
        activePods: { 'uid-1': 'node-a' },
        volumeStatus: [{ name: 'rootdisk', target: 'vda' }],
      },
    };
    await cluster.kubectl(['apply', '-f', '-'], { input: stringify(vmi) });
    const got = z
      .object({
        spec: z.object({ domain: z.object({ resources: z.object({ requests: z.object({ memory: z.string() }) }) }) }),
        status: z.object({ runtimeUser: z.number(), nodeName: z.string() }),
      })
      .parse(JSON.parse(await cluster.kubectl(['get', 'vmi', 'testvm', '-n', ns, '-o', 'json'])));
    expect(got.spec.domain.resources.requests.memory).toBe('128Mi');
    // No status subresource (as upstream): status is written with the object.
    expect(got.status).toMatchObject({ runtimeUser: 107, nodeName: 'node-a' });
    const bad = { ...vmi, metadata: { name: 'badvm', namespace: ns }, status: { runtimeUser: 'qemu' } };
    const r = await cluster.kubectlResult(['create', '-f', '-'], { input: stringify(bad) });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toContain(
      'status.runtimeUser: Invalid value: "string": status.runtimeUser in body must be of type integer: "string"',
    );
    await cluster.kubectl(['delete', 'namespace', ns, '--wait=false']);
  });

  it('applies a CRD, writes status through the status subresource, and ignores spec sent there', async () => {
    await cluster.kubectl(['apply', '--server-side', '-f', '-'], { input: stringify(WIDGET_CRD) });
    await cluster.kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/widgets.e2e.blockpull.dev']);
    const ns = `crd-${run}`;
    await cluster.kubectl(['create', 'namespace', ns]);
    const obj = {
      apiVersion: 'e2e.blockpull.dev/v1',
      kind: 'Widget',
      metadata: { name: 'w1', namespace: ns },
      spec: { size: 3, color: 'blue' },
    };
    // Discovery of a just-established CRD may lag a moment in kubectl's cache: retry briefly.
    let created = await cluster.kubectlResult(['create', '-f', '-'], { input: stringify(obj) });
    for (
      let i = 0;
      created.exitCode !== 0 &&
      /the server doesn't have a resource type|no matches for kind/.test(created.stderr) &&
      i < 20;
      i++
    ) {
      await sleep(250);
      created = await cluster.kubectlResult(['create', '-f', '-'], { input: stringify(obj) });
    }
    expect(created.stderr).toBe('');
    const before = widget.parse(JSON.parse(await cluster.kubectl(['get', 'widget', 'w1', '-n', ns, '-o', 'json'])));
    expect(before.status).toBeUndefined();

    // A status write that also tries to change spec: status is stored, spec is not.
    await cluster.kubectl([
      'patch',
      'widget',
      'w1',
      '-n',
      ns,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { size: 99, color: 'red' }, status: { phase: 'Ready', observedSize: 3 } }),
    ]);
    const afterStatus = widget.parse(
      JSON.parse(await cluster.kubectl(['get', 'widget', 'w1', '-n', ns, '-o', 'json'])),
    );
    expect(afterStatus.status).toEqual({ phase: 'Ready', observedSize: 3 });
    expect(afterStatus.spec).toEqual({ size: 3, color: 'blue' });
    expect(afterStatus.metadata.generation).toBe(before.metadata.generation);

    // And the reverse: a write to the main resource ignores status.
    await cluster.kubectl([
      'patch',
      'widget',
      'w1',
      '-n',
      ns,
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { size: 4 }, status: { phase: 'Hacked' } }),
    ]);
    const afterSpec = widget.parse(JSON.parse(await cluster.kubectl(['get', 'widget', 'w1', '-n', ns, '-o', 'json'])));
    expect(afterSpec.spec.size).toBe(4);
    expect(afterSpec.status?.phase).toBe('Ready');
    expect(afterSpec.metadata.generation).toBe(before.metadata.generation + 1);

    // Optimistic concurrency: an update with a stale resourceVersion is a 409 Conflict.
    const stale = {
      ...obj,
      metadata: { ...obj.metadata, resourceVersion: before.metadata.resourceVersion },
      spec: { size: 5 },
    };
    const conflict = await cluster.kubectlResult(['replace', '-f', '-'], { input: stringify(stale) });
    expect(conflict.exitCode).not.toBe(0);
    expect(conflict.stderr).toContain(
      'the object has been modified; please apply your changes to the latest version and try again',
    );

    // Structurally invalid objects are rejected with the API server's own messages (schema and CEL).
    const wrongType = await cluster.kubectlResult(['create', '-f', '-'], {
      input: stringify({ ...obj, metadata: { name: 'w2', namespace: ns }, spec: { size: 'big' } }),
    });
    expect(wrongType.exitCode).not.toBe(0);
    expect(wrongType.stderr).toContain(
      'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"',
    );
    const tooSmall = await cluster.kubectlResult(['create', '-f', '-'], {
      input: stringify({ ...obj, metadata: { name: 'w3', namespace: ns }, spec: { size: 0 } }),
    });
    expect(tooSmall.stderr).toContain(
      'spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1',
    );
    const missing = await cluster.kubectlResult(['create', '-f', '-'], {
      input: stringify({ ...obj, metadata: { name: 'w4', namespace: ns }, spec: { color: 'x' } }),
    });
    expect(missing.stderr).toContain('spec.size: Required value');
    const cel = await cluster.kubectlResult(['create', '-f', '-'], {
      input: stringify({ ...obj, metadata: { name: 'w5', namespace: ns }, spec: { size: 1, color: 'forbidden' } }),
    });
    expect(cel.stderr).toContain('color must not be forbidden');
    const names = (await cluster.kubectl(['get', 'widgets', '-n', ns, '-o', 'name'])).trim().split('\n');
    expect(names).toEqual(['widget.e2e.blockpull.dev/w1']);

    await cluster.kubectl(['delete', 'namespace', ns, '--wait=false']);
    await cluster.kubectl(['delete', 'crd', 'widgets.e2e.blockpull.dev', '--wait=false']);
  });

  it('enforces RBAC: a ServiceAccount gets 403, then 200 once a Role is bound', async () => {
    const ns = `rbac-${run}`;
    const kubeconfig = await createServiceAccountKubeconfig(cluster, ns, 'reader');
    await cluster.kubectl(['create', 'configmap', 'cm1', '-n', ns, '--from-literal=k=v']);
    const url = `/api/v1/namespaces/${ns}/configmaps`;

    const denied = await getWithToken(kubeconfig, url);
    expect(denied.status).toBe(403);
    expect(denied.body).toContain(
      `User \\"system:serviceaccount:${ns}:reader\\" cannot list resource \\"configmaps\\"`,
    );
    const viaKubectl = await cluster.kubectlResult(['get', 'configmaps', '-n', ns], { kubeconfig });
    expect(viaKubectl.exitCode).not.toBe(0);
    expect(viaKubectl.stderr).toContain('Error from server (Forbidden)');

    await cluster.kubectl(['create', 'role', 'cm-reader', '-n', ns, '--verb=get,list', '--resource=configmaps']);
    await cluster.kubectl([
      'create',
      'rolebinding',
      'cm-reader',
      '-n',
      ns,
      '--role=cm-reader',
      `--serviceaccount=${ns}:reader`,
    ]);
    // The RBAC authorizer reads Roles through an informer: allow it a moment.
    let allowed = await getWithToken(kubeconfig, url);
    for (let i = 0; allowed.status !== 200 && i < 50; i++) {
      await sleep(200);
      allowed = await getWithToken(kubeconfig, url);
    }
    expect(allowed.status).toBe(200);
    expect(JSON.parse(allowed.body)).toMatchObject({ kind: 'ConfigMapList', items: [{ metadata: { name: 'cm1' } }] });
    expect((await cluster.kubectl(['get', 'configmaps', 'cm1', '-n', ns, '-o', 'name'], { kubeconfig })).trim()).toBe(
      'configmap/cm1',
    );
    // Still scoped: no access to Secrets, nor to another namespace.
    expect((await getWithToken(kubeconfig, `/api/v1/namespaces/${ns}/secrets`)).status).toBe(403);
    expect((await getWithToken(kubeconfig, '/api/v1/namespaces/default/configmaps')).status).toBe(403);
    await cluster.kubectl(['delete', 'namespace', ns, '--wait=false']);
  });
});

describe('control plane: lifecycle', () => {
  it('stops with no process and no port left; a stale run is cleaned up by the next start', async () => {
    const binaries = await ensureBinaries();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'blockpull-cp-'));
    try {
      // A detached run whose owner "crashed" (never calls stop), like a killed test process.
      const t0 = Date.now();
      const crashed = await startControlPlane({ stateDir: dir, binaries, detached: true, log: () => undefined });
      const startSeconds = (Date.now() - t0) / 1000;
      process.stderr.write(`[cluster.e2e] start with cached binaries: ${startSeconds.toFixed(1)} s\n`);
      expect(startSeconds).toBeLessThan(30);
      const oldPids = crashed.processes.map((p) => p.pid);
      expect(oldPids.every(pidAlive)).toBe(true);
      expect((await crashed.kubectl(['get', 'namespace', 'default', '-o', 'name'])).trim()).toBe('namespace/default');

      // The next start in the same state dir stops the stale processes (verified as ours) first.
      const cp = await startControlPlane({ stateDir: dir, binaries, log: () => undefined });
      expect(oldPids.some(pidAlive)).toBe(false);
      const ports = Object.values(cp.ports);
      const pids = cp.processes.map((p) => p.pid);
      expect(pids.every(pidAlive)).toBe(true);
      expect(processesMentioning(dir).sort()).toEqual([...pids].sort());
      expect(ports.every((p) => listeningPorts().has(p))).toBe(true);

      await cp.stop();
      expect(pids.some(pidAlive)).toBe(false);
      expect(processesMentioning(dir)).toEqual([]);
      expect(ports.some((p) => listeningPorts().has(p))).toBe(false);
      expect(existsSync(path.join(dir, 'state.json'))).toBe(false);
    } finally {
      await stopRecorded(dir); // if an assertion failed midway: leave nothing running
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('npm run cluster -- up | status | down', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'blockpull-cli-'));
    const cli = path.join(import.meta.dirname, '..', '..', 'cluster', 'cli.ts');
    const node = process.execPath;
    const runCli = async (...args: string[]): Promise<{ code: number; stdout: string }> => {
      const r = await runCommand([node, cli, ...args, '--state-dir', dir], { timeoutMs: 600_000, allowExit: true });
      return { code: r.exitCode, stdout: r.stdout };
    };
    try {
      const up = await runCli('up');
      expect(up.code).toBe(0);
      expect(up.stdout).toContain(`kubeconfig: ${path.join(dir, 'admin.kubeconfig')}`);
      // The CLI has exited; the cluster runs on and the CRDs are installed.
      const state = await readState(dir);
      if (!state) throw new Error('no state after up');
      const pids = state.processes.map((p) => p.pid);
      expect(pids.every(pidAlive)).toBe(true);
      const c = clusterClient(path.join(dir, 'admin.kubeconfig'), inject('kubectlPath'));
      expect((await c.kubectl(['get', 'crd', 'virtualmachineinstances.kubevirt.io', '-o', 'name'])).trim()).toBe(
        'customresourcedefinition.apiextensions.k8s.io/virtualmachineinstances.kubevirt.io',
      );
      const status = await runCli('status');
      expect(status.code).toBe(0);
      expect(status.stdout).toContain('running, ready');
      expect((await runCli('up')).stdout).toContain('already running');

      const down = await runCli('down');
      expect(down.code).toBe(0);
      expect(down.stdout).toMatch(/stopped: kube-apiserver \(pid \d+\), etcd \(pid \d+\)/);
      expect(pids.some(pidAlive)).toBe(false);
      expect(processesMentioning(dir)).toEqual([]);
      expect(Object.values(state.ports).some((p) => listeningPorts().has(p))).toBe(false);
      expect((await runCli('status')).code).toBe(3);
    } finally {
      await runCli('down');
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('pins the versions in the committed wrapper modules, overridable by env', () => {
    expect(pinnedVersions()).toEqual({ k8s: 'v1.34.4', etcd: 'v3.6.5' });
    expect(resolveVersions({ BLOCKPULL_K8S_VERSION: '1.35.1', BLOCKPULL_ETCD_VERSION: 'v3.6.7' })).toEqual({
      k8s: 'v1.35.1',
      etcd: 'v3.6.7',
    });
  });
});
