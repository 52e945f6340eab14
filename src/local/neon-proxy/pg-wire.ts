/**
 * Just enough of the Postgres wire protocol for the WebSocket pipe to stop a session's statement
 * when its client vanishes: the backend's key (BackendKeyData, sent once during startup) read
 * from the server's bytes, the client's Terminate recognised, and a CancelRequest sent on a fresh
 * TCP connection. A backend does not notice a closed client socket while a statement runs, so
 * without a cancel the statement would run on to its end.
 */
import { connect } from 'node:net';
import type { Target } from './targets.js';

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
/** The Terminate message ('X', length 4) a client sends when it ends its session. */
const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);

/**
 * Watches a session's first bytes for the backend's pid and secret key. Reading stops at the
 * key, at ReadyForQuery or an error, or when the stream turns to TLS, so later traffic costs
 * nothing.
 */
export class BackendKeySniffer {
  /** pid (4 bytes) + secret key (4 bytes in protocol 3.0; longer in 3.2), as sent. */
  key: Buffer | undefined;
  #pending = Buffer.alloc(0);
  #done = false;
  #skipAnswerByte = false;
  #sawClient = false;

  /** Feeds bytes the client sent; only its first packet matters (an SSL or GSS request?). */
  fromClient(chunk: Buffer): void {
    if (this.#sawClient) return;
    this.#sawClient = true;
    const code = chunk.length >= 8 ? chunk.readInt32BE(4) : 0;
    this.#skipAnswerByte = code === SSL_REQUEST || code === GSSENC_REQUEST;
  }

  /** Feeds bytes the server sent. */
  fromServer(chunk: Buffer): void {
    if (this.#done) return;
    let buf = this.#pending.length > 0 ? Buffer.concat([this.#pending, chunk]) : chunk;
    if (this.#skipAnswerByte && buf.length > 0) {
      this.#skipAnswerByte = false;
      // 'N' = go on in plain text; anything else is TLS or GSS, which this cannot read.
      if (buf[0] !== 0x4e) return this.#stop();
      buf = buf.subarray(1);
    }
    while (buf.length >= 5) {
      const type = String.fromCharCode(buf[0]!);
      const length = buf.readInt32BE(1);
      if (buf.length < 1 + length) break;
      if (type === 'K') this.key = Buffer.from(buf.subarray(5, 1 + length));
      if (type === 'K' || type === 'Z' || type === 'E') return this.#stop();
      buf = buf.subarray(1 + length);
    }
    this.#pending = Buffer.from(buf);
  }

  #stop(): void {
    this.#done = true;
    this.#pending = Buffer.alloc(0);
  }
}

/** Whether this chunk from the client ends with Terminate (a session ended on purpose). */
export function endsWithTerminate(chunk: Buffer): boolean {
  return chunk.length >= TERMINATE.length && chunk.subarray(chunk.length - TERMINATE.length).equals(TERMINATE);
}

/** Sends a CancelRequest for the backend `key` names; failures only reach `log`. */
export function sendCancel(target: Target, key: Buffer, log: (line: string) => void): void {
  const packet = Buffer.alloc(8 + key.length);
  packet.writeInt32BE(packet.length, 0);
  packet.writeInt32BE(CANCEL_REQUEST, 4);
  key.copy(packet, 8);
  const socket = connect({ host: target.host, port: target.port });
  socket.on('error', (err) => log(`neon-proxy: a cancel request failed (${err.message})`));
  socket.on('connect', () => socket.end(packet));
}
