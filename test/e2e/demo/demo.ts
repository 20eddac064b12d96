/**
 * The demo (`npm run demo`, README: `./scripts/demo`): a local control plane, a virt-launcher
 * stand-in with a VM whose disk has a 3-layer backing chain, the CRDs, the operator as its own
 * process; plans the pull with the kubectl plugin (`kubectl blockpull plan`: the operator's dry
 * run), applies a BlockPull with kubectl, shows live progress with the plugin (`kubectl blockpull
 * status -w`: bars on a terminal, plain lines on a pipe), verifies the
 * flattened image with qemu-img compare against a reference made before the pull, and stops
 * everything (also on Ctrl-C). Exits 0 only if verified; the last line says what was verified.
 */
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { VirshDriver } from '../../../operator/src/hypervisor/virsh-driver.ts';
import { installCrds, projectCrdFiles, VMI_CRD_FILE } from '../cluster/crds.ts';
import { startControlPlane, type ControlPlane } from '../cluster/control-plane.ts';
import { NODE_BIN, REPO_ROOT } from '../support/paths.ts';
import { run } from '../support/process.ts';
import { startLauncher, type Launcher } from '../launcher/launcher.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  type OperatorProcess,
} from '../operator-fixture/fixture.ts';

const NS = 'demo';
const VMI = 'demo-vm';
const DISK = 'rootdisk';
const BP = 'flatten-rootdisk';

const say = (m: string): void => {
  process.stdout.write(`${m}\n`);
};
const step = (m: string): void => say(`\n==> ${m}`);

let cp: ControlPlane | undefined;
let launcher: Launcher | undefined;
let operator: OperatorProcess | undefined;
let tmp: string | undefined;
let cleaning: Promise<void> | undefined;
let interrupted = false;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    step('Stopping everything the demo started');
    if (cp !== undefined && operator !== undefined) {
      await cp
        .kubectlResult(['delete', 'blockpull', BP, '-n', NS, '--wait=true', '--timeout=30s'])
        .catch(() => undefined);
    }
    await operator?.stop().catch(() => undefined);
    await launcher?.stop().catch((e: unknown) => say(`launcher stop: ${String(e)}`));
    await cp?.stop().catch((e: unknown) => say(`control plane stop: ${String(e)}`));
    if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
    say('stopped: operator, launcher stand-in (libvirtd + QEMU), kube-apiserver, etcd');
  })();
  return cleaning;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    say(`\n${sig}: interrupting the demo`);
    void cleanup().finally(() => {
      say('NOT VERIFIED: the demo was interrupted');
      process.exit(130);
    });
  });
}

async function main(): Promise<{ ok: boolean; summary: string }> {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-demo-'));
  const registryDir = path.join(tmp, 'launchers');

  step(
    'Starting a local Kubernetes control plane (etcd + kube-apiserver; first run builds them from the Go module proxy)',
  );
  cp = await startControlPlane({
    stateDir: path.join(REPO_ROOT, '.cache', 'demo-cluster'),
    log: (m) => say(`    ${m}`),
  });
  say(`    kubeconfig: ${cp.kubeconfigPath}`);
  await installCrds(cp, [...(await projectCrdFiles()), VMI_CRD_FILE]);
  say('    CRDs installed: blockpulls.blockpull.dev, virtualmachineinstances.kubevirt.io (test-only)');

  step(
    'Starting a virt-launcher stand-in: libvirtd session as a non-root user, QEMU, a disk with a 3-layer backing chain',
  );
  await ensureNamespace(cp, NS);
  launcher = await startLauncher({
    namespace: NS,
    vmiName: VMI,
    registryDir,
    disks: [{ name: DISK, layers: 3, sizeMiB: 256, allocatedMiB: 129 }],
  });
  const disk = launcher.disks[0]!;
  say(`    domain ${launcher.domain}, disk ${DISK} (${disk.target}) chain:\n      ${disk.chain.join('\n      <- ')}`);
  await createFakeVmi(cp, { namespace: NS, vmiName: VMI, launcher, disks: [DISK] });
  say(`    VMI ${NS}/${VMI} Running, launcher pod ${launcher.podName}`);
  const reference = await launcher.reference(DISK);
  say(`    reference image (qemu-img convert of the chain, before the pull): ${reference}`);

  step(
    'Starting the operator (its own process, as ServiceAccount bp-operator-system/blockpull-operator with the chart RBAC rules)',
  );
  const sa = await operatorServiceAccount(cp);
  operator = await startOperator({
    kubeconfig: sa,
    registryDir,
    name: 'demo-operator',
    env: { BLOCKPULL_LOG_LEVEL: 'info' },
  });
  say(`    running (pid ${operator.child.pid}), log: ${operator.logPath}`);

  // kubectl finds plugins on PATH by name: kubectl-blockpull -> the plugin's entry point (plugin/).
  const binDir = path.join(tmp, 'bin');
  await mkdir(binDir);
  await symlink(path.join(REPO_ROOT, 'plugin', 'src', 'main.ts'), path.join(binDir, 'kubectl-blockpull'));
  const userEnv = {
    ...process.env,
    PATH: [binDir, path.dirname(NODE_BIN), path.dirname(cp.kubectlPath), process.env['PATH'] ?? ''].join(':'),
    KUBECONFIG: cp.kubeconfigPath,
  };
  const blockpull = (args: readonly string[]) =>
    run([cp!.kubectlPath, 'blockpull', ...args], {
      env: userEnv,
      inheritOutput: true,
      allowExit: true,
      timeoutMs: 5 * 60_000,
    });

  step(
    `kubectl blockpull plan ${VMI} --disk ${DISK} --bandwidth 32Mi -n ${NS}   (the operator's dry run: nothing is started)`,
  );
  const planned = await blockpull(['plan', VMI, '--disk', DISK, '--bandwidth', '32Mi', '-n', NS]);
  if (planned.exitCode !== 0)
    return {
      ok: false,
      summary: `NOT VERIFIED: kubectl blockpull plan exited ${planned.exitCode} (see ${operator.logPath})`,
    };

  step('kubectl apply -f blockpull.yaml');
  const manifest = blockPullManifest({
    namespace: NS,
    name: BP,
    vmiName: VMI,
    disk: DISK,
    spec: { bandwidth: '32Mi' },
  });
  say(manifest.trimEnd().replace(/^/gm, '    '));
  const file = path.join(tmp, 'blockpull.yaml');
  await writeFile(file, manifest);
  say(`    ${(await cp.kubectl(['apply', '-f', file])).trim()}`);

  step(`kubectl blockpull status ${BP} -w -n ${NS}   (live, until the pull ends)`);
  await blockpull(['status', BP, '-w', '-n', NS]);
  const bp = await getBlockPull(cp, NS, BP);
  const phase = bp?.status?.phase;
  say(`    ${bp?.status?.phase ?? '?'} / ${bp?.status?.reason ?? '?'}: ${bp?.status?.message ?? ''}`);
  if (phase !== 'Completed') {
    return {
      ok: false,
      summary: `NOT VERIFIED: the BlockPull ended ${phase ?? 'without a phase'} (see ${operator.logPath})`,
    };
  }

  step('Verifying the disk');
  const chain = (await new VirshDriver(launcher.runner, launcher.uri).getDisk(launcher.domain, { name: DISK })).chain;
  say(`    chain now: ${chain.map((l) => l.path).join(' <- ')}`);
  const identical = await launcher.compare(DISK, reference);
  say(`    qemu-img compare (disk vs reference): ${identical ? 'Images are identical.' : 'IMAGES DIFFER'}`);
  const ok = identical && chain.length === 1;
  if (ok) {
    return {
      ok,
      summary: `VERIFIED: BlockPull ${NS}/${BP} flattened disk ${DISK} of VMI ${VMI} from 3 layers to 1 while the VM ran; qemu-img compare says the data is identical to the pre-pull chain.`,
    };
  }
  return {
    ok,
    summary: `NOT VERIFIED: ${chain.length === 1 ? '' : `chain has ${chain.length} layers; `}${identical ? '' : 'data differs from the reference'}`,
  };
}

main().then(
  async ({ ok, summary }) => {
    if (interrupted) return;
    await cleanup();
    say(summary);
    process.exit(ok ? 0 : 1);
  },
  async (err: unknown) => {
    if (interrupted) return; // the signal handler cleans up and exits
    say(`error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    await cleanup();
    say('NOT VERIFIED: the demo failed before verification');
    process.exit(1);
  },
);
