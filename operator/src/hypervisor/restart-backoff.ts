/**
 * The delay before a long-lived command (an event stream) is started again after it ended: the
 * first delay, doubled at each restart up to a ceiling, and back to the first once a stream has
 * lived at least `healthyAfterMs`. Through pods/exec every restart is an exec session (runc exec
 * in the pod, containerd, the kubelet, the API server): a stream that keeps ending must not be
 * restarted every second on a node that is already loaded.
 */
export interface RestartBackoffOptions {
  readonly firstMs: number;
  readonly maxMs: number;
  /** A stream that lived this long was healthy: the next restart waits firstMs again. */
  readonly healthyAfterMs: number;
}

export class RestartBackoff {
  readonly #o: RestartBackoffOptions;
  #nextMs: number;

  constructor(options: RestartBackoffOptions) {
    this.#o = options;
    this.#nextMs = options.firstMs;
  }

  /** The delay before the next start of a stream that ended after living `livedMs`. */
  next(livedMs: number): number {
    if (livedMs >= this.#o.healthyAfterMs) this.#nextMs = this.#o.firstMs;
    const delay = this.#nextMs;
    this.#nextMs = Math.min(this.#o.maxMs, this.#nextMs * 2);
    return delay;
  }
}
