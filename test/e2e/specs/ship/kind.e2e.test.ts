// The kind end-to-end script cannot run here (no Docker engine, no image registry). What can be
// checked is: it parses (bash -n), it is clean under shellcheck (Debian's, installed if missing),
// --dry-run prints every step in order and runs nothing (it succeeds with no docker, kind or
// kubectl on PATH), and the manifests it applies (and the README's examples) are accepted by the
// real API server's schemas.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { clusterClient } from '../../cluster/client.ts';
import { ensureDebianPackages } from '../../support/debian.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { run } from '../../support/process.ts';

const script = join(REPO_ROOT, 'test', 'e2e', 'kind', 'kind-e2e.sh');
const manifests = join(REPO_ROOT, 'test', 'e2e', 'kind', 'manifests');

describe('test/e2e/kind/kind-e2e.sh', () => {
  beforeAll(async () => {
    await ensureDebianPackages(['shellcheck']);
  }, 900_000);

  it('parses with bash -n', async () => {
    const r = await run(['bash', '-n', script], { allowExit: true });
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
  });

  it('is clean under shellcheck', async () => {
    const r = await run(['shellcheck', '--shell=bash', '--severity=info', script], { allowExit: true });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
  });

  it('--dry-run prints every step in order and needs none of the tools', async () => {
    // PATH without docker, kind, kubectl or helm: a dry run must not call any of them.
    const r = await run(['bash', script, '--dry-run', '--name', 'dry'], {
      allowExit: true,
      env: { PATH: '/usr/bin:/bin', HOME: '/nonexistent-home', BLOCKPULL_CACHE_DIR: '/nonexistent-cache' },
      timeoutMs: 30_000,
    });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n').at(-1)).toBe('kind-e2e: dry run: printed every step, ran nothing');
    const steps = [
      /go install sigs\.k8s\.io\/kind@v0\.30\.0/,
      /kind create cluster --name dry --image kindest\/node:v1\.33\.4@sha256:[0-9a-f]{64}/,
      /kubectl apply -f https:\/\/github\.com\/kubevirt\/kubevirt\/releases\/download\/v1\.6\.3\/kubevirt-operator\.yaml/,
      /kubectl wait crd\/kubevirts\.kubevirt\.io --for=condition=Established/,
      /kubevirt-cr\.yaml/,
      /kubectl -n kubevirt wait kubevirt\/kubevirt --for=condition=Available/,
      /docker build .* -t blockpull-operator:0\.1\.0 /,
      /kind load docker-image blockpull-operator:0\.1\.0 --name dry/,
      /helm upgrade --install blockpull \S+\/charts\/blockpull-operator --namespace blockpull-system --create-namespace/,
      /kubectl apply -f \S+\/manifests\/vmi-cirros\.yaml/,
      /wait vmi\/cirros --for=condition=Ready/,
      /exec virt-launcher-cirros-xxxxx -c compute -- virsh -c qemu\+unix:\/\/\/session\\\?socket=\/var\/run\/libvirt\/virtqemud-sock dumpxml default_cirros --xpath/,
      /kubectl apply -f \S+\/manifests\/blockpull\.yaml/,
      /wait blockpull\/cirros-flatten --for=condition=Complete/,
      /AFTER=\$\(kubectl -n default exec virt-launcher-cirros-xxxxx -c compute -- virsh/,
      /kind delete cluster --name dry/,
    ];
    let from = 0;
    for (const step of steps) {
      const m = step.exec(r.stderr.slice(from));
      expect(m, `step ${step} (in order) in:\n${r.stderr}`).not.toBeNull();
      from += (m?.index ?? 0) + (m?.[0].length ?? 0);
    }
    // useEmulation is applied exactly when there is no /dev/kvm.
    const kvm = await run(['test', '-e', '/dev/kvm'], { allowExit: true });
    expect(r.stderr.includes('useEmulation')).toBe(kvm.exitCode !== 0);
  });

  it('rejects an unknown argument', async () => {
    const r = await run(['bash', script, '--frobnicate'], { allowExit: true, timeoutMs: 10_000 });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/unknown argument: --frobnicate/);
  });

  it('pins the cirros containerDisk to the KubeVirt release it installs', async () => {
    const text = await readFile(script, 'utf8');
    const kubevirt = /^KUBEVIRT_VERSION="(v[0-9.]+)"$/m.exec(text)?.[1];
    expect(kubevirt).toBeDefined();
    const vmi = z
      .object({
        spec: z.object({
          volumes: z.array(z.object({ name: z.string(), containerDisk: z.object({ image: z.string() }) })),
        }),
      })
      .parse(parse(await readFile(join(manifests, 'vmi-cirros.yaml'), 'utf8')));
    expect(vmi.spec.volumes[0]?.containerDisk.image).toBe(`quay.io/kubevirt/cirros-container-disk-demo:${kubevirt}`);
  });

  it('its manifests and the README examples are accepted by the API server (server-side dry run)', async () => {
    const kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    await kube
      .kubectl(['create', 'namespace', 'vms', '--dry-run=client', '-o', 'yaml'])
      .then((y) => kube.kubectl(['apply', '-f', '-'], { input: y }));
    const examples = join(REPO_ROOT, 'examples');
    const files = [
      join(manifests, 'blockpull.yaml'),
      join(manifests, 'vmi-cirros.yaml'),
      ...['blockpull-full.yaml', 'blockpull-partial.yaml', 'blockpull-throttled.yaml', 'blockpull-paused.yaml'].map(
        (f) => join(examples, f),
      ),
    ];
    for (const file of files) {
      const r = await kube.kubectlResult(['apply', '--dry-run=server', '-f', file]);
      expect(r.stderr, file).toBe('');
      expect(r.exitCode, file).toBe(0);
      expect(r.stdout).toMatch(/(created|configured|unchanged) \(server dry run\)/);
    }
    // And the server's schema can refuse: a BlockPull with both base.position and base.path.
    const bad = await kube.kubectlResult(['apply', '--dry-run=server', '-f', '-'], {
      input: JSON.stringify({
        apiVersion: 'blockpull.dev/v1alpha1',
        kind: 'BlockPull',
        metadata: { name: 'bad', namespace: 'vms' },
        spec: { vmiName: 'x', disk: 'y', base: { position: 1, path: '/a' } },
      }),
    });
    expect(bad.exitCode).not.toBe(0);
    expect(bad.stderr).toMatch(/exactly one of position or path/);
  });
});
