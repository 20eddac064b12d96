/**
 * Read-only looks at libvirt (a BlockPull's chain and job) under a time budget, one at a time per
 * launcher, so that a launcher that hangs holds no worker and delays no other tenant.
 *
 * - A worker waits for a look at most `budgetMs` (BLOCKPULL_OBSERVE_TIMEOUT_MS). Past that it moves
 *   on: the look is unanswered for this pass (the gatherer counts such looks; decide.ts says
 *   HypervisorUnreachable only after enough in a row) and runs on in the
 *   background, bounded by the command's own timeout (the virsh driver kills it after 30 s).
 * - One look per launcher at a time: a second BlockPull of the same launcher waits behind a look
 *   that is still within its budget, and does not wait at all behind one past it.
 * - A launcher whose last look took longer than the budget is not waited on again: the next look
 *   runs in the background at once, until a look ends within the budget.
 * - When a background look ends, the BlockPulls that asked are woken (enqueue). A look that ended
 *   after its worker left is handed to that BlockPull's next reconcile if it is at most
 *   LATE_RESULT_MAX_AGE_MS old, so a slow but working launcher still makes progress.
 * Actions (start, abort, bandwidth) are not run here: they keep their full command timeout.
 */

/** A look that ended after its worker moved on is used by the next reconcile if this fresh. */
export const LATE_RESULT_MAX_AGE_MS = 5_000;

/**
 * `message` is the same whatever the case (status messages that change with every look would
 * rewrite the BlockPull every time); `detail` says which case, for the log.
 */
export type GateOutcome<T> =
  | { readonly kind: 'done'; readonly value: T }
  | { readonly kind: 'waiting'; readonly message: string; readonly detail: string };

interface InFlight {
  readonly startedAt: number;
  readonly requester: string;
  readonly settled: Promise<void>;
  readonly waiters: Set<string>;
}

interface LauncherState<T> {
  inFlight?: InFlight;
  /** The last look took longer than the budget: do not wait on this launcher. */
  slow: boolean;
  /** Looks that ended after their worker left, by requester. */
  readonly late: Map<string, { readonly value: T; readonly at: number }>;
}

export interface ObserveGateOptions<T> {
  readonly budgetMs: number;
  /** Wake a BlockPull (the work queue's add). */
  readonly wake: (requester: string) => void;
  /** Whether a look's result may be handed to a later reconcile (not a failure). */
  readonly usableLate: (value: T) => boolean;
  readonly now?: () => number;
  readonly lateMaxAgeMs?: number;
}

const seconds = (ms: number): string => (ms / 1000).toFixed(1);

export class ObserveGate<T> {
  readonly #options: ObserveGateOptions<T>;
  readonly #states = new WeakMap<object, LauncherState<T>>();

  constructor(options: ObserveGateOptions<T>) {
    this.#options = options;
  }

  #now(): number {
    return this.#options.now?.() ?? performance.now();
  }

  #state(launcher: object): LauncherState<T> {
    let s = this.#states.get(launcher);
    if (s === undefined) {
      s = { slow: false, late: new Map() };
      this.#states.set(launcher, s);
    }
    return s;
  }

  /**
   * Look at `launcher` (any object identifying it, e.g. its driver) for `requester` (a BlockPull
   * key) with `look`, which must not reject. `name` names the launcher in messages.
   */
  async observe(launcher: object, name: string, requester: string, look: () => Promise<T>): Promise<GateOutcome<T>> {
    const st = this.#state(launcher);
    const budget = this.#options.budgetMs;
    for (;;) {
      const late = st.late.get(requester);
      if (late !== undefined) {
        st.late.delete(requester);
        if (this.#now() - late.at <= (this.#options.lateMaxAgeMs ?? LATE_RESULT_MAX_AGE_MS))
          return { kind: 'done', value: late.value };
      }
      const busy = st.inFlight;
      if (busy === undefined) break;
      const age = this.#now() - busy.startedAt;
      if (st.slow || age >= budget) {
        // Past its budget: not waited on; this BlockPull is woken when it ends.
        if (busy.requester !== requester) busy.waiters.add(requester);
        return {
          kind: 'waiting',
          message: waitingMessage(name, budget),
          detail: `a look started ${seconds(age)} s ago (by ${busy.requester}) has not ended`,
        };
      }
      // Within its budget: wait for it (at most the rest of it), then look ourselves.
      await Promise.race([busy.settled, sleep(budget - age)]);
    }

    const startedAt = this.#now();
    // The worker leaves at once when the launcher was slow last time, else after the budget.
    let workerLeft = st.slow;
    let ended: { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: unknown } | undefined;
    let resolveSettled!: () => void;
    const flight: InFlight = {
      startedAt,
      requester,
      waiters: new Set(),
      settled: new Promise<void>((r) => (resolveSettled = r)),
    };
    st.inFlight = flight;
    const settle = (outcome: NonNullable<typeof ended>): void => {
      ended = outcome;
      const endedAt = this.#now();
      st.inFlight = undefined;
      st.slow = endedAt - startedAt > budget;
      resolveSettled();
      if (workerLeft) {
        // Keep the result for the requester's next reconcile and wake it.
        if (outcome.ok && this.#options.usableLate(outcome.value))
          st.late.set(requester, { value: outcome.value, at: endedAt });
        this.#options.wake(requester);
      }
      for (const w of flight.waiters) this.#options.wake(w);
    };
    const looking = look().then(
      (value) => settle({ ok: true, value }),
      (error: unknown) => settle({ ok: false, error }),
    );
    if (workerLeft) {
      return {
        kind: 'waiting',
        message: waitingMessage(name, budget),
        detail: 'the last look took longer than the budget: looking again in the background',
      };
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([looking, new Promise<void>((r) => (timer = setTimeout(r, budget)))]);
    clearTimeout(timer);
    const outcome = ended; // set by settle() if the look ended first
    if (outcome !== undefined) {
      if (outcome.ok) return { kind: 'done', value: outcome.value };
      throw outcome.error;
    }
    workerLeft = true;
    return {
      kind: 'waiting',
      message: waitingMessage(name, budget),
      detail: 'no answer within the budget: the look runs on in the background',
    };
  }
}

function waitingMessage(name: string, budgetMs: number): string {
  return `libvirt in ${name} did not answer within ${budgetMs} ms; not waiting on it: its command runs on in the background (killed at its timeout) and this BlockPull is looked at again when it answers`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.max(0, ms)));
}
