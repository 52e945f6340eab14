/** The connection gate on its own: permits, FIFO hand-over, bounded queue, timeouts, close. Fake timers only. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AppError } from '../errors.js';
import { Gate } from './gate.js';

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

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
    const gate = new Gate({ permits: 2, queueMax: 10, timeoutMs: 1000 });
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
    const gate = new Gate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
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
    const gate = new Gate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
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
    const gate = new Gate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
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
    const gate = new Gate({ permits: 1, queueMax: 10, timeoutMs: 300 });
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
    const gate = new Gate({ permits: 1, queueMax: 10, timeoutMs: 10_000 });
    await gate.acquire();
    const waiter = track(gate.acquire(50));
    await vi.advanceTimersByTimeAsync(50);
    expect(waiter.error).toMatchObject({ code: 'pool_exhausted' });
  });

  it('a granted waiter is never timed out later', async () => {
    const gate = new Gate({ permits: 1, queueMax: 10, timeoutMs: 300 });
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
    const gate = new Gate({ permits: 1, queueMax: 2, timeoutMs: 1000 });
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
    const gate = new Gate({ permits: 1, queueMax: 0, timeoutMs: 1000 });
    await gate.acquire();
    await expect(gate.acquire()).rejects.toMatchObject({ code: 'overloaded' });
  });

  it('close() refuses every waiter and every later acquire; holders keep their permits', async () => {
    const gate = new Gate({ permits: 1, queueMax: 10, timeoutMs: 1000 });
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
