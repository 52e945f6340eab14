import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { AppError, markFailure, OverloadedError, PoolExhaustedError } from '../errors.js';
import { backoffMs, isRetryable, markRerunnable, RetryBudget, withRetry, type RetryScope } from './retry.js';

const pgError = (code: string, message = 'boom') => Object.assign(new Error(message), { code });
const SCOPES: RetryScope[] = ['connect', 'transaction', 'read'];

describe('isRetryable: the one retry decision', () => {
  it.each(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', '53300', '57P03'])(
    'never reached the database (%s): retryable in every scope',
    (code) => {
      for (const scope of SCOPES) expect(isRetryable(pgError(code), scope), scope).toBe(true);
    },
  );

  it('a connect that timed out is retryable only while connecting', () => {
    const err = markFailure(new Error('timeout expired'), 'connect_failed'); // as the connector marks it
    expect(isRetryable(err, 'connect')).toBe(true);
    expect(isRetryable(markFailure(new Error('Connection terminated due to connection timeout'), 'connect_failed'), 'connect')).toBe(true);
    expect(isRetryable(new Error('timeout expired'), 'connect')).toBe(false); // a message decides nothing
    expect(isRetryable(err, 'transaction')).toBe(false);
  });

  it('serialization failures and deadlocks re-run a whole transaction or a read, never a bare connect', () => {
    for (const code of ['40001', '40P01']) {
      expect(isRetryable(pgError(code), 'transaction')).toBe(true);
      expect(isRetryable(pgError(code), 'read')).toBe(true);
      expect(isRetryable(pgError(code), 'connect')).toBe(false);
    }
  });

  it('a lost connection is retried for a read only: a write may have been applied', () => {
    const lost = [pgError('57P01'), pgError('ECONNRESET'), markFailure(new Error('Connection terminated unexpectedly'), 'connection_lost')];
    for (const err of lost) {
      expect(isRetryable(err, 'read')).toBe(true);
      expect(isRetryable(err, 'transaction')).toBe(false);
    }
  });

  it('a statement timeout or cancel (57014) is never retried, in any scope', () => {
    for (const scope of SCOPES) expect(isRetryable(pgError('57014', 'canceling statement due to statement timeout'), scope)).toBe(false);
  });

  it('caller mistakes and constraint violations are never retried', () => {
    for (const code of ['23505', '23503', '22P02', '42P01', '25006']) {
      for (const scope of SCOPES) expect(isRetryable(pgError(code), scope), `${code} ${scope}`).toBe(false);
    }
  });

  it('of our own errors, only a pool-exhausted wait is retryable, and only while connecting', () => {
    expect(isRetryable(new PoolExhaustedError(10), 'connect')).toBe(true);
    expect(isRetryable(new PoolExhaustedError(10), 'transaction')).toBe(false);
    expect(isRetryable(new OverloadedError(), 'connect')).toBe(false);
    expect(isRetryable(new AppError(503, 'circuit_open', 'open'), 'connect')).toBe(false);
    expect(isRetryable(new AppError(504, 'timeout', 'late'), 'read')).toBe(false);
  });

  it('is total: never throws, whatever is thrown at it', () => {
    fc.assert(
      fc.property(fc.anything(), fc.constantFrom(...SCOPES), (err, scope) => {
        expect(typeof isRetryable(err, scope)).toBe('boolean');
      }),
      { numRuns: 300, seed: 4242 },
    );
  });
});

describe('backoffMs: capped exponential backoff with full jitter', () => {
  it('stays in [0, min(cap, base·2^attempt))', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 40 }),
        fc.integer({ min: 1, max: 500 }),
        fc.integer({ min: 1, max: 10_000 }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (attempt, base, cap, r) => {
          const ms = backoffMs(attempt, base, cap, () => r);
          expect(Number.isInteger(ms)).toBe(true);
          expect(ms).toBeGreaterThanOrEqual(0);
          expect(ms).toBeLessThan(Math.max(1, Math.min(cap, base * 2 ** attempt)));
        },
      ),
      { numRuns: 500, seed: 4242 },
    );
  });

  it('uses the defaults: 25 ms base, 1 s cap', () => {
    expect(backoffMs(0, undefined, undefined, () => 0.999)).toBe(24);
    expect(backoffMs(3, undefined, undefined, () => 0.999)).toBe(199);
    expect(backoffMs(20, undefined, undefined, () => 0.999)).toBe(999);
  });
});

describe('RetryBudget', () => {
  it('starts full, spends one token per retry, and refuses when empty', () => {
    const b = new RetryBudget(0.1, 3);
    expect([b.trySpend(), b.trySpend(), b.trySpend(), b.trySpend()]).toEqual([true, true, true, false]);
    expect(b.retriedCount).toBe(3);
    expect(b.deniedCount).toBe(1);
  });

  it('refills by ratio per first attempt: ten calls pay for one retry at 0.1', () => {
    const b = new RetryBudget(0.1, 1);
    expect(b.trySpend()).toBe(true);
    for (let i = 0; i < 9; i++) b.deposit();
    expect(b.trySpend()).toBe(false);
    b.deposit();
    b.deposit(); // float sums: 11 × 0.1 ≥ 1 for sure
    expect(b.trySpend()).toBe(true);
  });

  it('never holds more than maxTokens', () => {
    const b = new RetryBudget(5, 2);
    for (let i = 0; i < 10; i++) b.deposit();
    expect([b.trySpend(), b.trySpend(), b.trySpend()]).toEqual([true, true, false]);
  });

  it('limits retries to the initial tokens plus ratio × calls under a sustained failure', async () => {
    const b = new RetryBudget(0.1, 20);
    let attempts = 0;
    for (let i = 0; i < 1000; i++) {
      await withRetry(
        () => {
          attempts++;
          return Promise.reject(pgError('ECONNREFUSED'));
        },
        { scope: 'connect', budget: b, now: () => 0, sleep: async () => {} },
      ).catch(() => {});
    }
    // 1000 calls × 3 attempts would be 2000 retries; the budget allows 20 + 1000 × 0.1.
    expect(attempts - 1000).toBeLessThanOrEqual(120);
    expect(attempts - 1000).toBeGreaterThanOrEqual(110);
  });
});

describe('withRetry', () => {
  const opts = (extra: Partial<Parameters<typeof withRetry>[1]> = {}) => ({
    scope: 'connect' as RetryScope,
    budget: new RetryBudget(),
    now: () => 0,
    sleep: vi.fn(async () => {}),
    ...extra,
  });

  it('returns the first success, retrying a retryable failure with backoff', async () => {
    const o = opts({ onRetry: vi.fn() });
    const fn = vi.fn().mockRejectedValueOnce(pgError('ECONNREFUSED')).mockResolvedValueOnce('ok');
    await expect(withRetry(fn, o)).resolves.toBe('ok');
    expect(fn).toHaveBeenCalledTimes(2);
    expect(fn.mock.calls.map((c) => c[0])).toEqual([0, 1]);
    expect(o.sleep).toHaveBeenCalledTimes(1);
    expect(o.onRetry).toHaveBeenCalledWith(expect.objectContaining({ code: 'ECONNREFUSED' }), 1);
  });

  it('does not retry what is not retryable', async () => {
    const err = pgError('23505');
    const fn = vi.fn().mockRejectedValue(err);
    await expect(withRetry(fn, opts())).rejects.toBe(err);
    expect(fn).toHaveBeenCalledTimes(1);
  });

  it('stops after maxAttempts with the last error', async () => {
    const fn = vi.fn().mockRejectedValue(pgError('ECONNREFUSED'));
    await expect(withRetry(fn, opts({ maxAttempts: 4 }))).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(fn).toHaveBeenCalledTimes(4);
  });

  it('starts no attempt that the backoff would push past the deadline', async () => {
    let clock = 0;
    const fn = vi.fn(() => {
      clock += 100;
      return Promise.reject(pgError('ECONNREFUSED'));
    });
    await expect(withRetry(fn, opts({ now: () => clock, deadline: 100 }))).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(fn).toHaveBeenCalledTimes(1);
  });

  it('stops when the budget is spent', async () => {
    const budget = new RetryBudget(0, 1);
    const fn = vi.fn().mockRejectedValue(pgError('ECONNREFUSED'));
    await expect(withRetry(fn, opts({ budget, maxAttempts: 10 }))).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(fn).toHaveBeenCalledTimes(2);
    expect(budget.deniedCount).toBe(1);
  });

  it('re-runs a transaction on a serialization failure but not on a lost connection', async () => {
    const tx = vi.fn().mockRejectedValueOnce(pgError('40001')).mockResolvedValueOnce('committed');
    await expect(withRetry(tx, opts({ scope: 'transaction' }))).resolves.toBe('committed');
    const lost = vi.fn().mockRejectedValue(markFailure(new Error('Connection terminated unexpectedly'), 'connection_lost'));
    await expect(withRetry(lost, opts({ scope: 'transaction' }))).rejects.toThrow(/terminated/);
    expect(lost).toHaveBeenCalledTimes(1);
  });

  it('an uncounted rerun (named statements a pooler refused) runs even with the budget spent, at once, and is counted as a retry', async () => {
    const budget = new RetryBudget(0, 0);
    const o = opts({ scope: 'transaction', budget });
    const tx = vi
      .fn()
      .mockRejectedValueOnce(markRerunnable(pgError('42P05'), { uncounted: true }))
      .mockResolvedValueOnce('committed');
    await expect(withRetry(tx, o)).resolves.toBe('committed');
    expect(o.sleep).toHaveBeenCalledWith(0);
    expect(budget).toMatchObject({ retriedCount: 1, deniedCount: 0 });
    // A counted rerun still needs a token.
    const counted = vi.fn().mockRejectedValue(markRerunnable(pgError('0A000')));
    await expect(withRetry(counted, opts({ scope: 'transaction', budget }))).rejects.toMatchObject({ code: '0A000' });
    expect(budget.deniedCount).toBe(1);
  });
});
