/**
 * A TCP proxy that puts distance on a loopback hop, for the bench's WAN model (bench/wan.ts):
 * every chunk is held for a one-way delay in its direction (client → server `upDelayMs`, server →
 * client `downDelayMs`), in order, and a new connection first pays its handshake round trips
 * (TCP: one) before its first byte goes on. It counts what the distance costs: round trips (a
 * client → server burst followed by a server → client burst, i.e. direction changes, per
 * connection), connections, and bytes, and how late its own releases were against the model.
 *
 * Each direction of a connection is a queue released by one timer at a time: delays are constant
 * per direction, so release times only grow and order is kept however small the chunks. A timer
 * alone fires a few tenths of a millisecond late (more on a busy loop); with `precise` (default)
 * the last millisecond is waited out with setImmediate instead, at the cost of some CPU.
 *
 * Bench only: loopback, bounded traffic, no backpressure beyond the sockets' own (a full socket
 * pauses the other side until it drains). Nothing here knows HTTP or Postgres; the optional
 * exchange log keeps the first bytes of each client burst so a caller can name what went.
 */
import net from 'node:net';

export interface LatencyProxyOptions {
  /** Where the real server listens. */
  target: { host: string; port: number };
  /** One-way delay, client → server, in ms. */
  upDelayMs: number;
  /** One-way delay, server → client, in ms (default: `upDelayMs`). */
  downDelayMs?: number;
  /**
   * Round trips a new connection pays before its first client byte is forwarded: 1 models TCP's
   * SYN/SYN-ACK, 2 TCP + TLS 1.3. Default 0 (loopback's own connect only). Counted apart from
   * `roundTripCount`.
   */
  handshakeRoundTrips?: number;
  /** Wait out each release's last millisecond with setImmediate (sub-millisecond exact); default true. */
  precise?: boolean;
  /** Keep the last N exchanges (see `exchanges()`); default 0, none. */
  traceExchanges?: number;
  /** How many bytes of each client burst an exchange keeps; default 512. */
  traceHeadBytes?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0: a free port. */
  port?: number;
}

export interface LatencyProxyStats {
  /** Connections accepted since start. */
  connectionCount: number;
  /** Connections open now. */
  openCount: number;
  /** Client → server bursts answered by a server → client burst, over all connections. */
  roundTripCount: number;
  /** `connectionCount × handshakeRoundTrips`: the round trips the model charged for connecting. */
  handshakeRoundTripCount: number;
  bytesUp: number;
  bytesDown: number;
  /** Chunks released, both directions. */
  releaseCount: number;
  /** How late releases were against their modelled time: mean and worst, in ms. */
  lateMeanMs: number;
  lateMaxMs: number;
}

/** One connection's own counters. */
export interface ConnectionStats {
  /** 1-based, in accept order (as in `Exchange.connection`). */
  connection: number;
  /** performance.now() when the proxy accepted it. */
  openedAtMs: number;
  open: boolean;
  roundTripCount: number;
  bytesUp: number;
  bytesDown: number;
}

/** One round trip on one connection, as the proxy saw it arrive. */
export interface Exchange {
  /** The connection's number (1-based, in accept order). */
  connection: number;
  /** performance.now() when the burst's first client byte arrived. */
  atMs: number;
  upBytes: number;
  downBytes: number;
  /** The first bytes of the client → server burst. */
  head: Buffer;
  /** False for server bytes no client burst asked for (a greeting, a notice): not a round trip. */
  roundTrip: boolean;
}

export interface LatencyProxy {
  readonly host: string;
  readonly port: number;
  /** `http://host:port` */
  readonly url: string;
  /** The one-way delays now. */
  readonly upDelayMs: number;
  readonly downDelayMs: number;
  /**
   * Changes the delays (and so the handshake) for bytes and connections from now on; what is
   * queued keeps its time, and order holds (nothing is released before what came before it).
   */
  setDelays(upDelayMs: number, downDelayMs?: number): void;
  /** `url` (any scheme: postgres://, http://) with its host and port replaced by the proxy's. */
  urlFor(url: string): string;
  stats(): LatencyProxyStats;
  /** Per connection: every open one and the last 1,000 closed, in accept order. */
  connections(): ConnectionStats[];
  /** The exchanges kept (oldest first), optionally only those that started at or after `sinceMs`. */
  exchanges(sinceMs?: number): Exchange[];
  /** Stops listening and destroys every connection; pending chunks are dropped. Idempotent. */
  close(): Promise<void>;
}

const now = () => performance.now();
/** Closed connections whose counters `connections()` still reports. */
const CLOSED_KEPT = 1_000;
/** Below this much left, a precise release stops using timers (their granularity is 1 ms). */
const SPIN_MS = 1;

type Item = { due: number; chunk: Buffer } | { due: number; end: true };

/**
 * One direction of one connection: chunks in arrival order, each released at its due time. One
 * timer (or immediate) at a time; `stop()` clears it.
 */
class DelayLane {
  readonly #items: Item[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #immediate: ReturnType<typeof setImmediate> | undefined;
  #lastDue = 0;
  #stopped = false;
  readonly #idle: (() => void)[] = [];

  constructor(
    readonly from: net.Socket,
    readonly to: net.Socket,
    readonly delayMs: () => number,
    readonly precise: boolean,
    readonly onRelease: (lateMs: number) => void,
  ) {}

  /** Queues `chunk` (or the end of the stream) for `notBefore + delay`, never before what is already queued. */
  push(item: { chunk: Buffer } | { end: true }, notBefore = now()): void {
    if (this.#stopped) return;
    const due = Math.max(notBefore + this.delayMs(), this.#lastDue);
    this.#lastDue = due;
    this.#items.push({ ...item, due });
    if (this.#items.length === 1) this.#schedule();
  }

  /** Calls `fn` once nothing is queued (now, or after the last release). */
  whenIdle(fn: () => void): void {
    if (this.#items.length === 0) fn();
    else this.#idle.push(fn);
  }

  stop(): void {
    this.#stopped = true;
    this.#idle.length = 0;
    this.#items.length = 0;
    clearTimeout(this.#timer);
    if (this.#immediate) clearImmediate(this.#immediate);
    this.#timer = this.#immediate = undefined;
  }

  #schedule(): void {
    const head = this.#items[0];
    if (!head || this.#stopped) return;
    const left = head.due - now();
    if (left <= 0) return this.#release();
    if (this.precise && left <= SPIN_MS + 0.05) {
      this.#immediate = setImmediate(() => {
        this.#immediate = undefined;
        this.#schedule();
      });
      return;
    }
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#schedule();
      },
      this.precise ? Math.max(1, Math.floor(left - SPIN_MS)) : Math.ceil(left),
    );
    this.#timer.unref();
  }

  /** Releases every item that is due, in order, then waits for the next. */
  #release(): void {
    const t = now();
    while (this.#items.length && this.#items[0]!.due <= t) {
      const item = this.#items.shift()!;
      this.onRelease(t - item.due);
      if (this.to.destroyed) continue;
      if ('end' in item) {
        this.to.end();
      } else if (!this.to.write(item.chunk) && !this.from.isPaused()) {
        this.from.pause();
        this.to.once('drain', () => this.from.resume());
      }
    }
    if (this.#items.length === 0) for (const fn of this.#idle.splice(0)) fn();
    else this.#schedule();
  }
}

/** Round-trip bookkeeping of one connection: whose turn it was last, and the exchange under way. */
class Turns {
  #last: 'up' | 'down' | undefined;
  #current: Exchange | undefined;

  constructor(
    readonly connection: number,
    readonly headBytes: number,
    readonly onExchange: (e: Exchange) => void,
  ) {}

  up(chunk: Buffer): void {
    if (this.#last !== 'up') this.#begin();
    const e = this.#current!;
    e.upBytes += chunk.length;
    if (e.head.length < this.headBytes) e.head = Buffer.concat([e.head, chunk.subarray(0, this.headBytes - e.head.length)]);
    this.#last = 'up';
  }

  /** Returns true when this chunk turns the connection round: a client burst answered, one round trip. */
  down(chunk: Buffer): boolean {
    const turned = this.#last === 'up';
    const e = this.#current ?? this.#begin(); // the server spoke first
    if (turned) e.roundTrip = true;
    e.downBytes += chunk.length;
    this.#last = 'down';
    return turned;
  }

  #begin(): Exchange {
    this.#current = { connection: this.connection, atMs: now(), upBytes: 0, downBytes: 0, head: Buffer.alloc(0), roundTrip: false };
    this.onExchange(this.#current);
    return this.#current;
  }
}

/**
 * @example
 * const toDb = await startLatencyProxy({ target: { host: '127.0.0.1', port: 5432 }, upDelayMs: 15, handshakeRoundTrips: 1 });
 * const pool = new pg.Pool({ connectionString: toDb.urlFor(databaseUrl) });
 * … console.log(toDb.stats().roundTripCount); await toDb.close();
 */
export async function startLatencyProxy(options: LatencyProxyOptions): Promise<LatencyProxy> {
  const host = options.host ?? '127.0.0.1';
  const delays = { up: 0, down: 0 };
  const setDelays = (up: number, down = up) => {
    if (!(up >= 0 && down >= 0)) throw new RangeError(`Delays must be ≥ 0 ms, got ${up} and ${down}.`);
    delays.up = up;
    delays.down = down;
  };
  setDelays(options.upDelayMs, options.downDelayMs);
  const handshakeRoundTrips = options.handshakeRoundTrips ?? 0;
  const precise = options.precise ?? true;
  const traceLimit = options.traceExchanges ?? 0;
  const headBytes = options.traceHeadBytes ?? 512;

  const st = { connectionCount: 0, roundTripCount: 0, bytesUp: 0, bytesDown: 0, releaseCount: 0, lateSumMs: 0, lateMaxMs: 0 };
  const open = new Set<{ client: net.Socket; server: net.Socket; lanes: DelayLane[] }>();
  const log: Exchange[] = [];
  const onRelease = (lateMs: number) => {
    st.releaseCount++;
    st.lateSumMs += lateMs;
    st.lateMaxMs = Math.max(st.lateMaxMs, lateMs);
  };
  const onExchange = (e: Exchange) => {
    if (traceLimit === 0) return;
    log.push(e);
    if (log.length > traceLimit) log.splice(0, log.length - traceLimit);
  };

  const perConnection = new Map<number, ConnectionStats>();
  let closedKept = 0;

  const onConnection = (client: net.Socket) => {
    const acceptedAt = now();
    const number = ++st.connectionCount;
    const own: ConnectionStats = { connection: number, openedAtMs: acceptedAt, open: true, roundTripCount: 0, bytesUp: 0, bytesDown: 0 };
    perConnection.set(number, own);
    const server = net.connect({ host: options.target.host, port: options.target.port, allowHalfOpen: true });
    client.setNoDelay(true);
    server.setNoDelay(true);
    const up = new DelayLane(client, server, () => delays.up, precise, onRelease);
    const down = new DelayLane(server, client, () => delays.down, precise, onRelease);
    const pair = { client, server, lanes: [up, down] };
    open.add(pair);
    // The client may send at once; in the model its bytes leave only once the handshake is done.
    const firstByteAt = acceptedAt + handshakeRoundTrips * (delays.up + delays.down);
    const turns = new Turns(number, traceLimit > 0 ? headBytes : 0, onExchange);

    client.on('data', (chunk: Buffer) => {
      st.bytesUp += chunk.length;
      own.bytesUp += chunk.length;
      turns.up(chunk);
      up.push({ chunk }, Math.max(now(), firstByteAt));
    });
    server.on('data', (chunk: Buffer) => {
      st.bytesDown += chunk.length;
      own.bytesDown += chunk.length;
      if (turns.down(chunk)) {
        st.roundTripCount++;
        own.roundTripCount++;
      }
      down.push({ chunk });
    });
    // A half-close travels like data: after what was sent before it, as late.
    client.on('end', () => up.push({ end: true }, Math.max(now(), firstByteAt)));
    server.on('end', () => down.push({ end: true }));
    const destroy = () => {
      if (!open.delete(pair)) return;
      own.open = false;
      // Maps iterate in insertion order: the oldest closed go first.
      if (++closedKept > CLOSED_KEPT) {
        for (const [n, c] of perConnection) {
          if (c.open) continue;
          perConnection.delete(n);
          closedKept--;
          break;
        }
      }
      up.stop();
      down.stop();
      client.destroy();
      server.destroy();
    };
    // A socket closes once both its halves are done: what is still on its way out of the other
    // lane is delivered first (its end included). An error cuts the pair at once.
    client.on('close', (hadError) => (hadError ? destroy() : up.whenIdle(destroy)));
    server.on('close', (hadError) => (hadError ? destroy() : down.whenIdle(destroy)));
    client.on('error', destroy);
    server.on('error', destroy);
  };

  const listener = net.createServer({ allowHalfOpen: true }, onConnection);
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(options.port ?? 0, host, () => {
      listener.off('error', reject);
      resolve();
    });
  });
  const port = (listener.address() as net.AddressInfo).port;
  let closing: Promise<void> | undefined;

  return {
    host,
    port,
    url: `http://${host}:${port}`,
    get upDelayMs() {
      return delays.up;
    },
    get downDelayMs() {
      return delays.down;
    },
    setDelays,
    urlFor(url: string) {
      const u = new URL(url);
      u.hostname = host;
      u.port = String(port);
      return u.toString();
    },
    stats: () => ({
      connectionCount: st.connectionCount,
      openCount: open.size,
      roundTripCount: st.roundTripCount,
      handshakeRoundTripCount: st.connectionCount * handshakeRoundTrips,
      bytesUp: st.bytesUp,
      bytesDown: st.bytesDown,
      releaseCount: st.releaseCount,
      lateMeanMs: st.releaseCount ? st.lateSumMs / st.releaseCount : 0,
      lateMaxMs: st.lateMaxMs,
    }),
    connections: () => [...perConnection.values()].map((c) => ({ ...c })),
    exchanges: (sinceMs = -Infinity) => log.filter((e) => e.atMs >= sinceMs),
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        listener.close(() => resolve());
        for (const pair of [...open]) {
          pair.client.destroy();
          pair.server.destroy();
          pair.lanes.forEach((l) => l.stop());
        }
        open.clear();
      })),
  };
}
