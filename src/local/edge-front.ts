/**
 * The edge's front door in `npm start`: a small Node HTTP proxy on EDGE_PORT in front of workerd
 * (or `wrangler dev`) on an internal port. It is there for the stop: workerd cannot be asked how
 * many requests it still carries, and killing it after a fixed wait cut a read blocked on a lock
 * ("Empty reply from server") and a slow upload ("Broken pipe").
 *
 * A request counts from its headers until the last byte of its answer is written, so slow uploads
 * and long answers count; bodies stream both ways. drain() answers new requests 503
 * `shutting_down` and waits for those in flight; at its deadline it answers 503 to those whose
 * answer has not started and cuts the rest. A client that goes away cancels its request in
 * workerd, as it would without the front.
 */
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface EdgeFrontOptions {
  port: number;
  host: string;
  /** Where workerd serves, e.g. `http://127.0.0.1:40123`. */
  target: string;
}

export interface EdgeFront {
  readonly url: string;
  /** Requests whose answer has not been written in full yet. */
  readonly inFlight: number;
  /**
   * Refuses new requests, waits up to `timeoutMs` for those in flight, then answers or cuts the
   * rest and closes the port. Runs once.
   */
  drain(timeoutMs: number): Promise<{ drained: boolean; cut: number }>;
}

/**
 * Headers of one connection, not of the request: Node sets its own on each side. `expect` too:
 * the front has already answered `100 Continue` itself.
 */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'expect']);

/** After the deadline: how long the 503s get to be written before the port's connections are closed. */
const CUT_FLUSH_MS = 500;

/**
 * @example
 * const front = await startEdgeFront({ port: 8787, host: '127.0.0.1', target: workerdUrl });
 * … await front.drain(10_000);
 */
export async function startEdgeFront(options: EdgeFrontOptions): Promise<EdgeFront> {
  const target = new URL(options.target);
  const agent = new http.Agent({ keepAlive: true });
  /** Each request in flight, by its response, with its request to workerd. */
  const flights = new Map<ServerResponse, http.ClientRequest>();
  let draining = false;
  const server = http.createServer((req, res) => {
    if (draining) return answerError(res, 'The edge is shutting down; retry shortly.');
    flights.set(
      res,
      forward(req, res, target, agent, () => draining),
    );
    res.once('close', () => flights.delete(res));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: options.port, host: options.host, exclusive: true }, () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  const idle = () => Promise.all([...flights.keys()].map((res) => new Promise((resolve) => res.once('close', resolve))));
  let stopping: Promise<{ drained: boolean; cut: number }> | undefined;
  const drain = (timeoutMs: number) =>
    (stopping ??= (async () => {
      draining = true;
      server.closeIdleConnections(); // kept-alive clients reconnect and are told 503
      const drained = await withTimeout(idle(), timeoutMs);
      const cut = flights.size;
      for (const [res, upstream] of flights) cutShort(res, upstream);
      if (cut > 0) await withTimeout(idle(), CUT_FLUSH_MS);
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      agent.destroy();
      return { drained, cut };
    })());

  return {
    url: `http://${options.host}:${port}`,
    get inFlight() {
      return flights.size;
    },
    drain,
  };
}

/** Sends `req` on to workerd and its answer back, both streamed; returns the request to workerd. */
function forward(req: IncomingMessage, res: ServerResponse, target: URL, agent: http.Agent, draining: () => boolean): http.ClientRequest {
  const upstream = http.request({
    host: target.hostname,
    port: target.port,
    method: req.method,
    path: req.url,
    headers: withoutHopByHop(req.headers),
    agent,
  });
  upstream.once('response', (answer) => {
    answer.once('error', () => res.destroy()); // workerd went away mid-answer
    if (res.writableEnded || res.destroyed) return void answer.resume(); // already answered (cut)
    if (draining()) res.shouldKeepAlive = false;
    res.writeHead(answer.statusCode ?? 502, answer.statusMessage, rawHeadersWithoutHopByHop(answer.rawHeaders));
    answer.pipe(res);
  });
  upstream.once('error', () => {
    if (res.writableEnded) return;
    if (!res.headersSent) answerError(res, 'The edge app (workerd) did not answer.', 502, 'upstream_unavailable');
    else res.destroy();
  });
  req.once('error', () => upstream.destroy());
  // The client went away: workerd sees its request end too, and cancels what it was doing.
  res.once('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
  return upstream;
}

function withoutHopByHop(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !HOP_BY_HOP.has(name)));
}

/** Node's flat [name, value, name, value, …] list, as writeHead takes it, less the connection's own. */
function rawHeadersWithoutHopByHop(raw: string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) kept.push(raw[i]!, raw[i + 1]!);
  return kept;
}

/** At the deadline: workerd's request is ended; the client gets a 503 if its answer had not started, else a cut. */
function cutShort(res: ServerResponse, upstream: http.ClientRequest): void {
  if (res.headersSent) res.destroy();
  else answerError(res, 'The edge shut down before this request finished.');
  upstream.destroy();
}

/** The API's error shape; the connection closes after it. */
function answerError(res: ServerResponse, message: string, status = 503, code = 'shutting_down'): void {
  const body = JSON.stringify({ error: { code, message, requestId: crypto.randomUUID() } });
  res.shouldKeepAlive = false;
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'retry-after': '1',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
  // An upload still arriving is read and dropped, so the answer is not lost to a reset.
  res.req.resume();
}

/** Resolves true when `promise` settles within `ms`, false after. */
async function withTimeout(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true as const), late]);
  } finally {
    clearTimeout(timer);
  }
}
