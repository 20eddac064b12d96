/**
 * The README's five-minute tour, block by block, as a user would paste it: the real control plane
 * with the CRD from crds/, the operator as its own process under the chart's RBAC, kubectl (the
 * e2e one, on PATH) and bash, a launcher stand-in with a real 3-layer qcow2 chain for the
 * tour's VMI and disk (the names of examples/blockpull-full.yaml). Only the namespace differs:
 * `-n vms` / `namespace: vms` become this spec's namespace, and examples/blockpull-full.yaml is
 * applied from a copy with that namespace (the commands are the README's, unchanged otherwise).
 *
 * plan: the dry-run BlockPull is planned (`Planned`, the plan printed), no job, then deleted.
 * pull: `kubectl apply` + `kubectl get bp -w` (ended by this spec once the pull is over): the
 *   watch shows the pull reach Completed; the disk ends as a single image.
 * steer: run as soon as the BlockPull has a phase: every patch is accepted and the pull ends
 *   Completed with the spec the block left (50Mi, not paused). The stand-in's small disk is pulled
 *   in about a second, so the patches usually land after the end: what they do to a RUNNING job
 *   (pause keeps the streamed data, resume continues, bandwidth applies) is tested in
 *   specs/operator/blockpull*.e2e.test.ts, not here.
 * wait: exits 0 once the pull is Completed.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import {
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { RunError, run, type RunResult } from '../../support/process.ts';
import { sleep } from '../../support/wait.ts';

const NS = 'bp-tour';

/** A tour block of the README: the fenced sh block after `<!-- tour: NAME -->`. */
function tourBlock(readme: string, name: string): string {
  const m = new RegExp(`<!-- tour: ${name}[ (][^>]*-->\\s*\`\`\`sh\\n([\\s\\S]*?)\`\`\``).exec(readme);
  if (!m?.[1]) throw new Error(`README.md has no tour block "${name}"`);
  return m[1];
}

describe("the README's five-minute tour (operator process, kubectl, bash, launcher stand-in)", () => {
  let kube: ClusterClient;
  let tmp: string;
  let registryDir: string;
  let launcher: Launcher | undefined;
  let operator: OperatorProcess | undefined;
  let readme: string;
  let example: { name: string; vmiName: string; disk: string };

  /** Runs a block with bash (set -e) in the temporary directory, the e2e kubectl first on PATH. */
  const runBlock = async (block: string, timeoutMs: number): Promise<RunResult & { timedOut: boolean }> => {
    const body = block.replaceAll('-n vms ', `-n ${NS} `).replaceAll('namespace: vms ', `namespace: ${NS} `);
    const file = path.join(tmp, `block-${Math.random().toString(36).slice(2)}.sh`);
    await writeFile(file, `set -e\n${body}`);
    const env = {
      ...process.env,
      PATH: `${path.dirname(kube.kubectlPath)}:${process.env.PATH ?? ''}`,
      KUBECONFIG: kube.kubeconfigPath,
    };
    try {
      return { ...(await run(['bash', file], { cwd: tmp, env, timeoutMs, allowExit: true })), timedOut: false };
    } catch (err) {
      if (err instanceof RunError && err.timedOut) return { ...err.result, timedOut: true };
      throw err;
    }
  };

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    readme = await readFile(path.join(REPO_ROOT, 'README.md'), 'utf8');
    const exampleText = await readFile(path.join(REPO_ROOT, 'examples', 'blockpull-full.yaml'), 'utf8');
    const doc = z
      .object({
        metadata: z.object({ name: z.string(), namespace: z.literal('vms') }),
        spec: z.object({ vmiName: z.string(), disk: z.string() }),
      })
      .parse(parse(exampleText));
    example = { name: doc.metadata.name, vmiName: doc.spec.vmiName, disk: doc.spec.disk };
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-tour-'));
    // The example, as the tour applies it (`kubectl apply -f examples/blockpull-full.yaml`), in this namespace.
    await mkdir(path.join(tmp, 'examples'));
    await writeFile(
      path.join(tmp, 'examples', 'blockpull-full.yaml'),
      exampleText.replace(/^ {2}namespace: vms$/m, `  namespace: ${NS}`),
    );
    registryDir = await mkdtemp('/var/tmp/bp-launchers-');
    const saKubeconfig = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    launcher = await startLauncher({
      namespace: NS,
      vmiName: example.vmiName,
      registryDir,
      disks: [{ name: example.disk, layers: 3, sizeMiB: 64, allocatedMiB: 24 }],
    });
    await createFakeVmi(kube, { namespace: NS, vmiName: example.vmiName, launcher, disks: [example.disk] });
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-tour' });
  });

  afterAll(async () => {
    if (kube !== undefined)
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    await operator?.stop();
    await launcher?.stop();
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('1. plan: the dry-run BlockPull is Planned, its plan printed, no job started, and it is deleted', async () => {
    const driver = new VirshDriver(launcher!.runner, launcher!.uri);
    const chainBefore = (await driver.getDisk(launcher!.domain, { name: example.disk })).chain.map((l) => l.path);
    const r = await runBlock(tourBlock(readme, 'plan'), 120_000);
    console.log(`tour plan block: exit ${r.exitCode}\n${r.stdout}${r.stderr}`);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain('plan (spec.dryRun, no job started)');
    const planLine = r.stdout.split('\n').find((l) => l.startsWith('{'));
    expect(JSON.parse(planLine ?? '{}')).toMatchObject({ space: 'Fits' });
    expect(r.stdout).toMatch(/deleted/);
    expect(operator!.find('block pull started')).toHaveLength(0);
    expect((await driver.getDisk(launcher!.domain, { name: example.disk })).chain.map((l) => l.path)).toEqual(
      chainBefore,
    );
  });

  it('2-4. pull, steer, wait: the watch shows the pull Completed, every patch is taken, wait exits 0', async () => {
    const watching = runBlock(tourBlock(readme, 'pull'), 25_000);
    await waitForPhase(kube, NS, example.name, ['Pending', 'Running', 'Completed'], 30_000);
    const steer = await runBlock(tourBlock(readme, 'steer'), 60_000);
    console.log(`tour steer block: exit ${steer.exitCode}\n${steer.stdout}${steer.stderr}`);
    expect(steer.exitCode).toBe(0);
    expect(steer.stdout.match(/patched/g)).toHaveLength(3);

    const wait = await runBlock(tourBlock(readme, 'wait'), 120_000);
    console.log(`tour wait block: exit ${wait.exitCode}\n${wait.stdout}${wait.stderr}`);
    expect(wait.exitCode).toBe(0);
    expect(wait.stdout).toContain('condition met');

    const bp = await getBlockPull(kube, NS, example.name);
    expect(bp?.status?.phase).toBe('Completed');
    expect(bp?.spec).toMatchObject({ bandwidth: '50Mi', paused: false });
    const driver = new VirshDriver(launcher!.runner, launcher!.uri);
    expect((await driver.getDisk(launcher!.domain, { name: example.disk })).chain).toHaveLength(1);

    // `kubectl get bp -w` never ends on its own: give the watch a moment to print the last change, then let it time out.
    await sleep(2_000);
    const watch = await watching;
    console.log(`tour pull block (watch ended by the spec: ${watch.timedOut}):\n${watch.stdout}${watch.stderr}`);
    expect(watch.stdout).toContain(`${example.name} created`);
    expect(watch.stdout).toMatch(
      new RegExp(`^${example.name} +${example.vmiName} +${example.disk} +Completed\\b`, 'm'),
    );
  });
});
