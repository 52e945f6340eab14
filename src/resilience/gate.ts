/**
 * Admission in front of a resource of fixed capacity (the pool's sessions, the pipelined lanes),
 * by predicted wait rather than by count. pg's own wait queue is unbounded and its timeout cannot
 * tell "no connection free" from "the server is slow to connect"; the gate makes the limits
 * explicit: at most `permits` holders, and a newcomer queues only when its predicted wait —
 * (waiters ahead + 1) × the time one place in the queue recently took — fits both its acquire
 * timeout and what is left of its deadline (with room for its own hold). Otherwise it is shed at
 * once, 503 `overloaded` with a Retry-After from the same estimate, instead of waiting to time
 * out. A burst of fast work is therefore queued however long the queue, and slow work is shed
 * early; `queueMax` is only a memory bound. Waiters still give up at their timeout, when the
 * estimate was wrong.
 *
 * The time per place is measured from waiters served (their wait ÷ their place at joining), not
 * derived from hold times: a burst of arrivals keeps the event loop from running releases, so
 * holds measured then look 50× their usual length although the queue drains as fast as ever. A
 * wait during which the event loop was busy nearly all the time (`loop`: a burst's arrivals parsed
 * on a CPU-starved machine, a GC pause, a long synchronous task) measured the process, not the
 * resource, and counts without that busy time; a wait the loop was partly busy in counts whole (the
 * pool sets the pace while the loop works beside it: 50 ms queries at 5× their capacity keep the
 * loop a fifth busy). It is kept per permit (a place takes a hold ÷ the permits), so a pool that grows (a budget's share
 * widening at a flood's start) predicts from its size now, not from the waits of its smaller self.
 * Before any waiter was served nothing is known and the queue is admitted (its timeout still
 * bounds it), unless every holder has held for more than STALL_MS. A waiter that timed out
 * counts with its whole wait (slow, never fast). The next in line always queues, whatever the
 * estimate: it is the probe that tells the gate the pool has recovered.
 *
 * Under a sustained overload (the queue has not emptied for STANDING_MS) the wait a newcomer
 * may be given shrinks to half the unloaded hold time: CoDel's idea, a standing queue only adds
 * latency, applied at admission. The guards against such limiters' known failures: nothing to
 * ramp up (the permits are always usable; only the queue is limited), the target is learnt only
 * from holds released while nobody waited (no creep as the load slows work down), failed work
 * and timed-out waiters never count as fast, and there is no periodic re-probe that sheds a
 * burst: the overload ends when arrivals find free permits again for QUIET_MS.
 *
 * Two classes of waiter: `high` (writes, health checks) is served before `normal` (reads), so a
 * flood of reads never starves them; at most HIGH_RUN_MAX high grants in a row while reads wait,
 * so a flood of writes cannot starve the reads either (they keep at least a fifth of hand-overs).
 */
import { AppError, clientClosed, OverloadedError, PoolExhaustedError } from '../errors.js';
import { now as clockNow } from '../stats/clock.js';

export interface GateOptions {
  permits: number;
  /** A memory bound on waiters; prediction sheds long before it in normal use. */
  queueMax: number;
  /** The longest wait for a permit (POOL_ACQUIRE_TIMEOUT_MS). */
  timeoutMs: number;
  /**
   * Shed by the standing-queue rule too (POOL_OVERLOAD_SHEDDING; default off). Off, a newcomer is
   * shed only when its predicted wait passes the acquire timeout or its deadline. The rule cannot
   * tell a sustained overload from closed-loop clients behind a lock or a few slow reads (the queue
   * stands in both): there it sheds requests their deadlines would have served.
   */
  overloadShedding?: boolean;
  /** The event loop's busy time (a Node backend passes the process's): a wait it filled is the process's, not the resource's. */
  loop?: LoopMeter;
  /** The clock (tests pass a fake one). */
  now?: () => number;
}

export type Priority = 'high' | 'normal';

/** The event loop's busy time so far, in ms (Node: its event-loop utilisation's `active`). */
export interface LoopMeter {
  busyMs(): number;
}

/** Why a request was refused without waiting. */
export type ShedReason = 'wait' | 'deadline' | 'overload' | 'queue_full';

/** Gives a permit back; `ok: false` (the work failed) keeps its hold time out of the averages. */
export type Release = (ok?: boolean) => void;

export interface AcquireOptions {
  /** The longest wait for this call (default: the gate's timeoutMs). */
  timeoutMs?: number;
  /** What is left of the request's deadline: the predicted wait plus one hold must fit in it. */
  remainingMs?: number;
  /** Aborts when the client goes away: the waiter leaves the queue at once. */
  signal?: AbortSignal;
  priority?: Priority;
}

/** What the gate expects a newcomer to wait, and why it would not admit it. */
export interface Estimate {
  waitMs: number;
  holdMs: number;
}

interface Waiter {
  /** When it joined, and its place then (1 = next). */
  joinedAt: number;
  place: number;
  /** The loop's busy time when it joined. */
  busyAt: number;
  resolve(release: Release): void;
  reject(err: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * A wait with the event loop busy for at least this share of it was the process's: seen here, a
 * CPU-starved burst's waits were busy throughout (1.0), a database-bound overload's about 0.2.
 */
const LOOP_SATURATED = 0.8;
/** Weight of the newest hold in the recent-hold average: about the last ten holds count. */
const HOLD_ALPHA = 0.2;
/** How much of the measured drain each served waiter keeps: about the last ten count, by their places … */
const DRAIN_DECAY = 0.9;
/** … and what a second without one keeps: after a quiet spell, the next waiter served sets the estimate. */
const DRAIN_HALF_LIFE_MS = 1_000;
const RETRY_AFTER_MAX_SEC = 60;
const HIGH_RUN_MAX = 4;
/**
 * Holders younger than this say nothing: a burst of arrivals keeps the event loop from running
 * releases for a while (120 ms for 500 requests on a busy 2-core machine), and reading that as slow
 * holds would shed work that is served in a few ms. Past it, every holder is stuck: a stall.
 */
const STALL_MS = 1_000;
/**
 * A queue that has not emptied for this long is a sustained overload, not a burst (500 fast reads
 * drain in under 1.5 s here): from then on a newcomer is admitted only when its wait fits the
 * target below, so admitted requests take about their unloaded time instead of the acquire timeout.
 */
const STANDING_MS = 2_000;
/** The overload ends once no arrival found every permit held for this long. */
const QUIET_MS = 500;
/** The wait allowed under a sustained overload: half the unloaded hold time, at least this. */
const TARGET_FLOOR_MS = 5;

export class Gate {
  #free: number;
  readonly #queues: Record<Priority, Waiter[]> = { high: [], normal: [] };
  /** When each current holder got its permit. */
  readonly #grantedAt = new Set<{ at: number }>();
  readonly #opts: GateOptions;
  readonly #now: () => number;
  #closedWith: Error | undefined;
  /** Recent hold time (ms), an exponentially weighted average; undefined before the first release. */
  #holdMs: number | undefined;
  /** Served waiters' waits × the permits then, and their places, decayed: their ratio ÷ the permits now is the time one place takes. */
  readonly #drain = { permitMs: 0, places: 0, at: 0 };
  /** Since when the queue has not been empty; undefined while it is. */
  #queueSince: number | undefined;
  /** When an arrival last found every permit held (queued or shed). */
  #busyAt = -Infinity;
  #overload = false;
  /**
   * The hold time of work released while nobody waited: the unloaded latency the overload target
   * is set from. Not learnt under load, so the target cannot creep up with the slowdown a load
   * causes.
   */
  #baselineHoldMs: number | undefined;
  /** High grants in a row while reads waited (see the header). */
  #highRun = 0;
  readonly shedCounts: Record<ShedReason, number> = { wait: 0, deadline: 0, overload: 0, queue_full: 0 };
  timedOutCount = 0;
  /** Called once per shed request (the shed log counts them). */
  onShed: ((reason: ShedReason) => void) | undefined;

  constructor(opts: GateOptions) {
    this.#opts = { ...opts };
    this.#free = opts.permits;
    this.#now = opts.now ?? clockNow;
  }

  get waiting(): number {
    return this.#queues.high.length + this.#queues.normal.length;
  }

  get held(): number {
    return this.#opts.permits - this.#free;
  }

  /** True once the queue has stood for STANDING_MS (a sustained overload, not a burst), until no arrival found every permit held for QUIET_MS. */
  get overloaded(): boolean {
    const at = this.#now();
    if (!this.#overload && this.#queueSince !== undefined) this.#overload = at - this.#queueSince >= STANDING_MS;
    // Not on an empty instant between waiters (at 3× load the queue empties for a few ms at a time):
    // only when no arrival found every permit held for QUIET_MS.
    else if (this.#overload && this.waiting === 0) this.#overload = at - this.#busyAt < QUIET_MS;
    return this.#overload;
  }

  /** Refused because the queue was at its memory bound (kept under its old name for /stats). */
  get rejectedCount(): number {
    return this.shedCounts.queue_full;
  }

  /**
   * The predicted wait of a newcomer of `priority`: zero when a permit is free; else its place
   * (the waiters it would queue behind, plus itself) times the time one place takes — or more,
   * when even the youngest holder has held for more than STALL_MS (a stall, or slow work before
   * anything was measured). `holdMs` is the recent hold time.
   */
  estimate(priority: Priority = 'normal'): Estimate {
    const holdMs = this.#holdMs ?? 0;
    if (this.#free > 0 && this.waiting === 0) return { waitMs: 0, holdMs };
    return { waitMs: this.#placeOf(priority) * this.#perPlaceMs(), holdMs };
  }

  /**
   * Resolves with a release function once a permit is held; the release is safe to call twice.
   * Refused at once when the predicted wait does not fit; a waiter whose `signal` aborts (its
   * client went away) leaves the queue at once.
   */
  acquire(options: AcquireOptions = {}): Promise<Release> {
    const { signal, priority = 'normal' } = options;
    if (this.#closedWith) return Promise.reject(this.#closedWith);
    if (signal?.aborted) return Promise.reject(clientClosed());
    if (this.#free > 0 && this.waiting === 0) {
      this.#free--;
      return Promise.resolve(this.#releaser());
    }
    this.#foundBusy();
    const timeoutMs = Math.min(options.timeoutMs ?? this.#opts.timeoutMs, options.remainingMs ?? Infinity);
    const refused = this.#refusal(priority, timeoutMs, options.remainingMs ?? Infinity);
    if (refused) return Promise.reject(refused);
    const started = this.#now();
    const place = this.#placeOf(priority);
    const queue = this.#queues[priority];
    return new Promise((resolve, reject) => {
      const leave = () => {
        const i = queue.indexOf(waiter);
        if (i !== -1) queue.splice(i, 1);
        this.#emptied();
        clearTimeout(waiter.timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        leave();
        reject(clientClosed());
      };
      const waiter: Waiter = {
        joinedAt: started,
        place,
        busyAt: this.#busyMs(),
        resolve: (release) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
        reject,
        timer: setTimeout(() => {
          leave();
          this.timedOutCount++;
          this.#served(waiter, this.#now() - started);
          reject(new PoolExhaustedError(this.#now() - started));
        }, timeoutMs),
      };
      (waiter.timer as { unref?: () => void }).unref?.();
      signal?.addEventListener('abort', onAbort, { once: true });
      if (this.waiting === 0) this.#queueSince = started;
      queue.push(waiter);
    });
  }

  /**
   * A new number of permits (a pool that sizes itself): more lets waiters in at once; fewer are
   * taken back as holders release, none is revoked.
   */
  resize(permits: number): void {
    this.#free += permits - this.#opts.permits;
    this.#opts.permits = permits;
    for (let next = this.#free > 0 ? this.#next() : undefined; next; next = this.#free > 0 ? this.#next() : undefined) {
      this.#free--;
      clearTimeout(next.timer);
      // Not counted in the drain: its wait ended because the pool grew, not because places drained.
      next.resolve(this.#releaser());
    }
    this.#emptied();
  }

  /** Refuses every waiter and every later acquire with `err`; holders keep their permits. */
  close(err: Error = new AppError(503, 'shutting_down', 'The server is shutting down.', { retryAfterSec: 1 })): void {
    this.#closedWith ??= err;
    this.#queueSince = undefined;
    for (const w of [...this.#queues.high.splice(0), ...this.#queues.normal.splice(0)]) {
      clearTimeout(w.timer);
      w.reject(this.#closedWith);
    }
  }

  /** The error to shed a newcomer with, or undefined when its predicted wait fits. */
  #refusal(priority: Priority, timeoutMs: number, remainingMs: number): AppError | undefined {
    let reason: ShedReason | undefined;
    const { waitMs, holdMs } = this.estimate(priority);
    if (this.waiting >= this.#opts.queueMax) reason = 'queue_full';
    // The next in line always queues: it is the probe that keeps the estimate current (a gate that
    // shed everyone behind a full pool would never serve a waiter to learn that it recovered).
    else if (this.#placeOf(priority) === 1) reason = undefined;
    else if (waitMs > timeoutMs) reason = 'wait';
    else if (this.#opts.overloadShedding === true && this.overloaded && waitMs > this.targetWaitMs) reason = 'overload';
    else if (waitMs + holdMs > remainingMs) reason = 'deadline';
    if (!reason) return undefined;
    this.shedCounts[reason]++;
    this.onShed?.(reason);
    // The backlog ahead must clear before a retry can be admitted: that is the estimate itself.
    return new OverloadedError(Math.min(RETRY_AFTER_MAX_SEC, Math.max(1, Math.ceil(waitMs / 1000))));
  }

  /** The wait a newcomer may be given during a sustained overload. */
  get targetWaitMs(): number {
    return Math.max(TARGET_FLOOR_MS, (this.#baselineHoldMs ?? 0) / 2);
  }

  /** An arrival found every permit held; the first for QUIET_MS ends any overload (whatever state was last seen). */
  #foundBusy(): void {
    const at = this.#now();
    if (at - this.#busyAt >= QUIET_MS) this.#overload = false;
    this.#busyAt = at;
  }

  #emptied(): void {
    if (this.waiting === 0) this.#queueSince = undefined;
  }

  /** A hold ended: the averages learn it, unless its work failed (a fast failure is not a fast answer). */
  #held(heldMs: number, ok: boolean): void {
    if (!ok) return;
    this.#holdMs = this.#holdMs === undefined ? heldMs : this.#holdMs + HOLD_ALPHA * (heldMs - this.#holdMs);
    if (this.waiting > 0 || this.overloaded) return; // not unloaded: its hold may include the load's own slowdown
    this.#baselineHoldMs =
      this.#baselineHoldMs === undefined ? heldMs : this.#baselineHoldMs + HOLD_ALPHA * (heldMs - this.#baselineHoldMs);
  }

  #busyMs(): number {
    return this.#opts.loop?.busyMs() ?? 0;
  }

  /** A served waiter's wait: whole, unless the loop was saturated meanwhile (then less its busy time). */
  #drainedMs(waiter: Waiter): number {
    const waitedMs = this.#now() - waiter.joinedAt;
    const busyMs = this.#busyMs() - waiter.busyAt;
    return busyMs >= LOOP_SATURATED * waitedMs ? Math.max(0, waitedMs - busyMs) : waitedMs;
  }

  #placeOf(priority: Priority): number {
    return this.#queues.high.length + (priority === 'normal' ? this.#queues.normal.length : 0) + 1;
  }

  #perPlaceMs(): number {
    const { permitMs, places } = this.#drain;
    // Nothing measured yet: admitted (their timeout still bounds them) unless the holders stall.
    const measured = places > 0 ? permitMs / places / Math.max(1, this.#opts.permits) : 0;
    return Math.max(measured, this.#stalledMs() / this.#opts.permits);
  }

  /** How long the youngest holder has held, when all permits are held for more than STALL_MS; else 0. */
  #stalledMs(): number {
    if (this.#free > 0 || this.#grantedAt.size === 0) return 0;
    let youngest = -Infinity;
    for (const g of this.#grantedAt) youngest = Math.max(youngest, g.at);
    const age = this.#now() - youngest;
    return age > STALL_MS ? age : 0;
  }

  /** A waiter left the queue served, or timed out (then `waitedMs` is a lower bound: counted as is). */
  #served(waiter: Waiter, waitedMs: number): void {
    const at = this.#now();
    const keep = DRAIN_DECAY * 2 ** (-(at - this.#drain.at) / DRAIN_HALF_LIFE_MS);
    this.#drain.permitMs = this.#drain.permitMs * keep + waitedMs * Math.max(1, this.#opts.permits);
    this.#drain.places = this.#drain.places * keep + waiter.place;
    this.#drain.at = at;
  }

  #next(): Waiter | undefined {
    const { high, normal } = this.#queues;
    if (high.length > 0 && (normal.length === 0 || this.#highRun < HIGH_RUN_MAX)) {
      if (normal.length > 0) this.#highRun++;
      return high.shift();
    }
    this.#highRun = 0;
    return normal.shift();
  }

  #releaser(): Release {
    const grant = { at: this.#now() };
    this.#grantedAt.add(grant);
    let released = false;
    return (ok = true) => {
      if (released) return;
      released = true;
      this.#grantedAt.delete(grant);
      this.#held(this.#now() - grant.at, ok);
      const next = this.#free >= 0 ? this.#next() : undefined; // shrunk below its holders: this permit is given back
      this.#emptied();
      if (next) {
        clearTimeout(next.timer);
        this.#served(next, this.#drainedMs(next));
        next.resolve(this.#releaser());
      } else {
        this.#free++;
      }
    };
  }
}

/** The gate's figures for /stats and /metrics. */
export const admissionOf = (gate: Gate): { estimateMs: number; shed: Record<ShedReason, number> } => ({
  estimateMs: gate.estimate().waitMs,
  shed: { ...gate.shedCounts },
});

/**
 * Writes (a route's transactional work) and the process's own work (health pings, migrations)
 * go first: a read shed or delayed is retried cheaply, a health check that waits behind reads
 * reports the queue rather than the database, and a write is the user's action.
 */
export const priorityOf = (work: { intent?: 'read' | 'transactional'; internal?: boolean }): Priority =>
  work.internal === true || work.intent === 'transactional' ? 'high' : 'normal';
