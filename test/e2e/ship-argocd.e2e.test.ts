// The Argo CD health check (deploy/argocd/blockpull-health.lua) run by real Lua interpreters
// (Debian's lua5.1, the dialect of Argo CD's gopher-lua, and lua5.4) against BlockPull fixtures.
// Every fixture is first checked to be a valid BlockPull by the operator's own zod schema.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseBlockPull } from '../../operator/src/api/types.ts';
import { ensureDebianPackages } from './support/debian.ts';
import { run } from './ship/helm.ts';

const root = join(import.meta.dirname, '..', '..');
const script = join(root, 'deploy', 'argocd', 'blockpull-health.lua');
const harness = join(import.meta.dirname, 'ship', 'lua-harness.lua');
const fixturesDir = join(import.meta.dirname, 'ship', 'fixtures', 'argocd');
const interpreters = ['lua5.1', 'lua5.4'] as const;

/** JSON value -> Lua table constructor (what Argo CD hands the script as `obj`). */
function toLua(value: unknown): string {
  if (value === null || value === undefined) return 'nil';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error(`not a JSON number: ${value}`);
    return String(value);
  }
  if (typeof value === 'string') {
    // Decimal escapes for quote, backslash and control characters work in Lua 5.1 and 5.4; other
    // characters go through as UTF-8 bytes (Lua strings are byte strings).
    // eslint-disable-next-line no-control-regex -- control characters are exactly what must be escaped
    return `"${value.replace(/[\u0000-\u001f"\\\u007f]/g, (c) => `\\${String(c.charCodeAt(0)).padStart(3, '0')}`)}"`;
  }
  if (Array.isArray(value)) return `{${value.map(toLua).join(', ')}}`;
  if (typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== null && v !== undefined);
    return `{${entries.map(([k, v]) => `[${toLua(k)}] = ${toLua(v)}`).join(', ')}}`;
  }
  throw new Error(`cannot convert ${typeof value} to Lua`);
}

async function health(interpreter: string, obj: unknown): Promise<{ status: string; message: string }> {
  const r = await run([interpreter, harness, script], { input: `return ${toLua(obj)}\n`, timeoutMs: 10_000 });
  expect(r.stderr).toBe('');
  expect(r.exitCode).toBe(0);
  const [status = '', ...message] = r.stdout.replace(/\n$/, '').split('\n');
  return { status, message: message.join('\n') };
}

const expected: Record<string, { status: string; message: RegExp }> = {
  'new': { status: 'Progressing', message: /^Waiting for the operator to observe the BlockPull$/ },
  'new-paused': { status: 'Suspended', message: /^Paused by spec\.paused; waiting for the operator to stop the pull$/ },
  'pending': { status: 'Progressing', message: /^VMINotFound: VirtualMachineInstance vms\/web-1 not found$/ },
  'running': { status: 'Progressing', message: /^Pulling: Block pull of vda running \(42%\)$/ },
  'running-spec-paused': { status: 'Suspended', message: /^Paused by spec\.paused; Pulling: Block pull of vda running \(10%\)$/ },
  'paused': { status: 'Suspended', message: /^Paused: Pull stopped at 30%; the data streamed so far is kept \(30%\)$/ },
  'completed': { status: 'Healthy', message: /^Completed: rootdisk is now a single image$/ },
  'completed-then-paused': { status: 'Healthy', message: /^NothingToDo: the chain was already at its goal$/ },
  'failed': { status: 'Degraded', message: /^DiskNotFound: disk "rootdisk" is not in domain vms_web-1$/ },
  'failed-no-message': { status: 'Degraded', message: /^Failed$/ },
  'unicode-message': { status: 'Progressing', message: /^WaitingForSlot: 4\/4 pulls running — waiting\n"quoted" \\ backslash$/ },
};

describe('Argo CD health check for BlockPull', () => {
  beforeAll(async () => {
    await ensureDebianPackages([...interpreters]);
  }, 900_000);

  const files = readdirSync(fixturesDir).filter((f) => f.endsWith('.json')).sort();

  it('every fixture has an expectation and vice versa', () => {
    expect(files.map((f) => f.replace(/\.json$/, '')).sort()).toEqual(Object.keys(expected).sort());
  });

  for (const interpreter of interpreters) {
    it.each(files)(`${interpreter}: %s`, async (file) => {
      const obj: unknown = JSON.parse(readFileSync(join(fixturesDir, file), 'utf8'));
      parseBlockPull(obj); // the fixture is a real BlockPull as the operator reads it
      const want = expected[file.replace(/\.json$/, '')];
      if (!want) throw new Error(`no expectation for ${file}`);
      const got = await health(interpreter, obj);
      expect(got.status).toBe(want.status);
      expect(got.message).toMatch(want.message);
    });
  }

  it('a script error is reported (the harness can fail)', async () => {
    const r = await run(['lua5.4', harness, script], { input: 'return 42\n', timeoutMs: 10_000 });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/attempt to index/);
  });
});
