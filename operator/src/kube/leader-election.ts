/**
 * Lease-based leader election (coordination.k8s.io/v1), a port of client-go's
 * tools/leaderelection with controller-runtime's defaults (lease 15 s, renew deadline 10 s,
 * retry period 2 s) and ReleaseOnCancel.
 *
 * - Acquire: every retryPeriod (with up to 20 % jitter) read the Lease. Free (absent, empty
 *   holder, or not renewed for leaseDuration as measured on OUR clock since we last saw it
 *   change) → take it with an update carrying the resourceVersion we read (optimistic
 *   concurrency: two candidates racing get one 200 and one 409).
 * - Lead: onStartedLeading(signal) is called; renew every retryPeriod (an update of the Lease as
 *   we last wrote it, without reading it first; on a conflict it is read). If no renewal succeeds
 *   for renewDeadline, leadership is lost: onStoppedLeading() is called, then the signal aborts.
 *   Every Lease request is aborted at the renew deadline (withTimeout), so a hung connection
 *   to the API server cannot keep a stale leader acting.
 *   Like controller-runtime, the process should then exit (main.ts does process.exit(1)): a
 *   controller that lost the lease must stop acting at once.
 * - Stop (signal passed to run() aborts): stop leading, and if releaseOnCancel, release the
 *   Lease (holder "", leaseDurationSeconds 1) so a standby takes over in ~retryPeriod instead
 *   of waiting for expiry.
 */
import type { CoordinationV1Api, V1Lease } from '@kubernetes/client-node';
import { V1MicroTime } from '@kubernetes/client-node';
import type { Logger } from '../log.ts';
import { describeApiError, isConflict, isNotFound, isAlreadyExists, withTimeout } from './client.ts';

export interface LeaderElectorOptions {
  readonly coordination: CoordinationV1Api;
  readonly namespace: string;
  readonly leaseName: string;
  /** This candidate's identity (pod name). Must be unique among candidates. */
  readonly identity: string;
  readonly leaseDurationMs?: number;
  readonly renewDeadlineMs?: number;
  readonly retryPeriodMs?: number;
  /** Release the Lease when run()'s signal aborts. Default true. */
  readonly releaseOnCancel?: boolean;
  readonly logger?: Logger;
  /**
   * Called when this candidate becomes leader. `signal` aborts when leadership ends (lost or
   * stopped). May return a promise; run() waits for it after leadership ends, before release.
   */
  onStartedLeading(signal: AbortSignal): void | Promise<void>;
  /** Called once when leadership ends, lost or released, before the signal of onStartedLeading aborts. */
  onStoppedLeading(): void;
  /** Called when the observed holder changes (including to ourselves). */
  onNewLeader?(identity: string): void;
  /** Leader gauge and transitions counter (kube/metrics.ts). */
  readonly metrics?: { leader: { set(v: number): void }; leaderTransitions: { inc(): void } };
}

export const LEADER_ELECTION_DEFAULTS = {
  leaseDurationMs: 15_000,
  renewDeadlineMs: 10_000,
  retryPeriodMs: 2_000,
} as const;

interface Observed {
  holder: string;
  /** renewTime as written by the holder (used to detect change, not compared to our clock). */
  renewTime: string;
  leaseDurationSeconds: number;
  /** Our monotonic clock when we saw this record first. */
  observedAt: number;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

const jitter = (ms: number) => ms * (1 + Math.random() * 0.2);

export class LeaderElector {
  readonly #options: LeaderElectorOptions;
  readonly #leaseDurationMs: number;
  readonly #renewDeadlineMs: number;
  readonly #retryPeriodMs: number;
  readonly #log: Logger | undefined;
  #observed: Observed | undefined;
  #lease: V1Lease | undefined;
  #leader = false;
  #lastOkAt = -Infinity;
  #running = false;

  constructor(options: LeaderElectorOptions) {
    this.#options = options;
    this.#leaseDurationMs = options.leaseDurationMs ?? LEADER_ELECTION_DEFAULTS.leaseDurationMs;
    this.#renewDeadlineMs = options.renewDeadlineMs ?? LEADER_ELECTION_DEFAULTS.renewDeadlineMs;
    this.#retryPeriodMs = options.retryPeriodMs ?? LEADER_ELECTION_DEFAULTS.retryPeriodMs;
    if (!(this.#renewDeadlineMs < this.#leaseDurationMs))
      throw new Error('renewDeadline must be less than leaseDuration');
    if (!(this.#retryPeriodMs < this.#renewDeadlineMs)) throw new Error('retryPeriod must be less than renewDeadline');
    this.#log = options.logger?.child({
      component: 'leader-election',
      lease: `${options.namespace}/${options.leaseName}`,
      identity: options.identity,
    });
  }

  get identity(): string {
    return this.#options.identity;
  }

  isLeader(): boolean {
    return this.#leader;
  }

  /** The holder we last observed ('' if none). */
  observedLeader(): string {
    return this.#observed?.holder ?? '';
  }

  /** True when an API call about the Lease succeeded within the last leaseDuration. */
  isParticipating(): boolean {
    return this.#running && performance.now() - this.#lastOkAt < this.#leaseDurationMs;
  }

  /**
   * Campaign until `signal` aborts: acquire, lead, and on losing the lease return (a lost
   * lease ends run(); callers exit the process). Resolves after release on abort.
   * Returns 'lost' if leadership was lost, 'stopped' if the signal aborted.
   */
  async run(signal: AbortSignal): Promise<'lost' | 'stopped'> {
    if (this.#running) throw new Error('LeaderElector.run() called twice');
    this.#running = true;
    try {
      const acquired = await this.#acquire(signal);
      if (!acquired) return 'stopped';
      return await this.#lead(signal);
    } finally {
      this.#running = false;
    }
  }

  async #acquire(signal: AbortSignal): Promise<boolean> {
    this.#log?.info('attempting to acquire leader lease');
    while (!signal.aborted) {
      if (await this.#tryAcquireOrRenew(this.#renewDeadlineMs)) {
        this.#log?.info('acquired leader lease');
        return true;
      }
      await sleep(jitter(this.#retryPeriodMs), signal);
    }
    return false;
  }

  async #lead(signal: AbortSignal): Promise<'lost' | 'stopped'> {
    const leading = new AbortController();
    this.#setLeader(true);
    let callback: Promise<void> = Promise.resolve();
    try {
      callback = Promise.resolve(this.#options.onStartedLeading(leading.signal)).catch((err: unknown) => {
        this.#log?.error({ err }, 'onStartedLeading failed');
      });
    } catch (err) {
      this.#log?.error({ err }, 'onStartedLeading threw');
    }
    let result: 'lost' | 'stopped' = 'stopped';
    let lastRenew = performance.now();
    while (!signal.aborted) {
      await sleep(this.#retryPeriodMs, signal);
      if (signal.aborted) break;
      // Each attempt's requests are aborted at the renew deadline: a hung connection to the API
      // server must not keep us "leading" past it.
      const remaining = Math.max(1, this.#renewDeadlineMs - (performance.now() - lastRenew));
      if (await this.#tryAcquireOrRenew(remaining)) {
        lastRenew = performance.now();
        continue;
      }
      if (performance.now() - lastRenew >= this.#renewDeadlineMs) {
        this.#log?.error(
          { renewDeadlineMs: this.#renewDeadlineMs },
          'failed to renew leader lease within the renew deadline: leadership lost',
        );
        result = 'lost';
        break;
      }
      // Someone else holds it now (we were overtaken): no point retrying.
      if (
        this.#observed !== undefined &&
        this.#observed.holder !== this.#options.identity &&
        this.#observed.holder !== ''
      ) {
        this.#log?.error({ holder: this.#observed.holder }, 'leader lease taken by another candidate: leadership lost');
        result = 'lost';
        break;
      }
    }
    // onStoppedLeading first: a caller that fences and exits there (main.ts) does so before
    // anything listening on the signal runs and might still send a request.
    this.#setLeader(false);
    try {
      this.#options.onStoppedLeading();
    } catch (err) {
      this.#log?.error({ err }, 'onStoppedLeading threw');
    }
    leading.abort(new Error(result === 'lost' ? 'leader lease lost' : 'leader election stopped'));
    await callback;
    if (result === 'stopped' && (this.#options.releaseOnCancel ?? true)) await this.#release();
    return result;
  }

  #setLeader(v: boolean): void {
    if (this.#leader !== v) this.#options.metrics?.leaderTransitions.inc();
    this.#leader = v;
    this.#options.metrics?.leader.set(v ? 1 : 0);
  }

  #observe(lease: V1Lease): void {
    const holder = lease.spec?.holderIdentity ?? '';
    const renewTime = lease.spec?.renewTime !== undefined ? new Date(lease.spec.renewTime).toISOString() : '';
    const leaseDurationSeconds = lease.spec?.leaseDurationSeconds ?? Math.ceil(this.#leaseDurationMs / 1000);
    const prev = this.#observed;
    if (
      prev === undefined ||
      prev.holder !== holder ||
      prev.renewTime !== renewTime ||
      prev.leaseDurationSeconds !== leaseDurationSeconds
    ) {
      this.#observed = { holder, renewTime, leaseDurationSeconds, observedAt: performance.now() };
      if (prev?.holder !== holder && holder !== '') {
        this.#log?.info({ holder }, 'new leader observed');
        this.#options.onNewLeader?.(holder);
      }
    }
    this.#lease = lease;
  }

  #spec(
    acquireTime: Date,
    transitions: number,
    now: Date,
    holder = this.#options.identity,
    durationSeconds = Math.ceil(this.#leaseDurationMs / 1000),
  ) {
    return {
      holderIdentity: holder,
      leaseDurationSeconds: durationSeconds,
      acquireTime: new V1MicroTime(acquireTime.getTime()),
      renewTime: new V1MicroTime(now.getTime()),
      leaseTransitions: transitions,
    };
  }

  /** One attempt; true if we hold the lease afterwards. */
  async #tryAcquireOrRenew(timeoutMs: number): Promise<boolean> {
    const { coordination, namespace, leaseName: name, identity } = this.#options;
    const now = new Date();
    const opts = withTimeout(timeoutMs);
    // Fast path, as client-go's: the leader renews the Lease it last wrote without reading it
    // first (one request per retryPeriod instead of two). If someone else wrote or deleted it
    // meanwhile (409, 404), the Lease is read below and judged as usual.
    const mine = this.#lease;
    if (this.#leader && mine?.spec?.holderIdentity === identity && mine.metadata?.resourceVersion !== undefined) {
      try {
        const updated = await coordination.replaceNamespacedLease(
          { name, namespace, body: { ...mine, spec: { ...mine.spec, renewTime: new V1MicroTime(now.getTime()) } } },
          opts,
        );
        this.#lastOkAt = performance.now();
        this.#observe(updated);
        return true;
      } catch (err) {
        if (!isConflict(err) && !isNotFound(err)) {
          this.#log?.warn({ error: describeApiError(err) }, 'renewing leader lease failed');
          return false;
        }
        this.#log?.debug({ error: describeApiError(err) }, 'leader lease changed since our last write; reading it');
      }
    }
    let lease: V1Lease;
    try {
      lease = await coordination.readNamespacedLease({ name, namespace }, opts);
    } catch (err) {
      if (!isNotFound(err)) {
        this.#log?.warn({ error: describeApiError(err) }, 'reading leader lease failed');
        return false;
      }
      try {
        const created = await coordination.createNamespacedLease(
          {
            namespace,
            body: {
              apiVersion: 'coordination.k8s.io/v1',
              kind: 'Lease',
              metadata: { name, namespace },
              spec: this.#spec(now, 0, now),
            },
          },
          opts,
        );
        this.#lastOkAt = performance.now();
        this.#observe(created);
        return true;
      } catch (err2) {
        if (!isAlreadyExists(err2)) this.#log?.warn({ error: describeApiError(err2) }, 'creating leader lease failed');
        return false;
      }
    }
    this.#lastOkAt = performance.now();
    this.#observe(lease);
    const obs = this.#observed as Observed;
    const held = obs.holder !== '' && obs.holder !== identity;
    const valid = performance.now() - obs.observedAt < obs.leaseDurationSeconds * 1000;
    if (held && valid) return false;

    const spec = lease.spec ?? {};
    const ours = obs.holder === identity;
    const acquireTime = ours && spec.acquireTime !== undefined ? new Date(spec.acquireTime) : now;
    const transitions = (spec.leaseTransitions ?? 0) + (ours ? 0 : 1);
    try {
      const updated = await coordination.replaceNamespacedLease(
        {
          name,
          namespace,
          body: { ...lease, spec: { ...spec, ...this.#spec(acquireTime, transitions, now) } },
        },
        opts,
      );
      this.#lastOkAt = performance.now();
      this.#observe(updated);
      return true;
    } catch (err) {
      if (isConflict(err)) {
        this.#log?.debug('leader lease update conflict (another candidate wrote it)');
      } else {
        this.#log?.warn({ error: describeApiError(err) }, 'updating leader lease failed');
      }
      return false;
    }
  }

  /** Give the lease up if we still hold it (holder "", duration 1 s), like client-go's release(). */
  async #release(): Promise<void> {
    const lease = this.#lease;
    if (lease?.spec?.holderIdentity !== this.#options.identity) return;
    const now = new Date();
    try {
      await this.#options.coordination.replaceNamespacedLease(
        {
          name: this.#options.leaseName,
          namespace: this.#options.namespace,
          body: { ...lease, spec: { ...lease.spec, ...this.#spec(now, lease.spec.leaseTransitions ?? 0, now, '', 1) } },
        },
        withTimeout(this.#retryPeriodMs),
      );
      this.#log?.info('released leader lease');
    } catch (err) {
      this.#log?.warn({ error: describeApiError(err) }, 'releasing leader lease failed');
    }
  }
}
