/**
 * The gate under a sustained overload, against a simulated server (fake timers and the faked Date as
 * its clock): 4 permits, each request holding one for 48 ms, so 83 requests a second at most and an
 * unloaded latency of 48 ms. Open-loop arrivals at 1× and 3× that; what is measured is fake time,
 * so the figures are exact, not timings of this machine.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Gate } from './gate.js';

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

const PERMITS = 4;
const HOLD_MS = 48;
const CAPACITY_PER_SEC = (PERMITS * 1000) / HOLD_MS;

interface Run {
  /** Admitted requests: when they arrived, and arrival to release. */
  served: { at: number; latencyMs: number }[];
  /** Shed requests: when they arrived, and how long their answer took. */
  shed: { at: number; afterMs: number; reason: string }[];
}

/** One request every `everyMs` for `forMs`, each holding its permit `holdMs(at)` once admitted; then `settleMs` for the last to finish. */
async function drive(
  gate: Gate,
  everyMs: number,
  forMs: number,
  holdMs: (at: number) => number = () => HOLD_MS,
  settleMs = 20_000,
): Promise<Run> {
  const run: Run = { served: [], shed: [] };
  const t0 = Date.now();
  for (let at = 0; at < forMs; at += everyMs) {
    const arrived = Date.now();
    gate.acquire({ remainingMs: 15_000 }).then(
      (release) =>
        setTimeout(
          () => {
            release();
            run.served.push({ at: arrived - t0, latencyMs: Date.now() - arrived });
          },
          holdMs(arrived - t0),
        ),
      (err: { code?: string }) => run.shed.push({ at: arrived - t0, afterMs: Date.now() - arrived, reason: err.code ?? '?' }),
    );
    await vi.advanceTimersByTimeAsync(everyMs);
  }
  await vi.advanceTimersByTimeAsync(settleMs);
  return run;
}

const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.ceil(xs.length * 0.99) - 1] ?? 0;
const newGate = (overloadShedding = true) =>
  new Gate({ permits: PERMITS, queueMax: 10_000, timeoutMs: 5_000, overloadShedding, now: () => Date.now() });

describe('Gate under a sustained overload (simulated server)', () => {
  it('at 1× capacity sheds nothing', async () => {
    const run = await drive(newGate(), 1000 / CAPACITY_PER_SEC, 20_000);
    expect(run.shed).toEqual([]);
    expect(p99(run.served.map((s) => s.latencyMs))).toBeLessThanOrEqual(2 * HOLD_MS);
  });

  it('at 3× capacity, settled within 10 s: admitted p99 ≤ 2× unloaded, goodput ≥ 90% of capacity, sheds answered at once', async () => {
    const gate = newGate();
    const run = await drive(gate, 1000 / CAPACITY_PER_SEC / 3, 20_000);
    const settled = run.served.filter((s) => s.at >= 10_000);
    expect(p99(settled.map((s) => s.latencyMs))).toBeLessThanOrEqual(2 * HOLD_MS);
    expect(settled.length / 10).toBeGreaterThanOrEqual(0.9 * CAPACITY_PER_SEC);
    expect(run.shed.length).toBeGreaterThan(0);
    expect(run.shed.filter((s) => s.afterMs > 0)).toEqual([]); // refused at once, never after a wait
    expect(gate.shedCounts.overload).toBeGreaterThan(0);
    expect(gate.timedOutCount).toBe(0);
  });

  it('with overload shedding off (the default), a standing queue sheds only by the acquire timeout or the deadline', async () => {
    const gate = newGate(false);
    await drive(gate, 1000 / CAPACITY_PER_SEC / 3, 20_000);
    expect(gate.shedCounts.overload).toBe(0);
    expect(gate.shedCounts.wait + gate.shedCounts.deadline).toBeGreaterThan(0);
  });

  it('a 2-second spike at 3× is absorbed, then 1× load is served without a shed once the queue has cleared', async () => {
    const gate = newGate();
    await drive(gate, 1000 / CAPACITY_PER_SEC / 3, 1_500); // a burst: queued, not shed
    expect(gate.shedCounts).toEqual({ wait: 0, deadline: 0, overload: 0, queue_full: 0 });
    const after = await drive(gate, 1000 / CAPACITY_PER_SEC, 10_000);
    expect(after.shed).toEqual([]);
  });

  it('leaves the overload once arrivals find free permits, and sheds no burst on the way out', async () => {
    const gate = newGate();
    await drive(gate, 1000 / CAPACITY_PER_SEC / 3, 12_000);
    expect(gate.overloaded).toBe(false); // the queue drained while drive() waited for the last answers
    const shedBefore = gate.shedCounts.overload;
    const light = await drive(gate, (1000 / CAPACITY_PER_SEC) * 2, 5_000);
    expect(light.shed).toEqual([]);
    expect(gate.shedCounts.overload).toBe(shedBefore);
  });

  it('after a quiet spell, the next spike starts as a burst again (queued, not shed)', async () => {
    const gate = newGate();
    await drive(gate, 1000 / CAPACITY_PER_SEC / 3, 12_000); // overloaded, then drained and quiet
    const shedBefore = gate.shedCounts.overload;
    const spike = await drive(gate, 1000 / CAPACITY_PER_SEC / 3, 1_500);
    expect(spike.shed).toEqual([]);
    expect(gate.shedCounts.overload).toBe(shedBefore);
  });

  it('the target does not creep: holds measured during the overload (slower, as overloads make them) leave it at the unloaded one', async () => {
    const gate = newGate();
    await drive(gate, 1000 / CAPACITY_PER_SEC / 2, 2_000); // unloaded, 48 ms holds
    expect(gate.targetWaitMs).toBeCloseTo(HOLD_MS / 2);
    await drive(gate, 1000 / CAPACITY_PER_SEC / 3, 14_000, () => 2 * HOLD_MS, 0); // 3×, holds now 96 ms
    expect(gate.overloaded).toBe(true);
    expect(gate.estimate().holdMs).toBeCloseTo(2 * HOLD_MS); // the recent hold follows …
    expect(gate.targetWaitMs).toBeCloseTo(HOLD_MS / 2); // … the target does not
  });

  it('a fast failure is not read as a fast answer: holds released as failed leave the averages alone', async () => {
    const gate = newGate();
    for (let i = 0; i < 10; i++) {
      const release = await gate.acquire();
      await vi.advanceTimersByTimeAsync(HOLD_MS);
      release();
    }
    for (let i = 0; i < 50; i++) {
      const release = await gate.acquire();
      await vi.advanceTimersByTimeAsync(1);
      release(false);
    }
    expect(gate.estimate().holdMs).toBeCloseTo(HOLD_MS);
  });
});
