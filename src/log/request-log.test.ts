/** Per-request lines on their own: every one at debug, bounded at info, one summary per interval. Fake timers only. */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createLog, type LogLevel, type LogRecord } from './logger.js';
import { RequestLog, type RequestEntry } from './request-log.js';

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

function setup(level: LogLevel, intervalMs = 10_000) {
  const records: LogRecord[] = [];
  const requests = new RequestLog({ log: createLog(level, (r) => records.push(r)), slowMs: 500, intervalMs });
  return { records, requests };
}

let n = 0;
const entry = (e: Partial<RequestEntry> = {}): RequestEntry => ({
  requestId: `r-${++n}`,
  method: 'GET',
  route: '/api/users/:id',
  status: 200,
  durationMs: 3.14159,
  dbMs: 1.2,
  acquireMs: 0.1,
  client: 'pool',
  queries: 1,
  retries: 0,
  ...e,
});

describe('RequestLog', () => {
  it('at debug writes a line per request with the documented fields', () => {
    const { records, requests } = setup('debug');
    requests.record(entry({ requestId: 'abc' }));
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({
      level: 'debug',
      event: 'request',
      requestId: 'abc',
      method: 'GET',
      route: '/api/users/:id',
      status: 200,
      client: 'pool',
      durationMs: 3.14,
      dbMs: 1.2,
      acquireMs: 0.1,
      queries: 1,
      retries: 0,
    });
    expect(records[0]!.msg).toBe('request abc GET /api/users/:id → 200 in 3 ms');
  });

  it('at info writes no line for a fast success, one for a 5xx with its cause, one for a slow request', () => {
    const { records, requests } = setup('info');
    requests.record(entry());
    requests.record(entry({ requestId: 'x', status: 503, code: 'database_unavailable', cause: 'Error 08006' }));
    requests.record(entry({ route: '/slow', durationMs: 800 }));
    expect(records.map((r) => [r.level, r.msg])).toEqual([
      ['error', 'request x GET /api/users/:id → 503 database_unavailable (Error 08006) in 3 ms'],
      ['warn', `request r-${n} GET /slow → 200 in 800 ms`],
    ]);
  });

  it('under overload: 237 shed requests make one line and one summary, not 237', async () => {
    const { records, requests } = setup('info');
    for (let i = 0; i < 237; i++) requests.record(entry({ method: 'POST', route: '/api/workouts', status: 503, code: 'overloaded' }));
    for (let i = 0; i < 40; i++) requests.record(entry());
    expect(records).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(records).toHaveLength(2);
    expect(records[1]).toMatchObject({ level: 'warn', event: 'requests', total: 277, '2xx': 40, '5xx': 237, unwritten: 236 });
    // A new interval: the first of each kind is written again.
    requests.record(entry({ route: '/api/workouts', status: 503, code: 'overloaded' }));
    expect(records).toHaveLength(3);
  });

  it('a request after the interval has ended writes the summary first, even when the timer never fired (an edge isolate)', () => {
    const { records, requests } = setup('info');
    requests.record(entry({ status: 500 }));
    vi.setSystemTime(Date.now() + 10_000); // the clock moves on, the timer does not run
    requests.record(entry({ status: 500 }));
    expect(records.map((r) => r.event)).toEqual(['request', 'requests', 'request']);
    expect(records[1]).toMatchObject({ total: 1, '5xx': 1 });
  });

  it('writes no summary while there are no requests, and close() writes what is counted; twice is harmless', async () => {
    const { records, requests } = setup('info');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(records).toEqual([]);
    requests.record(entry());
    requests.close();
    requests.close();
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ level: 'info', event: 'requests', total: 1 });
    requests.record(entry({ status: 500 }));
    await vi.advanceTimersByTimeAsync(60_000);
    expect(records).toHaveLength(1);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('at silent counts nothing and arms no timer', () => {
    const { records, requests } = setup('silent');
    requests.record(entry({ status: 500 }));
    expect(records).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });
});
