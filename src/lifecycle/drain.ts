/**
 * Graceful drain, runtime-independent: counts requests in flight, refuses new ones once
 * draining starts (503 + Connection: close, so keep-alive clients reconnect elsewhere), and lets
 * shutdown wait, with a deadline, until the last in-flight request has finished. At the deadline
 * it cuts what is still running: each request's signal aborts with 503 shutting_down, so the
 * core cancels its statement and rolls its transaction back — nothing commits after the cut.
 */
import type { MiddlewareHandler } from 'hono';
import { AppError } from '../errors.js';

export class Drain {
  #inFlight = 0;
  #draining = false;
  #idle: (() => void)[] = [];
  /** What each in-flight request gave to be cut with (its metrics' abort). */
  readonly #running = new Set<{ abort(reason?: unknown): void }>();

  get inFlight(): number {
    return this.#inFlight;
  }

  get draining(): boolean {
    return this.#draining;
  }

  readonly middleware: MiddlewareHandler = async (c, next) => {
    if (this.#draining) {
      const res = new AppError(503, 'shutting_down', 'The server is shutting down; retry on another instance.', {
        retryAfterSec: 1,
      }).toResponse((c.get('requestId' as never) as string | undefined) ?? 'unknown');
      res.headers.set('connection', 'close');
      c.res = res;
      return;
    }
    this.#inFlight++;
    const metrics = c.get('metrics' as never) as { abort(reason?: unknown): void } | undefined;
    if (metrics) this.#running.add(metrics);
    try {
      await next();
    } finally {
      this.#inFlight--;
      if (metrics) this.#running.delete(metrics);
      if (this.#inFlight === 0) for (const f of this.#idle.splice(0)) f();
      // Finished while draining: its connection ends once the response is written, so shutdown
      // need not cut it (the drain ends before the response reaches the socket).
      if (this.#draining) c.res.headers.set('connection', 'close');
    }
  };

  /**
   * Starts draining; resolves true when nothing is in flight, false if `timeoutMs` ran out first —
   * then what is still running has been cut (see above) and is finishing its 503s.
   */
  async start(timeoutMs: number): Promise<boolean> {
    this.#draining = true;
    if (await this.#settled(timeoutMs)) return true;
    const cut = new AppError(503, 'shutting_down', 'The server shut down before this request finished; it was not applied.', {
      retryAfterSec: 1,
    });
    for (const request of this.#running) request.abort(cut);
    return false;
  }

  /** Resolves true once nothing is in flight, false after `ms`. */
  #settled(ms: number): Promise<boolean> {
    if (this.#inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      this.#idle.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** After a cut: waits up to `ms` for the cut requests to answer. */
  settled(ms: number): Promise<boolean> {
    return this.#settled(ms);
  }
}
