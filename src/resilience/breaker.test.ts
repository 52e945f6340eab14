import { describe, expect, it } from 'vitest';
import { AppError } from '../errors.js';
import { createBreaker } from './breaker.js';

const counted = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
const notCounted = Object.assign(new Error('duplicate key'), { code: '23505' });

/** A breaker on a fake clock; `fail`/`ok`/`hang` run one call through it. */
function setup(threshold = 3, halfOpenAfterMs = 1_000) {
  let clock = 0;
  const breaker = createBreaker('pg', { isFailure: (e) => e === counted, threshold, halfOpenAfterMs, now: () => clock });
  return {
    breaker,
    advance: (ms: number) => (clock += ms),
    fail: () => breaker.execute(() => Promise.reject(counted)).catch((e) => e),
    failOther: () => breaker.execute(() => Promise.reject(notCounted)).catch((e) => e),
    ok: () => breaker.execute(() => Promise.resolve('ok')).catch((e) => e),
  };
}

const isOpenError = (e: unknown) => e instanceof AppError && e.code === 'circuit_open' && e.status === 503;

describe('createBreaker', () => {
  it('opens after `threshold` counted failures in a row, then rejects at once with 503 circuit_open + Retry-After', async () => {
    const b = setup(3, 2_500);
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

  it('half-open after the wait: one probe goes through, the others are rejected while it runs', async () => {
    const b = setup(1, 1_000);
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

  it('a failed probe re-opens it for another full wait', async () => {
    const b = setup(1, 1_000);
    await b.fail();
    b.advance(1_000);
    expect(await b.fail()).toBe(counted);
    expect(b.breaker.state()).toBe('open');
    expect(b.breaker.snapshot().openedCount).toBe(2);
    b.advance(999);
    expect(isOpenError(await b.ok())).toBe(true);
    b.advance(1);
    expect(await b.ok()).toBe('ok');
  });

  it('a probe that fails with an uncounted error closes it: the upstream answered', async () => {
    const b = setup(1, 1_000);
    await b.fail();
    b.advance(1_000);
    expect(await b.failOther()).toBe(notCounted);
    expect(b.breaker.state()).toBe('closed');
  });

  it('counts rejections, and a probe that throws synchronously does not wedge it half-open', async () => {
    const b = setup(1, 100);
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
    b.advance(100);
    expect(await b.ok()).toBe('ok'); // the next probe was allowed
  });
});
