// Runs the Argo CD Lua scripts in deploy/argocd/ (health check, resource actions) with a real Lua
// interpreter, the way Argo CD runs them (the live object in the global `obj`; ./lua-harness.lua).
// Debian's lua5.1 is the dialect of Argo CD's gopher-lua; lua5.4 is the current one.
import { join } from 'node:path';
import { z } from 'zod';
import { run } from '../support/process.ts';

const root = join(import.meta.dirname, '..', '..', '..');
export const ARGOCD_DIR = join(root, 'deploy', 'argocd');
export const HEALTH_SCRIPT = join(ARGOCD_DIR, 'blockpull-health.lua');
/** The health check of BlockPullPolicy and ClusterBlockPullPolicy (one script, one status). */
export const POLICY_HEALTH_SCRIPT = join(ARGOCD_DIR, 'blockpullpolicy-health.lua');
export const DISCOVERY_SCRIPT = join(ARGOCD_DIR, 'actions', 'discovery.lua');
export const actionScript = (name: string): string => join(ARGOCD_DIR, 'actions', name, 'action.lua');
export const LUA_INTERPRETERS = ['lua5.1', 'lua5.4'] as const;
const harness = join(import.meta.dirname, 'lua-harness.lua');

/** JSON value -> Lua table constructor (what Argo CD hands the script as `obj`). */
export function toLua(value: unknown): string {
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

export interface Health {
  readonly status: string;
  readonly message: string;
}

async function runScript(interpreter: string, script: string, obj: unknown, json: boolean): Promise<string> {
  const r = await run([interpreter, harness, script, ...(json ? ['json'] : [])], {
    allowExit: true,
    input: `return ${toLua(obj)}\n`,
    timeoutMs: 10_000,
  });
  if (r.exitCode !== 0 || r.stderr !== '')
    throw new Error(`${interpreter} ${script} exited ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

/** The Argo CD health the health script (the BlockPull's, or another) computes for `obj`. */
export async function argoHealth(interpreter: string, obj: unknown, script = HEALTH_SCRIPT): Promise<Health> {
  const out = await runScript(interpreter, script, obj, false);
  const [status = '', ...message] = out.replace(/\n$/, '').split('\n');
  return { status, message: message.join('\n') };
}

const DiscoverySchema = z.record(
  z.string(),
  z.object({ iconClass: z.string().optional(), displayName: z.string().optional(), disabled: z.boolean().optional() }),
);

/** The resource actions discovery.lua offers for `obj` (name -> UI attributes). */
export async function argoActions(interpreter: string, obj: unknown): Promise<z.infer<typeof DiscoverySchema>> {
  const out = (await runScript(interpreter, DISCOVERY_SCRIPT, obj, true)).trim();
  // An empty Lua table is encoded as {} (no actions).
  return DiscoverySchema.parse(JSON.parse(out));
}

/** The object an action returns (what Argo CD patches the live object to). */
export async function argoRunAction(
  interpreter: string,
  action: string,
  obj: unknown,
): Promise<Record<string, unknown>> {
  return z
    .record(z.string(), z.unknown())
    .parse(JSON.parse(await runScript(interpreter, actionScript(action), obj, true)));
}

/** Argo CD health statuses that agree with a kstatus verdict. */
export function healthAgreesWith(kstatus: string): readonly string[] {
  switch (kstatus) {
    case 'Current':
      return ['Healthy'];
    case 'Failed':
      return ['Degraded'];
    case 'InProgress':
      return ['Progressing', 'Suspended'];
    case 'Terminating':
      return ['Progressing'];
    default:
      return [];
  }
}

/**
 * deploy/argocd/argocd-cm-patch.yaml: the health check and the resource actions as argocd-cm keys,
 * ready for `kubectl -n argocd patch configmap argocd-cm --patch-file ...`. Regenerate after editing
 * a script: `node test/e2e/ship/argocd.ts`; test/e2e/specs/ship/argocd.e2e.test.ts checks it embeds the scripts.
 */
export async function argocdCmPatch(): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  const { stringify } = await import('yaml');
  const actions = {
    'discovery.lua': await readFile(DISCOVERY_SCRIPT, 'utf8'),
    definitions: [
      { name: 'pause', 'action.lua': await readFile(actionScript('pause'), 'utf8') },
      { name: 'resume', 'action.lua': await readFile(actionScript('resume'), 'utf8') },
    ],
  };
  const opts = { blockQuote: 'literal', lineWidth: 0 } as const;
  const patch = {
    data: {
      'resource.customizations.health.blockpull.dev_BlockPull': await readFile(HEALTH_SCRIPT, 'utf8'),
      'resource.customizations.health.blockpull.dev_BlockPullPolicy': await readFile(POLICY_HEALTH_SCRIPT, 'utf8'),
      'resource.customizations.health.blockpull.dev_ClusterBlockPullPolicy': await readFile(
        POLICY_HEALTH_SCRIPT,
        'utf8',
      ),
      'resource.customizations.actions.blockpull.dev_BlockPull': stringify(actions, opts),
    },
  };
  return `# Generated from deploy/argocd/*.lua by \`node test/e2e/ship/argocd.ts\`; do not edit by hand.\n# kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/argocd-cm-patch.yaml\n${stringify(patch, opts)}`;
}

if (process.argv[1] === (await import('node:url')).fileURLToPath(import.meta.url)) {
  const { writeFile } = await import('node:fs/promises');
  await writeFile(join(ARGOCD_DIR, 'argocd-cm-patch.yaml'), await argocdCmPatch());
}
