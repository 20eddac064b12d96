// The Argo CD Lua scripts in deploy/argocd/ run by real Lua interpreters (Debian's lua5.1, the
// dialect of Argo CD's gopher-lua, and lua5.4): the health check against BlockPull fixtures (being
// deleted included), and the pause/resume resource actions (discovery.lua offers them only when
// they apply; action.lua returns the patched object). Every fixture is first checked to be a valid
// BlockPull by the operator's own zod schema. The same health check is compared with the real
// kstatus library on decide()'s statuses in kstatus.e2e.test.ts. docs/gitops.md's argocd-cm patch
// block runs with kubectl against the real API server, on an argocd-cm as Argo CD installs it.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { parse } from 'yaml';
import { parseBlockPull } from '../../../../operator/src/api/types.ts';
import { ensureDebianPackages } from '../../support/debian.ts';
import {
  ARGOCD_DIR,
  DISCOVERY_SCRIPT,
  HEALTH_SCRIPT,
  POLICY_HEALTH_SCRIPT,
  LUA_INTERPRETERS,
  actionScript,
  argoActions,
  argoHealth,
  argoRunAction,
} from '../../ship/argocd.ts';
import { run } from '../../support/process.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import { clusterClient } from '../../cluster/client.ts';

const harness = join(import.meta.dirname, '..', '..', 'ship', 'lua-harness.lua');
const fixturesDir = join(import.meta.dirname, '..', '..', 'ship', 'fixtures', 'argocd');

const expected: Record<string, { status: string; message: RegExp; actions: string[] }> = {
  new: { status: 'Progressing', message: /^Waiting for the operator to observe the BlockPull$/, actions: ['pause'] },
  'new-defaulted': {
    status: 'Progressing',
    message: /^Waiting for the operator to observe the BlockPull$/,
    actions: ['pause'],
  },
  'new-paused': {
    status: 'Suspended',
    message: /^Paused by spec\.paused; waiting for the operator to observe the BlockPull$/,
    actions: ['resume'],
  },
  pending: {
    status: 'Progressing',
    message: /^VMINotFound: VirtualMachineInstance vms\/web-1 not found$/,
    actions: ['pause'],
  },
  running: { status: 'Progressing', message: /^Pulling: Block pull of vda running \(42%\)$/, actions: ['pause'] },
  'running-spec-paused': {
    status: 'Suspended',
    message: /^Paused by spec\.paused; Pulling: Block pull of vda running \(10%\)$/,
    actions: ['resume'],
  },
  paused: {
    status: 'Suspended',
    message: /^Paused: Pull stopped at 30%; the data streamed so far is kept \(30%\)$/,
    actions: ['resume'],
  },
  completed: { status: 'Healthy', message: /^Completed: rootdisk is now a single image$/, actions: [] },
  'completed-then-paused': {
    status: 'Healthy',
    message: /^NothingToDo: the chain was already at its goal$/,
    actions: [],
  },
  planned: {
    status: 'Healthy',
    message:
      /^Planned: plan \(spec\.dryRun, no job started\): pull rootdisk \(vda\) into a single image; at most 1 GiB/,
    actions: [],
  },
  'completed-spec-changed': {
    status: 'Progressing',
    message: /^Waiting for the operator to observe generation 2 \(the status is from generation 1\)$/,
    actions: [],
  },
  failed: { status: 'Degraded', message: /^DiskNotFound: disk "rootdisk" is not in domain vms_web-1$/, actions: [] },
  'failed-no-message': { status: 'Degraded', message: /^Failed$/, actions: [] },
  'unicode-message': {
    status: 'Progressing',
    message: /^WaitingForSlot: 4\/4 pulls running — waiting\n"quoted" \\ backslash$/,
    actions: ['pause'],
  },
  'deleting-running': {
    status: 'Progressing',
    message:
      /^Being deleted: the operator aborts the running block pull first \(finalizer blockpull\.dev\/abort-on-delete\); the data streamed so far stays in the active image \(42%\)$/,
    actions: [],
  },
  'deleting-completed': { status: 'Progressing', message: /^Being deleted$/, actions: [] },
  'deleting-other-finalizer': {
    status: 'Progressing',
    message: /^Being deleted; waiting for finalizers: example\.com\/keep$/,
    actions: [],
  },
};

const files = readdirSync(fixturesDir)
  .filter((f) => f.endsWith('.json'))
  .sort();
const fixture = (file: string): Record<string, unknown> => {
  const obj = JSON.parse(readFileSync(join(fixturesDir, file), 'utf8')) as Record<string, unknown>;
  parseBlockPull(obj); // the fixture is a real BlockPull as the operator reads it
  return obj;
};
const want = (file: string): (typeof expected)[string] => {
  const w = expected[file.replace(/\.json$/, '')];
  if (!w) throw new Error(`no expectation for ${file}`);
  return w;
};

beforeAll(async () => {
  await ensureDebianPackages([...LUA_INTERPRETERS]);
}, 900_000);

describe('Argo CD health check for BlockPull', () => {
  it('every fixture has an expectation and vice versa', () => {
    expect(files.map((f) => f.replace(/\.json$/, '')).sort()).toEqual(Object.keys(expected).sort());
  });

  for (const interpreter of LUA_INTERPRETERS) {
    it.each(files)(`${interpreter}: %s`, async (file) => {
      const got = await argoHealth(interpreter, fixture(file));
      expect(got.status).toBe(want(file).status);
      expect(got.message).toMatch(want(file).message);
    });
  }

  it('a script error is reported (the harness can fail)', async () => {
    const r = await run(['lua5.4', harness, HEALTH_SCRIPT], {
      allowExit: true,
      input: 'return 42\n',
      timeoutMs: 10_000,
    });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/attempt to index/);
  });
});

describe('Argo CD resource actions pause and resume', () => {
  for (const interpreter of LUA_INTERPRETERS) {
    it.each(files)(`${interpreter}: discovery offers what applies: %s`, async (file) => {
      const actions = await argoActions(interpreter, fixture(file));
      expect(Object.keys(actions).sort()).toEqual(want(file).actions);
      for (const a of Object.values(actions)) expect(a.disabled).toBeUndefined();
    });

    it(`${interpreter}: pause sets spec.paused, resume clears it, nothing else changes`, async () => {
      const running = fixture('running.json');
      const paused = await argoRunAction(interpreter, 'pause', running);
      expect(paused).toEqual({ ...running, spec: { ...(running.spec as object), paused: true } });
      expect(parseBlockPull(paused).spec.paused).toBe(true);
      // ...after which discovery offers resume, and resume brings back the original spec.
      expect(Object.keys(await argoActions(interpreter, paused))).toEqual(['resume']);
      const resumed = await argoRunAction(interpreter, 'resume', paused);
      expect(resumed).toEqual({ ...running, spec: { ...(running.spec as object), paused: false } });
      expect(parseBlockPull(resumed).spec.paused).toBe(false);
      expect(Object.keys(await argoActions(interpreter, resumed))).toEqual(['pause']);
    });
  }

  it("the scripts are where Argo CD's layout puts them, and the argocd-cm patch embeds exactly them", () => {
    const patch = parse(readFileSync(join(ARGOCD_DIR, 'argocd-cm-patch.yaml'), 'utf8')) as {
      data: Record<string, string>;
    };
    expect(patch.data['resource.customizations.health.blockpull.dev_BlockPull']).toBe(
      readFileSync(HEALTH_SCRIPT, 'utf8'),
    );
    // Both policy kinds share one health check (specs/operator/policy.e2e.test.ts runs it on live policies).
    for (const kind of ['BlockPullPolicy', 'ClusterBlockPullPolicy'])
      expect(patch.data[`resource.customizations.health.blockpull.dev_${kind}`], kind).toBe(
        readFileSync(POLICY_HEALTH_SCRIPT, 'utf8'),
      );
    const actions = parse(patch.data['resource.customizations.actions.blockpull.dev_BlockPull'] ?? '') as {
      'discovery.lua': string;
      definitions: { name: string; 'action.lua': string }[];
    };
    expect(actions['discovery.lua']).toBe(readFileSync(DISCOVERY_SCRIPT, 'utf8'));
    expect(actions.definitions.map((d) => d.name)).toEqual(['pause', 'resume']);
    for (const d of actions.definitions)
      expect(d['action.lua'], d.name).toBe(readFileSync(actionScript(d.name), 'utf8'));
  });
});

describe('docs/gitops.md: the argocd-cm patch block', () => {
  it('merges the health check and the actions into an existing argocd-cm and keeps its other keys', async () => {
    const kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
    const page = readFileSync(join(REPO_ROOT, 'docs', 'gitops.md'), 'utf8');
    const block = /<!-- argocd-cm patch[^>]*-->\s*```sh\n([\s\S]*?)```/.exec(page)?.[1];
    if (!block) throw new Error('docs/gitops.md has no argocd-cm patch block');
    // Argo CD's own install creates argocd-cm in namespace argocd (here with one key of its own).
    await kube.kubectl(['apply', '-f', '-'], {
      input: JSON.stringify({
        apiVersion: 'v1',
        kind: 'List',
        items: [
          { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'argocd' } },
          {
            apiVersion: 'v1',
            kind: 'ConfigMap',
            metadata: { name: 'argocd-cm', namespace: 'argocd' },
            data: { 'timeout.reconciliation': '180s' },
          },
        ],
      }),
    });
    const r = await run(['bash', '-e', '-c', block], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        PATH: `${dirname(kube.kubectlPath)}:${process.env.PATH ?? ''}`,
        KUBECONFIG: kube.kubeconfigPath,
      },
      allowExit: true,
      timeoutMs: 60_000,
    });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain('configmap/argocd-cm patched');
    const cm = JSON.parse(await kube.kubectl(['-n', 'argocd', 'get', 'configmap', 'argocd-cm', '-o', 'json'])) as {
      data: Record<string, string>;
    };
    const patch = parse(readFileSync(join(ARGOCD_DIR, 'argocd-cm-patch.yaml'), 'utf8')) as {
      data: Record<string, string>;
    };
    expect(cm.data).toEqual({ 'timeout.reconciliation': '180s', ...patch.data });
    await kube.kubectl(['delete', 'namespace', 'argocd', '--wait=false']);
  });
});
