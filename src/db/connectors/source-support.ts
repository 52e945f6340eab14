/**
 * What one connection source (a connection string: its pool's sessions and its pipelined lanes)
 * turned out to support. A pooler in front of the server may refuse what the server itself takes:
 * PgBouncer refuses statement_timeout as a startup parameter (08P01) unless told to ignore it, and in
 * transaction mode without protocol-level prepared statements (before 1.21, or
 * max_prepared_statements = 0) it hands each transaction whichever server is free, so a statement
 * named on one server is missing on the next (26000) or there already (42P05). Each is assumed
 * until refused; from then on this source does without it, says so in one log line, and /stats
 * and /metrics show what was refused and the SQLSTATE that said so. Nothing here sends a statement.
 */
import type { Log } from '../../log/logger.js';
import type pg from 'pg';
import type { RefusedFeatures } from '../types.js';
import { isNamedStatementRefused, isStartupRefused } from './driver-errors.js';

type Feature = keyof RefusedFeatures;

/** For the log line of each feature refused: what it is, the likely cause, and what is done instead. */
const SAID: Record<Feature, { what: string; why: string; instead: string }> = {
  namedStatements: {
    what: 'named prepared statements',
    why: 'a pooler in transaction mode that does not keep them?',
    instead: 'statements run unnamed on this pool from now on',
  },
  statementTimeoutAtStartup: {
    what: 'statement_timeout as a startup parameter',
    why: 'a pooler that does not pass it on?',
    instead: "connections open without it; a statement past its request's deadline is still cancelled",
  },
};

export class SourceSupport {
  readonly #refused: RefusedFeatures = {};
  readonly #log: Log;
  /** The connect without statement_timeout that decides whether it was refused, shared by the connects that failed meanwhile. */
  #startupCheck: Promise<boolean> | undefined;

  constructor(log: Log = () => {}) {
    this.#log = log;
  }

  get namedStatements(): boolean {
    return this.#refused.namedStatements === undefined;
  }

  /** What was refused, each with the SQLSTATE that said so. */
  refused(): RefusedFeatures {
    return { ...this.#refused };
  }

  /**
   * A named statement failed with `err`. True when that says this source refuses named statements
   * (then off for it from now on): the statement never ran, so it may run again, unnamed.
   */
  namedStatementRefused(err: unknown): boolean {
    if (!isNamedStatementRefused(err)) return false;
    this.#refuse('namedStatements', (err as { code: string }).code);
    return true;
  }

  /** `config` for a new connection of this source: without statement_timeout once that was refused. */
  clientConfig<C extends pg.ClientConfig>(config: C): C {
    return this.#refused.statementTimeoutAtStartup === undefined ? config : withoutStartupTimeout(config);
  }

  /**
   * A connect of `config` failed with `err`. True when it is worth connecting again: the failure
   * was a protocol error while statement_timeout went as a startup parameter, and a connect
   * without it works (the probe connection is closed at once), so the parameter is what was
   * refused and is left out from now on. A server that refuses for another reason fails the probe
   * too, and keeps the parameter.
   */
  async startupRefused(err: unknown, Client: new (config: pg.ClientConfig) => pg.Client, config: pg.ClientConfig): Promise<boolean> {
    if (!isStartupRefused(err) || config.statement_timeout === undefined) return false;
    if (this.#refused.statementTimeoutAtStartup !== undefined) return true; // decided while this one connected
    this.#startupCheck ??= connects(Client, withoutStartupTimeout(config)).then((ok) => {
      this.#startupCheck = undefined;
      if (ok) this.#refuse('statementTimeoutAtStartup', '08P01');
      return ok;
    });
    return this.#startupCheck;
  }

  #refuse(feature: Feature, code: string): void {
    if (this.#refused[feature] !== undefined) return;
    this.#refused[feature] = code;
    const { what, why, instead } = SAID[feature];
    this.#log(`poolgate: the database refused ${what} (${code}: ${why}); ${instead}`, { event: 'source.refused', code }, 'warn');
  }
}

function withoutStartupTimeout<C extends pg.ClientConfig>(config: C): C {
  const { statement_timeout: _, ...rest } = config;
  return rest as C;
}

/** Whether a connection of `config` opens (closed again at once). */
async function connects(Client: new (config: pg.ClientConfig) => pg.Client, config: pg.ClientConfig): Promise<boolean> {
  const client = new Client(config);
  client.on('error', () => {});
  try {
    await client.connect();
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}
