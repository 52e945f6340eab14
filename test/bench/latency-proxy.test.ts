/**
 * The bench's latency proxy (bench/latency-proxy.ts) on loopback with real timers: it delays each
 * direction by its own one-way delay (and a new connection by its handshake), keeps byte order
 * under many small chunks, passes half-closes on after the data before them, and counts round
 * trips as direction changes — a sequential echo, a pipelined burst, HTTP keep-alive. Timing
 * assertions are lower bounds only (a release is never early; how late depends on the machine).
 */
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startLatencyProxy, type LatencyProxy, type LatencyProxyOptions } from '../../bench/latency-proxy.js';
import { waitFor } from '../helpers/wait.js';

const closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
});

/** A TCP server on a free loopback port, closed after the test. */
async function serve(onSocket: (socket: net.Socket) => void, allowHalfOpen = false): Promise<{ host: string; port: number }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    onSocket(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  closers.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return { host: '127.0.0.1', port: (server.address() as net.AddressInfo).port };
}

const echo = () => serve((socket) => socket.pipe(socket));

async function proxyTo(target: { host: string; port: number }, options: Omit<LatencyProxyOptions, 'target'>): Promise<LatencyProxy> {
  const proxy = await startLatencyProxy({ target, ...options });
  closers.push(() => proxy.close());
  return proxy;
}

async function connect(proxy: LatencyProxy): Promise<net.Socket> {
  const socket = net.connect({ host: proxy.host, port: proxy.port });
  socket.setNoDelay(true);
  closers.push(() => Promise.resolve(socket.destroy()));
  await once(socket, 'connect');
  return socket;
}

/** Resolves with everything received once at least `bytes` have arrived. */
function receive(socket: net.Socket, bytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      n += chunk.length;
      if (n >= bytes) {
        socket.off('data', onData);
        socket.off('error', reject);
        resolve(Buffer.concat(chunks));
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });
}

/** A round trip through `socket`: sends `text`, waits for as many bytes back; returns them and the ms it took. */
async function ask(socket: net.Socket, text: string): Promise<{ reply: string; ms: number }> {
  const started = performance.now();
  const reply = receive(socket, Buffer.byteLength(text));
  socket.write(text);
  return { reply: (await reply).toString(), ms: performance.now() - started };
}

describe('delays', () => {
  it('holds each direction for its own one-way delay', async () => {
    const proxy = await proxyTo(await echo(), { upDelayMs: 20, downDelayMs: 30 });
    const socket = await connect(proxy);
    const { reply, ms } = await ask(socket, 'ping');
    expect(reply).toBe('ping');
    expect(ms).toBeGreaterThanOrEqual(50);
    const again = await ask(socket, 'pong');
    expect(again.ms).toBeGreaterThanOrEqual(50);
    expect(proxy.stats().releaseCount).toBe(4);
    expect(proxy.stats().lateMeanMs).toBeGreaterThanOrEqual(0);
  });

  it('makes a new connection pay its handshake round trips before its first byte, once', async () => {
    const proxy = await proxyTo(await echo(), { upDelayMs: 10, handshakeRoundTrips: 1 });
    // The handshake starts when the proxy accepts: time from before connecting, so the bound holds however late this resumes.
    const started = performance.now();
    const socket = await connect(proxy);
    expect((await ask(socket, 'first')).reply).toBe('first');
    expect(performance.now() - started).toBeGreaterThanOrEqual(40); // handshake (20) + the round trip itself (20)
    const second = await ask(socket, 'second');
    expect(second.ms).toBeGreaterThanOrEqual(20);
    expect(proxy.stats()).toMatchObject({ connectionCount: 1, roundTripCount: 2, handshakeRoundTripCount: 1 });
  });

  it('takes new delays for bytes sent after the change, keeping order with what is queued', async () => {
    const proxy = await proxyTo(await echo(), { upDelayMs: 30 });
    const socket = await connect(proxy);
    const got = receive(socket, 6);
    socket.write('abc'); // held 30 ms each way
    proxy.setDelays(0);
    socket.write('def'); // no delay of its own, but not before 'abc'
    expect((await got).toString()).toBe('abcdef');
    expect(proxy.upDelayMs).toBe(0);
    expect((await ask(socket, 'now')).reply).toBe('now');
    expect(() => proxy.setDelays(5, -1)).toThrow(RangeError);
  });

  it('passes bytes at once with zero delays', async () => {
    const proxy = await proxyTo(await echo(), { upDelayMs: 0 });
    const socket = await connect(proxy);
    expect((await ask(socket, 'now')).reply).toBe('now');
  });

  it('refuses a negative delay', async () => {
    await expect(startLatencyProxy({ target: { host: '127.0.0.1', port: 1 }, upDelayMs: -1 })).rejects.toThrow(RangeError);
  });
});

describe('order', () => {
  it('keeps byte order in both directions under many small chunks', async () => {
    // The server answers every chunk with its own small writes, so both lanes carry many chunks.
    const target = await serve((socket) =>
      socket.on('data', (chunk: Buffer) => {
        for (let i = 0; i < chunk.length; i += 3) socket.write(chunk.subarray(i, i + 3));
      }),
    );
    const proxy = await proxyTo(target, { upDelayMs: 3, downDelayMs: 2 });
    const socket = await connect(proxy);
    const parts: string[] = [];
    for (let i = 0; i < 2_000; i++) parts.push(`${i},`);
    const sent = parts.join('');
    const got = receive(socket, Buffer.byteLength(sent));
    // Separate writes across several ticks, so chunks arrive while earlier ones are still held.
    for (let i = 0; i < parts.length; i++) {
      socket.write(parts[i]!);
      if (i % 100 === 99) await new Promise((resolve) => setImmediate(resolve));
    }
    expect((await got).toString()).toBe(sent);
  });

  it('passes a half-close on after the data sent before it, and the answer back after that', async () => {
    // The server answers only once the client has finished sending (it sees the end).
    const target = await serve((socket) => {
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('end', () => socket.end(`got ${Buffer.concat(chunks).length} bytes`));
    }, true);
    const proxy = await proxyTo(target, { upDelayMs: 10 });
    const socket = net.connect({ host: proxy.host, port: proxy.port, allowHalfOpen: true });
    closers.push(() => Promise.resolve(socket.destroy()));
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    const ended = once(socket, 'end');
    socket.write('a'.repeat(1000));
    socket.end('b'.repeat(24));
    await ended;
    expect(Buffer.concat(chunks).toString()).toBe('got 1024 bytes');
    await waitFor(() => proxy.stats().openCount === 0, { what: 'the proxy to close both sides' });
  });
});

describe('round trips', () => {
  it('counts one per request answered on a sequential echo, per connection and in total', async () => {
    const proxy = await proxyTo(await echo(), { upDelayMs: 2, traceExchanges: 100 });
    const a = await connect(proxy);
    for (const word of ['one', 'two', 'three']) expect((await ask(a, word)).reply).toBe(word);
    const b = await connect(proxy);
    expect((await ask(b, 'four')).reply).toBe('four');
    expect(proxy.stats()).toMatchObject({ connectionCount: 2, openCount: 2, roundTripCount: 4, handshakeRoundTripCount: 0 });
    expect(proxy.connections().map((c) => [c.connection, c.open, c.roundTripCount, c.bytesUp, c.bytesDown])).toEqual([
      [1, true, 3, 11, 11],
      [2, true, 1, 4, 4],
    ]);
    const trips = proxy.exchanges().filter((e) => e.roundTrip);
    expect(trips.map((e) => [e.connection, e.head.toString(), e.upBytes, e.downBytes])).toEqual([
      [1, 'one', 3, 3],
      [1, 'two', 3, 3],
      [1, 'three', 5, 5],
      [2, 'four', 4, 4],
    ]);
    a.destroy();
    b.destroy();
    await waitFor(() => proxy.stats().openCount === 0, { what: 'the proxy to close both pairs' });
    expect(proxy.connections().map((c) => c.open)).toEqual([false, false]);
  });

  it('counts a pipelined burst, answered message by message, as one round trip', async () => {
    // A line protocol: one reply write per request line.
    const target = await serve((socket) => {
      let buffered = '';
      socket.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          socket.write(`re:${buffered.slice(0, nl)}\n`);
          buffered = buffered.slice(nl + 1);
        }
      });
    });
    const proxy = await proxyTo(target, { upDelayMs: 5, traceExchanges: 10 });
    const socket = await connect(proxy);
    const requests = ['q1', 'q2', 'q3', 'q4', 'q5'];
    const expected = requests.map((q) => `re:${q}\n`).join('');
    const got = receive(socket, expected.length);
    for (const q of requests) socket.write(`${q}\n`); // five writes, no waiting between them
    expect((await got).toString()).toBe(expected);
    expect(proxy.stats().roundTripCount).toBe(1);
    // Then one more request after the answers: a second round trip.
    expect((await ask(socket, 'q6\n')).reply).toBe('re:q6\n');
    expect(proxy.stats().roundTripCount).toBe(2);
    expect(proxy.exchanges().map((e) => e.upBytes)).toEqual([15, 3]);
  });

  it('does not count server bytes nobody asked for', async () => {
    const target = await serve((socket) => {
      socket.write('hello\n'); // a greeting before any request
      socket.on('data', (c: Buffer) => socket.write(c));
    });
    const proxy = await proxyTo(target, { upDelayMs: 2, traceExchanges: 10 });
    const socket = await connect(proxy);
    await receive(socket, 6);
    expect(proxy.stats().roundTripCount).toBe(0);
    expect((await ask(socket, 'x')).reply).toBe('x');
    expect(proxy.stats().roundTripCount).toBe(1);
    expect(proxy.exchanges().map((e) => e.roundTrip)).toEqual([false, true]);
  });

  it('counts HTTP keep-alive requests as one round trip each on one connection', async () => {
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => res.end(`${req.method} ${req.url}`));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    closers.push(() => new Promise((resolve) => server.close(resolve)));
    closers.push(() => Promise.resolve(server.closeAllConnections()));
    const proxy = await proxyTo({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port }, { upDelayMs: 5 });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    closers.push(() => Promise.resolve(agent.destroy()));
    const get = (path: string, body?: string) =>
      new Promise<string>((resolve, reject) => {
        const req = http.request(`${proxy.url}${path}`, { agent, method: body ? 'POST' : 'GET' }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve(text));
        });
        req.on('error', reject);
        req.end(body);
      });
    expect(await get('/a')).toBe('GET /a');
    expect(await get('/b', 'x'.repeat(10_000))).toBe('POST /b');
    expect(await get('/c')).toBe('GET /c');
    expect(proxy.stats()).toMatchObject({ connectionCount: 1, roundTripCount: 3 });
  });
});
