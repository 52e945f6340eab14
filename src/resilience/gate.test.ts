/**
 * The connection gate on its own: permits, FIFO hand-over, the memory bound, timeouts, close; then
 * admission by predicted wait and the two priorities. Fake timers and the faked Date as its clock only.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AppError } from '../errors.js';
import { Gate, priorityOf, type GateOptions } from './gate.js';

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

/** The gate's clock is the faked Date, so holds and waits are measured in fake time. */
const newGate = (opts: Omit<GateOptions, 'now'>) => new Gate({ ...opts, now: () => Date.now() });

/** Settles what is already settled, without advancing time. */
const flush = () => vi.advanceTimersByTimeAsync(0);

function track<T>(p: Promise<T>) {
  const state: { value?: T; error?: unknown; settled: boolean } = { settled: false };
  p.then(
    (value) => Object.assign(state, { value, settled: true }),
    (error) => Object.assign(state, { error, settled: true }),
  );
  return state;
}

describe('Gate', () => {
  it('grants up to `permits` at once, then queues', async () => {
    const gate = newGate({ permits: 2, queueMax: 10, timeoutMs: 1000 });
    const a = track(gate.acquire());
    const b = track(gate.acquire());
    const c = track(gate.acquire());
    await flush();
    expect([a.settled, b.settled, c.settled]).toEqual([true, true, false]);
    expect(gate.held).toBe(2);
    expect(gate.waiting).toBe(1);
  });

  it('resizes: more permits let waiters in at once, fewer are taken back as holders release', async () => {
    const gate = new Gate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
    const first = await gate.acquire();
    const b = track(gate.acquire());
    const c = track(gate.acquire());
    gate.resize(2);
    await flush();
    expect([b.settled, c.settled]).toEqual([true, false]);
    gate.resize(1); // two held, one allowed: the next release gives its permit back
    first();
    await flush();
    expect(c.settled).toBe(false);
    expect(gate.held).toBe(1);
    b.value!();
    await flush();
    expect(c.settled).toBe(true);
    expect(gate.held).toBe(1);
  });

  it('hands a released permit to the longest waiter first', async () => {
    const gate = newGate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
    const first = await gate.acquire();
    const order: string[] = [];
    const second = gate.acquire().then((r) => (order.push('second'), r));
    const third = gate.acquire().then((r) => (order.push('third'), r));
    first();
    (await second)();
    (await third)();
    expect(order).toEqual(['second', 'third']);
    expect(gate.held).toBe(0);
  });

  it('does not let a newcomer barge past waiters', async () => {
    const gate = newGate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
    const holder = await gate.acquire();
    const waiter = track(gate.acquire());
    holder(); // the permit goes straight to the waiter …
    const newcomer = track(gate.acquire()); // … so the newcomer must queue
    await flush();
    expect(waiter.settled).toBe(true);
    expect(newcomer.settled).toBe(false);
    expect(gate.waiting).toBe(1);
  });

  it('a release function is harmless when called twice', async () => {
    const gate = newGate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
    const release = await gate.acquire();
    release();
    release();
    expect(gate.held).toBe(0);
    await gate.acquire();
    const extra = track(gate.acquire());
    await flush();
    expect(extra.settled).toBe(false); // the double release did not mint a second permit
  });

  it('a waiter gives up after timeoutMs with 503 pool_exhausted and leaves the queue', async () => {
    const gate = newGate({ permits: 1, queueMax: 10, timeoutMs: 300 });
    await gate.acquire();
    const waiter = track(gate.acquire());
    await vi.advanceTimersByTimeAsync(299);
    expect(waiter.settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(waiter.error).toBeInstanceOf(AppError);
    expect(waiter.error).toMatchObject({ status: 503, code: 'pool_exhausted', extra: { retryAfterSec: 1 } });
    expect(gate.waiting).toBe(0);
    expect(gate.timedOutCount).toBe(1);
  });

  it('honours a per-call timeout', async () => {
    const gate = newGate({ permits: 1, queueMax: 10, timeoutMs: 10_000 });
    await gate.acquire();
    const waiter = track(gate.acquire({ timeoutMs: 50 }));
    await vi.advanceTimersByTimeAsync(50);
    expect(waiter.error).toMatchObject({ code: 'pool_exhausted' });
  });

  it('a granted waiter is never timed out later', async () => {
    const gate = newGate({ permits: 1, queueMax: 10, timeoutMs: 300 });
    const holder = await gate.acquire();
    const waiter = track(gate.acquire());
    await vi.advanceTimersByTimeAsync(100);
    holder();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(waiter.settled).toBe(true);
    expect(waiter.error).toBeUndefined();
    expect(gate.timedOutCount).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('refuses at once with 503 overloaded when the queue is full', async () => {
    const gate = newGate({ permits: 1, queueMax: 2, timeoutMs: 1000 });
    await gate.acquire();
    track(gate.acquire());
    track(gate.acquire());
    const refused = track(gate.acquire());
    await flush();
    expect(refused.error).toMatchObject({ status: 503, code: 'overloaded' });
    expect(gate.rejectedCount).toBe(1);
    expect(gate.waiting).toBe(2);
  });

  it('with queueMax 0, refuses as soon as every permit is held', async () => {
    const gate = newGate({ permits: 1, queueMax: 0, timeoutMs: 1000 });
    await gate.acquire();
    await expect(gate.acquire()).rejects.toMatchObject({ code: 'overloaded' });
  });

  it('close() refuses every waiter and every later acquire; holders keep their permits', async () => {
    const gate = newGate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
    const holder = await gate.acquire();
    const waiters = [track(gate.acquire()), track(gate.acquire())];
    gate.close();
    await flush();
    for (const w of waiters) expect(w.error).toMatchObject({ status: 503, code: 'shutting_down' });
    await expect(gate.acquire()).rejects.toMatchObject({ code: 'shutting_down' });
    expect(gate.held).toBe(1);
    holder();
    expect(gate.held).toBe(0);
    expect(vi.getTimerCount()).toBe(0); // the waiters' timers were cleared
    gate.close(); // twice: harmless
  });
});

/** `count` waiters queued on `gate`, tracked. */
const queueOf = (gate: Gate, count: number, options = {}) => Array.from({ length: count }, () => track(gate.acquire(options)));

/**
 * Teaches `gate` that one place in its queue takes `ms` (and a hold `ms`), `times` times over: all
 * permits held, one waiter queued, served `ms` later, which then holds for `ms`.
 */
async function learnDrain(gate: Gate, permits: number, ms: number, times = 10) {
  for (let i = 0; i < times; i++) {
    const holders = await Promise.all(Array.from({ length: permits }, () => gate.acquire()));
    const waiter = gate.acquire();
    await vi.advanceTimersByTimeAsync(ms);
    for (const h of holders) h();
    const release = await waiter;
    await vi.advanceTimersByTimeAsync(ms);
    release();
  }
}

describe('Gate admission by predicted wait', () => {
  it('queues a burst of fast work far past any count bound: 2,000 waiters behind 1 ms holds', async () => {
    const gate = newGate({ permits: 4, queueMax: 100_000, timeoutMs: 5_000 });
    await learnDrain(gate, 4, 1);
    const holders = await Promise.all(Array.from({ length: 4 }, () => gate.acquire()));
    const waiters = queueOf(gate, 2_000); // predicted wait of the last: 2,000 places × 1 ms
    await flush();
    expect(waiters.filter((w) => w.settled)).toEqual([]);
    expect(gate.waiting).toBe(2_000);
    expect(gate.shedCounts).toEqual({ wait: 0, deadline: 0, overload: 0, queue_full: 0 });
    for (const h of holders) h();
    for (const w of waiters) {
      await flush();
      (w.value as () => void)();
    }
    expect(gate.waiting).toBe(0);
    expect(gate.held).toBe(0);
  });

  it('sheds at once, 503 overloaded, when the predicted wait exceeds the acquire timeout; Retry-After from the estimate', async () => {
    const gate = newGate({ permits: 2, queueMax: 100_000, timeoutMs: 1_000 });
    await learnDrain(gate, 2, 50);
    await gate.acquire();
    await gate.acquire();
    const admitted = queueOf(gate, 20); // the 20th: 20 places × 50 ms = 1,000 ms — fits
    const shed = track(gate.acquire()); // the 21st: 1,050 ms — does not
    await flush();
    expect(admitted.some((w) => w.settled)).toBe(false);
    expect(shed.error).toMatchObject({ status: 503, code: 'overloaded', extra: { retryAfterSec: 2 } });
    expect(gate.shedCounts).toEqual({ wait: 1, deadline: 0, overload: 0, queue_full: 0 });
    expect(gate.waiting).toBe(20);
    expect(gate.estimate()).toEqual({ waitMs: 1_050, holdMs: 50 });
  });

  it('a pool that grows predicts from its size now: a place measured at 80 ms with one permit takes 10 ms with eight', async () => {
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 10_000 });
    await learnDrain(gate, 1, 80);
    await gate.acquire();
    queueOf(gate, 19);
    expect(gate.estimate().waitMs).toBe(1_600); // 20 places × 80 ms
    gate.resize(8); // a budget's share widened: 7 of the waiters get permits at once
    await flush();
    queueOf(gate, 17 - gate.waiting);
    expect(gate.waiting).toBe(17);
    expect(gate.estimate().waitMs).toBeCloseTo(180, 0); // 18 places × 80 ms ÷ 8 (and a trace of the served waiters' own waits)
  });

  it("sheds when the predicted wait plus one hold does not fit the request's remaining deadline", async () => {
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 10_000 });
    await learnDrain(gate, 1, 50);
    await gate.acquire();
    const fits = track(gate.acquire({ remainingMs: 100 })); // waits 50, holds 50: 100
    const late = track(gate.acquire({ remainingMs: 140 })); // waits 100, holds 50: 150
    await flush();
    expect(fits.settled).toBe(false);
    expect(late.error).toMatchObject({ code: 'overloaded', extra: { retryAfterSec: 1 } });
    expect(gate.shedCounts.deadline).toBe(1);
  });

  it('a waiter admitted on a wrong estimate still gives up at its timeout', async () => {
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 300 });
    await learnDrain(gate, 1, 1);
    await gate.acquire();
    const waiter = track(gate.acquire());
    await vi.advanceTimersByTimeAsync(300);
    expect(waiter.error).toMatchObject({ code: 'pool_exhausted' });
    expect(gate.timedOutCount).toBe(1);
  });

  it('a stall raises the estimate before any release: holders older than STALL_MS count as they are', async () => {
    const gate = newGate({ permits: 2, queueMax: 100_000, timeoutMs: 1_000 });
    const holders = [await gate.acquire(), await gate.acquire()]; // nothing measured yet: a cold gate admits
    const early = track(gate.acquire());
    await vi.advanceTimersByTimeAsync(2_100); // the early waiter timed out; the holders hold on
    expect(early.error).toMatchObject({ code: 'pool_exhausted' });
    expect(gate.estimate().waitMs).toBe(1_050); // 1 place × 2,100 ms ÷ 2
    const probe = track(gate.acquire()); // the next in line always queues …
    await expect(gate.acquire()).rejects.toMatchObject({ code: 'overloaded', extra: { retryAfterSec: 3 } }); // … the one behind it is shed
    expect(probe.settled).toBe(false);
    for (const h of holders) h();
    await flush();
    expect(probe.settled).toBe(true); // served at once: the estimate learns the pool is free again
    expect(gate.estimate().waitMs).toBe(0);
    expect(gate.shedCounts.wait).toBe(1);
  });

  it('long holds alone do not shed: before any waiter was served, a queue is admitted (a burst stalls the event loop, not the pool)', async () => {
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 1_000 });
    const first = await gate.acquire();
    await vi.advanceTimersByTimeAsync(500); // a hold of 500 ms, as a burst's arrival makes them look
    first();
    await gate.acquire();
    const waiters = queueOf(gate, 100); // holds ÷ permits would predict 50 s for the last
    await flush();
    expect(waiters.some((w) => w.settled)).toBe(false);
    expect(gate.estimate()).toEqual({ waitMs: 0, holdMs: 500 });
  });

  it('a waiter that timed out counts with its whole wait: the estimate rises, never falls', async () => {
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 300 });
    await learnDrain(gate, 1, 1);
    await gate.acquire();
    const before = gate.estimate().waitMs;
    const waiter = track(gate.acquire());
    await vi.advanceTimersByTimeAsync(300);
    expect(waiter.error).toMatchObject({ code: 'pool_exhausted' });
    expect(before).toBe(1);
    expect(gate.estimate().waitMs).toBeGreaterThan(40); // (6.5 × 0.9 + 300) ÷ (6.5 × 0.9 + 1) ms a place
  });

  /** One waiter served after 300 ms, during which the loop was busy for `busyMs`; then 900 queue behind a holder. */
  async function afterBusyWait(busyMs: number) {
    const loop = { busy: 0, busyMs: () => loop.busy };
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 1_000, loop });
    await learnDrain(gate, 1, 1);
    const holder = await gate.acquire();
    const next = track(gate.acquire());
    await vi.advanceTimersByTimeAsync(300);
    loop.busy += busyMs;
    holder();
    await flush();
    expect(next.settled).toBe(true);
    queueOf(gate, 900);
    await flush();
    return gate;
  }

  it("a wait the event loop was busy for throughout is the process's, not the pool's: 299 of 300 ms busy leave the estimate near 1 ms a place", async () => {
    const gate = await afterBusyWait(299);
    expect(gate.estimate().waitMs).toBeLessThan(1_000); // the 900th at about 1 ms a place
    expect(gate.shedCounts.wait).toBe(0);
  });

  it('a wait the loop was only partly busy in counts whole (the pool set the pace): 90 of 300 ms busy, the estimate rises and the 900th is shed', async () => {
    const gate = await afterBusyWait(90);
    expect(gate.estimate().waitMs).toBeGreaterThan(1_000);
    expect(gate.shedCounts.wait).toBeGreaterThan(0);
  });

  it('after a quiet spell, the next waiter served sets the estimate: old slowness does not linger', async () => {
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 10_000 });
    await learnDrain(gate, 1, 100);
    const holder = await gate.acquire();
    expect(gate.estimate().waitMs).toBeCloseTo(100);
    holder();
    await vi.advanceTimersByTimeAsync(10_000);
    await learnDrain(gate, 1, 1, 1);
    await gate.acquire();
    expect(gate.estimate().waitMs).toBeLessThan(2); // a value, not a timing: 1 ms a place, and a trace of the old 100
  });

  it('queueMax stays a memory bound: refused (queue_full) however short the predicted wait', async () => {
    const gate = newGate({ permits: 1, queueMax: 3, timeoutMs: 1_000 });
    await learnDrain(gate, 1, 1);
    await gate.acquire();
    queueOf(gate, 3);
    await expect(gate.acquire()).rejects.toMatchObject({ code: 'overloaded' });
    expect(gate.shedCounts).toEqual({ wait: 0, deadline: 0, overload: 0, queue_full: 1 });
    expect(gate.rejectedCount).toBe(1);
  });

  it('Retry-After is at most a minute, however long the backlog', async () => {
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 300_000 });
    await learnDrain(gate, 1, 200_000, 1);
    await gate.acquire();
    track(gate.acquire()); // waits 200 s: fits
    await expect(gate.acquire()).rejects.toMatchObject({ extra: { retryAfterSec: 60 } }); // 400 s does not
  });

  it('calls onShed once per shed request, with its reason', async () => {
    const gate = newGate({ permits: 1, queueMax: 1, timeoutMs: 100 });
    const reasons: string[] = [];
    gate.onShed = (r) => reasons.push(r);
    await learnDrain(gate, 1, 60, 1);
    await gate.acquire();
    track(gate.acquire()); // waits 60: fits
    track(gate.acquire()); // the queue is at its bound
    track(gate.acquire({ remainingMs: 1_000 }));
    await flush();
    expect(reasons).toEqual(['queue_full', 'queue_full']);
  });
});

describe('Gate priorities', () => {
  it('high waiters (writes, health) are served before normal ones (reads), whatever the arrival order', async () => {
    const gate = newGate({ permits: 1, queueMax: 100, timeoutMs: 1_000 });
    const holder = await gate.acquire();
    const order: string[] = [];
    const wait = (name: string, priority: 'high' | 'normal') => gate.acquire({ priority }).then((release) => (order.push(name), release()));
    const all = [wait('read 1', 'normal'), wait('read 2', 'normal'), wait('write', 'high'), wait('health', 'high')];
    holder();
    await Promise.all(all);
    expect(order).toEqual(['write', 'health', 'read 1', 'read 2']);
  });

  it("a high waiter's predicted wait counts only the high waiters ahead: it is admitted behind a flood of reads", async () => {
    const gate = newGate({ permits: 1, queueMax: 100_000, timeoutMs: 1_000 });
    await learnDrain(gate, 1, 10);
    await gate.acquire();
    queueOf(gate, 100); // reads up to the timeout: the 100th waits 100 × 10 ms = 1,000 ms
    await expect(gate.acquire()).rejects.toMatchObject({ code: 'overloaded' }); // one more read does not fit
    const write = track(gate.acquire({ priority: 'high' }));
    await flush();
    expect(write.settled).toBe(false); // queued, not shed
    expect(gate.estimate('high').waitMs).toBe(20); // the next write: behind this one only
    expect(gate.estimate('normal').waitMs).toBe(1_020);
  });

  it('reads are not starved by a flood of writes: after 4 high grants in a row, a read goes', async () => {
    const gate = newGate({ permits: 2, queueMax: 100, timeoutMs: 10_000 });
    const holders = [await gate.acquire(), await gate.acquire()];
    const order: string[] = [];
    const go = (name: string, priority: 'high' | 'normal') =>
      track(gate.acquire({ priority }).then((release) => (order.push(name), release)));
    const read = go('read', 'normal');
    const writes = Array.from({ length: 6 }, (_, i) => go(`write ${i + 1}`, 'high'));
    holders[0]!();
    // Each grant is released at once, in turn, so the hand-over order is the queue's order.
    const released = new Set<unknown>();
    for (let round = 0; round < 10; round++) {
      await flush();
      for (const w of [read, ...writes]) {
        if (w.settled && !released.has(w)) {
          released.add(w);
          (w.value as () => void)();
        }
      }
    }
    expect(order.slice(0, 5)).toEqual(['write 1', 'write 2', 'write 3', 'write 4', 'read']);
    expect(order).toHaveLength(7);
  });

  it("priorityOf: transactional work and the process's own are high; reads and unknown intent normal", () => {
    expect(priorityOf({ intent: 'transactional' })).toBe('high');
    expect(priorityOf({ intent: 'read', internal: true })).toBe('high');
    expect(priorityOf({ intent: 'read' })).toBe('normal');
    expect(priorityOf({})).toBe('normal');
  });
});
