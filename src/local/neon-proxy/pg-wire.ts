/**
 * Just enough of the Postgres wire protocol for the WebSocket path: messages reassembled from
 * chunks for the startup handshake (auth.ts), the few messages the proxy writes itself, the
 * backend's key (BackendKeyData) read from the server's bytes, the client's Terminate recognised,
 * and a CancelRequest sent on a fresh TCP connection. A backend does not notice a closed client
 * socket while a statement runs, so without a cancel the statement would run on to its end.
 */
import { connect } from 'node:net';
import type { Target } from './targets.js';

export const SSL_REQUEST = 80877103;
export const GSSENC_REQUEST = 80877104;
export const CANCEL_REQUEST = 80877102;
/** The Terminate message ('X', length 4) a client sends when it ends its session. */
const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);
/** Startup packets are small (Postgres caps them at 10 000 bytes); a bigger one is not a startup. */
const MAX_PACKET_BYTES = 64 * 1024;

/** One message: its type (`''` for a startup-phase packet, which has none), as sent, and its body. */
export interface WireMessage {
  type: string;
  bytes: Buffer;
  body: Buffer;
}

/**
 * Reassembles the messages of one direction during the startup handshake: `packet()` reads an
 * untyped one (StartupMessage, SSLRequest, CancelRequest), `message()` a typed one. Each waits
 * for a whole message; `fail()` makes the waiting read (and any later one) reject. `take()` hands
 * over what arrived beyond the messages read, for the pipe that follows.
 */
export class MessageReader {
  #buffer: Buffer = Buffer.alloc(0);
  #wake: (() => void) | undefined;
  #failure: Error | undefined;

  push(chunk: Buffer): void {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    this.#wake?.();
  }

  fail(err: Error): void {
    this.#failure ??= err;
    this.#wake?.();
  }

  packet(): Promise<WireMessage> {
    return this.#read(4, (b) => {
      const length = b.readInt32BE(0);
      if (length > MAX_PACKET_BYTES) throw new Error(`a startup packet of ${length} bytes`);
      return length;
    });
  }

  message(): Promise<WireMessage> {
    return this.#read(5, (b) => 1 + b.readInt32BE(1));
  }

  /** Whether a whole typed message has arrived and not been read. */
  hasMessage(): boolean {
    return this.#buffer.length >= 5 && this.#buffer.length >= 1 + this.#buffer.readInt32BE(1);
  }

  take(): Buffer {
    const rest = this.#buffer;
    this.#buffer = Buffer.alloc(0);
    return rest;
  }

  async #read(headerLength: number, totalLength: (b: Buffer) => number): Promise<WireMessage> {
    for (;;) {
      if (this.#buffer.length >= headerLength) {
        const total = totalLength(this.#buffer);
        if (total < headerLength) throw new Error(`a message claiming ${total} bytes`);
        if (this.#buffer.length >= total) {
          const bytes = this.#buffer.subarray(0, total);
          this.#buffer = this.#buffer.subarray(total);
          const typed = headerLength === 5;
          return { type: typed ? String.fromCharCode(bytes[0]!) : '', bytes, body: bytes.subarray(headerLength) };
        }
      }
      if (this.#failure) throw this.#failure;
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }
}

/** A typed message: the type byte, the length, then `parts` (strings as NUL-terminated UTF-8). */
export function message(type: string, ...parts: (Buffer | string)[]): Buffer {
  const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(`${p}\0`) : p)));
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([header, body]);
}

/** An untyped startup-phase packet: length, `version`, then the NUL-terminated name/value pairs and a final NUL. */
export function startupPacket(version: number, params: string[]): Buffer {
  const body = Buffer.from(`${params.map((p) => `${p}\0`).join('')}\0`);
  const head = Buffer.alloc(8);
  head.writeInt32BE(8 + body.length, 0);
  head.writeInt32BE(version, 4);
  return Buffer.concat([head, body]);
}

export function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

/** An Authentication request ('R') with its code (0 ok, 3 cleartext password, …). */
export const authRequest = (code: number) => message('R', int32(code));

/** A FATAL ErrorResponse, as Postgres would send it. */
export const fatalError = (sqlstate: string, text: string) => message('E', 'SFATAL', 'VFATAL', `C${sqlstate}`, `M${text}`, Buffer.alloc(1));

/** The message text ('M') of an ErrorResponse body, for logs. */
export function errorText(body: Buffer): string {
  for (let at = 0; at < body.length && body[at] !== 0;) {
    const end = body.indexOf(0, at + 1);
    if (end < 0) break;
    if (body[at] === 0x4d) return body.toString('utf8', at + 1, end);
    at = end + 1;
  }
  return 'no message';
}

/** The NUL-terminated strings of `body` (startup parameters, SASL mechanism lists). */
export function cstrings(body: Buffer): string[] {
  const out: string[] = [];
  for (let at = 0; at < body.length;) {
    const end = body.indexOf(0, at);
    if (end <= at) break;
    out.push(body.toString('utf8', at, end));
    at = end + 1;
  }
  return out;
}

/**
 * Reads the backend's pid and secret key from the server's bytes after authentication. Reading
 * stops at the key, at ReadyForQuery or at an error, so later traffic costs nothing.
 */
export class BackendKeySniffer {
  /** pid (4 bytes) + secret key (4 bytes in protocol 3.0; longer in 3.2), as sent. */
  key: Buffer | undefined;
  #pending: Buffer = Buffer.alloc(0);
  #done = false;

  /** Feeds bytes the server sent. */
  fromServer(chunk: Buffer): void {
    if (this.#done) return;
    let buf = this.#pending.length > 0 ? Buffer.concat([this.#pending, chunk]) : chunk;
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
