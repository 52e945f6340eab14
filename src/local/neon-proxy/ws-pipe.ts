/**
 * `/v2?address=host:port`: the driver's `Pool`/`Client` speak the ordinary Postgres protocol
 * inside binary WebSocket frames. The proxy does each session's startup itself, as Neon's proxy
 * does (auth.ts: the client's cleartext password, whatever authentication Postgres asks for), so
 * the driver's pipelined connect works against trust, password, md5 and SCRAM servers alike; from
 * AuthenticationOk on it only pipes bytes between the WebSocket and a TCP connection to the
 * allowed server, which is connected before the upgrade is answered. Refusals happen before the
 * upgrade (a JSON body with 403 for a server not allowed, 502 for one that cannot be reached;
 * `ws` clients report "Unexpected server response: 403"). Either side closing or failing closes the other;
 * backpressure is passed through both ways once piping. A client that vanishes without ending its
 * session (no Terminate) gets its running statement cancelled: the pipe reads the backend's key
 * from the startup traffic and sends a CancelRequest (pg-wire.ts).
 */
import type { IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { handshake, type Handshake } from './auth.js';
import { BackendKeySniffer, endsWithTerminate, MessageReader, sendCancel } from './pg-wire.js';
import { describeTarget, isAllowed, parseAddress, type Target } from './targets.js';

export interface WsPipesOptions {
  allowed: Target[];
  /** TCP connect plus startup up to AuthenticationOk; past it the session is cut (a database that accepts and never answers). */
  connectTimeoutMs: number;
  /** Refusals and sessions that ended abnormally. */
  log: (line: string) => void;
  /** Sessions that ended normally. */
  debug: (line: string) => void;
}

/** Above this many bytes queued towards the client, stop reading from Postgres. */
const HIGH_WATER_BYTES = 1024 * 1024;

export class WsPipes {
  readonly #wss = new WebSocketServer({ noServer: true });
  /** Upgrades waiting for their database connection. */
  readonly #connecting = new Set<{ socket: Duplex; tcp: Socket }>();
  readonly #open = new Set<{ ws: WebSocket; tcp: Socket; cancel: () => void }>();
  readonly #opts: WsPipesOptions;
  openedCount = 0;
  refusedCount = 0;

  constructor(opts: WsPipesOptions) {
    this.#opts = opts;
  }

  get activeCount(): number {
    return this.#open.size;
  }

  /** Handles an HTTP upgrade already routed to the WebSocket path. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, closing: boolean): void {
    socket.on('error', () => {});
    const address = new URL(req.url ?? '/', 'http://proxy.local').searchParams.get('address');
    const target = address ? parseAddress(address) : undefined;
    if (closing) return refuse(socket, 503, 'the proxy is closing');
    if (!target) return refuse(socket, 400, 'expected ?address=host:port');
    if (!isAllowed(this.#opts.allowed, target)) {
      this.refusedCount++;
      this.#opts.log(`neon-proxy: refused WebSocket to ${describeTarget(target)}`);
      return refuse(socket, 403, `this proxy does not serve ${describeTarget(target)}`);
    }
    this.#connectThenUpgrade(req, socket, head, target);
  }

  /** Refuses an upgrade the browser-access rule turned away (403), counted with the other refusals. */
  refuse(socket: Duplex, reason: string): void {
    socket.on('error', () => {});
    this.refusedCount++;
    this.#opts.log(`neon-proxy: refused WebSocket: ${reason}`);
    refuse(socket, 403, reason);
  }

  /** Drops every open pipe at once (used by close()). */
  closeAll(): void {
    for (const { socket, tcp } of this.#connecting) {
      tcp.destroy();
      socket.destroy();
    }
    this.#connecting.clear();
    for (const { ws, tcp, cancel } of this.#open) {
      cancel();
      tcp.destroy();
      ws.terminate();
    }
    this.#open.clear();
  }

  /**
   * The WebSocket opens only onto a connected database. An unreachable one is then a failed
   * connect — a 502, as /sql answers — which a driver that pipelines its startup could otherwise
   * only learn from its first statement (and the core would not count against the breaker).
   */
  #connectThenUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, target: Target): void {
    const where = describeTarget(target);
    const tcp = connect({ host: target.host, port: target.port });
    tcp.setNoDelay(true);
    const pending = { socket, tcp };
    this.#connecting.add(pending);
    const unreachable = (err: Error) => {
      this.#connecting.delete(pending);
      this.#opts.log(`neon-proxy: refused WebSocket to ${where}: the database is unreachable (${err.message})`);
      refuse(socket, 502, `could not connect to ${where}: ${(err as { code?: string }).code ?? err.message}`);
    };
    tcp.once('error', unreachable);
    tcp.setTimeout(this.#opts.connectTimeoutMs, () => tcp.destroy(new Error(`no connection within ${this.#opts.connectTimeoutMs} ms`)));
    // Until the pipe has it: an error after the connect only ends it (below).
    tcp.on('error', () => {});
    let piped = false;
    // The client gave up first, or the upgrade failed.
    socket.once('close', () => {
      this.#connecting.delete(pending);
      if (!piped) tcp.destroy();
    });
    tcp.once('connect', () => {
      tcp.setTimeout(0);
      tcp.off('error', unreachable);
      if (!this.#connecting.delete(pending)) return tcp.destroy();
      this.#wss.handleUpgrade(req, socket, head, (ws) => {
        piped = true;
        this.#pipe(ws, target, tcp);
      });
    });
  }

  #pipe(ws: WebSocket, target: Target, tcp: Socket): void {
    const where = describeTarget(target);
    const sniffer = new BackendKeySniffer();
    // True once the client has sent Terminate: its session is over, nothing to cancel.
    let ended = false;
    const cancel = () => {
      if (!ended && sniffer.key) sendCancel(target, sniffer.key, this.#opts.log);
    };
    const entry = { ws, tcp, cancel };
    this.#open.add(entry);
    this.openedCount++;

    // Until the handshake is done with a side, that side's bytes go to it; then straight through.
    const fromClient = new MessageReader();
    const fromServer = new MessageReader();
    let pipingFromClient = false;
    let pipingFromServer = false;

    let done = false;
    const finish = (reason: string, wsCode: number) => {
      if (done) return;
      done = true;
      this.#open.delete(entry);
      const gone = new Error(reason);
      fromClient.fail(gone);
      fromServer.fail(gone);
      (reason === SESSION_ENDED ? this.#opts.debug : this.#opts.log)(`neon-proxy: WebSocket to ${where} closed (${reason})`);
      // A statement may still be running for a client that vanished; the backend would only
      // notice the closed socket once it is done.
      if (reason !== DATABASE_CLOSED) cancel();
      // end() lets a just-written Terminate message reach Postgres; destroy() if the socket failed.
      if (wsCode === 1011) tcp.destroy();
      else tcp.end();
      if (ws.readyState === ws.OPEN) ws.close(wsCode, reason.slice(0, 120));
      else ws.terminate();
    };

    const toClient = (chunk: Buffer) => {
      if (chunk.length === 0) return;
      sniffer.fromServer(chunk);
      ws.send(chunk, { binary: true }, () => {
        if (tcp.isPaused() && ws.bufferedAmount < HIGH_WATER_BYTES / 2) tcp.resume();
      });
      if (ws.bufferedAmount > HIGH_WATER_BYTES) tcp.pause();
    };
    const toServer = (chunk: Buffer) => {
      if (chunk.length > 0 && !tcp.write(chunk)) ws.pause();
    };
    const pipeFromServer = (first: Buffer) => {
      pipingFromServer = true;
      toClient(Buffer.concat([first, fromServer.take()]));
    };
    const pipeFromClient = (first: Buffer) => {
      pipingFromClient = true;
      // What the client sent after its startup (a pipelined query): Postgres reads it once ready.
      toServer(Buffer.concat([first, fromClient.take()]));
    };
    // A database that accepts and never answers would hold the session, and the client, forever.
    const startupTimer = setTimeout(
      () => finish(`startup failed: no answer from the database within ${this.#opts.connectTimeoutMs} ms`, 1011),
      this.#opts.connectTimeoutMs,
    );
    startupTimer.unref();
    const afterHandshake = (result: Handshake) => {
      clearTimeout(startupTimer);
      if (done) return;
      if (result.kind === 'refused') return finish(`startup refused: ${result.reason}`, 1000);
      if (result.kind === 'cancel') {
        // Postgres reads the request and hangs up: the normal end of a cancel session.
        ended = true;
        pipeFromServer(Buffer.alloc(0));
        return pipeFromClient(Buffer.alloc(0));
      }
      pipeFromServer(result.authOk);
      result.clientNext.then(
        (first) => {
          if (!done) pipeFromClient(first);
        },
        (err: Error) => finish(`startup failed: ${err.message}`, 1011),
      );
    };
    handshake({ client: fromClient, server: fromServer, toClient: (b) => ws.send(b, { binary: true }), toServer }).then(
      afterHandshake,
      (err: Error) => {
        clearTimeout(startupTimer);
        finish(`startup failed: ${err.message}`, 1011);
      },
    );

    ws.on('message', (data) => {
      const chunk = data as Buffer;
      ended = endsWithTerminate(chunk);
      if (pipingFromClient) toServer(chunk);
      else fromClient.push(chunk);
    });
    tcp.on('drain', () => ws.resume());
    tcp.on('data', (chunk) => {
      if (pipingFromServer) toClient(chunk);
      else fromServer.push(chunk);
    });
    tcp.on('error', (err) => finish(`database socket error: ${err.message}`, 1011));
    tcp.on('close', () => finish(ended ? SESSION_ENDED : DATABASE_CLOSED, 1000));
    ws.on('error', (err) => finish(`WebSocket error: ${err.message}`, 1011));
    ws.on('close', () => finish(ended ? SESSION_ENDED : 'client closed the WebSocket mid-session', 1000));
  }
}

const DATABASE_CLOSED = 'database closed the connection';
/** The client sent Terminate: the normal end of a session, whichever side closes first. */
const SESSION_ENDED = 'session ended';

function refuse(socket: Duplex, status: number, message: string): void {
  const body = JSON.stringify({ message });
  const reason = { 400: 'Bad Request', 403: 'Forbidden', 502: 'Bad Gateway' }[status] ?? 'Service Unavailable';
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Connection: close\r\n\r\n${body}`,
  );
}
