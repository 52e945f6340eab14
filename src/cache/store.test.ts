/** The stores' own rules (cache/store.ts): LRU bounds, expiry, an earlier load never replacing a later one, the Cache API tier. */
import { describe, expect, it } from 'vitest';
import { MemoryStore, supersedes, TieredStore, WebCacheStore, type CacheEntry, type WebCache } from './store.js';

const entry = (o: Partial<CacheEntry> = {}): CacheEntry => ({
  status: 200,
  body: '{"x":1}',
  storedAt: 1000,
  gens: { t: 1 },
  position: '0/10',
  expiresAt: 10_000,
  ...o,
});

describe('MemoryStore', () => {
  it('keeps at most maxEntries, dropping the least recently used', async () => {
    const store = new MemoryStore({ maxEntries: 2, maxBytes: 1e9 }, () => 0);
    await store.put('a', entry());
    await store.put('b', entry());
    await store.get('a'); // a is now the most recent
    await store.put('c', entry());
    expect(await store.get('b')).toBeUndefined();
    expect(await store.get('a')).toBeDefined();
    expect(store.size).toBe(2);
  });

  it('keeps within maxBytes and refuses an entry larger than all of it', async () => {
    const store = new MemoryStore({ maxEntries: 100, maxBytes: 2000 }, () => 0);
    for (let i = 0; i < 10; i++) await store.put(`k${i}`, entry({ body: 'x'.repeat(300) }));
    expect(store.bytes).toBeLessThanOrEqual(2000);
    await store.put('huge', entry({ body: 'x'.repeat(5000) }));
    expect(await store.get('huge')).toBeUndefined();
  });

  it('drops an expired entry when met', async () => {
    const clock = { t: 0 };
    const store = new MemoryStore({ maxEntries: 10, maxBytes: 1e9 }, () => clock.t);
    await store.put('a', entry({ expiresAt: 100 }));
    clock.t = 100;
    expect(await store.get('a')).toBeUndefined();
    expect(store.size).toBe(0);
  });

  it('an earlier load finishing later does not replace a later one built from more', async () => {
    const store = new MemoryStore({ maxEntries: 10, maxBytes: 1e9 }, () => 0);
    const later = entry({ storedAt: 2000, gens: { t: 2 }, position: '0/20', body: 'new' });
    await store.put('k', later);
    await store.put('k', entry({ storedAt: 1000, gens: { t: 1 }, position: '0/10', body: 'old' }));
    expect((await store.get('k'))?.body).toBe('new');
    await store.put('k', entry({ storedAt: 3000, gens: { t: 2 }, position: '0/20', body: 'newer' }));
    expect((await store.get('k'))?.body).toBe('newer');
  });

  it('supersedes compares every generation, the position and the start of the load', () => {
    expect(supersedes(entry({ gens: { t: 2, u: 1 } }), entry({ gens: { t: 1, u: 1 } }))).toBe(true);
    expect(supersedes(entry({ gens: { t: 2, u: 0 } }), entry({ gens: { t: 1, u: 1 } }))).toBe(false);
    expect(supersedes(entry({ position: '0/5' }), entry({ position: '0/10' }))).toBe(false);
    expect(supersedes(entry({ storedAt: 999 }), entry({ storedAt: 1000 }))).toBe(false);
  });
});

function webCache(): WebCache & { map: Map<string, Response>; puts: number } {
  const map = new Map<string, Response>();
  const self = {
    map,
    puts: 0,
    match: (req: Request) => Promise.resolve(map.get(req.url)?.clone()),
    put: async (req: Request, res: Response) => {
      self.puts++;
      map.set(req.url, res);
      await Promise.resolve();
    },
  };
  return self;
}

describe('WebCacheStore and TieredStore', () => {
  it('stores an entry as a response that expires by Cache-Control at expiresAt, and reads it back', async () => {
    const cache = webCache();
    const store = new WebCacheStore(cache, () => 1000);
    await store.put('GET /a {"id":"1"}', entry({ expiresAt: 31_000 }));
    const [url, res] = [...cache.map][0]!;
    expect(url).toMatch(/^https:\/\/poolgate\.cache\.invalid\//);
    expect(res.headers.get('cache-control')).toBe('max-age=30');
    expect(await store.get('GET /a {"id":"1"}')).toEqual(entry({ expiresAt: 31_000 }));
  });

  it('a cache that fails to open, or throws, is a miss', async () => {
    const store = new WebCacheStore(Promise.reject(new Error('no cache here')));
    expect(await store.get('k')).toBeUndefined();
    await store.put('k', entry());
  });

  it('the isolate tier answers first; a far hit is copied near', async () => {
    const far = new WebCacheStore(webCache(), () => 0);
    const near = new MemoryStore({ maxEntries: 10, maxBytes: 1e9 }, () => 0);
    const tiered = new TieredStore(near, far);
    await far.put('k', entry());
    expect(near.size).toBe(0);
    expect(await tiered.get('k')).toEqual(entry());
    expect(near.size).toBe(1);
  });
});
