/**
 * Real KubeVirt, each version a committed wrapper module pins (v1.7.0 and v1.8.4, built from the Go
 * module proxy: test/e2e/kubevirt/README.md), one after the other in this file (run one with
 * `-t 'KubeVirt v1.7.0'`): VMIs created with kubectl are rendered into
 * launcher pods by the REAL virt-controller, run by our kubelet + containerd, and the REAL
 * virt-launcher defines and runs the domain with its containerDisk overlay on the ephemeral-disks
 * emptyDir. The one imitated piece is the handler stand-in (test/e2e/kubevirt/handler.ts), which
 * puts the containerDisk in place, calls SyncVirtualMachine and sets the VMI Running.
 *
 * The operator runs as the Helm chart's Deployment from the image built from the Dockerfile, over
 * pods/exec, with the chart's exec ValidatingAdmissionPolicy on: the operator's ServiceAccount
 * may run only the operator's own commands (test/e2e/ship/exec-policy.ts). Its own control plane and node: KubeVirt's real CRDs must not replace the global
 * cluster's hand-written VMI CRD that the other specs use.
 */
import { randomUUID } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startControlPlane, type ControlPlane } from '../../cluster/control-plane.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { installCrds, operatorCrdFiles } from '../../cluster/crds.ts';
import { blockPullManifest, getBlockPull, waitForPhase, type BlockPullView } from '../../operator-fixture/fixture.ts';
import { testImage } from '../../images/images.ts';
import { operatorImage } from '../../images/operator.ts';
import { ensureKubevirtBinaries, pinnedKubevirtVersions } from '../../kubevirt/binaries.ts';
import { kubevirtCrdFiles } from '../../kubevirt/crds.ts';
import { ensureKubevirtImages, type LauncherDebian } from '../../kubevirt/images.ts';
import { isRelease, parseVirshVersion } from '../../kubevirt/image-checks.ts';
import { launcherUri, startKubevirt, vmiManifest, type Kubevirt } from '../../kubevirt/kubevirt.ts';
import { nodeApiserverArgs, nodeLeftovers, startNode, type Node } from '../../node/kubelet.ts';
import { run } from '../../support/process.ts';
import { waitFor } from '../../support/wait.ts';
import { ensureHelm } from '../../ship/helm.ts';
import { allowedExecCases, deniedExecCases, isPolicyDenial, probeExec } from '../../ship/exec-policy.ts';
import { createServiceAccountKubeconfig } from '../../cluster/service-account.ts';
import { KubeConfig } from '@kubernetes/client-node';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { virshArgv } from '../../../../operator/src/hypervisor/commands.ts';
import { ExecRunner } from '../../../../operator/src/kubevirt/exec-runner.ts';
import { locateLauncher, PodSchema, VmiSchema, type Vmi } from '../../../../operator/src/kubevirt/launcher.ts';
import { parseBlockJobRaw } from '../../../../operator/src/hypervisor/virsh-parse.ts';
import { chainInDomainXml } from '../../launcher/disk-chain.ts';

const NS = 'kv-e2e';
const OP_NS = 'blockpull-system';
/** The chart's ServiceAccount for release blockpull-operator (the full name is the release name). */
const OP_SA = 'blockpull-operator';
const DISK = 'rootdisk';
const OVERLAY = `/var/run/kubevirt-ephemeral-disks/disk-data/${DISK}/disk.qcow2`;
const BASE = '/var/run/kubevirt/container-disks/disk_0.img';

/** The launcher pod as the operator parses it (PodSchema), plus the fields this file asserts on. */
const PodView = PodSchema.extend({
  metadata: PodSchema.shape.metadata.extend({ uid: z.string() }),
  spec: PodSchema.shape.spec.unwrap().extend({
    securityContext: z.looseObject({ runAsUser: z.number().optional() }).optional(),
    containers: z.array(
      z.looseObject({
        name: z.string(),
        image: z.string(),
        securityContext: z.looseObject({ runAsUser: z.number().optional() }).optional(),
      }),
    ),
  }),
});
type PodView = z.infer<typeof PodView>;

/** The VMIs of this file: created together (each launcher takes ~30-60 s to start on a loaded machine). */
const VMS = {
  flat: { name: 'vm-flat', user: 107 },
  ops: { name: 'vm-ops', user: 107 },
  del: { name: 'vm-del', user: 107 },
  root: { name: 'vm-root', user: 0 },
} as const;
type VmKey = keyof typeof VMS;

/** Every KubeVirt version a committed wrapper module pins (v1.7.0 first, then v1.8.4): the same specs on each. */
for (const version of pinnedKubevirtVersions()) realKubevirt(version);

/** The whole file for one KubeVirt version: its own binaries, images, CRDs, control plane and node. */
function realKubevirt(version: string): void {
  describe(`KubeVirt ${version}`, () => {
    const STATE_DIR = path.join(REPO_ROOT, '.cache', `real-kubevirt-cluster-${version}`);
    let cp: ControlPlane | undefined;
    let node: Node | undefined;
    let kv: Kubevirt | undefined;
    let tmp = '';
    let containerDiskReference = '';
    let launcherDebian: LauncherDebian | undefined;
    const timings: Record<string, number> = {};
    let suiteStart = 0;

    const launchers: Partial<Record<VmKey, { vmiUid: string; pod: PodView }>> = {};

    function c(): ControlPlane {
      if (!cp) throw new Error('not started');
      return cp;
    }

    async function vmi(name: string): Promise<Vmi> {
      return VmiSchema.parse(JSON.parse(await c().kubectl(['-n', NS, 'get', 'vmi', name, '-o', 'json'])));
    }

    /**
     * The pod KubeVirt counts as the VMI's launcher, found as the operator finds it (locateLauncher:
     * controlled by the VMI, in status.activePods, on its node, Running); its one key of activePods.
     */
    async function launcherOf(key: VmKey): Promise<{ vmiUid: string; pod: PodView }> {
      const v = await vmi(VMS[key].name);
      const uids = Object.keys(v.status?.activePods ?? {});
      expect(uids).toHaveLength(1);
      const pods = z
        .object({ items: z.array(PodView) })
        .parse(
          JSON.parse(
            await c().kubectl([
              '-n',
              NS,
              'get',
              'pods',
              '-l',
              `kubevirt.io/created-by=${v.metadata.uid}`,
              '-o',
              'json',
            ]),
          ),
        );
      const found = locateLauncher(NS, VMS[key].name, v, pods.items);
      if (found.kind !== 'found')
        throw new Error(`no launcher pod for VMI ${VMS[key].name}: ${found.kind}: ${found.message}`);
      const pod = pods.items.find((p) => p.metadata.name === found.launcher.pod);
      if (!pod) throw new Error(`pod ${found.launcher.pod} of VMI ${VMS[key].name} not listed`);
      return { vmiUid: v.metadata.uid, pod };
    }

    async function exec(key: VmKey, argv: readonly string[]): Promise<string> {
      const l = launchers[key];
      if (!l) throw new Error(`${key}: no launcher`);
      return c().kubectl(['-n', NS, 'exec', l.pod.metadata.name, '-c', 'compute', '--', ...argv]);
    }
    const virsh = (key: VmKey, args: readonly string[]): Promise<string> =>
      exec(key, ['virsh', '-c', launcherUri(VMS[key].user), ...args]);
    const domain = (key: VmKey): string => `${NS}_${VMS[key].name}`;
    /** A guest-like write: QEMU's own qemu-io on the disk's block backend (HMP), i.e. through the running VM's block layer. */
    const qemuIo = async (key: VmKey, cmd: string): Promise<void> => {
      const out = await virsh(key, [
        'qemu-monitor-command',
        domain(key),
        '--hmp',
        `qemu-io -d /machine/peripheral/ua-${DISK}/virtio-backend "${cmd}"`,
      ]);
      expect(out).not.toMatch(/error|failed/i);
    };
    const chain = async (key: VmKey): Promise<string[]> =>
      chainInDomainXml(await virsh(key, ['dumpxml', domain(key)]), DISK).map((l) => l.path);
    /**
     * QEMU's block job on vda as virsh reports it (`-q ... --raw --bytes`, read by the driver's parser:
     * type, bandwidth in bytes/s, cur, end); undefined when none runs.
     */
    const blockJob = async (key: VmKey): Promise<{ type: string; bandwidth: number } | undefined> => {
      const job = parseBlockJobRaw(
        await exec(key, [
          'virsh',
          '-q',
          '-c',
          launcherUri(VMS[key].user),
          'blockjob',
          domain(key),
          'vda',
          '--raw',
          '--bytes',
        ]),
      );
      return job === null ? undefined : { type: job.type, bandwidth: job.bandwidth };
    };

    beforeAll(async () => {
      suiteStart = Date.now();
      tmp = mkdtempSync(path.join(os.tmpdir(), 'real-kubevirt-'));
      let t = Date.now();
      const bins = await ensureKubevirtBinaries({ version });
      timings.kubevirtBinariesMs = Date.now() - t;
      t = Date.now();
      const images = await ensureKubevirtImages({ binaries: bins });
      containerDiskReference = images.containerDiskReference;
      launcherDebian = images.launcherDebian;
      const [op, test, helm] = [await operatorImage(), await testImage(), await ensureHelm()];
      timings.imagesMs = Date.now() - t;
      t = Date.now();
      cp = await startControlPlane({ stateDir: STATE_DIR, extraApiserverArgs: nodeApiserverArgs(STATE_DIR) });
      const crdFiles = await kubevirtCrdFiles({ cluster: cp, binaries: bins });
      // The BlockPull CRD only: KubeVirt's own CRDs (startKubevirt), not the hand-written test VMI/VMIM ones.
      await installCrds(cp, await operatorCrdFiles());
      node = await startNode(cp, { images: [images.launcher, images.containerDisk, op, test] });
      timings.clusterMs = Date.now() - t;
      t = Date.now();
      kv = await startKubevirt(cp, node, {
        virtController: bins.virtController,
        version: bins.version,
        launcherImage: images.launcher.name,
        crdFiles,
      });
      timings.kubevirtMs = Date.now() - t;
      await cp.kubectl(['create', 'namespace', NS]);
      await waitFor(
        'default service account',
        60_000,
        async () => (await c().kubectlResult(['-n', NS, 'get', 'serviceaccount', 'default'])).exitCode === 0,
        500,
      );

      // All VMIs at once, created with kubectl as a user would.
      t = Date.now();
      for (const { name, user } of Object.values(VMS)) {
        const manifest = vmiManifest({
          namespace: NS,
          name,
          containerDiskImage: images.containerDisk.name,
          runtimeUser: user,
          uuid: randomUUID(),
        });
        await cp.kubectl(['create', '-f', '-'], { input: JSON.stringify(manifest) });
      }

      // The operator as the chart's Deployment, from the Dockerfile image, while the VMs start.
      const tOp = Date.now();
      const colon = op.name.lastIndexOf(':');
      const rendered = await run(
        [
          helm,
          'template',
          'blockpull-operator',
          path.join(REPO_ROOT, 'charts', 'blockpull-operator'),
          '--namespace',
          OP_NS,
          '--set',
          `image.repository=${op.name.slice(0, colon)}`,
          '--set',
          `image.tag=${op.name.slice(colon + 1)}`,
          '--set',
          'image.pullPolicy=Never',
          '--set',
          'replicaCount=1',
          '--set',
          'operator.logLevel=debug',
          // What `helm install` learns from this API server (it serves the v1 policy API): offline,
          // helm template knows group versions only, not kinds, and would leave the exec policy out.
          '--api-versions',
          'admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy',
        ],
        { timeoutMs: 60_000, allowExit: true },
      );
      if (rendered.exitCode !== 0) throw new Error(`helm template: ${rendered.stderr}`);
      if (!/^kind: ValidatingAdmissionPolicyBinding$/m.test(rendered.stdout))
        throw new Error('helm template rendered no exec policy');
      await cp.kubectl(['create', 'namespace', OP_NS]);
      await cp.kubectl(['apply', '-f', '-'], { input: rendered.stdout });
      await cp.kubectl(['-n', OP_NS, 'rollout', 'status', 'deployment/blockpull-operator', '--timeout=180s'], {
        timeoutMs: 190_000,
      });
      timings.operatorDeploymentMs = Date.now() - tOp;

      await waitFor(
        'all VMIs Running',
        300_000,
        async () => {
          const list = z
            .object({ items: z.array(VmiSchema) })
            .parse(JSON.parse(await c().kubectl(['-n', NS, 'get', 'vmi', '-o', 'json'])));
          return (
            list.items.length === Object.keys(VMS).length && list.items.every((v) => v.status?.phase === 'Running')
          );
        },
        1000,
      );
      timings.vmisRunningMs = Date.now() - t;
      for (const key of Object.keys(VMS) as VmKey[]) launchers[key] = await launcherOf(key);
    }, 1_800_000);

    afterAll(async () => {
      const n = node;
      const t = Date.now();
      try {
        if (cp) await cp.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
        await kv?.stop();
        await n?.stop();
      } finally {
        await cp?.stop();
        if (tmp) rmSync(tmp, { recursive: true, force: true });
      }
      timings.teardownMs = Date.now() - t;
      timings.versionMs = Date.now() - suiteStart;
      process.stderr.write(`[real-kubevirt ${version}] timings (ms): ${JSON.stringify(timings)}\n`);
      if (n) expect(await nodeLeftovers(n.runDir, n)).toEqual([]);
    }, 300_000);

    describe('real KubeVirt: virt-controller renders, our kubelet runs, virt-launcher boots the domain', () => {
      it('a VMI with a containerDisk, created with kubectl, runs in the pod virt-controller rendered, as uid 107', async () => {
        const { vmiUid, pod } = launchers.flat!;
        // KubeVirt's own VMI CRD (it also serves v1alpha3), not the hand-written test one.
        expect(
          (
            await c().kubectl([
              'get',
              'crd',
              'virtualmachineinstances.kubevirt.io',
              '-o',
              'jsonpath={.spec.versions[*].name}',
            ])
          )
            .split(' ')
            .sort(),
        ).toEqual(['v1', 'v1alpha3']);
        // Our CRD installed beside KubeVirt's leaves `kubectl get kubevirt` to KubeVirt's own resource.
        expect((await c().kubectl(['-n', 'kubevirt', 'get', 'kubevirt', '-o', 'name'])).trim()).toBe(
          'kubevirt.kubevirt.io/kubevirt',
        );
        // Rendered by virt-controller: its labels, its controller reference, its containers.
        expect(pod.metadata.labels).toMatchObject({
          'kubevirt.io': 'virt-launcher',
          'kubevirt.io/created-by': vmiUid,
          'vm.kubevirt.io/name': VMS.flat.name,
        });
        expect(pod.metadata.name).toMatch(new RegExp(`^virt-launcher-${VMS.flat.name}-[a-z0-9]{5}$`));
        expect(pod.metadata.ownerReferences).toEqual([
          expect.objectContaining({
            kind: 'VirtualMachineInstance',
            name: VMS.flat.name,
            uid: vmiUid,
            controller: true,
          }),
        ]);
        expect(pod.spec.containers.map((x) => x.name)).toEqual(['compute', `volume${DISK}`]);
        expect(pod.spec.securityContext?.runAsUser).toBe(107);
        expect(pod.spec.nodeName).toBe(node!.name);
        expect((await exec('flat', ['id', '-u'])).trim()).toBe('107');
        expect((await virsh('flat', ['domstate', domain('flat')])).trim()).toBe('running');
        // virt-launcher's own overlay on the ephemeral-disks emptyDir over the containerDisk.
        expect(await chain('flat')).toEqual([OVERLAY, BASE]);
        const v = await vmi(VMS.flat.name);
        expect(v.status).toMatchObject({
          phase: 'Running',
          nodeName: node!.name,
          runtimeUser: 107,
          activePods: { [pod.metadata.uid]: node!.name },
        });
      });

      it('a root launcher (runtimeUser 0) runs too, on qemu:///system', async () => {
        const { pod } = launchers.root!;
        expect(pod.spec.securityContext?.runAsUser).toBe(0);
        expect((await exec('root', ['id', '-u'])).trim()).toBe('0');
        expect((await virsh('root', ['domstate', domain('root')])).trim()).toBe('running');
        expect(await chain('root')).toEqual([OVERLAY, BASE]);
      });

      it("the launcher's libvirt and QEMU are its image's Debian's (virsh version over the operator's exec transport)", async () => {
        const debian = launcherDebian!;
        const kc = new KubeConfig();
        kc.loadFromFile(c().kubeconfigPath);
        for (const key of ['flat', 'root'] as const) {
          // The transport the operator runs virsh with (ExecRunner, pods/exec into compute), as the admin:
          // the chart's exec policy admits only the driver's own commands for the operator's account.
          const runner = new ExecRunner({ kc, namespace: NS, pod: launchers[key]!.pod.metadata.name });
          const r = await runner.run(['virsh', '-c', launcherUri(VMS[key].user), 'version'], { timeoutMs: 30_000 });
          process.stderr.write(`[real-kubevirt ${version}] ${key} launcher, virsh version:\n${r.stdout}`);
          expect(r.exitCode, r.stderr).toBe(0);
          const v = parseVirshVersion(r.stdout);
          const want = `libvirt ${debian.libvirt}.x and QEMU ${debian.qemu}.x (Debian ${debian.suite})`;
          expect(isRelease(v.library, debian.libvirt), `${key}: library ${v.library}, want ${want}`).toBe(true);
          expect(isRelease(v.compiledAgainst, debian.libvirt), `${key}: virsh ${v.compiledAgainst}, want ${want}`).toBe(
            true,
          );
          expect(isRelease(v.hypervisor, debian.qemu), `${key}: QEMU ${v.hypervisor}, want ${want}`).toBe(true);
        }
      });
    });

    describe('the operator (chart Deployment, pods/exec) on the real launcher', () => {
      it('flattens the real overlay of the pod KubeVirt counts as the launcher; guest writes during the pull are kept; data identical', async () => {
        const cl = c();
        const { vmiUid, pod } = launchers.flat!;
        // A decoy: claims the VMI by label, newer than the real pod, has a `compute` container; not controlled by the VMI.
        const decoy = {
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: {
            name: `virt-launcher-${VMS.flat.name}-decoy`,
            namespace: NS,
            labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': vmiUid },
          },
          spec: {
            nodeName: node!.name,
            containers: [{ name: 'compute', image: (await testImage()).name, command: ['sleep', '3600'] }],
          },
        };
        await cl.kubectl(['apply', '-f', '-'], { input: JSON.stringify(decoy) });
        await cl.kubectl(['-n', NS, 'wait', '--for=condition=Ready', `pod/${decoy.metadata.name}`, '--timeout=60s'], {
          timeoutMs: 70_000,
        });

        const t0 = Date.now();
        await cl.kubectl(['apply', '-f', '-'], {
          input: blockPullManifest({
            namespace: NS,
            name: 'flatten',
            vmiName: VMS.flat.name,
            disk: DISK,
            spec: { bandwidth: '1Mi' },
          }),
        });
        await waitForPhase(cl, NS, 'flatten', ['Running'], 120_000);
        // Guest-like writes while the job runs: over base data, and where the base has none.
        const writes = ['write -P 0x71 1M 512k', 'write -P 0x72 40M 1M'];
        for (const w of writes) await qemuIo('flat', w);
        const running = (await getBlockPull(cl, NS, 'flatten'))!;
        expect(running.status?.phase, 'the writes landed while the pull ran').toBe('Running');
        const done = await waitForPhase(cl, NS, 'flatten', ['Completed', 'Failed'], 240_000);
        timings.flattenMs = Date.now() - t0;
        expect(done.status?.phase, JSON.stringify(done.status)).toBe('Completed');
        // Exactly KubeVirt's launcher: controlled by the VMI, the key of its status.activePods.
        expect(done.status?.launcher).toMatchObject({
          pod: pod.metadata.name,
          node: node!.name,
          container: 'compute',
          domain: domain('flat'),
          target: 'vda',
        });
        expect((await virsh('flat', ['domstate', domain('flat')])).trim()).toBe('running');
        expect(await chain('flat')).toEqual([OVERLAY]);

        // The flattened overlay, copied from the pod's ephemeral-disks emptyDir on the host, against the
        // containerDisk's own image plus the same writes.
        await qemuIo('flat', 'flush');
        const hostOverlay = path.join(
          node!.runDir,
          'kubelet',
          'pods',
          pod.metadata.uid,
          'volumes',
          'kubernetes.io~empty-dir',
          'ephemeral-disks',
          'disk-data',
          DISK,
          'disk.qcow2',
        );
        const flat = path.join(tmp, 'flat.qcow2');
        copyFileSync(hostOverlay, flat);
        const info = z
          .object({ 'backing-filename': z.string().optional() })
          .parse(JSON.parse((await run(['qemu-img', 'info', '-U', '--output=json', flat])).stdout));
        expect(info['backing-filename']).toBeUndefined();
        const ref = path.join(tmp, 'ref.qcow2');
        await run(['qemu-img', 'convert', '-O', 'qcow2', containerDiskReference, ref]);
        for (const w of writes) await run(['qemu-io', '-f', 'qcow2', '-c', w, ref]);
        const cmp = await run(['qemu-img', 'compare', '-U', flat, ref], { allowExit: true });
        expect(cmp.stdout.trim()).toBe('Images are identical.');
        // ...and the writes really changed something (so the comparison could fail).
        const plain = await run(['qemu-img', 'compare', '-U', flat, containerDiskReference], { allowExit: true });
        expect(plain.exitCode).toBe(1);
        // The operator that did it is the chart's Deployment, on the exec transport.
        const logs = await cl.kubectl(['-n', OP_NS, 'logs', 'deployment/blockpull-operator']);
        const lines = logs
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as Record<string, unknown>);
        expect(lines.find((l) => l['msg'] === 'starting blockpull-operator')?.['transport']).toBe('exec');
        await cl.kubectl(['-n', NS, 'delete', 'pod', decoy.metadata.name, '--wait=false']);
      }, 400_000);

      it('flattens a root launcher too (libvirt qemu:///system)', async () => {
        const t0 = Date.now();
        await c().kubectl(['apply', '-f', '-'], {
          input: blockPullManifest({ namespace: NS, name: 'flatten-root', vmiName: VMS.root.name, disk: DISK }),
        });
        const done = await waitForPhase(c(), NS, 'flatten-root', ['Completed', 'Failed'], 240_000);
        timings.flattenRootMs = Date.now() - t0;
        expect(done.status?.phase, JSON.stringify(done.status)).toBe('Completed');
        expect(done.status?.launcher?.['pod']).toBe(launchers.root!.pod.metadata.name);
        expect(await chain('root')).toEqual([OVERLAY]);
        expect((await virsh('root', ['domstate', domain('root')])).trim()).toBe('running');
      }, 300_000);

      it("the chart's exec policy is on: the operator's account runs the driver's commands on the real launcher, nothing else", async () => {
        const cl = c();
        const t0 = Date.now();
        expect(
          (
            await cl.kubectl([
              'get',
              'validatingadmissionpolicybinding',
              `${OP_SA}-exec`,
              '-o',
              'jsonpath={.spec.policyName}',
            ])
          ).trim(),
        ).toBe(`${OP_SA}-exec`);
        const saKubeconfig = await createServiceAccountKubeconfig(cl, OP_NS, OP_SA, { dir: tmp });
        const kc = new KubeConfig();
        kc.loadFromFile(saKubeconfig);
        const pod = launchers.flat!.pod.metadata.name;
        const uri = launcherUri(VMS.flat.user);
        // The operator's own driver, over pods/exec with the operator's token: every command it runs is admitted and runs.
        const runner = new ExecRunner({ kc, namespace: NS, pod });
        const driver = new VirshDriver(runner, uri);
        const disk = await driver.getDisk(domain('flat'), { name: DISK });
        expect(disk.chain.map((l) => l.path)).toEqual([OVERLAY]);
        expect(await driver.getJob(domain('flat'), disk.target)).toBeNull();
        const space = await driver.getSpace(domain('flat'), { disk, measureUsage: true });
        expect(space).toMatchObject({
          kind: 'measured',
          topPath: OVERLAY,
          pullBytes: 0,
          usage: { mountPoint: expect.any(String) as unknown },
        });
        for (const sub of ['event', 'qemu-monitor-event'] as const) {
          const args =
            sub === 'event'
              ? ['--domain', domain('flat'), '--event', 'block-job-2', '--loop']
              : ['--domain', domain('flat'), '--event', 'BLOCK_JOB_COMPLETED', '--loop'];
          const h = runner.stream(virshArgv(uri, sub, args));
          await new Promise((r) => setTimeout(r, 3000));
          h.stop();
          // Admitted and ran until stopped (a refused exec ends in a RunTransportError instead).
          await expect(h.done, `virsh ${sub}`).resolves.toBeDefined();
        }
        // The same shapes, asked without an upgrade: admitted (the kubelet answers, not the policy).
        for (const a of allowedExecCases(domain('flat'))) {
          const r = await probeExec(saKubeconfig, NS, pod, a);
          expect(r.status, `${a.what}: ${r.message}`).not.toBe(403);
          expect(r.message, a.what).not.toContain('ValidatingAdmissionPolicy');
        }
        // Everything else is refused at admission with the policy's message.
        for (const d of deniedExecCases(domain('flat'))) {
          const r = await probeExec(saKubeconfig, NS, pod, d);
          expect(isPolicyDenial(r, d.message), `${d.what}: ${r.status} ${r.message}`).toBe(true);
        }
        // The operator's own transport gets the same refusal (a RunTransportError saying 403), and the VM lives on.
        await expect(
          runner.run(['virsh', '-q', '-c', uri, 'destroy', domain('flat')], { timeoutMs: 30_000 }),
        ).rejects.toThrow(/cannot exec virsh: Unexpected server response: 403$/);
        expect((await virsh('flat', ['domstate', domain('flat')])).trim()).toBe('running');
        timings.execPolicyMs = Date.now() - t0;
      }, 300_000);

      it('bandwidth change, pause and resume, and deleting a running BlockPull (abort)', async () => {
        const cl = c();
        const name = 'ops';
        const t0 = Date.now();
        await cl.kubectl(['apply', '-f', '-'], {
          input: blockPullManifest({
            namespace: NS,
            name,
            vmiName: VMS.ops.name,
            disk: DISK,
            spec: { bandwidth: '64Ki' },
          }),
        });
        await waitForPhase(cl, NS, name, ['Running'], 120_000);
        await waitFor('QEMU job at 64Ki/s', 60_000, async () => (await blockJob('ops'))?.bandwidth === 65536, 500);
        expect((await blockJob('ops'))?.type).toBe('Block Pull');

        await cl.kubectl([
          '-n',
          NS,
          'patch',
          'blockpull',
          name,
          '--type=merge',
          '-p',
          JSON.stringify({ spec: { bandwidth: '128Ki' } }),
        ]);
        await waitFor('QEMU job at 128Ki/s', 60_000, async () => (await blockJob('ops'))?.bandwidth === 131072, 500);

        await cl.kubectl([
          '-n',
          NS,
          'patch',
          'blockpull',
          name,
          '--type=merge',
          '-p',
          JSON.stringify({ spec: { paused: true } }),
        ]);
        const paused = await waitForPhase(cl, NS, name, ['Paused'], 60_000);
        expect(paused.status?.reason).toBe('Paused');
        expect(await blockJob('ops')).toBeUndefined();
        expect((await chain('ops')).length).toBe(2);

        await cl.kubectl([
          '-n',
          NS,
          'patch',
          'blockpull',
          name,
          '--type=merge',
          '-p',
          JSON.stringify({ spec: { paused: false } }),
        ]);
        await waitForPhase(cl, NS, name, ['Running'], 60_000);
        await waitFor(
          'QEMU job again after resume, at the spec bandwidth',
          60_000,
          async () => (await blockJob('ops'))?.bandwidth === 131072,
          500,
        );
        expect((await getBlockPull(cl, NS, name))?.status?.attempts).toBe(2);

        await cl.kubectl(['-n', NS, 'delete', 'blockpull', name, '--wait=true', '--timeout=60s'], {
          timeoutMs: 70_000,
        });
        expect(await getBlockPull(cl, NS, name)).toBeUndefined();
        expect(await blockJob('ops')).toBeUndefined();
        expect(await chain('ops')).toEqual([OVERLAY, BASE]); // aborted, not completed
        expect((await virsh('ops', ['domstate', domain('ops')])).trim()).toBe('running');
        timings.operationsMs = Date.now() - t0;
      }, 400_000);

      it('deleting the VMI mid-pull: Pending / VMINotFound once it is gone (docs/api.md), and the BlockPull can be deleted', async () => {
        const cl = c();
        const name = 'del';
        const t0 = Date.now();
        await cl.kubectl(['apply', '-f', '-'], {
          input: blockPullManifest({
            namespace: NS,
            name,
            vmiName: VMS.del.name,
            disk: DISK,
            spec: { bandwidth: '64Ki' },
          }),
        });
        await waitForPhase(cl, NS, name, ['Running'], 120_000);
        await cl.kubectl(['-n', NS, 'delete', 'vmi', VMS.del.name, '--wait=false']);
        const seen: string[] = [];
        const after: BlockPullView = await waitFor(
          'BlockPull Pending/VMINotFound',
          180_000,
          async () => {
            const bp = await getBlockPull(cl, NS, name);
            const s = `${bp?.status?.phase}/${bp?.status?.reason}`;
            if (seen.at(-1) !== s) seen.push(s);
            return bp?.status?.phase === 'Pending' && bp.status.reason === 'VMINotFound' ? bp : undefined;
          },
          500,
        );
        timings.vmiDeleteToVmiNotFoundMs = Date.now() - t0;
        process.stderr.write(
          `[real-kubevirt ${version}] BlockPull phases after the VMI delete: ${seen.join(' -> ')}\n`,
        );
        expect(after.status?.message).toMatch(new RegExp(`VirtualMachineInstance ${NS}/${VMS.del.name} not found`));
        expect(seen).not.toContain('Failed/JobFailed');
        // The handler stand-in shut the domain down and KubeVirt cleaned up: launcher pod gone.
        const podName = launchers.del!.pod.metadata.name;
        await waitFor(
          'launcher pod gone',
          120_000,
          async () => (await cl.kubectlResult(['-n', NS, 'get', 'pod', podName])).exitCode !== 0,
          500,
        );
        timings.vmiDeleteToPodGoneMs = Date.now() - t0;
        const handlerLog = readFileSync(kv!.logs.handler, 'utf8')
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as Record<string, unknown>);
        const about = handlerLog.filter((l) => l['vmi'] === `${NS}/${VMS.del.name}`).map((l) => l['msg']);
        // virt-controller marks the VMI Failed and lets it go as soon as its pod is being deleted (often
        // before the stand-in's next look); the stand-in then kills the domain whose VMI is gone.
        expect(about).toContain('domain killed');
        await cl.kubectl(['-n', NS, 'delete', 'blockpull', name, '--wait=true', '--timeout=60s'], {
          timeoutMs: 70_000,
        });
      }, 300_000);
    });
  });
}
