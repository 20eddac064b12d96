/**
 * `npm run cluster -- up --kubevirt | status | down`: a control plane, one node and real KubeVirt on
 * it (KubeVirt's CRDs, the real virt-controller, the handler stand-in), all kept running after the
 * CLI exits; the example VMI it writes runs when created with kubectl; `down` stops everything it
 * started and leaves nothing behind. KubeVirt's binaries and images come from the cache.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect, inject, it } from 'vitest';
import { z } from 'zod';
import { clusterClient } from '../../cluster/client.ts';
import { readState } from '../../cluster/control-plane.ts';
import { isOurs, processesMentioning, run } from '../../support/process.ts';
import { nodeLeftovers } from '../../node/kubelet.ts';
import { readNodeRecord } from '../../node/node-state.ts';

it('up --kubevirt: the example VMI runs in a real launcher pod; status lists KubeVirt; down stops all of it', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'blockpull-cli-kubevirt-'));
  const cli = path.join(import.meta.dirname, '..', '..', 'cluster', 'cli.ts');
  const runCli = async (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => {
    const r = await run([process.execPath, cli, ...args, '--state-dir', dir], {
      timeoutMs: 1_200_000,
      allowExit: true,
    });
    return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  };
  try {
    const t0 = Date.now();
    const up = await runCli('up', '--kubevirt');
    const upMs = Date.now() - t0;
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toMatch(/KubeVirt v\d+\.\d+\.\d+: virt-controller and the handler stand-in up in [\d.]+ s/);
    const state = await readState(dir);
    if (!state) throw new Error('no control-plane state after up --kubevirt');
    const { runDir } = z
      .object({ runDir: z.string() })
      .parse(JSON.parse(readFileSync(path.join(dir, 'node.json'), 'utf8')));
    const rec = readNodeRecord(runDir);
    if (!rec) throw new Error(`no node record in ${runDir}`);
    expect(rec.daemons.map((d) => d.name)).toEqual([
      'containerd',
      'kube-controller-manager',
      'kube-scheduler',
      'kubelet',
      'virt-controller',
      'handler-standin',
    ]);
    expect(rec.daemons.filter((d) => !isOurs(d))).toEqual([]); // the CLI has exited; they run on

    const status = await runCli('status');
    expect(status.code, status.stdout).toBe(0);
    expect(status.stdout).toMatch(/virt-controller\s+pid \d+\n/);
    expect(status.stdout).toMatch(/handler-standin\s+pid \d+\n/);

    const c = clusterClient(path.join(dir, 'admin.kubeconfig'), inject('kubectlPath'));
    const t1 = Date.now();
    await c.kubectl(['create', '-f', path.join(dir, 'example-vmi.yaml')]);
    await c.kubectl(['wait', '--for=jsonpath={.status.phase}=Running', 'vmi/vm1', '--timeout=240s'], {
      timeoutMs: 250_000,
    });
    const runMs = Date.now() - t1;
    const pod = z
      .object({
        items: z.array(
          z.object({
            metadata: z.object({
              name: z.string(),
              ownerReferences: z.array(z.object({ kind: z.string(), name: z.string() })),
            }),
          }),
        ),
      })
      .parse(JSON.parse(await c.kubectl(['get', 'pods', '-l', 'kubevirt.io=virt-launcher', '-o', 'json'])));
    expect(pod.items.map((p) => p.metadata.ownerReferences.map((o) => `${o.kind}/${o.name}`))).toEqual([
      ['VirtualMachineInstance/vm1'],
    ]);
    process.stderr.write(
      `[kubevirt-cli] up --kubevirt ${(upMs / 1000).toFixed(1)} s, example VMI Running after ${(runMs / 1000).toFixed(1)} s\n`,
    );

    const down = await runCli('down');
    expect(down.code, down.stderr).toBe(0);
    expect(await nodeLeftovers(runDir, { cgroupRoot: rec.cgroupRoot, containerd: rec })).toEqual([]);
    expect([...rec.daemons, ...state.processes].filter(isOurs)).toEqual([]);
    expect(processesMentioning(runDir)).toEqual([]);
    expect(processesMentioning(dir)).toEqual([]);
  } finally {
    await runCli('down');
    await rm(dir, { recursive: true, force: true });
  }
}, 1_500_000);
