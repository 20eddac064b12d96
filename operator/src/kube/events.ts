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
 * at the same moment as their status writes, issue 11), and at most `maxQueued` wait; past that an
 * Event is dropped, logged and counted (`onDropped`), as client-go's event broadcaster drops when
 * its queue of 1,000 is full.
 */
import type { EventsV1Api } from '@kubernetes/client-node';
import { PatchStrategy, V1MicroTime, setHeaderOptions } from '@kubernetes/client-node';
import type { Logger } from '../log.ts';
import { describeApiError, isNotFound } from './client.ts';

export interface InvolvedObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  readonly resourceVersion?: string;
}

export type EventType = 'Normal' | 'Warning';

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
  /** Events accepted and not yet writing (waiting for their key's chain or a turn). */
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
  event(object: InvolvedObject, type: EventType, reason: string, action: string, note: string): Promise<void> {
    const text = note.length > MAX_NOTE ? note.slice(0, MAX_NOTE - 3) + '...' : note;
    if (this.#queued >= (this.#options.maxQueued ?? 1000)) {
      this.#drop(object, reason);
      return Promise.resolve();
    }
    this.#queued++;
    const key = JSON.stringify([object.uid, type, reason, action, text]);
    const prev = this.#chains.get(key) ?? Promise.resolve();
    const next = prev.then(async () => {
      await this.#turn();
      this.#queued--;
      try {
        await this.#write(key, object, type, reason, action, text);
      } finally {
        this.#inFlight--;
        this.#turns.shift()?.();
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

  /** Resolves when this write may go to the API server: one of maxInFlight turns, in order of asking. */
  #turn(): Promise<void> {
    if (this.#inFlight < (this.#options.maxInFlight ?? 4)) {
      this.#inFlight++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#turns.push(() => (this.#inFlight++, resolve())));
  }

  #drop(object: InvolvedObject, reason: string): void {
    this.#dropped++;
    this.#options.onDropped?.();
    const now = Date.now();
    if (now - this.#droppedLoggedAt < DROP_LOG_INTERVAL_MS) return;
    this.#droppedLoggedAt = now;
    this.#options.logger?.warn(
      { object: `${object.kind} ${object.namespace}/${object.name}`, reason, dropped: this.#dropped, queued: this.#queued },
      'event queue full: dropping events (counted in blockpull_events_dropped_total)',
    );
  }

  normal(object: InvolvedObject, reason: string, action: string, note: string): Promise<void> {
    return this.event(object, 'Normal', reason, action, note);
  }

  warning(object: InvolvedObject, reason: string, action: string, note: string): Promise<void> {
    return this.event(object, 'Warning', reason, action, note);
  }

  async #write(key: string, object: InvolvedObject, type: EventType, reason: string, action: string, note: string): Promise<void> {
    const log = this.#options.logger?.child({ blockpull: `${object.namespace}/${object.name}`, namespace: object.namespace, name: object.name });
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
          return;
        } catch (err) {
          if (!isNotFound(err)) throw err;
          // The Event expired or was deleted: start over with a new one.
        }
      }
      const created = await this.#options.events.createNamespacedEvent({
        namespace: object.namespace,
        body: {
          apiVersion: 'events.k8s.io/v1',
          kind: 'Event',
          metadata: { name: eventName(object.name, now), namespace: object.namespace },
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
            namespace: object.namespace,
            name: object.name,
            uid: object.uid,
            ...(object.resourceVersion !== undefined ? { resourceVersion: object.resourceVersion } : {}),
          },
        },
      });
      this.#entries.delete(key);
      this.#entries.set(key, { namespace: object.namespace, name: created.metadata?.name ?? '', count: 1, firstAt: now });
      while (this.#entries.size > this.#max) {
        const oldest = this.#entries.keys().next().value;
        if (oldest === undefined) break;
        this.#entries.delete(oldest);
      }
    } catch (err) {
      log?.warn({ reason, error: describeApiError(err) }, 'failed to record event');
    }
  }
}
