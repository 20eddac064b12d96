/**
 * The pull slots this process has taken for starts it is making right now. Reconcile workers run
 * concurrently, and the cache shows a start only after its intent write comes back: two workers
 * that each counted the cache could both take the last slot. A start therefore reserves its slot
 * here, in one synchronous step with the count (nothing else runs in between in one Node.js
 * process), before it records its intent; the reservation ends when the start's outcome is known
 * (Running is then counted from this process's own record, a refused or timed-out start frees it).
 */
export class SlotLedger {
  /** BlockPull key -> the node its start runs on. */
  readonly #held = new Map<string, string>();

  /** The starts in flight, key -> node. */
  held(): ReadonlyMap<string, string> {
    return this.#held;
  }

  reserve(key: string, node: string): void {
    this.#held.set(key, node);
  }

  release(key: string): void {
    this.#held.delete(key);
  }
}
