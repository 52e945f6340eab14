/**
 * The fault proxy itself: its COMMIT scanner finds the CommandComplete however the stream is
 * split, and each mode does to a real `pg` client what the scenarios rely on. Runs on real
 * PostgreSQL and on the embedded fallback (the proxy only needs one backend here).
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { BackendMessageScanner, startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';

const msg = (type: string, payload: Buffer) => {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(4 + payload.length, 1);
  return Buffer.concat([head, payload]);
};
const cstr = (s: string) => Buffer.from(`${s}\0`, 'latin1');

describe('BackendMessageScanner', () => {
  const before = Buffer.concat([msg('C', cstr('INSERT 0 1')), msg('D', Buffer.alloc(300, 7)), msg('Z', Buffer.from('T'))]);
  const commit = msg('C', cstr('COMMIT'));
  const after = msg('Z', Buffer.from('I'));
  const stream = Buffer.concat([before, commit, after]);

  it('finds COMMIT at every split point, forwarding exactly the bytes before it, and goes on after it', () => {
    const wrong: string[] = [];
    for (let cut = 0; cut <= stream.length; cut++) {
      for (const sizes of [
        [cut, stream.length - cut],
        [1, cut, stream.length],
      ]) {
        const s = new BackendMessageScanner();
        const forwarded: Buffer[] = [];
        const found: Buffer[] = [];
        let offset = 0;
        for (const size of sizes) {
          let chunk: Buffer = stream.subarray(offset, offset + size);
          offset += size;
          for (;;) {
            const r = s.push(chunk);
            forwarded.push(r.forward);
            if (!r.commit) break;
            if (found.length === 0 && !Buffer.concat(forwarded).equals(before)) wrong.push(`${sizes.join('+')}: bytes before COMMIT`);
            found.push(r.commit.message);
            forwarded.push(r.commit.message);
            chunk = r.commit.rest;
          }
        }
        if (found.length !== 1 || !found[0]!.equals(commit)) wrong.push(`${sizes.join('+')}: ${found.length} COMMITs`);
        if (!Buffer.concat(forwarded).equals(stream)) wrong.push(`${sizes.join('+')}: stream changed`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('passes every other message through untouched, including tags that only start like COMMIT', () => {
    const s = new BackendMessageScanner();
    const other = Buffer.concat([msg('C', cstr('COMMIT PREPARED')), msg('C', cstr('ROLLBACK')), msg('E', cstr('SFATAL'))]);
    const r = s.push(other);
    expect(r.commit).toBeUndefined();
    expect(r.forward).toEqual(other);
  });

  it('lets the one-byte SSL answer through before the typed messages', () => {
    const s = new BackendMessageScanner();
    s.expectSingleByte = true;
    const r = s.push(Buffer.concat([Buffer.from('N'), commit]));
    expect(r.forward).toEqual(Buffer.from('N'));
    expect(r.commit?.message).toEqual(commit);
  });
});

describe('fault proxy modes against a real pg client', () => {
  let db: TestDatabase;
  let proxy: FaultProxy;
  const clients: pg.Client[] = [];

  const connect = async (timeoutMs = 1_000) => {
    const c = new pg.Client({
      connectionString: proxy.urlFor(db.url),
      connectionTimeoutMillis: timeoutMs,
      application_name: 'fault-proxy-test',
    });
    c.on('error', () => {});
    clients.push(c);
    await c.connect();
    return c;
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    const u = new URL(db.url);
    proxy = await startFaultProxy({ target: { host: u.hostname, port: Number(u.port) } });
    await db.admin('CREATE TABLE t (x int)');
  });

  afterAll(async () => {
    for (const c of clients) await c.end().catch(() => {});
    await proxy?.close();
    await db?.drop();
  });

  it('pass and latency forward the protocol; latency adds about its delay per round trip', async () => {
    await proxy.setMode({ kind: 'pass' });
    const c = await connect();
    expect((await c.query('SELECT 1 AS x')).rows).toEqual([{ x: 1 }]);
    await proxy.setMode({ kind: 'latency', ms: 60, jitterMs: 20 });
    const started = performance.now();
    expect((await c.query('SELECT 2 AS x')).rows).toEqual([{ x: 2 }]);
    expect(performance.now() - started).toBeGreaterThanOrEqual(75); // ≥ 2 × (60 − 20), minus timer slack
    await proxy.setMode({ kind: 'pass' });
    await c.end();
  });

  it('refuse closes the listener (ECONNREFUSED) and pass opens it again on the same port', async () => {
    const port = proxy.port;
    await proxy.setMode({ kind: 'refuse' });
    await expect(connect()).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await proxy.setMode({ kind: 'pass' });
    expect(proxy.port).toBe(port);
    const c = await connect();
    expect((await c.query('SELECT 3 AS x')).rows).toEqual([{ x: 3 }]);
    await c.end();
  });

  it('reset kills open connections and every new one', async () => {
    const c = await connect();
    await proxy.setMode({ kind: 'reset' });
    await expect(c.query('SELECT 1')).rejects.toThrow();
    await expect(connect()).rejects.toThrow();
    await proxy.setMode({ kind: 'pass' });
  });

  it('blackhole accepts and forwards nothing: the connect times out', async () => {
    await proxy.setMode({ kind: 'blackhole' });
    await expect(connect(300)).rejects.toThrow(/timeout/i);
    await proxy.setMode({ kind: 'pass' });
  });

  it('reset-after-commit: the client loses the connection, the commit happened, then it is back to pass', async () => {
    for (const forwardCommit of [false, true]) {
      const c = await connect();
      await c.query('BEGIN');
      await c.query('INSERT INTO t VALUES ($1)', [forwardCommit ? 2 : 1]);
      await proxy.setMode({ kind: 'reset-after-commit', forwardCommit });
      const cut = proxy.nextCommitCut();
      await expect(c.query('COMMIT')).rejects.toThrow();
      await cut;
      expect(proxy.mode.kind).toBe('pass');
      const { rows } = await db.admin('SELECT count(*)::int AS n FROM t WHERE x = $1', [forwardCommit ? 2 : 1]);
      expect(rows[0].n).toBe(1);
    }
    expect(proxy.stats().commitCutCount).toBe(2);
  });
});
