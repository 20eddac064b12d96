// Performs a Dockerfile's build without a Docker engine: each stage gets a clean root directory,
// the build context is what .dockerignore admits, COPY copies (from the context or an earlier
// stage), RUN runs its exec-form argv (no shell) in WORKDIR with the stage's ENV. The base image
// is stood in for by a directory on PATH holding node (the project's Node 24), npm and npx.
// Only the instructions our Dockerfile uses are supported; anything else is an error, so a new
// instruction cannot be silently skipped.
import { cp, mkdir, mkdtemp, readdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, posix, relative } from 'node:path';
import { z } from 'zod';
import { run } from '../support/process.ts';

export interface Instruction {
  readonly line: number;
  readonly keyword: string;
  readonly args: string;
}

/** Splits a Dockerfile into instructions: comments dropped, `\` continuations joined. */
export function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split('\n');
  let buf = '';
  let start = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i] ?? '';
    const trimmed = raw.trim();
    if (buf === '' && (trimmed === '' || trimmed.startsWith('#'))) continue;
    if (buf !== '' && trimmed.startsWith('#')) continue; // comment inside a continuation
    if (buf === '') start = i + 1;
    if (trimmed.endsWith('\\')) {
      buf += trimmed.slice(0, -1) + ' ';
      continue;
    }
    buf += trimmed;
    const m = /^([A-Za-z]+)\s+(.*)$/s.exec(buf);
    if (!m?.[1] || m[2] === undefined) throw new Error(`Dockerfile line ${start}: cannot parse "${buf}"`);
    out.push({ line: start, keyword: m[1].toUpperCase(), args: m[2].trim() });
    buf = '';
  }
  if (buf !== '') throw new Error('Dockerfile ends inside a line continuation');
  return out;
}

const execForm = z.array(z.string()).min(1);

/** JSON exec form (`["a", "b"]`), or undefined for the shell form. */
export function parseExecForm(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  return execForm.parse(JSON.parse(args));
}

/** `k=v k2="v 2"` pairs (ENV, LABEL, ARG defaults). */
export function parsePairs(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /([A-Za-z_][A-Za-z0-9_.-]*)=("((?:[^"\\]|\\.)*)"|(\S*))/g;
  let consumed = '';
  for (const m of args.matchAll(re)) {
    const key = m[1] ?? '';
    out[key] = m[3] !== undefined ? m[3].replace(/\\(.)/g, '$1') : (m[4] ?? '');
    consumed += m[0];
  }
  if (consumed.replace(/\s/g, '') !== args.replace(/\s/g, '')) throw new Error(`cannot parse key=value pairs: ${args}`);
  return out;
}

function expand(s: string, vars: Record<string, string>): string {
  return s.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (_, a: string | undefined, b: string | undefined) => vars[a ?? b ?? ''] ?? '',
  );
}

// --- .dockerignore ----------------------------------------------------------------------------

interface IgnoreRule {
  readonly negate: boolean;
  readonly re: RegExp;
  /** The pattern up to its first wildcard. */
  readonly literalPrefix: string;
}

export function parseDockerignore(text: string): IgnoreRule[] {
  const rules: IgnoreRule[] = [];
  for (const rawLine of text.split('\n')) {
    let p = rawLine.trim();
    if (p === '' || p.startsWith('#')) continue;
    const negate = p.startsWith('!');
    if (negate) p = p.slice(1).trim();
    p = posix.normalize(p).replace(/^\/+/, '').replace(/\/+$/, '');
    let re = '';
    for (let i = 0; i < p.length; i++) {
      const c = p[i] ?? '';
      if (p.startsWith('**/', i)) {
        re += '(?:.*/)?';
        i += 2;
      } else if (p.startsWith('**', i)) {
        re += '.*';
        i += 1;
      } else if (c === '*') re += '[^/]*';
      else if (c === '?') re += '[^/]';
      else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    rules.push({ negate, re: new RegExp(`^${re}$`), literalPrefix: p.split(/[*?[]/)[0] ?? '' });
  }
  return rules;
}

/** Docker's rule: the last pattern matching the path or one of its parent directories wins. */
export function isIgnored(rules: readonly IgnoreRule[], relPath: string): boolean {
  const parts = relPath.split('/');
  const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
  let ignored = false;
  for (const rule of rules) if (candidates.some((c) => rule.re.test(c))) ignored = !rule.negate;
  return ignored;
}

/** The files of the build context that .dockerignore admits (relative POSIX paths, sorted). */
export async function contextFiles(contextDir: string, dockerignore: string): Promise<string[]> {
  const rules = parseDockerignore(dockerignore);
  const files: string[] = [];
  // Skip the big directories the rules exclude without descending into them.
  const walkFiltered = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const full = join(dir, e.name);
      const rel = relative(contextDir, full).split('\\').join('/');
      if (e.isDirectory()) {
        // An ignored directory is skipped unless a negated pattern may admit something below it.
        const mayReadmit = rules.some(
          (r) => r.negate && (r.literalPrefix.startsWith(`${rel}/`) || `${rel}/`.startsWith(r.literalPrefix)),
        );
        if (isIgnored(rules, rel) && !mayReadmit) continue;
        await walkFiltered(full);
      } else if (!isIgnored(rules, rel)) files.push(rel);
    }
  };
  await walkFiltered(contextDir);
  return files.sort();
}

// --- the build --------------------------------------------------------------------------------

export interface Stage {
  readonly name: string;
  readonly image: string;
  readonly root: string;
  workdir: string;
  env: Record<string, string>;
  user: string | undefined;
  entrypoint: string[] | undefined;
  readonly labels: Record<string, string>;
  readonly expose: string[];
}

export interface BuildResult {
  readonly stages: Stage[];
  readonly final: Stage;
  readonly context: string[];
  readonly steps: string[];
}

export interface BuildOptions {
  readonly contextDir: string;
  readonly dockerfile: string;
  readonly dockerignore: string;
  /** Directory standing in for the base image's /usr/local/bin (node, npm, npx). */
  readonly baseBinDir: string;
  readonly buildArgs?: Record<string, string>;
  readonly workDir?: string;
  readonly log?: (line: string) => void;
}

/**
 * The build host's network settings (proxies, extra CA certificates), passed through like
 * docker build's predefined proxy build args: npm in a RUN step must reach the registry.
 */
function hostNetworkEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (
      v !== undefined &&
      /^(NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|SSL_CERT_DIR|https?_proxy|no_proxy|HTTPS?_PROXY|NO_PROXY)$/.test(k)
    )
      out[k] = v;
  }
  return out;
}

export async function performBuild(options: BuildOptions): Promise<BuildResult> {
  const instructions = parseDockerfile(options.dockerfile);
  const context = await contextFiles(options.contextDir, options.dockerignore);
  const contextSet = new Set(context);
  const workRoot = options.workDir ?? (await mkdtemp(join(tmpdir(), 'blockpull-image-')));
  const stages: Stage[] = [];
  const steps: string[] = [];
  const globalArgs: Record<string, string> = {};
  let stage: Stage | undefined;
  let stageArgs: Record<string, string> = {};
  const hostPath = (s: Stage, p: string): string => join(s.root, posix.resolve(s.workdir, p));

  for (const ins of instructions) {
    const vars = { ...globalArgs, ...stageArgs, ...(stage?.env ?? {}) };
    const where = `Dockerfile:${ins.line} ${ins.keyword}`;
    steps.push(`${ins.keyword} ${ins.args}`);
    options.log?.(`${where} ${ins.args}`);
    if (ins.keyword === 'ARG') {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$/.exec(ins.args);
      if (!m?.[1]) throw new Error(`${where}: cannot parse`);
      const value =
        options.buildArgs?.[m[1]] ??
        (m[2] !== undefined ? expand(m[2].replace(/^"(.*)"$/, '$1'), vars) : (globalArgs[m[1]] ?? ''));
      if (stage) stageArgs[m[1]] = value;
      else globalArgs[m[1]] = value;
      continue;
    }
    if (ins.keyword === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      if (!m?.[1]) throw new Error(`${where}: cannot parse`);
      const image = expand(m[1], globalArgs);
      const name = m[2] ?? String(stages.length);
      if (stages.some((s) => s.name === image)) throw new Error(`${where}: FROM an earlier stage is not supported`);
      const root = join(workRoot, `stage-${name}`);
      await mkdir(root, { recursive: true, mode: 0o755 });
      stage = {
        name,
        image,
        root,
        workdir: '/',
        env: { PATH: `${options.baseBinDir}:/usr/local/bin:/usr/bin:/bin` },
        user: undefined,
        entrypoint: undefined,
        labels: {},
        expose: [],
      };
      stageArgs = {};
      stages.push(stage);
      continue;
    }
    if (!stage) throw new Error(`${where}: before FROM`);
    switch (ins.keyword) {
      case 'WORKDIR':
        stage.workdir = posix.resolve(stage.workdir, expand(ins.args, vars));
        await mkdir(join(stage.root, stage.workdir), { recursive: true });
        break;
      case 'ENV':
        for (const [k, v] of Object.entries(parsePairs(ins.args))) stage.env[k] = expand(v, vars);
        break;
      case 'LABEL':
        for (const [k, v] of Object.entries(parsePairs(ins.args))) stage.labels[k] = expand(v, vars);
        break;
      case 'USER':
        stage.user = expand(ins.args, vars);
        break;
      case 'EXPOSE':
        stage.expose.push(...ins.args.split(/\s+/));
        break;
      case 'ENTRYPOINT': {
        const argv = parseExecForm(ins.args);
        if (!argv) throw new Error(`${where}: use the exec form`);
        stage.entrypoint = argv;
        break;
      }
      case 'COPY': {
        const words = ins.args.split(/\s+/).map((w) => expand(w, vars));
        const flags = words.filter((w) => w.startsWith('--'));
        const paths = words.filter((w) => !w.startsWith('--'));
        const from = flags.find((f) => f.startsWith('--from='))?.slice('--from='.length);
        const unknown = flags.filter((f) => !f.startsWith('--from='));
        if (unknown.length > 0) throw new Error(`${where}: unsupported flags ${unknown.join(' ')}`);
        const dest = paths.pop();
        if (!dest || paths.length === 0) throw new Error(`${where}: needs a source and a destination`);
        const destHost = hostPath(stage, dest);
        const destIsDir = dest.endsWith('/') || paths.length > 1;
        for (const src of paths) {
          if (from !== undefined) {
            const other = stages.find((s) => s.name === from);
            if (!other) throw new Error(`${where}: no stage ${from}`);
            const srcHost = join(other.root, posix.resolve('/', src));
            await cp(srcHost, destIsDir ? join(destHost, posix.basename(src)) : destHost, { recursive: true });
          } else {
            const rel = posix
              .normalize(src)
              .replace(/^\.?\/+/, '')
              .replace(/\/+$/, '');
            const matched = context.filter((f) => f === rel || f.startsWith(`${rel}/`));
            if (matched.length === 0) throw new Error(`${where}: ${src} is not in the build context (.dockerignore?)`);
            for (const f of matched) {
              const target =
                f === rel
                  ? destIsDir
                    ? join(destHost, posix.basename(f))
                    : destHost
                  : join(destHost, f.slice(rel.length + 1));
              if (!contextSet.has(f)) continue;
              await mkdir(dirname(target), { recursive: true });
              await cp(join(options.contextDir, f), target);
            }
          }
        }
        break;
      }
      case 'RUN': {
        const argv = parseExecForm(ins.args);
        if (!argv) throw new Error(`${where}: shell-form RUN is not supported (use the exec form: no shell strings)`);
        const cwd = join(stage.root, stage.workdir);
        const started = Date.now();
        const r = await run(
          argv.map((a) => expand(a, vars)),
          {
            allowExit: true,
            cwd,
            env: { HOME: process.env.HOME ?? '/root', ...hostNetworkEnv(), ...stageArgs, ...stage.env },
            timeoutMs: 1_200_000,
          },
        );
        options.log?.(`  exit ${r.exitCode} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        if (r.exitCode !== 0)
          throw new Error(`${where} ${ins.args} failed (exit ${r.exitCode}):\n${r.stdout}\n${r.stderr}`);
        break;
      }
      default:
        throw new Error(`${where}: instruction not supported by this build stand-in`);
    }
  }
  const final = stages.at(-1);
  if (!final) throw new Error('Dockerfile has no FROM');
  return { stages, final, context, steps };
}

export async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}
