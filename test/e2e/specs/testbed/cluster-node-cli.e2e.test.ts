/**
 * `npm run cluster -- up --node | status | down`: the CLI starts a control plane and one real node
 * (containerd + kubelet + controller-manager + scheduler), both kept running after the CLI exits;
 * `status` reports the node; `down` stops the node and then the control plane and leaves no process,
 * port, mount, bridge, iptables rule, cgroup or run dir behind.
 * Only the pause image is imported (enough for Ready): cached by content, so this is fast.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect, inject, it } from 'vitest';
import { z } from 'zod';
import { clusterClient } from '../../cluster/client.ts';
import { readState } from '../../cluster/control-plane.ts';
import { listeningPorts } from '../../support/ports.ts';
import { isOurs, processesMentioning, run } from '../../support/process.ts';
import { nodeLeftovers } from '../../node/kubelet.ts';
import { readNodeRecord } from '../../node/node-state.ts';

it('up --node: control plane + Ready node survive the CLI; status shows the node; down leaves nothing', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'blockpull-cli-node-'));
  const cli = path.join(import.meta.dirname, '..', '..', 'cluster', 'cli.ts');
  const runCli = async (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
    const r = await run([process.execPath, cli, ...args, '--state-dir', dir], { timeoutMs: 600_000, allowExit: true });
    return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  };
  try {
    const t0 = Date.now();
    const up = await runCli('up', '--node', '--no-crds');
    const upMs = Date.now() - t0;
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toMatch(/node blockpull-node \(\S+\) Ready in [\d.]+ s/);
    process.stderr.write(`[cluster-node-cli] up --node took ${(upMs / 1000).toFixed(1)} s\n`);

    // The CLI has exited: the control plane and the node's daemons run on.
    const state = await readState(dir);
    if (!state) throw new Error('no control-plane state after up --node');
    const { runDir } = z
      .object({ runDir: z.string() })
      .parse(JSON.parse(readFileSync(path.join(dir, 'node.json'), 'utf8')));
    const rec = readNodeRecord(runDir);
    if (!rec) throw new Error(`no node record in ${runDir}`);
    expect(rec.detached).toBe(true);
    expect(rec.daemons.map((d) => d.name).sort()).toEqual([
      'containerd',
      'kube-controller-manager',
      'kube-scheduler',
      'kubelet',
    ]);
    expect(rec.daemons.filter((d) => !isOurs(d))).toEqual([]);
    expect(state.processes.every(isOurs)).toBe(true);

    // Ready through kubectl, and it keeps being Ready with nobody holding the daemons' output.
    const c = clusterClient(path.join(dir, 'admin.kubeconfig'), inject('kubectlPath'));
    const ready = (): Promise<string> =>
      c.kubectl(['get', 'node', rec.name, '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")].status}']);
    expect(await ready()).toBe('True');
    const status = await runCli('status');
    expect(status.code, status.stdout).toBe(0);
    expect(status.stdout).toContain('running, ready');
    expect(status.stdout).toContain(`node:       ${rec.name} Ready=True (run dir ${runDir})`);
    expect(status.stdout).toMatch(/kubelet\s+pid \d+\n/);
    // the controller-manager runs: the default namespace gets its ServiceAccount
    await expect
      .poll(async () => (await c.kubectlResult(['-n', 'default', 'get', 'serviceaccount', 'default'])).exitCode, {
        timeout: 30_000,
        interval: 500,
      })
      .toBe(0);
    expect((await runCli('up', '--node')).stdout).toContain(`already running: ${state.server} with node ${rec.name}`);

    const down = await runCli('down');
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(
      /stopped: node blockpull-node \(\/var\/tmp\/bpnode-[a-z0-9]+\), kube-apiserver \(pid \d+\), etcd \(pid \d+\)/,
    );
    expect(await nodeLeftovers(runDir, { cgroupRoot: rec.cgroupRoot, containerd: rec })).toEqual([]);
    expect([...rec.daemons, ...state.processes].filter(isOurs)).toEqual([]);
    expect(processesMentioning(dir)).toEqual([]);
    expect(processesMentioning(runDir)).toEqual([]);
    expect(Object.values(state.ports).some((p) => listeningPorts().has(p))).toBe(false);
    expect(existsSync(path.join(dir, 'node.json'))).toBe(false);
    const after = await runCli('status');
    expect(after.code).toBe(3);
  } finally {
    await runCli('down');
    await rm(dir, { recursive: true, force: true });
  }
}, 600_000);
