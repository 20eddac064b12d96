/**
 * What a BlockPull looks like on the terminal (pure): a progress bar line for a TTY, a plain
 * key=value line for pipes and scripts, and the escape codes that redraw a block of lines in place.
 */
import { formatBytes } from '../../operator/src/api/quantity.ts';
import type { BlockPull } from '../../operator/src/api/types.ts';

export interface ProgressFigures {
  /** 0..100, undefined when the operator has reported nothing yet. */
  readonly percent?: number;
  readonly currentBytes?: number;
  readonly totalBytes?: number;
  readonly bytesPerSecond?: number;
  readonly etaSeconds?: number;
}

/** The progress of a pull as the status states it; a Completed pull is at 100 %. */
export function progressOf(bp: BlockPull): ProgressFigures {
  const p = bp.status?.progress ?? {};
  const completed = bp.status?.phase === 'Completed';
  let percent: number | undefined;
  if (completed) percent = 100;
  else if (p.totalBytes !== undefined && p.totalBytes > 0 && p.currentBytes !== undefined)
    percent = Math.floor((p.currentBytes * 100) / p.totalBytes);
  else if (p.percent !== undefined && /^[0-9]+(\.[0-9]+)?%$/.test(p.percent))
    percent = Math.floor(Number(p.percent.slice(0, -1)));
  if (percent !== undefined) percent = Math.min(100, Math.max(0, percent));
  const running = bp.status?.phase === 'Running';
  let eta = p.etaSeconds;
  if (
    eta === undefined &&
    running &&
    p.bytesPerSecond !== undefined &&
    p.bytesPerSecond > 0 &&
    p.totalBytes !== undefined &&
    p.currentBytes !== undefined
  ) {
    eta = Math.max(0, Math.ceil((p.totalBytes - p.currentBytes) / p.bytesPerSecond));
  }
  return {
    ...(percent !== undefined ? { percent } : {}),
    ...(p.currentBytes !== undefined ? { currentBytes: p.currentBytes } : {}),
    ...(p.totalBytes !== undefined ? { totalBytes: p.totalBytes } : {}),
    // A rate and an ETA mean something only while the job runs.
    ...(running && p.bytesPerSecond !== undefined ? { bytesPerSecond: p.bytesPerSecond } : {}),
    ...(running && eta !== undefined ? { etaSeconds: eta } : {}),
  };
}

/** 42s, 3m05s, 1h02m. */
export function formatEta(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** `phase/reason`, `Pending` before the operator's first look. */
export function stateOf(bp: BlockPull): string {
  const phase = bp.status?.phase ?? 'Pending';
  const reason = bp.status?.reason ?? (bp.status?.phase === undefined ? 'Created' : undefined);
  return reason !== undefined ? `${phase}/${reason}` : phase;
}

/** ns/name or name. */
export function labelOf(bp: BlockPull, withNamespace: boolean): string {
  return withNamespace ? `${bp.metadata.namespace}/${bp.metadata.name}` : bp.metadata.name;
}

/** A bar of `width` cells: `[=====>    ]`. */
export function bar(percent: number | undefined, width: number): string {
  const inner = Math.max(1, width - 2);
  if (percent === undefined) return `[${' '.repeat(inner)}]`;
  const filled = Math.round((percent / 100) * inner);
  const body =
    filled >= inner
      ? '='.repeat(inner)
      : `${'='.repeat(Math.max(0, filled - 1))}${filled > 0 ? '>' : ''}${' '.repeat(inner - filled)}`;
  return `[${body}]`;
}

export interface BarLineOptions {
  /** Terminal columns; the line is cut to width - 1 so it never wraps. */
  readonly width: number;
  /** Width of the label column (the longest label of the block). */
  readonly labelWidth: number;
  readonly withNamespace: boolean;
}

/**
 * One line for a TTY: label, bar, percent, bytes, rate, ETA, phase/reason and, when the pull is
 * not running, the operator's message.
 * `vm1-root  [=======>        ]  45%  14.0 MiB/32.0 MiB  4.0 MiB/s  ETA 5s  Running/Pulling`
 */
export function barLine(bp: BlockPull, o: BarLineOptions): string {
  const f = progressOf(bp);
  const label = labelOf(bp, o.withNamespace).padEnd(o.labelWidth);
  const pct = f.percent !== undefined ? `${f.percent}%`.padStart(4) : '   -';
  const bytes =
    f.currentBytes !== undefined && f.totalBytes !== undefined
      ? `${formatBytes(f.currentBytes)}/${formatBytes(f.totalBytes)}`
      : '';
  const rate = f.bytesPerSecond !== undefined ? `${formatBytes(f.bytesPerSecond)}/s` : '';
  const eta = f.etaSeconds !== undefined ? `ETA ${formatEta(f.etaSeconds)}` : '';
  const message =
    bp.status?.phase !== 'Running' && bp.status?.message !== undefined && bp.status.message !== ''
      ? `: ${oneLine(bp.status.message)}`
      : '';
  // Being deleted: the abort as the operator records it (its job Aborting, then Aborted).
  const deleting =
    bp.metadata.deletionTimestamp !== undefined
      ? ` deleting${bp.status?.job?.state !== undefined ? `, job ${bp.status.job.state}` : ''}`
      : '';
  const tail = [pct, bytes, rate, eta, stateOf(bp) + deleting].filter((x) => x !== '').join('  ');
  // The bar gets the room the figures leave; a message comes last and is cut first.
  const room = o.width - 1 - label.length - 2 - 2 - tail.length;
  const barWidth = Math.max(12, Math.min(42, room - Math.min(message.length, 40)));
  const line = room >= 12 ? `${label}  ${bar(f.percent, barWidth)}  ${tail}${message}` : `${label}  ${tail}${message}`;
  return cut(line, o.width - 1);
}

/**
 * One plain line (no TTY): `ns/name vmi=vm1 disk=root phase=Running reason=Pulling percent=45
 * bytes=14680064/33554432 rate=4194304 eta=5 message="..."`; a figure not known is `-`.
 */
export function plainLine(bp: BlockPull): string {
  const f = progressOf(bp);
  const num = (n: number | undefined): string => (n !== undefined ? String(n) : '-');
  const fields = [
    `${bp.metadata.namespace}/${bp.metadata.name}`,
    `vmi=${bp.spec.vmiName}`,
    `disk=${bp.spec.disk}`,
    `phase=${bp.status?.phase ?? 'Pending'}`,
    `reason=${bp.status?.reason ?? (bp.status?.phase === undefined ? 'Created' : '-')}`,
    `percent=${num(f.percent)}`,
    `bytes=${num(f.currentBytes)}/${num(f.totalBytes)}`,
    `rate=${num(f.bytesPerSecond)}`,
    `eta=${num(f.etaSeconds)}`,
  ];
  if (bp.status?.job?.state !== undefined) fields.push(`job=${bp.status.job.state}`);
  if (bp.metadata.deletionTimestamp !== undefined) fields.push('deleting=true');
  if (bp.status?.message !== undefined && bp.status.message !== '')
    fields.push(`message=${JSON.stringify(oneLine(bp.status.message))}`);
  return fields.join(' ');
}

/**
 * The plan of a dry-run BlockPull (status.plan) in lines: what it would pull, the chain, the bytes
 * to write, the space verdict, the ETA; or why there is none (nothing to do, failed, waiting).
 */
export function planLines(bp: BlockPull): string[] {
  const st = bp.status ?? {};
  const head = `${bp.metadata.namespace}/${bp.spec.vmiName} disk ${bp.spec.disk}${st.launcher?.target !== undefined ? ` (${st.launcher.target})` : ''}`;
  const chain = (st.backingChain?.current ?? []).map((l) => `${l.path} (${l.format})`).join(' <- ');
  const chainLine = chain !== '' ? [`  chain: ${chain}`] : [];
  if (st.phase === 'Completed')
    return [`${head}: nothing to do: ${st.message ?? 'the chain is already at its goal'}`, ...chainLine];
  if (st.phase !== 'Planned' || st.plan === undefined)
    return [`${head}: no plan: ${stateOf(bp)}${st.message ? `: ${oneLine(st.message)}` : ''}`];
  const p = st.plan;
  const sized = (n: number): string => `${formatBytes(n)} (${n} bytes)`;
  return [
    `${head}: pull ${p.basePath !== undefined ? `down to ${p.basePath}` : 'into a single image'}`,
    ...chainLine,
    `  to write: ${p.bytesToWrite !== undefined ? `at most ${sized(p.bytesToWrite)}` : 'not measurable'}`,
    `  space: ${p.space ?? 'Unknown'}${p.availableBytes !== undefined ? `, ${sized(p.availableBytes)} free` : ''}${p.space === 'Insufficient' && st.message ? ` (${oneLine(st.message)})` : ''}`,
    `  eta: ${p.etaSeconds !== undefined ? `about ${formatEta(p.etaSeconds)}${bp.spec.bandwidth !== undefined ? ` at ${String(bp.spec.bandwidth)}/s` : ''}` : 'unlimited bandwidth: as fast as the storage goes'}`,
  ];
}

/** Parses a plainLine back (scripts and tests): the label and its key=value fields. */
export function parsePlainLine(line: string): { label: string; fields: Record<string, string> } | undefined {
  const m = /^(\S+)((?: [a-z]+=(?:"(?:[^"\\]|\\.)*"|\S*))*)$/.exec(line);
  if (m === null) return undefined;
  const fields: Record<string, string> = {};
  for (const f of (m[2] ?? '').matchAll(/ ([a-z]+)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
    const v = f[2]!;
    fields[f[1]!] = v.startsWith('"') ? (JSON.parse(v) as string) : v;
  }
  return { label: m[1]!, fields };
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

function cut(text: string, width: number): string {
  if (width <= 0) return '';
  return text.length <= width ? text : `${text.slice(0, Math.max(0, width - 1))}…`;
}

/** Sorted by namespace, then name. */
export function sortPulls(pulls: Iterable<BlockPull>): BlockPull[] {
  return [...pulls].sort(
    (a, b) =>
      a.metadata.namespace.localeCompare(b.metadata.namespace) || a.metadata.name.localeCompare(b.metadata.name),
  );
}

/** The bar lines of a block of pulls, their labels aligned. */
export function barBlock(pulls: readonly BlockPull[], width: number, withNamespace: boolean): string[] {
  const labelWidth = Math.max(0, ...pulls.map((bp) => labelOf(bp, withNamespace).length));
  return pulls.map((bp) => barLine(bp, { width, labelWidth, withNamespace }));
}

/**
 * The bytes that replace the `previous` lines drawn last time (the cursor below them) by
 * `lines`: up, then each line cleared and written, then whatever is left below cleared.
 */
export function redraw(lines: readonly string[], previous: number): string {
  const up = previous > 0 ? `\x1b[${previous}F` : '';
  return `${up}${lines.map((l) => `\x1b[2K${l}\n`).join('')}\x1b[J`;
}
