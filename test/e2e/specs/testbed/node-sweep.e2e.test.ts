/**
 * The stale-node sweep (test/e2e/node/node-state.ts, run by every startNode()): a node whose owner
 * process died without stopping it (SIGKILL) leaves containers, shims, mounts, a bridge, an iptables
 * rule, cgroups and its /var/tmp/bpnode-* dir; the next start removes exactly those of dead owners.
 *
 * 1. Simulated owners, real host resources: two fabricated node records, each with a process, a
 *    bridge, a DNAT rule, a mount, cgroups (one with a process inside), CNI leases and a
 *    /var/log/containers link. The one whose owner is dead is swept completely; the one owned by this
 *    (live) process, and a run dir without a record, are left untouched.
 * 2. The real thing: a child process starts a control plane and a node running a pod, and is SIGKILLed;
 *    the sweep then leaves nothing of that node behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { processStartTime } from '../../support/lock.ts';
import { stopRecorded } from '../../cluster/control-plane.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { findProcesses, isOurs, processesMentioning, run, type DaemonRecord } from '../../support/process.ts';
import { nodeLeftovers } from '../../node/kubelet.ts';
import {
  cgroupHierarchies,
  NODE_RUN_PREFIX,
  NODE_RUN_ROOT,
  readNodeRecord,
  sweepStaleNodes,
  teardownNode,
  writeNodeRecord,
  type NodeRecord,
} from '../../node/node-state.ts';
import { mountsUnder } from '../../support/mounts.ts';

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch {
      /* best effort: each cleanup is independent */
    }
  }
});

/** A process that is gone, with the identity it had. */
async function deadOwner(): Promise<{ pid: number; start: string }> {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  const pid = child.pid ?? 0;
  const start = processStartTime(pid) ?? '';
  const exited = new Promise((r) => child.on('exit', r));
  child.kill('SIGKILL');
  await exited;
  expect(processStartTime(pid)).toBeUndefined();
  return { pid, start };
}

function spawnDetached(argv: readonly string[]): ChildProcess {
  const [file, ...args] = argv;
  const child = spawn(file ?? '', args, { stdio: 'ignore', detached: true });
  child.unref();
  return child;
}

/** A node record with real resources of every kind the teardown removes. */
async function fabricateNode(owner: { pid: number; start: string }): Promise<{ rec: NodeRecord; inCgroup: number }> {
  const id = `t${randomBytes(3).toString('hex')}`;
  const runDir = join(NODE_RUN_ROOT, `${NODE_RUN_PREFIX}${id}`);
  const rec: NodeRecord = {
    version: 1,
    id,
    name: `sweep-${id}`,
    runDir,
    cgroupRoot: `/blockpull-${id}`,
    bridge: `bpcni${id}`,
    network: `blockpull-${id}`,
    owner,
    detached: false,
    controlPlane: {
      stateDir: join(runDir, 'no-control-plane'),
      server: 'https://127.0.0.1:1',
      kubeconfigPath: join(runDir, 'none'),
      kubectl: '/bin/false',
    },
    daemons: [],
  };
  cleanups.push(async () => {
    await teardownNode(rec);
  });
  mkdirSync(join(runDir, 'logs'), { recursive: true });
  mkdirSync(join(runDir, 'pod-logs'), { recursive: true });
  writeFileSync(join(runDir, 'logs', 'kubelet.log'), '');
  writeFileSync(join(runDir, 'pod-logs', '0.log'), '');
  // a "kubelet": a process whose command line names the run dir, recorded like a daemon
  const daemon = spawnDetached(['tail', '-f', join(runDir, 'logs', 'kubelet.log')]);
  await sleep(50);
  const record: DaemonRecord = {
    name: 'kubelet',
    pid: daemon.pid ?? 0,
    start: processStartTime(daemon.pid ?? 0) ?? '',
    binary: 'tail',
    marker: runDir,
    logFile: join(runDir, 'logs', 'kubelet.log'),
  };
  expect(isOurs(record)).toBe(true);
  rec.daemons.push(record);
  // a "container": a process inside the node's cgroups only (no record names it)
  const contained = spawnDetached(['sleep', '600']);
  const inCgroup = contained.pid ?? 0;
  for (const h of cgroupHierarchies()) {
    const dir = join(h, rec.cgroupRoot, 'kubepods', 'pod1');
    mkdirSync(dir, { recursive: true });
    try {
      writeFileSync(join(dir, 'cgroup.procs'), String(inCgroup));
    } catch {
      /* a hierarchy that refuses (e.g. the unified one beside v1 controllers) */
    }
  }
  // network: bridge + DNAT rule; a mount; CNI leases; a /var/log/containers link
  await run(['ip', 'link', 'add', rec.bridge, 'type', 'bridge']);
  rec.dnatRule = [
    'PREROUTING',
    '-i',
    rec.bridge,
    '-d',
    '10.0.0.1/32',
    '-p',
    'tcp',
    '--dport',
    '443',
    '-m',
    'comment',
    '--comment',
    `blockpull-node-${id}`,
    '-j',
    'DNAT',
    '--to-destination',
    '127.0.0.1:1',
  ];
  await run(['iptables', '-t', 'nat', '-A', ...rec.dnatRule]);
  const mnt = join(runDir, 'containerd', 'state', 'shm');
  mkdirSync(mnt, { recursive: true });
  await run(['mount', '-t', 'tmpfs', 'tmpfs', mnt]);
  mkdirSync(join('/var/lib/cni/networks', rec.network), { recursive: true });
  mkdirSync('/var/log/containers', { recursive: true });
  const link = join('/var/log/containers', `sweep-${id}.log`);
  symlinkSync(join(runDir, 'pod-logs', '0.log'), link);
  writeNodeRecord(rec);
  return { rec, inCgroup };
}

/** What of a fabricated node is still there (the same checks as nodeLeftovers, plus the extras). */
async function present(rec: NodeRecord, inCgroup: number): Promise<string[]> {
  const left = await nodeLeftovers(rec.runDir, { cgroupRoot: rec.cgroupRoot, containerd: rec });
  if (processStartTime(inCgroup) !== undefined) left.push(`process in the node's cgroup ${inCgroup}`);
  if (existsSync(`/sys/class/net/${rec.bridge}`)) left.push(`bridge ${rec.bridge}`);
  if (existsSync(join('/var/lib/cni/networks', rec.network))) left.push('CNI leases');
  if (readdirSync('/var/log/containers').includes(`sweep-${rec.id}.log`)) left.push('log link');
  return [...new Set(left)];
}

describe('stale-node sweep', () => {
  it('sweeps the node of a dead owner completely, and leaves a live run and an unrecorded dir alone', async () => {
    const dead = await fabricateNode(await deadOwner());
    const live = await fabricateNode({ pid: process.pid, start: processStartTime(process.pid) ?? '' });
    const unrecorded = join(NODE_RUN_ROOT, `${NODE_RUN_PREFIX}u${randomBytes(3).toString('hex')}`);
    mkdirSync(unrecorded);
    cleanups.push(() => rmSync(unrecorded, { recursive: true, force: true }));
    // everything is there before
    for (const n of [dead, live]) {
      const before = await present(n.rec, n.inCgroup);
      expect(before).toContain(`iptables nat rule blockpull-node-${n.rec.id}`);
      expect(before).toContain(`bridge ${n.rec.bridge}`);
      expect(before.some((l) => l.startsWith('mount '))).toBe(true);
      expect(before.some((l) => l.startsWith('cgroup '))).toBe(true);
      expect(before).toContain(`process in the node's cgroup ${n.inCgroup}`);
      expect(before).toContain('log link');
    }

    const swept = await sweepStaleNodes({ log: (m) => process.stderr.write(`[node-sweep] ${m}\n`) });
    expect(swept).toContain(dead.rec.runDir);
    expect(swept).not.toContain(live.rec.runDir);
    expect(await present(dead.rec, dead.inCgroup)).toEqual([]);

    // the live run is intact: record, process, rule, mount, cgroup process
    expect(readNodeRecord(live.rec.runDir)).toEqual(live.rec);
    expect(live.rec.daemons.every(isOurs)).toBe(true);
    expect((await present(live.rec, live.inCgroup)).length).toBeGreaterThanOrEqual(6);
    expect(existsSync(unrecorded)).toBe(true);

    // and its owner's own teardown removes it all
    expect(await teardownNode(live.rec)).toEqual([]);
    expect(await present(live.rec, live.inCgroup)).toEqual([]);
  });

  it('a SIGKILLed test process: the next sweep removes its node (daemons, pod containers, shims, mounts, bridge, rule)', async () => {
    const stateDir = join(REPO_ROOT, '.cache', `node-sweep-${process.pid}`);
    cleanups.push(async () => {
      await stopRecorded(stateDir);
      rmSync(stateDir, { recursive: true, force: true });
    });
    // A separate Node process (the project's Node 24) that owns a control plane + node running a pod.
    const script = `
      import { startControlPlane } from ${JSON.stringify(join(REPO_ROOT, 'test/e2e/cluster/control-plane.ts'))};
      import { nodeApiserverArgs, startNode } from ${JSON.stringify(join(REPO_ROOT, 'test/e2e/node/kubelet.ts'))};
      import { testImage } from ${JSON.stringify(join(REPO_ROOT, 'test/e2e/images/images.ts'))};
      const stateDir = ${JSON.stringify(stateDir)};
      const image = await testImage();
      const cp = await startControlPlane({ stateDir, extraApiserverArgs: nodeApiserverArgs(stateDir) });
      const node = await startNode(cp, { images: [image], noSweep: true });
      // (the controller-manager creates the namespace's "default" ServiceAccount the pod needs: retry)
      for (let i = 0; (await cp.kubectlResult(['-n', 'default', 'get', 'serviceaccount', 'default'])).exitCode !== 0; i++) {
        if (i > 120) throw new Error('no default ServiceAccount');
        await new Promise((r) => setTimeout(r, 500));
      }
      await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'victim', namespace: 'default' },
        spec: { terminationGracePeriodSeconds: 1, containers: [{ name: 'main', image: image.name, imagePullPolicy: 'Never', command: ['/bin/sh', '-c', 'while :; do sleep 1; done'] }] } }) });
      await cp.kubectl(['wait', '--for=condition=Ready', 'pod/victim', '--timeout=120s'], { timeoutMs: 130_000 });
      process.stdout.write(JSON.stringify({ runDir: node.runDir }) + '\\n');
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    cleanups.push(() => {
      child.kill('SIGKILL');
    });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (c: string) => {
        out += c;
        if (out.includes('\n')) resolve(out.split('\n')[0] ?? '');
      });
      child.on('exit', (code) => reject(new Error(`child exited ${code}: ${stderr.slice(-3000)}`)));
    });
    const { runDir } = z.object({ runDir: z.string() }).parse(JSON.parse(line));
    const rec = readNodeRecord(runDir);
    if (!rec) throw new Error(`no record in ${runDir}`);
    cleanups.push(async () => {
      await teardownNode(rec);
    });

    const exited = new Promise((r) => child.on('exit', r));
    child.kill('SIGKILL');
    await exited;
    // What a SIGKILL leaves: at least the pod's shim and container, its mounts, the bridge and the rule.
    const socket = join(runDir, 'containerd', 'containerd.sock');
    expect(findProcesses(['containerd-shim', socket]).length).toBeGreaterThan(0);
    expect(mountsUnder(runDir).length).toBeGreaterThan(0);
    expect(existsSync(`/sys/class/net/${rec.bridge}`)).toBe(true);
    expect(await nodeLeftovers(runDir, { cgroupRoot: rec.cgroupRoot, containerd: rec })).toContain(
      `iptables nat rule blockpull-node-${rec.id}`,
    );

    const t0 = Date.now();
    const swept = await sweepStaleNodes({ log: (m) => process.stderr.write(`[node-sweep] ${m}\n`) });
    process.stderr.write(`[node-sweep] sweep of a SIGKILLed node took ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    expect(swept).toContain(runDir);
    expect(await nodeLeftovers(runDir, { cgroupRoot: rec.cgroupRoot, containerd: rec })).toEqual([]);
    expect(processesMentioning(runDir)).toEqual([]);
    expect(existsSync(join('/var/lib/cni/networks', rec.network))).toBe(false);
  }, 600_000);
});
