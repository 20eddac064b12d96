/**
 * KubeVirt's own chain operations always win over a pull. The operator process (as the chart's
 * ServiceAccount: its read access to VirtualMachineSnapshots and VirtualMachineBackups comes from
 * files/rbac-rules.yaml) against the real control plane, with a launcher stand-in (libvirtd
 * session + QEMU, real qcow2 chains). The tests do what KubeVirt does, and say so:
 * - an external snapshot (VEP 321): virt-launcher's libvirt calls, made on the stand-in as its
 *   user: `virsh snapshot-create-as --disk-only --atomic --no-metadata` with every disk's overlay
 *   (`ovl-<disk>.qcow2`) in a scratch directory (KubeVirt's hot-plugged scratch PVC), later
 *   `virsh blockcommit --active --shallow --pivot` of every disk (see kubevirtCommit) and the
 *   scratch removed; virt-controller's
 *   object change: the VMI condition OverlaySnapshotActive=True (reason SnapshotInProgress) while
 *   the overlays exist, removed after the commit;
 * - a VirtualMachineSnapshot and a VirtualMachineBackup: the objects and their status as
 *   virt-controller writes them (phase; conditions Progressing/Complete), on test-only CRDs
 *   installed half-way: until then the cluster is KubeVirt 1.7's (neither kind served), and the
 *   operator must start and work there;
 * - a volume migration (a VM's updateVolumesStrategy Migration): virt-controller's object change,
 *   the VMI condition VolumesChange=True (message "migrate volumes", no reason) with
 *   status.migratedVolumes, ended here as its cancellation ends it (condition False, reason
 *   VolumesChangeCancellation, migratedVolumes cleared): the stand-in cannot be migrated, and a
 *   cancelled volume migration leaves the VMI on its pod and disks, as here;
 * - changed block tracking: Debian 12's libvirt 9.0 (the stand-in's) does not know `<dataStore>`
 *   and drops it from the domain, so the domain XML the operator reads comes from a scripted virsh
 *   answering as libvirt 10.10+ does for KubeVirt's CBT overlay (test/e2e/launcher/fake-launcher.ts).
 * Data is checked with qemu-img compare against a reference taken before each pull.
 */
import { chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { stringify } from 'yaml';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import { installCrds, VMBACKUP_CRD_FILE, VMSNAPSHOT_CRD_FILE } from '../../cluster/crds.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  watchPhases,
  waitForPhase,
  type BlockPullView,
  type OperatorProcess,
  type PhaseWatch,
} from '../../operator-fixture/fixture.ts';
import { registerFakeLauncher, type FakeLauncher } from '../../launcher/fake-launcher.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';
import { run } from '../../support/process.ts';
import { sleep, waitFor } from '../../support/wait.ts';

const NS = 'bp-coexist';
const VMI = 'vm1';
const MiB = 1024 * 1024;
const DISKS = ['window', 'running', 'hotplug', 'vmsnap', 'backup', 'volnew', 'volrun'] as const;
const TEST_CRDS = ['virtualmachinesnapshots.snapshot.kubevirt.io', 'virtualmachinebackups.backup.kubevirt.io'];

describe("BlockPull and KubeVirt's own chain operations", () => {
  let kube: ClusterClient;
  let registryDir: string;
  let tmp: string;
  let saKubeconfig: string;
  let launcher: Launcher;
  let driver: VirshDriver;
  let cbt: FakeLauncher | undefined;
  let operator: OperatorProcess | undefined;
  const operators: OperatorProcess[] = [];
  /** Every phase seen per BlockPull (a Failed phase must never show). */
  let phases: PhaseWatch | undefined;

  const apply = async (
    name: string,
    disk: string,
    spec: Record<string, unknown> = {},
    vmiName = VMI,
  ): Promise<void> => {
    const file = path.join(tmp, `${name}.yaml`);
    await writeFile(file, blockPullManifest({ namespace: NS, name, vmiName, disk, spec }));
    await kube.kubectl(['apply', '-f', file]);
  };
  const target = (disk: string): string => launcher.disks.find((d) => d.name === disk)!.target;
  const jobOn = (disk: string) => driver.getJob(launcher.domain, target(disk));
  const chainOf = async (disk: string): Promise<string[]> =>
    (await driver.getDisk(launcher.domain, { name: disk })).chain.map((l) => l.path);
  const patchVmiStatus = (status: Record<string, unknown>): Promise<string> =>
    kube.kubectl(['patch', 'vmi', VMI, '-n', NS, '--type=merge', '-p', JSON.stringify({ status })]);
  const runningWithProgress = (name: string): Promise<BlockPullView> =>
    waitFor(`${name} Running with progress`, 60_000, async () => {
      const bp = await getBlockPull(kube, NS, name);
      return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0 ? bp : undefined;
    });
  const statusIs = (name: string, phase: string, reason: string, timeoutMs = 30_000): Promise<BlockPullView> =>
    waitFor(`${name} ${phase}/${reason}`, timeoutMs, async () => {
      const bp = await getBlockPull(kube, NS, name);
      return bp?.status?.phase === phase && bp.status.reason === reason ? bp : undefined;
    });

  /** virt-launcher's external snapshot: every disk onto an overlay in the scratch directory (virDomainSnapshotCreateXML, DISK_ONLY|ATOMIC|NO_METADATA). */
  const kubevirtSnapshot = async (scratch: string): Promise<Record<string, string>> => {
    await mkdir(scratch, { recursive: true, mode: 0o700 });
    await chown(scratch, launcher.uid, launcher.gid);
    const overlays = Object.fromEntries(launcher.disks.map((d) => [d.name, path.join(scratch, `ovl-${d.name}.qcow2`)]));
    const specs = launcher.disks.flatMap((d) => [
      '--diskspec',
      `${d.target},snapshot=external,file=${overlays[d.name]!}`,
    ]);
    const r = await launcher.runner.run(
      [
        'virsh',
        '-q',
        '-c',
        launcher.uri,
        'snapshot-create-as',
        launcher.domain,
        '--disk-only',
        '--atomic',
        '--no-metadata',
        ...specs,
      ],
      { timeoutMs: 60_000 },
    );
    if (r.exitCode !== 0) throw new Error(`virsh snapshot-create-as exited ${r.exitCode}: ${r.stderr.trim()}`);
    return overlays;
  };
  /**
   * virt-launcher's commit of every overlay back onto the image it was put over (active commit +
   * pivot), then the scratch PVC goes. KubeVirt calls virDomainBlockCommit(ACTIVE) with no base,
   * which for its snapshottable disks (a PVC or DataVolume: one image) is the overlay's backing
   * image; on the stand-in's 3-image chains the same commit is `--shallow` (without it libvirt
   * would merge the whole chain into its bottom image), which restores the pre-snapshot chain.
   */
  const kubevirtCommit = async (scratch: string): Promise<void> => {
    for (const d of launcher.disks) {
      const r = await launcher.runner.run(
        [
          'virsh',
          '-q',
          '-c',
          launcher.uri,
          'blockcommit',
          launcher.domain,
          d.target,
          '--active',
          '--shallow',
          '--pivot',
        ],
        { timeoutMs: 120_000 },
      );
      if (r.exitCode !== 0) throw new Error(`virsh blockcommit ${d.target} exited ${r.exitCode}: ${r.stderr.trim()}`);
    }
    await rm(scratch, { recursive: true, force: true });
  };
  const eventReasons = async (name: string): Promise<string[]> =>
    (
      await kube.kubectl([
        'get',
        'events',
        '-n',
        NS,
        '--field-selector',
        `involvedObject.name=${name}`,
        '-o',
        'jsonpath={.items[*].reason}',
      ])
    ).split(' ');
  const OVERLAY_ACTIVE = {
    type: 'OverlaySnapshotActive',
    status: 'True',
    reason: 'SnapshotInProgress',
    message: 'the VM writes to snapshot overlays',
    lastTransitionTime: new Date().toISOString(),
  };

  /** The overlay's allocation on the host (qemu-img info actual-size, du) and the guest data it holds (qemu-img map, depth 0). */
  const allocation = async (file: string): Promise<{ actualSize: number; du: number; dataBytes: number }> => {
    const info = JSON.parse((await run(['qemu-img', 'info', '-U', '--output=json', file])).stdout) as {
      'actual-size': number;
    };
    const du = Number((await run(['du', '-B1', file])).stdout.split('\t')[0]);
    const map = JSON.parse((await run(['qemu-img', 'map', '-U', '--output=json', file])).stdout) as {
      length: number;
      depth: number;
      data: boolean;
    }[];
    const dataBytes = map.filter((m) => m.depth === 0 && m.data).reduce((n, m) => n + m.length, 0);
    return { actualSize: info['actual-size'], du, dataBytes };
  };

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-coexist-'));
    registryDir = await mkdtemp('/var/tmp/bp-launchers-');
    saKubeconfig = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    // KubeVirt 1.7's cluster: neither kind served (left over from an earlier run on this cluster: removed).
    await kube.kubectlResult(['delete', 'crd', ...TEST_CRDS, '--ignore-not-found', '--wait=true']);
    launcher = await startLauncher({
      namespace: NS,
      vmiName: VMI,
      registryDir,
      disks: DISKS.map((name) => ({ name, layers: 3, sizeMiB: 64, allocatedMiB: 33 })),
    });
    driver = new VirshDriver(launcher.runner, launcher.uri);
    await createFakeVmi(kube, { namespace: NS, vmiName: VMI, launcher, disks: [...DISKS] });
    cbt = await registerFakeLauncher({
      registryDir,
      dir: path.join(tmp, 'cbt'),
      namespace: NS,
      pod: 'virt-launcher-vm-cbt-x',
      mode: 'cbt',
      disk: 'rootdisk',
    });
    await createFakeVmi(kube, { namespace: NS, vmiName: 'vm-cbt', podName: cbt.pod, disks: ['rootdisk'] });
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-coexist-1' });
    operators.push(operator);
    phases = watchPhases(kube, NS);
  }, 240_000);

  afterAll(async () => {
    await phases?.stop();
    if (kube !== undefined)
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    for (const op of operators) await op.stop();
    await cbt?.stop();
    await launcher?.stop();
    // Leave the cluster as the other specs expect it (the test CRDs are this spec's).
    if (kube !== undefined)
      await kube.kubectlResult(['delete', 'crd', ...TEST_CRDS, '--ignore-not-found', '--wait=true']);
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }, 180_000);

  it('starts where neither VirtualMachineSnapshot nor VirtualMachineBackup is served (KubeVirt 1.7), and says once what it watches', () => {
    const said = operator!.find(
      'watching; not served by this cluster, so not watched (their operations are not waited for)',
    );
    expect(said).toHaveLength(1);
    expect(said[0]?.['notWatched']).toEqual(TEST_CRDS);
    expect(operator!.find(/informer/i).filter((l) => l['level'] === 'error')).toEqual([]);
  });

  it('a CBT disk (<dataStore>): Completed/NothingToDo, no libvirt job started, the data file shown in status', async () => {
    await apply('cbt', 'rootdisk', {}, 'vm-cbt');
    const done = await waitForPhase(kube, NS, 'cbt', ['Completed', 'Failed'], 60_000);
    expect(done.status?.reason).toBe('NothingToDo');
    expect(done.status?.backingChain?.before).toEqual([
      {
        position: 0,
        path: '/run/kubevirt-private/libvirt/qemu/swtpm/rootdisk.qcow2',
        format: 'qcow2',
        dataFile: { path: '/run/kubevirt-private/vmi-disks/rootdisk/disk.img', format: 'raw' },
      },
    ]);
    expect(
      await kube.kubectl([
        'get',
        'bp',
        'cbt',
        '-n',
        NS,
        '-o',
        'jsonpath={.status.backingChain.current[0].dataFile.path}',
      ]),
    ).toBe('/run/kubevirt-private/vmi-disks/rootdisk/disk.img');
    // What the operator ran there: looks only (dumpxml, blockjob), never an action.
    const commands = await cbt!.commands();
    expect(commands).toContain('dumpxml');
    expect(commands.filter((c) => c === 'blockpull' || c === 'blockrebase')).toEqual([]);
    expect(await cbt!.actions()).toEqual([]);
  });

  it('a BlockPull applied inside an external snapshot window stays Pending/SnapshotInProgress, copies nothing into the overlay, then runs after the commit: identical data', async () => {
    const disk = 'window';
    const ref = await launcher.reference(disk);
    const chainBefore = await chainOf(disk);
    expect(chainBefore).toHaveLength(3);
    const scratch = path.join(launcher.dir, 'scratch-1');
    const overlays = await kubevirtSnapshot(scratch);
    await patchVmiStatus({ conditions: [OVERLAY_ACTIVE] });
    expect(await chainOf(disk)).toEqual([overlays[disk], ...chainBefore]);
    const empty = await allocation(overlays[disk]!);

    await apply('window', disk);
    const pending = await statusIs('window', 'Pending', 'SnapshotInProgress');
    expect(pending.status?.message).toMatch(
      /OverlaySnapshotActive=True \(SnapshotInProgress\).*the pull starts once it is over/,
    );
    expect(pending.status?.backingChain).toBeUndefined();
    // Several looks later: still no job, and the overlay holds none of the base's data.
    const t0 = Date.now();
    while (Date.now() - t0 < 6_000) {
      expect(await jobOn(disk)).toBeNull();
      await sleep(250);
    }
    await launcher.flush(disk);
    const after = await allocation(overlays[disk]!);
    const pullBytes = launcher.disks.find((d) => d.name === disk)!.pullBytes;
    console.log(
      `snapshot window: overlay ${overlays[disk]} actual-size ${empty.actualSize} -> ${after.actualSize} bytes, du ${empty.du} -> ${after.du}, guest data ${after.dataBytes} bytes; the base chain holds ${pullBytes} bytes to pull`,
    );
    expect(after.dataBytes).toBe(0);
    expect(after.du).toBeLessThanOrEqual(empty.du);
    expect(after.actualSize).toBeLessThan(MiB);
    expect((await getBlockPull(kube, NS, 'window'))?.status?.reason).toBe('SnapshotInProgress');

    // KubeVirt's commit: the pre-snapshot chain again; the condition goes; the pull runs.
    await kubevirtCommit(scratch);
    expect(await chainOf(disk)).toEqual(chainBefore);
    const cleared = Date.now();
    await patchVmiStatus({ conditions: [] });
    const done = await waitForPhase(kube, NS, 'window', ['Completed', 'Failed'], 120_000);
    console.log(`snapshot window closed: Completed ${Date.now() - cleared} ms after the condition was removed`);
    expect(done.status?.reason).toBe('Completed');
    expect(done.status?.attempts).toBe(1);
    expect(done.status?.retries).toBe(0);
    expect(done.status?.backingChain?.before?.map((l) => l.path)).toEqual(chainBefore);
    expect(await chainOf(disk)).toEqual([chainBefore[0]]);
    expect(await launcher.compare(disk, ref)).toBe(true);
    expect([...(phases!.seen.get('window') ?? [])]).not.toContain('Failed');
  });

  it('a running pull yields at once when a snapshot window starts: the job is gone within 2 s, the snapshot call succeeds, the pull resumes after the commit (attempts counted, retries untouched)', async () => {
    const disk = 'running';
    const ref = await launcher.reference(disk);
    const chainBefore = await chainOf(disk);
    await apply('running', disk, { bandwidth: '1Mi' });
    const before = await runningWithProgress('running');
    expect(before.status?.attempts).toBe(1);

    const t0 = performance.now();
    await patchVmiStatus({ conditions: [OVERLAY_ACTIVE] });
    const patched = performance.now();
    await waitFor('the pull job to be gone', 10_000, async () => ((await jobOn(disk)) === null ? true : undefined), 20);
    const goneMs = Math.round(performance.now() - t0);
    console.log(
      `snapshot window: job gone ${goneMs} ms after the condition patch was sent (${Math.round(patched - t0)} ms for the patch)`,
    );
    expect(goneMs).toBeLessThan(2_000);

    // KubeVirt's libvirt snapshot call now succeeds (libvirt refuses it while a block job runs).
    const scratch = path.join(launcher.dir, 'scratch-2');
    const overlays = await kubevirtSnapshot(scratch);
    expect((await chainOf(disk))[0]).toBe(overlays[disk]);
    const yielded = await waitFor('running Aborted', 30_000, async () => {
      const bp = await getBlockPull(kube, NS, 'running');
      return bp?.status?.phase === 'Pending' &&
        bp.status.reason === 'SnapshotInProgress' &&
        bp.status.job?.state === 'Aborted'
        ? bp
        : undefined;
    });
    expect(yielded.status?.message).toMatch(
      /^yielded to the external snapshot of VirtualMachineInstance bp-coexist\/vm1: the pull is paused at \d+%/,
    );
    expect(yielded.status?.attempts).toBe(1);
    expect(yielded.status?.retries).toBe(0);
    await waitFor('the SnapshotInProgress Event', 10_000, async () =>
      (await eventReasons('running')).includes('SnapshotInProgress') ? true : undefined,
    );
    await sleep(2_000);
    expect(await jobOn(disk)).toBeNull();

    await kubevirtCommit(scratch);
    expect(await chainOf(disk)).toEqual(chainBefore);
    await patchVmiStatus({ conditions: [] });
    const resumed = await runningWithProgress('running');
    expect(resumed.status?.attempts).toBe(2);
    expect(resumed.status?.retries).toBe(0);
    expect(operator!.find(/^block pull started$/).filter((l) => l['blockpull'] === `${NS}/running`)).toHaveLength(2);
    await kube.kubectl([
      'patch',
      'blockpull',
      'running',
      '-n',
      NS,
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { bandwidth: 0 } }),
    ]);
    const done = await waitForPhase(kube, NS, 'running', ['Completed', 'Failed'], 120_000);
    expect(done.status?.reason).toBe('Completed');
    expect(done.status?.attempts).toBe(2);
    expect(done.status?.retries).toBe(0);
    expect(await chainOf(disk)).toEqual([chainBefore[0]]);
    expect(await launcher.compare(disk, ref)).toBe(true);
    expect([...(phases!.seen.get('running') ?? [])]).not.toContain('Failed');
  });

  it("an image of the chain on a hot-plugged volume that is not the disk's own is a snapshot window by itself (no object says so yet)", async () => {
    const disk = 'hotplug';
    const ref = await launcher.reference(disk);
    const chainBefore = await chainOf(disk);
    // Where virt-launcher sees a hot-plugged volume: /var/run/kubevirt/hotplug-disks/<volume>/ (the scratch PVC's).
    const made: string[] = [];
    for (const dir of ['/var/run/kubevirt', '/var/run/kubevirt/hotplug-disks']) {
      const exists = await run(['test', '-d', dir], { allowExit: true });
      if (exists.exitCode !== 0) {
        await mkdir(dir, { mode: 0o755 });
        made.unshift(dir);
      }
    }
    const scratch = `/var/run/kubevirt/hotplug-disks/snap-${path.basename(launcher.dir)}-snap-scratch`;
    try {
      const overlays = await kubevirtSnapshot(scratch);
      expect((await chainOf(disk))[0]).toBe(overlays[disk]);
      await apply('hotplug', disk);
      const pending = await statusIs('hotplug', 'Pending', 'SnapshotInProgress');
      expect(pending.status?.message).toContain(
        `image ${overlays[disk]!} (position 0) of disk hotplug lies on hot-plugged volume ${path.basename(scratch)}`,
      );
      await sleep(3_000);
      expect(await jobOn(disk)).toBeNull();
      await launcher.flush(disk);
      expect((await allocation(overlays[disk]!)).dataBytes).toBe(0);
      await kubevirtCommit(scratch);
    } finally {
      await rm(scratch, { recursive: true, force: true });
      for (const dir of made) await run(['rmdir', dir], { allowExit: true });
    }
    // No watch event says the window closed here (no object changed): the BlockPull's next look does.
    const done = await waitForPhase(kube, NS, 'hotplug', ['Completed', 'Failed'], 120_000);
    expect(done.status?.reason).toBe('Completed');
    expect(await chainOf(disk)).toEqual([chainBefore[0]]);
    expect(await launcher.compare(disk, ref)).toBe(true);
  });

  it('a volume migration (VMI VolumesChange=True): a new pull stays Pending/VolumesChangeInProgress, a running one yields within 2 s; both run and complete once it is over (attempts counted, retries untouched)', async () => {
    const refs = { volnew: await launcher.reference('volnew'), volrun: await launcher.reference('volrun') };
    const chains = { volnew: await chainOf('volnew'), volrun: await chainOf('volrun') };
    await apply('volrun', 'volrun', { bandwidth: '1Mi' });
    const before = await runningWithProgress('volrun');
    expect(before.status?.attempts).toBe(1);

    // virt-controller (vmi/storage.go syncVolumesUpdate): the VMI's volumes name new claims.
    const migratedVolumes = (['volnew', 'volrun'] as const).map((v) => ({
      volumeName: v,
      sourcePVCInfo: { claimName: `${v}-src`, volumeMode: 'Filesystem' },
      destinationPVCInfo: { claimName: `${v}-dst`, volumeMode: 'Filesystem' },
    }));
    const t0 = performance.now();
    await patchVmiStatus({
      conditions: [
        {
          type: 'VolumesChange',
          status: 'True',
          message: 'migrate volumes',
          lastTransitionTime: new Date().toISOString(),
        },
      ],
      migratedVolumes,
    });
    await waitFor(
      'the pull job to be gone',
      10_000,
      async () => ((await jobOn('volrun')) === null ? true : undefined),
      20,
    );
    const goneMs = Math.round(performance.now() - t0);
    console.log(`volume migration: job gone ${goneMs} ms after the VolumesChange=True patch was sent`);
    expect(goneMs).toBeLessThan(2_000);
    const yielded = await waitFor('volrun Aborted', 30_000, async () => {
      const bp = await getBlockPull(kube, NS, 'volrun');
      return bp?.status?.phase === 'Pending' &&
        bp.status.reason === 'VolumesChangeInProgress' &&
        bp.status.job?.state === 'Aborted'
        ? bp
        : undefined;
    });
    expect(yielded.status?.message).toMatch(
      /^yielded to the volume migration of VirtualMachineInstance bp-coexist\/vm1: the pull is paused at \d+%/,
    );
    expect(yielded.status?.attempts).toBe(1);
    expect(yielded.status?.retries).toBe(0);
    await waitFor('the VolumesChangeInProgress Event', 10_000, async () =>
      (await eventReasons('volrun')).includes('VolumesChangeInProgress') ? true : undefined,
    );

    // A BlockPull applied during it: Pending with the reason, no job over several looks.
    await apply('volnew', 'volnew');
    const pending = await statusIs('volnew', 'Pending', 'VolumesChangeInProgress');
    expect(pending.status?.message).toMatch(
      /VolumesChange=True: KubeVirt migrates its volumes to new claims; the pull starts once it is over/,
    );
    expect(pending.status?.attempts ?? 0).toBe(0);
    const t1 = Date.now();
    while (Date.now() - t1 < 6_000) {
      expect(await jobOn('volnew')).toBeNull();
      expect(await jobOn('volrun')).toBeNull();
      await sleep(250);
    }
    expect((await getBlockPull(kube, NS, 'volrun'))?.status?.reason).toBe('VolumesChangeInProgress');
    expect(await chainOf('volnew')).toEqual(chains.volnew);

    // virt-controller's cancelVolumeMigration: condition False (VolumesChangeCancellation), migratedVolumes cleared.
    const cleared = performance.now();
    await patchVmiStatus({
      conditions: [
        {
          type: 'VolumesChange',
          status: 'False',
          reason: 'VolumesChangeCancellation',
          lastTransitionTime: new Date().toISOString(),
        },
      ],
      migratedVolumes: null,
    });
    const resumed = await runningWithProgress('volrun');
    console.log(`volume migration over: volrun running again ${Math.round(performance.now() - cleared)} ms later`);
    expect(resumed.status?.attempts).toBe(2);
    expect(resumed.status?.retries).toBe(0);
    expect(operator!.find(/^block pull started$/).filter((l) => l['blockpull'] === `${NS}/volrun`)).toHaveLength(2);
    await kube.kubectl([
      'patch',
      'blockpull',
      'volrun',
      '-n',
      NS,
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { bandwidth: 0 } }),
    ]);
    for (const name of ['volnew', 'volrun'] as const) {
      const done = await waitForPhase(kube, NS, name, ['Completed', 'Failed'], 120_000);
      expect(done.status?.reason, name).toBe('Completed');
      expect(done.status?.attempts, name).toBe(name === 'volrun' ? 2 : 1);
      expect(done.status?.retries, name).toBe(0);
      expect(await chainOf(name)).toEqual([chains[name][0]]);
      expect(await launcher.compare(name, refs[name]), name).toBe(true);
      expect([...(phases!.seen.get(name) ?? [])], name).not.toContain('Failed');
    }
    await patchVmiStatus({ conditions: [] });
  });

  describe('where VirtualMachineSnapshot and VirtualMachineBackup are served', () => {
    beforeAll(async () => {
      await installCrds(kube, [VMSNAPSHOT_CRD_FILE, VMBACKUP_CRD_FILE]);
      // A kind installed later is watched after the operator's next start.
      await operator!.stop();
      operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-coexist-2' });
      operators.push(operator);
    }, 120_000);

    const snapshotObject = (name: string) =>
      stringify({
        apiVersion: 'snapshot.kubevirt.io/v1beta1',
        kind: 'VirtualMachineSnapshot',
        metadata: { name, namespace: NS },
        spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: VMI } },
      });
    const backupObject = (name: string) =>
      stringify({
        apiVersion: 'backup.kubevirt.io/v1alpha1',
        kind: 'VirtualMachineBackup',
        metadata: { name, namespace: NS },
        spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: VMI }, pvcName: 'backup-target' },
      });

    it('watches both, says so once', () => {
      const said = operator!.find('watching');
      expect(said).toHaveLength(1);
      expect(said[0]?.['watched']).toEqual(
        expect.arrayContaining([
          'virtualmachinesnapshots.snapshot.kubevirt.io/v1beta1',
          'virtualmachinebackups.backup.kubevirt.io/v1alpha1',
        ]),
      );
      expect(said[0]?.['notWatched']).toEqual([]);
    });

    it('a VirtualMachineSnapshot not in a final phase holds a new pull back (Pending/SnapshotInProgress); Succeeded wakes it and it completes', async () => {
      const disk = 'vmsnap';
      const ref = await launcher.reference(disk);
      await kube.kubectl(['apply', '-f', '-'], { input: snapshotObject('snap-1') });
      await kube.kubectl([
        'patch',
        'vmsnapshot',
        'snap-1',
        '-n',
        NS,
        '--type=merge',
        '-p',
        JSON.stringify({ status: { phase: 'InProgress' } }),
      ]);
      await apply('vmsnap', disk);
      const pending = await statusIs('vmsnap', 'Pending', 'SnapshotInProgress');
      expect(pending.status?.message).toMatch(
        /VirtualMachineSnapshot bp-coexist\/snap-1 \(phase InProgress\) snapshots VirtualMachine bp-coexist\/vm1/,
      );
      await sleep(3_000);
      expect(await jobOn(disk)).toBeNull();
      const t0 = performance.now();
      await kube.kubectl([
        'patch',
        'vmsnapshot',
        'snap-1',
        '-n',
        NS,
        '--type=merge',
        '-p',
        JSON.stringify({ status: { phase: 'Succeeded', readyToUse: true } }),
      ]);
      await waitFor(
        'the pull to start',
        10_000,
        async () => ((await getBlockPull(kube, NS, 'vmsnap'))?.status?.attempts === 1 ? true : undefined),
        50,
      );
      console.log(
        `VirtualMachineSnapshot Succeeded: the pull started ${Math.round(performance.now() - t0)} ms later (woken by the snapshot's watch event)`,
      );
      const done = await waitForPhase(kube, NS, 'vmsnap', ['Completed', 'Failed'], 120_000);
      expect(done.status?.reason).toBe('Completed');
      expect(await launcher.compare(disk, ref)).toBe(true);
    });

    it('a VirtualMachineBackup in progress: a running pull yields at once (Pending/BackupInProgress), and resumes when it is Complete', async () => {
      const disk = 'backup';
      const ref = await launcher.reference(disk);
      await apply('backup', disk, { bandwidth: '1Mi' });
      await runningWithProgress('backup');
      const t0 = performance.now();
      await kube.kubectl(['apply', '-f', '-'], { input: backupObject('bk-1') });
      await waitFor(
        'the pull job to be gone',
        10_000,
        async () => ((await jobOn(disk)) === null ? true : undefined),
        20,
      );
      const goneMs = Math.round(performance.now() - t0);
      console.log(`VirtualMachineBackup created: job gone ${goneMs} ms later`);
      expect(goneMs).toBeLessThan(2_000);
      const yielded = await statusIs('backup', 'Pending', 'BackupInProgress');
      expect(yielded.status?.message).toMatch(/VirtualMachineBackup bp-coexist\/bk-1/);
      await waitFor('the BackupInProgress Event', 10_000, async () =>
        (await eventReasons('backup')).includes('BackupInProgress') ? true : undefined,
      );
      await kube.kubectl([
        'patch',
        'vmbackup',
        'bk-1',
        '-n',
        NS,
        '--type=merge',
        '-p',
        JSON.stringify({
          status: { conditions: [{ type: 'Progressing', status: 'True', reason: 'Initiated', message: '' }] },
        }),
      ]);
      await sleep(2_000);
      expect(await jobOn(disk)).toBeNull();
      expect((await getBlockPull(kube, NS, 'backup'))?.status?.reason).toBe('BackupInProgress');
      await kube.kubectl([
        'patch',
        'vmbackup',
        'bk-1',
        '-n',
        NS,
        '--type=merge',
        '-p',
        JSON.stringify({
          status: {
            conditions: [
              { type: 'Progressing', status: 'False', reason: 'Completed', message: '' },
              { type: 'Complete', status: 'True', reason: 'Completed', message: '' },
            ],
          },
        }),
      ]);
      const resumed = await runningWithProgress('backup');
      expect(resumed.status?.attempts).toBe(2);
      expect(resumed.status?.retries).toBe(0);
      expect(operator!.find(/^block pull started$/).filter((l) => l['blockpull'] === `${NS}/backup`)).toHaveLength(2);
      await kube.kubectl([
        'patch',
        'blockpull',
        'backup',
        '-n',
        NS,
        '--type=merge',
        '-p',
        JSON.stringify({ spec: { bandwidth: 0 } }),
      ]);
      const done = await waitForPhase(kube, NS, 'backup', ['Completed', 'Failed'], 120_000);
      expect(done.status?.reason).toBe('Completed');
      expect(await launcher.compare(disk, ref)).toBe(true);
      expect([...(phases!.seen.get('backup') ?? [])]).not.toContain('Failed');
    });
  });
});
