/**
 * Equal strings shared between cached objects (10,000 BlockPulls in one process).
 *
 * JSON.parse makes a new string for every value: a heap snapshot at 10,000 BlockPulls showed
 * 10,000 copies of "VMINotFound", and each BlockPull held its status message seven times
 * (status.message and six conditions), its lastTransitionTime six times: about 1 KB of strings
 * per object. intern() walks an object in place and replaces each string value with an equal one
 * already held: every repeat within the object, and across objects the short strings (reasons,
 * condition types, timestamps, API versions), remembered in a bounded table.
 */

export interface StringInternerOptions {
  /** Strings at most this long are shared across objects. Default 64. */
  readonly maxLength?: number;
  /** Strings remembered across objects; the table starts over when full. Default 8192. */
  readonly maxEntries?: number;
}

export class StringInterner {
  readonly #table = new Map<string, string>();
  readonly #maxLength: number;
  readonly #maxEntries: number;
  /** String values replaced by an equal one already held (a count for tests and curiosity). */
  shared = 0;

  constructor(options: StringInternerOptions = {}) {
    this.#maxLength = options.maxLength ?? 64;
    this.#maxEntries = options.maxEntries ?? 8192;
  }

  /** Strings remembered across objects. */
  get size(): number {
    return this.#table.size;
  }

  /** `obj` itself, its string values (at any depth, in objects and arrays) replaced by shared ones. */
  intern<T>(obj: T): T {
    const local = new Map<string, string>();
    const one = (s: string): string => {
      const held = local.get(s) ?? this.#table.get(s);
      if (held !== undefined) {
        this.shared++;
        local.set(s, held);
        return held;
      }
      local.set(s, s);
      if (s.length <= this.#maxLength) {
        if (this.#table.size >= this.#maxEntries) this.#table.clear();
        this.#table.set(s, s);
      }
      return s;
    };
    const walk = (v: unknown): void => {
      if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) {
          const x: unknown = v[i];
          if (typeof x === 'string') v[i] = one(x);
          else walk(x);
        }
      } else if (v !== null && typeof v === 'object') {
        const o = v as Record<string, unknown>;
        for (const k of Object.keys(o)) {
          const x = o[k];
          if (typeof x === 'string') o[k] = one(x);
          else walk(x);
        }
      }
    };
    walk(obj);
    return obj;
  }
}
