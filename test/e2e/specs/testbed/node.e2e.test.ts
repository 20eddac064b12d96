/**
 * A real node (kubelet + containerd) for the local control plane. Slower than the other e2e
 * files: it starts its own control plane (with the kubelet-client flags a node needs), containerd,
 * kubelet, controller-manager and scheduler, and imports locally built images.
 *
 * Proves: the node registers and is Ready; a pod from a locally built image runs; kubectl logs and
 * kubectl exec (exit codes included) go through the API server to the kubelet and containerd;
 * a Deployment gets its pod (controller-manager + scheduler); the virt-launcher stand-in pod runs a
 * domain <ns>_<vmi> answering on the production URI inside container `compute` as uid 107;
 * the operator (its own process, as the chart's ServiceAccount, BLOCKPULL_TRANSPORT=exec) flattens
 * a disk through pods/exec -> kubelet -> containerd -> virsh, and qemu-img compare finds the data
 * unchanged; deleting the launcher pod mid-pull gives Pending/LauncherNotFound, not a hang; the same
 * pull with the operator running in the cluster as the Helm chart's Deployment, from the image
 * buildah built from the project's Dockerfile, under the chart's ServiceAccount;
 * stop() leaves nothing behind.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { clusterClient } from '../../cluster/client.ts';
import { startControlPlane, type ControlPlane } from '../../cluster/control-plane.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { installCrds, projectCrdFiles } from '../../cluster/crds.ts';
import {
  blockPullManifest,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { launcherImage, LAUNCHER_UID, testImage, type BuiltImage } from '../../images/images.ts';
import { operatorImage } from '../../images/operator.ts';
import { ensureHelm } from '../../ship/helm.ts';
import { run as runTool } from '../../support/process.ts';
import { nodeApiserverArgs, nodeLeftovers, startNode, type Node } from '../../node/kubelet.ts';
import { waitFor } from '../../support/wait.ts';
import {
  launcherPodManifest,
  launcherVmiManifest,
  LAUNCHER_URI,
  type LauncherDiskSpec,
} from '../../node/launcher-pod.ts';
import { chainInDomainXml } from '../../launcher/disk-chain.ts';

const STATE_DIR = path.join(REPO_ROOT, '.cache', 'node-e2e-cluster');
const NS = 'node-e2e';

let cp: ControlPlane | undefined;
let node: Node | undefined;
let operator: OperatorProcess | undefined;
let images: { test: BuiltImage; launcher: BuiltImage };
const timings: Record<string, number> = {};

const PodStatus = z.object({
  metadata: z.object({ name: z.string(), uid: z.string() }),
  spec: z.object({ nodeName: z.string().optional() }),
  status: z.object({
    phase: z.string().optional(),
    podIP: z.string().optional(),
    conditions: z.array(z.object({ type: z.string(), status: z.string() })).optional(),
    containerStatuses: z.array(z.object({ name: z.string(), ready: z.boolean(), restartCount: z.number() })).optional(),
  }),
});

async function pod(name: string): Promise<z.infer<typeof PodStatus>> {
  if (!cp) throw new Error('no control plane');
  return PodStatus.parse(JSON.parse(await cp.kubectl(['-n', NS, 'get', 'pod', name, '-o', 'json'])));
}

async function waitPodReady(name: string, timeoutMs = 120_000): Promise<z.infer<typeof PodStatus>> {
  return waitFor(
    `pod ${name} Ready`,
    timeoutMs,
    async () => {
      const p = await pod(name);
      return p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ? p : false;
    },
    500,
  );
}

beforeAll(async () => {
  let t = Date.now();
  images = { test: await testImage(), launcher: await launcherImage() };
  timings.imagesMs = Date.now() - t;
  t = Date.now();
  cp = await startControlPlane({ stateDir: STATE_DIR, extraApiserverArgs: nodeApiserverArgs(STATE_DIR) });
  timings.controlPlaneMs = Date.now() - t;
  node = await startNode(cp, { images: [images.test, images.launcher] });
  timings.nodeMs = node.startMs;
  await installCrds(clusterClient(cp.kubeconfigPath, cp.binaries.kubectl), await projectCrdFiles());
  await cp.kubectl(['create', 'namespace', NS]);
  // the controller-manager's service account controller creates the namespace's "default" SA
  await waitFor(
    'default service account',
    60_000,
    async () => (await cp?.kubectlResult(['-n', NS, 'get', 'serviceaccount', 'default']))?.exitCode === 0,
    500,
  );
}, 1_800_000);

afterAll(async () => {
  const n = node;
  const t = Date.now();
  try {
    await operator?.stop();
    await n?.stop();
  } finally {
    await cp?.stop();
  }
  timings.teardownMs = Date.now() - t;
  if (n) expect(await nodeLeftovers(n.runDir, n)).toEqual([]);
  process.stderr.write(`[node-e2e] timings: ${JSON.stringify(timings)}\n`);
}, 300_000);

describe('a real node: kubelet + containerd', () => {
  it('registers and is Ready, with containerd as its runtime', async () => {
    if (!cp || !node) throw new Error('not started');
    const n = z
      .object({
        status: z.object({
          conditions: z.array(z.object({ type: z.string(), status: z.string() })),
          nodeInfo: z.object({ kubeletVersion: z.string(), containerRuntimeVersion: z.string() }),
          addresses: z.array(z.object({ type: z.string(), address: z.string() })),
        }),
      })
      .parse(JSON.parse(await cp.kubectl(['get', 'node', node.name, '-o', 'json'])));
    expect(n.status.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');
    expect(n.status.nodeInfo.kubeletVersion).toBe(cp.binaries.versions.k8s);
    expect(n.status.nodeInfo.containerRuntimeVersion).toMatch(/^containerd:\/\/1\./);
    expect(n.status.addresses).toContainEqual({ type: 'InternalIP', address: node.ip });
  });

  it('runs a pod from a locally built image; kubectl logs and exec go through the kubelet', async () => {
    if (!cp) throw new Error('not started');
    const manifest = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'hello', namespace: NS },
      spec: {
        terminationGracePeriodSeconds: 1,
        containers: [
          {
            name: 'main',
            image: images.test.name,
            imagePullPolicy: 'Never',
            command: ['/bin/sh', '-c', 'echo "hello from $(hostname)"; trap "exit 0" TERM; while :; do sleep 1; done'],
          },
        ],
      },
    };
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(manifest) });
    const p = await waitPodReady('hello');
    expect(p.status.phase).toBe('Running');
    expect(p.status.podIP?.startsWith(node!.podCidr.replace(/0\/24$/, ''))).toBe(true);

    const logs = await waitFor('log line', 30_000, async () => {
      const out = await cp?.kubectl(['-n', NS, 'logs', 'hello']);
      return out?.includes('hello from hello') ? out : false;
    });
    expect(logs).toContain('hello from hello');

    const exec = await cp.kubectlResult([
      '-n',
      NS,
      'exec',
      'hello',
      '-c',
      'main',
      '--',
      '/bin/sh',
      '-c',
      'echo out; echo err >&2; cat /etc/hostname; exit 3',
    ]);
    expect(exec.stdout).toBe('out\nhello\n');
    expect(exec.stderr).toContain('err');
    expect(exec.exitCode).toBe(3);

    const stdin = await cp.kubectlResult(['-n', NS, 'exec', '-i', 'hello', '--', '/bin/cat'], {
      input: 'through stdin\n',
    });
    expect(stdin.exitCode).toBe(0);
    expect(stdin.stdout).toBe('through stdin\n');
  });

  it('a Deployment gets a running pod (controller-manager + scheduler)', async () => {
    if (!cp || !node) throw new Error('not started');
    const deployment = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'web', namespace: NS },
      spec: {
        replicas: 2,
        selector: { matchLabels: { app: 'web' } },
        template: {
          metadata: { labels: { app: 'web' } },
          spec: {
            terminationGracePeriodSeconds: 1,
            containers: [
              {
                name: 'main',
                image: images.test.name,
                imagePullPolicy: 'Never',
                command: ['/bin/sh', '-c', 'trap "exit 0" TERM; while :; do sleep 1; done'],
              },
            ],
          },
        },
      },
    };
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(deployment) });
    await cp.kubectl(['-n', NS, 'rollout', 'status', 'deployment/web', '--timeout=120s'], { timeoutMs: 130_000 });
    const pods = z
      .object({ items: z.array(PodStatus) })
      .parse(JSON.parse(await cp.kubectl(['-n', NS, 'get', 'pods', '-l', 'app=web', '-o', 'json'])));
    expect(pods.items).toHaveLength(2);
    for (const p of pods.items) {
      expect(p.spec.nodeName).toBe(node.name);
      expect(p.status.phase).toBe('Running');
    }
    await cp.kubectl(['-n', NS, 'delete', 'deployment', 'web', '--wait=true']);
  });

  it('runs the virt-launcher stand-in pod: domain <ns>_<vmi> on the production URI, as uid 107', async () => {
    if (!cp) throw new Error('not started');
    const manifest = launcherPodManifest({
      namespace: NS,
      podName: 'virt-launcher-vm1-abcde',
      vmiName: 'vm1',
      vmiUid: '00000000-0000-4000-8000-000000000001',
      // No VMI object here: the garbage collector would delete a pod owned by a missing VMI.
      owned: false,
      image: images.launcher.name,
      disks: [{ name: 'rootdisk', layers: 3, sizeMiB: 64 }],
    });
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(manifest) });
    await waitPodReady('virt-launcher-vm1-abcde', 180_000);

    const ex = (argv: string[]): Promise<string> =>
      cp!.kubectl(['-n', NS, 'exec', 'virt-launcher-vm1-abcde', '-c', 'compute', '--', ...argv]);
    expect((await ex(['id', '-u'])).trim()).toBe(String(LAUNCHER_UID));
    expect((await ex(['virsh', '-c', LAUNCHER_URI, 'domstate', `${NS}_vm1`])).trim()).toBe('paused');
    const xml = await ex(['virsh', '-c', LAUNCHER_URI, 'dumpxml', `${NS}_vm1`]);
    expect(xml).toContain("<alias name='ua-rootdisk'/>");
    // a three-layer chain: the top and two backing stores, then the end of the chain
    expect(chainInDomainXml(xml, 'rootdisk')).toHaveLength(3);
    const blocklist = await ex(['virsh', '-c', LAUNCHER_URI, 'domblklist', `${NS}_vm1`]);
    expect(blocklist).toMatch(/vda\s+\/var\/run\/kubevirt-ephemeral-disks\/disk-data\/rootdisk\/rootdisk-2\.qcow2/);
  });

  it('has the runtime files where the node says they are', () => {
    if (!node) throw new Error('not started');
    expect(existsSync(node.containerd.socket)).toBe(true);
  });
});

/** Exec in the launcher's compute container through the API server and kubelet. */
async function inCompute(
  pod: string,
  argv: readonly string[],
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  if (!cp) throw new Error('not started');
  return cp.kubectlResult(['-n', NS, 'exec', pod, '-c', 'compute', '--', ...argv], { timeoutMs: 120_000 });
}

/** A VMI + launcher stand-in pod on the node, the VMI's status pointing at the pod. */
async function startVm(vmiName: string, disks: readonly LauncherDiskSpec[]): Promise<string> {
  if (!cp || !node) throw new Error('not started');
  const vmi = launcherVmiManifest({ namespace: NS, vmiName, podUid: 'pending', nodeName: node.name, disks });
  await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify({ ...vmi, status: undefined }) });
  const vmiUid = (await cp.kubectl(['-n', NS, 'get', 'vmi', vmiName, '-o', 'jsonpath={.metadata.uid}'])).trim();
  const podName = `virt-launcher-${vmiName}-${vmiUid.slice(0, 5)}`;
  await cp.kubectl(['apply', '-f', '-'], {
    input: JSON.stringify(
      launcherPodManifest({ namespace: NS, podName, vmiName, vmiUid, image: images.launcher.name, disks }),
    ),
  });
  const p = await waitPodReady(podName, 180_000);
  const status = launcherVmiManifest({ namespace: NS, vmiName, podUid: p.metadata.uid, nodeName: node.name, disks })[
    'status'
  ];
  await cp.kubectl(['-n', NS, 'patch', 'vmi', vmiName, '--type=merge', '-p', JSON.stringify({ status })]);
  return podName;
}

const topOf = (disk: LauncherDiskSpec): string =>
  `/var/run/kubevirt-ephemeral-disks/disk-data/${disk.name}/${disk.name}-${disk.layers - 1}.qcow2`;

describe('BlockPull through the production pods/exec transport, against the launcher pod', () => {
  beforeAll(async () => {
    if (!cp) throw new Error('not started');
    const sa = await operatorServiceAccount(clusterClient(cp.kubeconfigPath, cp.binaries.kubectl));
    operator = await startOperator({
      kubeconfig: sa,
      registryDir: '',
      name: 'node-e2e-exec',
      env: { BLOCKPULL_TRANSPORT: 'exec', BLOCKPULL_LEADER_ELECT: 'false' },
    });
    expect(operator.find('starting blockpull-operator')[0]?.['transport']).toBe('exec');
  }, 120_000);

  it('flattens the disk through kubectl-exec-like calls; the chain is flat and the data identical', async () => {
    if (!cp) throw new Error('not started');
    const disk: LauncherDiskSpec = { name: 'rootdisk', layers: 3, sizeMiB: 128, allocatedMiB: 64 };
    const pod = await startVm('vm2', [disk]);
    // reference: the guest-visible content of the chain, before the pull (the domain is paused)
    const ref = await inCompute(pod, [
      'qemu-img',
      'convert',
      '-U',
      '-O',
      'raw',
      topOf(disk),
      '/var/run/kubevirt-ephemeral-disks/ref.raw',
    ]);
    expect(ref.exitCode, ref.stderr).toBe(0);

    const t0 = Date.now();
    await cp.kubectl(['apply', '-f', '-'], {
      input: blockPullManifest({ namespace: NS, name: 'flatten-vm2', vmiName: 'vm2', disk: 'rootdisk' }),
    });
    const done = await waitForPhase(cp, NS, 'flatten-vm2', ['Completed', 'Failed'], 180_000);
    timings.execPullMs = Date.now() - t0;
    expect(done.status?.phase, JSON.stringify(done.status)).toBe('Completed');
    expect(done.status?.reason).toBe('Completed');
    expect(done.status?.launcher?.['pod']).toBe(pod);

    const xml = await inCompute(pod, ['virsh', '-c', LAUNCHER_URI, 'dumpxml', `${NS}_vm2`]);
    expect(xml.exitCode).toBe(0);
    // flat: the top alone (libvirt's backing index 1), no backing store under it
    expect(chainInDomainXml(xml.stdout, disk.name).map((l) => ({ path: l.path, index: l.index }))).toEqual([
      { path: topOf(disk), index: 1 },
    ]);
    // QEMU caches qcow2 metadata: flush through the device so a reader outside QEMU sees the guest's view
    const flush = await inCompute(pod, [
      'virsh',
      '-c',
      LAUNCHER_URI,
      'qemu-monitor-command',
      `${NS}_vm2`,
      '--hmp',
      'qemu-io -d /machine/peripheral/ua-rootdisk/virtio-backend "flush"',
    ]);
    expect(flush.exitCode, flush.stderr).toBe(0);
    expect(flush.stdout.trim()).toBe('');
    const info = await inCompute(pod, ['qemu-img', 'info', '-U', '--output=json', topOf(disk)]);
    expect(JSON.parse(info.stdout)).not.toHaveProperty('backing-filename');
    const cmp = await inCompute(pod, [
      'qemu-img',
      'compare',
      '-U',
      '-f',
      'raw',
      '-F',
      'qcow2',
      '/var/run/kubevirt-ephemeral-disks/ref.raw',
      topOf(disk),
    ]);
    expect(cmp.stdout).toContain('Images are identical');
    expect(cmp.exitCode).toBe(0);
  });

  it('deleting the launcher pod mid-pull gives Pending / LauncherNotFound (the VMI still says Running), not a hang', async () => {
    if (!cp) throw new Error('not started');
    const disk: LauncherDiskSpec = { name: 'datadisk', layers: 2, sizeMiB: 512, allocatedMiB: 256 };
    const pod = await startVm('vm3', [disk]);
    await cp.kubectl(['apply', '-f', '-'], {
      input: blockPullManifest({
        namespace: NS,
        name: 'flatten-vm3',
        vmiName: 'vm3',
        disk: 'datadisk',
        spec: { bandwidth: '8Mi' },
      }),
    });
    await waitFor(
      'pull under way',
      120_000,
      async () => {
        const bp = await getBlockPull(cp!, NS, 'flatten-vm3');
        return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0 ? bp : false;
      },
      300,
    );
    const t0 = Date.now();
    await cp.kubectl(['-n', NS, 'delete', 'pod', pod, '--wait=false']);
    const after = await waitFor(
      'Pending / LauncherNotFound',
      60_000,
      async () => {
        const bp = await getBlockPull(cp!, NS, 'flatten-vm3');
        return bp?.status?.phase === 'Pending' && bp.status.reason === 'LauncherNotFound' ? bp : false;
      },
      300,
    );
    timings.podKillToPendingMs = Date.now() - t0;
    // Deleting: the pod is refused as being deleted, or gone already.
    expect(after.status?.message).toMatch(
      /has no acceptable virt-launcher pod on node .*(being deleted|no pod is controlled by it)/,
    );
    await waitFor(
      'launcher pod gone',
      120_000,
      async () => (await cp?.kubectlResult(['-n', NS, 'get', 'pod', pod]))?.exitCode !== 0,
      500,
    );
  });
});

/**
 * Waits for the Deployment's pod to be Ready; fails at once, with what the kubelet says, when it
 * cannot get there (image not present, crash loop, config error) instead of waiting out a timeout.
 */
async function waitDeploymentPodReady(namespace: string, selector: string, timeoutMs: number): Promise<void> {
  if (!cp) throw new Error('not started');
  const c = cp;
  const Pods = z.object({
    items: z.array(
      z.object({
        metadata: z.object({ name: z.string() }),
        status: z.object({
          phase: z.string().optional(),
          conditions: z.array(z.object({ type: z.string(), status: z.string() })).optional(),
          containerStatuses: z
            .array(
              z.object({
                name: z.string(),
                restartCount: z.number(),
                state: z
                  .record(
                    z.string(),
                    z.object({ reason: z.string().optional(), message: z.string().optional() }).loose(),
                  )
                  .optional(),
              }),
            )
            .optional(),
        }),
      }),
    ),
  });
  const diagnose = async (): Promise<string> => {
    const parts = [
      await c.kubectlResult(['-n', namespace, 'get', 'pods', '-l', selector, '-o', 'wide']),
      await c.kubectlResult(['-n', namespace, 'get', 'events', '--sort-by=.lastTimestamp']),
      await c.kubectlResult(['-n', namespace, 'logs', '-l', selector, '--tail=40', '--all-containers', '--prefix']),
      await c.kubectlResult([
        '-n',
        namespace,
        'logs',
        '-l',
        selector,
        '--tail=40',
        '--all-containers',
        '--prefix',
        '--previous',
      ]),
    ];
    return parts.map((r) => (r.stdout + r.stderr).trim()).join('\n---\n');
  };
  const fatal =
    /^(ErrImageNeverPull|InvalidImageName|ImageInspectError|CreateContainerConfigError|CreateContainerError|RunContainerError)$/;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pods = Pods.parse(
      JSON.parse(await c.kubectl(['-n', namespace, 'get', 'pods', '-l', selector, '-o', 'json'])),
    );
    const ready = pods.items.some((p) => p.status.conditions?.some((x) => x.type === 'Ready' && x.status === 'True'));
    if (ready) return;
    for (const p of pods.items) {
      for (const cs of p.status.containerStatuses ?? []) {
        const waiting = cs.state?.['waiting']?.reason ?? '';
        if (fatal.test(waiting) || cs.restartCount >= 2) {
          throw new Error(
            `pod ${p.metadata.name} cannot become Ready (container ${cs.name}: ${waiting || 'restarting'}, ${cs.restartCount} restarts):\n${await diagnose()}`,
          );
        }
      }
    }
    if (Date.now() > deadline)
      throw new Error(`no Ready pod for ${selector} in ${namespace} after ${timeoutMs} ms:\n${await diagnose()}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

describe('the operator as the Helm chart Deployment, image built from the Dockerfile', () => {
  const OP_NS = 'blockpull-system';
  const SELECTOR = 'app.kubernetes.io/name=blockpull-operator';

  let image: BuiltImage;
  let helm: string;

  // Only the slow, cacheable inputs here (a cold image build takes minutes on a fresh machine).
  beforeAll(async () => {
    if (!node) throw new Error('not started');
    await operator?.stop(); // one operator at a time
    operator = undefined;
    const t = Date.now();
    image = await operatorImage();
    timings.operatorImageMs = Date.now() - t;
    await node.importImage(image);
    helm = await ensureHelm();
  }, 1_800_000);

  // The deployment is part of the test, not of a hook: if it fails, this test fails with the
  // kubelet's reason, rather than being reported as skipped after a hook timeout.
  it('runs under the chart ServiceAccount and flattens a disk through pods/exec', async () => {
    if (!cp || !node) throw new Error('not started');
    const colon = image.name.lastIndexOf(':');
    const rendered = await runTool(
      [
        helm,
        'template',
        'blockpull-operator',
        path.join(REPO_ROOT, 'charts', 'blockpull-operator'),
        '--namespace',
        OP_NS,
        '--set',
        `image.repository=${image.name.slice(0, colon)}`,
        '--set',
        `image.tag=${image.name.slice(colon + 1)}`,
        '--set',
        'image.pullPolicy=Never',
        '--set',
        'replicaCount=1',
        '--set',
        'operator.logLevel=debug',
      ],
      { allowExit: true, timeoutMs: 60_000 },
    );
    expect(rendered.exitCode, rendered.stderr).toBe(0);
    await cp.kubectl(['create', 'namespace', OP_NS]);
    const t = Date.now();
    await cp.kubectl(['apply', '-f', '-'], { input: rendered.stdout });
    await waitDeploymentPodReady(OP_NS, SELECTOR, 90_000);
    timings.deploymentReadyMs = Date.now() - t;

    const pods = z
      .object({
        items: z.array(
          z.object({
            metadata: z.object({ name: z.string() }),
            spec: z.object({ serviceAccountName: z.string(), containers: z.array(z.object({ image: z.string() })) }),
          }),
        ),
      })
      .parse(JSON.parse(await cp.kubectl(['-n', OP_NS, 'get', 'pods', '-l', SELECTOR, '-o', 'json'])));
    expect(pods.items).toHaveLength(1);
    const opPod = pods.items[0]!;
    expect(opPod.spec.serviceAccountName).toBe('blockpull-operator');
    expect(opPod.spec.containers[0]?.image).toMatch(/^localhost\/blockpull-operator:/);

    const disk: LauncherDiskSpec = { name: 'osdisk', layers: 4, sizeMiB: 128, allocatedMiB: 96 };
    const pod = await startVm('vm4', [disk]);
    const ref = await inCompute(pod, [
      'qemu-img',
      'convert',
      '-U',
      '-O',
      'raw',
      topOf(disk),
      '/var/run/kubevirt-ephemeral-disks/ref.raw',
    ]);
    expect(ref.exitCode, ref.stderr).toBe(0);
    const t0 = Date.now();
    await cp.kubectl(['apply', '-f', '-'], {
      input: blockPullManifest({ namespace: NS, name: 'flatten-vm4', vmiName: 'vm4', disk: 'osdisk' }),
    });
    const done = await waitForPhase(cp, NS, 'flatten-vm4', ['Completed', 'Failed'], 180_000);
    timings.deploymentPullMs = Date.now() - t0;
    expect(done.status?.phase, JSON.stringify(done.status)).toBe('Completed');

    const logs = await cp.kubectl(['-n', OP_NS, 'logs', opPod.metadata.name]);
    const lines = logs
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => l['msg'] === 'starting blockpull-operator')?.['transport']).toBe('exec');
    expect(lines.some((l) => l['blockpull'] === `${NS}/flatten-vm4`)).toBe(true);

    const flush = await inCompute(pod, [
      'virsh',
      '-c',
      LAUNCHER_URI,
      'qemu-monitor-command',
      `${NS}_vm4`,
      '--hmp',
      'qemu-io -d /machine/peripheral/ua-osdisk/virtio-backend "flush"',
    ]);
    expect(flush.exitCode, flush.stderr).toBe(0);
    const xml = await inCompute(pod, ['virsh', '-c', LAUNCHER_URI, 'dumpxml', `${NS}_vm4`]);
    expect(chainInDomainXml(xml.stdout, disk.name)).toHaveLength(1);
    const cmp = await inCompute(pod, [
      'qemu-img',
      'compare',
      '-U',
      '-f',
      'raw',
      '-F',
      'qcow2',
      '/var/run/kubevirt-ephemeral-disks/ref.raw',
      topOf(disk),
    ]);
    expect(cmp.stdout).toContain('Images are identical');
    expect(cmp.exitCode).toBe(0);
  }, 600_000);
});
