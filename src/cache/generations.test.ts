/**
 * The generation view when a refresh never settles. At the edge an isolate's Generations is
 * shared by its requests, but each refresh's I/O belongs to the request that sent it: workerd
 * cancels that I/O with its request (a client gone, a request it judged hung), and a promise
 * waiting on it never settles. bench:cache found one such refresh wedging an isolate for good:
 * every later refresh waited on it, so every read carrying a token answered 500 ("code had hung")
 * from then on. A refresh in flight is waited for at most the staleness bound.
 */
import { describe, expect, it } from 'vitest';
import type { Database, Db } from '../db/types.js';
import { Generations } from './generations.js';

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
