/**
 * Architecture report, read from the code: lines per room, import arrows that run back
 * up the operator's floors, import cycles, the longest functions in operator/src, and the
 * process-spawning call sites outside test/e2e/support/.
 *
 *   npm run arch:report            text
 *   npm run arch:report -- --json  the same figures as JSON
 *
 * The pure parts (floors, arrows, cycles, function lengths, spawn sites) are exported and tested
 * in test/unit/arch-report.test.ts; main() only reads the files.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * The operator's floors, lowest first: a module may import from its own floor or a lower one.
 * docs/ARCHITECTURE.md describes them. Files directly in operator/src are placed by name.
 * `plugin` is the kubectl plugin (plugin/src, a program of its own): it stands on api and
 * nothing above it, and nothing of the operator stands on it.
 */
export const FLOORS: readonly (readonly string[])[] = [
  ['log.ts', 'crash.ts'],
  ['api'],
  ['plugin'],
  ['hypervisor'],
  ['kube'],
  ['kubevirt'],
  ['controller', 'policy'],
  ['config.ts', 'main.ts'],
];

/**
 * Rooms that share a floor but must not know each other: the BlockPull controller and the
 * policy controller meet only through the API server (the policy writes BlockPulls, the
 * BlockPull controller reads them), so an import either way is reported as an arrow.
 */
export const SEPARATE_ROOMS: readonly (readonly [string, string])[] = [['controller', 'policy']];

/** The room of a path relative to operator/src or to the repository (`controller`, `main.ts`). */
function operatorRoom(rel: string): string {
  const inOperator = rel.startsWith('operator/src/') ? rel.slice('operator/src/'.length) : rel;
  return inOperator.split('/')[0] ?? '';
}

function separated(from: string, to: string): boolean {
  const a = operatorRoom(from);
  const b = operatorRoom(to);
  return SEPARATE_ROOMS.some(([x, y]) => (a === x && b === y) || (a === y && b === x));
}

export const PLUGIN_FLOOR = FLOORS.findIndex((names) => names.includes('plugin'));

/**
 * The floor of a path relative to operator/src (`controller/decide.ts`, `main.ts`), or relative to
 * the repository (`operator/src/api/types.ts`, `plugin/src/cli.ts`: every file under plugin/ is on
 * the plugin floor), or -1 when unplaced.
 */
export function floorOf(rel: string): number {
  if (rel.startsWith('plugin/')) return PLUGIN_FLOOR;
  const inOperator = rel.startsWith('operator/src/') ? rel.slice('operator/src/'.length) : rel;
  const first = (inOperator.split('/')[0] ?? '').replace(/\.test\.ts$/, '.ts');
  return FLOORS.findIndex((names) => names.includes(first));
}

/** The room of a path relative to a root: its first folder, or `(top)` for a file directly in it. */
export function roomOf(rel: string): string {
  const parts = rel.split('/');
  return parts.length > 1 ? parts[0]! : '(top)';
}

/** Relative module specifiers imported or re-exported by a source text (static and dynamic). */
export function importsOf(fileName: string, text: string): string[] {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: string[] = [];
  const visit = (n: ts.Node): void => {
    if (
      (ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) &&
      n.moduleSpecifier !== undefined &&
      ts.isStringLiteral(n.moduleSpecifier)
    ) {
      out.push(n.moduleSpecifier.text);
    } else if (
      ts.isCallExpression(n) &&
      n.expression.kind === ts.SyntaxKind.ImportKeyword &&
      n.arguments[0] !== undefined &&
      ts.isStringLiteral(n.arguments[0])
    ) {
      out.push(n.arguments[0].text);
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

/** Graph: file -> files it imports (relative imports only, resolved against the file's folder). */
export type ImportGraph = ReadonlyMap<string, readonly string[]>;

export function buildGraph(files: ReadonlyMap<string, string>): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const [file, text] of files) {
    const deps = importsOf(file, text)
      .filter((s) => s.startsWith('./') || s.startsWith('../'))
      .map((s) => path.posix.normalize(path.posix.join(path.posix.dirname(file), s)))
      .filter((d) => files.has(d));
    g.set(file, [...new Set(deps)]);
  }
  return g;
}

export interface Arrow {
  readonly from: string;
  readonly to: string;
}

/**
 * Imports from a lower floor to a higher one (paths relative to operator/src, or to the
 * repository), any import of the plugin from outside it, and any import between SEPARATE_ROOMS.
 */
export function backArrows(graph: ImportGraph): Arrow[] {
  const out: Arrow[] = [];
  for (const [from, deps] of graph) {
    const f = floorOf(from);
    for (const to of deps) {
      const t = floorOf(to);
      if (f >= 0 && t >= 0 && (t > f || (t === PLUGIN_FLOOR && f !== PLUGIN_FLOOR) || separated(from, to)))
        out.push({ from, to });
    }
  }
  return out.sort((a, b) => a.from.localeCompare(b.from) || a.to.localeCompare(b.to));
}

/** Files placed on no floor (a new top-level folder or file must be given one). */
export function unplaced(graph: ImportGraph): string[] {
  return [...graph.keys()].filter((f) => floorOf(f) < 0).sort();
}

/** The import cycles: strongly connected components of more than one file, or a file importing itself (Tarjan). */
export function cycles(graph: ImportGraph): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const strong = (v: string): void => {
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      for (;;) {
        const w = stack.pop()!;
        on.delete(w);
        comp.push(w);
        if (w === v) break;
      }
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(comp.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) strong(v);
  return out;
}

export interface FunctionLength {
  readonly file: string;
  readonly name: string;
  readonly line: number;
  readonly lines: number;
}

function functionName(n: ts.Node, sf: ts.SourceFile): string {
  const named = (n as { name?: ts.Node }).name;
  if (named !== undefined) {
    const text = named.getText(sf);
    const owner = n.parent;
    if (ts.isMethodDeclaration(n) || ts.isConstructorDeclaration(n) || ts.isGetAccessor(n) || ts.isSetAccessor(n)) {
      const cls = ts.isClassLike(owner) && owner.name !== undefined ? owner.name.text : '';
      return cls !== '' ? `${cls}.${text}` : text;
    }
    return text;
  }
  if (ts.isConstructorDeclaration(n))
    return `${ts.isClassLike(n.parent) && n.parent.name !== undefined ? n.parent.name.text : ''}.constructor`;
  const p = n.parent;
  if (ts.isVariableDeclaration(p) || ts.isPropertyAssignment(p) || ts.isPropertyDeclaration(p))
    return p.name.getText(sf);
  return '(anonymous)';
}

/** Every function (declaration, method, constructor, accessor, arrow, expression) with its length in lines. */
export function functionLengths(file: string, text: string): FunctionLength[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: FunctionLength[] = [];
  const visit = (n: ts.Node): void => {
    if (ts.isFunctionLike(n) && (n as { body?: ts.Node }).body !== undefined) {
      const start = sf.getLineAndCharacterOfPosition(n.getStart(sf)).line;
      const end = sf.getLineAndCharacterOfPosition(n.getEnd()).line;
      out.push({ file, name: functionName(n, sf), line: start + 1, lines: end - start + 1 });
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

const SPAWNING = new Set(['spawn', 'spawnSync', 'exec', 'execSync', 'execFile', 'execFileSync', 'fork']);

export interface SpawnSite {
  readonly file: string;
  readonly line: number;
  readonly call: string;
}

/**
 * Calls that start a process through node:child_process: its spawn/exec/execFile/fork family,
 * imported by name or through a namespace import, and functions made of them by promisify().
 */
export function spawnSites(file: string, text: string): SpawnSite[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const names = new Set<string>();
  const namespaces = new Set<string>();
  for (const st of sf.statements) {
    if (!ts.isImportDeclaration(st) || !ts.isStringLiteral(st.moduleSpecifier)) continue;
    if (st.moduleSpecifier.text !== 'node:child_process' && st.moduleSpecifier.text !== 'child_process') continue;
    const b = st.importClause?.namedBindings;
    const def = st.importClause?.name;
    if (def !== undefined) namespaces.add(def.text);
    if (b === undefined) continue;
    if (ts.isNamespaceImport(b)) namespaces.add(b.name.text);
    else
      for (const el of b.elements)
        if (SPAWNING.has((el.propertyName ?? el.name).text) && !el.isTypeOnly) names.add(el.name.text);
  }
  if (names.size === 0 && namespaces.size === 0) return [];
  const isSpawner = (e: ts.Expression): boolean =>
    (ts.isIdentifier(e) && names.has(e.text)) ||
    (ts.isPropertyAccessExpression(e) &&
      ts.isIdentifier(e.expression) &&
      namespaces.has(e.expression.text) &&
      SPAWNING.has(e.name.text));
  // const execFileP = promisify(execFile): calling execFileP starts a process too.
  const findPromisified = (n: ts.Node): void => {
    if (
      ts.isVariableDeclaration(n) &&
      ts.isIdentifier(n.name) &&
      n.initializer !== undefined &&
      ts.isCallExpression(n.initializer)
    ) {
      const c = n.initializer;
      const callee = c.expression.getText(sf);
      if (
        (callee === 'promisify' || callee.endsWith('.promisify')) &&
        c.arguments[0] !== undefined &&
        isSpawner(c.arguments[0])
      )
        names.add(n.name.text);
    }
    ts.forEachChild(n, findPromisified);
  };
  findPromisified(sf);
  const out: SpawnSite[] = [];
  const visit = (n: ts.Node): void => {
    if (ts.isCallExpression(n) && isSpawner(n.expression)) {
      out.push({
        file,
        line: sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1,
        call: n.expression.getText(sf),
      });
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

function listTs(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.name === 'node_modules' || e.name === '.cache' || e.name === 'dist') continue;
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
    }
  };
  if (statSync(dir, { throwIfNoEntry: false })?.isDirectory() === true) walk(dir);
  return out.sort();
}

function countLines(text: string): number {
  if (text === '') return 0;
  return text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
}

interface RoomLines {
  readonly room: string;
  readonly files: number;
  readonly lines: number;
  readonly testLines: number;
}

function roomLines(root: string): RoomLines[] {
  const rooms = new Map<string, { files: number; lines: number; testLines: number }>();
  for (const f of listTs(path.join(REPO, root))) {
    const rel = path.relative(path.join(REPO, root), f).split(path.sep).join('/');
    const r = rooms.get(roomOf(rel)) ?? { files: 0, lines: 0, testLines: 0 };
    const n = countLines(readFileSync(f, 'utf8'));
    r.files++;
    if (f.endsWith('.test.ts')) r.testLines += n;
    else r.lines += n;
    rooms.set(roomOf(rel), r);
  }
  return [...rooms].map(([room, r]) => ({ room, ...r })).sort((a, b) => a.room.localeCompare(b.room));
}

function readTree(root: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const f of listTs(path.join(REPO, root)))
    m.set(path.relative(path.join(REPO, root), f).split(path.sep).join('/'), readFileSync(f, 'utf8'));
  return m;
}

export function report(): {
  roomsOperator: RoomLines[];
  roomsE2e: RoomLines[];
  roomsPlugin: RoomLines[];
  backArrows: Arrow[];
  unplaced: string[];
  cyclesOperator: string[][];
  cyclesE2e: string[][];
  longestFunctions: FunctionLength[];
  spawnSites: SpawnSite[];
} {
  const op = readTree('operator/src');
  const e2e = readTree('test/e2e');
  const opGraph = buildGraph(op);
  // The operator and the plugin together, by repository path: the plugin's imports of api are seen.
  const prefixed = (root: string, tree: ReadonlyMap<string, string>): [string, string][] =>
    [...tree].map(([f, t]) => [`${root}/${f}`, t]);
  const productGraph = buildGraph(
    new Map([...prefixed('operator/src', op), ...prefixed('plugin/src', readTree('plugin/src'))]),
  );
  const fns = [...op]
    .filter(([f]) => !f.endsWith('.test.ts'))
    .flatMap(([f, t]) => functionLengths(`operator/src/${f}`, t))
    .sort((a, b) => b.lines - a.lines)
    .slice(0, 5);
  const spawns: SpawnSite[] = [];
  for (const root of ['operator', 'plugin', 'test', 'scripts']) {
    for (const f of listTs(path.join(REPO, root))) {
      const rel = path.relative(REPO, f).split(path.sep).join('/');
      if (rel.startsWith('test/e2e/support/')) continue;
      spawns.push(...spawnSites(rel, readFileSync(f, 'utf8')));
    }
  }
  return {
    roomsOperator: roomLines('operator/src'),
    roomsE2e: roomLines('test/e2e'),
    roomsPlugin: roomLines('plugin/src'),
    backArrows: backArrows(productGraph),
    unplaced: unplaced(productGraph),
    cyclesOperator: cycles(opGraph),
    cyclesE2e: cycles(buildGraph(e2e)),
    longestFunctions: fns,
    spawnSites: spawns,
  };
}

function printRooms(title: string, rooms: readonly RoomLines[]): void {
  console.log(`${title}  (lines: code + tests)`);
  for (const r of rooms)
    console.log(
      `  ${r.room.padEnd(14)} ${String(r.lines + r.testLines).padStart(6)} = ${String(r.lines).padStart(6)} + ${String(r.testLines).padStart(5)}   ${r.files} files`,
    );
  const code = rooms.reduce((s, r) => s + r.lines, 0);
  const tests = rooms.reduce((s, r) => s + r.testLines, 0);
  console.log(
    `  ${'total'.padEnd(14)} ${String(code + tests).padStart(6)} = ${String(code).padStart(6)} + ${String(tests).padStart(5)}`,
  );
}

function main(): void {
  const r = report();
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify(r, null, 2));
    return;
  }
  printRooms('Rooms of operator/src', r.roomsOperator);
  printRooms('Rooms of test/e2e', r.roomsE2e);
  printRooms('Rooms of plugin/src', r.roomsPlugin);
  console.log(`Floors of operator/src and plugin/src, lowest first: ${FLOORS.map((f) => f.join(' ')).join(' < ')}`);
  console.log(`Arrows back up the floors: ${r.backArrows.length}`);
  for (const a of r.backArrows) console.log(`  ${a.from} -> ${a.to}`);
  if (r.unplaced.length > 0) console.log(`Files on no floor: ${r.unplaced.join(', ')}`);
  console.log(`Import cycles in operator/src: ${r.cyclesOperator.length}`);
  for (const c of r.cyclesOperator) console.log(`  ${c.join(' <-> ')}`);
  console.log(`Import cycles in test/e2e: ${r.cyclesE2e.length}`);
  for (const c of r.cyclesE2e) console.log(`  ${c.join(' <-> ')}`);
  console.log('Longest functions in operator/src (tests excluded):');
  for (const f of r.longestFunctions)
    console.log(`  ${String(f.lines).padStart(4)} lines  ${f.name}  (${f.file}:${f.line})`);
  console.log(`Process-spawning call sites outside test/e2e/support/: ${r.spawnSites.length}`);
  const byFile = new Map<string, SpawnSite[]>();
  for (const s of r.spawnSites) byFile.set(s.file, [...(byFile.get(s.file) ?? []), s]);
  for (const [f, sites] of byFile) console.log(`  ${f}: ${sites.map((s) => `${s.call}:${s.line}`).join(', ')}`);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
