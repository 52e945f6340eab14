/**
 * Named prepared statements per connection, for the pg connectors (the pool's sessions and the
 * pipelined lanes): which text runs under which name on which connection, bounded, and what a
 * schema change (0A000, a stale plan) does to them. Nothing here sends a statement but the probe.
 */
import type pg from 'pg';
import { markRerunnable } from '../../resilience/retry.js';
import type { QueryResult } from '../types.js';
import { extended, queryClassOf, toResult, type ResultLimits } from './pg-session.js';
import { SourceSupport } from './source-support.js';

/** A pg client as these rules see it: its backend and the statement names pg has seen parsed on it. */
export type NamedClient = pg.ClientBase & {
  processID?: number;
  /**
   * pg's connection: its socket; the statement names the server confirmed parsed (ParseComplete,
   * name → text); and those whose Parse pg has written but the server not yet confirmed.
   */
  connection?: {
    stream?: { destroy(): void };
    parsedStatements?: Record<string, string>;
    submittedNamedStatements?: Record<string, string>;
  };
};

/** Statement names remembered for texts (a cache of the hash, nothing more), at most this many. */
const NAME_CACHE_MAX = 1_000;

/**
 * A short stable name for a statement text: 64 bits of two multiply-xor lanes, as `pg_` + 16 hex.
 * Not cryptographic; a collision is caught before use (see StatementNames.nameFor).
 */
export function statementName(text: string): string {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
  }
  a = Math.imul(a ^ (a >>> 15), 0x2c1b3c6d) ^ Math.imul(b ^ (b >>> 13), 0x297a2d39);
  b = Math.imul(b ^ (b >>> 16), 0x85ebca6b) ^ Math.imul(a ^ (a >>> 13), 0xc2b2ae35);
  return `pg_${(a >>> 0).toString(16).padStart(8, '0')}${(b >>> 0).toString(16).padStart(8, '0')}`;
}

/** "cached plan must not change result type": a named statement prepared before a schema change. */
export const isStalePlan = (err: unknown) => {
  const e = err as { code?: unknown; routine?: unknown } | undefined;
  return e?.code === '0A000' && (e.routine === undefined || e.routine === 'RevalidateCachedQuery');
};

/** What one connection has prepared: the names, and the schema epoch it prepared the first of them in. */
interface Prepared {
  names: Set<string>;
  epoch: number;
}

/**
 * Which statements run under a name, per connection. Only statements with parameters: the server
 * refuses a prepared statement of several commands, so such text (a migration) has none and stays
 * unnamed, and so do BEGIN, COMMIT, SET and the like, which gain nothing from a plan. A connection
 * keeps at most `max` names and runs further statements unnamed: no DEALLOCATE, so nothing to
 * go wrong behind a pooler, and a connection's names go with it when it is closed.
 *
 * A schema change makes a prepared statement answer 0A000 when its result type changed. The first
 * connection to meet it moves the epoch on: from then on no connection that prepared statements
 * before uses them (its statements run unnamed) and each is replaced when released, so a
 * transaction run again after the error does not meet another stale plan on another connection.
 *
 * A pooler that hands one connection's statements to different servers refuses a name (26000,
 * 42P05; see SourceSupport) before the statement ran: from then on nothing of this source is
 * named, and the statement runs again unnamed (its transaction, whole, in the core).
 */
export class StatementNames {
  readonly #max: number;
  readonly #support: SourceSupport;
  readonly #names = new Map<string, string>();
  readonly #connections = new WeakMap<NamedClient, Prepared>();
  #epoch = 0;
  /** Whether the server gives each connection a backend of its own; settled by the first named statement. */
  #ownBackends: boolean | Promise<boolean> | undefined;

  constructor(max: number, support = new SourceSupport()) {
    this.#max = max;
    this.#support = support;
  }

  /**
   * The name to run `text` under on `client`, or undefined to run it unnamed. Answers at once
   * (no promise, so no extra turn per statement) except while the first connection's probe of
   * its server is pending.
   *
   * A name counts as prepared only once the server confirmed its Parse. While a Parse is written
   * but unanswered (pipelined, or on a connection shared by requests) the same text runs unnamed:
   * that Parse may still fail (cancelled, or refused in an aborted transaction), and pg would
   * send the others only a Bind to a name the server never had (26000).
   */
  nameFor(client: NamedClient, text: string, params: readonly unknown[] | undefined): string | undefined | Promise<string | undefined> {
    if (!params?.length || !this.#support.namedStatements) return undefined;
    const parsed = client.connection?.parsedStatements;
    if (typeof parsed !== 'object') return undefined; // not the pg this was written against
    const prepared = this.#prepared(client);
    if (this.#isStale(prepared)) return undefined;
    const name = this.#nameOf(text);
    if (parsed[name] !== undefined) return parsed[name] === text ? name : undefined;
    if (client.connection?.submittedNamedStatements?.[name] !== undefined) return undefined; // not confirmed yet
    if (prepared.names.size >= this.#max) return undefined;
    const own = this.#backendOfItsOwn(client);
    const claim = (ok: boolean) => {
      if (!ok) return undefined;
      if (prepared.names.size === 0) prepared.epoch = this.#epoch;
      return name;
    };
    return typeof own === 'boolean' ? claim(own) : own.then(claim);
  }

  /**
   * Runs a statement, under its name when it has one. A name refused by a pooler, or a plan made
   * stale by a schema change, fails the statement before it ran: in autocommit it runs again here at
   * once, unnamed (safe even for a write); in a transaction, which the error aborted, it is marked
   * so the core runs the whole transaction again. A stale plan's connection is replaced (see
   * isStale); a refused name turns names off for the whole source.
   */
  async run(
    client: NamedClient,
    text: string,
    params: readonly unknown[] | undefined,
    autocommit: boolean,
    /** Sends the statement, under `name` or unnamed. */
    exec: (name: string | undefined) => Promise<QueryResult>,
    /** False where statements must be written in call order (a pipeline): while the probe is pending, unnamed. */
    waitForProbe = true,
  ): Promise<QueryResult> {
    const named = this.nameFor(client, text, params);
    const name = named instanceof Promise ? (waitForProbe ? await named : undefined) : named;
    if (name === undefined) return exec(undefined);
    const cached = this.has(client, name);
    try {
      return await exec(name);
    } catch (err) {
      if (this.#support.namedStatementRefused(err)) {
        if (!autocommit) throw markRerunnable(err, { uncounted: true });
        return exec(undefined);
      }
      if (!cached || !isStalePlan(err)) throw err;
      this.schemaChanged();
      if (!autocommit) throw markRerunnable(err);
      return exec(undefined);
    } finally {
      this.record(client, name);
    }
  }

  /** True when the server confirmed `name` prepared on `client` (so a plan is cached for it). */
  has(client: NamedClient, name: string): boolean {
    return client.connection?.parsedStatements?.[name] !== undefined;
  }

  /** After a named statement ran (or failed): remembered when pg saw it parsed. */
  record(client: NamedClient, name: string): void {
    if (client.connection?.parsedStatements?.[name] !== undefined) this.#prepared(client).names.add(name);
  }

  /** A stale plan was met: every connection's statements prepared until now may be stale too. */
  schemaChanged(): void {
    this.#epoch++;
  }

  /** The connection holds statements prepared before the last schema change seen: it runs none of them and is replaced. */
  isStale(client: NamedClient): boolean {
    const prepared = this.#connections.get(client);
    return prepared !== undefined && this.#isStale(prepared);
  }

  #isStale(prepared: Prepared): boolean {
    return prepared.names.size > 0 && prepared.epoch < this.#epoch;
  }

  #prepared(client: NamedClient): Prepared {
    let prepared = this.#connections.get(client);
    if (!prepared) this.#connections.set(client, (prepared = { names: new Set(), epoch: this.#epoch }));
    return prepared;
  }

  #nameOf(text: string): string {
    let name = this.#names.get(text);
    if (name === undefined) {
      if (this.#names.size >= NAME_CACHE_MAX) this.#names.delete(this.#names.keys().next().value!);
      this.#names.set(text, (name = statementName(text)));
    }
    return name;
  }

  /**
   * PGlite behind pglite-socket serves every connection from one backend, where one connection's
   * name already exists for the next (42P05) and the local Neon proxy's DISCARD ALL drops them all:
   * no names there. Asked once, on the first connection that would name a statement.
   */
  #backendOfItsOwn(client: NamedClient): boolean | Promise<boolean> {
    this.#ownBackends ??= client.query<{ v: string }>('SELECT version() AS v').then(
      ({ rows }) => (this.#ownBackends = !/PGlite/i.test(String(rows[0]?.v))),
      () => {
        this.#ownBackends = undefined; // asked again next time; unnamed until then
        return false;
      },
    );
    return this.#ownBackends;
  }
}

/**
 * One statement through pg, named or not, as the core's QueryResult: in the extended protocol, so
 * the server refuses several commands in one text; a `script` (the process's own SQL) as a simple Query.
 */
export async function send(
  client: pg.ClientBase,
  text: string,
  params: readonly unknown[] | undefined,
  name?: string,
  script = false,
  limits?: ResultLimits,
): Promise<QueryResult> {
  if (script) return toResult(await client.query(text));
  const Query = limits && queryClassOf(client.constructor);
  if (Query) return toResult(await extended(client, Query, text, params, name, limits));
  const values = params ? [...params] : [];
  return toResult(await client.query({ name, text, values, queryMode: 'extended' } as pg.QueryConfig));
}
