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
}

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
    const key = JSON.stringify([object.uid, type, reason, action, text]);
    const prev = this.#chains.get(key) ?? Promise.resolve();
    const next = prev.then(() => this.#write(key, object, type, reason, action, text));
    const tracked = next.finally(() => {
      if (this.#chains.get(key) === tracked) this.#chains.delete(key);
    });
    this.#chains.set(key, tracked);
    return tracked;
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
