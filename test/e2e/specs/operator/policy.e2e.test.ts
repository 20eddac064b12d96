/**
 * BlockPullPolicy end to end: the real kube-apiserver with the CRDs from crds/, the operator as its
 * own process under the chart's RBAC (files/rbac-rules.yaml), kubectl as the client, launcher
 * stand-ins with real qcow2 chains. A policy selecting several VMIs creates one BlockPull per disk
 * (owned, labelled, named deterministically), never has more than maxConcurrent active, leaves a
 * disk a user's BlockPull already claims alone and reports the conflict, picks up a new matching
 * VMI from its watch event, and its BlockPulls go when it is deleted. CEL rejects bad specs with
 * its messages; the real kstatus and the Argo CD health check read the live policy. A VMI deleted
 * mid-pull has its pull deleted and the job aborted; finished pulls go after their TTL and are not
 * made again; a dryRun plan with base.keepBottom lists the bytes of the images that would be pulled;
 * a ClusterBlockPullPolicy's Events are in namespace default.
 */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { stringify } from 'yaml';
import { BlockPullPolicySchema } from '../../../../operator/src/api/policy-types.ts';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { blockPullName } from '../../../../operator/src/policy/naming.ts';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import {
  blockPullManifest,
  createFakeVmi,
  ensureNamespace,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { startLauncher, type Launcher, type LauncherDiskSpec } from '../../launcher/launcher.ts';
import { LUA_INTERPRETERS, POLICY_HEALTH_SCRIPT, argoHealth, healthAgreesWith } from '../../ship/argocd.ts';
import { ensureKstatus, kstatus } from '../../ship/kstatus.ts';
import { ensureDebianPackages } from '../../support/debian.ts';
import { sleep, waitFor } from '../../support/wait.ts';

const NS = 'bp-policy';
const POLICY = 'fleet';
const MAX = 2;

interface Bp {
  metadata: {
    name: string;
    uid: string;
    labels?: Record<string, string>;
    ownerReferences?: Record<string, unknown>[];
  };
  spec: { vmiName: string; disk: string; paused?: boolean };
  status?: {
    phase?: string;
    completionTime?: string;
    progress?: { currentBytes?: number };
    plan?: { bytesToWrite?: number };
  };
}

/** An Event as `kubectl get events` (core/v1) shows it. */
interface CoreEvent {
  metadata: { namespace: string };
  reason: string;
  message?: string;
  involvedObject: { kind: string; name: string; namespace?: string; uid?: string };
}

type DiskShape = Omit<LauncherDiskSpec, 'name'>;

describe('BlockPullPolicy end to end (operator process, kubectl, launcher stand-ins)', () => {
  let kube: ClusterClient;
  let registryDir: string;
  let tmp: string;
  const launchers: Launcher[] = [];
  let operator: OperatorProcess | undefined;
  const uids = new Map<string, string>();
  /** Live copies of the policy as the operator wrote it, for kstatus and Argo CD. */
  const snapshots: { name: string; obj: Record<string, unknown>; want: string }[] = [];

  const apply = async (obj: unknown): Promise<ReturnType<ClusterClient['kubectlResult']>> =>
    kube.kubectlResult(['apply', '-f', '-'], { input: stringify(obj) });
  const policyJson = async (name = POLICY): Promise<Record<string, unknown>> =>
    JSON.parse(await kube.kubectl(['get', 'blockpullpolicy', name, '-n', NS, '-o', 'json'])) as Record<string, unknown>;
  const pullsOf = async (policyUid: string): Promise<Bp[]> =>
    (
      JSON.parse(
        await kube.kubectl(['get', 'bp', '-n', NS, '-l', `blockpull.dev/policy-uid=${policyUid}`, '-o', 'json']),
      ) as { items: Bp[] }
    ).items;
  const vmi = async (
    name: string,
    disks: string[],
    labels: Record<string, string>,
    shape: DiskShape = { layers: 2, sizeMiB: 16, allocatedMiB: 12 },
  ): Promise<Launcher> => {
    const launcher = await startLauncher({
      namespace: NS,
      vmiName: name,
      registryDir,
      disks: disks.map((d) => ({ name: d, ...shape })),
    });
    launchers.push(launcher);
    await createFakeVmi(kube, { namespace: NS, vmiName: name, launcher, disks });
    uids.set(name, (await kube.kubectl(['get', 'vmi', name, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim());
    await kube.kubectl([
      'label',
      'vmi',
      name,
      '-n',
      NS,
      '--overwrite',
      ...Object.entries(labels).map(([k, v]) => `${k}=${v}`),
    ]);
    return launcher;
  };
  /** The uid of an object in NS, or (ns null) of a cluster-scoped one. */
  const uidOf = async (resource: string, name: string, ns: string | null = NS): Promise<string> =>
    (
      await kube.kubectl(['get', resource, name, ...(ns !== null ? ['-n', ns] : []), '-o', 'jsonpath={.metadata.uid}'])
    ).trim();
  /** The Events about an object of `kind` named `name`, in namespace `ns`. */
  const eventsAbout = async (ns: string, kind: string, name: string): Promise<CoreEvent[]> =>
    (
      JSON.parse(
        await kube.kubectl([
          'get',
          'events',
          '-n',
          ns,
          '--field-selector',
          `involvedObject.kind=${kind},involvedObject.name=${name}`,
          '-o',
          'json',
        ]),
      ) as { items: CoreEvent[] }
    ).items;
  const statusOf = async (
    name: string,
  ): Promise<NonNullable<ReturnType<typeof BlockPullPolicySchema.parse>['status']>> =>
    BlockPullPolicySchema.parse(await policyJson(name)).status ?? {};
  /** Sets (or with null removes) a VMI's finalizers, as KubeVirt's controllers hold and release it. */
  const setVmiFinalizers = async (name: string, finalizers: string[] | null): Promise<void> => {
    await kube.kubectl([
      'patch',
      'vmi',
      name,
      '-n',
      NS,
      '--type=merge',
      '-p',
      JSON.stringify({ metadata: { finalizers } }),
    ]);
  };
  const policy = (name: string, spec: Record<string, unknown>): Record<string, unknown> => ({
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPullPolicy',
    metadata: { name, namespace: NS },
    spec,
  });

  beforeAll(async () => {
    kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-policy-'));
    registryDir = await mkdtemp('/var/tmp/bp-launchers-');
    const saKubeconfig = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    // vm1: three disks the policy pulls; vm2: one disk a user's BlockPull already pulls.
    await vmi('vm1', ['d1', 'd2', 'd3'], { fleet: 'ci' });
    await vmi('vm2', ['rootdisk'], { fleet: 'ci' });
    // A VMI of another fleet, not running: never selected.
    await createFakeVmi(kube, {
      namespace: NS,
      vmiName: 'other',
      disks: ['rootdisk'],
      pod: false,
      phase: 'Scheduling',
    });
    await kube.kubectl(['label', 'vmi', 'other', '-n', NS, 'fleet=other']);
    operator = await startOperator({ kubeconfig: saKubeconfig, registryDir, name: 'e2e-policy' });
    // The user's claim, older than the policy.
    await writeFile(
      path.join(tmp, 'users.yaml'),
      blockPullManifest({ namespace: NS, name: 'users-pull', vmiName: 'vm2', disk: 'rootdisk' }),
    );
    await kube.kubectl(['apply', '-f', path.join(tmp, 'users.yaml')]);
    await waitForPhase(kube, NS, 'users-pull', ['Completed'], 120_000);
  }, 300_000);

  afterAll(async () => {
    if (kube !== undefined) {
      await kube.kubectlResult(['delete', 'blockpullpolicies', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    }
    await operator?.stop();
    for (const l of launchers) await l.stop();
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('creates one owned, labelled BlockPull per disk, never more than maxConcurrent active; reports the conflict', async () => {
    const applied = await apply(
      policy(POLICY, { vmiSelector: { matchLabels: { fleet: 'ci' } }, maxConcurrent: MAX, bandwidth: '2Mi' }),
    );
    expect(applied.exitCode, applied.stderr).toBe(0);
    const created = Date.now();
    const policyUid = (await kube.kubectl(['get', 'bpp', POLICY, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim();
    let maxActive = 0;
    let maxRunning = 0;
    let sawPaused = false;
    let firstAllCreatedMs: number | undefined;
    const done = await waitFor(
      'the three pulls of vm1 Completed',
      180_000,
      async () => {
        const pulls = await pullsOf(policyUid);
        const active = pulls.filter(
          (b) => b.spec.paused !== true && !['Completed', 'Failed'].includes(b.status?.phase ?? ''),
        );
        maxActive = Math.max(maxActive, active.length);
        maxRunning = Math.max(maxRunning, pulls.filter((b) => b.status?.phase === 'Running').length);
        if (pulls.some((b) => b.spec.paused === true)) sawPaused = true;
        if (pulls.length === 3 && firstAllCreatedMs === undefined) firstAllCreatedMs = Date.now() - created;
        if (snapshots.length === 0) {
          const p = await policyJson();
          const conds = (p.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? [];
          if (conds.some((c) => c.type === 'Reconciling' && c.status === 'True'))
            snapshots.push({ name: 'pulling', obj: p, want: 'InProgress' });
        }
        return pulls.length === 3 && pulls.every((b) => b.status?.phase === 'Completed') ? pulls : undefined;
      },
      250,
    );
    console.log(
      `policy: 3 BlockPulls created within ${firstAllCreatedMs} ms; most active at once ${maxActive}, most Running ${maxRunning} (maxConcurrent ${MAX})`,
    );
    expect(maxActive).toBeLessThanOrEqual(MAX);
    expect(maxRunning).toBeLessThanOrEqual(MAX);
    expect(maxRunning).toBeGreaterThanOrEqual(1);
    expect(sawPaused).toBe(true);

    // Names, owner and labels.
    const byDisk = new Map(done.map((b) => [b.spec.disk, b]));
    expect([...byDisk.keys()].sort()).toEqual(['d1', 'd2', 'd3']);
    for (const [disk, b] of byDisk) {
      expect(b.spec.vmiName).toBe('vm1');
      expect(b.metadata.name).toBe(
        blockPullName({ policyUid, vmiName: 'vm1', vmiUid: uids.get('vm1')!, disk, role: 'pull' }),
      );
      expect(b.metadata.name.length).toBeLessThanOrEqual(63);
      expect(b.metadata.ownerReferences).toEqual([
        {
          apiVersion: 'blockpull.dev/v1alpha1',
          kind: 'BlockPullPolicy',
          name: POLICY,
          uid: policyUid,
          controller: true,
          blockOwnerDeletion: true,
        },
      ]);
      expect(b.metadata.labels).toMatchObject({
        'blockpull.dev/policy': POLICY,
        'blockpull.dev/policy-kind': 'BlockPullPolicy',
        'blockpull.dev/vmi-uid': uids.get('vm1'),
        'blockpull.dev/role': 'pull',
      });
    }

    // The user's BlockPull keeps vm2's disk: a conflict, no second BlockPull; the disk is flat all the same.
    const p = await waitFor('the policy Ready', 30_000, async () => {
      const obj = await policyJson();
      const parsed = BlockPullPolicySchema.parse(obj);
      const ready = parsed.status?.conditions?.find((c) => c.type === 'Ready');
      return ready?.status === 'True' ? { obj, parsed } : undefined;
    });
    const st = p.parsed.status!;
    console.log(`policy status: ${JSON.stringify({ ...st, conditions: undefined })}`);
    expect(st.conflictCount).toBe(1);
    expect(st.conflicts?.[0]).toMatchObject({ namespace: NS, vmi: 'vm2', disk: 'rootdisk', blockPull: 'users-pull' });
    expect(st.selectedDisks).toBe(4);
    expect(st.counts).toMatchObject({ completed: 4, failed: 0, running: 0 });
    expect(st.bytesDone).toBe(st.bytesTotal);
    expect(st.bytesTotal).toBeGreaterThan(0);
    expect(st.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ reason: 'AllFlat', observedGeneration: 1 });
    const bpNames = (await kube.kubectl(['get', 'bp', '-n', NS, '-o', 'jsonpath={.items[*].spec.vmiName}'])).split(' ');
    expect(bpNames.filter((n) => n === 'vm2')).toHaveLength(1);
    expect(bpNames).not.toContain('other');
    snapshots.push({ name: 'all flat', obj: p.obj, want: 'Current' });
    // The printer columns (DONE counts the disk the user's BlockPull flattened: it is flat).
    const table = await kube.kubectl(['get', 'bpp', POLICY, '-n', NS]);
    console.log(table);
    expect(table).toMatch(/SELECTED\s+ACTIVE\s+DONE\s+FAILED\s+CONFLICTS\s+READY\s+AGE/);
    expect(table).toMatch(new RegExp(`${POLICY}\\s+4\\s+0\\s+4\\s+0\\s+1\\s+True`));
  }, 240_000);

  it('a new matching VMI is picked up from its watch event', async () => {
    const policyUid = (await kube.kubectl(['get', 'bpp', POLICY, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim();
    await vmi('vm3', ['rootdisk'], { fleet: 'ci' });
    const labelled = Date.now();
    const bp = await waitFor('a BlockPull for vm3', 30_000, async () =>
      (await pullsOf(policyUid)).find((b) => b.spec.vmiName === 'vm3'),
    );
    console.log(`new VMI picked up: its BlockPull exists ${Date.now() - labelled} ms after the VMI got its label`);
    expect(bp.metadata.labels?.['blockpull.dev/vmi-uid']).toBe(uids.get('vm3'));
    await waitForPhase(kube, NS, bp.metadata.name, ['Completed'], 120_000);
  }, 180_000);

  it('CEL rejects bad specs with clear messages', async () => {
    const cases: [string, Record<string, unknown>, string][] = [
      [
        'window of no length',
        policy('bad', { vmiSelector: {}, window: { start: '02:00', end: '02:00', timeZone: 'UTC' } }),
        'window start and end must differ',
      ],
      [
        'In without values',
        policy('bad', { vmiSelector: { matchExpressions: [{ key: 'fleet', operator: 'In' }] } }),
        'operator In and NotIn need at least one value',
      ],
      [
        'keepBottom not below minChainLength',
        policy('bad', { vmiSelector: {}, base: { keepBottom: 2 } }),
        'minChainLength must be greater than base.keepBottom',
      ],
      [
        'bandwidth not a quantity',
        policy('bad', { vmiSelector: {}, bandwidth: 'fast' }),
        'bandwidth must be a non-negative integer or a Quantity',
      ],
      [
        'a time of day out of range',
        policy('bad', { vmiSelector: {}, window: { start: '25:00', end: '06:00', timeZone: 'UTC' } }),
        'spec.window.start',
      ],
      [
        'a cluster policy without namespaceSelector',
        {
          apiVersion: 'blockpull.dev/v1alpha1',
          kind: 'ClusterBlockPullPolicy',
          metadata: { name: 'bad' },
          spec: { vmiSelector: {} },
        },
        'spec.namespaceSelector: Required value',
      ],
    ];
    for (const [what, obj, message] of cases) {
      const r = await apply(obj);
      console.log(`${what}: ${r.stderr.trim()}`);
      expect(r.exitCode, what).not.toBe(0);
      expect(r.stderr, what).toContain(message);
    }
  });

  it('kstatus and the Argo CD health check agree on the live policy', async () => {
    // A window in a zone nobody knows: Stalled. A paused policy: waits.
    expect(
      (
        await apply(
          policy('tz', { vmiSelector: {}, window: { start: '01:00', end: '02:00', timeZone: 'Mars/Olympus' } }),
        )
      ).exitCode,
    ).toBe(0);
    expect((await apply(policy('nothing', { vmiSelector: { matchLabels: { fleet: 'none' } } }))).exitCode).toBe(0);
    const observed = async (name: string): Promise<Record<string, unknown>> =>
      waitFor(`policy ${name} observed`, 30_000, async () => {
        const obj = await policyJson(name);
        return ((obj.status as { observedGeneration?: number } | undefined)?.observedGeneration ?? 0) >= 1
          ? obj
          : undefined;
      });
    snapshots.push({ name: 'invalid window', obj: await observed('tz'), want: 'Failed' });
    snapshots.push({ name: 'nothing selected', obj: await observed('nothing'), want: 'Current' });
    // Paused (selecting the VMI of the other fleet, which does not run): waits, Suspended in Argo CD.
    expect(
      (await apply(policy('held', { vmiSelector: { matchLabels: { fleet: 'other' } }, paused: true }))).exitCode,
    ).toBe(0);
    snapshots.push({ name: 'paused', obj: await observed('held'), want: 'InProgress' });
    // A cluster policy over this namespace (the API server labels every namespace with its name):
    // every disk it selects is already claimed by an older claim; the one not yet flat is in
    // conflict, so nothing can progress: Stalled (Conflict).
    const cluster = {
      apiVersion: 'blockpull.dev/v1alpha1',
      kind: 'ClusterBlockPullPolicy',
      metadata: { name: 'bp-policy-overlap' },
      spec: { vmiSelector: {}, namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': NS } } },
    };
    expect((await apply(cluster)).exitCode).toBe(0);
    const overlap = await waitFor('the cluster policy observed', 30_000, async () => {
      const obj = JSON.parse(
        await kube.kubectl(['get', 'clusterblockpullpolicy', 'bp-policy-overlap', '-o', 'json']),
      ) as Record<string, unknown>;
      return ((obj.status as { observedGeneration?: number } | undefined)?.observedGeneration ?? 0) >= 1
        ? obj
        : undefined;
    });
    const ost = (overlap.status ?? {}) as { selectedDisks?: number; conflictCount?: number };
    console.log(`cluster policy over ${NS}: ${ost.selectedDisks} disks selected, ${ost.conflictCount} in conflict`);
    expect(ost.selectedDisks).toBe(6);
    expect(ost.conflictCount).toBe(6);
    snapshots.push({ name: 'overlapping (cluster)', obj: overlap, want: 'Failed' });
    await kube.kubectl(['delete', 'clusterblockpullpolicy', 'bp-policy-overlap']);
    // Just created, not looked at: the CRD's status default (observedGeneration 0).
    const raw = policy('unobserved', { vmiSelector: {} });
    const fresh = JSON.parse(
      await kube.kubectl(['create', '--dry-run=server', '-o', 'json', '-f', '-'], { input: stringify(raw) }),
    ) as Record<string, unknown>;
    snapshots.push({ name: 'not observed yet', obj: fresh, want: 'InProgress' });
    const checker = await ensureKstatus({ log: (l) => process.stderr.write(`[kstatus] ${l}\n`) });
    await ensureDebianPackages([...LUA_INTERPRETERS]);
    const got = await kstatus(
      checker,
      snapshots.map((s) => s.obj),
    );
    for (const [i, s] of snapshots.entries()) {
      const health = await Promise.all(LUA_INTERPRETERS.map((lua) => argoHealth(lua, s.obj, POLICY_HEALTH_SCRIPT)));
      console.log(
        `${s.name.padEnd(20)} kstatus ${got[i]?.status} (${got[i]?.message}); Argo CD ${health[0]?.status}: ${health[0]?.message}`,
      );
      expect(got[i]?.status, s.name).toBe(s.want);
      for (const h of health) expect(healthAgreesWith(s.want), s.name).toContain(h.status);
    }
  }, 600_000);

  it('the end of the window pauses the running pull, keeping its data', async () => {
    // The policies that select every VMI go first (the older claim would win vm4's disk).
    await kube.kubectl(['delete', 'bpp', 'tz', 'held', '-n', NS, '--wait=true']);
    await vmi('vm4', ['rootdisk'], { fleet: 'night' });
    const hhmm = (d: Date): string => d.toISOString().slice(11, 16);
    const now = new Date();
    // Open since a minute ago, closing in two (UTC): the pull starts, then the window ends under it.
    const window = {
      start: hhmm(new Date(now.getTime() - 60_000)),
      end: hhmm(new Date(now.getTime() + 120_000)),
      timeZone: 'UTC',
    };
    expect(
      (await apply(policy('nightly', { vmiSelector: { matchLabels: { fleet: 'night' } }, bandwidth: '32Ki', window })))
        .exitCode,
    ).toBe(0);
    const policyUid = (
      await kube.kubectl(['get', 'bpp', 'nightly', '-n', NS, '-o', 'jsonpath={.metadata.uid}'])
    ).trim();
    const running = await waitFor('the pull of vm4 Running', 60_000, async () =>
      (await pullsOf(policyUid)).find((b) => b.status?.phase === 'Running'),
    );
    const paused = await waitFor(
      'the pull of vm4 paused by the window',
      200_000,
      async () => {
        const b = (await pullsOf(policyUid)).find((x) => x.metadata.name === running.metadata.name);
        return b?.spec.paused === true && b.status?.phase === 'Paused' ? b : undefined;
      },
      500,
    );
    const closedAt = Date.now();
    const progress = (paused.status as { progress?: { currentBytes?: number; totalBytes?: number } }).progress;
    console.log(
      `window ${window.start}-${window.end} UTC: the pull was paused at ${progress?.currentBytes}/${progress?.totalBytes} bytes`,
    );
    expect(progress?.currentBytes).toBeGreaterThan(0);
    // The policy writes its status at most every 2 s: the pause it made may be newer than its status.
    const st = await waitFor('the policy status after the window closed', 15_000, async () => {
      const s = BlockPullPolicySchema.parse(await policyJson('nightly')).status;
      return s?.window?.open === false && s.active === 0 ? s : undefined;
    });
    expect(st?.window?.open).toBe(false);
    expect(Date.parse(st?.window?.nextChange ?? '')).toBeGreaterThan(closedAt + 20 * 3600_000);
    expect(st?.conditions?.find((c) => c.type === 'Reconciling')).toMatchObject({
      status: 'True',
      reason: 'OutsideWindow',
    });
    expect(st?.active).toBe(0);
    await kube.kubectl(['delete', 'bpp', 'nightly', '-n', NS, '--wait=true']);
  }, 300_000);

  it('a VMI deleted mid-pull: its pull is deleted and the job aborted, the counts follow; no hang', async () => {
    // The pull of gone1 lasts (~11 MiB at 128 KiB/s); stay1's is small and completes.
    const gone = await vmi('gone1', ['rootdisk'], { fleet: 'midpull' });
    await vmi('stay1', ['rootdisk'], { fleet: 'midpull' }, { layers: 2, sizeMiB: 4, allocatedMiB: 2 });
    expect(
      (await apply(policy('midpull', { vmiSelector: { matchLabels: { fleet: 'midpull' } }, bandwidth: '128Ki' })))
        .exitCode,
    ).toBe(0);
    const policyUid = await uidOf('bpp', 'midpull');
    const driver = new VirshDriver(gone.runner, gone.uri);
    const target = gone.disks[0]!.target;
    const running = await waitFor(
      'the pull of gone1 Running with progress',
      90_000,
      async () => {
        const b = (await pullsOf(policyUid)).find((x) => x.spec.vmiName === 'gone1');
        return b?.status?.phase === 'Running' && (b.status.progress?.currentBytes ?? 0) > 0 ? b : undefined;
      },
      250,
    );
    expect(await driver.getJob(gone.domain, target)).not.toBeNull();
    expect((await statusOf('midpull')).selectedDisks).toBe(2);
    // As KubeVirt deletes a VMI: it stays, marked for deletion, while its finalizer's work (the
    // launcher pod going, QEMU with it) is done; the policy and the BlockPull see it meanwhile.
    await setVmiFinalizers('gone1', ['kubevirt.io/virtualMachineControllerFinalize']);
    await kube.kubectl(['delete', 'vmi', 'gone1', '-n', NS, '--wait=false']);
    const deleted = Date.now();
    await waitFor(
      "gone1's BlockPull deleted",
      60_000,
      async () => !(await pullsOf(policyUid)).some((b) => b.metadata.uid === running.metadata.uid),
      250,
    );
    const goneMs = Date.now() - deleted;
    // Its finalizer aborted the job while the launcher was still there (streamed data kept, the chain intact).
    await waitFor(
      'the block job of gone1 ended',
      10_000,
      async () => (await driver.getJob(gone.domain, target)) === null,
    );
    expect(await driver.getDisk(gone.domain, { name: 'rootdisk' }).then((d) => d.chain.length)).toBe(2);
    // KubeVirt's part ends: the launcher pod and the VMI go.
    // No kubelet here to confirm the pod's end: removed at once.
    await kube.kubectl(['delete', 'pod', gone.podName, '-n', NS, '--grace-period=0', '--force']);
    await setVmiFinalizers('gone1', null);
    const st = await waitFor('the policy Ready with the one disk left', 120_000, async () => {
      const s = await statusOf('midpull');
      return s.conditions?.find((c) => c.type === 'Ready')?.status === 'True' ? s : undefined;
    });
    console.log(
      `VMI deleted mid-pull: its BlockPull gone ${goneMs} ms later; policy ${JSON.stringify({ ...st, conditions: undefined })}`,
    );
    expect(st.selectedDisks).toBe(1);
    expect(st.counts).toMatchObject({ completed: 1, failed: 0, running: 0, pending: 0, notCreated: 0 });
    expect(st.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ reason: 'AllFlat' });
    const pulls = await pullsOf(policyUid);
    expect(pulls.map((b) => [b.spec.vmiName, b.status?.phase])).toEqual([['stay1', 'Completed']]);
    // The policy says why, in an Event in its namespace.
    const ev = await waitFor('the BlockPullsDeleted Event', 20_000, async () =>
      (await eventsAbout(NS, 'BlockPullPolicy', 'midpull')).find((e) => e.reason === 'BlockPullsDeleted'),
    );
    console.log(`Event: ${ev.reason}: ${ev.message}`);
    expect(ev.message).toContain('VMIGone');
    await kube.kubectl(['delete', 'bpp', 'midpull', '-n', NS, '--wait=true']);
  }, 300_000);

  it('finished BlockPulls go after ttlSecondsAfterFinished and are not made again', async () => {
    const TTL = 5;
    await vmi('ttl1', ['rootdisk'], { fleet: 'ttl' }, { layers: 2, sizeMiB: 4, allocatedMiB: 2 });
    expect(
      (await apply(policy('ttl', { vmiSelector: { matchLabels: { fleet: 'ttl' } }, ttlSecondsAfterFinished: TTL })))
        .exitCode,
    ).toBe(0);
    const policyUid = await uidOf('bpp', 'ttl');
    const done = await waitFor('the pull of ttl1 Completed', 120_000, async () =>
      (await pullsOf(policyUid)).find((b) => b.status?.phase === 'Completed' && b.status.completionTime !== undefined),
    );
    const completedAt = Date.parse(done.status!.completionTime!);
    await waitFor(
      'the finished BlockPull deleted',
      (TTL + 30) * 1000,
      async () => (await pullsOf(policyUid)).length === 0,
      250,
    );
    const goneAfterS = (Date.now() - completedAt) / 1000;
    console.log(`TTL ${TTL} s: the finished BlockPull was deleted ${goneAfterS.toFixed(1)} s after its completionTime`);
    expect(goneAfterS).toBeGreaterThanOrEqual(TTL - 1); // completionTime has 1 s resolution
    // Remembered, not pulled again: status.finished holds the disk; no new BlockPull comes.
    const st = await waitFor('the finished disk remembered', 20_000, async () => {
      const s = await statusOf('ttl');
      return (s.finished ?? []).length > 0 ? s : undefined;
    });
    expect(st.finished).toEqual([`${uids.get('ttl1')}/rootdisk=Completed`]);
    await sleep(4_000);
    expect(await pullsOf(policyUid)).toEqual([]);
    const after = await statusOf('ttl');
    expect(after.counts).toMatchObject({ completed: 1, notCreated: 0, pending: 0 });
    expect(after.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True', reason: 'AllFlat' });
    const ev = (await eventsAbout(NS, 'BlockPullPolicy', 'ttl')).find((e) => e.reason === 'BlockPullsDeleted');
    expect(ev?.message).toContain('TTLExpired');
    await kube.kubectl(['delete', 'bpp', 'ttl', '-n', NS, '--wait=true']);
  }, 240_000);

  it('dryRun with base.keepBottom: the plan lists the bytes of the images that would be pulled, not a full pull', async () => {
    // 4 images: active, two in the middle, the golden bottom (keepBottom 1 keeps it).
    const l = await vmi('kb1', ['rootdisk'], { fleet: 'keep' }, { layers: 4, sizeMiB: 16, allocatedMiB: 12 });
    expect(
      (
        await apply(
          policy('keep', {
            vmiSelector: { matchLabels: { fleet: 'keep' } },
            base: { keepBottom: 1 },
            minChainLength: 3,
            dryRun: true,
          }),
        )
      ).exitCode,
    ).toBe(0);
    const policyUid = await uidOf('bpp', 'keep');
    const st = await waitFor('the keepBottom plan made', 120_000, async () => {
      const s = await statusOf('keep');
      return s.conditions?.find((c) => c.type === 'Ready')?.reason === 'Planned' ? s : undefined;
    });
    const entry = st.plan?.[0];
    const pulls = await pullsOf(policyUid);
    // Two looks, both plans: the chain (a full pull's bytes) and the pull down to the kept base.
    const looks = pulls.map((b) => ({ name: b.metadata.name, role: b.metadata.labels?.['blockpull.dev/role'], b }));
    expect(looks.map((x) => x.role)).toEqual(['plan', 'plan']);
    const full = looks.find((x) => (x.b.spec as { base?: unknown }).base === undefined)!.b.status?.plan?.bytesToWrite;
    const base = looks.find((x) => (x.b.spec as { base?: unknown }).base !== undefined)!;
    const bottom = (await stat(l.disks[0]!.chain[3]!)).size;
    console.log(
      `keepBottom 1 plan: ${JSON.stringify(entry)}; a full pull would write ${full} bytes; the kept bottom image is ${bottom} bytes`,
    );
    expect((base.b.spec as { base?: unknown }).base).toEqual({ position: 3 });
    expect(entry).toMatchObject({ vmi: 'kb1', disk: 'rootdisk', chainLength: 4, pull: true, blockPull: base.name });
    expect(full).toBeGreaterThan(0);
    expect(entry?.bytesToWrite).toBeGreaterThan(0);
    // The kept image is left out: the plan's figure is a full pull's less (about) the bottom image.
    expect(entry!.bytesToWrite!).toBeLessThan(full!);
    expect(Math.abs(full! - entry!.bytesToWrite! - bottom)).toBeLessThan(1024 * 1024);
    expect(st.counts).toMatchObject({ planned: 1, pending: 0 });
    // Nothing was pulled: the chain is as it was.
    expect((await new VirshDriver(l.runner, l.uri).getDisk(l.domain, { name: 'rootdisk' })).chain).toHaveLength(4);
    await kube.kubectl(['delete', 'bpp', 'keep', '-n', NS, '--wait=true']);
  }, 240_000);

  it("a ClusterBlockPullPolicy's Events are written in namespace default", async () => {
    await vmi('cev1', ['rootdisk'], { fleet: 'cluster-events' }, { layers: 2, sizeMiB: 4, allocatedMiB: 2 });
    const name = 'bp-policy-events';
    const cluster = {
      apiVersion: 'blockpull.dev/v1alpha1',
      kind: 'ClusterBlockPullPolicy',
      metadata: { name },
      spec: {
        vmiSelector: { matchLabels: { fleet: 'cluster-events' } },
        namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': NS } },
      },
    };
    expect((await apply(cluster)).exitCode).toBe(0);
    const policyUid = await uidOf('clusterblockpullpolicy', name, null);
    const ev = await waitFor('the cluster policy Event in default', 60_000, async () =>
      (await eventsAbout('default', 'ClusterBlockPullPolicy', name)).find((e) => e.reason === 'BlockPullsCreated'),
    );
    console.log(`cluster policy Event in ${ev.metadata.namespace}: ${ev.reason}: ${ev.message}`);
    expect(ev.metadata.namespace).toBe('default');
    expect(ev.involvedObject).toMatchObject({ kind: 'ClusterBlockPullPolicy', name, uid: policyUid });
    expect(ev.involvedObject.namespace ?? '').toBe('');
    expect(ev.message).toBe('created 1 BlockPull(s)');
    // None in the namespace of its BlockPulls.
    expect(await eventsAbout(NS, 'ClusterBlockPullPolicy', name)).toEqual([]);
    const bp = await waitFor('the cluster policy pull Completed', 120_000, async () =>
      (await pullsOf(policyUid)).find((b) => b.status?.phase === 'Completed'),
    );
    expect(bp.spec.vmiName).toBe('cev1');
    await kube.kubectl(['delete', 'clusterblockpullpolicy', name, '--wait=true']);
    await waitFor("the cluster policy's BlockPull gone", 60_000, async () => (await pullsOf(policyUid)).length === 0);
  }, 240_000);

  it("deleting the policy deletes its BlockPulls; the user's stays", async () => {
    const policyUid = (await kube.kubectl(['get', 'bpp', POLICY, '-n', NS, '-o', 'jsonpath={.metadata.uid}'])).trim();
    expect((await pullsOf(policyUid)).length).toBe(4);
    await kube.kubectl(['delete', 'bpp', POLICY, '-n', NS, '--wait=true']);
    const gone = Date.now();
    await waitFor("the policy's BlockPulls gone", 60_000, async () => (await pullsOf(policyUid)).length === 0);
    console.log(`policy deleted: its BlockPulls gone ${Date.now() - gone} ms later`);
    await sleep(500);
    expect((await kube.kubectlResult(['get', 'bp', 'users-pull', '-n', NS])).exitCode).toBe(0);
  }, 120_000);
});
