/**
 * What this process remembers per BlockPull between reconciles, in one place with one `forget`.
 * All of it can be lost (a restart) without harm: the truth is the disk and the stored status.
 * The status writer's records ("we wrote it, the cache has not shown it yet"), the slot ledger and
 * the per-pull metrics live in their own modules; they register here what forgetting means for
 * them, so that a BlockPull deleted is forgotten everywhere by one call.
 */
import type { BlockJobDriver, EventSubscription } from '../hypervisor/types.ts';
import type { ProgressSample, SpaceObservation } from './decide.ts';

export interface PullRecord {
  /** The last job sample, for the rate and the bytes-streamed counter. */
  sample?: ProgressSample;
  subscription?: { domain: string; driver: BlockJobDriver; sub: EventSubscription };
  /** The job this process asked libvirt to start (jobKey), until a look finds the disk without a job. */
  started?: string;
  /** The job this process adopted and has announced (Event + log line). */
  adopted?: string;
  /** Why our last job failed (QEMU's error, from the driver's events); cleared at each start. */
  lastJobError?: string;
  /** Called when lastJobError arrives (a look waiting for it, see jobError). */
  onJobError?: () => void;
  /**
   * The looks at libvirt in a row that got no answer within the observe budget, and when the
   * first was made (ms): decide() says HypervisorUnreachable only after enough of them
   * (UNREACHABLE_AFTER_LOOKS). Reset by an answered look.
   */
  unanswered?: { count: number; sinceMs: number };
  /** The last pre-flight that found too little space, how many did in a row, and when to measure again. */
  space?: { observation: SpaceObservation; shortChecks: number; nextAtMs: number; limits: string };
}

/** Identifies one job: the launcher pod, the domain and the disk target. */
export function jobKey(pod: string, domain: string, target: string): string {
  return `${pod}|${domain}|${target}`;
}

export class PullMemory {
  readonly #records = new Map<string, PullRecord>();
  readonly #onForget: ((key: string, wakeWaiters: boolean) => void)[] = [];

  /** Register what forgetting a BlockPull means elsewhere (status writer records, slots, metrics). */
  onForget(hook: (key: string, wakeWaiters: boolean) => void): void {
    this.#onForget.push(hook);
  }

  /** The record of `key`, made empty if there is none. */
  of(key: string): PullRecord {
    let r = this.#records.get(key);
    if (r === undefined) {
      r = {};
      this.#records.set(key, r);
    }
    return r;
  }

  /** The record of `key` if there is one (a look does not make one). */
  peek(key: string): PullRecord | undefined {
    return this.#records.get(key);
  }

  keys(): string[] {
    return [...this.#records.keys()];
  }

  /** Stop following `key`'s job events (its job ended, or it is forgotten). */
  unsubscribe(key: string): void {
    const r = this.#records.get(key);
    r?.subscription?.sub.stop();
    if (r !== undefined) delete r.subscription;
  }

  /** Forget `key` everywhere. `wakeWaiters`: a slot it held is given to the BlockPulls waiting for one. */
  forget(key: string, wakeWaiters = true): void {
    this.unsubscribe(key);
    this.#records.delete(key);
    for (const hook of this.#onForget) hook(key, wakeWaiters);
  }

  /** Record QEMU's reason our job failed, and wake a look waiting for it. */
  jobFailed(key: string, error: string): void {
    const r = this.of(key);
    r.lastJobError = error;
    r.onJobError?.();
  }

  /**
   * QEMU's reason our job failed, waiting at most `ms` for it (it may trail libvirt's event a
   * little): resolved by the driver's event itself, not by polling.
   */
  jobError(key: string, ms: number): Promise<string | undefined> {
    const r = this.of(key);
    if (r.lastJobError !== undefined) return Promise.resolve(r.lastJobError);
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        if (r.onJobError === done) delete r.onJobError;
        resolve(r.lastJobError);
      };
      const timer = setTimeout(done, ms);
      r.onJobError = done;
    });
  }
}
