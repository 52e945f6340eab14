/**
 * The WebSocket session's startup, done by the proxy the way Neon's own proxy does it, so the
 * driver's pipelined connect (`pipelineConnect: 'password'`: StartupMessage, PasswordMessage and
 * the first query in one write) works whatever Postgres asks for.
 *
 * The client's StartupMessage goes to Postgres as sent; then whatever authentication Postgres asks
 * for — cleartext, md5 or SCRAM-SHA-256 (RFC 5802/7677) — is answered here from the client's
 * cleartext password: the PasswordMessage a pipelining client sent with its startup, or, from a
 * client that waits to be asked, its answer to the AuthenticationCleartextPassword the proxy then
 * sends it (as Neon does). Under trust nothing is asked: Postgres's answer goes on at once, and a
 * pipelined password is dropped (the client's first message after its startup is its password if
 * it is a PasswordMessage, else already its session). AuthenticationOk and everything after it go
 * to the client as they are; an ErrorResponse, too, and the session ends there.
 */
import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import {
  authRequest,
  CANCEL_REQUEST,
  cstrings,
  errorText,
  fatalError,
  GSSENC_REQUEST,
  int32,
  message,
  SSL_REQUEST,
  startupPacket,
  type MessageReader,
  type WireMessage,
} from './pg-wire.js';
import { withoutNeonHints } from './targets.js';

const pbkdf2Async = promisify(pbkdf2);

/**
 * The StartupMessage as Postgres must see it: Neon's routing hints (`endpoint=…`, `project=…`)
 * taken out of its `options`, as on HTTP (Postgres would refuse them: 42601), and `options`
 * dropped when nothing else was in it. Any other startup goes as sent.
 */
function withoutNeonHintsIn(startup: Buffer): Buffer {
  // name, value, name, value, …, then '' for the final NUL (values may be empty, names not).
  const words = startup.toString('utf8', 8).split('\0');
  let end = 0;
  while (end + 1 < words.length && words[end] !== '') end += 2;
  const params = words.slice(0, end);
  const at = params.findIndex((p, i) => i % 2 === 0 && p === 'options');
  if (at === -1) return startup;
  const options = withoutNeonHints(params[at + 1] ?? null);
  if (options === params[at + 1]) return startup;
  const kept = options === undefined ? [...params.slice(0, at), ...params.slice(at + 2)] : params.with(at + 1, options);
  return startupPacket(startup.readInt32BE(4), kept);
}

const AUTH_OK = 0;
const AUTH_CLEARTEXT = 3;
const AUTH_MD5 = 5;
const AUTH_SASL = 10;
const AUTH_SASL_CONTINUE = 11;
const AUTH_SASL_FINAL = 12;
/** We speak plain TCP to Postgres, so the channel-binding variant (-PLUS) is never offered. */
const SCRAM = 'SCRAM-SHA-256';

export interface HandshakeIO {
  /** What the client sent so far, message by message. */
  client: MessageReader;
  /** What Postgres sent so far. */
  server: MessageReader;
  toClient(bytes: Buffer): void;
  toServer(bytes: Buffer): void;
}

export type Handshake =
  /**
   * Postgres sent AuthenticationOk (`authOk`, not yet relayed); from here on the server's bytes
   * are piped. The client's are piped once `clientNext` — the bytes to forward of its first
   * message after the startup (none if that was its password) — has resolved.
   */
  | { kind: 'authenticated'; authOk: Buffer; clientNext: Promise<Buffer> }
  /** The client's first packet was a CancelRequest, already forwarded: pipe until Postgres closes. */
  | { kind: 'cancel' }
  /** The client was sent an ErrorResponse (Postgres's or ours); end the session. */
  | { kind: 'refused'; reason: string };

/** Runs the startup of one WebSocket session; rejects only when either side went away or broke the protocol. */
export async function handshake(io: HandshakeIO): Promise<Handshake> {
  const refuse = (sqlstate: string, reason: string): Handshake => {
    io.toClient(fatalError(sqlstate, reason));
    return { kind: 'refused', reason };
  };

  let startup = await io.client.packet();
  let code = requestCode(startup.bytes);
  // TLS (or GSS encryption) inside the WebSocket is not offered: 'N', go on in plain text.
  while (code === SSL_REQUEST || code === GSSENC_REQUEST) {
    io.toClient(Buffer.from('N'));
    startup = await io.client.packet();
    code = requestCode(startup.bytes);
  }
  if (code === CANCEL_REQUEST) {
    io.toServer(startup.bytes);
    return { kind: 'cancel' };
  }
  // The major protocol version, 3, in the high 16 bits.
  if (code >>> 16 !== 3) return refuse('08P01', 'unsupported frontend protocol');
  const params = cstrings(startup.body.subarray(4));
  const user = params[params.indexOf('user') + 1] ?? '';

  io.toServer(withoutNeonHintsIn(startup.bytes));
  // The client's first message after its startup, read once: by a password request, or by the pipe after trust.
  let first: Promise<WireMessage> | undefined;
  const firstMessage = () => (first ??= io.client.message());

  let scram: ScramClient | undefined;
  for (;;) {
    const m = await io.server.message();
    if (m.type === 'E') {
      io.toClient(m.bytes);
      return { kind: 'refused', reason: errorText(m.body) };
    }
    // NoticeResponse, NegotiateProtocolVersion: the client's to read.
    if (m.type !== 'R') {
      io.toClient(m.bytes);
      continue;
    }
    const request = m.body.readInt32BE(0);
    const data = m.body.subarray(4);
    if (request === AUTH_OK)
      return {
        kind: 'authenticated',
        authOk: m.bytes,
        clientNext: firstMessage().then((f) => (f.type === 'p' ? Buffer.alloc(0) : f.bytes)),
      };
    if (request === AUTH_SASL_CONTINUE && scram) {
      io.toServer(message('p', Buffer.from(await scram.clientFinal(data.toString('utf8')))));
      continue;
    }
    if (request === AUTH_SASL_FINAL && scram) {
      if (!scram.verify(data.toString('utf8'))) return refuse('28000', 'the server failed SCRAM verification');
      continue;
    }
    if (request !== AUTH_CLEARTEXT && request !== AUTH_MD5 && request !== AUTH_SASL)
      return refuse('28000', `authentication request ${request} is not supported by the local Neon proxy`);
    if (request === AUTH_SASL && !cstrings(data).includes(SCRAM))
      return refuse('28000', `none of the SASL mechanisms ${cstrings(data).join(', ')} is supported`);
    // Nothing pipelined: ask, as Neon does (a pipelining client whose password is still on its way ignores this).
    if (!first && !io.client.hasMessage()) io.toClient(authRequest(AUTH_CLEARTEXT));
    const text = passwordIn(await firstMessage());
    if (text === undefined) return refuse('28P01', 'the server asks for a password and the client sent none');
    if (request === AUTH_CLEARTEXT) io.toServer(message('p', text));
    else if (request === AUTH_MD5) io.toServer(message('p', md5Password(user, text, data)));
    else {
      scram = new ScramClient(text);
      io.toServer(message('p', SCRAM, int32(Buffer.byteLength(scram.clientFirst)), Buffer.from(scram.clientFirst)));
    }
  }
}

/** The cleartext password in a PasswordMessage; undefined for any other message. */
const passwordIn = (m: WireMessage) => (m.type === 'p' ? m.body.toString('utf8', 0, Math.max(0, m.body.indexOf(0))) : undefined);

/** The request code of a startup-phase packet (a protocol version, or SSL/GSS/cancel); 0 if there is none. */
const requestCode = (packet: Buffer) => (packet.length >= 8 ? packet.readInt32BE(4) : 0);

/** The md5 method's answer: "md5" + md5(md5(password + user) + salt), in hex. */
export function md5Password(user: string, password: string, salt: Buffer): string {
  const inner = createHash('md5').update(password).update(user).digest('hex');
  return `md5${createHash('md5').update(inner).update(salt).digest('hex')}`;
}

/**
 * The client side of SCRAM-SHA-256 without channel binding (gs2 header "n,,"): client-first,
 * then client-final with the proof from the server's salt and iteration count, then the server's
 * signature checked.
 */
export class ScramClient {
  readonly #password: string;
  readonly #nonce = randomBytes(18).toString('base64');
  #authMessage = '';
  #serverKey: Buffer | undefined;

  constructor(password: string) {
    this.#password = saslPrep(password);
  }

  /** The SASLInitialResponse data; the user name is empty, as Postgres takes it from the startup. */
  get clientFirst(): string {
    return `n,,${this.#firstBare}`;
  }

  get #firstBare(): string {
    return `n=,r=${this.#nonce}`;
  }

  /** The client-final-message for the server-first-message `serverFirst`. */
  async clientFinal(serverFirst: string): Promise<string> {
    const attrs = new Map(serverFirst.split(',').map((kv) => [kv.slice(0, 1), kv.slice(2)] as const));
    const nonce = attrs.get('r') ?? '';
    const salt = Buffer.from(attrs.get('s') ?? '', 'base64');
    const iterations = Number(attrs.get('i'));
    if (!nonce.startsWith(this.#nonce) || nonce.length === this.#nonce.length || salt.length === 0 || !(iterations > 0))
      throw new Error('SCRAM: a malformed server-first-message');
    const withoutProof = `c=biws,r=${nonce}`; // biws = base64("n,,")
    this.#authMessage = `${this.#firstBare},${serverFirst},${withoutProof}`;
    const salted = await pbkdf2Async(this.#password, salt, iterations, 32, 'sha256');
    const clientKey = hmac(salted, 'Client Key');
    const signature = hmac(createHash('sha256').update(clientKey).digest(), this.#authMessage);
    this.#serverKey = hmac(salted, 'Server Key');
    const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]!));
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Whether the server-final-message carries the signature only a server knowing the password can make. */
  verify(serverFinal: string): boolean {
    if (!this.#serverKey || !serverFinal.startsWith('v=')) return false;
    const expected = hmac(this.#serverKey, this.#authMessage);
    const got = Buffer.from(serverFinal.slice(2).split(',')[0]!, 'base64');
    return got.length === expected.length && timingSafeEqual(got, expected);
  }
}

const hmac = (key: Buffer, data: string) => createHmac('sha256', key).update(data).digest();

/**
 * SASLprep (RFC 4013) as far as it changes bytes, which is what Postgres applies to the password
 * when it stores the verifier: non-ASCII spaces become spaces, "mapped to nothing" characters go,
 * then NFKC. ASCII passwords are unchanged.
 */
function saslPrep(password: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(password)) return password;
  return (
    password
      .replace(/[\u00a0\u1680\u2000-\u200b\u202f\u205f\u3000]/g, ' ')
      // The class holds joiners and variation selectors on purpose: they are what gets dropped.
      // eslint-disable-next-line no-misleading-character-class
      .replace(/[\u00ad\u034f\u1806\u180b-\u180d\u200c\u200d\u2060\ufe00-\ufe0f\ufeff]/gu, '')
      .normalize('NFKC')
  );
}
