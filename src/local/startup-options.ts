/**
 * The `options` startup parameter (`-c search_path=app`, as libpq and `pg` send it) for the
 * embedded PGlite, which ignores it. PostgreSQL makes those settings the session's own defaults:
 * they hold from the first statement on, and RESET or DISCARD ALL return to them. PGlite has one
 * session shared by every connection (embedded.ts), so here a connection's settings are applied
 * when one of its exchanges begins on a session still at the server's defaults, and taken back
 * before another connection's exchange. Options PostgreSQL would refuse are refused the same way
 * at startup (FATAL, and the connection is not opened).
 *
 * The limit of sharing one session: a connection that SETs one of its own startup settings back
 * to the server's default gets its startup value again at its next exchange.
 */
import { fatalError } from './neon-proxy/pg-wire.js';

/** What of PGlite is used here (described, so this file does not import the optional peer). */
interface Session {
  query<T>(sql: string, params: unknown[]): Promise<{ rows: T[] }>;
}

export interface StartupSetting {
  name: string;
  value: string;
}

/** A startup `options` string PostgreSQL would refuse; `sqlstate` is what it answers. */
export class StartupOptionError extends Error {
  override name = 'StartupOptionError';
  constructor(
    message: string,
    readonly sqlstate: string,
  ) {
    super(message);
  }
}

/** The `options` parameter of a StartupMessage (length, protocol version, then NUL-separated pairs). */
export function startupOptions(message: Uint8Array): string | undefined {
  const pairs = Buffer.from(message.buffer, message.byteOffset, message.byteLength).toString('utf8', 8).split('\0');
  for (let i = 0; i + 1 < pairs.length; i += 2) if (pairs[i] === 'options') return pairs[i + 1];
  return undefined;
}

/**
 * Reads libpq `options`: whitespace-separated switches, a backslash keeping the next character
 * (`-c search_path=a,\ b`); `-c name=value`, `-cname=value` and `--name=value` set a parameter.
 */
export function parseStartupOptions(options: string): StartupSetting[] {
  const words = splitOptions(options);
  const settings: StartupSetting[] = [];
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    let assignment: string | undefined;
    if (word === '-c') assignment = words[++i];
    else if (word.startsWith('--')) assignment = word.slice(2);
    else if (word.startsWith('-c')) assignment = word.slice(2);
    const eq = assignment?.indexOf('=') ?? -1;
    if (assignment === undefined || eq <= 0) {
      throw new StartupOptionError(`invalid command-line argument for server process: ${assignment ?? word}`, '42601');
    }
    settings.push({ name: assignment.slice(0, eq).replaceAll('-', '_').toLowerCase(), value: assignment.slice(eq + 1) });
  }
  return settings;
}

function splitOptions(options: string): string[] {
  const words: string[] = [];
  let word = '';
  for (let i = 0; i < options.length; i++) {
    const ch = options[i]!;
    if (ch === '\\' && i + 1 < options.length) word += options[++i];
    else if (/\s/.test(ch)) {
      if (word) words.push(word);
      word = '';
    } else word += ch;
  }
  if (word) words.push(word);
  return words;
}

/** What the shared session holds on a connection's behalf: the value as pg_settings shows it. */
interface Applied {
  handlerId: number;
  setting: string;
}

/** Each connection's startup settings over PGlite's one session (see the module header). */
export class StartupSettings {
  readonly #db: Session;
  readonly #byConnection = new Map<number, StartupSetting[]>();
  readonly #applied = new Map<string, Applied>();

  constructor(db: Session) {
    this.#db = db;
  }

  /**
   * Reads a connection's StartupMessage before PGlite answers it; returns the FATAL ErrorResponse
   * to send instead when PostgreSQL would refuse its options (each setting is tried with a
   * transaction-local set_config, which leaves nothing behind).
   */
  async startup(handlerId: number, message: Uint8Array): Promise<Uint8Array | undefined> {
    const options = startupOptions(message);
    if (!options) return undefined;
    try {
      const settings = parseStartupOptions(options);
      for (const { name, value } of settings) await this.#db.query('SELECT set_config($1, $2, true)', [name, value]);
      if (settings.length > 0) this.#byConnection.set(handlerId, settings);
      return undefined;
    } catch (err) {
      const sqlstate = (err as { sqlstate?: string; code?: string }).sqlstate ?? (err as { code?: string }).code ?? '22023';
      return fatalError(sqlstate, (err as Error).message);
    }
  }

  /** Before an exchange of `handlerId` begins (never inside a transaction): the session becomes its. */
  async enter(handlerId: number): Promise<void> {
    for (const [name, applied] of this.#applied) {
      if (applied.handlerId === handlerId) continue;
      this.#applied.delete(name);
      // Taken back only if still as applied: a SET since then is what that session asked for.
      await this.#db.query('SELECT set_config(name, reset_val, false) FROM pg_settings WHERE name = $1 AND setting = $2', [
        name,
        applied.setting,
      ]);
    }
    for (const { name, value } of this.#byConnection.get(handlerId) ?? []) {
      // Only on a session at the server's default: a value set since (by this connection) stays.
      const set = 'SELECT set_config(name, $2, false) FROM pg_settings WHERE name = $1 AND setting = reset_val';
      if ((await this.#db.query(set, [name, value])).rows.length === 0) continue;
      const { rows } = await this.#db.query<{ setting: string }>('SELECT setting FROM pg_settings WHERE name = $1', [name]);
      this.#applied.set(name, { handlerId, setting: rows[0]!.setting });
    }
  }

  /** A connection went away; what it applied is taken back at the next exchange. */
  forget(handlerId: number): void {
    this.#byConnection.delete(handlerId);
  }
}
