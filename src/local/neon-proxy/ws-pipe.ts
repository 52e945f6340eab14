/**
 * `/v2?address=host:port`: the driver's `Pool`/`Client` speak the ordinary Postgres protocol
 * inside binary WebSocket frames, so this end only pipes bytes between the WebSocket and a TCP
 * connection to the allowed server. Refusals happen before the upgrade (a 403 with a JSON
 * body, which `ws` clients report as "Unexpected server response: 403"). Either side closing or
 * failing closes the other; backpressure is passed through both ways. A client that vanishes
 * without ending its session (no Terminate) gets its running statement cancelled: the pipe reads
 * the backend's key from the startup traffic and sends a CancelRequest (pg-wire.ts).
 */
import type { IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { BackendKeySniffer, endsWithTerminate, sendCancel } from './pg-wire.js';
import { describeTarget, isAllowed, parseAddress, type Target } from './targets.js';

export interface WsPipesOptions {
  allowed: Target[];
  /** Refusals and sessions that ended abnormally. */
  log: (line: string) => void;
  /** Sessions that ended normally. */
  debug: (line: string) => void;
}

/** Above this many bytes queued towards the client, stop reading from Postgres. */
const HIGH_WATER_BYTES = 1024 * 1024;

export class WsPipes {
  readonly #wss = new WebSocketServer({ noServer: true });
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
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#pipe(ws, target));
  }

  /** Drops every open pipe at once (used by close()). */
  closeAll(): void {
    for (const { ws, tcp, cancel } of this.#open) {
      cancel();
      tcp.destroy();
      ws.terminate();
    }
    this.#open.clear();
  }

  #pipe(ws: WebSocket, target: Target): void {
    const where = describeTarget(target);
    const tcp = connect({ host: target.host, port: target.port });
    tcp.setNoDelay(true);
    const sniffer = new BackendKeySniffer();
    // True once the client has sent Terminate: its session is over, nothing to cancel.
    let ended = false;
    const cancel = () => {
      if (!ended && sniffer.key) sendCancel(target, sniffer.key, this.#opts.log);
    };
    const entry = { ws, tcp, cancel };
    this.#open.add(entry);
    this.openedCount++;

    let done = false;
    const finish = (reason: string, wsCode: number) => {
      if (done) return;
      done = true;
      this.#open.delete(entry);
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

    ws.on('message', (data) => {
      const chunk = data as Buffer;
      sniffer.fromClient(chunk);
      ended = endsWithTerminate(chunk);
      // Writes made before the TCP connect completes are queued by the socket.
      if (!tcp.write(chunk)) ws.pause();
    });
    tcp.on('drain', () => ws.resume());
    tcp.on('data', (chunk) => {
      sniffer.fromServer(chunk);
      ws.send(chunk, { binary: true }, () => {
        if (tcp.isPaused() && ws.bufferedAmount < HIGH_WATER_BYTES / 2) tcp.resume();
      });
      if (ws.bufferedAmount > HIGH_WATER_BYTES) tcp.pause();
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
  const reason = status === 403 ? 'Forbidden' : status === 400 ? 'Bad Request' : 'Service Unavailable';
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n${body}`,
  );
}
