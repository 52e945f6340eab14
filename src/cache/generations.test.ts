/**
 * When an instance reads the generations again (cache/generations.ts), on a fake clock and a fake
 * primary that counts its reads. Real Postgres: test/node/read-cache.test.ts.
 */
import { describe, expect, it } from 'vitest';
import type { Database, Db, QueryObserver, QueryResult } from '../db/types.js';
import { Generations, GENERATIONS_SQL } from './generations.js';

function primary() {
  const state = {
    reads: 0,
    gens: { users: 1 } as Record<string, number>,
    lsn: '0/10',
    fail: undefined as Error | undefined,
    observers: [] as QueryObserver[],
  };
  const database = {
    kind: 'pg-pool',
    forRequest(o: QueryObserver): Db {
      state.observers.push(o);
      const query = (text: string): Promise<QueryResult> => {
        expect(text).toBe(GENERATIONS_SQL);
        state.reads++;
        if (state.fail) return Promise.reject(state.fail);
        return Promise.resolve({ rows: [{ gens: { ...state.gens }, lsn: state.lsn }], rowCount: 1 });
      };
      return {
        kind: 'pg-pool',
        query: query as Db['query'],
        readBatch: () => Promise.resolve([]),
        transaction: (fn) => fn({ query: query as Db['query'] }),
      };
    },
  } as unknown as Database;
  return { state, database };
}

function setup(maxStalenessMs = 1000) {
  const clock = { t: 1000 };
  const { state, database } = primary();
  const log: string[] = [];
  const gens = new Generations({ database, maxStalenessMs, clock: () => clock.t, log: (l) => log.push(l) });
  return { clock, state, gens, log };
}

describe('the generation view', () => {
  it('is read once, then served from memory until a quarter of the bound; then read again in the background', async () => {
    const { clock, state, gens } = setup(1000);
    expect((await gens.current())?.gens).toEqual({ users: 1 });
    clock.t += 200;
    await gens.current();
    expect(state.reads).toBe(1);
    state.gens.users = 2;
    clock.t += 100; // 300 ms old: past a quarter
    const background: Promise<unknown>[] = [];
    const served = await gens.current({ background: (p) => background.push(p) });
    expect(served?.gens).toEqual({ users: 1 }); // served as it was…
    expect(background).toHaveLength(1); // …while a read goes out
    await Promise.all(background);
    expect(gens.view?.gens).toEqual({ users: 2 });
  });

  it('past the whole bound, waits for a fresh read before serving', async () => {
    const { clock, state, gens } = setup(1000);
    await gens.current();
    state.gens.users = 5;
    clock.t += 1000;
    expect((await gens.current())?.gens).toEqual({ users: 5 });
    expect(state.reads).toBe(2);
  });

  it('a request that needs a view taken after it began gets one; concurrent ones share one read', async () => {
    const { clock, state, gens } = setup(60_000);
    await gens.current();
    clock.t += 10;
    const started = clock.t;
    clock.t += 1;
    state.gens.users = 9;
    const [a, b] = await Promise.all([gens.current({ newerThan: started }), gens.current({ newerThan: started })]);
    expect(a?.gens).toEqual({ users: 9 });
    expect(b).toBe(a);
    expect(state.reads).toBe(2);
  });

  it('noteWrite makes the next read wait for a view taken after it, unless the view provably counts the write', async () => {
    const { clock, state, gens } = setup(60_000);
    await gens.current();
    clock.t += 1;
    gens.noteWrite('0/8'); // the view's position (0/10) is read after its snapshot: no proof it counts 0/8
    clock.t += 1;
    state.lsn = '0/20';
    state.gens.users = 3;
    expect((await gens.current())?.gens).toEqual({ users: 3 });
    expect(state.reads).toBe(2);
    // This view's snapshot came after the first read's answer (0/10): a write before 0/10 is in it.
    gens.noteWrite('0/9');
    await gens.current();
    expect(state.reads).toBe(2);
    gens.noteWrite('0/10'); // at the position, not before it: may still have been becoming visible
    clock.t += 1;
    await gens.current();
    expect(state.reads).toBe(3);
  });

  it('reads on the primary (internal), one-shot (intent read), under a deadline', async () => {
    const { state, gens, clock } = setup();
    await gens.current();
    expect(state.observers[0]).toMatchObject({ internal: true, intent: 'read', deadline: clock.t + 2000 });
  });

  it('a failed read stands the cache aside (undefined) for a while, logged once with the fix', async () => {
    const { clock, state, gens, log } = setup();
    state.fail = Object.assign(new Error('relation "poolgate_cache_generations" does not exist'), { code: '42P01' });
    expect(await gens.current()).toBeUndefined();
    expect(await gens.current()).toBeUndefined();
    expect(state.reads).toBe(1); // not hammered
    expect(log).toHaveLength(1);
    expect(log[0]).toMatch(/does not exist: run `poolgate migrate`/);
    state.fail = undefined;
    clock.t += 5_000;
    expect((await gens.current())?.gens).toEqual({ users: 1 });
  });
});

/*
 * When a refresh never settles. At the edge an isolate's Generations is
 * shared by its requests, but each refresh's I/O belongs to the request that sent it: workerd
 * cancels that I/O with its request (a client gone, a request it judged hung), and a promise
 * waiting on it never settles. bench:cache found one such refresh wedging an isolate for good:
 * every later refresh waited on it, so every read carrying a token answered 500 ("code had hung")
 * from then on. A refresh in flight is waited for at most the staleness bound.
 */
/** A database whose first generations read never answers (its request's I/O cancelled); every later one answers `users: n`. */
function stuckFirstRead() {
  let reads = 0;
  const db = {
    query: async () => {
      reads++;
      if (reads === 1) return new Promise<never>(() => {});
      return { rows: [{ gens: { users: reads }, lsn: `0/${reads}` }], rowCount: 1 };
    },
  } as unknown as Db;
  const database = { forRequest: () => db } as unknown as Database;
  return { database, reads: () => reads };
}

const MAX_STALENESS_MS = 20;
const generations = (database: Database) => new Generations({ database, maxStalenessMs: MAX_STALENESS_MS, clock: () => performance.now() });

describe('Generations when a refresh never settles', () => {
  it('a later request that would join it reads the view itself once the bound has passed', async () => {
    const { database, reads } = stuckFirstRead();
    const g = generations(database);
    void g.current(); // no view yet: refreshes, and its read never answers
    const second = await g.current();
    expect(second?.gens).toEqual({ users: 2 });
    expect(reads()).toBe(2);
  });

  it('a refresh a token asks for (newer than the view) does not wait on it for good', async () => {
    const { database } = stuckFirstRead();
    const g = generations(database);
    const stuck = g.current();
    void stuck;
    await new Promise((r) => setTimeout(r, 1));
    const fresh = await g.current({ newerThan: performance.now() });
    expect(fresh?.gens).toEqual({ users: 2 });
  });

  it('once it is older than the bound, background refreshes start again', async () => {
    const { database, reads } = stuckFirstRead();
    const g = generations(database);
    void g.current();
    await g.current(); // the view, read past the stuck refresh
    await new Promise((r) => setTimeout(r, MAX_STALENESS_MS / 2)); // a quarter of the bound: refreshed in the background
    const started: Promise<unknown>[] = [];
    await g.current({ background: (p) => started.push(p) });
    expect(started).toHaveLength(1);
    await started[0];
    expect(reads()).toBe(3);
  });
});
