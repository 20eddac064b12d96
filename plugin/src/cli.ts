/**
 * The verbs: parse the arguments, load the user's kubeconfig, make the calls (kube.ts), show
 * what happens (render.ts) and return the exit code (verdict.ts EXIT). Errors become one line.
 */
import { assertNever } from '../../operator/src/api/assert-never.ts';
import { stringify } from 'yaml';
import { FINALIZER, isTerminal, type BlockPull, type BlockPullSpec } from '../../operator/src/api/types.ts';
import { HELP, USAGE, parseArgs, type Command, type Output } from './args.ts';
import { CliError, describeError } from './errors.ts';
import { blockPulls, loadConfig, type BlockPulls, type Seen, type Target } from './kube.ts';
import { barBlock, plainLine, planLines, progressOf, redraw, sortPulls, stateOf } from './render.ts';
import { EXIT, timeoutLine, waitVerdict } from './verdict.ts';

/** Where the plugin writes, and whether stdout is a terminal (live bars) or not (plain lines). */
export interface Io {
  readonly stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  readonly stderr: NodeJS.WritableStream;
  /** Aborted on Ctrl-C: watches end and the verb returns EXIT.interrupted. */
  readonly signal: AbortSignal;
}

const keyOf = (bp: BlockPull): string => `${bp.metadata.namespace}/${bp.metadata.name}`;

/** Runs `kubectl blockpull <argv>`; resolves with the exit code, never rejects. */
export async function runCli(argv: readonly string[], io: Io): Promise<number> {
  let server: string | undefined;
  const live = new Live(io);
  try {
    const { globals, command } = parseArgs(argv);
    if (command.verb === 'help') {
      const usage =
        command.topic !== undefined && command.topic in USAGE ? USAGE[command.topic as keyof typeof USAGE] : undefined;
      io.stdout.write(`${usage !== undefined ? `Usage: kubectl blockpull ${usage}\n\n` : ''}${HELP}\n`);
      return EXIT.ok;
    }
    const { kc, target } = loadConfig(globals);
    server = target.server;
    const api = blockPulls(kc);
    const ctx: Ctx = { api, target, io, live, allNamespaces: globals.allNamespaces };
    switch (command.verb) {
      case 'start':
        return await start(ctx, command);
      case 'status':
        return await status(ctx, command);
      case 'pause':
      case 'resume':
        return await setPaused(ctx, command);
      case 'abort':
        return await abort(ctx, command);
      case 'wait':
        return await wait(ctx, command);
      case 'plan':
        return await plan(ctx, command);
      default:
        return assertNever(command);
    }
  } catch (err) {
    live.end();
    if (io.signal.aborted) return EXIT.interrupted;
    io.stderr.write(`error: ${describeError(err, server)}\n`);
    return EXIT.error;
  } finally {
    live.end();
  }
}

interface Ctx {
  readonly api: BlockPulls;
  readonly target: Target;
  readonly io: Io;
  readonly live: Live;
  readonly allNamespaces: boolean;
}

type Of<V extends Command['verb']> = Extract<Command, { verb: V }>;

// --- the live block of lines on a terminal ------------------------------------------------

/** Redraws a block of lines in place on a TTY (cursor hidden meanwhile). */
class Live {
  #drawn = 0;
  #active = false;
  readonly #io: Io;
  constructor(io: Io) {
    this.#io = io;
  }
  get tty(): boolean {
    return this.#io.stdout.isTTY === true;
  }
  get width(): number {
    return this.#io.stdout.columns ?? 100;
  }
  draw(lines: readonly string[]): void {
    if (!this.#active) this.#io.stdout.write('\x1b[?25l');
    this.#active = true;
    this.#io.stdout.write(redraw(lines, this.#drawn));
    this.#drawn = lines.length;
  }
  /** Leaves the last drawing on screen and shows the cursor again. */
  end(): void {
    if (this.#active) this.#io.stdout.write('\x1b[?25h');
    this.#active = false;
    this.#drawn = 0;
  }
}

// --- following one BlockPull ------------------------------------------------------------------

type FollowEnd =
  | { readonly kind: 'gone'; readonly last: BlockPull | undefined }
  | { readonly kind: 'timeout'; readonly last: BlockPull | undefined }
  | { readonly kind: 'stop'; readonly last: BlockPull };

/**
 * Watches one BlockPull, showing it as it changes (a live bar on a TTY; on a pipe a plain line
 * per change when `plain`), until `stop(bp)` says so, it is gone, or the timeout passes.
 * Not found at the first look is an error.
 */
async function follow(
  ctx: Ctx,
  name: string,
  o: {
    timeoutMs?: number;
    plain: boolean;
    stop: (bp: BlockPull) => boolean;
    onFirst?: () => Promise<void>;
    onSeen?: (s: Seen) => void;
  },
): Promise<FollowEnd> {
  const ns = ctx.target.namespace;
  const ac = new AbortController();
  const onAbort = (): void => ac.abort();
  ctx.io.signal.addEventListener('abort', onAbort, { once: true });
  let last: BlockPull | undefined;
  let lastPlain = '';
  let end: FollowEnd | undefined;
  let firstSync = true;
  let pending: Promise<void> = Promise.resolve();
  let failure: unknown;
  const show = (bp: BlockPull): void => {
    if (o.onSeen !== undefined) return;
    if (ctx.live.tty) ctx.live.draw(barBlock([bp], ctx.live.width, false));
    else if (o.plain) {
      const line = plainLine(bp);
      if (line !== lastPlain) ctx.io.stdout.write(`${line}\n`);
      lastPlain = line;
    }
  };
  const finish = (e: FollowEnd): void => {
    end ??= e;
    ac.abort();
  };
  const timer =
    o.timeoutMs !== undefined ? setTimeout(() => finish({ kind: 'timeout', last }), o.timeoutMs) : undefined;
  const seen = (s: Seen): void => {
    const bp = s.bp;
    last = bp;
    o.onSeen?.(s);
    show(bp);
    if (o.stop(bp)) finish({ kind: 'stop', last: bp });
  };
  try {
    await ctx.api.watch(
      ns,
      name,
      (e) => {
        if (e.type === 'sync') {
          const item = e.items.find((s) => s.bp.metadata.name === name);
          if (item === undefined) {
            if (firstSync) {
              failure = new CliError(`blockpull ${ns}/${name} not found`);
              ac.abort();
            } else finish({ kind: 'gone', last });
          } else seen(item);
          if (firstSync && o.onFirst !== undefined && item !== undefined) {
            pending = o.onFirst().catch((err: unknown) => {
              failure = err;
              ac.abort();
            });
          }
          firstSync = false;
        } else if (e.type === 'upsert') seen(e.item);
        else if (e.type === 'deleted') finish({ kind: 'gone', last });
      },
      ac.signal,
    );
    await pending;
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    ctx.io.signal.removeEventListener('abort', onAbort);
    ctx.live.end();
  }
  if (failure !== undefined) throw failure instanceof Error ? failure : new CliError(describeError(failure));
  if (end === undefined) throw new CliError('interrupted');
  return end;
}

async function waitFor(ctx: Ctx, name: string, timeoutMs: number | undefined): Promise<number> {
  const key = `${ctx.target.namespace}/${name}`;
  const end = await follow(ctx, name, {
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    plain: false,
    stop: (bp) => waitVerdict(bp, key).done,
  });
  if (end.kind === 'timeout') {
    ctx.io.stderr.write(`error: ${timeoutLine(end.last, key, timeoutMs ?? 0)}\n`);
    return EXIT.timeout;
  }
  const v = waitVerdict(end.kind === 'gone' ? undefined : end.last, key);
  if (!v.done) throw new CliError(`blockpull ${key}: no verdict`);
  (v.exitCode === EXIT.ok ? ctx.io.stdout : ctx.io.stderr).write(`${v.line}\n`);
  return v.exitCode;
}

// --- verbs --------------------------------------------------------------------------------

async function start(ctx: Ctx, c: Of<'start'>): Promise<number> {
  const ns = ctx.target.namespace;
  const spec: Partial<BlockPullSpec> & Pick<BlockPullSpec, 'vmiName' | 'disk'> = {
    vmiName: c.vmi,
    disk: c.disk,
    ...(c.base !== undefined ? { base: c.base } : {}),
    ...(c.bandwidth !== undefined ? { bandwidth: c.bandwidth } : {}),
    ...(c.paused ? { paused: true } : {}),
  };
  try {
    await ctx.api.create(ns, c.name, spec);
  } catch (err) {
    if (describeError(err).includes('already exists')) {
      throw new CliError(
        `blockpull ${ns}/${c.name} already exists (see: kubectl blockpull status ${c.name} -n ${ns}); choose another --name`,
        { cause: err },
      );
    }
    throw err;
  }
  const what = [
    `vmi ${c.vmi}`,
    `disk ${c.disk}`,
    ...(c.base?.position !== undefined
      ? [`base position ${c.base.position}`]
      : c.base?.path !== undefined
        ? [`base ${c.base.path}`]
        : []),
    ...(c.bandwidth !== undefined ? [`bandwidth ${c.bandwidth}`] : []),
    ...(c.paused ? ['paused'] : []),
  ];
  ctx.io.stdout.write(`blockpull ${ns}/${c.name} created (${what.join(', ')})\n`);
  if (!c.wait) return EXIT.ok;
  return waitFor(ctx, c.name, c.timeoutMs);
}

/** The name of a plan's BlockPull: readable, unique, at most 63 characters. */
function planName(vmi: string, disk: string): string {
  const stem = `plan-${vmi}-${disk}`.slice(0, 56).replace(/-+$/, '');
  return `${stem}-${Math.random().toString(36).slice(2, 8).padEnd(6, '0')}`;
}

/**
 * plan: a dry-run BlockPull per disk (spec.dryRun: the operator looks, the user needs no
 * pods/exec), its plan printed, then deleted. 0: every disk planned; 1: one failed; 2: timeout.
 */
async function plan(ctx: Ctx, c: Of<'plan'>): Promise<number> {
  const ns = ctx.target.namespace;
  const disks = c.disk !== undefined ? [c.disk] : await ctx.api.vmiDisks(ns, c.vmi);
  if (disks.length === 0) throw new CliError(`virtualmachineinstance ${ns}/${c.vmi} has no disks`);
  let exit: number = EXIT.ok;
  for (const disk of disks) {
    const name = planName(c.vmi, disk);
    await ctx.api.create(ns, name, {
      vmiName: c.vmi,
      disk,
      dryRun: true,
      ...(c.base !== undefined ? { base: c.base } : {}),
      ...(c.bandwidth !== undefined ? { bandwidth: c.bandwidth } : {}),
    });
    try {
      const timeoutMs = c.timeoutMs ?? 60_000;
      const end = await follow(ctx, name, {
        timeoutMs,
        plain: false,
        stop: (bp) => isTerminal(bp.status?.phase),
        onSeen: () => undefined,
      });
      if (end.kind !== 'stop') {
        ctx.io.stderr.write(
          `error: ${end.kind === 'timeout' ? timeoutLine(end.last, `${ns}/${name}`, timeoutMs) : `blockpull ${ns}/${name} was deleted before its plan`}\n`,
        );
        exit = Math.max(exit, end.kind === 'timeout' ? EXIT.timeout : EXIT.failed);
        continue;
      }
      ctx.io.stdout.write(
        planLines(end.last)
          .map((l) => `${l}\n`)
          .join(''),
      );
      if (end.last.status?.phase === 'Failed') exit = Math.max(exit, EXIT.failed);
    } finally {
      await ctx.api.delete(ns, name).catch(() => undefined);
    }
  }
  return exit;
}

async function wait(ctx: Ctx, c: Of<'wait'>): Promise<number> {
  return waitFor(ctx, c.name, c.timeoutMs);
}

function printObjects(io: Io, output: Output, objects: readonly Record<string, unknown>[], single: boolean): void {
  const doc = single
    ? objects[0]
    : { apiVersion: 'v1', kind: 'List', items: objects, metadata: { resourceVersion: '' } };
  io.stdout.write(output === 'json' ? `${JSON.stringify(doc, null, 2)}\n` : stringify(doc));
}

async function status(ctx: Ctx, c: Of<'status'>): Promise<number> {
  const ns = ctx.allNamespaces ? undefined : ctx.target.namespace;
  const where = ns !== undefined ? `namespace ${ns}` : 'any namespace';
  if (!c.watch) {
    let seen: Seen[];
    if (c.name !== undefined) {
      const one = await ctx.api.get(ctx.target.namespace, c.name);
      if (one === undefined) throw new CliError(`blockpull ${ctx.target.namespace}/${c.name} not found`);
      seen = [one];
    } else seen = await ctx.api.list(ns);
    if (c.output !== undefined) {
      printObjects(
        ctx.io,
        c.output,
        seen.map((s) => s.raw),
        c.name !== undefined,
      );
      return EXIT.ok;
    }
    if (seen.length === 0) {
      ctx.io.stderr.write(`No BlockPulls found in ${where}.\n`);
      return EXIT.ok;
    }
    const pulls = sortPulls(seen.map((s) => s.bp));
    const lines = ctx.live.tty ? barBlock(pulls, ctx.live.width, ns === undefined) : pulls.map(plainLine);
    ctx.io.stdout.write(lines.map((l) => `${l}\n`).join(''));
    return EXIT.ok;
  }
  if (c.name !== undefined) {
    // One pull: followed until it ends (a terminal phase) or is gone.
    const key = `${ctx.target.namespace}/${c.name}`;
    const end = await follow(ctx, c.name, {
      plain: c.output === undefined,
      stop: (bp) => isTerminal(bp.status?.phase),
      ...(c.output !== undefined ? { onSeen: changesOnly((s) => printWatched(ctx.io, c.output!, s)) } : {}),
    });
    if (end.kind === 'gone') ctx.io.stdout.write(`blockpull ${key} deleted\n`);
    return EXIT.ok;
  }
  return watchAll(ctx, ns, c.output);
}

/** Passes on an object only when its resourceVersion is new (a fresh list after a watch ended repeats them). */
function changesOnly(print: (s: Seen) => void): (s: Seen) => void {
  const seen = new Map<string, string | undefined>();
  return (s) => {
    const rv = s.bp.metadata.resourceVersion;
    if (seen.has(keyOf(s.bp)) && seen.get(keyOf(s.bp)) === rv) return;
    seen.set(keyOf(s.bp), rv);
    print(s);
  };
}

/** -o with -w: one document per change (JSON: one object per line; YAML: `---` documents). */
function printWatched(io: Io, output: Output, s: Seen): void {
  io.stdout.write(output === 'json' ? `${JSON.stringify(s.raw)}\n` : `---\n${stringify(s.raw)}`);
}

/** status -w without a name: every pull of the namespace (or all), until Ctrl-C. */
async function watchAll(ctx: Ctx, ns: string | undefined, output: Output | undefined): Promise<number> {
  const pulls = new Map<string, BlockPull>();
  const printed = new Map<string, string>();
  const where = ns !== undefined ? `namespace ${ns}` : 'any namespace';
  const printObject = output !== undefined ? changesOnly((s) => printWatched(ctx.io, output, s)) : undefined;
  let synced = false;
  const render = (changed: readonly Seen[], deleted: readonly string[]): void => {
    if (printObject !== undefined) {
      for (const s of changed) printObject(s);
      return;
    }
    if (ctx.live.tty) {
      const lines = barBlock(sortPulls(pulls.values()), ctx.live.width, ns === undefined);
      ctx.live.draw(lines.length > 0 ? lines : [`No BlockPulls in ${where} yet (watching; Ctrl-C ends)`]);
      return;
    }
    if (!synced && pulls.size === 0) ctx.io.stderr.write(`No BlockPulls found in ${where} yet; watching.\n`);
    synced = true;
    for (const s of changed) {
      const line = plainLine(s.bp);
      if (printed.get(keyOf(s.bp)) !== line) ctx.io.stdout.write(`${line}\n`);
      printed.set(keyOf(s.bp), line);
    }
    for (const k of deleted) {
      ctx.io.stdout.write(`${k} deleted\n`);
      printed.delete(k);
    }
  };
  await ctx.api.watch(
    ns,
    undefined,
    (e) => {
      if (e.type === 'sync') {
        const gone = [...pulls.keys()].filter((k) => !e.items.some((s) => keyOf(s.bp) === k));
        pulls.clear();
        for (const s of e.items) pulls.set(keyOf(s.bp), s.bp);
        render(e.items, gone);
      } else if (e.type === 'upsert') {
        pulls.set(keyOf(e.item.bp), e.item.bp);
        render([e.item], []);
      } else {
        pulls.delete(e.key);
        render([], [e.key]);
      }
    },
    ctx.io.signal,
  );
  return EXIT.interrupted;
}

async function setPaused(ctx: Ctx, c: Of<'pause'> | Of<'resume'>): Promise<number> {
  const ns = ctx.target.namespace;
  const key = `${ns}/${c.name}`;
  const paused = c.verb === 'pause';
  const bp = (await ctx.api.get(ns, c.name))?.bp;
  if (bp === undefined) throw new CliError(`blockpull ${key} not found`);
  if (isTerminal(bp.status?.phase)) throw new CliError(`blockpull ${key} is ${stateOf(bp)}: nothing to ${c.verb}`);
  if (bp.spec.paused === paused) {
    ctx.io.stdout.write(`blockpull ${key} is already ${paused ? 'paused' : 'not paused'} (${stateOf(bp)})\n`);
    return EXIT.ok;
  }
  await ctx.api.patchSpec(ns, c.name, { paused });
  ctx.io.stdout.write(
    paused
      ? `blockpull ${key} pausing: the operator stops its job; what was streamed stays (resume: kubectl blockpull resume ${c.name} -n ${ns})\n`
      : `blockpull ${key} resuming: the operator starts the job again from where it stopped\n`,
  );
  return EXIT.ok;
}

async function abort(ctx: Ctx, c: Of<'abort'>): Promise<number> {
  const ns = ctx.target.namespace;
  const key = `${ns}/${c.name}`;
  let hadJob = false;
  const end = await follow(ctx, c.name, {
    ...(c.timeoutMs !== undefined ? { timeoutMs: c.timeoutMs } : {}),
    plain: true,
    stop: () => false,
    // The watch runs before the delete, so every step of the abort is seen.
    onFirst: async () => {
      const bp = (await ctx.api.get(ns, c.name))?.bp;
      if (bp === undefined) return;
      hadJob = (bp.metadata.finalizers ?? []).includes(FINALIZER) && !isTerminal(bp.status?.phase);
      const pct = progressOf(bp).percent;
      ctx.io.stderr.write(
        `aborting blockpull ${key} (${stateOf(bp)}${pct !== undefined ? `, ${pct}%` : ''}): ${
          hadJob
            ? 'the operator aborts its job (what was streamed stays), then lets the object go'
            : 'no job of it runs: deleting it'
        }\n`,
      );
      await ctx.api.delete(ns, c.name);
    },
  });
  if (end.kind === 'timeout') {
    ctx.io.stderr.write(`error: ${timeoutLine(end.last, key, c.timeoutMs ?? 0)}; it is still being deleted\n`);
    return EXIT.timeout;
  }
  ctx.io.stdout.write(`blockpull ${key} deleted${hadJob ? ' (its job was aborted)' : ''}\n`);
  return EXIT.ok;
}
