/**
 * ExecRunner (pods/exec, the production transport) against a real node: its own control plane
 * with the kubelet-client flags, kubelet + containerd (test/e2e/node), a busybox pod whose
 * container is named `compute` like virt-launcher's. Proves: argv is passed verbatim (no shell),
 * stdout/stderr are separated, exit codes come from the V1Status channel (0, non-zero), a
 * missing binary / missing pod are RunTransportError, a timeout closes the stream, and stream()
 * yields lines as they are printed and stops on demand.
 * Heavy (own control plane and node, like specs/testbed/node.e2e.test.ts).
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecRunner } from '../../../../operator/src/kubevirt/exec-runner.ts';
import { RunTimeoutError, RunTransportError } from '../../../../operator/src/hypervisor/runner.ts';
import { loadKubeConfig } from '../../../../operator/src/kube/client.ts';
import { startControlPlane, type ControlPlane } from '../../cluster/control-plane.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { testImage } from '../../images/images.ts';
import { nodeApiserverArgs, nodeLeftovers, startNode, type Node } from '../../node/kubelet.ts';
import { waitFor } from '../../support/wait.ts';

const STATE_DIR = path.join(REPO_ROOT, '.cache', 'plumb-exec-cluster');
const NS = 'plumb-exec';
const POD = 'launcher-like';

let cp: ControlPlane | undefined;
let node: Node | undefined;
let runner: ExecRunner;

beforeAll(async () => {
  const image = await testImage();
  cp = await startControlPlane({ stateDir: STATE_DIR, extraApiserverArgs: nodeApiserverArgs(STATE_DIR) });
  node = await startNode(cp, { images: [image] });
  await cp.kubectl(['create', 'namespace', NS]);
  await waitFor(
    'default service account',
    60_000,
    async () => (await cp?.kubectlResult(['-n', NS, 'get', 'serviceaccount', 'default']))?.exitCode === 0,
    500,
  );
  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: POD, namespace: NS },
    spec: {
      nodeName: node.name,
      terminationGracePeriodSeconds: 1,
      containers: [
        {
          name: 'compute',
          image: image.name,
          imagePullPolicy: 'Never',
          command: ['/bin/sh', '-c', 'trap "exit 0" TERM; while :; do sleep 1; done'],
        },
      ],
    },
  };
  await cp.kubectl(['apply', '-f', '-'], { input: JSON.stringify(pod) });
  const ready = await cp.kubectlResult(['-n', NS, 'wait', '--for=condition=Ready', `pod/${POD}`, '--timeout=120s'], {
    timeoutMs: 150_000,
  });
  if (ready.exitCode !== 0) {
    const describe = await cp.kubectlResult(['-n', NS, 'describe', 'pod', POD]);
    throw new Error(`pod ${POD} not Ready: ${ready.stderr}\n${describe.stdout}`);
  }
  runner = new ExecRunner({ kc: loadKubeConfig(cp.kubeconfigPath), namespace: NS, pod: POD });
}, 1_800_000);

afterAll(async () => {
  const n = node;
  try {
    await n?.stop();
  } finally {
    await cp?.stop();
  }
  if (n) expect(await nodeLeftovers(n.runDir, n)).toEqual([]);
});

describe('ExecRunner over pods/exec (real kubelet)', () => {
  it('runs argv verbatim in container compute; exit 0 and stdout', async () => {
    expect(runner.description).toBe(`exec ${NS}/${POD}/compute`);
    const r = await runner.run(['echo', 'a b', '$HOME;', "'quoted'"]);
    expect(r).toEqual({ exitCode: 0, stdout: "a b $HOME; 'quoted'\n", stderr: '' });
  });

  it('returns non-zero exit codes from the status channel with separated stderr', async () => {
    const r = await runner.run(['sh', '-c', 'echo out; echo err >&2; exit 3']);
    expect(r).toEqual({ exitCode: 3, stdout: 'out\n', stderr: 'err\n' });
    expect((await runner.run(['false'])).exitCode).toBe(1);
  });

  it('large output arrives complete', async () => {
    const r = await runner.run(['sh', '-c', 'i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done']);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(20000);
    expect(lines[19999]).toBe('line-19999');
  });

  it('a binary missing in the container and a missing pod are RunTransportError', async () => {
    await expect(runner.run(['no-such-binary-xyz'])).rejects.toThrow(RunTransportError);
    const gone = new ExecRunner({ kc: loadKubeConfig(cp?.kubeconfigPath), namespace: NS, pod: 'no-such-pod' });
    await expect(gone.run(['true'])).rejects.toThrow(RunTransportError);
    // without the kill-on-disconnect wrapper, the runtime itself refuses the missing binary
    const bare = new ExecRunner({
      kc: loadKubeConfig(cp?.kubeconfigPath),
      namespace: NS,
      pod: POD,
      killOnDisconnect: false,
    });
    await expect(bare.run(['no-such-binary-xyz'])).rejects.toThrow(RunTransportError);
    expect((await bare.run(['sh', '-c', 'exit 5'])).exitCode).toBe(5);
  });

  it('a timeout rejects with RunTimeoutError in time', async () => {
    const t0 = performance.now();
    await expect(runner.run(['sleep', '31'], { timeoutMs: 1_000 })).rejects.toThrow(RunTimeoutError);
    expect(performance.now() - t0).toBeLessThan(5_000);
    // and the command is gone from the container, not left running
    await waitFor(
      'sleep gone from the container',
      10_000,
      async () => !(await runner.run(['ps', '-o', 'args'])).stdout.includes('sleep 31'),
      250,
    );
  });

  it('stream() yields lines as they are printed, ends with the exit code; stop() ends a loop', async () => {
    const h = runner.stream(['sh', '-c', 'for i in 1 2 3; do echo tick-$i; sleep 0.3; done; exit 4']);
    const seen: { line: string; at: number }[] = [];
    for await (const line of h.lines) seen.push({ line, at: performance.now() });
    expect(seen.map((s) => s.line)).toEqual(['tick-1', 'tick-2', 'tick-3']);
    expect((seen[2]?.at ?? 0) - (seen[0]?.at ?? 0)).toBeGreaterThan(400); // streamed, not buffered to the end
    expect((await h.done).exitCode).toBe(4);

    // $0 = a marker, to find the process in the container afterwards
    const loop = runner.stream(['sh', '-c', 'while :; do echo x; sleep 0.2; done', 'plumb-loop-marker']);
    const it = loop.lines[Symbol.asyncIterator]();
    expect((await it.next()).value).toBe('x');
    const running = await runner.run(['ps', '-o', 'pid,args']);
    expect(running.stdout).toContain('plumb-loop-marker');
    loop.stop();
    const done = await loop.done;
    expect(done.exitCode).not.toBe(0);
    // Stopping ends the command in the container too (the kill-on-disconnect wrapper)
    await waitFor(
      'loop gone from the container',
      10_000,
      async () => !(await runner.run(['ps', '-o', 'pid,args'])).stdout.includes('plumb-loop-marker'),
      250,
    );
  });
  it('an operator crash leaves no command behind: SIGKILL of the process that started it ends it in the container', async () => {
    const script = [
      `import { ExecRunner } from ${JSON.stringify(path.join(REPO_ROOT, 'operator/src/kubevirt/exec-runner.ts'))};`,
      `import { loadKubeConfig } from ${JSON.stringify(path.join(REPO_ROOT, 'operator/src/kube/client.ts'))};`,
      `const r = new ExecRunner({ kc: loadKubeConfig(${JSON.stringify(cp?.kubeconfigPath)}), namespace: ${JSON.stringify(NS)}, pod: ${JSON.stringify(POD)} });`,
      "const h = r.stream(['sh', '-c', 'while :; do echo x; sleep 0.2; done', 'plumb-crash-marker']);",
      "for await (const l of h.lines) { console.log('started', l); setInterval(() => {}, 1000); break; }",
    ].join('\n');
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          if (d.toString().includes('started')) resolve();
        });
        child.on('exit', (code) => reject(new Error(`helper exited early with ${code}`)));
      });
      expect((await runner.run(['ps', '-o', 'args'])).stdout).toContain('plumb-crash-marker');
      child.kill('SIGKILL');
      await waitFor(
        'loop of the killed process gone from the container',
        15_000,
        async () => !(await runner.run(['ps', '-o', 'args'])).stdout.includes('plumb-crash-marker'),
        250,
      );
    } finally {
      child.kill('SIGKILL');
    }
  });
});
