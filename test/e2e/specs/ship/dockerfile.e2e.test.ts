// The Dockerfile, without a Docker engine: its steps are performed the same way (exec-form RUN,
// COPY of what .dockerignore admits, ENV, WORKDIR) in clean directories, one per stage, and the
// runtime stage's result is started as the image's USER (65532): with bad configuration it must
// exit with the config error; with good configuration under the Helm chart's ServiceAccount token
// (not admin) it must answer /healthz and /readyz and take its leader-election Lease.
//
// Stood in for, not verified here: the base image itself (its digest, its Node 24 build, Debian
// libraries) — the project's own Node 24 from npm plays its /usr/local/bin; Docker's layer and
// file-ownership semantics; the read-only root filesystem of the chart's securityContext.
import { chmod, copyFile, mkdir, mkdtemp, readFile, readdir, realpath, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { z } from 'zod';
import { clusterClient, type ClusterClient } from '../../cluster/client.ts';
import { createServiceAccountKubeconfig } from '../../cluster/service-account.ts';
import { helmTemplate } from '../../ship/chart.ts';
import { REPO_ROOT } from '../../support/paths.ts';
import {
  exists,
  parseDockerfile,
  parseExecForm,
  performBuild,
  type BuildResult,
  type Stage,
} from '../../ship/dockerfile.ts';
import { freePorts } from '../../support/ports.ts';
import { startDaemon } from '../../support/process.ts';

const NS = 'blockpull-image-test';
const RELEASE = 'img';
const SA = 'img-blockpull-operator';
const IMAGE_UID = 65532;

let build: BuildResult;
let runtime: Stage;
let baseBin: string;
let workDir: string;
const dockerfile = await readFile(join(REPO_ROOT, 'Dockerfile'), 'utf8');

async function which(cmd: string): Promise<string> {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && (await exists(join(dir, cmd)))) return join(dir, cmd);
  }
  throw new Error(`${cmd} not found on PATH`);
}

interface Started {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly output: () => string;
  stop(): Promise<void>;
}

/** Starts the image's ENTRYPOINT in the runtime stage's WORKDIR as the image's USER. */
let started = 0;
async function startImage(env: Record<string, string>): Promise<Started> {
  const [cmd, ...args] = runtime.entrypoint ?? [];
  if (!cmd) throw new Error('no ENTRYPOINT');
  const [uid, gid] = (runtime.user ?? '').split(':').map(Number);
  let out = '';
  const argv = [cmd === 'node' ? join(baseBin, 'node') : cmd, ...args];
  const daemon = await startDaemon('image entrypoint', argv, join(workDir, `entrypoint-${++started}.log`), {
    marker: argv[0] ?? cmd,
    cwd: join(runtime.root, runtime.workdir),
    env: { ...runtime.env, HOME: '/nonexistent', ...env },
    ...(uid !== undefined ? { uid } : {}),
    gid: gid ?? uid,
    onOutput: (chunk) => (out += chunk),
  });
  return {
    exited: daemon.exited,
    output: () => out,
    async stop() {
      await daemon.stop(15_000, 'leader'); // as a container runtime stops it: SIGTERM to PID 1
    },
  };
}

beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'blockpull-image-'));
  await chmod(workDir, 0o755); // the image's USER must reach /app
  // The base image's /usr/local/bin: node (Node 24), npm and npx.
  baseBin = join(workDir, 'base-usr-local-bin');
  await mkdir(baseBin);
  await copyFile(join(REPO_ROOT, 'node_modules', 'node', 'bin', 'node'), join(baseBin, 'node'));
  await chmod(baseBin, 0o755);
  await chmod(join(baseBin, 'node'), 0o755);
  // npm and npx: the machine's npm (a JavaScript program; it runs on the Node 24 above, as in the image).
  const npmCli = await realpath(await which('npm'));
  await symlink(npmCli, join(baseBin, 'npm'));
  await symlink(join(dirname(npmCli), 'npx-cli.js'), join(baseBin, 'npx'));
  const started = Date.now();
  build = await performBuild({
    contextDir: REPO_ROOT,
    dockerfile,
    dockerignore: await readFile(join(REPO_ROOT, '.dockerignore'), 'utf8'),
    baseBinDir: baseBin,
    workDir,
    log: (l) => process.stderr.write(`[image] ${l}\n`),
  });
  process.stderr.write(`[image] build performed in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  runtime = build.final;
}, 1_800_000);

afterAll(async () => {
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

describe('Dockerfile (static)', () => {
  const ins = parseDockerfile(dockerfile);

  it('is multi-stage on a Node 24 base pinned by digest', () => {
    const froms = ins.filter((i) => i.keyword === 'FROM');
    expect(froms.length).toBeGreaterThanOrEqual(2);
    const arg = ins.find((i) => i.keyword === 'ARG' && i.args.startsWith('NODE_IMAGE='));
    expect(arg?.args).toMatch(/^NODE_IMAGE=node:24-bookworm-slim@sha256:[0-9a-f]{64}$/);
    for (const f of froms) expect(f.args).toMatch(/^\$\{NODE_IMAGE\} AS (build|runtime)$/);
  });

  it('runs every RUN in exec form, installs production dependencies only in the runtime stage', () => {
    const runs = ins.filter((i) => i.keyword === 'RUN');
    for (const r of runs) expect(parseExecForm(r.args), `line ${r.line}`).toBeDefined();
    const runtimeStart = ins.findIndex((i) => i.keyword === 'FROM' && i.args.endsWith('AS runtime'));
    const runtimeRuns = ins
      .slice(runtimeStart)
      .filter((i) => i.keyword === 'RUN')
      .map((i) => parseExecForm(i.args));
    expect(runtimeRuns).toContainEqual(expect.arrayContaining(['npm', 'ci', '--omit=dev']));
  });

  it('has a numeric non-root USER, OCI labels and an exec-form ENTRYPOINT', () => {
    const user = ins.filter((i) => i.keyword === 'USER').at(-1)?.args ?? '';
    expect(user).toMatch(/^[0-9]+:[0-9]+$/);
    expect(Number(user.split(':')[0])).toBeGreaterThan(0);
    const labels = ins
      .filter((i) => i.keyword === 'LABEL')
      .map((i) => i.args)
      .join(' ');
    for (const key of ['title', 'description', 'version', 'revision', 'licenses', 'source', 'base.name'])
      expect(labels).toContain(`org.opencontainers.image.${key}=`);
    // node, the V8 memory flags (bench:scale starts the operator with them), the script.
    expect(parseExecForm(ins.filter((i) => i.keyword === 'ENTRYPOINT').at(-1)?.args ?? '')).toEqual([
      'node',
      '--max-semi-space-size=1',
      '--optimize-for-size',
      'dist/operator/src/main.js',
    ]);
  });
});

describe('Dockerfile (build performed)', () => {
  it('the build context is only what .dockerignore admits', () => {
    expect(build.context).toContain('package.json');
    expect(build.context).toContain('package-lock.json');
    expect(build.context).toContain('operator/src/config.ts');
    for (const f of build.context) {
      expect(f, f).toMatch(
        /^(package\.json|package-lock\.json|tsconfig\.json|tsconfig\.build\.json|operator\/src\/.+)$/,
      );
      expect(f, f).not.toMatch(/\.test\.ts$/);
    }
  });

  it('the runtime stage holds dist/ and production dependencies only', async () => {
    const app = join(runtime.root, runtime.workdir);
    expect(runtime.workdir).toBe('/app');
    expect(await exists(join(app, 'dist', 'operator', 'src', 'main.js'))).toBe(true);
    expect(await exists(join(app, 'dist', 'operator', 'src', 'config.js'))).toBe(true);
    const pkg = z
      .object({ dependencies: z.record(z.string(), z.string()) })
      .parse(JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')));
    for (const dep of Object.keys(pkg.dependencies))
      expect(await exists(join(app, 'node_modules', dep, 'package.json')), dep).toBe(true);
    // Dev-only packages (lockfile "dev": true; a devDependency that a production dependency also
    // needs, like @types/node, is not dev-only) are absent.
    const lock = z
      .object({ packages: z.record(z.string(), z.looseObject({ dev: z.boolean().optional() })) })
      .parse(JSON.parse(await readFile(join(REPO_ROOT, 'package-lock.json'), 'utf8')));
    const devOnly = Object.entries(lock.packages).filter(
      ([path, p]) => path.startsWith('node_modules/') && p.dev === true,
    );
    expect(devOnly.length).toBeGreaterThan(50);
    for (const [path] of devOnly) expect(await exists(join(app, path)), path).toBe(false);
    for (const tool of ['typescript', 'vitest', 'eslint', 'node'])
      expect(await exists(join(app, 'node_modules', tool)), tool).toBe(false);
    expect(await exists(join(app, 'src'))).toBe(false); // sources stay in the build stage
    const distFiles = await readdir(join(app, 'dist'), { recursive: true });
    expect(distFiles.filter((f) => f.endsWith('.ts'))).toEqual([]);
    expect(runtime.user).toBe(`${IMAGE_UID}:${IMAGE_UID}`);
    expect(runtime.env.NODE_ENV).toBe('production');
  });

  it('started with bad configuration, it exits 2 naming every bad variable', async () => {
    const p = await startImage({ BLOCKPULL_TRANSPORT: 'carrier-pigeon', BLOCKPULL_WORKERS: '0' });
    const { code } = await p.exited;
    expect(code).toBe(2);
    expect(p.output()).toMatch(/invalid configuration/);
    expect(p.output()).toMatch(/BLOCKPULL_TRANSPORT="carrier-pigeon"/);
    expect(p.output()).toMatch(/BLOCKPULL_WORKERS="0": must be >= 1/);
  });

  describe('under the chart ServiceAccount token', () => {
    let kube: ClusterClient;
    let kubeconfig: string;
    let proc: Started | undefined;

    beforeAll(async () => {
      kube = clusterClient(inject('kubeconfigPath'), inject('kubectlPath'));
      await kube
        .kubectl(['create', 'namespace', NS, '--dry-run=client', '-o', 'yaml'])
        .then((y) => kube.kubectl(['apply', '-f', '-'], { input: y }));
      const { result, yaml } = await helmTemplate(RELEASE, NS);
      expect(result.exitCode).toBe(0);
      await kube.kubectl(['apply', '--server-side', '--field-manager=helm-test', '-f', '-'], { input: yaml });
      const saFile = await createServiceAccountKubeconfig(kube, NS, SA);
      kubeconfig = join(workDir, 'sa.kubeconfig');
      await copyFile(saFile, kubeconfig);
      await chmod(kubeconfig, 0o644); // readable by the image's USER
    }, 300_000);

    afterAll(async () => {
      await proc?.stop();
    });

    it('answers /healthz and /readyz and holds its Lease', async () => {
      const [healthPort, metricsPort] = (await freePorts(2)) as [number, number];
      proc = await startImage({
        BLOCKPULL_KUBECONFIG: kubeconfig,
        BLOCKPULL_POD_NAMESPACE: NS,
        BLOCKPULL_POD_NAME: 'img-blockpull-operator-0',
        BLOCKPULL_LEASE_NAME: 'img-blockpull-operator-leader',
        BLOCKPULL_HEALTH_PORT: String(healthPort),
        BLOCKPULL_METRICS_PORT: String(metricsPort),
        BLOCKPULL_METRICS_BIND_ADDRESS: '127.0.0.1',
        // Its own namespace only: BlockPulls other specs left behind are not touched.
        BLOCKPULL_WATCH_NAMESPACE: NS,
      });
      const deadline = Date.now() + 60_000;
      const get = async (port: number, path: string): Promise<number> => {
        try {
          return (await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(2000) })).status;
        } catch {
          return 0;
        }
      };
      let health = 0;
      let ready = 0;
      let holder = '';
      while (Date.now() < deadline && (health !== 200 || ready !== 200 || holder !== 'img-blockpull-operator-0')) {
        const early = await Promise.race([proc.exited, new Promise((r) => setTimeout(r, 500, undefined))]);
        if (early) throw new Error(`operator exited early: ${JSON.stringify(early)}\n${proc.output()}`);
        health = await get(healthPort, '/healthz');
        ready = await get(healthPort, '/readyz');
        const lease = await kube.kubectlResult([
          'get',
          'lease',
          'img-blockpull-operator-leader',
          '-n',
          NS,
          '-o',
          'jsonpath={.spec.holderIdentity}',
        ]);
        holder = lease.exitCode === 0 ? lease.stdout.trim() : '';
      }
      expect(health, proc.output()).toBe(200);
      expect(ready, proc.output()).toBe(200);
      expect(holder, proc.output()).toBe('img-blockpull-operator-0');
      const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
      expect(metrics.status).toBe(200);
      expect(await metrics.text()).toMatch(/^# HELP /m);
      // Runs as the ServiceAccount, not admin: no 'forbidden' in its log.
      expect(proc.output()).not.toMatch(/forbidden/i);
      await proc.stop();
      const { code, signal } = await proc.exited;
      expect({ code, signal }, proc.output()).toEqual({ code: 0, signal: null });
    });
  });
});
