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
 * The KubeVirt version is BLOCKPULL_KUBEVIRT_VERSION's (default v1.7.0): its launcher image is
 * Debian 12's libvirt 9.0 / QEMU 7.2 for 1.7, Debian 13's 11.3 / 10.0 for 1.8+ (launcherDebian).
 */
import { readFileSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startControlPlane, type ControlPlane } from '../../cluster/control-plane.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { processesMentioning, run } from '../../support/process.ts';
import { ensureKubevirtImages, QEMU_UID, type KubevirtImages } from '../../kubevirt/images.ts';
import { nodeApiserverArgs, startNode, type Node } from '../../node/kubelet.ts';
import { waitFor } from '../../support/wait.ts';

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
  // the controller-manager's service account controller creates the namespace's "default" SA
  const c = cp;
  await waitFor(
    'service account default',
    60_000,
    async () => (await c.kubectlResult(['-n', NS, 'get', 'serviceaccount', 'default'])).exitCode === 0,
    500,
  );
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

/** Whether `pid` is `ancestor` or one of its descendants (parent chain from /proc/<pid>/stat). */
function descendsFrom(pid: number, ancestor: number): boolean {
  for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
    if (p === ancestor) return true;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${p}/stat`, 'utf8');
    } catch {
      return false;
    }
    p = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  }
  return false;
}

describe('KubeVirt images on the node', () => {
  it('virt-launcher image: file capability, users, binaries, libvirt as KubeVirt expects', async () => {
    if (!cp) throw new Error('no control plane');
    const script = [
      'getcap /usr/bin/virt-launcher-monitor',
      'id qemu; id libvirt-qemu',
      'for b in virt-launcher virt-launcher-monitor virt-freezer virt-probe virt-tail container-disk; do test -x /usr/bin/$b && echo "bin $b"; done',
      'echo "drivers $(ls /usr/lib/x86_64-linux-gnu/libvirt/connection-driver | tr "\\n" " ")"',
      'ldd /usr/bin/virt-launcher | grep "not found" || echo "virt-launcher libs ok"',
      '/usr/sbin/virtqemud --version',
      'qemu-system-x86_64 --version | head -1',
      'echo "virsh $(virsh --version)"',
      'ls /etc/libvirt/qemu.conf /etc/libvirt/virtqemud.conf /etc/libvirt/virtlogd.conf /etc/libvirt/hooks/qemu',
      'echo "sh $(grep CapEff /proc/self/status)"',
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
    await waitFor(
      'launcher-image-check to finish',
      180_000,
      async () => ['Succeeded', 'Failed'].includes((await podStatus('launcher-image-check')).status.phase ?? ''),
      1000,
    );
    const out = await cp.kubectl(['-n', NS, 'logs', 'launcher-image-check']);
    log(`launcher-image-check:\n${out}`);
    expect((await podStatus('launcher-image-check')).status.phase).toBe('Succeeded');
    expect(out).toMatch(/\/usr\/bin\/virt-launcher-monitor cap_net_bind_service=ep/);
    expect(out).toMatch(/uid=107\(qemu\) gid=107\(qemu\)/);
    expect(out).toMatch(/uid=64055\(libvirt-qemu\)/);
    for (const b of [
      'virt-launcher',
      'virt-launcher-monitor',
      'virt-freezer',
      'virt-probe',
      'virt-tail',
      'container-disk',
    ])
      expect(out).toContain(`bin ${b}\n`);
    expect(out).toMatch(/^drivers libvirt_driver_qemu\.so $/m);
    expect(out).toContain('virt-launcher libs ok');
    // The suite's libvirt and QEMU (launcherDebian: 9.0 / 7.2 for 1.7 on bookworm, 11.3 / 10.0 for 1.8+ on trixie).
    const { libvirt, qemu, suite } = images.launcherDebian;
    const dots = (v: string): string => v.replaceAll('.', '\\.');
    log(`launcher image ${images.launcher.name}: Debian ${suite}, expecting libvirt ${libvirt}, QEMU ${qemu}`);
    // libvirt 9.0 prints `libvirtd (libvirt) 9.0.0`, 11.3 its argv[0]: `/usr/sbin/libvirtd (libvirt) 11.3.0`.
    expect(out).toMatch(new RegExp(`^(?:/usr/sbin/)?libvirtd \\(libvirt\\) ${dots(libvirt)}\\.\\d+$`, 'm'));
    expect(out).toMatch(new RegExp(`^virsh ${dots(libvirt)}\\.\\d+$`, 'm'));
    expect(out).toMatch(new RegExp(`^QEMU emulator version ${dots(qemu)}\\.\\d+\\b`, 'm'));
    expect(out).toMatch(/^sh CapEff:\s+0+$/m); // a binary without file capabilities gets nothing (uid 107, no ambient caps)
  });

  for (const variant of ['non-root', 'root'] as const) {
    it(`the ${variant} compute container as rendered: virt-launcher starts virtqemud (libvirtd) and its command socket${variant === 'non-root' ? '; the file capability gives virt-launcher-monitor NET_BIND_SERVICE' : ''}`, async () => {
      if (!cp) throw new Error('no control plane');
      const nonRootPod = variant === 'non-root';
      const podName = `compute-check-${variant}`;
      const name = `capcheck-${variant}-${Date.now().toString(36)}`;
      const uid = '11111111-2222-3333-4444-555555555555';
      const mounts: Record<string, string> = {
        private: '/var/run/kubevirt-private',
        public: '/var/run/kubevirt',
        'ephemeral-disks': '/var/run/kubevirt-ephemeral-disks',
        'libvirt-runtime': '/var/run/libvirt',
        sockets: '/var/run/kubevirt/sockets',
        'container-disks': '/var/run/kubevirt/container-disks',
        'hotplug-disks': '/var/run/kubevirt/hotplug-disks',
      };
      // The rendered compute container (rendered/launcher-pod{,-nonroot}.yaml), without a handler:
      // virt-launcher starts libvirt and waits for a domain until --qemu-timeout.
      const pod = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: podName, namespace: NS },
        spec: {
          restartPolicy: 'Never',
          automountServiceAccountToken: false,
          securityContext: nonRootPod
            ? { runAsUser: QEMU_UID, runAsGroup: QEMU_UID, runAsNonRoot: true, fsGroup: QEMU_UID }
            : { runAsUser: 0, fsGroup: QEMU_UID },
          volumes: Object.keys(mounts).map((v) => ({ name: v, emptyDir: {} })),
          containers: [
            {
              name: 'compute',
              image: images.launcher.name,
              command: [
                '/usr/bin/virt-launcher-monitor',
                ...['--qemu-timeout', '60s', '--name', name, '--uid', uid, '--namespace', NS],
                ...[
                  '--kubevirt-share-dir',
                  '/var/run/kubevirt',
                  '--ephemeral-disk-dir',
                  '/var/run/kubevirt-ephemeral-disks',
                ],
                ...[
                  '--container-disk-dir',
                  '/var/run/kubevirt/container-disks',
                  '--grace-period-seconds',
                  '5',
                  '--hook-sidecars',
                  '0',
                ],
                ...['--ovmf-path', '/usr/share/OVMF', ...(nonRootPod ? ['--run-as-nonroot'] : []), '--allow-emulation'],
              ],
              env: [
                ...(nonRootPod
                  ? [
                      { name: 'XDG_CACHE_HOME', value: '/var/run/kubevirt-private' },
                      { name: 'XDG_CONFIG_HOME', value: '/var/run/kubevirt-private' },
                      { name: 'XDG_RUNTIME_DIR', value: '/var/run' },
                    ]
                  : []),
                { name: 'POD_NAME', value: podName },
              ],
              volumeMounts: Object.entries(mounts).map(([n, p]) => ({ name: n, mountPath: p })),
              securityContext: nonRootPod
                ? { ...nonRoot, capabilities: { drop: ['ALL'], add: ['NET_BIND_SERVICE'] } }
                : { runAsUser: 0, runAsNonRoot: false, capabilities: { add: ['NET_BIND_SERVICE', 'SYS_NICE'] } },
            },
          ],
        },
      };
      await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(pod) });
      try {
        const monitor = await waitFor(
          'virt-launcher-monitor process',
          120_000,
          () => processesMentioning(name, ['virt-launcher-monitor'])[0] ?? false,
          200,
        );
        const caps = async (pid: number): Promise<Record<string, string>> => {
          const status = await readFile(`/proc/${pid}/status`, 'utf8');
          return Object.fromEntries(
            [...status.matchAll(/^(Cap\w+|NoNewPrivs|Uid):\s+(.*)$/gm)].map((m) => [m[1] ?? '', m[2] ?? '']),
          );
        };
        const m = await caps(monitor);
        log(`${variant} virt-launcher-monitor ${JSON.stringify(m)}`);
        expect(m['Uid']?.split(/\s+/)[0]).toBe(String(nonRootPod ? QEMU_UID : 0));
        // virt-launcher runs virtqemud, i.e. our script that execs libvirtd, on its runtime copy of virtqemud.conf
        const libvirtd = await waitFor(
          'libvirtd (virtqemud) in the pod',
          120_000,
          () =>
            processesMentioning('/var/run/libvirt/virtqemud.conf', ['libvirtd']).find((p) =>
              descendsFrom(p, monitor),
            ) ?? false,
          500,
        );
        const l = await caps(libvirtd);
        log(`${variant} libvirtd ${JSON.stringify(l)}`);
        if (nonRootPod) {
          expect(m['NoNewPrivs']).toBe('1');
          expect(BigInt(`0x${m['CapEff'] ?? '0'}`)).toBe(1n << 10n); // NET_BIND_SERVICE only, from the file capability
          expect(BigInt(`0x${l['CapAmb'] ?? '0'}`)).toBe(1n << 10n); // handed on to virtqemud as an ambient capability
        }
        // libvirt is up: virt-launcher's command socket appears (launcher-init-sock, then launcher-sock once ready);
        // read through /proc/<pid>/root/run, not the image's absolute /var/run -> /run link (it would resolve on the host)
        const sockets = `/proc/${monitor}/root/run/kubevirt/sockets`;
        await waitFor(
          'virt-launcher command socket',
          120_000,
          async () => (await readdir(sockets).catch(() => [] as string[])).includes('launcher-sock'),
          500,
        );
      } finally {
        await cp
          .kubectl(['-n', NS, 'logs', podName])
          .then((l) => log(`${podName} log (tail):\n${l.split('\n').slice(-8).join('\n')}`))
          .catch(() => undefined);
        await cp.kubectl(['-n', NS, 'delete', 'pod', podName, '--wait=false']);
      }
    });
  }

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
          {
            name: 'volumerootdisk-init',
            image: images.containerDisk.name,
            command: ['/usr/bin/container-disk'],
            args: ['--no-op'],
            volumeMounts,
            securityContext: nonRoot,
            ...limits,
          },
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
    await waitFor(
      'containerdisk-check Ready',
      180_000,
      async () =>
        (await podStatus('containerdisk-check')).status.conditions?.some(
          (c) => c.type === 'Ready' && c.status === 'True',
        ) === true,
      1000,
    );
    const pids = processesMentioning(`${dataDir}/disk_0`, ['container-disk']);
    expect(pids).toHaveLength(1);
    const root = `/proc/${pids[0]}/root`;
    const disk = await stat(`${root}/disk/disk.qcow2`);
    expect([disk.uid, disk.gid]).toEqual([QEMU_UID, QEMU_UID]);
    // container-disk --copy-path <p> listens on <p>.sock (virt-handler's liveness check of the volume container)
    await waitFor(
      'container-disk socket',
      30_000,
      async () => (await stat(`${root}${dataDir}/disk_0.sock`).catch(() => undefined))?.isSocket() === true,
      500,
    );
    const { stdout } = await run([
      'qemu-img',
      'compare',
      '-U',
      '-f',
      'qcow2',
      '-F',
      'qcow2',
      images.containerDiskReference,
      `${root}/disk/disk.qcow2`,
    ]);
    expect(stdout).toMatch(/Images are identical/);
  });
});
