/**
 * VirshDriver argv: commands are run by a real LocalRunner (real virsh against libvirt's built-in
 * test driver, test:///default) through a recorder that keeps the argv each command was given.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LocalRunner } from './local-runner.ts';
import { HypervisorError } from './errors.ts';
import {
  RunOutputLimitError,
  type CommandRunner,
  type RunOptions,
  type RunResult,
  type StreamHandle,
} from './runner.ts';
import type { DiskInfo } from './types.ts';
import { VirshDriver } from './virsh-driver.ts';

class RecordingRunner implements CommandRunner {
  readonly description = 'recording local';
  readonly argvs: string[][] = [];
  readonly #inner = new LocalRunner();
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult> {
    this.argvs.push([...argv]);
    return this.#inner.run(argv, options);
  }
  stream(argv: readonly string[], options?: RunOptions): StreamHandle {
    this.argvs.push([...argv]);
    return this.#inner.stream(argv, options);
  }
}

const hasVirsh = spawnSync('virsh', ['--version']).status === 0;
const URI = 'test:///default';

describe('VirshDriver.abort', () => {
  it('says --abort explicitly (with --async), not --async alone', async () => {
    const runner = new RecordingRunner();
    const driver = new VirshDriver(runner, URI, { virsh: hasVirsh ? 'virsh' : '/nonexistent/virsh' });
    await driver.abort('test', 'vda').catch(() => undefined);
    expect(runner.argvs).toEqual([
      [
        hasVirsh ? 'virsh' : '/nonexistent/virsh',
        '-q',
        '-c',
        URI,
        'blockjob',
        '--domain',
        'test',
        '--path',
        'vda',
        '--abort',
        '--async',
      ],
    ]);
  });

  it.skipIf(!hasVirsh)(
    'virsh accepts the argv and calls virDomainBlockJobAbort (test driver: not supported there)',
    async () => {
      const driver = new VirshDriver(new RecordingRunner(), URI);
      // The test driver parses every option and then reports the API it lacks: an option virsh
      // did not accept would fail earlier with "command 'blockjob' doesn't support option".
      await expect(driver.abort('test', 'vda')).rejects.toThrow(/virDomainBlockJobAbort/);
      const bogus = new LocalRunner();
      const res = await bogus.run([
        'virsh',
        '-q',
        '-c',
        URI,
        'blockjob',
        '--domain',
        'test',
        '--path',
        'vda',
        '--abort',
        '--bogus',
      ]);
      expect(res.stderr).toMatch(/doesn't support option --bogus/);
    },
  );
});

/** A runner that answers `virsh blockjob` from a table of running jobs; its event stream ends at once. */
class ScriptedRunner implements CommandRunner {
  readonly description = 'scripted';
  readonly argvs: string[][] = [];
  readonly running = new Set<string>();
  run(argv: readonly string[]): Promise<RunResult> {
    this.argvs.push([...argv]);
    const op = argv[4];
    if (op === 'dumpxml') {
      const disk = (t: string) =>
        `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/d/${t}.qcow2' index='1'/><backingStore/><target dev='${t}' bus='virtio'/></disk>`;
      return Promise.resolve({
        exitCode: 0,
        stdout: `<domain><name>d</name><devices>${['vda', 'vdb', 'vdc'].map(disk).join('')}</devices></domain>`,
        stderr: '',
      });
    }
    const target = argv[argv.indexOf('--path') + 1] ?? '';
    const stdout = this.running.has(target) ? ' type=Block Pull\n bandwidth=0\n cur=1\n end=10\n' : '\n';
    return Promise.resolve({ exitCode: 0, stdout, stderr: '' });
  }
  stream(argv: readonly string[]): StreamHandle {
    this.argvs.push([...argv]);
    const done = Promise.resolve({ exitCode: 1, stdout: '', stderr: 'error: failed to connect to the hypervisor' });
    return { lines: (async function* () {})(), done, stop: () => undefined };
  }
}

describe('VirshDriver.watchEvents', () => {
  const ops = (r: ScriptedRunner) =>
    r.argvs.map((a) => (a.includes('--path') ? `${a[4]} ${a[a.indexOf('--path') + 1]}` : (a[4] ?? '')));

  it('with targets: seeds and polls with `virsh blockjob` on those disks only; reports a job that disappears', async () => {
    const runner = new ScriptedRunner();
    runner.running.add('vdb');
    const driver = new VirshDriver(runner, 'test:///default', { eventRestartDelayMs: 60_000, eventPollIntervalMs: 20 });
    const events: string[] = [];
    const sub = driver.watchEvents('d', (e) => events.push(`${e.target} ${e.kind}`), { targets: ['vdb'] });
    await expect.poll(() => ops(runner).filter((o) => o === 'blockjob vdb').length).toBeGreaterThanOrEqual(2);
    runner.running.delete('vdb');
    await expect.poll(() => events).toEqual(['vdb completed']);
    sub.stop();
    expect(
      ops(runner).filter((o) => !o.startsWith('blockjob vdb') && o !== 'event' && o !== 'qemu-monitor-event'),
    ).toEqual([]);
  });

  it('without targets: looks at every disk of the domain (dumpxml, then blockjob per disk)', async () => {
    const runner = new ScriptedRunner();
    const driver = new VirshDriver(runner, 'test:///default', {
      eventRestartDelayMs: 60_000,
      eventPollIntervalMs: 60_000,
    });
    const sub = driver.watchEvents('d', () => undefined);
    await expect.poll(() => ops(runner).filter((o) => o.startsWith('blockjob')).length).toBeGreaterThanOrEqual(3);
    sub.stop();
    // The two event streams (libvirt's block-job events, QEMU's BLOCK_JOB_COMPLETED for the error).
    expect(ops(runner).slice(0, 2)).toEqual(['event', 'qemu-monitor-event']);
    expect(ops(runner).slice(2, 6)).toEqual(['dumpxml', 'blockjob vda', 'blockjob vdb', 'blockjob vdc']);
  });
});

/**
 * A runner whose streams live `lives[n]` ms each (then end: 0 when not given), on the (fake)
 * clock; `virsh blockjob` finds no job. It records when each stream started.
 */
class TimedStreamRunner implements CommandRunner {
  readonly description = 'timed streams';
  readonly starts: { op: string; atMs: number }[] = [];
  readonly polls: number[] = [];
  readonly lives: Record<string, number[]> = { event: [], 'qemu-monitor-event': [] };
  run(): Promise<RunResult> {
    this.polls.push(Date.now());
    return Promise.resolve({ exitCode: 0, stdout: '\n', stderr: '' });
  }
  stream(argv: readonly string[]): StreamHandle {
    const op = argv[4] ?? '';
    this.starts.push({ op, atMs: Date.now() });
    const life = this.lives[op]?.shift() ?? 0;
    const done = new Promise<RunResult>((resolve) =>
      setTimeout(() => resolve({ exitCode: 1, stdout: '', stderr: 'error: disconnected' }), life),
    );
    return {
      // No line; the iteration ends when the command does.
      lines: { [Symbol.asyncIterator]: () => ({ next: () => done.then(() => ({ done: true as const, value: '' })) }) },
      done,
      stop: () => undefined,
    };
  }
}

describe('VirshDriver.watchEvents restarts', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('a stream that keeps ending is restarted after 1 s, 2 s, 4 s ... 30 s (the monitor stream from 5 s), polled every 8 s meanwhile; a stream that lived 30 s restarts after 1 s again', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'], now: 0 });
    const runner = new TimedStreamRunner();
    // The 8th start of the event stream lives 40 s: the next restart waits the first delay again.
    runner.lives['event'] = [0, 0, 0, 0, 0, 0, 0, 40_000];
    const sub = new VirshDriver(runner, URI).watchEvents('d', () => undefined, { targets: ['vda'] });
    await vi.advanceTimersByTimeAsync(150_000);
    sub.stop();
    const at = (op: string) => runner.starts.filter((s) => s.op === op).map((s) => Math.round(s.atMs / 1000));
    // 0, +1, +2, +4, +8, +16, +30, +30 (lives 40 s: ends at 131), +1, +2, +4, +8.
    expect(at('event')).toEqual([0, 1, 3, 7, 15, 31, 61, 91, 132, 134, 138, 146]);
    expect(at('qemu-monitor-event')).toEqual([0, 5, 15, 35, 65, 95, 125]);
    // The fallback poll while the event stream is down: every 8 s, not every 500 ms.
    // From 20 s to 90 s the stream is down all the time: 70 s / 8 s.
    const polled = runner.polls.filter((t) => t >= 20_000 && t < 90_000).length;
    expect(polled).toBeGreaterThanOrEqual(8);
    expect(polled).toBeLessThanOrEqual(9);
  });
});

describe('VirshDriver looks asked twice at once', () => {
  /** A runner whose commands end when the test says; it records each argv. */
  class GatedRunner implements CommandRunner {
    readonly description = 'gated';
    readonly argvs: string[][] = [];
    readonly #ends: (() => void)[] = [];
    run(argv: readonly string[]): Promise<RunResult> {
      this.argvs.push([...argv]);
      const stdout =
        argv[4] === 'dumpxml'
          ? `<domain><name>d</name><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/d/top.qcow2' index='1'/><backingStore/><target dev='vda' bus='virtio'/></disk></devices></domain>`
          : ' type=Block Pull\n bandwidth=0\n cur=1\n end=10\n';
      return new Promise((resolve) => this.#ends.push(() => resolve({ exitCode: 0, stdout, stderr: '' })));
    }
    stream(): StreamHandle {
      throw new Error('not used');
    }
    endAll(): void {
      for (const end of this.#ends.splice(0)) end();
    }
  }

  it('the same getJob or listDisks asked while it runs shares its one command; another disk, a later look or a signal gets its own', async () => {
    const runner = new GatedRunner();
    const driver = new VirshDriver(runner, URI);
    const jobs = [driver.getJob('d', 'vda'), driver.getJob('d', 'vda'), driver.getJob('d', 'vdb')];
    const disks = [driver.listDisks('d'), driver.listDisks('d'), driver.listDisks('d', new AbortController().signal)];
    expect(runner.argvs.map((a) => `${a[4]} ${a.includes('--path') ? a[a.indexOf('--path') + 1] : ''}`)).toEqual([
      'blockjob vda',
      'blockjob vdb',
      'dumpxml ',
      'dumpxml ',
    ]);
    runner.endAll();
    const [a, b, c] = await Promise.all(jobs);
    expect(a).toEqual({ type: 'Block Pull', bandwidth: 0, cur: 1, end: 10 });
    expect(b).toEqual(a);
    expect(c).toEqual(a);
    const [d1, d2] = await Promise.all(disks);
    expect(d1?.map((d) => d.target)).toEqual(['vda']);
    expect(d2).toEqual(d1);
    // Ended: the next look runs its own command.
    const again = driver.getJob('d', 'vda');
    expect(runner.argvs).toHaveLength(5);
    runner.endAll();
    await again;
  });
});

/** virsh answers; the space tools (stat, du) flood their output, as a misbehaving launcher could. */
class FloodingToolRunner implements CommandRunner {
  readonly description = 'flooding tools';
  run(argv: readonly string[]): Promise<RunResult> {
    if (argv[0] === 'virsh') return Promise.resolve({ exitCode: 0, stdout: '', stderr: '' });
    return Promise.reject(new RunOutputLimitError(argv, 'stdout', 1024));
  }
  stream(): StreamHandle {
    throw new Error('not used');
  }
}

describe('VirshDriver.getSpace', () => {
  it('a stat or du output flood is Unreachable, not a plain error the space check would read as "space unknown"', async () => {
    const driver = new VirshDriver(new FloodingToolRunner(), URI);
    const disk = {
      target: 'vda',
      chain: [{ path: '/var/run/kubevirt/top.qcow2', format: 'qcow2' }],
    } as unknown as DiskInfo;
    const err: unknown = await driver.getSpace('ns_vm', { disk, measureUsage: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HypervisorError);
    expect((err as HypervisorError).code).toBe('Unreachable');
  });
});

describe('VirshDriver.getSpace before a start', () => {
  /** Answers each read after a delay and records how many were in flight at once. */
  class CountingRunner implements CommandRunner {
    readonly description = 'counting';
    inFlight = 0;
    maxInFlight = 0;
    readonly commands: string[] = [];
    run(argv: readonly string[]): Promise<RunResult> {
      this.inFlight++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      const name = argv[0] === 'virsh' ? 'domstats' : argv.slice(0, 2).join(' ');
      this.commands.push(name);
      const stdout =
        name === 'domstats'
          ? "Domain: 'ns_vm'\n  block.count=2\n  block.0.name=vda\n  block.0.path=/t/top.qcow2\n  block.0.backingIndex=1\n  block.1.name=vda\n  block.1.path=/t/base.qcow2\n  block.1.backingIndex=2\n  block.1.capacity=1048576\n  block.1.physical=524288\n"
          : argv[0] === 'du'
            ? '4096\t/t\n'
            : argv.includes('%m')
              ? '/t\n'
              : '100 4096 1000\n';
      return new Promise((resolve) =>
        setTimeout(() => {
          this.inFlight--;
          resolve({ exitCode: 0, stdout, stderr: '' });
        }, 20),
      );
    }
    stream(): StreamHandle {
      throw new Error('not used');
    }
  }

  it('runs domstats, stat -f and the mount point look at once; du waits for the mount point', async () => {
    const runner = new CountingRunner();
    const driver = new VirshDriver(runner, URI);
    const disk = {
      target: 'vda',
      chain: [
        { path: '/t/top.qcow2', format: 'qcow2', index: 1 },
        { path: '/t/base.qcow2', format: 'qcow2', index: 2 },
      ],
    } as unknown as DiskInfo;
    const info = await driver.getSpace('ns_vm', { disk, measureUsage: true });
    expect(runner.maxInFlight).toBe(3);
    expect(runner.commands.at(-1)).toBe('du -s');
    expect(info).toMatchObject({
      kind: 'measured',
      pullBytes: 524288,
      availableBytes: 100 * 4096,
      totalBytes: 1000 * 4096,
      usage: { mountPoint: '/t', usedBytes: 4096 },
    });
  });
});

describe('VirshDriver actions with a signal', () => {
  /** A runner whose every command hangs until its signal ends it (LocalRunner rejects with the signal's reason too). */
  class HangingRunner implements CommandRunner {
    readonly description = 'hanging';
    readonly signals: (AbortSignal | undefined)[] = [];
    run(_argv: readonly string[], options?: RunOptions): Promise<RunResult> {
      this.signals.push(options?.signal);
      return new Promise((_resolve, reject) =>
        options?.signal?.addEventListener('abort', () => reject(options.signal?.reason as Error), { once: true }),
      );
    }
    stream(): StreamHandle {
      throw new Error('not used');
    }
  }

  it('blockpull (with a base: dumpxml first), --bandwidth and --abort end when the signal fires, with its reason', async () => {
    for (const act of [
      (d: VirshDriver, signal: AbortSignal) => d.startPull('d', 'vda', { base: { position: 1 }, signal }),
      (d: VirshDriver, signal: AbortSignal) => d.setBandwidth('d', 'vda', 1024, { signal }),
      (d: VirshDriver, signal: AbortSignal) => d.abort('d', 'vda', { signal }),
    ]) {
      const runner = new HangingRunner();
      const controller = new AbortController();
      const pending = act(new VirshDriver(runner, URI), controller.signal);
      const reason = new Error('ended at the bound');
      controller.abort(reason);
      await expect(pending).rejects.toBe(reason);
      expect(runner.signals).toEqual([controller.signal]);
    }
  });

  it('a real hanging command is killed by the signal (LocalRunner)', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'bp-virsh-hang-'));
    try {
      const virsh = path.join(dir, 'virsh');
      await writeFile(virsh, `#!/bin/sh\necho $$ >${dir}/pid\nexec sleep 30\n`, { mode: 0o755 });
      const driver = new VirshDriver(new LocalRunner(), URI, { virsh });
      const controller = new AbortController();
      const pending = driver.abort('d', 'vda', { signal: controller.signal });
      await expect.poll(() => readFile(path.join(dir, 'pid'), 'utf8').catch(() => '')).not.toBe('');
      const pid = Number((await readFile(path.join(dir, 'pid'), 'utf8')).trim());
      controller.abort(new Error('ended'));
      await expect(pending).rejects.toThrow('ended');
      // The command itself is gone, not left running.
      await expect
        .poll(() => {
          try {
            process.kill(pid, 0);
            return true;
          } catch {
            return false;
          }
        })
        .toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
