/**
 * Uninstall and teardown (docs/operations.md, "Uninstall"): the real control plane, the operator as its own
 * process (chart RBAC, local transport) and launcher stand-ins with real qcow2 chains.
 *
 * - Deleting a namespace with a VMI, its launcher pod and a Running BlockPull: the job is aborted
 *   through the terminating launcher before the finalizer goes, and before the launcher stops.
 *   This test bed has no kube-controller-manager and no kubelet, so the test plays both:
 *   - the namespace controller: the namespace is marked Terminating, then the pod is deleted
 *     (core resources first), a second later the BlockPull and the VMI; once they are gone the
 *     namespace is finalized;
 *   - the kubelet: the launcher pod gets its deletionTimestamp and stays while its grace period
 *     (GRACE_MS) runs, the stand-in answering; then the stand-in is stopped and the pod removed;
 *   - KubeVirt: the VMI keeps its finalizer (and phase Running) until its launcher has stopped.
 *   A real node (test/e2e/node/) is not used: its launcher image destroys the domain as soon as
 *   the pod gets SIGTERM (virt-launcher keeps QEMU up while the guest shuts down), so it cannot
 *   show what happens during the grace period, and a node costs minutes to start.
 * - `helm uninstall` with a pull Running, and the operator never coming back: SIGTERM leaves the
 *   job running with its record (status.job Running, the finalizer); a deleted BlockPull then stays
 *   Terminating; the way-out block of docs/operations.md, run command by command, aborts the job and lets it go.
 *   (A reinstall adopting the job: blockpull.e2e.test.ts, "SIGTERM ... the next one adopts it".)
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { sleep, waitFor } from '../../support/wait.ts';

/** The launcher pod's grace period as the imitated kubelet lets it run. */
const GRACE_MS = 8_000;
/** The finalizer KubeVirt's VMI keeps until its launcher is gone (imitated). */
const VMI_FINALIZER = 'kubevirt.io/virtualMachineControllerFinalize';

describe('uninstall and teardown (operator process, launcher stand-ins)', () => {
  let kube: ClusterClient;
  let registryDir: string;
  let saKubeconfig: string;
  let operator: OperatorProcess | undefined;
  const launchers: Launcher[] = [];
  const namespaces: string[] = [];

  const running = (ns: string, name: string) =>
    waitFor(`${ns}/${name} Running with progress`, 60_000, async () => {
      const bp = await getBlockPull(kube, ns, name);
      return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0 ? bp : undefined;
    });

  const setUp = async (
    ns: string,
    name: string,
  ): Promise<{ launcher: Launcher; driver: VirshDriver; target: string }> => {
    await ensureNamespace(kube, ns);
    namespaces.push(ns);
    const launcher = await startLauncher({
      namespace: ns,
      vmiName: 'vm1',
      registryDir,
      disks: [{ name: 'rootdisk', layers: 3, sizeMiB: 64, allocatedMiB: 33 }],
    });
    launchers.push(launcher);
    await createFakeVmi(kube, { namespace: ns, vmiName: 'vm1', launcher, disks: ['rootdisk'] });
    await kube.kubectl(['apply', '-f', '-'], {
      input: blockPullManifest({ namespace: ns, name, vmiName: 'vm1', disk: 'rootdisk', spec: { bandwidth: '1Mi' } }),
    });
    return { launcher, driver: new VirshDriver(launcher.runner, launcher.uri), target: launcher.disks[0]!.target };
  };

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    registryDir = await mkdtemp('/var/tmp/bp-launchers-');
    saKubeconfig = await operatorServiceAccount(kube);
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'uninstall-op-1' });
  });

  afterAll(async () => {
    if (kube !== undefined) {
      for (const ns of namespaces) {
        const bps = await kube.kubectlResult(['get', 'blockpulls', '-n', ns, '-o', 'name']);
        for (const bp of bps.stdout.split('\n').filter((l) => l !== '')) {
          await kube.kubectlResult([
            'patch',
            bp,
            '-n',
            ns,
            '--type=json',
            '-p',
            '[{"op":"remove","path":"/metadata/finalizers"}]',
          ]);
        }
        await kube.kubectlResult([
          'patch',
          'vmi',
          'vm1',
          '-n',
          ns,
          '--type=json',
          '-p',
          '[{"op":"remove","path":"/metadata/finalizers"}]',
        ]);
        await kube.kubectlResult(['delete', 'namespace', ns, '--wait=false']);
      }
    }
    await operator?.stop();
    for (const l of launchers) await l.stop();
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
  });

  it('deleting the namespace: the job is aborted through the terminating launcher before the finalizer goes and before the launcher stops', async () => {
    const ns = 'bp-nsdel';
    const { launcher, driver, target } = await setUp(ns, 'pull');
    await kube.kubectl([
      'patch',
      'vmi',
      'vm1',
      '-n',
      ns,
      '--type=merge',
      '-p',
      JSON.stringify({ metadata: { finalizers: [VMI_FINALIZER] } }),
    ]);
    await running(ns, 'pull');
    expect(await driver.getJob(launcher.domain, target)).not.toBeNull();

    const t0 = Date.now();
    let jobGoneAtMs: number | undefined;
    let bpGoneAtMs: number | undefined;
    /** The first look at the job after the BlockPull was seen gone (its finalizer released). */
    let jobAfterBpGone: unknown = 'not looked';
    let watching = true;
    const watcher = (async () => {
      while (watching && (jobGoneAtMs === undefined || bpGoneAtMs === undefined || jobAfterBpGone === 'not looked')) {
        // Once the launcher has stopped its domain is gone: that is no abort, so it is not counted.
        const job = await driver.getJob(launcher.domain, target).catch(() => 'unreadable' as const);
        if (jobGoneAtMs === undefined && job === null) jobGoneAtMs = Date.now() - t0;
        // Read after the BlockPull was seen gone: no job of ours may run without its record.
        if (bpGoneAtMs !== undefined && jobAfterBpGone === 'not looked') jobAfterBpGone = job;
        if (bpGoneAtMs === undefined && (await getBlockPull(kube, ns, 'pull')) === undefined)
          bpGoneAtMs = Date.now() - t0;
        await sleep(100);
      }
    })();

    // The namespace controller: Terminating, then what is in it deleted resource by resource,
    // the core group's (pods) before the custom ones; the operator sees the pod terminate first.
    await kube.kubectl(['delete', 'namespace', ns, '--wait=false']);
    await kube.kubectl(['delete', 'pod', launcher.podName, '-n', ns, '--wait=false']);
    await sleep(1_000);
    await Promise.all([
      kube.kubectl(['delete', 'blockpull', 'pull', '-n', ns, '--wait=false']),
      kube.kubectl(['delete', 'vmi', 'vm1', '-n', ns, '--wait=false']),
    ]);
    const pod = await kube.kubectl([
      'get',
      'pod',
      launcher.podName,
      '-n',
      ns,
      '-o',
      'jsonpath={.metadata.deletionTimestamp}',
    ]);
    expect(pod.trim(), 'the launcher pod stays while its grace period runs').not.toBe('');

    // The kubelet: the grace period runs out, the containers (the stand-in) stop.
    await sleep(GRACE_MS - (Date.now() - t0));
    const jobAtStop = await driver.getJob(launcher.domain, target);
    const launcherStopAtMs = Date.now() - t0;
    await launcher.stop();
    launchers.splice(launchers.indexOf(launcher), 1);
    await kube.kubectl(['delete', 'pod', launcher.podName, '-n', ns, '--grace-period=0', '--force']);
    await kube.kubectl([
      'patch',
      'vmi',
      'vm1',
      '-n',
      ns,
      '--type=json',
      '-p',
      '[{"op":"remove","path":"/metadata/finalizers"}]',
    ]);
    await waitFor('BlockPull gone', 30_000, async () => (await getBlockPull(kube, ns, 'pull')) === undefined);
    watching = false;
    await watcher;
    // The namespace controller finalizes the empty namespace.
    const nsObject = JSON.parse(await kube.kubectl(['get', 'namespace', ns, '-o', 'json'])) as {
      spec: Record<string, unknown>;
    };
    await kube.kubectl(['replace', '--raw', `/api/v1/namespaces/${ns}/finalize`, '-f', '-'], {
      input: JSON.stringify({ ...nsObject, spec: { ...nsObject.spec, finalizers: [] } }),
    });
    await waitFor(
      'namespace gone',
      30_000,
      async () => (await kube.kubectlResult(['get', 'namespace', ns])).exitCode !== 0,
    );
    const nsGoneAtMs = Date.now() - t0;

    const abortLines = operator!.find('block job abort requested').filter((l) => l['blockpull'] === `${ns}/pull`);
    console.log(
      `namespace deletion: job gone at ${jobGoneAtMs ?? '-'} ms, BlockPull gone at ${bpGoneAtMs ?? '-'} ms, launcher stopped at ${launcherStopAtMs} ms, namespace gone at ${nsGoneAtMs} ms`,
    );
    expect(jobAtStop, 'no job of ours runs when the launcher stops').toBeNull();
    expect(abortLines).toHaveLength(1);
    expect(jobGoneAtMs).toBeDefined();
    expect(bpGoneAtMs).toBeDefined();
    expect(jobGoneAtMs!).toBeLessThan(launcherStopAtMs);
    // Polled, the two times can cross by one look's latency (a job read just before the abort,
    // the BlockPull read just after its finalizer went): what must hold is that once the
    // BlockPull is gone, no job of ours is on the disk.
    expect(jobAfterBpGone, 'the job is gone once the BlockPull is').toBeNull();
  });

  it('helm uninstall with a pull Running leaves the job and its record; with the operator gone for good, the docs way out aborts it and lets the BlockPull go', async () => {
    const ns = 'bp-gone';
    const { launcher, driver, target } = await setUp(ns, 'pull');
    await running(ns, 'pull');

    // helm uninstall: the Deployment goes, the operator gets SIGTERM.
    expect(await operator!.stop()).toBe(0);
    operator = undefined;
    const left = await getBlockPull(kube, ns, 'pull');
    expect(left?.status?.job?.state, 'the record says our job runs').toBe('Running');
    expect(left?.metadata.finalizers).toContain('blockpull.dev/abort-on-delete');
    expect(await driver.getJob(launcher.domain, target), 'SIGTERM leaves the job running').not.toBeNull();

    // Without an operator a delete waits for the finalizer for ever.
    await kube.kubectl(['delete', 'blockpull', 'pull', '-n', ns, '--wait=false']);
    await sleep(3_000);
    expect((await getBlockPull(kube, ns, 'pull'))?.metadata.finalizers, 'Terminating, finalizer kept').toContain(
      'blockpull.dev/abort-on-delete',
    );

    // docs/operations.md's block, command by command, with this BlockPull's names.
    const vars: Record<string, string> = { NS: ns, BP: 'pull' };
    let recordLine = '';
    for (const line of await operatorGoneRecipe()) {
      const assignments = line.every((w) => /^[A-Z]+=/.test(w));
      if (assignments && line.every((w) => w.startsWith('NS=') || w.startsWith('BP='))) continue;
      if (assignments) {
        // The user copies POD, DOMAIN and TARGET from the record line; the URI is the stand-in's.
        const [state, pod, domain, tgt] = recordLine.trim().split(' ');
        expect(state).toBe('Running');
        for (const w of line) {
          const [k] = w.split('=', 1) as [string];
          vars[k] = { POD: pod!, DOMAIN: domain!, TARGET: tgt!, URI: launcher.uri }[k] ?? '';
        }
        continue;
      }
      const argv = line.map((w) =>
        w.replaceAll(/\$([A-Z]+)|\$\{([A-Z]+)\}/g, (_m, a?: string, b?: string) => vars[a ?? b ?? ''] ?? ''),
      );
      expect(argv[0]).toBe('kubectl');
      const dashes = argv.indexOf('--');
      if (argv.includes('exec') && dashes > 0) {
        // No kubelet here to exec into the pod: the command after `--` runs in the stand-in as its user.
        expect(argv.slice(1, dashes)).toEqual(['-n', ns, 'exec', launcher.podName, '-c', 'compute']);
        const r = await launcher.runner.run(argv.slice(dashes + 1), { timeoutMs: 30_000 });
        expect(r.exitCode, `${argv.slice(dashes + 1).join(' ')}: ${r.stderr}`).toBe(0);
      } else {
        const out = await kube.kubectl(argv.slice(1));
        if (argv.includes('get')) recordLine = out;
      }
    }
    expect(await driver.getJob(launcher.domain, target), 'the way out aborted the job').toBeNull();
    await waitFor('BlockPull gone', 30_000, async () => (await getBlockPull(kube, ns, 'pull')) === undefined);
    expect(
      (await driver.getDisk(launcher.domain, { name: 'rootdisk' })).chain.length,
      'an aborted pull leaves a valid chain',
    ).toBeGreaterThanOrEqual(1);
  });
});

/** docs/operations.md's operator-gone block: one argv per command line (comments and blank lines left out). */
async function operatorGoneRecipe(): Promise<string[][]> {
  const page = await readFile(path.join(REPO_ROOT, 'docs', 'operations.md'), 'utf8');
  const m = /<!-- operator-gone recipe[^>]*-->\s*```sh\n([\s\S]*?)```/.exec(page);
  if (!m?.[1]) throw new Error('docs/operations.md has no operator-gone recipe block');
  return m[1]
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.trim().startsWith('#'))
    .map(words);
}

/** Shell words of a simple command line: blanks separate, '...' is literal, "..." keeps $VARs for later. */
function words(line: string): string[] {
  const out: string[] = [];
  let cur: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === ' ') {
      if (cur !== undefined) out.push(cur);
      cur = undefined;
    } else if (c === "'" || c === '"') {
      const end = line.indexOf(c, i + 1);
      if (end < 0) throw new Error(`unbalanced quote in: ${line}`);
      cur = (cur ?? '') + line.slice(i + 1, end);
      i = end;
    } else if (/[|;&<>`()]/.test(c) || (c === '$' && line[i + 1] === '(')) {
      throw new Error(`the recipe must stay simple commands (no ${c}): ${line}`);
    } else {
      cur = (cur ?? '') + c;
    }
  }
  if (cur !== undefined) out.push(cur);
  return out;
}
