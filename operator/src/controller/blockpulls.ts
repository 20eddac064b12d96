/**
 * The BlockPulls as this process knows them: the informer cache (each object parsed once per
 * version), each replaced by our own newer write of it (status-writer.ts), read through the
 * cache's indexes (indexes.ts: no scan of all BlockPulls per reconcile or per event). It serves
 * the three questions the Reconciler asks about other BlockPulls: who holds a disk, how many
 * pulls run (slot counting), and whom to wake when a disk or a slot is released.
 */
import { objectKey, splitKey } from '../api/object-key.ts';
import { BLOCKPULL_REF, parseBlockPull, type BlockPull } from '../api/types.ts';
import { getCustomObject, type KubeClients } from '../kube/client.ts';
import { StringInterner } from '../kube/intern.ts';
import { diskHolder } from './decide.ts';
import { BP_BY_DISK, BP_RUNNING_BY_NODE, BP_WAITING_FOR_SLOT, diskIndexKey } from './indexes.ts';
import type { StatusWriter } from './status-writer.ts';

/** Read access to an informer cache (WatchdogInformer implements it). */
export interface CacheReader {
  get(namespace: string | undefined, name: string): unknown;
  list(namespace?: string): readonly unknown[];
  /** Objects filed under `value` in index `name` (indexes.ts); without it, list() is scanned. */
  byIndex?(name: string, value: string): readonly unknown[];
  indexValues?(name: string): ReadonlyMap<string, ReadonlySet<string>>;
}

export type ReadResult = { kind: 'ok'; bp: BlockPull } | { kind: 'gone' } | { kind: 'invalid'; error: Error };

interface Loose {
  metadata?: { namespace?: string };
  spec?: { vmiName?: string; disk?: string };
  status?: { reason?: string };
}

export class BlockPulls {
  readonly #cache: CacheReader;
  readonly #writer: StatusWriter;
  readonly #clients: KubeClients;
  /** Each cached object parsed once. */
  readonly #parsed = new WeakMap<object, BlockPull | Error>();
  readonly #interner = new StringInterner();

  constructor(cache: CacheReader, writer: StatusWriter, clients: KubeClients) {
    this.#cache = cache;
    this.#writer = writer;
    this.#clients = clients;
  }

  /**
   * The informer's transform (Reconciler.cacheForm): cache the parsed object itself, its strings
   * shared with the other cached objects (intern.ts), or a malformed one as it came.
   */
  cacheForm<T extends object>(raw: T): T {
    const p = this.parse(raw);
    if (p instanceof Error) return raw;
    this.#interner.intern(p);
    this.#parsed.set(p, p);
    return p as unknown as T;
  }

  /** A cached object, parsed once per version (the cache replaces an object on each change). */
  parse(raw: unknown): BlockPull | Error {
    if (raw === null || typeof raw !== 'object') return new Error('not an object');
    let p = this.#parsed.get(raw);
    if (p === undefined) {
      try {
        p = parseBlockPull(raw);
      } catch (err) {
        p = err instanceof Error ? err : new Error(String(err));
      }
      this.#parsed.set(raw, p);
    }
    return p;
  }

  /**
   * The BlockPull to reconcile: the cached one, or the one our last write returned when that is
   * newer (the cache lags our own writes). Not in the cache: a GET (deleted, or not seen yet).
   */
  async read(key: string): Promise<ReadResult> {
    const { namespace, name } = splitKey(key);
    const cached = this.#cache.get(namespace, name);
    let parsed: BlockPull | Error;
    if (cached === undefined) {
      const raw = await getCustomObject(this.#clients, BLOCKPULL_REF, namespace, name);
      if (raw === undefined) return { kind: 'gone' };
      parsed = this.parse(raw);
    } else {
      parsed = this.parse(cached);
    }
    if (parsed instanceof Error) return { kind: 'invalid', error: parsed };
    const newest = this.#writer.newest(parsed);
    // The cache has caught up with our write (or it was of another object of that name).
    if (newest === parsed) this.#writer.forgetStored(key);
    return { kind: 'ok', bp: newest };
  }

  /** Cached BlockPulls filed under `value` in `index`, parsed (malformed ones skipped), each replaced by our newer write of it. */
  #indexed(index: string, value: string, match: (raw: Loose) => boolean): BlockPull[] {
    const c = this.#cache;
    const raws = c.byIndex !== undefined ? c.byIndex(index, value) : c.list().filter((raw) => match(raw as Loose));
    const out: BlockPull[] = [];
    for (const raw of raws) {
      const p = this.parse(raw);
      if (!(p instanceof Error)) out.push(this.#writer.newest(p));
    }
    return out;
  }

  /** The other BlockPulls naming the same disk (namespace, VMI, disk). */
  othersOnDisk(bp: BlockPull): BlockPull[] {
    const { namespace, name } = bp.metadata;
    const { vmiName, disk } = bp.spec;
    return this.#indexed(
      BP_BY_DISK,
      diskIndexKey(namespace, vmiName, disk),
      (b) => b.metadata?.namespace === namespace && b.spec?.vmiName === vmiName && b.spec.disk === disk,
    ).filter((b) => b.metadata.name !== name);
  }

  /** Key of the BlockPull holding `bp`'s disk (decide.ts diskHolder), judged with our own copy of `bp`. */
  diskHolder(bp: BlockPull): string | null {
    return diskHolder([...this.othersOnDisk(bp), bp], bp);
  }

  /**
   * Running BlockPulls (key -> node), cluster-wide, other than `self`: the cache's Running index,
   * corrected by our writes the cache does not have yet, and those this process knows to run.
   */
  runningOthers(self: string, knownRunning: ReadonlyMap<string, string>): Map<string, string> {
    const running = new Map<string, string>();
    const c = this.#cache;
    if (c.indexValues !== undefined) {
      for (const [node, keys] of c.indexValues(BP_RUNNING_BY_NODE)) {
        for (const k of keys) {
          // Our newer write of it (not in the cache yet) says whether it still runs.
          const written = this.#writer.lastWritten(k);
          const { namespace, name } = splitKey(k);
          const cached = written !== undefined ? this.parse(c.get(namespace, name)) : undefined;
          const cur = cached !== undefined && !(cached instanceof Error) ? this.#writer.newest(cached) : undefined;
          if (cur === undefined) running.set(k, node);
          else if (cur.status?.phase === 'Running') running.set(k, cur.status.launcher?.node ?? '');
        }
      }
      for (const [k, w] of this.#writer.inFlight())
        if (w.status?.phase === 'Running') running.set(k, w.status.launcher?.node ?? '');
    } else {
      for (const raw of c.list()) {
        const b = this.parse(raw);
        if (!(b instanceof Error) && b.status?.phase === 'Running')
          running.set(objectKey(b), b.status.launcher?.node ?? '');
      }
    }
    for (const [k, node] of knownRunning) running.set(k, node);
    running.delete(self);
    return running;
  }

  /** Keys of the BlockPulls waiting for a slot (also those whose wait the cache has not seen yet). */
  waitingForSlot(): string[] {
    const c = this.#cache;
    let keys: string[];
    if (c.indexValues !== undefined) {
      keys = [];
      for (const [namespace] of c.indexValues(BP_WAITING_FOR_SLOT))
        keys.push(...this.#indexed(BP_WAITING_FOR_SLOT, namespace, () => true).map(objectKey));
    } else {
      keys = [];
      for (const raw of c.list()) {
        const p = this.parse(raw);
        if (!(p instanceof Error) && this.#writer.newest(p).status?.reason === 'WaitingForSlot')
          keys.push(objectKey(p));
      }
    }
    for (const [k, w] of this.#writer.inFlight()) if (w.status?.reason === 'WaitingForSlot') keys.push(k);
    return keys;
  }

  /**
   * Namespaces with a BlockPull waiting for a slot, from the index's values (no walk over the
   * waiting BlockPulls themselves), and those of our waits the cache has not seen yet.
   */
  namespacesWaitingForSlot(): Set<string> {
    const c = this.#cache;
    const out = new Set<string>();
    if (c.indexValues !== undefined) {
      for (const [namespace, keys] of c.indexValues(BP_WAITING_FOR_SLOT)) if (keys.size > 0) out.add(namespace);
    } else {
      for (const k of this.waitingForSlot()) out.add(splitKey(k).namespace);
    }
    for (const [k, w] of this.#writer.inFlight())
      if (w.status?.reason === 'WaitingForSlot') out.add(splitKey(k).namespace);
    return out;
  }
}
