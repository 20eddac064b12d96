/**
 * The executor: intent write -> action -> one outcome write (KubeVirt's execute -> sync ->
 * updateStatus(syncErr), with our intent write in front, which none of them has).
 * - A start or an abort is recorded in the status first (status.job, the persisted intent),
 *   guarded by the resourceVersion that was read: if that write conflicts (the user changed the
 *   object meanwhile) nothing is done, and the fresh object is reconciled again.
 * - The action is bounded by actionTimeoutMs: past it, its command is ended and the call fails
 *   with HypervisorError Timeout (a start: recorded Unanswered, the next look tells if it ran).
 * - A failed action becomes the Decider's actionError decision, or is thrown (the work queue
 *   retries with backoff).
 * - The outcome of an action taken is a fact: written again on the fresh object after a
 *   conflict (StatusWriter), never dropped.
 */
import { BLOCKPULL_REF, FINALIZER, type BlockPull } from '../api/types.ts';
import { assertNever } from '../api/assert-never.ts';
import { objectKey } from '../api/object-key.ts';
import { HypervisorError, isHypervisorError } from '../hypervisor/errors.ts';
import type { BlockJobDriver } from '../hypervisor/types.ts';
import { describeApiError, isNotFound, setFinalizers, type KubeClients } from '../kube/client.ts';
import type { OperatorMetrics } from '../kube/metrics.ts';
import type { Logger } from '../log.ts';
import type { BlockPulls } from './blockpulls.ts';
import { startMayHaveRun, type Action, type Decider, type Decision, type Observation } from './decide.ts';
import { jobKey, type PullMemory } from './pull-memory.ts';
import type { StatusWriter } from './status-writer.ts';

/** Default of ExecutorOptions.actionTimeoutMs (BLOCKPULL_ACTION_TIMEOUT_MS). */
export const DEFAULT_ACTION_TIMEOUT_MS = 10_000;

/** How a pass's execution ended. */
export type Executed =
  /** The intent was not recorded (the object changed or is gone): nothing was done. */
  | { readonly kind: 'notActed' }
  /** Our finalizer is gone: the BlockPull is forgotten. */
  | { readonly kind: 'finalizerRemoved' }
  /** Only our finalizer was added: the next pass (on the object the patch returned) goes on. */
  | { readonly kind: 'finalizerAdded' }
  /** Acted (or nothing to do), and the outcome written. `final`: the decision the outcome came from. */
  | { readonly kind: 'written'; readonly final: Decision };

export interface ExecutorOptions {
  readonly clients: KubeClients;
  readonly writer: StatusWriter;
  readonly blockPulls: BlockPulls;
  readonly memory: PullMemory;
  readonly decider: Decider;
  readonly metrics?: OperatorMetrics;
  /** How long an action (start, bandwidth change, abort) may take before it is ended. */
  readonly actionTimeoutMs: number;
}

export class Executor {
  readonly #o: ExecutorOptions;

  constructor(options: ExecutorOptions) {
    this.#o = options;
  }

  /**
   * Record the intent, act, then write the one outcome. `remember` runs once the outcome is known
   * and before it is written (this process's memory: slots, samples, adoption).
   */
  async execute(
    bp: BlockPull,
    obs: Observation,
    decision: Decision,
    driver: BlockJobDriver | undefined,
    log: Logger,
    remember: (final: Decision) => void,
  ): Promise<Executed> {
    const key = objectKey(bp);
    const writer = this.#o.writer;
    let stored = bp;
    if (decision.action.type === 'startPull' || decision.action.type === 'abort') {
      const w = await writer.write(bp, decision.status, log);
      if (w.kind === 'conflict' || w.kind === 'gone') {
        log.debug({ action: decision.action.type }, 'intent not recorded (the object changed or is gone); not acting');
        return { kind: 'notActed' };
      }
      if (w.kind === 'written') stored = w.bp;
    }
    const final = await this.#actOrMapError(key, bp, obs, decision, driver, log);
    const acted = final === decision;
    if (decision.action.type === 'removeFinalizer' && acted) return { kind: 'finalizerRemoved' };
    // The next pass looks at libvirt and writes the status: a "Created" status before it would be one more write each.
    if (decision.action.type === 'addFinalizer' && acted && writer.lastWritten(key) !== undefined)
      return { kind: 'finalizerAdded' };
    remember(final);
    const base =
      decision.action.type === 'addFinalizer' ? (writer.lastWritten(key) ?? (await writer.fresh(bp))) : stored;
    // The outcome of an action taken (start confirmed or refused) is a fact: never dropped on a conflict.
    const outcome = acted ? decision.afterAction : final.status;
    await writer.write(base, outcome ?? final.status, log, outcome !== undefined);
    return { kind: 'written', final };
  }

  /** The action; its failure mapped by the Decider (or thrown). The decision itself when it succeeded. */
  async #actOrMapError(
    key: string,
    bp: BlockPull,
    obs: Observation,
    decision: Decision,
    driver: BlockJobDriver | undefined,
    log: Logger,
  ): Promise<Decision> {
    const action = decision.action;
    const startKey =
      action.type === 'startPull'
        ? jobKey(decision.status.launcher?.pod ?? '', action.domain, action.target)
        : undefined;
    // Recorded before asking: a start whose answer is lost (timeout) may still have started the job.
    if (startKey !== undefined) this.#o.memory.of(key).started = startKey;
    try {
      await this.#act(bp, action, driver, log);
      return decision;
    } catch (err) {
      // Refused for sure: nothing was started.
      if (startKey !== undefined && !startMayHaveRun(err)) delete this.#o.memory.of(key).started;
      const mapped = this.#o.decider.actionError(obs, decision, err);
      log.warn(
        {
          action: action.type,
          ...(mapped !== undefined ? { reason: mapped.status.reason } : {}),
          error: describeApiError(err),
        },
        'action failed',
      );
      if (mapped === undefined) throw err;
      return mapped;
    }
  }

  async #act(bp: BlockPull, action: Action, observedWith: BlockJobDriver | undefined, log: Logger): Promise<void> {
    const driver = (): BlockJobDriver => {
      if (observedWith === undefined) throw new HypervisorError('Unreachable', 'no driver for this BlockPull');
      return observedWith;
    };
    const { namespace, name, resourceVersion } = { ...bp.metadata, resourceVersion: bp.metadata.resourceVersion ?? '' };
    const finalizers = bp.metadata.finalizers ?? [];
    switch (action.type) {
      case 'none':
        return;
      case 'addFinalizer': {
        this.#o.writer.forgetStored(objectKey(bp));
        const raw = await setFinalizers(this.#o.clients, BLOCKPULL_REF, namespace, name, resourceVersion, [
          ...finalizers,
          FINALIZER,
        ]);
        // Remember what the patch stored (the cache may not have it yet).
        const p = this.#o.blockPulls.parse(raw);
        if (!(p instanceof Error)) this.#o.writer.wroteMetadata(p);
        return;
      }
      case 'removeFinalizer':
        try {
          await setFinalizers(
            this.#o.clients,
            BLOCKPULL_REF,
            namespace,
            name,
            resourceVersion,
            finalizers.filter((f) => f !== FINALIZER),
          );
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
        log.info('finalizer removed');
        return;
      case 'startPull':
        delete this.#o.memory.of(objectKey(bp)).lastJobError;
        await this.#bounded('the start of the pull (virsh blockpull)', (signal) =>
          driver().startPull(action.domain, action.target, {
            ...(action.base !== undefined ? { base: action.base } : {}),
            ...(action.bandwidth > 0 ? { bandwidth: action.bandwidth } : {}),
            signal,
          }),
        );
        this.#o.metrics?.pullsStarted.inc();
        log.info(
          { domain: action.domain, target: action.target, base: action.base, bandwidth: action.bandwidth },
          'block pull started',
        );
        return;
      case 'setBandwidth':
        await this.#bounded('the bandwidth change (virsh blockjob --bandwidth)', (signal) =>
          driver().setBandwidth(action.domain, action.target, action.bandwidth, { signal }),
        );
        log.info({ bandwidth: action.bandwidth }, 'bandwidth changed');
        return;
      case 'abort':
        try {
          await this.#bounded('the abort (virsh blockjob --abort)', (signal) =>
            driver().abort(action.domain, action.target, { signal }),
          );
        } catch (err) {
          // Already gone: what we wanted.
          if (!isHypervisorError(err, 'NoJob')) throw err;
        }
        log.info({ domain: action.domain, target: action.target }, 'block job abort requested');
        return;
      default:
        assertNever(action);
    }
  }

  /**
   * Run an action with its bound: past actionTimeoutMs its command is ended (the signal) and the
   * call fails with HypervisorError Timeout, also when a driver does not heed the signal.
   */
  async #bounded(what: string, run: (signal: AbortSignal) => Promise<void>): Promise<void> {
    const ms = this.#o.actionTimeoutMs;
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err = new HypervisorError('Timeout', `${what} did not return within ${ms} ms; the command was ended`);
        controller.abort(err);
        reject(err);
      }, ms);
    });
    const running = run(controller.signal);
    // Settles after the bound when the driver ignores the signal: nobody waits for it then.
    running.catch(() => undefined);
    try {
      await Promise.race([running, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }
}
