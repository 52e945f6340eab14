/**
 * The bench's mixed closed-loop load (bench/load.ts runMix), against a real Node HTTP server on
 * loopback: each outcome says whether the client aborted the request before its answer, the
 * status, the error body's `code`, Retry-After, the server's own time (Server-Timing `total`), the
 * server its reads came from (Server-Timing `db`), a write's consistency token and the body of a POST's 2xx; an aborted request closes its socket, so a server that got it sees its
 * client leave (what the soak's aborts rely on); a count of requests ends the run.
 */
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { runMix, servedByOf, serverTotalMs, type MixOutcome, type MixRequest } from '../../bench/load.js';
import { waitFor } from '../helpers/wait.js';

const closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

/** /ok 200, /busy 503 + Retry-After, /create 201 with an id and a token, /hang never answers (counts clients that left). */
async function serve(): Promise<{ url: string; arrived: () => number; left: () => number }> {
  let left = 0;
  let arrived = 0;
  const server = http.createServer((req, res) => {
    const send = (status: number, body: object, headers: Record<string, string> = {}) =>
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
    if (req.url === '/ok') return send(200, { ok: true });
    if (req.url === '/busy')
      return send(
        503,
        { error: { code: 'overloaded' } },
        { 'retry-after': '1', 'server-timing': 'acquire;dur=0.00, db;dur=0.00;desc="none 0q", total;dur=0.42' },
      );
    if (req.url === '/create')
      return send(
        201,
        { id: 'w1' },
        { 'poolgate-consistency': 'lsn=0/3000060', 'server-timing': 'acquire;dur=0.00, db;dur=1.00;desc="pg-pool 3q", total;dur=1.50' },
      );
    arrived++;
    req.socket.once('close', () => void left++);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  closers.push(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, arrived: () => arrived, left: () => left };
}

/** Sends `requests` one after the other on one client and returns their outcomes. */
async function sendAll(requests: MixRequest[]): Promise<MixOutcome[]> {
  const outcomes: MixOutcome[] = [];
  const stop = new AbortController();
  let i = 0;
  await runMix({
    connections: 1,
    durationMs: 60_000,
    signal: stop.signal,
    next: () => {
      const r = requests[i++]!;
      if (i === requests.length) stop.abort();
      return r;
    },
    onOutcome: (o) => outcomes.push(o),
  });
  return outcomes;
}

describe('runMix (bench load)', () => {
  it('tells aborted requests from answered ones and reads status, code, Retry-After and a POST body', async () => {
    const server = await serve();
    const [hang, ok, busy, create] = await sendAll([
      { kind: 'hang', url: `${server.url}/hang`, abortAfterMs: 20 },
      { kind: 'ok', url: `${server.url}/ok`, abortAfterMs: 30_000 },
      { kind: 'busy', url: `${server.url}/busy` },
      { kind: 'create', url: `${server.url}/create`, method: 'POST', body: '{}' },
    ]);
    expect(hang).toMatchObject({ kind: 'hang', aborted: true, error: 'aborted' });
    expect(hang!.status).toBeUndefined();
    expect(ok).toMatchObject({ kind: 'ok', aborted: false, status: 200 });
    expect(busy).toMatchObject({ aborted: false, status: 503, code: 'overloaded', retryAfter: '1', serverMs: 0.42 });
    expect(ok!.serverMs).toBeUndefined(); // no Server-Timing, no figure
    expect(create).toMatchObject({ status: 201, body: { id: 'w1' }, consistency: 'lsn=0/3000060' });
    expect(create!.servedBy).toBeUndefined(); // a write names no server
    expect(ok!.consistency).toBeUndefined();
    // One that reached the server (under load the abort may come first) is seen leaving.
    expect(server.arrived()).toBeLessThanOrEqual(1);
    await waitFor(() => server.left() === server.arrived());
  });

  it('sends exactly `requests` requests over all its clients, then stops', async () => {
    const server = await serve();
    const outcomes: MixOutcome[] = [];
    await runMix({
      connections: 3,
      durationMs: 5_000, // without the count, hundreds in this time
      requests: 7,
      next: () => ({ kind: 'ok', url: `${server.url}/ok` }),
      onOutcome: (o) => outcomes.push(o),
    });
    expect(outcomes.map((o) => o.status)).toEqual(Array(7).fill(200));
  });

  it('reads the total of a Server-Timing header, wherever it stands', () => {
    expect(serverTotalMs('acquire;dur=0.10, db;dur=1.20;desc="pg-pool 1q", total;dur=3.45')).toBe(3.45);
    expect(serverTotalMs('total;dur=7')).toBe(7);
    expect(serverTotalMs('total;desc="x";dur=2.5, node-total;dur=9')).toBe(2.5);
    expect(serverTotalMs('node-total;dur=9')).toBeUndefined();
    expect(serverTotalMs(null)).toBeUndefined();
  });

  it('reads the server a request read from in Server-Timing `db`, where the gateway has replicas', () => {
    expect(servedByOf('acquire;dur=0.00, db;dur=0.41;desc="pg-pipeline 1q replica-2", total;dur=0.90')).toBe('replica-2');
    expect(servedByOf('db;dur=0.41;desc="pg-pool 2q primary", total;dur=0.90')).toBe('primary');
    expect(servedByOf('db;dur=0.41;desc="pg-pool 2q", total;dur=0.90')).toBeUndefined();
    expect(servedByOf('node-db;dur=1;desc="pg-pool 1q replica-1"')).toBeUndefined();
    expect(servedByOf(null)).toBeUndefined();
  });
});
