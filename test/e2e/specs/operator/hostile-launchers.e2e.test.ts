/**
 * Hostile launchers, end to end: the real control plane, the operator as its
 * own process (local transport, the chart's RBAC) and launcher stand-ins whose `virsh` is a script
 * (test/e2e/launcher/fake-launcher.ts): one that lies from a forged pod, one that floods, ten that
 * hang, ten that answer looks but hang on every action (beside a real launcher stand-in of another
 * tenant). Each scenario runs its own operator process (leader election off), one at a time.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import {
  blockPullManifest,
  buildOperator,
  imageNodeArgs,
  createFakeVmi,
  createLauncherPod,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type BlockPullView,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { sleep, waitFor } from '../../support/wait.ts';
import {
  isFakeSleeper,
  registerFakeLauncher,
  type FakeLauncher,
  type FakeVirshMode,
} from '../../launcher/fake-launcher.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';

describe('hostile launchers (operator process, fake virsh stand-ins)', () => {
  let kube: ClusterClient;
  let registryDir: string;
  let tmp: string;
  let saKubeconfig: string;
  const fakes: FakeLauncher[] = [];
  const launchers: Launcher[] = [];
  const namespaces: string[] = [];
  let operator: OperatorProcess | undefined;

  const fake = async (namespace: string, pod: string, mode: FakeVirshMode): Promise<FakeLauncher> => {
    const f = await registerFakeLauncher({
      registryDir,
      dir: path.join(tmp, `${namespace}.${pod}`),
      namespace,
      pod,
      mode,
    });
    fakes.push(f);
    return f;
  };
  const namespace = async (ns: string): Promise<string> => {
    await ensureNamespace(kube, ns);
    namespaces.push(ns);
    return ns;
  };
  const apply = (
    namespace: string,
    name: string,
    vmiName: string,
    spec: Record<string, unknown> = {},
  ): Promise<string> =>
    kube.kubectl(['apply', '-f', '-'], {
      input: blockPullManifest({ namespace, name, vmiName, disk: 'rootdisk', spec }),
    });
  const vmiUid = async (namespace: string, vmiName: string): Promise<string> =>
    (await kube.kubectl(['get', 'vmi', vmiName, '-n', namespace, '-o', 'jsonpath={.metadata.uid}'])).trim();
  const start = async (name: string, env: Record<string, string> = {}, main?: string): Promise<OperatorProcess> => {
    // A compiled `main` runs as the image does: with the ENTRYPOINT's node flags.
    const image = main !== undefined ? { main, nodeArgs: imageNodeArgs() } : {};
    operator = await startOperator({
      kubeconfig: saKubeconfig,
      registryDir,
      name,
      env: { BLOCKPULL_LEADER_ELECT: 'false', ...env },
      ...image,
    });
    return operator;
  };
  const stopOperator = async (): Promise<void> => {
    await operator?.stop();
    operator = undefined;
  };
  /** Peak and current resident memory of a process (kB in /proc; returned in MiB). */
  const memory = async (pid: number): Promise<{ rssMiB: number; peakMiB: number }> => {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    return { rssMiB: kb('VmRSS') / 1024, peakMiB: kb('VmHWM') / 1024 };
  };

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-hostile-'));
    registryDir = await mkdtemp('/var/tmp/bp-hostile-launchers-');
    saKubeconfig = await operatorServiceAccount(kube);
  });

  afterAll(async () => {
    // The stand-ins first (their sleeping commands ended, registrations gone): then no BlockPull
    // waits on a launcher and the operator drops the finalizers at once.
    for (const f of fakes) await f.stop();
    for (const l of launchers) await l.stop();
    try {
      if (operator === undefined && kube !== undefined && namespaces.length > 0) await start('hostile-cleanup');
      for (const ns of namespaces)
        await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', ns, '--wait=true', '--timeout=20s']);
    } finally {
      await stopOperator();
      if (registryDir) await rm(registryDir, { recursive: true, force: true });
      if (tmp) await rm(tmp, { recursive: true, force: true });
    }
  }, 400_000);

  it('a forged pod (label kubevirt.io/created-by and node right, not controlled by the VMI) is never used: LauncherNotFound says why', async () => {
    const ns = await namespace('bp-forge');
    await start('hostile-forge');
    try {
      // A Running VMI whose launcher pod does not exist (yet), and a tenant's pod posing as it:
      // were it believed, its virsh would report a flat disk and the BlockPull would be Completed.
      await createFakeVmi(kube, { namespace: ns, vmiName: 'vm-f', disks: ['rootdisk'], pod: false });
      const uid = await vmiUid(ns, 'vm-f');
      await createLauncherPod(kube, { namespace: ns, podName: 'forged-1', vmiName: 'vm-f', vmiUid: uid, owned: false });
      const forged1 = await fake(ns, 'forged-1', 'flat');
      await apply(ns, 'forge', 'vm-f');
      const refused = await waitFor('forge LauncherNotFound', 30_000, async () => {
        const b = await getBlockPull(kube, ns, 'forge');
        return b?.status?.reason === 'LauncherNotFound' ? b : undefined;
      });
      expect(refused.status?.phase).toBe('Pending');
      expect(refused.status?.message).toBe(
        `VirtualMachineInstance ${ns}/vm-f is Running but has no acceptable virt-launcher pod on node standin-node: pod forged-1 refused: ` +
          `not controlled by the VMI (no ownerReference with controller: true, kind VirtualMachineInstance, uid ${uid}); not in the VMI's status.activePods`,
      );
      expect(refused.status?.launcher).toBeUndefined();

      // The real launcher appears (controlled by the VMI, in activePods): it is used, even though a
      // second forged pod is newer; the BlockPull is paused first so that no job is started.
      await kube.kubectl(['patch', 'blockpull', 'forge', '-n', ns, '--type=merge', '-p', '{"spec":{"paused":true}}']);
      const realUid = await createLauncherPod(kube, {
        namespace: ns,
        podName: 'virt-launcher-vm-f-real',
        vmiName: 'vm-f',
        vmiUid: uid,
      });
      await fake(ns, 'virt-launcher-vm-f-real', 'chain3');
      await sleep(1_100); // creationTimestamp has a one-second resolution
      await createLauncherPod(kube, { namespace: ns, podName: 'forged-2', vmiName: 'vm-f', vmiUid: uid, owned: false });
      const forged2 = await fake(ns, 'forged-2', 'flat');
      await kube.kubectl([
        'patch',
        'vmi',
        'vm-f',
        '-n',
        ns,
        '--type=merge',
        '-p',
        JSON.stringify({ status: { activePods: { [realUid]: 'standin-node' } } }),
      ]);
      const paused = await waitForPhase(kube, ns, 'forge', ['Paused', 'Completed', 'Failed'], 30_000);
      expect(paused.status?.phase, JSON.stringify(paused.status)).toBe('Paused');
      expect(paused.status?.launcher?.['pod']).toBe('virt-launcher-vm-f-real');
      expect(paused.status?.backingChain?.before).toHaveLength(3);
      await sleep(2_000);
      expect((await getBlockPull(kube, ns, 'forge'))?.status?.phase).toBe('Paused');
      // virsh never ran in a forged pod.
      expect(await forged1.commands()).toEqual([]);
      expect(await forged2.commands()).toEqual([]);
    } finally {
      await stopOperator();
    }
  }, 120_000);

  it('a launcher printing 300 MiB for dumpxml: that BlockPull alone shows HypervisorUnreachable; the operator stays under 200 MiB RSS', async () => {
    const ns = await namespace('bp-flood');
    const other = await namespace('bp-flood-other');
    // The operator as the image runs it (compiled, the ENTRYPOINT's node flags; the TypeScript
    // source costs ~20-40 MiB more at load), so that the figure is the product's.
    const op = await start('hostile-flood', {}, await buildOperator());
    try {
      const pid = op.child.pid!;
      const atStart = await memory(pid);
      await createFakeVmi(kube, {
        namespace: ns,
        vmiName: 'vm-flood',
        podName: 'virt-launcher-flood',
        disks: ['rootdisk'],
      });
      const flood = await fake(ns, 'virt-launcher-flood', 'flood');
      await createFakeVmi(kube, {
        namespace: other,
        vmiName: 'vm-ok',
        podName: 'virt-launcher-ok',
        disks: ['rootdisk'],
      });
      await fake(other, 'virt-launcher-ok', 'flat');
      await apply(ns, 'flood', 'vm-flood');
      await apply(other, 'unaffected', 'vm-ok');

      // Sample RSS while the flooding launcher is looked at again and again (every 5 s).
      let maxRssMiB = 0;
      const deadline = Date.now() + 16_000;
      let flooded: BlockPullView | undefined;
      while (Date.now() < deadline) {
        maxRssMiB = Math.max(maxRssMiB, (await memory(pid)).rssMiB);
        const b = await getBlockPull(kube, ns, 'flood');
        if (b?.status?.reason === 'HypervisorUnreachable') flooded = b;
        await sleep(100);
      }
      const end = await memory(pid);
      const dumps = (await flood.commands()).filter((c) => c === 'dumpxml').length;
      console.log(
        `flood: ${dumps} dumpxml floods of 300 MiB each; operator RSS at start ${atStart.rssMiB.toFixed(1)} MiB, ` +
          `max sampled ${maxRssMiB.toFixed(1)} MiB, peak (VmHWM) ${end.peakMiB.toFixed(1)} MiB`,
      );
      expect(flooded, 'the flooded BlockPull shows HypervisorUnreachable').toBeDefined();
      expect(flooded?.status?.phase).toBe('Pending');
      expect(flooded?.status?.message).toMatch(
        /stdout of the command exceeded the limit of 1048576 bytes; the command was killed: virsh .* dumpxml/,
      );
      expect(dumps).toBeGreaterThanOrEqual(2); // retried, and cut off each time
      expect(end.peakMiB).toBeLessThan(200);
      // Another tenant's BlockPull went on as usual.
      const ok = await waitForPhase(kube, other, 'unaffected', ['Completed', 'Failed'], 10_000);
      expect(ok.status?.reason).toBe('NothingToDo');
      expect(op.child.exitCode).toBeNull();
    } finally {
      await stopOperator();
    }
  }, 180_000);

  it('ten launchers whose virsh hangs: an unrelated BlockPull gets its first status within 2 s, every time', async () => {
    const op = await start('hostile-hang');
    try {
      const hanging: FakeLauncher[] = [];
      for (let i = 0; i < 10; i++) {
        const ns = await namespace(`bp-hang-${i}`);
        await createFakeVmi(kube, {
          namespace: ns,
          vmiName: 'vm-h',
          podName: 'virt-launcher-hang',
          disks: ['rootdisk'],
        });
        hanging.push(await fake(ns, 'virt-launcher-hang', 'hang'));
        await apply(ns, 'hang', 'vm-h');
      }
      const unrelated = await namespace('bp-hang-unrelated');
      for (let i = 0; i < 8; i++) {
        await createFakeVmi(kube, {
          namespace: unrelated,
          vmiName: `vm-u${i}`,
          podName: `virt-launcher-u${i}`,
          disks: ['rootdisk'],
        });
        await fake(unrelated, `virt-launcher-u${i}`, 'flat');
      }
      // Every hanging launcher's BlockPull says why it waits.
      for (let i = 0; i < 10; i++) {
        const b = await waitFor(`hang ${i} HypervisorUnreachable`, 60_000, async () => {
          const x = await getBlockPull(kube, `bp-hang-${i}`, 'hang');
          return x?.status?.reason === 'HypervisorUnreachable' ? x : undefined;
        });
        expect(b.status?.message).toBe(
          `libvirt in pod bp-hang-${i}/virt-launcher-hang did not answer within 1000 ms; not waiting on it: its command runs on in the background (killed at its timeout) and this BlockPull is looked at again when it answers`,
        );
      }
      // Looked at again (and again) without rewriting the object while nothing changes.
      const rv = (await getBlockPull(kube, 'bp-hang-0', 'hang'))?.metadata.resourceVersion;
      await sleep(6_000);
      expect((await getBlockPull(kube, 'bp-hang-0', 'hang'))?.metadata.resourceVersion).toBe(rv);
      const firstSleeper = (await hanging[0]!.sleepers())[0];
      expect(firstSleeper).toBeDefined();

      // Unrelated BlockPulls, one every 4 s for half a minute: across the hanging commands being
      // killed at their 30 s timeout and looked at again.
      const firstStatusMs: number[] = [];
      const completedMs: number[] = [];
      for (let i = 0; i < 8; i++) {
        const t0 = performance.now();
        await apply(unrelated, `u${i}`, `vm-u${i}`);
        await kube.kubectl(
          ['wait', `blockpull/u${i}`, '-n', unrelated, '--for=jsonpath={.status.phase}', '--timeout=30s'],
          { timeoutMs: 35_000 },
        );
        firstStatusMs.push(Math.round(performance.now() - t0));
        await waitForPhase(kube, unrelated, `u${i}`, ['Completed'], 30_000);
        completedMs.push(Math.round(performance.now() - t0));
        await sleep(Math.max(0, 4_000 - (performance.now() - t0)));
      }
      console.log(
        `10 hanging launchers: unrelated BlockPull first status after ${firstStatusMs.join(', ')} ms (kubectl apply start to kubectl wait return; max ${Math.max(...firstStatusMs)} ms); ` +
          `Completed/NothingToDo after ${completedMs.join(', ')} ms`,
      );
      for (const ms of firstStatusMs) expect(ms).toBeLessThan(2_000);
      // The first hanging command was killed at its 30 s timeout (bounded, not left behind).
      expect(isFakeSleeper(firstSleeper!)).toBe(false);
      // Each hanging launcher was never looked at twice at once: at most one sleeper alive each.
      for (const h of hanging) expect((await h.sleepers()).filter(isFakeSleeper).length).toBeLessThanOrEqual(1);
      expect(op.child.exitCode).toBeNull();
    } finally {
      await stopOperator();
    }
  }, 240_000);
  it('ten launchers of namespace A answer looks but hang on every action: a BlockPull of namespace B gets its first status within 2 s, a slot within the action bound, and completes; never more than 4 pulls run', async () => {
    const limit = 4;
    // The default action bound (BLOCKPULL_ACTION_TIMEOUT_MS, 10 s); every stand-in is on one
    // node, so the per-node limit is raised to let the cluster-wide one be what holds pulls back.
    const actionBoundMs = 10_000;
    await start('hostile-slots', { BLOCKPULL_MAX_CONCURRENT_PULLS: String(limit), BLOCKPULL_MAX_PULLS_PER_NODE: '20' });
    try {
      const nsA = await namespace('bp-slots-a');
      const hanging: FakeLauncher[] = [];
      for (let i = 0; i < 10; i++) {
        await createFakeVmi(kube, {
          namespace: nsA,
          vmiName: `vm-a${i}`,
          podName: `virt-launcher-a${i}`,
          disks: ['rootdisk'],
        });
        hanging.push(await fake(nsA, `virt-launcher-a${i}`, 'hang-actions'));
      }
      const nsB = await namespace('bp-slots-b');
      const real = await startLauncher({
        namespace: nsB,
        vmiName: 'vm-b',
        registryDir,
        disks: [{ name: 'rootdisk', layers: 3, sizeMiB: 32, allocatedMiB: 17 }],
      });
      launchers.push(real);
      await createFakeVmi(kube, { namespace: nsB, vmiName: 'vm-b', launcher: real, disks: ['rootdisk'] });
      const reference = await real.reference('rootdisk');

      // Sampled all along: the BlockPulls Running (as their status says) and the actions alive
      // in the stand-ins (what runs "in libvirt": a hanging start counts until it is ended).
      let sampling = true;
      let maxRunning = 0;
      let maxActions = 0;
      const liveActions = async (): Promise<number> => {
        let n = 0;
        for (const h of hanging) n += (await h.actions()).filter(isFakeSleeper).length;
        return n;
      };
      const sampleRunning = (async () => {
        while (sampling) {
          const phases = (
            await kube.kubectl([
              'get',
              'blockpulls',
              '-A',
              '-o',
              'jsonpath={range .items[*]}{.status.phase}{"\\n"}{end}',
            ])
          ).split('\n');
          maxRunning = Math.max(maxRunning, phases.filter((p) => p === 'Running').length);
          await sleep(300);
        }
      })();
      const sampleActions = (async () => {
        while (sampling) {
          maxActions = Math.max(maxActions, await liveActions());
          await sleep(100);
        }
      })();

      try {
        for (let i = 0; i < 10; i++) await apply(nsA, `a${i}`, `vm-a${i}`);
        // A takes every slot with starts that never return.
        await waitFor('namespace A holds every slot', 30_000, async () =>
          (await liveActions()) >= limit ? true : undefined,
        );

        const t0 = performance.now();
        await apply(nsB, 'b', 'vm-b');
        await kube.kubectl(['wait', 'blockpull/b', '-n', nsB, '--for=jsonpath={.status.phase}', '--timeout=30s'], {
          timeoutMs: 35_000,
        });
        const firstStatusMs = Math.round(performance.now() - t0);
        let waitingSince: number | undefined;
        let slotWaitMs: number | undefined;
        const done = await waitFor('b Completed', 90_000, async () => {
          const b = await getBlockPull(kube, nsB, 'b');
          const now = performance.now();
          if (b?.status?.reason === 'WaitingForSlot') waitingSince ??= now;
          if (slotWaitMs === undefined && (b?.status?.phase === 'Running' || b?.status?.phase === 'Completed'))
            slotWaitMs = Math.round(now - (waitingSince ?? now));
          return b?.status?.phase === 'Completed' || b?.status?.phase === 'Failed' ? b : undefined;
        });
        const completedMs = Math.round(performance.now() - t0);
        console.log(
          `slots: 10 launchers of ${nsA} hang on every action (limit ${limit}, action bound ${actionBoundMs} ms): BlockPull ${nsB}/b first status after ${firstStatusMs} ms, ` +
            `waited for a slot ${slotWaitMs ?? '?'} ms, ${done.status?.phase} after ${completedMs} ms; at most ${maxRunning} BlockPulls Running and ${maxActions} actions alive at once`,
        );
        expect(done.status?.phase, JSON.stringify(done.status)).toBe('Completed');
        expect(await real.compare('rootdisk', reference)).toBe(true);
        expect(firstStatusMs).toBeLessThan(2_000);
        expect(waitingSince, 'b waited for a slot (A held them all)').toBeDefined();
        // One action bound, and the wake-up after it: B's wait does not depend on A giving up.
        expect(slotWaitMs!).toBeLessThan(actionBoundMs + 5_000);
        // A's starts that did not answer were ended at the bound: recorded Unanswered, then (no job
        // on the disk) a failed start waiting out its backoff; none of A's is Completed.
        const statusesA = await Promise.all(
          Array.from({ length: 10 }, async (_, i) => (await getBlockPull(kube, nsA, `a${i}`))?.status),
        );
        expect(
          statusesA.some(
            (st) => st?.job?.state === 'Unanswered' || (st?.reason === 'JobFailed' && (st.retries ?? 0) > 0),
          ),
          JSON.stringify(statusesA),
        ).toBe(true);
        expect(statusesA.filter((st) => st?.phase === 'Completed')).toEqual([]);
      } finally {
        sampling = false;
        await Promise.all([sampleRunning, sampleActions]);
      }
      expect(maxRunning).toBeLessThanOrEqual(limit);
      expect(maxActions).toBeLessThanOrEqual(limit);
      // The hanging starts were ended at the bound, not left behind.
      await sleep(1_000);
      const alive = await liveActions();
      expect(alive).toBeLessThanOrEqual(limit);
      expect(operator?.child.exitCode).toBeNull();
    } finally {
      await stopOperator();
    }
  }, 240_000);
});
