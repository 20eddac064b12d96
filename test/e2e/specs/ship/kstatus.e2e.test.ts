// kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status: Flux `wait: true`, kubectl apply-sets, kpt,
// cli-utils) judges BlockPulls right: the REAL library (a checker built from the Go module proxy
// through test/e2e/ship/kstatus-go) on the statuses decide() writes for every phase and reason, and
// on the same objects written to and read back from the real API server: Completed -> Current,
// Failed -> Failed, Pending/Running/Paused/just created -> InProgress, spec changed but not yet
// observed -> InProgress, being deleted -> Terminating. The Argo CD health check agrees on every one.
// Also: `kubectl wait --for=condition=Ready` returns on Completed, and the fail-fast recipe of docs/api.md ("Waiting for the end").
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { readFileSync, readdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBlockPull, type BlockPullStatus } from '../../../../operator/src/api/types.ts';
import { e2eCluster } from '../../setup/cluster.ts';
import type { ClusterClient } from '../../cluster/client.ts';
import type { BlockPullView } from '../../operator-fixture/fixture.ts';
import { ensureDebianPackages } from '../../support/debian.ts';
import { LUA_INTERPRETERS, argoHealth, healthAgreesWith } from '../../ship/argocd.ts';
import { blockPullStates, type BlockPullState } from '../../ship/blockpull-states.ts';
import { run } from '../../support/process.ts';
import { KSTATUS_VERSION, ensureKstatus, kstatus } from '../../ship/kstatus.ts';

const NS = 'kstatus-e2e';
const states = blockPullStates();
let checker: string;
let kube: ClusterClient;

beforeAll(async () => {
  kube = e2eCluster();
  checker = await ensureKstatus({ log: (l) => process.stderr.write(`[kstatus] ${l}\n`) });
  await ensureDebianPackages([...LUA_INTERPRETERS]);
  await kube.kubectl(['create', 'namespace', NS]);
}, 1_800_000);

afterAll(async () => {
  // Finalizers would keep the namespace's objects: drop them, then the namespace.
  const names = (await kube.kubectlResult(['-n', NS, 'get', 'bp', '-o', 'name'])).stdout.split('\n').filter(Boolean);
  for (const n of names)
    await kube.kubectlResult(['-n', NS, 'patch', n, '--type=merge', '-p', '{"metadata":{"finalizers":null}}']);
  await kube.kubectlResult(['delete', 'namespace', NS, '--wait=false']);
});

describe(`kstatus ${KSTATUS_VERSION} on decide()'s statuses`, () => {
  it('covers Completed, Failed, Pending, Running, Paused, just created, spec changed, being deleted', () => {
    const names = states.map((s) => s.name).join('\n');
    for (const p of [
      'Completed/',
      'Failed/',
      'Pending/',
      'Running/',
      'Paused/',
      'created (status defaulted by the CRD)',
      'spec changed, not yet observed',
      'being deleted',
    ]) {
      expect(names).toContain(p);
    }
  });

  it('Completed -> Current, Failed -> Failed, every other phase and reason -> InProgress, deleting -> Terminating', async () => {
    const got = await kstatus(
      checker,
      states.map((s) => s.object),
    );
    const table = states.map((s, i) => ({
      state: s.name,
      want: s.kstatus,
      kstatus: got[i]?.status,
      message: got[i]?.message,
    }));
    console.log(table.map((r) => `${r.state.padEnd(48)} ${String(r.kstatus).padEnd(12)} ${r.message}`).join('\n'));
    expect(table.filter((r) => r.kstatus !== r.want)).toEqual([]);
  });

  it('the checker can fail: the statuses before this change (Progressing/Complete/Failed only) read Current when Failed or Running', async () => {
    const legacy = (s: BlockPullState): Record<string, unknown> => {
      const status = parseBlockPull(s.object).status ?? {};
      const conditions = (status.conditions ?? []).filter((c) =>
        ['Progressing', 'Complete', 'Failed'].includes(c.type),
      );
      return { ...s.object, status: { ...status, conditions } };
    };
    const failed = states.find((s) => s.name === 'Failed/DiskNotFound');
    const running = states.find((s) => s.name === 'Running/Pulling (progress)');
    expect(failed && running).toBeTruthy();
    const got = await kstatus(checker, [legacy(failed!), legacy(running!)]);
    expect(got.map((r) => r.status)).toEqual(['Current', 'Current']);
  });

  for (const interpreter of LUA_INTERPRETERS) {
    it(`the Argo CD health check (${interpreter}) agrees with kstatus on every state`, async () => {
      const got = await kstatus(
        checker,
        states.map((s) => s.object),
      );
      const disagree: string[] = [];
      for (const [i, s] of states.entries()) {
        const h = await argoHealth(interpreter, s.object);
        const k = got[i]?.status ?? '?';
        if (!healthAgreesWith(k).includes(h.status))
          disagree.push(`${s.name}: kstatus ${k}, Argo CD ${h.status} (${h.message})`);
      }
      expect(disagree).toEqual([]);
    });
  }
});

describe('kstatus and the Argo CD health check on the Argo CD fixtures', () => {
  const dir = join(import.meta.dirname, '..', '..', 'ship', 'fixtures', 'argocd');
  it('agree on every fixture (as the API server serves it: a missing status is the CRD default)', async () => {
    const files = readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .sort();
    expect(files.length).toBeGreaterThan(10);
    const objects = files.map((f) => {
      const obj = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Record<string, unknown>;
      return obj.status === undefined ? { ...obj, status: { observedGeneration: 0 } } : obj;
    });
    const got = await kstatus(checker, objects);
    const rows: string[] = [];
    const disagree: string[] = [];
    for (const [i, f] of files.entries()) {
      const k = got[i]?.status ?? '?';
      for (const interpreter of LUA_INTERPRETERS) {
        const h = await argoHealth(interpreter, objects[i]);
        if (interpreter === 'lua5.1') rows.push(`${f.padEnd(32)} kstatus ${k.padEnd(12)} Argo CD ${h.status}`);
        if (!healthAgreesWith(k).includes(h.status))
          disagree.push(`${f} (${interpreter}): kstatus ${k}, Argo CD ${h.status}`);
      }
    }
    console.log(rows.join('\n'));
    expect(disagree).toEqual([]);
  });
});

/** Creates the state's object on the API server the way it comes about, and reads it back. */
async function materialise(s: BlockPullState): Promise<Record<string, unknown>> {
  const md = (s.object as BlockPullView).metadata;
  const status = parseBlockPull(s.object).status;
  const name = md.name;
  const manifest = {
    apiVersion: 'blockpull.dev/v1alpha1',
    kind: 'BlockPull',
    metadata: { name, namespace: NS, ...(md.finalizers ? { finalizers: md.finalizers } : {}) },
    // The CRD refuses the bandwidth that makes decide() say InvalidBandwidth (decide's check is the
    // second line of defence): that one is created without it; its status is written all the same.
    spec: s.reason === 'InvalidBandwidth' ? { ...(s.object.spec as object), bandwidth: undefined } : s.object.spec,
  };
  await kube.kubectl(['create', '-f', '-'], { input: JSON.stringify(manifest) });
  const writeStatus = async (st: BlockPullStatus): Promise<void> => {
    await kube.kubectl([
      '-n',
      NS,
      'patch',
      'bp',
      name,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({ status: st }),
    ]);
  };
  // A spec edit moves metadata.generation to 2 (the states with generation 2).
  const editSpec = async (): Promise<void> => {
    await kube.kubectl(['-n', NS, 'patch', 'bp', name, '--type=merge', '-p', '{"spec":{"maxRetries":7}}']);
  };
  if (md.generation === 2 && status !== undefined && (status.observedGeneration ?? 0) < 2) {
    await writeStatus(status);
    await editSpec();
  } else {
    if (md.generation === 2) await editSpec();
    if (status !== undefined) await writeStatus(status);
  }
  if (md.deletionTimestamp !== undefined) await kube.kubectl(['-n', NS, 'delete', 'bp', name, '--wait=false']);
  return JSON.parse(await kube.kubectl(['-n', NS, 'get', 'bp', name, '-o', 'json'])) as Record<string, unknown>;
}

describe('kstatus on BlockPulls read from the real API server', () => {
  it('a BlockPull just created (no operator yet) has status {observedGeneration: 0} from the CRD default: InProgress', async () => {
    await kube.kubectl(['create', '-f', '-'], {
      input: JSON.stringify({
        apiVersion: 'blockpull.dev/v1alpha1',
        kind: 'BlockPull',
        metadata: { name: 'just-created', namespace: NS },
        spec: { vmiName: 'web-1', disk: 'rootdisk' },
      }),
    });
    const obj = JSON.parse(await kube.kubectl(['-n', NS, 'get', 'bp', 'just-created', '-o', 'json'])) as BlockPullView;
    expect(obj.metadata.generation).toBe(1);
    expect(obj.status).toEqual({ observedGeneration: 0 });
    const [r] = await kstatus(checker, [obj]);
    expect(r).toEqual({
      status: 'InProgress',
      message: 'BlockPull generation is 1, but latest observed generation is 0',
    });
    // The same object without the default would read Current: the default is what makes it InProgress.
    const [without] = await kstatus(checker, [{ ...obj, status: undefined }]);
    expect(without?.status).toBe('Current');
  });

  it('every state, written through the status subresource and read back, gets the same verdict (and Argo CD agrees)', async () => {
    const objects: Record<string, unknown>[] = [];
    for (const s of states) objects.push(await materialise(s));
    // The API server kept what matters: generation, observedGeneration, conditions, deletion.
    for (const [i, s] of states.entries()) {
      const live = objects[i] as BlockPullView;
      const want = s.object as BlockPullView;
      // Setting deletionTimestamp moves a custom resource's generation too (observed here).
      const deleting = want.metadata.deletionTimestamp !== undefined;
      expect(live.metadata.generation, s.name).toBe((want.metadata.generation ?? NaN) + (deleting ? 1 : 0));
      expect(live.status?.observedGeneration, s.name).toBe(want.status?.observedGeneration);
      expect(live.status?.conditions?.length, s.name).toBe(want.status?.conditions?.length);
      expect(live.metadata.deletionTimestamp !== undefined, s.name).toBe(want.metadata.deletionTimestamp !== undefined);
    }
    const got = await kstatus(checker, objects);
    const wrong = states
      .map((s, i) => ({ state: s.name, want: s.kstatus, got: got[i]?.status }))
      .filter((r) => r.got !== r.want);
    expect(wrong).toEqual([]);
    for (const [i, obj] of objects.entries()) {
      const h = await argoHealth('lua5.1', obj);
      expect(healthAgreesWith(got[i]?.status ?? '?'), `${states[i]?.name}: Argo CD ${h.status}`).toContain(h.status);
    }
  });
});

/** A Running BlockPull on the API server; returns a writer for decide()'s status of another state. */
async function runningPull(name: string): Promise<(stateName: string) => Promise<void>> {
  const running = states.find((s) => s.name === 'Running/Pulling (progress)');
  if (!running) throw new Error('no Running state');
  await kube.kubectl(['create', '-f', '-'], {
    input: JSON.stringify({
      apiVersion: 'blockpull.dev/v1alpha1',
      kind: 'BlockPull',
      metadata: { name, namespace: NS },
      spec: running.object.spec,
    }),
  });
  const write = async (stateName: string): Promise<void> => {
    const s = states.find((x) => x.name === stateName);
    if (!s) throw new Error(`no state ${stateName}`);
    await kube.kubectl([
      '-n',
      NS,
      'patch',
      'bp',
      name,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({ status: parseBlockPull(s.object).status }),
    ]);
  };
  await write('Running/Pulling (progress)');
  return write;
}

function kubectlArgv(args: readonly string[]): string[] {
  return [kube.kubectlPath, '--kubeconfig', kube.kubeconfigPath, ...args];
}

describe('waiting in scripts', () => {
  it('kubectl wait --for=condition=Ready returns when the BlockPull becomes Completed, not before', async () => {
    const write = await runningPull('wait-ready');
    // Running: Ready is False, the wait times out.
    const early = await run(kubectlArgv(['-n', NS, 'wait', 'bp/wait-ready', '--for=condition=Ready', '--timeout=2s']), {
      allowExit: true,
      timeoutMs: 30_000,
    });
    expect(early.exitCode).not.toBe(0);
    const started = Date.now();
    const waiting = run(kubectlArgv(['-n', NS, 'wait', 'bp/wait-ready', '--for=condition=Ready', '--timeout=60s']), {
      allowExit: true,
      timeoutMs: 90_000,
    });
    await new Promise((r) => setTimeout(r, 1500));
    await write('Completed/Completed');
    const done = await waiting;
    const seconds = (Date.now() - started) / 1000;
    console.log(
      `kubectl wait --for=condition=Ready returned ${seconds.toFixed(1)} s after it started (status written at ~1.5 s)`,
    );
    expect(done.stderr).toBe('');
    expect(done.stdout).toContain('condition met');
    expect(done.exitCode).toBe(0);
    expect(seconds).toBeLessThan(60);
  });

  /** docs/api.md's recipe (the fenced block after the marker), run by bash with the e2e kubectl. */
  function docsRecipe(): string {
    const page = readFileSync(join(import.meta.dirname, '..', '..', '..', '..', 'docs', 'api.md'), 'utf8');
    const m = /<!-- fail-fast recipe[^>]*-->\s*```sh\n([\s\S]*?)```/.exec(page);
    if (!m?.[1]) throw new Error('docs/api.md has no fail-fast recipe block');
    return m[1];
  }

  async function runRecipe(
    script: string,
    name: string,
  ): Promise<{ exitCode: number; stdout: string; stderr: string; seconds: number }> {
    const dir = await mkdtemp(join(tmpdir(), 'bp-recipe-'));
    try {
      // The recipe names vms/web-1-rootdisk-flatten (examples/blockpull-full.yaml): point it at this BlockPull.
      const body = script.replaceAll('-n vms', `-n ${NS}`).replaceAll('web-1-rootdisk-flatten', name);
      const file = join(dir, 'recipe.sh');
      await writeFile(file, `set -e\n${body}`);
      const started = Date.now();
      const r = await run(['bash', file], {
        allowExit: true,
        env: {
          ...process.env,
          PATH: `${dirname(kube.kubectlPath)}:${process.env.PATH ?? ''}`,
          KUBECONFIG: kube.kubeconfigPath,
        },
        timeoutMs: 120_000,
      });
      return { ...r, seconds: (Date.now() - started) / 1000 };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  it('the docs/api.md recipe exits 0 when the pull Completes', async () => {
    const write = await runningPull('recipe-completed');
    const recipe = docsRecipe();
    const p = runRecipe(recipe, 'recipe-completed');
    await new Promise((r) => setTimeout(r, 1500));
    await write('Completed/Completed');
    const r = await p;
    console.log(`recipe on Completed: exit ${r.exitCode} after ${r.seconds.toFixed(1)} s\n${r.stdout}${r.stderr}`);
    expect(r.exitCode).toBe(0);
  });

  it('the docs/api.md recipe fails fast (not at its timeout) when the pull Fails', async () => {
    const write = await runningPull('recipe-failed');
    const p = runRecipe(docsRecipe(), 'recipe-failed');
    await new Promise((r) => setTimeout(r, 1500));
    await write('Failed/RetryLimitExceeded');
    const r = await p;
    console.log(`recipe on Failed: exit ${r.exitCode} after ${r.seconds.toFixed(1)} s\n${r.stdout}${r.stderr}`);
    expect(r.exitCode).not.toBe(0);
    // The recipe's timeout is 30 minutes; failing within the test's 2 minutes is "fast".
    expect(r.seconds).toBeLessThan(120);
  });
});
