/**
 * The command line, parsed (pure): argv in, a Command or a UsageError out. kubectl hands a
 * plugin everything after `kubectl blockpull`, so kubectl's own habits are parsed here:
 * --kubeconfig, --context, -n/--namespace, -A/--all-namespaces, `--flag=value` and `--flag value`.
 */
import { assertNever } from '../../operator/src/api/assert-never.ts';
import { BaseSchema, BlockPullSpecSchema, type Base } from '../../operator/src/api/types.ts';
import { parseQuantity, QuantityError } from '../../operator/src/api/quantity.ts';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface Globals {
  readonly kubeconfig?: string;
  readonly context?: string;
  readonly namespace?: string;
  readonly allNamespaces: boolean;
}

export type Output = 'json' | 'yaml';

export type Command =
  | { readonly verb: 'help'; readonly topic?: string }
  | {
      readonly verb: 'start';
      readonly vmi: string;
      readonly disk: string;
      readonly name: string;
      readonly base?: Base;
      readonly bandwidth?: number | string;
      readonly paused: boolean;
      readonly wait: boolean;
      readonly timeoutMs?: number;
    }
  | { readonly verb: 'status'; readonly name?: string; readonly watch: boolean; readonly output?: Output }
  | { readonly verb: 'pause'; readonly name: string }
  | { readonly verb: 'resume'; readonly name: string }
  | { readonly verb: 'abort'; readonly name: string; readonly timeoutMs?: number }
  | { readonly verb: 'wait'; readonly name: string; readonly timeoutMs?: number }
  | {
      readonly verb: 'plan';
      readonly vmi: string;
      readonly disk?: string;
      readonly base?: Base;
      readonly bandwidth?: number | string;
      readonly timeoutMs?: number;
    };

export interface Invocation {
  readonly globals: Globals;
  readonly command: Command;
}

export const VERBS = ['start', 'status', 'pause', 'resume', 'abort', 'wait', 'plan', 'help'] as const;
type Verb = (typeof VERBS)[number];

interface FlagSpec {
  readonly long: string;
  readonly short?: string;
  /** Takes a value (else a boolean switch). */
  readonly value: boolean;
}

const GLOBAL_FLAGS: readonly FlagSpec[] = [
  { long: 'kubeconfig', value: true },
  { long: 'context', value: true },
  { long: 'namespace', short: 'n', value: true },
  { long: 'all-namespaces', short: 'A', value: false },
  { long: 'help', short: 'h', value: false },
];

const VERB_FLAGS: Readonly<Record<Verb, readonly FlagSpec[]>> = {
  start: [
    { long: 'disk', value: true },
    { long: 'name', value: true },
    { long: 'base', value: true },
    { long: 'bandwidth', value: true },
    { long: 'paused', value: false },
    { long: 'wait', value: false },
    { long: 'timeout', value: true },
  ],
  status: [
    { long: 'watch', short: 'w', value: false },
    { long: 'output', short: 'o', value: true },
  ],
  pause: [],
  resume: [],
  abort: [{ long: 'timeout', value: true }],
  wait: [{ long: 'timeout', value: true }],
  plan: [
    { long: 'disk', value: true },
    { long: 'base', value: true },
    { long: 'bandwidth', value: true },
    { long: 'timeout', value: true },
  ],
  help: [],
};

/** What each verb takes, for `help` and for usage errors. */
export const USAGE: Readonly<Record<Exclude<Verb, 'help'>, string>> = {
  start:
    'start VMI --disk DISK [--name NAME] [--base POSITION|PATH] [--bandwidth QUANTITY] [--paused] [--wait [--timeout DURATION]]',
  status: 'status [NAME | -A] [-w] [-o json|yaml]',
  pause: 'pause NAME',
  resume: 'resume NAME',
  abort: 'abort NAME [--timeout DURATION]',
  wait: 'wait NAME [--timeout DURATION]',
  plan: 'plan VMI [--disk DISK] [--base POSITION|PATH] [--bandwidth QUANTITY] [--timeout DURATION]',
};

export const HELP = [
  'kubectl blockpull: start, watch and control BlockPulls (flatten KubeVirt VM disks with libvirt block pull)',
  '',
  'Usage: kubectl blockpull VERB [flags]',
  '',
  ...Object.values(USAGE).map((u) => `  ${u}`),
  '',
  'Flags of every verb: --kubeconfig FILE, --context NAME, -n/--namespace NS (-A: all namespaces, status only)',
  'Exit codes: 0 done (wait: Completed), 1 wait: Failed or deleted, 2 timeout, 3 error (one line on stderr)',
].join('\n');

/** Go-style durations as kubectl takes them: 30s, 5m, 1h30m, 500ms; a bare number is seconds. */
export function parseDuration(text: string): number {
  if (/^[0-9]+(\.[0-9]+)?$/.test(text)) return Math.round(Number(text) * 1000);
  const unit: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let ms = 0;
  let rest = text;
  if (rest === '') throw new UsageError('empty duration');
  while (rest !== '') {
    const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)/.exec(rest);
    if (m === null) throw new UsageError(`invalid duration ${JSON.stringify(text)} (use e.g. 30s, 5m, 1h30m)`);
    ms += Number(m[1]) * unit[m[2]!]!;
    rest = rest.slice(m[0].length);
  }
  return Math.round(ms);
}

/** --base: a position (1 = the active image's backing image) or an absolute path. */
export function parseBase(text: string): Base {
  const candidate = /^[0-9]+$/.test(text) ? { position: Number(text) } : { path: text };
  const r = BaseSchema.safeParse(candidate);
  if (!r.success) {
    throw new UsageError(
      `invalid --base ${JSON.stringify(text)}: a position from 1 to 255 (1 = the backing image of the active one) or an absolute path`,
    );
  }
  return r.data;
}

/** --bandwidth: what the CRD takes (bytes per second, or a Quantity such as 50Mi); a plain integer is sent as a number. */
export function parseBandwidth(text: string): number | string {
  try {
    parseQuantity(text);
  } catch (err) {
    if (err instanceof QuantityError) throw new UsageError(`invalid --bandwidth: ${err.message}`);
    throw err;
  }
  return /^[0-9]+$/.test(text) ? Number(text) : text;
}

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function checkName(what: string, value: string): string {
  if (value.length > 253 || !DNS1123_SUBDOMAIN.test(value))
    throw new UsageError(`invalid ${what} ${JSON.stringify(value)}: a lowercase DNS-1123 name`);
  return value;
}

function checkLabel(what: 'VMI' | 'disk', value: string): string {
  const schema = what === 'VMI' ? BlockPullSpecSchema.shape.vmiName : BlockPullSpecSchema.shape.disk;
  if (!schema.safeParse(value).success)
    throw new UsageError(
      `invalid ${what} name ${JSON.stringify(value)}: a lowercase DNS-1123 label of at most 63 characters`,
    );
  return value;
}

interface Scanned {
  readonly flags: Map<string, string | true>;
  readonly positional: string[];
}

function scan(argv: readonly string[], specs: readonly FlagSpec[], verb: string): Scanned {
  const flags = new Map<string, string | true>();
  const positional: string[] = [];
  const byLong = new Map(specs.map((s) => [s.long, s]));
  const byShort = new Map(specs.filter((s) => s.short !== undefined).map((s) => [s.short!, s]));
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    let spec: FlagSpec | undefined;
    let inline: string | undefined;
    let shown = arg;
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const key = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
      inline = eq >= 0 ? arg.slice(eq + 1) : undefined;
      spec = byLong.get(key);
      shown = `--${key}`;
    } else if (arg.startsWith('-') && arg.length > 1) {
      spec = byShort.get(arg[1]!);
      shown = `-${arg[1]}`;
      if (arg.length > 2) inline = arg[2] === '=' ? arg.slice(3) : arg.slice(2);
    } else {
      positional.push(arg);
      continue;
    }
    if (spec === undefined) throw new UsageError(`unknown flag ${shown}${verb !== '' ? ` for ${verb}` : ''}`);
    if (spec.value) {
      let v = inline;
      if (v === undefined) {
        v = argv[i + 1];
        if (v === undefined) throw new UsageError(`flag ${shown} needs a value`);
        i++;
      }
      flags.set(spec.long, v);
    } else {
      if (inline !== undefined && inline !== 'true' && inline !== 'false')
        throw new UsageError(`flag ${shown} takes no value`);
      if (inline === 'false') flags.delete(spec.long);
      else flags.set(spec.long, true);
    }
  }
  return { flags, positional };
}

const str = (flags: Map<string, string | true>, key: string): string | undefined => {
  const v = flags.get(key);
  return typeof v === 'string' ? v : undefined;
};

function oneName(verb: Verb, positional: readonly string[]): string {
  if (positional.length !== 1)
    throw new UsageError(`${verb} takes one BlockPull name: kubectl blockpull ${USAGE[verb as Exclude<Verb, 'help'>]}`);
  return checkName('BlockPull name', positional[0]!);
}

/** Parses the arguments after `kubectl blockpull` (process.argv.slice(2)). */
export function parseArgs(argv: readonly string[]): Invocation {
  const verbIndex = findVerb(argv);
  const verb = verbIndex >= 0 ? (argv[verbIndex] as Verb) : undefined;
  const rest = verbIndex >= 0 ? [...argv.slice(0, verbIndex), ...argv.slice(verbIndex + 1)] : [...argv];
  const { flags, positional } = scan(
    rest,
    [...GLOBAL_FLAGS, ...(verb !== undefined ? VERB_FLAGS[verb] : [])],
    verb ?? '',
  );
  const kubeconfig = str(flags, 'kubeconfig');
  const context = str(flags, 'context');
  const namespace = str(flags, 'namespace');
  if (namespace !== undefined) checkLabelNs(namespace);
  const globals: Globals = {
    allNamespaces: flags.has('all-namespaces'),
    ...(kubeconfig !== undefined ? { kubeconfig } : {}),
    ...(context !== undefined ? { context } : {}),
    ...(namespace !== undefined ? { namespace } : {}),
  };
  if (verb === undefined) {
    if (positional.length > 0)
      throw new UsageError(`unknown verb ${JSON.stringify(positional[0])}: one of ${VERBS.join(', ')}`);
    return { globals, command: { verb: 'help' } };
  }
  if (flags.has('help') || verb === 'help') {
    const topic = verb === 'help' ? positional[0] : verb;
    return { globals, command: { verb: 'help', ...(topic !== undefined ? { topic } : {}) } };
  }
  if (globals.allNamespaces && verb !== 'status') throw new UsageError(`-A/--all-namespaces is for status only`);
  return { globals, command: verbCommand(verb, flags, positional, globals) };
}

function checkLabelNs(ns: string): void {
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(ns) || ns.length > 63)
    throw new UsageError(`invalid namespace ${JSON.stringify(ns)}`);
}

/** The first argument that is neither a flag nor a global flag's value. */
function findVerb(argv: readonly string[]): number {
  const valued = new Set(['--kubeconfig', '--context', '--namespace', '-n']);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') return -1;
    if (valued.has(a)) {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    return (VERBS as readonly string[]).includes(a) ? i : -1;
  }
  return -1;
}

function timeoutOf(flags: Map<string, string | true>): { timeoutMs?: number } {
  const t = str(flags, 'timeout');
  return t !== undefined ? { timeoutMs: parseDuration(t) } : {};
}

function verbCommand(
  verb: Exclude<Verb, 'help'>,
  flags: Map<string, string | true>,
  positional: readonly string[],
  globals: Globals,
): Command {
  switch (verb) {
    case 'start': {
      if (positional.length !== 1) throw new UsageError(`start takes one VMI name: kubectl blockpull ${USAGE.start}`);
      const vmi = checkLabel('VMI', positional[0]!);
      const diskFlag = str(flags, 'disk');
      if (diskFlag === undefined) throw new UsageError(`start needs --disk: kubectl blockpull ${USAGE.start}`);
      const disk = checkLabel('disk', diskFlag);
      const base = str(flags, 'base');
      const bandwidth = str(flags, 'bandwidth');
      if (flags.has('timeout') && !flags.has('wait')) throw new UsageError('--timeout goes with --wait');
      return {
        verb,
        vmi,
        disk,
        name: checkName('--name', str(flags, 'name') ?? `${vmi}-${disk}`),
        ...(base !== undefined ? { base: parseBase(base) } : {}),
        ...(bandwidth !== undefined ? { bandwidth: parseBandwidth(bandwidth) } : {}),
        paused: flags.has('paused'),
        wait: flags.has('wait'),
        ...timeoutOf(flags),
      };
    }
    case 'status': {
      if (positional.length > 1)
        throw new UsageError(`status takes at most one name: kubectl blockpull ${USAGE.status}`);
      const name = positional[0] !== undefined ? checkName('BlockPull name', positional[0]) : undefined;
      if (name !== undefined && globals.allNamespaces)
        throw new UsageError('a name and -A do not go together: a BlockPull is named within its namespace');
      const output = str(flags, 'output');
      if (output !== undefined && output !== 'json' && output !== 'yaml')
        throw new UsageError(`unknown output format ${JSON.stringify(output)}: json or yaml`);
      return {
        verb,
        watch: flags.has('watch'),
        ...(name !== undefined ? { name } : {}),
        ...(output !== undefined ? { output } : {}),
      };
    }
    case 'pause':
    case 'resume':
      return { verb, name: oneName(verb, positional) };
    case 'abort':
    case 'wait':
      return { verb, name: oneName(verb, positional), ...timeoutOf(flags) };
    case 'plan': {
      if (positional.length !== 1) throw new UsageError(`plan takes one VMI name: kubectl blockpull ${USAGE.plan}`);
      const vmi = checkLabel('VMI', positional[0]!);
      const diskFlag = str(flags, 'disk');
      const base = str(flags, 'base');
      const bandwidth = str(flags, 'bandwidth');
      return {
        verb,
        vmi,
        ...(diskFlag !== undefined ? { disk: checkLabel('disk', diskFlag) } : {}),
        ...(base !== undefined ? { base: parseBase(base) } : {}),
        ...(bandwidth !== undefined ? { bandwidth: parseBandwidth(bandwidth) } : {}),
        ...timeoutOf(flags),
      };
    }
    default:
      return assertNever(verb);
  }
}
