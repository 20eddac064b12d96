/**
 * The slots this process holds, and the order in which waiting BlockPulls are woken.
 *
 * The ledger is the process's own record of the pulls it knows to run or is starting: a start
 * takes its slot here synchronously, in the same turn of the event loop as the slot check (after
 * decide chose startPull, before the intent write), so concurrent workers never both take the
 * last slot; the cache, which shows a start only after its status write comes back, cannot do
 * that. A slot is given back when the start fails or does not answer, when the job is seen gone
 * (the BlockPull is no longer Running), and when the BlockPull is forgotten.
 */
import { splitKey } from '../api/object-key.ts';

export class SlotLedger {
  /** BlockPull key -> node of its launcher. */
  readonly #held = new Map<string, string>();

  hold(key: string, node: string): void {
    this.#held.set(key, node);
  }

  /** True when `key` held a slot. */
  release(key: string): boolean {
    return this.#held.delete(key);
  }

  has(key: string): boolean {
    return this.#held.has(key);
  }

  entries(): ReadonlyMap<string, string> {
    return this.#held;
  }

  /** How many of the held slots are on `node`. */
  heldOn(node: string): number {
    let n = 0;
    for (const held of this.#held.values()) if (held === node) n++;
    return n;
  }
}

/**
 * The node's progress looks are spread at least this far apart on average: each look is one
 * `virsh blockjob` in the launcher pod (through pods/exec: a runc exec, containerd, kubelet and
 * API server work, about 85 ms of the node's CPU measured by bench:exec-fanout), and they share
 * the node's CPU with the QEMU processes doing the copy. So at most 2 looks a second per node,
 * however many pulls run there.
 */
export const NODE_LOOK_SPACING_MS = 500;

/**
 * When a running pull looks at its job again: every statusUpdateIntervalMs, or less often when
 * many pulls run on its node (`runningOnNode` x NODE_LOOK_SPACING_MS). Completion does not wait
 * for it: the job's events (or the driver's fallback poll) wake the BlockPull when it ends.
 */
export function progressLookIntervalMs(statusUpdateIntervalMs: number, runningOnNode: number): number {
  return Math.max(statusUpdateIntervalMs, runningOnNode * NODE_LOOK_SPACING_MS);
}

/**
 * Waiting BlockPulls in the order to wake them when a slot frees: round-robin by namespace (one
 * of each namespace, then the next of each), starting with the namespace after `after` in name
 * order, so that no namespace's waiters are always looked at first.
 */
export function roundRobinByNamespace(keys: readonly string[], after: string | undefined): string[] {
  const byNs = new Map<string, string[]>();
  const seen = new Set<string>();
  for (const k of keys) {
    if (seen.has(k)) continue;
    seen.add(k);
    const { namespace } = splitKey(k);
    let list = byNs.get(namespace);
    if (list === undefined) byNs.set(namespace, (list = []));
    list.push(k);
  }
  const names = [...byNs.keys()].sort();
  const first = after === undefined ? 0 : names.findIndex((n) => n > after);
  const order = first <= 0 ? names : [...names.slice(first), ...names.slice(0, first)];
  const out: string[] = [];
  for (let round = 0; out.length < seen.size; round++) {
    let added = false;
    for (const ns of order) {
      const k = byNs.get(ns)![round];
      if (k !== undefined) {
        out.push(k);
        added = true;
      }
    }
    if (!added) break;
  }
  return out;
}
