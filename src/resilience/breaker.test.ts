import { describe, expect, it } from 'vitest';
import type { OneShotConnector, SessionConnector } from '../db/core/connector.js';
import { createDatabase } from '../db/core/database.js';
import { AppError } from '../errors.js';
import { createBreaker, logBreakerChanges, probeDelayMs, type BreakerTuning } from './breaker.js';
import { createLog, type LogRecord } from '../log/logger.js';

const counted = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
const notCounted = Object.assign(new Error('duplicate key'), { code: '23505' });

/** A breaker on a fake clock (no jitter unless `random` says so); `fail`/`ok` run one call through it. */
function setup(threshold = 3, tuning: BreakerTuning = {}) {
  let clock = 0;
  const breaker = createBreaker('pg', { isFailure: (e) => e === counted, threshold, now: () => clock, random: () => 0, ...tuning });
  return {
    breaker,
    advance: (ms: number) => (clock += ms),
    fail: () => breaker.execute(() => Promise.reject(counted)).catch((e) => e),
    failOther: () => breaker.execute(() => Promise.reject(notCounted)).catch((e) => e),
    ok: () => breaker.execute(() => Promise.resolve('ok')).catch((e) => e),
  };
}

const isOpenError = (e: unknown) => e instanceof AppError && e.code === 'circuit_open' && e.status === 503;

/** How long the breaker stays open now: the fake clock advanced 1 ms at a time until it lets a probe through. */
function openFor(b: ReturnType<typeof setup>): number {
  let waited = 0;
  while (b.breaker.state() === 'open') waited += (b.advance(1), 1);
  return waited;
}

describe('createBreaker', () => {
  it('tells each transition once (opened, half-open, closed; reopened for longer), logged as breaker lines with the cause', async () => {
    const records: LogRecord[] = [];
    const b = setup(2, { onChange: logBreakerChanges(createLog('info', (r) => records.push(r))) });
    await b.ok();
    await b.fail();
    expect(records).toEqual([]);
    await b.fail();
    for (let i = 0; i < 5; i++) await b.fail(); // rejected while open: no further line
    b.advance(250);
    await b.fail(); // the probe fails: open again, for twice as long
    b.advance(500);
    await b.ok();
    await b.ok();
    expect(records.map((r) => [r.level, r.state, r.probeAfterMs, r.failedProbes])).toEqual([
      ['warn', 'open', 250, 0],
      ['info', 'half-open', undefined, 0],
      ['warn', 'open', 500, 1],
      ['info', 'half-open', undefined, 1],
      ['info', 'closed', undefined, 1],
    ]);
    expect(records[0]).toMatchObject({
      event: 'breaker',
      breaker: 'pg',
      cause: 'Error ECONNREFUSED',
      msg: 'poolgate: breaker pg opened (Error ECONNREFUSED); next probe in 250 ms',
    });
  });

  it('work our side abandoned (client gone, shutting down) neither counts nor resets the count', async () => {
    const b = setup(3);
    const abandon = (code: 'client_closed' | 'shutting_down') =>
      b.breaker.execute(() => Promise.reject(new AppError(code === 'client_closed' ? 499 : 503, code, 'gone'))).catch((e) => e);
    expect(await b.fail()).toBe(counted);
    expect(await b.fail()).toBe(counted);
    for (let i = 0; i < 5; i++) await abandon(i % 2 ? 'client_closed' : 'shutting_down');
    expect(b.breaker.state()).toBe('closed');
    expect(await b.fail()).toBe(counted); // the third counted failure in a row: the abandoned ones did not reset it
    expect(b.breaker.state()).toBe('open');
  });

  it('opens after `threshold` counted failures in a row, then rejects at once with 503 circuit_open + Retry-After', async () => {
    const b = setup(3, { probeAfterMs: 2_500, maxProbeAfterMs: 10_000 });
    for (let i = 0; i < 3; i++) expect(await b.fail()).toBe(counted);
    expect(b.breaker.state()).toBe('open');
    let called = false;
    const err = await b.breaker.execute(() => ((called = true), Promise.resolve('x'))).catch((e) => e);
    expect(called).toBe(false);
    expect(isOpenError(err)).toBe(true);
    expect((err as AppError).extra.retryAfterSec).toBe(3);
    expect(err.toResponse('r1').headers.get('retry-after')).toBe('3');
    expect(b.breaker.snapshot()).toEqual({ name: 'pg', state: 'open', openedCount: 1, rejectedCount: 1 });
  });

  it('a success resets the count: failures must be consecutive', async () => {
    const b = setup(3);
    await b.fail();
    await b.fail();
    expect(await b.ok()).toBe('ok');
    await b.fail();
    await b.fail();
    expect(b.breaker.state()).toBe('closed');
  });

  it('ignores failures it does not count (the caller’s mistakes say nothing about the upstream)', async () => {
    const b = setup(2);
    for (let i = 0; i < 10; i++) expect(await b.failOther()).toBe(notCounted);
    expect(b.breaker.state()).toBe('closed');
  });

  it('by default probes 250 ms after opening, doubling per failed probe up to 3 s; a healthy probe resets the schedule', async () => {
    const b = setup(1);
    await b.fail();
    const waits: number[] = [];
    for (let i = 0; i < 6; i++) {
      waits.push(openFor(b));
      expect(await b.fail()).toBe(counted); // the probe fails: open again, for longer
    }
    expect(waits).toEqual([250, 500, 1_000, 2_000, 3_000, 3_000]);
    b.advance(openFor(b));
    expect(await b.ok()).toBe('ok');
    expect(b.breaker.state()).toBe('closed');
    await b.fail();
    expect(openFor(b)).toBe(250);
  });

  it('jitters each wait down by up to 60%: the first probe comes 100–250 ms after opening', async () => {
    expect(probeDelayMs(0, 250, 3_000, () => 0)).toBe(250);
    expect(probeDelayMs(0, 250, 3_000, () => 0.5)).toBe(175);
    expect(probeDelayMs(0, 250, 3_000, () => 0.9999)).toBe(100);
    expect(probeDelayMs(3, 250, 3_000, () => 0.5)).toBe(1_400);
    expect(probeDelayMs(20, 250, 3_000, () => 0)).toBe(3_000);
    for (let i = 0; i < 1_000; i++) {
      const first = probeDelayMs(0, 250, 3_000);
      expect(first).toBeGreaterThanOrEqual(100);
      expect(first).toBeLessThanOrEqual(250);
    }
    const b = setup(1, { random: () => 0.5 });
    await b.fail();
    expect(openFor(b)).toBe(175);
  });

  it('draws the jitter once per opening: the state is a function of the clock alone (no timer)', async () => {
    let draws = 0;
    const b = setup(1, { random: () => (draws++, 0.25) });
    await b.fail();
    for (let i = 0; i < 50; i++) expect(b.breaker.state()).toBe('open');
    expect(draws).toBe(1);
    expect(openFor(b)).toBe(213); // 250 × (1 − 0.6 × 0.25), rounded
  });

  it('Retry-After is the wait left, in whole seconds rounded up, never below 1', async () => {
    const b = setup(1, { probeAfterMs: 3_000, maxProbeAfterMs: 3_000 });
    await b.fail();
    const retryAfter = async () => ((await b.ok()) as AppError).extra.retryAfterSec;
    expect(await retryAfter()).toBe(3);
    b.advance(1_200);
    expect(await retryAfter()).toBe(2);
    b.advance(1_799);
    expect(await retryAfter()).toBe(1);
    // Half-open with a probe in flight: the others are refused, and told to come back in 1 s.
    b.advance(1);
    let finish!: () => void;
    const probe = b.breaker.execute(() => new Promise<void>((r) => (finish = r)));
    expect(await retryAfter()).toBe(1);
    finish();
    await probe;
  });

  it('half-open after the wait: one probe goes through, the others are rejected while it runs', async () => {
    const b = setup(1, { probeAfterMs: 1_000 });
    await b.fail();
    b.advance(999);
    expect(b.breaker.state()).toBe('open');
    b.advance(1);
    expect(b.breaker.state()).toBe('half-open');
    let finish!: (v: string) => void;
    const probe = b.breaker.execute(() => new Promise<string>((r) => (finish = r)));
    expect(isOpenError(await b.ok())).toBe(true);
    finish('probed');
    expect(await probe).toBe('probed');
    expect(b.breaker.state()).toBe('closed');
    expect(await b.ok()).toBe('ok');
  });

  it('a failed probe re-opens it for a doubled wait', async () => {
    const b = setup(1, { probeAfterMs: 1_000 });
    await b.fail();
    b.advance(1_000);
    expect(await b.fail()).toBe(counted);
    expect(b.breaker.state()).toBe('open');
    expect(b.breaker.snapshot().openedCount).toBe(2);
    b.advance(1_999);
    expect(isOpenError(await b.ok())).toBe(true);
    b.advance(1);
    expect(await b.ok()).toBe('ok');
  });

  it('a probe that fails with an uncounted error closes it: the upstream answered', async () => {
    const b = setup(1, { probeAfterMs: 1_000 });
    await b.fail();
    b.advance(1_000);
    expect(await b.failOther()).toBe(notCounted);
    expect(b.breaker.state()).toBe('closed');
    await b.fail();
    expect(openFor(b)).toBe(1_000); // the schedule started over
  });

  it('counts rejections, and a probe that throws synchronously does not wedge it half-open', async () => {
    const b = setup(1, { probeAfterMs: 100 });
    await b.fail();
    await b.ok();
    await b.ok();
    expect(b.breaker.snapshot().rejectedCount).toBe(2);
    b.advance(100);
    const err = await b.breaker
      .execute(() => {
        throw counted;
      })
      .catch((e) => e);
    expect(err).toBe(counted);
    b.advance(200);
    expect(await b.ok()).toBe('ok'); // the next probe was allowed
  });

  it('the circuit_open error names the failure that opened it as its cause (for start-up and logs)', async () => {
    const b = setup(1);
    await b.fail();
    const err = (await b.ok()) as AppError;
    expect(isOpenError(err)).toBe(true);
    expect(err.extra.cause).toBe(counted);
  });
});

describe('createDatabase passes breaker options through', () => {
  const refused = () => Promise.reject(counted);
  const sessions: SessionConnector = {
    kind: 'pg-pool',
    upstream: 'postgres',
    source: () => ({ acquire: refused }),
    close: () => Promise.resolve(),
  };
  const oneShot: OneShotConnector = { kind: 'neon-http', upstream: 'neon-http', query: refused, batch: refused };

  it('to the session and the one-shot breakers: threshold, clock and schedule', async () => {
    let clock = 0;
    const database = createDatabase({ sessions, oneShot, breaker: { threshold: 1, probeAfterMs: 400, now: () => clock, random: () => 0 } });
    for (const breaker of [database.sessions!.breaker, database.oneShot!.breaker]) {
      expect(await breaker.execute(refused).catch((e) => e)).toBe(counted);
      expect(breaker.state()).toBe('open');
    }
    clock += 399;
    expect(database.breakers().map((b) => b.state)).toEqual(['open', 'open']);
    clock += 1;
    expect(database.breakers().map((b) => b.state)).toEqual(['half-open', 'half-open']);
    await database.close();
  });
});
