/**
 * BlockJobDriver over `virsh` run by a CommandRunner (local or pods/exec).
 * Every command is `virsh -q -c <uri> <subcommand> ...` as an argv array, built from commands.ts (the
 * subcommands and space tools the chart's exec policy allows); bandwidth is always given with --bytes
 * (virsh's default unit is MiB/s).
 */
import { resolveBase, virshBaseArg } from './chain.ts';
import { spaceArgv, virshArgv, type VirshSubcommand } from './commands.ts';
import { HypervisorError } from './errors.ts';
import { RestartBackoff } from './restart-backoff.ts';
import {
  RunOutputLimitError,
  RunTimeoutError,
  RunTransportError,
  type CommandRunner,
  type RunResult,
} from './runner.ts';
import type {
  ActionOptions,
  BlockJobDriver,
  BlockJobEvent,
  BlockJobInfo,
  DiskInfo,
  DiskRef,
  EventSubscription,
  SpaceInfo,
  SpaceRequest,
  StartPullOptions,
  WatchEventsOptions,
} from './types.ts';
import {
  findDisk,
  parseBlockJobEventLine,
  parseBlockJobRaw,
  parseDomainDisks,
  parseDomstatsBlock,
  parseDuBytes,
  parseMonitorJobCompletedLine,
  parseMountPoint,
  parseStatFs,
  virshError,
} from './virsh-parse.ts';

export interface VirshDriverOptions {
  /** virsh binary (default "virsh", found on PATH). */
  readonly virsh?: string;
  /** Per-command timeout (default 30 s). */
  readonly timeoutMs?: number;
  /** First delay before the event stream is restarted after it ended, doubled at each restart (default 1 s). */
  readonly eventRestartDelayMs?: number;
  /** First delay before the QEMU monitor event stream is restarted (default 5 s). */
  readonly monitorRestartDelayMs?: number;
  /** Ceiling of both restart delays (default 30 s); a stream that lived this long restarts after the first delay again. */
  readonly eventRestartMaxDelayMs?: number;
  /** Polling interval of the fallback used while the event stream is down (default 8 s). */
  readonly eventPollIntervalMs?: number;
}

/**
 * Defaults of the event streams. Each restart and each fallback poll is an exec session through
 * pods/exec; with 10 pulls on a loaded 2-core node, restarts every 1 s and a `virsh blockjob`
 * every 500 ms while a stream was down cost more CPU outside QEMU than the copy itself. The
 * fallback poll only hastens the wake-up at a job's end: the reconciler looks at a running job
 * every statusUpdateIntervalMs anyway.
 */
export const EVENT_RESTART_FIRST_MS = 1_000;
export const MONITOR_RESTART_FIRST_MS = 5_000;
export const EVENT_RESTART_MAX_MS = 30_000;
export const EVENT_POLL_INTERVAL_MS = 8_000;

export class VirshDriver implements BlockJobDriver {
  readonly runner: CommandRunner;
  readonly uri: string;
  readonly #virsh: string;
  readonly #timeoutMs: number;
  readonly #restartDelayMs: number;
  readonly #monitorRestartDelayMs: number;
  readonly #restartMaxMs: number;
  readonly #pollMs: number;
  /** The read-only looks under way, by subcommand and arguments (see #look). */
  readonly #looks = new Map<string, Promise<RunResult>>();

  constructor(runner: CommandRunner, uri: string, options: VirshDriverOptions = {}) {
    this.runner = runner;
    this.uri = uri;
    this.#virsh = options.virsh ?? 'virsh';
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#restartDelayMs = options.eventRestartDelayMs ?? EVENT_RESTART_FIRST_MS;
    this.#monitorRestartDelayMs = options.monitorRestartDelayMs ?? MONITOR_RESTART_FIRST_MS;
    this.#restartMaxMs = options.eventRestartMaxDelayMs ?? EVENT_RESTART_MAX_MS;
    this.#pollMs = options.eventPollIntervalMs ?? EVENT_POLL_INTERVAL_MS;
  }

  #argv(subcommand: VirshSubcommand, args: readonly string[]): string[] {
    return virshArgv(this.uri, subcommand, args, this.#virsh);
  }

  /**
   * The one mapping of a runner failure, shared by virsh and the space tools: a flood of output is the launcher
   * misbehaving, like a hang, so this BlockPull alone waits and retries. A du or stat flood must not read as
   * "space unknown", or a pull would start without its space check.
   */
  #runFailure(err: unknown): unknown {
    if (err instanceof RunTimeoutError || err instanceof RunTransportError || err instanceof RunOutputLimitError) {
      return new HypervisorError('Unreachable', `${this.runner.description}: ${err.message}`, { cause: err });
    }
    return err;
  }

  /** Run one virsh command; a failure becomes a typed HypervisorError. */
  async #virshRun(subcommand: VirshSubcommand, args: readonly string[], signal?: AbortSignal): Promise<RunResult> {
    const argv = this.#argv(subcommand, args);
    let result: RunResult;
    try {
      result = await this.runner.run(argv, { timeoutMs: this.#timeoutMs, ...(signal === undefined ? {} : { signal }) });
    } catch (err) {
      throw this.#runFailure(err);
    }
    if (result.exitCode !== 0) throw virshError(argv, result.exitCode, result.stderr);
    return result;
  }

  /**
   * A read-only look: one asked while the same look (same subcommand and arguments) is under way
   * shares its command and its answer, instead of a second exec session to the same pod (the
   * reconciler's look and the event subscription's seed often ask for the same `virsh blockjob`
   * at once). A look with a signal is the caller's own (its signal ends only it).
   */
  #look(subcommand: 'dumpxml' | 'blockjob', args: readonly string[], signal?: AbortSignal): Promise<RunResult> {
    if (signal !== undefined) return this.#virshRun(subcommand, args, signal);
    const key = [subcommand, ...args].join('\0');
    const shared = this.#looks.get(key);
    if (shared !== undefined) return shared;
    const look = this.#virshRun(subcommand, args).finally(() => this.#looks.delete(key));
    this.#looks.set(key, look);
    return look;
  }

  async listDisks(domain: string, signal?: AbortSignal): Promise<DiskInfo[]> {
    const { stdout } = await this.#look('dumpxml', ['--domain', domain], signal);
    return parseDomainDisks(stdout);
  }

  async getDisk(domain: string, disk: DiskRef, signal?: AbortSignal): Promise<DiskInfo> {
    const disks = await this.listDisks(domain, signal);
    const found = findDisk(disks, disk);
    if (found === undefined) {
      const what = 'name' in disk ? `disk ${disk.name} (alias ua-${disk.name})` : `disk target ${disk.target}`;
      throw new HypervisorError(
        'DiskNotFound',
        `${what} not found in domain ${domain}; disks: ${disks.map((d) => `${d.target}/${d.alias ?? '-'}`).join(', ') || 'none'}`,
      );
    }
    return found;
  }

  async startPull(domain: string, target: string, options: StartPullOptions = {}): Promise<void> {
    const args = ['--domain', domain, '--path', target];
    if (options.base !== undefined) {
      const disk = await this.getDisk(domain, { target }, options.signal);
      const layer = resolveBase(disk, options.base);
      args.push('--base', virshBaseArg(disk, layer));
    }
    if (options.bandwidth !== undefined && options.bandwidth > 0)
      args.push('--bandwidth', String(Math.trunc(options.bandwidth)), '--bytes');
    await this.#virshRun('blockpull', args, options.signal);
  }

  async getJob(domain: string, target: string): Promise<BlockJobInfo | null> {
    const { stdout } = await this.#look('blockjob', ['--domain', domain, '--path', target, '--raw', '--bytes']);
    return parseBlockJobRaw(stdout);
  }

  async setBandwidth(
    domain: string,
    target: string,
    bytesPerSecond: number,
    options: ActionOptions = {},
  ): Promise<void> {
    if (!Number.isInteger(bytesPerSecond) || bytesPerSecond < 0)
      throw new RangeError(`bandwidth must be a non-negative integer, got ${bytesPerSecond}`);
    await this.#virshRun(
      'blockjob',
      ['--domain', domain, '--path', target, '--bandwidth', String(bytesPerSecond), '--bytes'],
      options.signal,
    );
  }

  async abort(domain: string, target: string, options: ActionOptions = {}): Promise<void> {
    // --abort said explicitly (--async alone only implies it); --async: do not wait for the job to end.
    await this.#virshRun('blockjob', ['--domain', domain, '--path', target, '--abort', '--async'], options.signal);
  }

  /** Run a non-virsh tool (stat, du) next to the VM through the same runner; a failure becomes a typed error. */
  async #toolRun(argv: readonly string[]): Promise<string> {
    let result: RunResult;
    try {
      result = await this.runner.run(argv, { timeoutMs: this.#timeoutMs });
    } catch (err) {
      throw this.#runFailure(err);
    }
    if (result.exitCode !== 0) {
      throw new HypervisorError(
        'CommandFailed',
        `${argv.join(' ')} exited ${result.exitCode}: ${result.stderr.trim().slice(0, 1000) || '(no message)'}`,
      );
    }
    return result.stdout;
  }

  /**
   * Pre-flight: an upper bound of the bytes a pull writes into the active image (the storage
   * allocated by every layer above the base, from `virsh domstats --block --backing`'s
   * block.N.physical), and the free space of the filesystem holding the active image, measured
   * where QEMU writes it (`stat -f` through this driver's runner: inside the compute container).
   */
  async getSpace(domain: string, request: SpaceRequest): Promise<SpaceInfo> {
    const { disk } = request;
    const top = disk.chain[0];
    if (top === undefined) return { kind: 'unknown', reason: `disk ${disk.target} has no image` };
    if (top.path.startsWith('/dev/'))
      return { kind: 'unknown', reason: `the active image ${top.path} is a block device` };
    const baseAt =
      request.basePath === undefined ? disk.chain.length : disk.chain.findIndex((l) => l.path === request.basePath);
    if (baseAt < 1)
      throw new HypervisorError(
        'InvalidBase',
        `base ${request.basePath ?? ''} is not below the active image of ${disk.target}`,
      );
    const pulled = disk.chain.slice(1, baseAt);
    // The three reads are independent: run at once, each exec session's round trip (about a
    // second on a loaded node) is paid once, not three times, before a start.
    const [domstats, statFs, mountPoint] = await Promise.all([
      this.#virshRun('domstats', ['--block', '--backing', domain]),
      this.#toolRun(spaceArgv('statFs', top.path)),
      request.measureUsage ? this.#toolRun(spaceArgv('mountPoint', top.path)) : undefined,
    ]);
    const stats = parseDomstatsBlock(domstats.stdout).filter((b) => b.name === disk.target);
    let pullBytes = 0;
    for (const layer of pulled) {
      const st =
        stats.find((b) => b.path === layer.path) ??
        (layer.index === undefined ? undefined : stats.find((b) => b.backingIndex === layer.index));
      const bytes = st?.physical ?? st?.capacity;
      if (bytes === undefined)
        throw new HypervisorError('CommandFailed', `virsh domstats reports no size for ${layer.path} (${disk.target})`);
      pullBytes += bytes;
    }
    const { availableBytes, totalBytes } = parseStatFs(statFs);
    let usage: { mountPoint: string; usedBytes: number } | undefined;
    if (mountPoint !== undefined) {
      const mount = parseMountPoint(mountPoint);
      usage = { mountPoint: mount, usedBytes: parseDuBytes(await this.#toolRun(spaceArgv('usage', mount))) };
    }
    return {
      kind: 'measured',
      topPath: top.path,
      pullBytes,
      availableBytes,
      totalBytes,
      ...(usage === undefined ? {} : { usage }),
    };
  }

  /** A stream's restart delays: from `firstMs`, doubling up to the ceiling; a stream that lived the ceiling was healthy. */
  #backoff(firstMs: number): RestartBackoff {
    return new RestartBackoff({ firstMs, maxMs: this.#restartMaxMs, healthyAfterMs: this.#restartMaxMs });
  }

  /**
   * block-job-2 events from `virsh event --loop`. The stream is restarted when it ends (daemon
   * restart, exec dropped), after a delay that doubles while it keeps ending (RestartBackoff);
   * while it is down a poller synthesizes 'completed' when a job that was
   * seen running disappears, so a caller waiting on events is still woken. Callers confirm with
   * getJob + getDisk either way. With `options.targets` the poller (and the look at subscription
   * time that seeds it) runs `virsh blockjob` on those disks only, instead of `virsh dumpxml` and
   * `virsh blockjob` on every disk of the domain.
   */
  watchEvents(
    domain: string,
    onEvent: (event: BlockJobEvent) => void,
    options: WatchEventsOptions = {},
  ): EventSubscription {
    let stopped = false;
    let handle: ReturnType<CommandRunner['stream']> | undefined;
    let restartTimer: NodeJS.Timeout | undefined;
    let pollTimer: NodeJS.Timeout | undefined;
    const running = new Set<string>();
    const emit = (ev: BlockJobEvent): void => {
      if (!stopped) onEvent(ev);
    };

    const poll = async (): Promise<void> => {
      try {
        const targets = options.targets ?? (await this.listDisks(domain)).map((d) => d.target);
        for (const target of targets) {
          const job = await this.getJob(domain, target);
          if (job !== null) running.add(target);
          else if (running.delete(target)) emit({ domain, target, kind: 'completed' });
        }
      } catch {
        /* unreachable while the daemon restarts: try again next tick */
      }
    };
    const startPolling = (): void => {
      if (pollTimer !== undefined || stopped) return;
      const tick = (): void => {
        void poll().finally(() => {
          if (pollTimer !== undefined && !stopped) pollTimer = setTimeout(tick, this.#pollMs);
        });
      };
      pollTimer = setTimeout(tick, 0);
    };
    const stopPolling = (): void => {
      if (pollTimer !== undefined) clearTimeout(pollTimer);
      pollTimer = undefined;
    };

    const eventBackoff = this.#backoff(this.#restartDelayMs);
    const start = (): void => {
      if (stopped) return;
      const startedAt = performance.now();
      const h = this.runner.stream(
        this.#argv('event', ['--domain', domain, '--event', 'block-job-2', '--loop', '--timestamp']),
      );
      handle = h;
      let ended = false;
      void (async () => {
        try {
          for await (const line of h.lines) {
            const ev = parseBlockJobEventLine(line);
            if (ev !== null) {
              running.delete(ev.target);
              emit(ev);
            }
          }
          await h.done;
        } catch {
          /* transport error: restart below */
        }
        ended = true;
        if (stopped) return;
        // The stream ended (daemon restart, exec dropped): poll until a new stream has held up.
        startPolling();
        restartTimer = setTimeout(start, eventBackoff.next(performance.now() - startedAt));
      })();
      // A stream that is still up after two restart delays is considered established.
      setTimeout(() => {
        if (!stopped && !ended && handle === h) stopPolling();
      }, this.#restartDelayMs * 2).unref();
    };
    // QEMU's own BLOCK_JOB_COMPLETED carries the reason a stream failed (libvirt's event does
    // not): a second stream, restarted when it ends, whose failures are emitted with the error.
    let monitorHandle: ReturnType<CommandRunner['stream']> | undefined;
    let monitorTimer: NodeJS.Timeout | undefined;
    const monitorBackoff = this.#backoff(this.#monitorRestartDelayMs);
    const startMonitor = (): void => {
      if (stopped) return;
      const startedAt = performance.now();
      const h = this.runner.stream(
        this.#argv('qemu-monitor-event', [
          '--domain',
          domain,
          '--event',
          'BLOCK_JOB_COMPLETED',
          '--loop',
          '--timestamp',
        ]),
      );
      monitorHandle = h;
      void (async () => {
        try {
          for await (const line of h.lines) {
            const ev = parseMonitorJobCompletedLine(line);
            if (ev !== null) emit(ev);
          }
          await h.done;
        } catch {
          /* restarted below */
        }
        if (!stopped) monitorTimer = setTimeout(startMonitor, monitorBackoff.next(performance.now() - startedAt));
      })();
    };
    start();
    startMonitor();
    // Seed the set of running jobs so that the poller can detect a disappearance.
    void poll();
    return {
      stop: () => {
        stopped = true;
        stopPolling();
        if (restartTimer !== undefined) clearTimeout(restartTimer);
        if (monitorTimer !== undefined) clearTimeout(monitorTimer);
        handle?.stop();
        monitorHandle?.stop();
      },
    };
  }
}
