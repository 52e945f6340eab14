/** The shed log on its own: one line per interval with counts, none when nothing was shed, timers cleared. Fake timers only. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ShedLog } from './shed-log.js';

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe('ShedLog', () => {
  it('writes one line for a thousand sheds in an interval, with counts by path and reason', async () => {
    const lines: string[] = [];
    const shed = new ShedLog({ log: (l) => lines.push(l), intervalMs: 10_000 });
    for (let i = 0; i < 990; i++) shed.count('pool', 'wait');
    for (let i = 0; i < 7; i++) shed.count('pool', 'deadline');
    for (let i = 0; i < 3; i++) shed.count('lanes', 'queue_full');
    await vi.advanceTimersByTimeAsync(9_999);
    expect(lines).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(lines).toEqual([
      'poolgate: shed requests with 503 overloaded in the last 10 s: pool 997 (wait 990, deadline 7, overload 0, queue_full 0); lanes 3 (wait 0, deadline 0, overload 0, queue_full 3)',
    ]);
  });

  it('writes nothing while nothing is shed, and starts counting afresh after each line', async () => {
    const lines: string[] = [];
    const shed = new ShedLog({ log: (l) => lines.push(l), intervalMs: 1_000 });
    await vi.advanceTimersByTimeAsync(5_000);
    expect(lines).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
    shed.count('pool', 'wait');
    await vi.advanceTimersByTimeAsync(1_000);
    shed.count('pool', 'wait');
    shed.count('pool', 'wait');
    await vi.advanceTimersByTimeAsync(5_000);
    expect(lines.map((l) => l.slice(l.indexOf(' s: ') + 4))).toEqual([
      'pool 1 (wait 1, deadline 0, overload 0, queue_full 0)',
      'pool 2 (wait 2, deadline 0, overload 0, queue_full 0)',
    ]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('close() writes what was counted, clears its timer, and logs nothing after; twice is harmless', () => {
    const lines: string[] = [];
    const shed = new ShedLog({ log: (l) => lines.push(l) });
    shed.count('lanes', 'deadline');
    shed.close();
    shed.close();
    shed.count('lanes', 'deadline');
    expect(lines).toHaveLength(1);
    expect(vi.getTimerCount()).toBe(0);
  });
});
