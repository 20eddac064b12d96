/**
 * The figures of `npm run bench:exec-fanout`, computed from what the bench sampled: pure functions,
 * so the arithmetic behind the printed table is unit-tested (test/unit/exec-fanout-figures.test.ts).
 */

/** One sample of the operator side, taken about once a second while the pulls run. */
export interface Sample {
  /** Seconds since the BlockPulls were created. */
  readonly tS: number;
  /** Cumulative CPU seconds (utime + stime) of the operator process. */
  readonly operatorCpuS: number;
  /** Cumulative CPU seconds of kube-apiserver. */
  readonly apiserverCpuS: number;
  /** BlockPulls in phase Running at that moment. */
  readonly running: number;
  readonly rssMiB: number;
  /** ESTABLISHED TCP connections from the operator to the API server. */
  readonly sockets: number;
}

export interface WindowFigures {
  readonly fromS: number;
  readonly toS: number;
  readonly seconds: number;
  /** Mean of the samples' running counts in the window. */
  readonly meanRunning: number;
  /** CPU seconds per second (cores) over the window. */
  readonly operatorCores: number;
  readonly apiserverCores: number;
  readonly meanRssMiB: number;
  readonly maxRssMiB: number;
  readonly meanSockets: number;
  readonly maxSockets: number;
}

const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * Figures over the longest run of consecutive samples that satisfy `inWindow` (e.g. every pull
 * running); undefined when fewer than two samples qualify (no rate can be taken from one).
 */
export function windowFigures(samples: readonly Sample[], inWindow: (s: Sample) => boolean): WindowFigures | undefined {
  let best: [number, number] | undefined;
  let start = -1;
  for (let i = 0; i <= samples.length; i++) {
    const ok = i < samples.length && inWindow(samples[i]!);
    if (ok && start < 0) start = i;
    if (!ok && start >= 0) {
      if (best === undefined || i - start > best[1] - best[0]) best = [start, i];
      start = -1;
    }
  }
  if (best === undefined || best[1] - best[0] < 2) return undefined;
  const w = samples.slice(best[0], best[1]);
  const first = w[0]!;
  const last = w.at(-1)!;
  const seconds = last.tS - first.tS;
  if (seconds <= 0) return undefined;
  return {
    fromS: first.tS,
    toS: last.tS,
    seconds,
    meanRunning: mean(w.map((s) => s.running)),
    operatorCores: (last.operatorCpuS - first.operatorCpuS) / seconds,
    apiserverCores: (last.apiserverCpuS - first.apiserverCpuS) / seconds,
    meanRssMiB: mean(w.map((s) => s.rssMiB)),
    maxRssMiB: Math.max(...w.map((s) => s.rssMiB)),
    meanSockets: mean(w.map((s) => s.sockets)),
    maxSockets: Math.max(...w.map((s) => s.sockets)),
  };
}

/** What the operator adds per running pull, against its idle figures before the pulls. */
export interface PerPull {
  readonly operatorCoresPerPull: number;
  readonly apiserverCoresPerPull: number;
  readonly rssMiBPerPull: number;
  readonly socketsPerPull: number;
}

export function perPull(
  w: WindowFigures,
  idle: {
    readonly operatorCores: number;
    readonly apiserverCores: number;
    readonly rssMiB: number;
    readonly sockets: number;
  },
): PerPull {
  const n = w.meanRunning;
  if (!(n > 0)) throw new RangeError('no pull was running in the window');
  return {
    operatorCoresPerPull: (w.operatorCores - idle.operatorCores) / n,
    apiserverCoresPerPull: (w.apiserverCores - idle.apiserverCores) / n,
    rssMiBPerPull: (w.meanRssMiB - idle.rssMiB) / n,
    socketsPerPull: (w.meanSockets - idle.sockets) / n,
  };
}

/**
 * A linear extrapolation of the measured per-pull cost to `pulls` at once: the idle cost plus
 * `pulls` times the marginal one. Linear is an assumption (no queueing, no GC pressure growth).
 */
export function extrapolate(
  p: PerPull,
  idle: { readonly operatorCores: number; readonly rssMiB: number; readonly sockets: number },
  pulls: number,
): {
  readonly pulls: number;
  readonly operatorCores: number;
  readonly rssMiB: number;
  readonly sockets: number;
  readonly fitsOneCore: boolean;
} {
  const operatorCores = idle.operatorCores + p.operatorCoresPerPull * pulls;
  return {
    pulls,
    operatorCores,
    rssMiB: idle.rssMiB + p.rssMiBPerPull * pulls,
    sockets: idle.sockets + p.socketsPerPull * pulls,
    fitsOneCore: operatorCores < 1,
  };
}

/** Aggregate throughput: all bytes pulled over the wall time from the common start to the last end. */
export function aggregateMiBps(bytes: number, startMs: number, endsMs: readonly number[]): number {
  if (endsMs.length === 0) throw new RangeError('no run ended');
  const wallS = (Math.max(...endsMs) - startMs) / 1000;
  if (!(wallS > 0)) throw new RangeError('the last run ended before the start');
  return bytes / (1024 * 1024) / wallS;
}

/**
 * A counter of a Prometheus text exposition, summed by its labels as written ("" for none):
 * e.g. blockpull_status_writes_total -> { 'kind="progress"': 12, ... }.
 */
export function counterByLabels(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  const line = new RegExp(`^${name}(?:\\{([^}]*)\\})? ([0-9.e+-]+)$`, 'gm');
  for (const m of text.matchAll(line)) out.set(m[1] ?? '', (out.get(m[1] ?? '') ?? 0) + Number(m[2]));
  return out;
}

/** after - before of counterByLabels, entries that did not move left out. */
export function counterDelta(before: Map<string, number>, after: Map<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, v] of after) {
    const d = v - (before.get(k) ?? 0);
    if (d !== 0) out.set(k, d);
  }
  return out;
}

/**
 * What a pods/exec request ran, from its audited requestURI (`...?command=sh&command=-c&...`): the
 * operator's kill-on-disconnect wrapper (`sh -c <script> blockpull-exec`) skipped, then `virsh
 * <subcommand>` (virsh's `-q -c <uri>` skipped) or the program's name; undefined when the URI has
 * no command.
 */
export function execCommandOf(requestURI: string): string | undefined {
  const q = requestURI.indexOf('?');
  if (q < 0) return undefined;
  let argv = new URLSearchParams(requestURI.slice(q + 1)).getAll('command');
  if (argv[0] === 'sh' && argv[1] === '-c' && argv[3] === 'blockpull-exec') argv = argv.slice(4);
  const program = argv[0];
  if (program === undefined) return undefined;
  if (program.split('/').at(-1) !== 'virsh') return program;
  let i = 1;
  while (i < argv.length && argv[i]!.startsWith('-')) i += argv[i] === '-c' ? 2 : 1;
  return `virsh ${argv[i] ?? '?'}`;
}
