/**
 * A TCP proxy in front of PostgreSQL whose behaviour a test switches at run time, so the
 * gateway's pool meets a failing network rather than a polite error:
 *
 *   pass                 bytes flow both ways
 *   latency              every chunk is held `ms` ± `jitterMs` (order kept per direction)
 *   blackhole            connections are accepted, nothing is forwarded; a connection that lost
 *                        bytes stays silent for the rest of its life (its protocol state is gone)
 *   reset                every open connection is reset now, and every new one at once
 *   refuse               the listener is closed: new connections get ECONNREFUSED
 *   reset-after-commit   the server→client stream is parsed; at the first CommandComplete whose
 *                        tag is COMMIT the proxy forwards it (or not) and destroys both sides, so
 *                        the client loses a connection although the commit happened
 *
 * Loopback only; every socket is destroyed by `close()`.
 */
import net from 'node:net';

export type FaultMode =
  | { kind: 'pass' }
  | { kind: 'latency'; ms: number; jitterMs?: number }
  | { kind: 'blackhole' }
  | { kind: 'reset' }
  | { kind: 'refuse' }
  | {
      kind: 'reset-after-commit';
      /** Forward the CommandComplete "COMMIT" before cutting (the client then misses only ReadyForQuery). */
      forwardCommit: boolean;
      /** Cuts before the proxy goes back to `pass` by itself (default 1). */
      times?: number;
    };

export interface FaultProxyStats {
  /** Client connections accepted since start. */
  acceptedCount: number;
  /** Connection pairs open now. */
  open: number;
  /** Most pairs open at once. */
  maxOpen: number;
  /** Pairs destroyed by `reset` / `refuse` cuts. */
  resetCount: number;
  /** Pairs cut right after a COMMIT reply. */
  commitCutCount: number;
  /** Bytes dropped by the blackhole. */
  droppedBytes: number;
}

export interface FaultProxy {
  readonly host: string;
  readonly port: number;
  /** `url` (a postgres:// URL) with its host and port replaced by the proxy's. */
  urlFor(url: string): string;
  readonly mode: FaultMode;
  /** Switches mode; resolves once the listener state matches it (closed for `refuse`, open otherwise). */
  setMode(mode: FaultMode): Promise<void>;
  /** Destroys every open pair (client side with a TCP reset). */
  resetAll(): number;
  /** Resolves at the next COMMIT cut. */
  nextCommitCut(): Promise<void>;
  stats(): FaultProxyStats;
  close(): Promise<void>;
}

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;

/**
 * Splits the backend → frontend stream into messages (type byte + int32 length) just far enough
 * to find CommandComplete('C') "COMMIT". Bytes are handed back for forwarding as soon as they are
 * known not to start a COMMIT message; a 'C' message is held until it is complete.
 */
export class BackendMessageScanner {
  #held = Buffer.alloc(0);
  #skip = 0;
  /** Set when the client asked for SSL/GSS: the server answers with one bare byte first. */
  expectSingleByte = false;

  /**
   * Returns the bytes to forward; when a COMMIT message ends in this chunk, also that message and
   * the unscanned `rest` of the chunk (push it next to go on).
   */
  push(chunk: Buffer): { forward: Buffer; commit?: { message: Buffer; rest: Buffer } } {
    const out: Buffer[] = [];
    let data = chunk;
    if (this.expectSingleByte && data.length > 0) {
      this.expectSingleByte = false;
      out.push(data.subarray(0, 1));
      data = data.subarray(1);
    }
    if (this.#skip > 0) {
      const n = Math.min(this.#skip, data.length);
      out.push(data.subarray(0, n));
      this.#skip -= n;
      data = data.subarray(n);
    }
    let buf = this.#held.length ? Buffer.concat([this.#held, data]) : data;
    this.#held = Buffer.alloc(0);
    while (buf.length >= 5) {
      const type = buf[0]!;
      const total = 1 + buf.readInt32BE(1);
      if (type !== 0x43 /* 'C' */) {
        if (buf.length < total) {
          out.push(buf);
          this.#skip = total - buf.length;
          buf = Buffer.alloc(0);
          break;
        }
        out.push(buf.subarray(0, total));
        buf = buf.subarray(total);
        continue;
      }
      if (buf.length < total) break; // hold the incomplete CommandComplete
      const message = buf.subarray(0, total);
      if (message.toString('latin1', 5, total - 1) === 'COMMIT') {
        return { forward: Buffer.concat(out), commit: { message, rest: Buffer.from(buf.subarray(total)) } };
      }
      out.push(message);
      buf = buf.subarray(total);
    }
    if (buf.length) this.#held = Buffer.from(buf);
    return { forward: Buffer.concat(out) };
  }
}

interface Pair {
  client: net.Socket;
  server: net.Socket;
  scanner: BackendMessageScanner;
  /** Lost bytes to the blackhole: never forwards again. */
  silenced: boolean;
  /** Latency mode: when the last chunk of each direction is due, to keep order under jitter. */
  dueUp: number;
  dueDown: number;
  firstClientChunk: boolean;
}

export interface FaultProxyOptions {
  /** Where PostgreSQL listens. */
  target: { host: string; port: number };
  /** Port to listen on (0: any free one, kept across refuse → pass). */
  port?: number;
}

/**
 * @example
 * const proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: 5432 } });
 * const gw = await startTestGateway({ DATABASE_URL: proxy.urlFor(db.url) }, { db });
 * await proxy.setMode({ kind: 'blackhole' });
 */
export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const host = '127.0.0.1';
  let mode: FaultMode = { kind: 'pass' };
  let commitCutsLeft = 0;
  const pairs = new Set<Pair>();
  const waiters: (() => void)[] = [];
  const st: FaultProxyStats = { acceptedCount: 0, open: 0, maxOpen: 0, resetCount: 0, commitCutCount: 0, droppedBytes: 0 };
  const timers = new Set<ReturnType<typeof setTimeout>>();

  const destroyPair = (p: Pair, rst: boolean) => {
    if (!pairs.delete(p)) return;
    st.open = pairs.size;
    if (rst && !p.client.destroyed) p.client.resetAndDestroy();
    else p.client.destroy();
    p.server.destroy();
  };

  const delay = () => {
    if (mode.kind !== 'latency') return 0;
    const j = mode.jitterMs ?? 0;
    return Math.max(0, mode.ms + (Math.random() * 2 - 1) * j);
  };

  /** Writes `chunk` to `to`, now or after the latency, keeping order per direction. */
  const send = (p: Pair, dir: 'up' | 'down', chunk: Buffer) => {
    const to = dir === 'up' ? p.server : p.client;
    const d = delay();
    const prevDue = dir === 'up' ? p.dueUp : p.dueDown;
    if (d === 0 && prevDue <= Date.now()) {
      if (!to.destroyed) to.write(chunk);
      return;
    }
    const due = Math.max(Date.now() + d, prevDue);
    if (dir === 'up') p.dueUp = due;
    else p.dueDown = due;
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (!to.destroyed) to.write(chunk);
    }, due - Date.now());
    timers.add(timer);
  };

  const onConnection = (client: net.Socket) => {
    st.acceptedCount++;
    client.on('error', () => {});
    if (mode.kind === 'reset') {
      st.resetCount++;
      client.resetAndDestroy();
      return;
    }
    const server = net.connect({ host: options.target.host, port: options.target.port });
    server.on('error', () => {});
    server.setNoDelay(true);
    client.setNoDelay(true);
    const p: Pair = { client, server, scanner: new BackendMessageScanner(), silenced: false, dueUp: 0, dueDown: 0, firstClientChunk: true };
    pairs.add(p);
    st.open = pairs.size;
    st.maxOpen = Math.max(st.maxOpen, st.open);
    // Until the upstream is connected, client bytes queue in the socket's own write buffer.
    client.on('data', (chunk: Buffer) => {
      if (p.firstClientChunk) {
        p.firstClientChunk = false;
        if (chunk.length >= 8 && chunk.readInt32BE(0) === 8) {
          const code = chunk.readInt32BE(4);
          if (code === SSL_REQUEST || code === GSSENC_REQUEST) p.scanner.expectSingleByte = true;
        }
      }
      if (p.silenced || mode.kind === 'blackhole') {
        p.silenced = true;
        st.droppedBytes += chunk.length;
        return;
      }
      send(p, 'up', chunk);
    });
    server.on('data', (chunk: Buffer) => {
      if (p.silenced || mode.kind === 'blackhole') {
        p.silenced = true;
        st.droppedBytes += chunk.length;
        return;
      }
      const out: Buffer[] = [];
      for (let rest = chunk; ;) {
        const scanned = p.scanner.push(rest);
        out.push(scanned.forward);
        if (!scanned.commit) break;
        if (mode.kind === 'reset-after-commit') {
          const forwardCommit = mode.forwardCommit;
          p.silenced = true; // nothing after the cut point may reach either side
          if (--commitCutsLeft <= 0) mode = { kind: 'pass' };
          st.commitCutCount++;
          if (forwardCommit) out.push(scanned.commit.message);
          // Flush what came before (and maybe the COMMIT itself), then cut both sides.
          const last = Buffer.concat(out);
          if (last.length) client.write(last, () => destroyPair(p, false));
          else destroyPair(p, false);
          for (const w of waiters.splice(0)) w();
          return;
        }
        out.push(scanned.commit.message);
        rest = scanned.commit.rest;
      }
      const forward = Buffer.concat(out);
      if (forward.length) send(p, 'down', forward);
    });
    // Either side closing closes the other: a discarded client must not leave a backend behind.
    client.on('close', () => destroyPair(p, false));
    server.on('close', () => destroyPair(p, false));
  };

  let listener: net.Server | undefined;
  let port = options.port ?? 0;

  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = net.createServer(onConnection);
      s.once('error', reject);
      s.listen(port, host, () => {
        s.off('error', reject);
        port = (s.address() as net.AddressInfo).port;
        listener = s;
        resolve();
      });
    });

  /** Stops accepting at once; connections already open are not waited for (server.close's callback would). */
  const unlisten = (): Promise<void> => {
    const s = listener;
    listener = undefined;
    s?.close();
    return Promise.resolve();
  };

  const resetAll = () => {
    const n = pairs.size;
    for (const p of [...pairs]) destroyPair(p, true);
    st.resetCount += n;
    return n;
  };

  await listen();

  return {
    host,
    get port() {
      return port;
    },
    urlFor(url: string) {
      const u = new URL(url);
      u.hostname = host;
      u.port = String(port);
      return u.toString();
    },
    get mode() {
      return mode;
    },
    async setMode(next: FaultMode) {
      mode = next;
      if (next.kind === 'reset-after-commit') commitCutsLeft = next.times ?? 1;
      if (next.kind === 'reset') resetAll();
      if (next.kind === 'refuse') await unlisten();
      else if (!listener) await listen();
    },
    resetAll,
    nextCommitCut: () => new Promise<void>((resolve) => waiters.push(resolve)),
    stats: () => ({ ...st }),
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      resetAll();
      await unlisten();
    },
  };
}
