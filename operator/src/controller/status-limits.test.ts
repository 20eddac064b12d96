/**
 * Every status decide() produces must be one the API server accepts: worst cases (huge virsh
 * stderr, chains longer than maxItems, a job reporting cur > end) are built and validated
 * against the CRD's own openAPIV3Schema (read from crds/, the bounds are not restated here).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { FINALIZER, parseBlockPull, type BlockPull, type BlockPullStatus } from '../api/types.ts';
import type { DiskInfo } from '../hypervisor/types.ts';
import { decide, decideActionError, type TestObservation as Observation } from '../../../test/unit/support/decide.ts';
import { truncateText } from './status-limits.ts';

type Json = Record<string, unknown>;
const crd = parse(
  readFileSync(new URL('../../../crds/blockpull.dev_blockpulls.yaml', import.meta.url), 'utf8'),
) as Json;
const openAPI = (((crd.spec as Json).versions as Json[])[0]!.schema as Json).openAPIV3Schema as Json;
const statusSchema = (openAPI.properties as Record<string, Json>).status!;

/** The violations of `value` against a structural-schema node (the keywords the CRD uses). */
function violations(path: string, schema: Json, value: unknown, out: string[]): void {
  if (value === undefined) return;
  const type = schema.type as string | undefined;
  if (type === 'integer') {
    if (typeof value !== 'number' || !Number.isInteger(value))
      out.push(`${path}: not an integer (${JSON.stringify(value)})`);
    if (schema.format === 'int32' && typeof value === 'number' && (value < -(2 ** 31) || value >= 2 ** 31))
      out.push(`${path}: not int32`);
  }
  if (type === 'string' && typeof value !== 'string') out.push(`${path}: not a string`);
  if (type === 'array' && !Array.isArray(value)) out.push(`${path}: not an array`);
  if (type === 'object' && (typeof value !== 'object' || value === null || Array.isArray(value)))
    out.push(`${path}: not an object`);
  if (typeof value === 'number') {
    if (typeof schema.minimum === 'number' && value < schema.minimum)
      out.push(`${path}: ${value} < minimum ${schema.minimum}`);
    if (typeof schema.maximum === 'number' && value > schema.maximum)
      out.push(`${path}: ${value} > maximum ${schema.maximum}`);
  }
  if (typeof value === 'string') {
    // The API server counts characters (code points).
    const n = [...value].length;
    if (typeof schema.maxLength === 'number' && n > schema.maxLength)
      out.push(`${path}: length ${n} > maxLength ${schema.maxLength}`);
    if (typeof schema.minLength === 'number' && n < schema.minLength)
      out.push(`${path}: length ${n} < minLength ${schema.minLength}`);
    if (typeof schema.pattern === 'string' && !new RegExp(schema.pattern, 'u').test(value))
      out.push(`${path}: does not match ${schema.pattern}`);
  }
  if (Array.isArray(schema.enum) && !schema.enum.includes(value))
    out.push(`${path}: ${JSON.stringify(value)} not in enum`);
  if (Array.isArray(value)) {
    if (typeof schema.maxItems === 'number' && value.length > schema.maxItems)
      out.push(`${path}: ${value.length} items > maxItems ${schema.maxItems}`);
    value.forEach((v, i) => violations(`${path}[${i}]`, schema.items as Json, v, out));
  } else if (typeof value === 'object' && value !== null) {
    const props = (schema.properties ?? {}) as Record<string, Json>;
    for (const r of (schema.required as string[] | undefined) ?? [])
      if (!(r in value)) out.push(`${path}: missing ${r}`);
    for (const [k, v] of Object.entries(value)) {
      if (!(k in props)) out.push(`${path}.${k}: unknown field (pruned)`);
      else violations(`${path}.${k}`, props[k]!, v, out);
    }
  }
}

function crdViolations(status: BlockPullStatus): string[] {
  const out: string[] = [];
  violations('status', statusSchema, status, out);
  return out;
}

const NOW = new Date('2026-11-27T10:00:00Z');
const LONG_DIR = `/var/lib/images/${'d'.repeat(180)}`;
/** A chain of n layers, longer than the CRD's maxItems, long paths. */
function chainOf(n: number): DiskInfo {
  return {
    target: 'vda',
    chain: Array.from({ length: n }, (_, i) => ({
      position: i,
      index: i + 1,
      path: `${LONG_DIR}/layer-${i}.qcow2`,
      format: 'qcow2',
    })),
  };
}
const MAX_CHAIN_ITEMS = (
  (statusSchema.properties as Record<string, Json>).backingChain!.properties as Record<string, Json>
).before!.maxItems as number;
const CHAIN_ITEM_PROPS = (
  ((statusSchema.properties as Record<string, Json>).backingChain!.properties as Record<string, Json>).before!
    .items as Json
).properties as Record<string, Json>;
const MAX_PATH = CHAIN_ITEM_PROPS.path!.maxLength as number;
const LAYERS = MAX_CHAIN_ITEMS + 50;
const HUGE = chainOf(LAYERS);
/** virsh stderr far over maxLength, with characters outside the BMP (surrogate pairs). */
const STDERR = `error: internal error: ${'qemu said 😱 '.repeat(20000)}`;

function bp(status?: BlockPullStatus, spec: Record<string, unknown> = {}): BlockPull {
  return parseBlockPull({
    metadata: {
      name: 'pull1',
      namespace: 'ns',
      uid: 'u',
      generation: 2,
      creationTimestamp: '2026-11-27T09:00:00Z',
      finalizers: [FINALIZER],
    },
    spec: { vmiName: 'vm1', disk: 'rootdisk', ...spec },
    ...(status ? { status } : {}),
  });
}

function obs(b: BlockPull, o: Partial<Observation> = {}): Observation {
  return {
    now: NOW,
    bp: b,
    launcher: {
      kind: 'found',
      launcher: {
        namespace: 'ns',
        pod: 'virt-launcher-vm1-x',
        node: 'node1',
        container: 'compute',
        domain: 'ns_vm1',
        uri: 'qemu:///system',
      },
    },
    diskHolder: 'ns/pull1',
    slots: {
      running: 0,
      runningOnNode: 0,
      runningInNamespace: 0,
      namespacesWanting: 1,
      maxConcurrentPulls: 4,
      maxPullsPerNode: 2,
    },
    pollIntervalMs: 500,
    waitRequeueMs: 5000,
    ...o,
  };
}

describe('status within the CRD bounds', () => {
  it('the validator itself rejects an oversized status (it can fail)', () => {
    const bad: BlockPullStatus = { message: STDERR, progress: { etaSeconds: -3, currentBytes: 1.5 } };
    const v = crdViolations(bad);
    expect(v.some((x) => x.startsWith('status.message: length'))).toBe(true);
    expect(v.some((x) => x.includes('etaSeconds: -3 < minimum 0'))).toBe(true);
    expect(v.some((x) => x.includes('currentBytes: not an integer'))).toBe(true);
    // Paths are bounded too (PATH_MAX): the CRD states it, and an over-long one is caught.
    expect(MAX_PATH).toBe(4096);
    const longPath = `/${'p'.repeat(MAX_PATH)}`;
    const paths = crdViolations({
      backingChain: {
        before: [{ position: 0, path: longPath, format: 'qcow2' }],
        current: [{ position: 0, path: longPath, format: 'qcow2' }],
        basePath: longPath,
      },
    });
    expect(paths).toEqual([
      `status.backingChain.before[0].path: length ${MAX_PATH + 1} > maxLength ${MAX_PATH}`,
      `status.backingChain.current[0].path: length ${MAX_PATH + 1} > maxLength ${MAX_PATH}`,
      `status.backingChain.basePath: length ${MAX_PATH + 1} > maxLength ${MAX_PATH}`,
    ]);
  });

  it('the job record (status.job) is in the CRD: every state, the intent and its outcome, validate; an unknown state does not', () => {
    const refused = decide(
      obs(bp(undefined, { bandwidth: '99999999999999999999Ti' }), {
        hypervisor: { kind: 'ok', disk: HUGE, job: null },
      }),
    );
    expect(refused.status).toMatchObject({ phase: 'Failed', reason: 'InvalidBandwidth' });
    expect(crdViolations(refused.status)).toEqual([]);
    const start = decide(obs(bp(), { hypervisor: { kind: 'ok', disk: HUGE, job: null } }));
    expect(start.status.job).toEqual({ state: 'Starting' });
    expect(crdViolations(start.status)).toEqual([]);
    expect(crdViolations(start.afterAction!)).toEqual([]);
    const abort = decide(
      obs(bp(start.afterAction, { bandwidth: '1025Ti' }), {
        hypervisor: { kind: 'ok', disk: HUGE, job: { type: 'Block Pull', cur: 1, end: 10, bandwidth: 0 } },
      }),
    );
    expect(abort.status).toMatchObject({ reason: 'InvalidBandwidth', job: { state: 'Aborting' } });
    expect(crdViolations(abort.status)).toEqual([]);
    for (const state of ['Starting', 'Unanswered', 'Running', 'Aborting', 'Aborted', 'Ended'] as const)
      expect(crdViolations({ job: { state } })).toEqual([]);
    expect(crdViolations({ job: { state: 'Lost' as 'Ended' } })).toEqual(['status.job.state: "Lost" not in enum']);
  });

  it('chain paths over maxLength (before, current, basePath) are cut with a marker; shorter ones are kept as they are', () => {
    // A 4-layer chain: the top (surrogate pairs) and the base (position 2) have paths far over PATH_MAX.
    const longTop = `/var/lib/images/${'😱'.repeat(MAX_PATH)}/top.qcow2`;
    const longBase = `/var/lib/images/${'b'.repeat(2 * MAX_PATH)}/base.qcow2`;
    const disk: DiskInfo = {
      target: 'vda',
      chain: [
        { position: 0, index: 1, path: longTop, format: 'qcow2' },
        { position: 1, index: 2, path: '/var/lib/images/mid.qcow2', format: 'qcow2' },
        { position: 2, index: 3, path: longBase, format: 'qcow2' },
        { position: 3, index: 4, path: '/var/lib/images/bottom.qcow2', format: 'qcow2' },
      ],
    };
    const d = decide(obs(bp(undefined, { base: { position: 2 } }), { hypervisor: { kind: 'ok', disk, job: null } }));
    expect(d.action.type).toBe('startPull');
    expect(crdViolations(d.status)).toEqual([]);
    const chain = d.status.backingChain!;
    for (const layers of [chain.before!, chain.current!]) {
      expect(layers.map((l) => l.position)).toEqual([0, 1, 2, 3]);
      expect(layers[0]!.path.startsWith('/var/lib/images/😱')).toBe(true);
      expect(layers[0]!.path).toMatch(/… \[truncated, \d+ more characters\]$/);
      expect(layers[0]!.path).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/);
      expect(layers[1]!.path).toBe('/var/lib/images/mid.qcow2');
      expect(layers[2]!.path.length).toBeLessThanOrEqual(MAX_PATH);
      expect(layers[2]!.path).toMatch(/^\/var\/lib\/images\/b+… \[truncated, \d+ more characters\]$/);
      expect(layers[3]!.path).toBe('/var/lib/images/bottom.qcow2');
    }
    expect(chain.basePath).toBe(chain.before![2]!.path);
    // The job itself is started with the real base path, not the cut one.
    expect(d.action).toMatchObject({ type: 'startPull' });
    expect(JSON.stringify(d.action)).toContain(longBase);
  });

  it('a chain longer than maxItems with long paths: NothingToDo message, before and current are capped, top kept, message says so', () => {
    const d = decide(
      obs(bp(undefined, { base: { position: 1 } }), { hypervisor: { kind: 'ok', disk: HUGE, job: null } }),
    );
    expect(d.status.reason).toBe('NothingToDo');
    expect(crdViolations(d.status)).toEqual([]);
    const before = d.status.backingChain!.before!;
    expect(before[0]!.path).toBe(HUGE.chain[0]!.path);
    expect(before.at(-1)!.position).toBe(before.length - 1);
    expect(d.status.message).toMatch(/^nothing to do: /);
    expect(d.status.message).toContain('… [truncated, ');
    expect(d.status.message).toMatch(
      /backing chain truncated to its top \d+ images in status; before: \d+ images, current: \d+ images\)$/,
    );
    for (const c of d.status.conditions!) expect(c.message).toContain('… [truncated, ');
  });

  it('virsh stderr far over maxLength (surrogate pairs) is cut with a marker in message and conditions', () => {
    const d = decide(
      obs(bp({ phase: 'Running', reason: 'Pulling', attempts: 1 }), {
        hypervisor: { kind: 'unreachable', message: STDERR },
      }),
    );
    expect(crdViolations(d.status)).toEqual([]);
    expect(d.status.message!.startsWith('error: internal error: qemu said')).toBe(true);
    expect(d.status.message).toMatch(/… \[truncated, \d+ more characters\]$/);
    expect(d.status.message).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/); // no lone high surrogate
    const progressing = d.status.conditions!.find((c) => c.type === 'Progressing')!;
    expect(progressing.status).toBe('Unknown');
    expect(progressing.message).toMatch(/… \[truncated, \d+ more characters\]$/);
  });

  it('a job reporting cur > end: currentBytes <= totalBytes, ETA >= 0, percent 100%', () => {
    const o = obs(
      bp({
        phase: 'Running',
        reason: 'Pulling',
        attempts: 1,
        backingChain: {
          before: HUGE.chain.slice(0, 3).map(({ position, path, format }) => ({ position, path, format })),
        },
      }),
      {
        hypervisor: {
          kind: 'ok',
          disk: chainOf(3),
          job: { type: 'Block Pull', cur: 3_000_000, end: 1_000_000, bandwidth: 0 },
        },
        previousSample: { cur: 500_000, atMs: NOW.getTime() - 1000 },
      },
    );
    const d = decide(o);
    expect(d.status.phase).toBe('Running');
    expect(crdViolations(d.status)).toEqual([]);
    expect(d.status.progress).toMatchObject({
      currentBytes: 1_000_000,
      totalBytes: 1_000_000,
      percent: '100%',
      etaSeconds: 0,
    });
  });

  it('RetryLimitExceeded with a huge chain and a failed start with huge stderr stay within bounds', () => {
    const before = HUGE.chain
      .map(({ position, path, format }) => ({ position, path, format }))
      .slice(0, MAX_CHAIN_ITEMS);
    const retry = decide(
      obs(bp({ phase: 'Running', reason: 'Pulling', attempts: 4, retries: 3, backingChain: { before } }), {
        hypervisor: { kind: 'ok', disk: HUGE, job: null },
      }),
    );
    expect(retry.status.reason).toBe('RetryLimitExceeded');
    expect(crdViolations(retry.status)).toEqual([]);

    const o = obs(bp(), { hypervisor: { kind: 'ok', disk: HUGE, job: null } });
    const started = decide(o);
    expect(started.action.type).toBe('startPull');
    expect(crdViolations(started.status)).toEqual([]);
    const failed = decideActionError(o, started, new Error(STDERR))!;
    expect(failed.status.reason).toBe('JobFailed');
    expect(crdViolations(failed.status)).toEqual([]);
    expect(failed.status.message).toMatch(/^starting the pull failed: error: internal error/);
  });

  it('a pull to a base over a chain cut at maxItems still completes (the goal does not depend on the cut part)', () => {
    const spec = { base: { position: 2 } };
    const first = decide(obs(bp(undefined, spec), { hypervisor: { kind: 'ok', disk: HUGE, job: null } }));
    expect(first.action.type).toBe('startPull');
    const recorded = first.status.backingChain!;
    expect(recorded.before!.length).toBeLessThan(HUGE.chain.length);
    expect(recorded.basePath).toBe(HUGE.chain[2]!.path);
    // After the pull: the top, then the base and everything below it, renumbered.
    const pulled: DiskInfo = {
      target: 'vda',
      chain: [HUGE.chain[0]!, ...HUGE.chain.slice(2)].map((l, i) => ({ ...l, position: i })),
    };
    const done = decide(obs(bp(first.status, spec), { hypervisor: { kind: 'ok', disk: pulled, job: null } }));
    expect(done.status.phase).toBe('Completed');
    expect(done.status.reason).toBe('Completed');
    expect(crdViolations(done.status)).toEqual([]);
  });
});

describe('truncateText', () => {
  it('leaves short text alone and cuts long text to at most max with the marker', () => {
    expect(truncateText('abc', 3)).toBe('abc');
    const t = truncateText('x'.repeat(100), 50);
    expect(t.length).toBeLessThanOrEqual(50);
    expect(t.length).toBeGreaterThan(45);
    expect(t).toMatch(/^x+… \[truncated, \d+ more characters\]$/);
    const kept = t.indexOf('…');
    expect(t).toContain(`truncated, ${100 - kept} more characters`);
  });
});
