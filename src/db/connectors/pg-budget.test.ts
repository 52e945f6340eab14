/**
 * The connection budget's rules on fakes: the share arithmetic (an even split of what the reserve
 * and everyone else leave, never more than held plus free), the pool's size inside the share
 * (lanes come out of it), and the budget's life: one look at a time, a failed look keeps the
 * share, a 53300 shrinks it to what is held. The real thing: test/node/connection-budget.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { ConnectionBudget, laneFits, markedApplicationName, poolMaxFor, refusedPauseMs, shareOf, type ServerView } from './pg-budget.js';

const view = (clients: number, instances: Record<string, number>, maxConnections = 40): ServerView => ({
  maxConnections,
  superuserReserved: 3,
  clients,
  instances,
});
const rules = { instanceId: 'a', reserve: 3, poolMax: 20 };

describe('shareOf', () => {
  it('splits the limit less the reserve and the others evenly between the instances seen', () => {
    // 40 − 3 superuser − 3 reserve − 2 others = 32, four instances holding 2 each: 8 each.
    expect(shareOf(view(10, { a: 2, b: 2, c: 2, d: 2 }), rules)).toEqual({ share: 8, limit: 37, available: 32, instances: 4, others: 2 });
  });

  it('counts this instance even before it has a backend, and never goes above POOL_MAX or below 1', () => {
    expect(shareOf(view(0, {}, 100), rules).share).toBe(20);
    expect(shareOf(view(1, { b: 1 }), rules)).toMatchObject({ instances: 2, share: 17 }); // 34 available, two instances
    expect(shareOf(view(40, { b: 40 }), rules).share).toBe(1);
  });

  it('a newcomer takes only what is free now; its peers shrink to the new even split at their next look', () => {
    const crowded = { a: 1, b: 10, c: 10, d: 10 };
    // Three peers hold 10 each (a third of 34 before); 34 available, 31 held, 3 free: the newcomer gets 1 + 3 = 4 now, not the fair 8.
    expect(shareOf(view(31, crowded), rules).share).toBe(4);
    expect(shareOf(view(31, crowded), { ...rules, instanceId: 'b' }).share).toBe(8);
  });

  it("POOL_BUDGET=<n> is poolgate's own total: split between the instances, no reserve or others taken off", () => {
    expect(shareOf(view(30, { a: 2, b: 2 }), { ...rules, total: 13 })).toMatchObject({ limit: 13, share: 6, others: 26 });
  });
});

describe('the pool inside the share', () => {
  it('gives the pool what the open lanes leave, one less while a lane waits for room, at least 1', () => {
    expect(poolMaxFor(8, 0, false)).toBe(8);
    expect(poolMaxFor(8, 4, false)).toBe(4);
    expect(poolMaxFor(8, 4, true)).toBe(3);
    expect(poolMaxFor(1, 1, true)).toBe(1);
  });

  it('opens a lane only into room the pool leaves', () => {
    expect(laneFits(8, 7, 0)).toBe(true);
    expect(laneFits(8, 4, 4)).toBe(false);
  });

  it('marks application_name with the instance id, cut to 63 characters', () => {
    expect(markedApplicationName('poolgate', '0a1b2c3d')).toBe('poolgate [pg:0a1b2c3d]');
    const long = markedApplicationName('x'.repeat(63), '0a1b2c3d');
    expect(long).toHaveLength(63);
    expect(long.endsWith(' [pg:0a1b2c3d]')).toBe(true);
  });

  it('pauses after a refused connect 25 ms doubling to 400, jittered in the upper half', () => {
    expect([0, 1, 4, 9].map((n) => refusedPauseMs(n, () => 1))).toEqual([25, 50, 400, 400]);
    expect(refusedPauseMs(0, () => 0)).toBe(12.5);
  });
});

describe('ConnectionBudget', () => {
  function budget(sample: () => Promise<ServerView>) {
    const shares: number[] = [];
    const b = new ConnectionBudget({ ...rules, intervalMs: 1_000, sample, canLook: () => true, onShare: (s) => shares.push(s) });
    return { b, shares };
  }

  it('starts at one connection (the one that looks), then takes its share; one look at a time', async () => {
    let looks = 0;
    const { b, shares } = budget(() => (looks++, Promise.resolve(view(10, { a: 2, b: 2, c: 2, d: 2 }))));
    expect(b.share).toBe(1);
    await Promise.all([b.refresh(), b.refresh(), b.fresh()]);
    expect(looks).toBe(1);
    expect(shares).toEqual([8]);
    await b.fresh(); // just looked: no second look
    expect(looks).toBe(1);
    expect(b.figures()).toMatchObject({ share: 8, limit: 37, reserve: 3, instances: 4, others: 2, sampledCount: 1 });
  });

  it('a look that does not see this instance (a pooler in between) means no budget', async () => {
    const { b } = budget(() => Promise.resolve(view(30, { b: 10, c: 10 })));
    await b.refresh();
    expect(b.figures()).toMatchObject({ share: 20, instances: 0 });
  });

  it('a 53300 shrinks the share to what is held and asks for a fresh look', async () => {
    let looks = 0;
    const { b, shares } = budget(() => (looks++, Promise.resolve(view(10, { a: 2, b: 2, c: 2, d: 2 }))));
    await b.refresh();
    b.refused(5);
    expect(b.share).toBe(5);
    expect(b.figures().refusedCount).toBe(1);
    await b.fresh();
    expect(looks).toBe(2);
    expect(shares).toEqual([8, 5, 8]);
  });

  it('a failed look keeps the share (a partition: what it had); a server that cannot be looked at means no budget', async () => {
    let fail: Error | undefined;
    const { b } = budget(() => (fail ? Promise.reject(fail) : Promise.resolve(view(10, { a: 2, b: 2, c: 2, d: 2 }))));
    fail = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    await b.refresh();
    expect(b.share).toBe(1);
    fail = undefined;
    await b.refresh();
    fail = Object.assign(new Error('terminating connection'), { code: '57P01' });
    await b.refresh();
    expect(b.share).toBe(8);
    expect(b.figures().sampleErrorCount).toBe(2);

    const denied = budget(() => Promise.reject(Object.assign(new Error('permission denied'), { code: '42501' })));
    await denied.b.refresh();
    expect(denied.b.share).toBe(20);
  });
});
