import { describe, expect, it } from 'vitest';
import { API_VERSION, FINALIZER, KIND, parseBlockPull, type BlockPullStatus } from '../api/types.ts';
import type { KubeClients } from '../kube/client.ts';
import { createLogger } from '../log.ts';
import { canonicalJson, isNewerVersion, StatusWriter } from './status-writer.ts';

describe('canonicalJson', () => {
  it('ignores key order and undefined, keeps array order', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, 1], c: undefined } })).toBe(canonicalJson({ a: { d: [2, 1] }, b: 1 }));
    expect(canonicalJson({ a: [1, 2] })).not.toBe(canonicalJson({ a: [2, 1] }));
    expect(canonicalJson({ a: 1 })).not.toBe(canonicalJson({ a: 2 }));
  });
});

describe('isNewerVersion', () => {
  it('compares etcd revisions as numbers; anything else is not newer', () => {
    expect(isNewerVersion('10', '9')).toBe(true);
    expect(isNewerVersion('9', '10')).toBe(false);
    expect(isNewerVersion('9', '9')).toBe(false);
    expect(isNewerVersion('x', '1')).toBe(false);
    expect(isNewerVersion(undefined, '1')).toBe(false);
  });
});

/** One record per BlockPull: the object our last write stored (while the cache lags) and the watch echo of our last status write. */
describe('StatusWriter own writes', () => {
  const object = (rv: string, status?: BlockPullStatus) =>
    parseBlockPull({
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name: 'p', namespace: 'ns', uid: 'u1', resourceVersion: rv, generation: 1, finalizers: [FINALIZER] },
      spec: { vmiName: 'vm', disk: 'rootdisk' },
      ...(status ? { status } : {}),
    });

  function writer() {
    let rv = 5;
    const enqueued: string[] = [];
    const clients = {
      custom: {
        patchNamespacedCustomObjectStatus: (req: { body: { value: unknown }[] }) =>
          Promise.resolve(object(String(++rv), req.body[1]!.value as BlockPullStatus)),
      },
    } as unknown as KubeClients;
    let nowMs = 0;
    const w = new StatusWriter({
      clients,
      statusUpdateIntervalMs: 2000,
      enqueue: (k) => enqueued.push(k),
      now: () => new Date(nowMs),
    });
    return { w, enqueued, advance: (ms: number) => (nowMs += ms) };
  }
  const log = createLogger({ level: 'silent' });

  it('the stored object replaces an older cached one until the cache catches up; the echo is recognised once', async () => {
    const { w } = writer();
    const cached = object('5');
    const r = await w.write(cached, { phase: 'Pending', reason: 'VMINotFound', message: 'x' }, log);
    expect(r.kind).toBe('written');
    expect(w.newest(cached).metadata.resourceVersion).toBe('6');
    expect([...w.inFlight()].map(([k]) => k)).toEqual(['ns/p']);
    // A watch update older than our write: not ours, the record stays.
    expect(w.isOwnWrite('ns/p', '5')).toBe(false);
    expect(w.lastWritten('ns/p')?.metadata.resourceVersion).toBe('6');
    // Our write comes back: recognised once; the cache has it now, so the record's object is dropped.
    expect(w.isOwnWrite('ns/p', '6')).toBe(true);
    expect(w.isOwnWrite('ns/p', '6')).toBe(false);
    expect(w.lastWritten('ns/p')).toBeUndefined();
    expect([...w.inFlight()]).toEqual([]);
  });

  it('a metadata write replaces the stored object and keeps the status echo', async () => {
    const { w } = writer();
    await w.write(object('5'), { phase: 'Pending', reason: 'VMINotFound', message: 'x' }, log);
    w.forgetStored('ns/p');
    expect(w.lastWritten('ns/p')).toBeUndefined();
    w.wroteMetadata(object('8'));
    expect(w.lastWritten('ns/p')?.metadata.resourceVersion).toBe('8');
    // The status write's echo (6) is still ours, and the newer stored object (8) stays.
    expect(w.isOwnWrite('ns/p', '6')).toBe(true);
    expect(w.lastWritten('ns/p')?.metadata.resourceVersion).toBe('8');
    w.forget('ns/p');
    expect(w.lastWritten('ns/p')).toBeUndefined();
  });

  it('progress is throttled to statusUpdateIntervalMs; a transition is written at once', async () => {
    const { w, advance } = writer();
    const running: BlockPullStatus = { phase: 'Running', reason: 'Pulling', message: 'a', progress: { percent: '1%' } };
    const first = await w.write(object('5'), running, log);
    expect(first.kind).toBe('written');
    const stored = first.kind === 'written' ? first.bp : object('6');
    advance(500);
    expect((await w.write(stored, { ...running, progress: { percent: '2%' } }, log)).kind).toBe('skipped');
    expect((await w.write(stored, { ...running, reason: 'Adopted' }, log)).kind).toBe('written');
    advance(2000);
    expect((await w.write(stored, { ...running, progress: { percent: '3%' } }, log)).kind).toBe('written');
  });
});
