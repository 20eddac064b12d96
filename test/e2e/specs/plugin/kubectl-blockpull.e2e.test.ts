/**
 * kubectl-blockpull as a person uses it: `kubectl blockpull ...` found by kubectl on PATH, run as
 * a tenant whose kubeconfig may only touch BlockPulls in its namespace (no pods/exec), against
 * the real API server, the operator as its own process and a launcher stand-in (libvirtd session
 * + QEMU, real qcow2 chains). The live bars are read off a real terminal (tmux, fixed size); the
 * plain output and the exit codes through pipes.
 */
import { mkdir, mkdtemp, readFile, rm, stat, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { VirshDriver } from '../../../../operator/src/hypervisor/virsh-driver.ts';
import { createServiceAccountKubeconfig } from '../../cluster/service-account.ts';
import type { ClusterClient } from '../../cluster/client.ts';
import { startLauncher, type Launcher } from '../../launcher/launcher.ts';
import {
  createFakeVmi,
  ensureNamespace,
  getBlockPull,
  operatorServiceAccount,
  startOperator,
  waitForPhase,
  type OperatorProcess,
} from '../../operator-fixture/fixture.ts';
import { e2eCluster } from '../../setup/cluster.ts';
import { NODE_BIN, REPO_ROOT } from '../../support/paths.ts';
import { resultOf, run, type RunResult } from '../../support/process.ts';
import { startTerminal, type Terminal } from '../../support/tmux.ts';
import { sleep, waitFor } from '../../support/wait.ts';

const NS = 'bp-plugin';
const VMI = 'vm1';
const TENANT = 'tenant';
const DISKS = ['live', 'bad', 'watched', 'slow', 'ttyabort', 'planned'] as const;
const PLUGIN_MAIN = path.join(REPO_ROOT, 'plugin', 'src', 'main.ts');

describe('kubectl blockpull (plugin on PATH, tenant credentials, operator process, launcher stand-in)', () => {
  let kube: ClusterClient;
  let tmp: string;
  let registryDir: string;
  let binDir: string;
  let tenantKubeconfig: string;
  let launcher: Launcher | undefined;
  let operator: OperatorProcess | undefined;
  let terminal: Terminal | undefined;
  let env: NodeJS.ProcessEnv;

  /** `kubectl blockpull <args>` through pipes (not a TTY), as the tenant (KUBECONFIG). */
  const plugin = (args: readonly string[], timeoutMs = 120_000): Promise<RunResult> =>
    run([kube.kubectlPath, 'blockpull', ...args], { env, allowExit: true, timeoutMs });
  const expectOneErrorLine = (r: RunResult, message: RegExp): void => {
    expect(r.exitCode, r.stderr).toBe(3);
    const lines = r.stderr.split('\n').filter((l) => l !== '');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^error: /);
    expect(lines[0]).toMatch(message);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  };

  beforeAll(async () => {
    kube = e2eCluster();
    tmp = await mkdtemp(path.join(os.tmpdir(), 'bp-plugin-'));
    registryDir = await mkdtemp('/var/tmp/bp-launchers-');
    const operatorKubeconfig = await operatorServiceAccount(kube);
    await ensureNamespace(kube, NS);
    launcher = await startLauncher({
      namespace: NS,
      vmiName: VMI,
      registryDir,
      disks: DISKS.map((name) => ({ name, layers: 3, sizeMiB: 64, allocatedMiB: 33 })),
    });
    await createFakeVmi(kube, { namespace: NS, vmiName: VMI, launcher, disks: [...DISKS] });
    // Progress written every 500 ms, so a few-seconds pull shows several percentages.
    operator = await startOperator({
      kubeconfig: operatorKubeconfig,
      registryDir,
      name: 'e2e-plugin-op',
      env: { BLOCKPULL_STATUS_UPDATE_INTERVAL_MS: '500' },
    });

    // The tenant: BlockPulls in its namespace, nothing else (no pods, no pods/exec, no other namespace).
    tenantKubeconfig = await createServiceAccountKubeconfig(kube, NS, TENANT, { dir: tmp });
    const rbac = [
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'Role',
        metadata: { name: 'blockpull-user', namespace: NS },
        rules: [
          {
            apiGroups: ['blockpull.dev'],
            resources: ['blockpulls'],
            verbs: ['get', 'list', 'watch', 'create', 'patch', 'delete'],
          },
        ],
      },
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'RoleBinding',
        metadata: { name: 'blockpull-user', namespace: NS },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'blockpull-user' },
        subjects: [{ kind: 'ServiceAccount', name: TENANT, namespace: NS }],
      },
    ];
    await kube.kubectl(['apply', '-f', '-'], { input: rbac.map((o) => stringify(o)).join('---\n') });

    // kubectl finds plugins on PATH by name: kubectl-blockpull -> the plugin's entry point.
    binDir = path.join(tmp, 'bin');
    await mkdir(binDir);
    await symlink(PLUGIN_MAIN, path.join(binDir, 'kubectl-blockpull'));
    env = {
      PATH: [binDir, path.dirname(NODE_BIN), path.dirname(kube.kubectlPath), '/usr/bin', '/bin'].join(':'),
      HOME: tmp,
      KUBECONFIG: tenantKubeconfig,
      LANG: 'C.UTF-8',
      TERM: 'xterm-256color',
    };
    const list = await run([kube.kubectlPath, 'plugin', 'list'], { env, allowExit: true });
    expect(list.stdout).toContain(path.join(binDir, 'kubectl-blockpull'));
  });

  afterAll(async () => {
    await terminal?.stop();
    if (kube !== undefined)
      await kube.kubectlResult(['delete', 'blockpulls', '--all', '-n', NS, '--wait=true', '--timeout=60s']);
    await operator?.stop();
    await launcher?.stop();
    if (registryDir) await rm(registryDir, { recursive: true, force: true });
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('in a terminal, start --wait draws one live bar that moves and ends at 100 %, then exits 0', async () => {
    terminal = await startTerminal({ name: `bp-plugin-${process.pid}`, width: 120, height: 20, env, cwd: tmp });
    await terminal.type('kubectl blockpull start vm1 --disk live --bandwidth 4Mi --wait; echo "exit=$?"');
    const BAR = /^vm1-live\s+\[([= >]+)\]\s+(\d+)%\s+(\S+ \S+)\/(\S+ \S+)\s+(.*)$/;
    const samples: { percent: number; filled: number; line: string }[] = [];
    const screens: string[][] = [];
    const last = await waitFor(
      'the terminal to show exit=',
      120_000,
      async () => {
        const screen = await terminal!.screen();
        screens.push(screen);
        const bars = screen.filter((l) => l.startsWith('vm1-live'));
        // Drawn in place: never more than one line for the pull.
        expect(bars.length, screen.join('\n')).toBeLessThanOrEqual(1);
        const m = bars[0] !== undefined ? BAR.exec(bars[0]) : null;
        if (m !== null)
          samples.push({ percent: Number(m[2]), filled: (m[1]!.match(/=/g) ?? []).length, line: bars[0]! });
        return screen.some((l) => /^exit=\d+$/.test(l)) ? screen : undefined;
      },
      100,
    );
    const text = last.join('\n');
    expect(text).toMatch(/^blockpull bp-plugin\/vm1-live created \(vmi vm1, disk live, bandwidth 4Mi\)$/m);
    expect(text).toMatch(/^exit=0$/m);
    expect(text).toMatch(/^blockpull bp-plugin\/vm1-live Completed\/Completed/m);
    // The bar moved: at least two percentages below 100, in order, the bar filling with them.
    const moving = [...new Set(samples.filter((s) => s.percent > 0 && s.percent < 100).map((s) => s.percent))];
    console.log(`percentages seen: ${[...new Set(samples.map((s) => s.percent))].join(', ')}`);
    expect(moving.length, samples.map((s) => s.line).join('\n')).toBeGreaterThanOrEqual(2);
    expect([...moving].sort((a, b) => a - b)).toEqual(moving);
    const first = samples.find((s) => s.percent === moving[0])!;
    const later = samples.find((s) => s.percent === moving.at(-1))!;
    expect(later.filled).toBeGreaterThan(first.filled);
    // While it ran the line showed a rate, an ETA and Running/Pulling.
    expect(samples.some((s) => /\/s\s+ETA \d+s\s+Running\/Pulling$/.test(s.line))).toBe(true);
    // It ends full: 100 %, every cell filled, Completed.
    const end = samples.at(-1)!;
    expect(end.percent).toBe(100);
    expect(end.line).toMatch(/^vm1-live\s+\[=+\]\s+100%\s+.*Completed\/Completed(: .*)?$/);
    const bp = await getBlockPull(kube, NS, 'vm1-live');
    expect(bp?.status).toMatchObject({ phase: 'Completed', reason: 'Completed', progress: { percent: '100%' } });
    expect(bp?.spec).toMatchObject({ vmiName: VMI, disk: 'live', bandwidth: '4Mi' });
    // The cursor is visible again (the bar hid it while drawing).
    expect(screens.length).toBeGreaterThan(10);
    expect(await terminal.format('#{cursor_flag}')).toBe('1');
  });

  it('wait: 0 for a Completed pull, 1 for a Failed one, 2 on a timeout', async () => {
    const done = await plugin(['wait', 'vm1-live']);
    expect(done.exitCode, done.stderr).toBe(0);
    expect(done.stdout).toMatch(/^blockpull bp-plugin\/vm1-live Completed\/Completed/);

    // A base below the bottom of a 3-image chain: the operator finds it on its first look (InvalidBase).
    const started = await plugin(['start', VMI, '--disk', 'bad', '--base', '7', '--name', 'bad-base']);
    expect(started.exitCode, started.stderr).toBe(0);
    const failed = await plugin(['wait', 'bad-base', '--timeout', '60s']);
    expect(failed.exitCode, failed.stderr).toBe(1);
    expect(failed.stdout).toBe('');
    expect(failed.stderr).toMatch(
      /^blockpull bp-plugin\/bad-base Failed\/InvalidBase: base position 7 is not in the chain/,
    );
    expect((await getBlockPull(kube, NS, 'bad-base'))?.status).toMatchObject({
      phase: 'Failed',
      reason: 'InvalidBase',
    });

    // No such VMI: Pending for good, so wait gives up after its timeout.
    expect((await plugin(['start', 'nope', '--disk', 'rootdisk', '--name', 'no-vmi'])).exitCode).toBe(0);
    await waitFor(
      'no-vmi Pending/VMINotFound',
      30_000,
      async () => (await getBlockPull(kube, NS, 'no-vmi'))?.status?.reason === 'VMINotFound',
    );
    const t0 = Date.now();
    const timedOut = await plugin(['wait', 'no-vmi', '--timeout', '2s']);
    const elapsed = Date.now() - t0;
    expect(timedOut.exitCode, timedOut.stderr).toBe(2);
    expect(timedOut.stderr).toMatch(
      /^error: timed out after 2s waiting for blockpull bp-plugin\/no-vmi \(Pending\/VMINotFound: VirtualMachineInstance bp-plugin\/nope not found/,
    );
    expect(elapsed).toBeGreaterThanOrEqual(2_000);
    // 2 s, plus starting kubectl and Node on a loaded machine.
    expect(elapsed).toBeLessThan(15_000);

    // start --wait ends with wait's verdict.
    const startWait = await plugin([
      'start',
      VMI,
      '--disk',
      'bad',
      '--base',
      '9',
      '--name',
      'bad-base-2',
      '--wait',
      '--timeout',
      '60s',
    ]);
    expect(startWait.exitCode, startWait.stderr).toBe(1);
    expect(startWait.stdout).toMatch(
      /^blockpull bp-plugin\/bad-base-2 created \(vmi vm1, disk bad, base position 9\)\n$/,
    );
  });

  it('status without a terminal: one plain line per pull, and -o json|yaml', async () => {
    const r = await plugin(['status']);
    expect(r.exitCode, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    // Parsed here on its own terms (not with the plugin's parser): label, then key=value fields.
    const rows = new Map(
      lines.map((l) => {
        const m = /^(\S+)((?: [a-z]+=(?:"[^"]*"|\S*))+)$/.exec(l);
        expect(m, l).not.toBeNull();
        return [
          m![1]!,
          Object.fromEntries(
            [...m![2]!.matchAll(/ ([a-z]+)=("[^"]*"|\S*)/g)].map((f) => [f[1]!, f[2]!.replace(/^"|"$/g, '')]),
          ),
        ] as const;
      }),
    );
    expect([...rows.keys()]).toEqual([
      'bp-plugin/bad-base',
      'bp-plugin/bad-base-2',
      'bp-plugin/no-vmi',
      'bp-plugin/vm1-live',
    ]);
    for (const [label, f] of rows) {
      const bp = (await getBlockPull(kube, NS, label.split('/')[1]!))!;
      expect(f['phase'], label).toBe(bp.status?.phase);
      expect(f['reason'], label).toBe(bp.status?.reason);
      expect(f['vmi'], label).toBe(bp.spec['vmiName']);
      expect(f['disk'], label).toBe(bp.spec['disk']);
    }
    const live = (await getBlockPull(kube, NS, 'vm1-live'))!;
    expect(rows.get('bp-plugin/vm1-live')).toMatchObject({
      percent: '100',
      bytes: `${live.status?.progress?.currentBytes}/${live.status?.progress?.totalBytes}`,
      rate: '-',
      eta: '-',
    });
    expect(Number(live.status?.progress?.totalBytes)).toBeGreaterThan(0);
    expect(rows.get('bp-plugin/bad-base')?.['message']).toMatch(/base position 7 is not in the chain/);

    const json = await plugin(['status', '-o', 'json']);
    const list = JSON.parse(json.stdout) as {
      kind: string;
      items: { metadata: { name: string; managedFields?: unknown }; status?: { phase?: string } }[];
    };
    expect(list.kind).toBe('List');
    expect(list.items.map((i) => i.metadata.name).sort()).toEqual(['bad-base', 'bad-base-2', 'no-vmi', 'vm1-live']);
    expect(list.items.every((i) => i.metadata.managedFields === undefined)).toBe(true);
    const one = parse((await plugin(['status', 'vm1-live', '-o', 'yaml'])).stdout) as {
      kind: string;
      metadata: { name: string };
      status: { phase: string; progress: { percent: string } };
    };
    expect(one).toMatchObject({
      kind: 'BlockPull',
      metadata: { name: 'vm1-live' },
      status: { phase: 'Completed', progress: { percent: '100%' } },
    });

    // -w through a pipe: each pull's line once (nothing changes meanwhile), then more only on changes; stopped by us.
    const watched = await run([kube.kubectlPath, 'blockpull', 'status', '-w'], { env, timeoutMs: 8_000 }).catch(
      (err: unknown) => resultOf(err),
    );
    expect(
      watched.stdout
        .trimEnd()
        .split('\n')
        .map((l) => l.split(' ')[0]),
    ).toEqual(['bp-plugin/bad-base', 'bp-plugin/bad-base-2', 'bp-plugin/no-vmi', 'bp-plugin/vm1-live']);
    const jsonLines = await run([kube.kubectlPath, 'blockpull', 'status', '-w', '-o', 'json'], {
      env,
      timeoutMs: 8_000,
    }).catch((err: unknown) => resultOf(err));
    const docs = jsonLines.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { metadata: { name: string } });
    expect(docs.map((d) => d.metadata.name).sort()).toEqual(['bad-base', 'bad-base-2', 'no-vmi', 'vm1-live']);
  });

  it('in a terminal, status -w redraws one line per pull in place until Ctrl-C', async () => {
    await terminal!.type('clear');
    await terminal!.type('kubectl blockpull status -w; echo "exit=$?"');
    await waitFor('the block of pulls', 30_000, async () =>
      (await terminal!.screen()).some((l) => l.startsWith('vm1-live ')),
    );
    expect(
      (await plugin(['start', VMI, '--disk', 'watched', '--bandwidth', '4Mi', '--name', 'watched'])).exitCode,
    ).toBe(0);
    const percents = new Set<number>();
    const final = await waitFor(
      'watched at 100 %',
      120_000,
      async () => {
        const screen = await terminal!.screen();
        const labels = screen.filter((l) => /^[a-z0-9-]+ {2,}/.test(l)).map((l) => l.split(' ')[0]);
        // Every pull once, sorted by name, whatever was redrawn.
        expect(labels.filter((l) => l === 'watched').length, screen.join('\n')).toBeLessThanOrEqual(1);
        if (labels.includes('watched'))
          expect(labels, screen.join('\n')).toEqual(['bad-base', 'bad-base-2', 'no-vmi', 'vm1-live', 'watched']);
        const line = screen.find((l) => l.startsWith('watched '));
        const m = line !== undefined ? /\]\s+(\d+)%/.exec(line) : null;
        if (m !== null) percents.add(Number(m[1]));
        return line !== undefined && /100%.*Completed\/Completed/.test(line) ? screen : undefined;
      },
      100,
    );
    expect([...percents].filter((p) => p > 0 && p < 100).length, [...percents].join(',')).toBeGreaterThanOrEqual(2);
    // The others are drawn as they are: the Failed one with its reason, the Completed one full.
    expect(final.find((l) => l.startsWith('bad-base '))).toMatch(/\s+-\s+Failed\/InvalidBase: base position 7/);
    expect(final.find((l) => l.startsWith('vm1-live '))).toMatch(/\[=+\]\s+100%/);
    expect(final.some((l) => l.startsWith('exit='))).toBe(false);
    await terminal!.key('C-c');
    // The terminal echoes ^C where the cursor is, below the block.
    const exitLine = await waitFor('exit=', 10_000, async () =>
      (await terminal!.screen()).find((l) => /exit=\d+$/.test(l)),
    );
    expect(exitLine).toMatch(/^(\^C)?exit=130$/);
    expect(await terminal!.format('#{cursor_flag}')).toBe('1');
  });

  it('pause, resume, and abort showing the abort until the object is gone; the disk keeps its chain', async () => {
    const driver = new VirshDriver(launcher!.runner, launcher!.uri);
    const chainOf = async (): Promise<number> =>
      (await driver.getDisk(launcher!.domain, { name: 'slow' })).chain.length;
    expect((await plugin(['start', VMI, '--disk', 'slow', '--bandwidth', '1Mi', '--name', 'slow'])).exitCode).toBe(0);
    await waitFor('slow Running with progress', 60_000, async () => {
      const bp = await getBlockPull(kube, NS, 'slow');
      return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0;
    });
    const paused = await plugin(['pause', 'slow']);
    expect(paused.exitCode, paused.stderr).toBe(0);
    expect(paused.stdout).toMatch(/^blockpull bp-plugin\/slow pausing/);
    await waitForPhase(kube, NS, 'slow', ['Paused']);
    expect((await plugin(['pause', 'slow'])).stdout).toMatch(/already paused/);
    const resumed = await plugin(['resume', 'slow']);
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    await waitForPhase(kube, NS, 'slow', ['Running']);
    await sleep(1_000);
    expect(await chainOf()).toBe(3);

    const aborted = await plugin(['abort', 'slow', '--timeout', '60s']);
    expect(aborted.exitCode, aborted.stderr).toBe(0);
    expect(aborted.stderr).toMatch(
      /^aborting blockpull bp-plugin\/slow \(Running\/\w+, \d+%\): the operator aborts its job/,
    );
    const out = aborted.stdout.trimEnd().split('\n');
    // Each step as it happened: the delete seen, the operator's abort recorded, then gone.
    expect(
      out.some((l) => /^bp-plugin\/slow .* job=Aborting .*deleting=true/.test(l)),
      aborted.stdout,
    ).toBe(true);
    expect(out.at(-1)).toBe('blockpull bp-plugin/slow deleted (its job was aborted)');
    expect(await getBlockPull(kube, NS, 'slow')).toBeUndefined();
    // Aborted short of the goal: the chain is still three images.
    expect(await chainOf()).toBe(3);
    expect(await driver.getJob(launcher!.domain, launcher!.disks.find((d) => d.name === 'slow')!.target)).toBeNull();
  });

  it('in a terminal, abort shows the job being aborted on its line until the object is gone', async () => {
    expect(
      (await plugin(['start', VMI, '--disk', 'ttyabort', '--bandwidth', '1Mi', '--name', 'ttyabort'])).exitCode,
    ).toBe(0);
    await waitFor('ttyabort Running with progress', 60_000, async () => {
      const bp = await getBlockPull(kube, NS, 'ttyabort');
      return bp?.status?.phase === 'Running' && (bp.status.progress?.currentBytes ?? 0) > 0;
    });
    await terminal!.type('clear');
    await terminal!.type('kubectl blockpull abort ttyabort; echo "exit=$?"');
    const lines = new Set<string>();
    const final = await waitFor(
      'exit=',
      60_000,
      async () => {
        const screen = await terminal!.screen();
        for (const l of screen.filter((x) => x.startsWith('ttyabort '))) lines.add(l);
        return screen.some((l) => /^exit=\d+$/.test(l)) ? screen : undefined;
      },
      50,
    );
    expect(final).toContain('exit=0');
    expect(final).toContain('blockpull bp-plugin/ttyabort deleted (its job was aborted)');
    expect(
      final.some((l) =>
        /^aborting blockpull bp-plugin\/ttyabort \(Running\/\w+, \d+%\): the operator aborts its job/.test(l),
      ),
      final.join('\n'),
    ).toBe(true);
    // The line showed the deletion and the operator's abort while it happened.
    expect(
      [...lines].some((l) => /\[[= >]+\]\s+\d+%.* deleting, job (Aborting|Aborted)$/.test(l)),
      [...lines].join('\n'),
    ).toBe(true);
    expect(await getBlockPull(kube, NS, 'ttyabort')).toBeUndefined();
  });

  it('plan prints what the pull would do, leaves nothing behind, and the pull then stays within it', async () => {
    const disks = new VirshDriver(launcher!.runner, launcher!.uri);
    const top = (await disks.getDisk(launcher!.domain, { name: 'planned' })).chain[0]!.path;
    const before = (await stat(top)).blocks * 512;
    const planned = await plugin(['plan', VMI, '--disk', 'planned', '--bandwidth', '8Mi']);
    expect(planned.exitCode, planned.stderr).toBe(0);
    const lines = planned.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^bp-plugin\/vm1 disk planned \(vd[a-z]+\): pull into a single image$/);
    expect(lines[1]).toMatch(/^ {2}chain: \S+ \(qcow2\) <- \S+ \(qcow2\) <- \S+ \(qcow2\)$/);
    const bound = Number(/^ {2}to write: at most .* \((\d+) bytes\)$/.exec(lines[2] ?? '')?.[1]);
    expect(bound).toBeGreaterThan(0);
    expect(lines[3]).toMatch(/^ {2}space: Fits, .* free$/);
    expect(lines[4]).toMatch(/^ {2}eta: about \d+s at 8Mi\/s$/);
    // The plan's BlockPull is gone, no job ran, the disk is as it was.
    expect((await plugin(['status'])).stdout).not.toMatch(/plan-vm1-planned/);
    expect((await disks.getDisk(launcher!.domain, { name: 'planned' })).chain).toHaveLength(3);
    expect((await stat(top)).blocks * 512).toBe(before);

    const pulled = await plugin(['start', VMI, '--disk', 'planned', '--wait']);
    expect(pulled.exitCode, pulled.stderr).toBe(0);
    const written = (await stat(top)).blocks * 512 - before;
    console.log(`plugin plan: at most ${bound} bytes to write; the pull then wrote ${written}`);
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThanOrEqual(bound);
  });

  it('errors are one line with exit code 3: not found, forbidden, unknown context, bad usage, plan', async () => {
    expectOneErrorLine(await plugin(['status', 'nosuch']), /^error: blockpull bp-plugin\/nosuch not found$/);
    expectOneErrorLine(await plugin(['wait', 'nosuch']), /^error: blockpull bp-plugin\/nosuch not found$/);
    // The tenant may not list BlockPulls cluster-wide: the API server's own words.
    expectOneErrorLine(
      await plugin(['status', '-A']),
      /forbidden: User "system:serviceaccount:bp-plugin:tenant" cannot list resource "blockpulls"/,
    );
    expectOneErrorLine(await plugin(['status', '-n', 'default']), /forbidden/);
    expectOneErrorLine(await plugin(['status', '--context', 'nope']), /context "nope" not found in the kubeconfig/);
    expectOneErrorLine(
      await plugin(['status', '--kubeconfig', path.join(tmp, 'missing')]),
      /cannot load the kubeconfig/,
    );
    expectOneErrorLine(await plugin(['start', VMI]), /start needs --disk/);
    expectOneErrorLine(await plugin(['start', VMI, '--disk', 'live']), /already exists/);
    // The tenant may not read VMIs: plan without --disk cannot list them, and says what to do.
    expectOneErrorLine(
      await plugin(['plan', VMI]),
      /cannot read virtualmachineinstance bp-plugin\/vm1 to list its disks \(forbidden\): name the disk with --disk$/,
    );
    // A user who may list but not watch: status works, status -w says the watch was refused.
    const lister = await createServiceAccountKubeconfig(kube, NS, 'lister', { dir: tmp });
    const listerRbac = [
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'Role',
        metadata: { name: 'blockpull-lister', namespace: NS },
        rules: [{ apiGroups: ['blockpull.dev'], resources: ['blockpulls'], verbs: ['get', 'list'] }],
      },
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'RoleBinding',
        metadata: { name: 'blockpull-lister', namespace: NS },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'blockpull-lister' },
        subjects: [{ kind: 'ServiceAccount', name: 'lister', namespace: NS }],
      },
    ];
    await kube.kubectl(['apply', '-f', '-'], { input: listerRbac.map((o) => stringify(o)).join('---\n') });
    expect((await plugin(['status', 'vm1-live', '--kubeconfig', lister])).exitCode).toBe(0);
    expectOneErrorLine(
      await plugin(['status', '-w', '--kubeconfig', lister], 30_000),
      /the API server refused to watch \/apis\/blockpull.dev\/v1alpha1\/namespaces\/bp-plugin\/blockpulls \(HTTP 403/,
    );
    // The admin kubeconfig given with --kubeconfig is used instead of KUBECONFIG: -A works there.
    const all = await plugin(['status', '-A', '--kubeconfig', kube.kubeconfigPath]);
    expect(all.exitCode, all.stderr).toBe(0);
    expect(all.stdout).toMatch(/^bp-plugin\/vm1-live /m);
    // And the entry point runs directly too (node, no kubectl).
    const direct = await run([NODE_BIN, PLUGIN_MAIN, 'status', 'vm1-live'], { env, allowExit: true });
    expect(direct.stdout).toMatch(
      /^bp-plugin\/vm1-live vmi=vm1 disk=live phase=Completed reason=Completed percent=100 /,
    );
  });

  it('the npm package as built (plugin/tsconfig.build.json -> plugin/dist) runs the same verbs', async () => {
    await run(
      [
        NODE_BIN,
        path.join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'),
        '-p',
        path.join(REPO_ROOT, 'plugin', 'tsconfig.build.json'),
      ],
      { cwd: REPO_ROOT, timeoutMs: 300_000 },
    );
    const pkg = JSON.parse(await readFile(path.join(REPO_ROOT, 'plugin', 'package.json'), 'utf8')) as {
      bin: Record<string, string>;
    };
    const bin = path.join(REPO_ROOT, 'plugin', pkg.bin['kubectl-blockpull']!);
    expect((await readFile(bin, 'utf8')).startsWith('#!/usr/bin/env node\n')).toBe(true);
    const r = await run([NODE_BIN, bin, 'status', 'vm1-live', '-o', 'json'], { env, allowExit: true });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      kind: 'BlockPull',
      metadata: { name: 'vm1-live', namespace: NS },
      status: { phase: 'Completed' },
    });
    const w = await run([NODE_BIN, bin, 'wait', 'bad-base'], { env, allowExit: true });
    expect(w.exitCode).toBe(1);
  });
});
