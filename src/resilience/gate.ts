/**
 * A counting gate in front of the connection pool. pg's own wait queue is unbounded and its
 * timeout cannot tell "no connection free" from "the server is slow to connect"; the gate makes
 * both limits explicit: at most `permits` holders, at most `queueMax` waiters (beyond that a
 * caller is refused at once), and each waiter gives up after `timeoutMs`.
 */
import { AppError, clientClosed, OverloadedError, PoolExhaustedError } from '../errors.js';
import { now } from '../stats/clock.js';

export interface GateOptions {
  permits: number;
  queueMax: number;
  timeoutMs: number;
}

interface Waiter {
  resolve(release: () => void): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export class Gate {
  #free: number;
  readonly #queue: Waiter[] = [];
  readonly #opts: GateOptions;
  #closedWith: Error | undefined;
  rejectedCount = 0;
  timedOutCount = 0;

  constructor(opts: GateOptions) {
    this.#opts = { ...opts };
    this.#free = opts.permits;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  get held(): number {
    return this.#opts.permits - this.#free;
  }

  /**
   * Resolves with a release function once a permit is held; the release is safe to call twice.
   * A waiter whose `signal` aborts (its client went away) leaves the queue at once.
   */
  acquire(timeoutMs = this.#opts.timeoutMs, signal?: AbortSignal): Promise<() => void> {
    if (this.#closedWith) return Promise.reject(this.#closedWith);
    if (signal?.aborted) return Promise.reject(clientClosed());
    if (this.#free > 0 && this.#queue.length === 0) {
      this.#free--;
      return Promise.resolve(this.#releaser());
    }
    if (this.#queue.length >= this.#opts.queueMax) {
      this.rejectedCount++;
      return Promise.reject(new OverloadedError());
    }
    const started = now();
    return new Promise((resolve, reject) => {
      const leave = () => {
        const i = this.#queue.indexOf(waiter);
        if (i !== -1) this.#queue.splice(i, 1);
        clearTimeout(waiter.timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        leave();
        reject(clientClosed());
      };
      const waiter: Waiter = {
        resolve: (release) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
        reject,
        timer: setTimeout(() => {
          leave();
          this.timedOutCount++;
          reject(new PoolExhaustedError(now() - started));
        }, timeoutMs),
      };
      (waiter.timer as { unref?: () => void }).unref?.();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  /**
   * A new number of permits (a pool that sizes itself): more lets waiters in at once; fewer are
   * taken back as holders release, none is revoked.
   */
  resize(permits: number): void {
    this.#free += permits - this.#opts.permits;
    this.#opts.permits = permits;
    while (this.#free > 0 && this.#queue.length > 0) {
      this.#free--;
      const next = this.#queue.shift()!;
      clearTimeout(next.timer);
      next.resolve(this.#releaser());
    }
  }

  /** Refuses every waiter and every later acquire with `err`; holders keep their permits. */
  close(err: Error = new AppError(503, 'shutting_down', 'The server is shutting down.', { retryAfterSec: 1 })): void {
    this.#closedWith ??= err;
    for (const w of this.#queue.splice(0)) {
      clearTimeout(w.timer);
      w.reject(this.#closedWith);
    }
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#free >= 0 ? this.#queue.shift() : undefined; // shrunk: this permit is given back
      if (next) {
        clearTimeout(next.timer);
        next.resolve(this.#releaser());
      } else {
        this.#free++;
      }
    };
  }
}
