/**
 * EventRecorder: Kubernetes Events (events.k8s.io/v1) about an object, with aggregation.
 *
 * The first occurrence of (object uid, type, reason, action, note) creates an Event; repeats
 * within `seriesWindowMs` (default 6 min, as client-go's events library) patch that Event's
 * `series` ({count, lastObservedTime}) instead of creating new objects. If the Event has
 * expired (404) a new one is created. Events are visible in `kubectl describe` and
 * `kubectl get events` (core/v1 shows `series.count` as COUNT).
 *
 * Writing an Event never throws into the caller: failures are logged. `event()` returns a
 * promise that settles when the write is done (tests await it; the controller need not).
 *
 * Events are best effort and never crowd out status writes: at most `maxInFlight` writes run at
 * once (a fleet of 1,000 new BlockPulls would otherwise send 1,000 Event POSTs to the API server
 * at the same moment as their status writes), and at most `maxQueued` wait; past that an
 * Event is dropped, logged and counted (`onDropped`), as client-go's event broadcaster drops when
 * its queue of 1,000 is full. That cap holds for best-effort Events only: an `essential` Event (the
 * caller's judgement: a terminal transition, an abort on delete) is never dropped. Essential
 * Events take the next free write turn before any best-effort one, are not counted against
 * `maxQueued` (the caller records a few per object in its lifetime, so their number is bounded
 * by the objects, not by the burst), and a write refused for a passing reason (a 5xx, a 429, no
 * answer) is tried again with backoff, `essentialAttempts` times in all.
 */
import type { EventsV1Api } from '@kubernetes/client-node';
import { PatchStrategy, V1MicroTime, setHeaderOptions } from '@kubernetes/client-node';
import type { Logger } from '../log.ts';
import { apiErrorCode, describeApiError, isNotFound } from './client.ts';

export interface InvolvedObject {
  readonly apiVersion: string;
  readonly kind: string;
  /** Absent for a cluster-scoped object: its Events go to EVENTS_NAMESPACE_CLUSTER_SCOPED. */
  readonly namespace?: string;
  readonly name: string;
  readonly uid: string;
  readonly resourceVersion?: string;
}

export type EventType = 'Normal' | 'Warning';

/** `essential`: never dropped, written first, retried; `bestEffort`: dropped past the queue's cap. */
export type EventDelivery = 'essential' | 'bestEffort';

export interface EventRecorderOptions {
  readonly events: EventsV1Api;
  /** e.g. "blockpull.dev/blockpull-operator". */
  readonly reportingController?: string;
  /** This process (pod name). */
  readonly reportingInstance: string;
  readonly logger?: Logger;
  readonly seriesWindowMs?: number;
  /** Aggregation entries kept (oldest dropped first). Default 4096. */
  readonly maxEntries?: number;
  /** Event writes sent to the API server at once. Default 4. */
  readonly maxInFlight?: number;
  /** Event writes waiting for their turn; more are dropped. Default 1000. */
  readonly maxQueued?: number;
  /** Called for each Event dropped because the queue was full (a metric). */
  readonly onDropped?: () => void;
  /** Tries of an essential Event's write that fails for a passing reason. Default 5. */
  readonly essentialAttempts?: number;
  /** First wait between those tries, doubled each time. Default 500 ms. */
  readonly essentialRetryMs?: number;
}

/**
 * Where the Events of a cluster-scoped object are written: `default`, as the kubelet writes a
 * Node's (an Event is namespaced; the API server accepts `default` for one whose object has no
 * namespace, and `regarding` then names no namespace).
 */
export const EVENTS_NAMESPACE_CLUSTER_SCOPED = 'default';

/** The namespace an Event about `object` is written in. */
export function eventNamespace(object: InvolvedObject): string {
  return object.namespace !== undefined && object.namespace !== '' ? object.namespace : EVENTS_NAMESPACE_CLUSTER_SCOPED;
}

/** How often a full queue is logged at most (each drop is counted, not logged). */
const DROP_LOG_INTERVAL_MS = 10_000;

interface Entry {
  namespace: string;
  name: string;
  count: number;
  firstAt: number;
}

/** A MicroTime string with exactly six fractional digits, as the API server expects. */
export function microTime(d: Date = new Date()): string {
  return new V1MicroTime(d.getTime()).toISOString();
}

const MAX_NOTE = 1024;

let seq = 0;
/** Like client-go: "<object name>.<hex time>" (+ a counter, so two events in one ms differ). */
function eventName(objectName: string, nowMs: number): string {
  seq = (seq + 1) % 0x10000;
  const suffix = `${(BigInt(Math.trunc(nowMs)) * 1_000_000n).toString(16)}${seq.toString(16).padStart(4, '0')}`;
  return `${objectName.slice(0, 253 - suffix.length - 1)}.${suffix}`;
} // events.k8s.io/v1 validation: note at most 1 kB

export class EventRecorder {
  readonly #options: EventRecorderOptions;
  readonly #controller: string;
  readonly #window: number;
  readonly #max: number;
  /** Aggregation key -> the Event object written for it. Map order = insertion (LRU-ish). */
  readonly #entries = new Map<string, Entry>();
  /** Serialises writes per aggregation key so concurrent repeats bump one series. */
  readonly #chains = new Map<string, Promise<void>>();
  /** Writes running, and those waiting for one of the maxInFlight turns (FIFO). */
  #inFlight = 0;
  readonly #turns: (() => void)[] = [];
  /** Essential writes waiting for a turn: served before #turns. */
  readonly #essentialTurns: (() => void)[] = [];
  /** Best-effort Events accepted and not yet writing (waiting for their key's chain or a turn). */
  #queued = 0;
  #dropped = 0;
  #droppedLoggedAt = Number.NEGATIVE_INFINITY;

  constructor(options: EventRecorderOptions) {
    this.#options = options;
    this.#controller = options.reportingController ?? 'blockpull.dev/blockpull-operator';
    this.#window = options.seriesWindowMs ?? 6 * 60_000;
    this.#max = options.maxEntries ?? 4096;
  }

  /**
   * Record an event. `reason` is CamelCase (e.g. PullStarted), `action` what the controller
   * did (e.g. StartPull), `note` a human sentence.
   */
  event(
    object: InvolvedObject,
    type: EventType,
    reason: string,
    action: string,
    note: string,
    delivery: EventDelivery = 'bestEffort',
  ): Promise<void> {
    const text = note.length > MAX_NOTE ? note.slice(0, MAX_NOTE - 3) + '...' : note;
    const essential = delivery === 'essential';
    if (!essential && this.#queued >= (this.#options.maxQueued ?? 1000)) {
      this.#drop(object, reason);
      return Promise.resolve();
    }
    if (!essential) this.#queued++;
    const key = JSON.stringify([object.uid, type, reason, action, text]);
    const prev = this.#chains.get(key) ?? Promise.resolve();
    const next = prev.then(async () => {
      await this.#turn(essential);
      if (!essential) this.#queued--;
      try {
        await this.#writeWithRetries(essential, key, object, type, reason, action, text);
      } finally {
        this.#inFlight--;
        (this.#essentialTurns.shift() ?? this.#turns.shift())?.();
      }
    });
    const tracked = next.finally(() => {
      if (this.#chains.get(key) === tracked) this.#chains.delete(key);
    });
    this.#chains.set(key, tracked);
    return tracked;
  }

  /** Events dropped so far because the queue was full. */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Resolves when this write may go to the API server: one of maxInFlight turns, essential writes
   * first, each kind in order of asking.
   */
  #turn(essential: boolean): Promise<void> {
    if (this.#inFlight < (this.#options.maxInFlight ?? 4)) {
      this.#inFlight++;
      return Promise.resolve();
    }
    const line = essential ? this.#essentialTurns : this.#turns;
    return new Promise((resolve) => line.push(() => (this.#inFlight++, resolve())));
  }

  /** A best-effort Event is written once; an essential one again after a passing failure (it keeps its turn meanwhile). */
  async #writeWithRetries(
    essential: boolean,
    key: string,
    object: InvolvedObject,
    type: EventType,
    reason: string,
    action: string,
    note: string,
  ): Promise<void> {
    const attempts = essential ? Math.max(1, this.#options.essentialAttempts ?? 5) : 1;
    let waitMs = this.#options.essentialRetryMs ?? 500;
    for (let attempt = 1; ; attempt++) {
      const err = await this.#write(key, object, type, reason, action, note);
      if (err === undefined) return;
      const last = attempt >= attempts || !isPassingFailure(err);
      this.#options.logger?.warn(
        { object: `${object.kind} ${objectPath(object)}`, reason, attempt, essential, error: describeApiError(err) },
        last ? 'failed to record event' : 'failed to record event; trying again',
      );
      if (last) return;
      await new Promise((resolve) => setTimeout(resolve, waitMs));
      waitMs *= 2;
    }
  }

  #drop(object: InvolvedObject, reason: string): void {
    this.#dropped++;
    this.#options.onDropped?.();
    const now = Date.now();
    if (now - this.#droppedLoggedAt < DROP_LOG_INTERVAL_MS) return;
    this.#droppedLoggedAt = now;
    this.#options.logger?.warn(
      {
        object: `${object.kind} ${objectPath(object)}`,
        reason,
        dropped: this.#dropped,
        queued: this.#queued,
      },
      'event queue full: dropping events (counted in blockpull_events_dropped_total)',
    );
  }

  normal(object: InvolvedObject, reason: string, action: string, note: string): Promise<void> {
    return this.event(object, 'Normal', reason, action, note);
  }

  warning(object: InvolvedObject, reason: string, action: string, note: string): Promise<void> {
    return this.event(object, 'Warning', reason, action, note);
  }

  /** One write of the Event: its error, or undefined when it was recorded. */
  async #write(
    key: string,
    object: InvolvedObject,
    type: EventType,
    reason: string,
    action: string,
    note: string,
  ): Promise<unknown> {
    const now = Date.now();
    const entry = this.#entries.get(key);
    try {
      if (entry !== undefined && now - entry.firstAt < this.#window) {
        const count = entry.count + 1;
        try {
          await this.#options.events.patchNamespacedEvent(
            {
              namespace: entry.namespace,
              name: entry.name,
              body: { series: { count, lastObservedTime: microTime(new Date(now)) } },
            },
            setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
          );
          entry.count = count;
          return undefined;
        } catch (err) {
          if (!isNotFound(err)) throw err;
          // The Event expired or was deleted: start over with a new one.
        }
      }
      const namespace = eventNamespace(object);
      const created = await this.#options.events.createNamespacedEvent({
        namespace,
        body: {
          apiVersion: 'events.k8s.io/v1',
          kind: 'Event',
          metadata: { name: eventName(object.name, now), namespace },
          eventTime: new V1MicroTime(now),
          reportingController: this.#controller,
          reportingInstance: this.#options.reportingInstance,
          action,
          reason,
          note,
          type,
          regarding: {
            apiVersion: object.apiVersion,
            kind: object.kind,
            ...(object.namespace !== undefined && object.namespace !== '' ? { namespace: object.namespace } : {}),
            name: object.name,
            uid: object.uid,
            ...(object.resourceVersion !== undefined ? { resourceVersion: object.resourceVersion } : {}),
          },
        },
      });
      this.#entries.delete(key);
      this.#entries.set(key, {
        namespace,
        name: created.metadata?.name ?? '',
        count: 1,
        firstAt: now,
      });
      while (this.#entries.size > this.#max) {
        const oldest = this.#entries.keys().next().value;
        if (oldest === undefined) break;
        this.#entries.delete(oldest);
      }
      return undefined;
    } catch (err) {
      return err;
    }
  }
}

/** "namespace/name", or "name" for a cluster-scoped object (for logs). */
function objectPath(object: InvolvedObject): string {
  return object.namespace !== undefined && object.namespace !== '' ? `${object.namespace}/${object.name}` : object.name;
}

/** A refusal that may pass: the API server overloaded or failing (429, 5xx), or no HTTP answer at all. */
function isPassingFailure(err: unknown): boolean {
  const code = apiErrorCode(err);
  return code === undefined || code === 429 || code >= 500;
}
