/**
 * The real-KubeVirt images (test/e2e/kubevirt/images.ts) on our node's containerd, run the way the
 * launcher pod virt-controller renders runs them:
 * - virt-launcher image, as the non-root compute container (uid 107, capabilities: drop ALL, add
 *   NET_BIND_SERVICE, no privilege escalation): the file capability on virt-launcher-monitor survives
 *   import and unpack (getcap) and the kernel grants it when the monitor runs (its CapEff); users,
 *   binaries at the rendered pod's paths, the virtqemud script, libvirt's QEMU driver only.
 * - containerDisk image, as the rendered pod runs it: container-disk copied from the launcher image
 *   into a shared emptyDir (init container container-disk-binary), `--no-op` init, then the volume
 *   container `container-disk --copy-path ...`: its socket appears and its /disk/disk.qcow2, seen
 *   through the process's root like virt-handler sees it, is owned by 107 and equal to the reference.
 */
import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { REPO_ROOT, startControlPlane, type ControlPlane } from '../../cluster/control-plane.ts';
import { processesMentioning } from '../../cluster/processes.ts';
import { ensureKubevirtImages, QEMU_UID, type KubevirtImages } from '../../kubevirt/images.ts';
import { nodeApiserverArgs, startNode, type Node } from '../../node/kubelet.ts';
import { waitFor } from '../../node/proc.ts';

const execFileP = promisify(execFile);
const STATE_DIR = path.join(REPO_ROOT, '.cache', 'kubevirt-images-e2e-cluster');
const NS = 'default';
const log = (m: string): void => {
  process.stderr.write(`[kubevirt-images] ${m}\n`);
};

let cp: ControlPlane | undefined;
let node: Node | undefined;
let images: KubevirtImages;

beforeAll(async () => {
  const t0 = Date.now();
  images = await ensureKubevirtImages({ log });
  log(`images ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  cp = await startControlPlane({ stateDir: STATE_DIR, extraApiserverArgs: nodeApiserverArgs(STATE_DIR), log });
  const t1 = Date.now();
  node = await startNode(cp, { images: [images.launcher, images.containerDisk], log });
  log(`node (with the two images imported) ready in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
});

afterAll(async () => {
  await node?.stop();
  await cp?.stop();
});

const nonRoot = {
  runAsUser: QEMU_UID,
  runAsGroup: QEMU_UID,
  runAsNonRoot: true,
  allowPrivilegeEscalation: false,
  capabilities: { drop: ['ALL'] },
};

const PodStatus = z.object({
  status: z.object({
    phase: z.string().optional(),
    conditions: z.array(z.object({ type: z.string(), status: z.string() })).optional(),
  }),
});

async function podStatus(name: string): Promise<z.infer<typeof PodStatus>> {
  if (!cp) throw new Error('no control plane');
  return PodStatus.parse(JSON.parse(await cp.kubectl(['-n', NS, 'get', 'pod', name, '-o', 'json'])));
}

describe('KubeVirt images on the node', () => {
  it('virt-launcher image: file capability, users, binaries, libvirt as KubeVirt expects', async () => {
    if (!cp) throw new Error('no control plane');
    // The monitor is started with arguments like the rendered pod's; it stays up while virt-launcher
    // starts, long enough to read its capability sets from /proc.
    const script = [
      'getcap /usr/bin/virt-launcher-monitor',
      'id qemu; id libvirt-qemu',
      'for b in virt-launcher virt-launcher-monitor virt-freezer virt-probe virt-tail container-disk; do test -x /usr/bin/$b && echo "bin $b"; done',
      'echo "drivers $(ls /usr/lib/x86_64-linux-gnu/libvirt/connection-driver | tr "\\n" " ")"',
      'ldd /usr/bin/virt-launcher | grep "not found" || echo "virt-launcher libs ok"',
      '/usr/sbin/virtqemud --version',
      'ls /etc/libvirt/qemu.conf /etc/libvirt/virtqemud.conf /etc/libvirt/virtlogd.conf /etc/libvirt/hooks/qemu',
      'echo "sh $(grep CapEff /proc/self/status)"',
      '/usr/bin/virt-launcher-monitor --qemu-timeout 20s --name capcheck --uid 11111111-2222-3333-4444-555555555555 --namespace default --kubevirt-share-dir /var/run/kubevirt --ephemeral-disk-dir /var/run/kubevirt-ephemeral-disks --container-disk-dir /var/run/kubevirt/container-disks --grace-period-seconds 5 --hook-sidecars 0 --run-as-nonroot --allow-emulation >/tmp/monitor.log 2>&1 &',
      'm=$!; for i in $(seq 1 50); do if [ -r /proc/$m/status ]; then echo "monitor $(grep CapEff /proc/$m/status)"; break; fi; sleep 0.1; done',
      'kill $m 2>/dev/null; true',
    ].join('\n');
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'launcher-image-check', namespace: NS },
      spec: {
        restartPolicy: 'Never',
        automountServiceAccountToken: false,
        securityContext: { runAsUser: QEMU_UID, runAsGroup: QEMU_UID, runAsNonRoot: true, fsGroup: QEMU_UID },
        containers: [
          {
            name: 'compute',
            image: images.launcher.name,
            imagePullPolicy: 'IfNotPresent',
            command: ['/bin/sh', '-c', script],
            env: [{ name: 'XDG_RUNTIME_DIR', value: '/var/run' }],
            securityContext: { ...nonRoot, capabilities: { drop: ['ALL'], add: ['NET_BIND_SERVICE'] } },
          },
        ],
      },
    };
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(pod) });
    await waitFor('launcher-image-check to finish', async () => ['Succeeded', 'Failed'].includes((await podStatus('launcher-image-check')).status.phase ?? ''), 180_000, 1000);
    const out = await cp.kubectl(['-n', NS, 'logs', 'launcher-image-check']);
    log(`launcher-image-check:\n${out}`);
    expect((await podStatus('launcher-image-check')).status.phase).toBe('Succeeded');
    expect(out).toMatch(/\/usr\/bin\/virt-launcher-monitor cap_net_bind_service=ep/);
    expect(out).toMatch(/uid=107\(qemu\) gid=107\(qemu\)/);
    expect(out).toMatch(/uid=64055\(libvirt-qemu\)/);
    for (const b of ['virt-launcher', 'virt-launcher-monitor', 'virt-freezer', 'virt-probe', 'virt-tail', 'container-disk']) expect(out).toContain(`bin ${b}\n`);
    expect(out).toMatch(/^drivers libvirt_driver_qemu\.so $/m);
    expect(out).toContain('virt-launcher libs ok');
    expect(out).toMatch(/libvirtd \(libvirt\) 9\./);
    expect(out).toMatch(/^sh CapEff:\s+0+$/m); // a plain binary gets nothing (uid 107, no ambient caps)
    // the file capability raises NET_BIND_SERVICE (bit 10 = 0x400) for the monitor, under no_new_privs
    expect(out).toMatch(/^monitor CapEff:\s+0+400$/m);
  });

  it('containerDisk image: the volume container serves /disk/disk.qcow2 (uid 107, equal to the reference)', async () => {
    if (!cp) throw new Error('no control plane');
    const id = `cdcheck-${Date.now().toString(36)}`;
    const dataDir = `/var/run/kubevirt-ephemeral-disks/container-disk-data/${id}`;
    const volumeMounts = [
      { name: 'container-disks', mountPath: dataDir },
      { name: 'virt-bin-share-dir', mountPath: '/usr/bin' },
    ];
    const limits = { resources: { limits: { cpu: '10m', memory: '40M' }, requests: { cpu: '1m', memory: '1M' } } };
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'containerdisk-check', namespace: NS },
      spec: {
        restartPolicy: 'Never',
        automountServiceAccountToken: false,
        securityContext: { runAsUser: QEMU_UID, runAsGroup: QEMU_UID, runAsNonRoot: true, fsGroup: QEMU_UID },
        volumes: [
          { name: 'container-disks', emptyDir: {} },
          { name: 'virt-bin-share-dir', emptyDir: {} },
        ],
        initContainers: [
          {
            name: 'container-disk-binary',
            image: images.launcher.name,
            command: ['/usr/bin/cp', '/usr/bin/container-disk', '/init/usr/bin/container-disk'],
            volumeMounts: [{ name: 'virt-bin-share-dir', mountPath: '/init/usr/bin' }],
            securityContext: nonRoot,
          },
          { name: 'volumerootdisk-init', image: images.containerDisk.name, command: ['/usr/bin/container-disk'], args: ['--no-op'], volumeMounts, securityContext: nonRoot, ...limits },
        ],
        containers: [
          {
            name: 'volumerootdisk',
            image: images.containerDisk.name,
            command: ['/usr/bin/container-disk'],
            args: ['--copy-path', `${dataDir}/disk_0`],
            volumeMounts,
            securityContext: nonRoot,
            ...limits,
          },
        ],
      },
    };
    await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(pod) });
    await waitFor('containerdisk-check Ready', async () => (await podStatus('containerdisk-check')).status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true, 180_000, 1000);
    const pids = processesMentioning(`${dataDir}/disk_0`, ['container-disk']);
    expect(pids).toHaveLength(1);
    const root = `/proc/${pids[0]}/root`;
    const disk = await stat(`${root}/disk/disk.qcow2`);
    expect([disk.uid, disk.gid]).toEqual([QEMU_UID, QEMU_UID]);
    // container-disk --copy-path <p> listens on <p>.sock (virt-handler's liveness check of the volume container)
    await waitFor('container-disk socket', async () => (await stat(`${root}${dataDir}/disk_0.sock`).catch(() => undefined))?.isSocket() === true, 30_000, 500);
    const { stdout } = await execFileP('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', images.containerDiskReference, `${root}/disk/disk.qcow2`]);
    expect(stdout).toMatch(/Images are identical/);
  });
});
