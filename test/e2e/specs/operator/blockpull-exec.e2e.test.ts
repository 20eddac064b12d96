/**
 * The production transport end to end: a real node (kubelet + containerd) runs the virt-launcher
 * stand-in as a POD (container `compute`, uid 107, libvirt session daemon on KubeVirt's URI), and
 * the operator (its own process, ServiceAccount with the chart's RBAC, BLOCKPULL_TRANSPORT=exec)
 * drives virsh through pods/exec. Data is checked with qemu-img compare inside the pod.
 * Slow (own control plane with node flags, containerd, kubelet, image import), like node.e2e.
 */
import path from 'node:path';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../../cluster/crds.ts';
import { startControlPlane, type ControlPlane } from '../../cluster/control-plane.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { launcherImage } from '../../images/images.ts';
import { chainInDomainXml } from '../../launcher/disk-chain.ts';
import { launcherPodManifest, launcherVmiManifest, LAUNCHER_URI } from '../../node/launcher-pod.ts';
import { nodeApiserverArgs, startNode, type Node } from '../../node/kubelet.ts';
import {
  blockPullManifest,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { waitFor } from '../../support/wait.ts';

const STATE_DIR = path.join(REPO_ROOT, '.cache', 'blockpull-exec-cluster');
const NS = 'bp-exec';
const VMI = 'vm1';
const POD = 'virt-launcher-vm1-exec1';
const DISKS = [
  { name: 'rootdisk', layers: 3, sizeMiB: 64, allocatedMiB: 32 },
  { name: 'datadisk', layers: 3, sizeMiB: 64, allocatedMiB: 32 },
];
const DOMAIN = `${NS}_${VMI}`;

describe('BlockPull over pods/exec into a real virt-launcher stand-in pod', () => {
  let cp: ControlPlane | undefined;
  let node: Node | undefined;
  let operator: OperatorProcess | undefined;
  let tmp: string | undefined;

  const ex = (argv: string[]): Promise<string> => cp!.kubectl(['-n', NS, 'exec', POD, '-c', 'compute', '--', ...argv]);
  const chain = async (disk: string): Promise<string[]> => {
    const xml = await ex(['virsh', '-c', LAUNCHER_URI, 'dumpxml', DOMAIN]);
    return chainInDomainXml(xml, disk).map((l) => l.path);
  };

  /** Make QEMU write its cached qcow2 metadata, so qemu-img (outside QEMU) sees the current data. */
  const flush = async (disk: string): Promise<void> => {
    const out = await ex([
      'virsh',
      '-c',
      LAUNCHER_URI,
      'qemu-monitor-command',
      DOMAIN,
      '--hmp',
      `qemu-io -d /machine/peripheral/ua-${disk}/virtio-backend "flush"`,
    ]);
    expect(out.trim()).toBe('');
  };
  const compare = async (disk: string, top: string, ref: string): Promise<string> => {
    await flush(disk);
    return (await ex(['qemu-img', 'compare', '-U', top, ref])).trim();
  };

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-exec-'));
    const image = await launcherImage();
    cp = await startControlPlane({ stateDir: STATE_DIR, extraApiserverArgs: nodeApiserverArgs(STATE_DIR) });
    await installCrds(cp, [...(await projectCrdFiles()), VMI_CRD_FILE]);
    node = await startNode(cp, { images: [image] });
    await cp.kubectl(['create', 'namespace', NS]);
    await waitFor(
      'default service account',
      60_000,
      async () => (await cp!.kubectlResult(['-n', NS, 'get', 'serviceaccount', 'default'])).exitCode === 0,
    );
    // The VMI first (its uid labels the pod), then the pod, then the VMI status pointing at it.
    const vmi = launcherVmiManifest({
      namespace: NS,
      vmiName: VMI,
      podUid: 'pending',
      nodeName: node.name,
      disks: DISKS,
    });
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify({ ...vmi, status: undefined }) });
    const vmiUid = (await cp.kubectl(['get', 'vmi', VMI, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim();
    const pod = launcherPodManifest({
      namespace: NS,
      podName: POD,
      vmiName: VMI,
      vmiUid,
      image: image.name,
      disks: DISKS,
      nodeName: node.name,
    });
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(pod) });
    await cp.kubectl(['wait', '--for=condition=Ready', `pod/${POD}`, '-n', NS, '--timeout=240s'], {
      timeoutMs: 250_000,
    });
    const podUid = (await cp.kubectl(['get', 'pod', POD, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim();
    const status = launcherVmiManifest({ namespace: NS, vmiName: VMI, podUid, nodeName: node.name, disks: DISKS })[
      'status'
    ];
    await cp.kubectl(['patch', 'vmi', VMI, '-n', NS, '--type=merge', '-p', JSON.stringify({ status })]);
    const sa = await operatorServiceAccount(cp);
    operator = await startOperator({
      kubeconfig: sa,
      registryDir: '',
      name: 'exec-op',
      env: { BLOCKPULL_TRANSPORT: 'exec', BLOCKPULL_LOCAL_LAUNCHERS_DIR: '' },
    });
  }, 1_800_000);

  afterAll(async () => {
    try {
      if (cp !== undefined && operator !== undefined)
        await cp.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
      await operator?.stop();
      await node?.stop();
    } finally {
      await cp?.stop();
      if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
    }
  }, 300_000);

  it('flattens the disk in the pod: chain of 1, qemu-img compare identical, status names the pod and node', async () => {
    const before = await chain('rootdisk');
    expect(before).toHaveLength(3);
    const top = before[0]!;
    const ref = '/var/run/kubevirt-private/rootdisk-ref.qcow2';
    await flush('rootdisk');
    await ex(['qemu-img', 'convert', '-U', '-O', 'qcow2', top, ref]);
    const file = path.join(tmp!, 'bp.yaml');
    await writeFile(
      file,
      blockPullManifest({
        namespace: NS,
        name: 'flatten',
        vmiName: VMI,
        disk: 'rootdisk',
        spec: { bandwidth: '16Mi' },
      }),
    );
    await cp!.kubectl(['apply', '-f', file]);
    await cp!.kubectl(['wait', '--for=condition=Complete', 'blockpull/flatten', '-n', NS, '--timeout=180s'], {
      timeoutMs: 190_000,
    });
    expect(await chain('rootdisk')).toEqual([top]);
    expect(await compare('rootdisk', top, ref)).toBe('Images are identical.');
    const bp = (await getBlockPull(cp!, NS, 'flatten'))!;
    expect(bp.status).toMatchObject({
      phase: 'Completed',
      reason: 'Completed',
      attempts: 1,
      launcher: { pod: POD, node: node!.name, container: 'compute', domain: DOMAIN, target: 'vda' },
    });
    expect(operator!.find('block pull started').length).toBe(1);
  });

  it('partial pull with a base path, through exec', async () => {
    const before = await chain('datadisk');
    expect(before).toHaveLength(3);
    const ref = '/var/run/kubevirt-private/datadisk-ref.qcow2';
    await flush('datadisk');
    await ex(['qemu-img', 'convert', '-U', '-O', 'qcow2', before[0]!, ref]);
    const file = path.join(tmp!, 'partial.yaml');
    await writeFile(
      file,
      blockPullManifest({
        namespace: NS,
        name: 'partial',
        vmiName: VMI,
        disk: 'datadisk',
        spec: { base: { path: before[2] } },
      }),
    );
    await cp!.kubectl(['apply', '-f', file]);
    await cp!.kubectl(['wait', '--for=condition=Complete', 'blockpull/partial', '-n', NS, '--timeout=180s'], {
      timeoutMs: 190_000,
    });
    expect(await chain('datadisk')).toEqual([before[0], before[2]]);
    expect(await compare('datadisk', before[0]!, ref)).toBe('Images are identical.');
  });
});
